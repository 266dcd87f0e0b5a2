//! A scripted recorder: speaks `docs/protocol.md` over a real WebSocket (tokio-tungstenite), frame by frame, so
//! tests can send good and bad input and read exactly what the relay answers.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use soundline_shared::control::{ClientMessage, ErrorCode, Hello, ServerMessage};
use soundline_shared::frame;
use soundline_shared::recording::{DeviceInfo, LocationInfo, Recording};
use tokio_tungstenite::tungstenite::Message;

use crate::{WsRead, WsStream};

/// What the relay sent next.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A text message, parsed.
    Server(ServerMessage),
    /// The connection closed, with the close frame's code and reason if there was one.
    Closed(Option<(u16, String)>),
}

/// One recorder connection.
pub struct Recorder {
    ws: WsStream,
    /// What the relay said while a send was pending ([`Recorder::send_while_reading`]), read first.
    said: VecDeque<WsRead>,
}

/// Metadata for a test recording.
pub fn recording(car_id: &str, segment_id: &str) -> Recording {
    Recording {
        device: DeviceInfo { car_id: car_id.into(), rail_type: 2 },
        location: LocationInfo { unit_id: "depot-7".into(), sty: "track 3".into() },
        segment_id: segment_id.into(),
        inspection_info: format!("test notes for {segment_id}"),
    }
}

/// Deterministic test audio: frame `seq` of `segment` as `samples` samples, distinct per (segment, seq).
pub fn samples(segment: &str, seq: u32, samples: usize) -> Vec<i16> {
    let salt = segment.bytes().fold(seq.wrapping_mul(7919), |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    (0..samples).map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt) >> 16) as i16).collect()
}

impl Recorder {
    /// Opens a WebSocket to `url`.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Self { ws, said: VecDeque::new() }
    }

    /// Opens a WebSocket to `url` with extra request headers (a token, a subprotocol); the handshake's error
    /// (an HTTP refusal, say) is returned, not a panic.
    pub async fn connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, Box<tokio_tungstenite::tungstenite::Error>> {
        Ok(Self { ws: crate::ws_connect(url, headers).await?, said: VecDeque::new() })
    }

    /// Sends the hello and returns the relay's answer (`ready` when all is well).
    pub async fn hello(&mut self, recording: &Recording) -> Event {
        self.send_text(&ClientMessage::Hello(Hello::new(recording.clone())).to_json()).await;
        self.next().await
    }

    /// Sends the hello and asserts `ready`.
    pub async fn start(url: &str, recording: &Recording) -> Self {
        let mut r = Self::connect(url).await;
        match r.hello(recording).await {
            Event::Server(ServerMessage::Ready { .. }) => r,
            other => panic!("expected ready, got {other:?}"),
        }
    }

    /// Sends one text message.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.expect("send text");
    }

    /// Sends any message while reading what the relay says, as a browser does (see [`crate::send_while_reading`]):
    /// for a message the relay refuses before it has all of it.
    pub async fn send_while_reading(&mut self, msg: Message) {
        let said = crate::send_while_reading(&mut self.ws, msg).await;
        self.said.extend(said);
    }

    /// Sends one binary message.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.expect("send binary");
    }

    /// Sends a raw WebSocket message (for invalid UTF-8 and other things a well-behaved client never sends).
    pub async fn send_raw(&mut self, msg: Message) {
        let _ = self.ws.send(msg).await;
    }

    /// Sends audio frame `seq`.
    pub async fn send_frame(&mut self, seq: u32, capture_ts_ms: i64, pcm: &[i16]) {
        self.send_binary(frame::encode_to_vec(seq, capture_ts_ms, pcm)).await;
    }

    /// The next thing the relay says (60 s at most), skipping pings.
    pub async fn next(&mut self) -> Event {
        loop {
            let msg = match self.said.pop_front() {
                Some(said) => Some(said),
                None => tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                    .await
                    .expect("relay said nothing within 60 s"),
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Event::Server(
                        ServerMessage::parse(&t).unwrap_or_else(|e| panic!("relay sent bad JSON {t}: {e}")),
                    );
                }
                Some(Ok(Message::Close(frame))) => {
                    // Complete the closing handshake: tungstenite queued our close reply; flush sends it.
                    let _ = self.ws.flush().await;
                    return Event::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                }
                Some(Ok(Message::Binary(_))) => panic!("the relay sent a binary message to a recorder"),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    eprintln!("recorder: connection ended with {e}");
                    return Event::Closed(None);
                }
                None => return Event::Closed(None),
            }
        }
    }

    /// Reads until `n` acks arrived, returning them as (seq, partition, offset); status messages are skipped.
    pub async fn acks(&mut self, n: usize) -> Vec<(u32, i32, i64)> {
        let mut acks = Vec::with_capacity(n);
        while acks.len() < n {
            match self.next().await {
                Event::Server(ServerMessage::Ack { seq, partition, offset }) => acks.push((seq, partition, offset)),
                Event::Server(ServerMessage::Status { .. }) => {}
                other => panic!("expected an ack, got {other:?} after {} acks", acks.len()),
            }
        }
        acks
    }

    /// Expects an `error` message followed by a close frame; returns (code, message, close code).
    pub async fn expect_error(&mut self) -> (ErrorCode, String, u16) {
        let (code, message) = loop {
            match self.next().await {
                Event::Server(ServerMessage::Error { code, message }) => break (code, message),
                Event::Server(ServerMessage::Ack { .. } | ServerMessage::Status { .. }) => {}
                other => panic!("expected an error message, got {other:?}"),
            }
        };
        match self.next().await {
            Event::Closed(Some((close, _))) => (code, message, close),
            other => panic!("expected a close frame after error {code}, got {other:?}"),
        }
    }

    /// Closes normally (1000).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
