//! The WebSocket close handshake (RFC 6455 §5.5.1), on both endpoints of a real relay and broker, seen by a
//! plain tokio-tungstenite client that reads every frame itself.
//!
//! - A client that closes gets its close frame echoed, with its code, and then the TCP connection ends cleanly:
//!   on `/ws/record` after the last ack and before any hello, on `/ws/feed` after and before the subscribe.
//! - Every `error` the relay sends is followed by a close frame with the error's close code; the client's echo
//!   ends the connection cleanly (no reset, no close frame missing).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use soundline_shared::control::{ClientMessage, ErrorCode, Hello, ServerMessage};
use soundline_shared::feed::{FeedClientMessage, FeedServerMessage, From};
use soundline_shared::frame;
use soundline_tests::recorder::recording;
use soundline_tests::relay::{InProcess, config};
use soundline_tests::subscriber::subscription;
use soundline_tests::{random_topic, ws_connect};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const TOKEN: &str = "close-handshake-token-0123";
const TS: i64 = 1_764_000_000_000;

async fn relay(topic: &str) -> InProcess {
    let relay = InProcess::start(config(&[
        ("SOUNDLINE_TOPIC", topic),
        ("SOUNDLINE_PARTITIONS", "1"),
        ("SOUNDLINE_AUTH_TOKENS", &format!("tests:{TOKEN}")),
        ("SOUNDLINE_HELLO_TIMEOUT_S", "1"),
        // A 2 s frame makes an envelope of ~86 KB: over this, `record_too_large`.
        ("SOUNDLINE_MAX_MESSAGE_BYTES", "65536"),
        ("SOUNDLINE_FEED_TOPICS", "close-handshake-no-such-topic"),
    ]))
    .await;
    relay.wait_ready().await;
    relay
}

async fn open(relay: &InProcess, path: &str, token: &str) -> Ws {
    let auth = format!("Bearer {token}");
    ws_connect(&relay.ws(path), &[("Authorization", &auth)]).await.expect("WebSocket handshake")
}

fn hello(segment: &str) -> Message {
    Message::Text(ClientMessage::Hello(Hello::new(recording("CAR-CLOSE", segment))).to_json().into())
}

/// The next text message, parsed by `parse` (pings are skipped; anything else fails the test).
async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("the relay said nothing in 20 s") {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// After the close frames crossed: the relay ends the TCP connection, cleanly, within 5 s.
async fn ends_cleanly(ws: &mut Ws, what: &str) {
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(None) => {}
        Ok(Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed))) => {}
        Ok(other) => panic!("{what}: after the close handshake the relay sent {other:?}"),
        Err(_) => panic!("{what}: the relay kept the connection open 5 s after the close handshake"),
    }
}

/// Sends a close frame with `code` and asserts the relay echoes it (same code), then ends the connection.
///
/// Text the relay sent before it read our close may still arrive first (on `/ws/feed` from `earliest`, the
/// topic's records follow `subscribed` at once): an endpoint may send data until it has read the other's close
/// (RFC 6455 §5.5.1), so that text is read past, as a browser does; the echo must still come, with our code, and
/// the connection end cleanly.
async fn client_closes(mut ws: Ws, code: u16, what: &str) {
    let frame = CloseFrame { code: CloseCode::from(code), reason: "bye".into() };
    ws.send(Message::Close(Some(frame))).await.expect("send the close frame");
    let echo = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(echo)))) => break echo,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Text(_)))) => {}
            Ok(other) => panic!("{what}: expected the echo of our close frame, got {other:?}"),
            Err(_) => panic!("{what}: no close frame came back within 5 s"),
        }
    };
    let echoed = echo.map(|f| u16::from(f.code));
    assert_eq!(echoed, Some(code), "{what}: the relay echoes the close code");
    ends_cleanly(&mut ws, what).await;
}

/// Expects `error` with `want`, then a close frame with its close code; the client's echo (tungstenite queues
/// it) completes the handshake and the relay ends the connection cleanly.
async fn relay_closes(mut ws: Ws, want: ErrorCode) {
    let what = want.as_str();
    let code = loop {
        let text = next_text(&mut ws).await;
        if let Ok(ServerMessage::Error { code, .. }) = ServerMessage::parse(&text) {
            break code;
        }
        // Acks, status, subscribed: what came before the error.
    };
    assert_eq!(code, want);
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => {
            assert_eq!(u16::from(frame.code), want.close_code(), "{what}: close code")
        }
        other => panic!("{what}: expected a close frame after the error, got {other:?}"),
    }
    // Send the queued echo.
    let _ = ws.flush().await;
    ends_cleanly(&mut ws, what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_echoed_on_both_endpoints() {
    let topic = random_topic("close-client");
    let relay = relay(&topic).await;

    // A recorder, after its last ack: 1000 (what the page sends when a recording is done).
    let mut ws = open(&relay, "/ws/record", TOKEN).await;
    ws.send(hello("seg-done")).await.expect("hello");
    assert!(matches!(ServerMessage::parse(&next_text(&mut ws).await), Ok(ServerMessage::Ready { .. })));
    for seq in 0..3 {
        ws.send(Message::Binary(frame::encode_to_vec(seq, TS, &[7; 160]).into())).await.expect("frame");
    }
    for seq in 0..3 {
        let ack = ServerMessage::parse(&next_text(&mut ws).await);
        assert!(matches!(ack, Ok(ServerMessage::Ack { seq: s, .. }) if s == seq), "{ack:?}");
    }
    client_closes(ws, 1000, "/ws/record after the last ack").await;
    // A recorder before any hello, and one going away (1001, a browser leaving the page).
    client_closes(open(&relay, "/ws/record", TOKEN).await, 1000, "/ws/record before the hello").await;
    let mut ws = open(&relay, "/ws/record", TOKEN).await;
    ws.send(hello("seg-leaving")).await.expect("hello");
    let _ready = next_text(&mut ws).await;
    client_closes(ws, 1001, "/ws/record going away").await;

    // A subscriber, after its `subscribed`, and one before any subscribe.
    let mut ws = open(&relay, "/ws/feed", TOKEN).await;
    let sub = FeedClientMessage::Subscribe(subscription(None, From::Earliest)).to_json();
    ws.send(Message::Text(sub.into())).await.expect("subscribe");
    let first = next_text(&mut ws).await;
    assert!(matches!(FeedServerMessage::parse(&first), Ok(FeedServerMessage::Subscribed { .. })), "{first}");
    client_closes(ws, 1000, "/ws/feed after subscribed").await;
    client_closes(open(&relay, "/ws/feed", TOKEN).await, 1000, "/ws/feed before the subscribe").await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_close_completes_the_handshake_on_both_endpoints() {
    let topic = random_topic("close-relay");
    let relay = relay(&topic).await;
    let text = |t: &str| Message::Text(t.to_owned().into());
    let invalid_utf8 = || Message::Frame(Frame::message(vec![0xff, 0xfe, 0x7b], OpCode::Data(Data::Text), true));
    let too_big = || Message::Binary(vec![0u8; 70_000].into());

    // /ws/record: what a client's first message can get wrong.
    let first_messages: [(Message, ErrorCode); 7] = [
        (text(r#"{"type":"hello","protocol":2}"#), ErrorCode::UnsupportedProtocol),
        (Message::Binary(frame::encode_to_vec(0, TS, &[1; 16]).into()), ErrorCode::HelloRequired),
        (text("hello?"), ErrorCode::BadHello),
        (
            text(&ClientMessage::Hello(Hello::new(recording("C", "s"))).to_json().replace("16000", "48000")),
            ErrorCode::UnsupportedFormat,
        ),
        (invalid_utf8(), ErrorCode::InvalidUtf8),
        (too_big(), ErrorCode::MessageTooBig),
        (Message::Ping(Default::default()), ErrorCode::IdleTimeout), // a ping is no hello: 1 s later, idle_timeout
    ];
    for (msg, want) in first_messages {
        let mut ws = open(&relay, "/ws/record", TOKEN).await;
        ws.send(msg).await.expect("send");
        relay_closes(ws, want).await;
    }
    // /ws/record: what can go wrong after the hello.
    let after_hello: [(Vec<Message>, ErrorCode); 5] = [
        (vec![Message::Binary(vec![1, 2, 3].into())], ErrorCode::BadFrame),
        (vec![Message::Binary(frame::encode_to_vec(0, TS, &[0; 32_001]).into())], ErrorCode::FrameTooLarge),
        (
            vec![
                Message::Binary(frame::encode_to_vec(0, TS, &[1; 16]).into()),
                Message::Binary(frame::encode_to_vec(2, TS, &[1; 16]).into()),
            ],
            ErrorCode::SequenceOutOfOrder,
        ),
        (vec![text("a second text")], ErrorCode::UnexpectedText),
        (vec![Message::Binary(frame::encode_to_vec(0, TS, &[9; 32_000]).into())], ErrorCode::RecordTooLarge),
    ];
    for (i, (msgs, want)) in after_hello.into_iter().enumerate() {
        let mut ws = open(&relay, "/ws/record", TOKEN).await;
        ws.send(hello(&format!("seg-err-{i}"))).await.expect("hello");
        let _ready = next_text(&mut ws).await;
        for m in msgs {
            ws.send(m).await.expect("send");
        }
        relay_closes(ws, want).await;
    }
    relay_closes(open(&relay, "/ws/record", "not-the-token-at-all-0000").await, ErrorCode::Unauthorized).await;

    // /ws/feed.
    let feed_first: [(Message, ErrorCode); 6] = [
        (text("subscribe please"), ErrorCode::BadSubscribe),
        (text(r#"{"type":"subscribe","topic":"elsewhere"}"#), ErrorCode::TopicNotAllowed),
        (text(r#"{"type":"subscribe","topic":"close-handshake-no-such-topic"}"#), ErrorCode::UnknownTopic),
        (invalid_utf8(), ErrorCode::InvalidUtf8),
        (too_big(), ErrorCode::MessageTooBig),
        (Message::Ping(Default::default()), ErrorCode::IdleTimeout),
    ];
    for (msg, want) in feed_first {
        let mut ws = open(&relay, "/ws/feed", TOKEN).await;
        ws.send(msg).await.expect("send");
        relay_closes(ws, want).await;
    }
    relay_closes(open(&relay, "/ws/feed", "not-the-token-at-all-0000").await, ErrorCode::Unauthorized).await;

    // Shutdown: both endpoints hear `shutting_down` (1001) and the handshake completes.
    let mut recorder = open(&relay, "/ws/record", TOKEN).await;
    recorder.send(hello("seg-shutdown")).await.expect("hello");
    let _ready = next_text(&mut recorder).await;
    let mut feed = open(&relay, "/ws/feed", TOKEN).await;
    let sub = FeedClientMessage::Subscribe(subscription(None, From::Live)).to_json();
    feed.send(Message::Text(sub.into())).await.expect("subscribe");
    let _subscribed = next_text(&mut feed).await;
    let stopping = tokio::spawn(relay.stop());
    tokio::join!(relay_closes(recorder, ErrorCode::ShuttingDown), relay_closes(feed, ErrorCode::ShuttingDown));
    stopping.await.expect("relay stopped");
}
