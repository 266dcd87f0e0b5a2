//! The WebSocket session toolkit both endpoints share (`/ws/record` in `ingest`, `/ws/feed` in
//! `fanout::subscriber`): the failure that ends a connection, the last words (error message, close frame, the
//! close handshake both ways), what a message costs against the rate limits, and the errors a read can end with.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{SinkExt, StreamExt};
use soundline_shared::control::{ErrorCode, ServerMessage};

/// A problem that ends the connection: the code and the one-line message sent with it.
pub struct Fail(pub ErrorCode, pub String);

/// The last words on any WebSocket of the relay: the `error` message, then the close frame with the error's
/// code and the message as its reason, both within `timeout`. Follow with [`linger`] on the stream.
pub async fn goodbye<S>(sink: &mut S, code: ErrorCode, message: &str, timeout: Duration)
where
    S: futures_util::Sink<Message, Error = axum::Error> + Unpin,
{
    let error = Message::Text(ServerMessage::error(code, message.to_owned()).to_json().into());
    let reason = Utf8Bytes::from(truncate(message, 120).to_owned());
    let close = Message::Close(Some(CloseFrame { code: code.close_code(), reason }));
    let _ = tokio::time::timeout(timeout, async {
        sink.send(error).await?;
        sink.send(close).await
    })
    .await;
}

/// After the client's close frame: send the echo RFC 6455 §5.5.1 asks for (its code and reason back), 2 s at
/// most. tungstenite queues the echo when it reads the client's close but sends it only on the next write or
/// flush, and a reader that stops at the close never makes one: without this the client sees the TCP connection
/// drop (1006, `wasClean: false` in a browser). A client that left without a close frame makes this fail at once.
pub async fn answer_close<S>(sink: &mut S)
where
    S: futures_util::Sink<Message, Error = axum::Error> + Unpin,
{
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
}

/// After our close frame: keep the socket open (reading and discarding) until the client answers with its own
/// close, for 2 s at most. Closing at once while input is unread (say, the rest of an oversized message) makes
/// the kernel reset the connection, and the client would lose the error and the close code.
pub async fn linger<S>(stream: &mut S)
where
    S: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let _ = tokio::time::timeout_at(deadline, async {
        let mut errors = 0;
        loop {
            match stream.next().await {
                // The client closed, or is gone: nothing more to wait for.
                Some(Ok(Message::Close(_))) | None => return,
                Some(Ok(_)) => {}
                // The reader gave up on this stream (it may re-report the same error): just hold the socket.
                Some(Err(_)) if errors < 64 => errors += 1,
                Some(Err(_)) => std::future::pending::<()>().await,
            }
        }
    })
    .await;
}

/// The bytes a message costs against `max_bytes_per_s`.
pub fn message_len(msg: &Message) -> usize {
    match msg {
        Message::Binary(b) => b.len(),
        Message::Text(t) => t.len(),
        Message::Ping(p) | Message::Pong(p) => p.len(),
        Message::Close(_) => 0,
    }
}

/// The failure of a connection that went silent: before its first message (`hello_timeout_s`) or after.
pub fn idle_timeout(before_first_message: bool, limits: &crate::config::Limits) -> Fail {
    if before_first_message {
        let first = "the first message (hello or subscribe)";
        Fail(ErrorCode::IdleTimeout, format!("{first} did not arrive within {} s", limits.hello_timeout.as_secs()))
    } else {
        Fail(
            ErrorCode::IdleTimeout,
            format!("nothing arrived for {} s, not even a pong; reconnect", limits.idle_timeout.as_secs()),
        )
    }
}

/// What a failed read means for the client: a typed error to close with, or `None` (the connection is gone;
/// logged at debug level under the connection's span).
pub fn classify_read_error(e: &axum::Error, span: &tracing::Span) -> Option<Fail> {
    // axum hides tungstenite's error type; its messages are stable and name the cause.
    let text = e.to_string();
    if text.contains("UTF-8") || text.contains("utf-8") || text.contains("utf8") {
        Some(Fail(ErrorCode::InvalidUtf8, "a text message was not valid UTF-8".into()))
    } else if text.contains("Message too long") || text.contains("too long") || text.contains("Space limit exceeded") {
        Some(Fail(ErrorCode::MessageTooBig, format!("a message exceeded the relay's size limit ({text})")))
    } else {
        tracing::debug!(parent: span, error = %text, "connection failed");
        None
    }
}

/// At most `max` bytes of `s`, cut at a character boundary (close reasons are limited to 123 bytes).
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
