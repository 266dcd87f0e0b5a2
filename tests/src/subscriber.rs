//! A scripted feed subscriber: speaks the `/ws/feed` part of `docs/protocol.md` over a real WebSocket.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use soundline_shared::control::{ErrorCode, ServerMessage};
use soundline_shared::feed::{FeedClientMessage, FeedRecord, FeedServerMessage, From, Subscribe};
use tokio_tungstenite::tungstenite::Message;

use crate::{WsRead, WsStream};

/// What the relay sent a subscriber.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    /// A feed message.
    Feed(FeedServerMessage),
    /// An error message.
    Error(ErrorCode, String),
    /// The connection closed (with the close code, if a close frame came).
    Closed(Option<u16>),
}

/// One feed connection.
pub struct Subscriber {
    ws: WsStream,
    /// What the relay said while a send was pending ([`Subscriber::send_while_reading`]), read first.
    said: VecDeque<WsRead>,
    /// Next offset per partition: from `subscribed`, advanced by every record. Resume with it.
    pub next: BTreeMap<i32, i64>,
}

/// A subscription to `topic` (None: the audio topic) from `from`.
pub fn subscription(topic: Option<&str>, from: From) -> Subscribe {
    Subscribe { topic: topic.map(str::to_owned), from, ..Subscribe::live(None, None) }
}

impl Subscriber {
    /// Connects with extra request headers and sends `sub`; the handshake's error is returned, not a panic.
    pub async fn connect_with(
        url: &str,
        headers: &[(&str, &str)],
        sub: &Subscribe,
    ) -> Result<Self, Box<tokio_tungstenite::tungstenite::Error>> {
        let mut ws = crate::ws_connect(url, headers).await?;
        ws.send(Message::Text(FeedClientMessage::Subscribe(sub.clone()).to_json().into())).await.map_err(Box::new)?;
        Ok(Self { ws, said: VecDeque::new(), next: BTreeMap::new() })
    }

    /// A subscriber on an open WebSocket that has sent nothing yet.
    pub fn from_stream(ws: WsStream) -> Self {
        Self { ws, said: VecDeque::new(), next: BTreeMap::new() }
    }

    /// Sends any message (for tests of what a well-behaved subscriber never sends) while reading what the relay
    /// says, as a browser does (see [`crate::send_while_reading`]): the relay may refuse it before it has all of it.
    pub async fn send_while_reading(&mut self, msg: Message) {
        let said = crate::send_while_reading(&mut self.ws, msg).await;
        self.said.extend(said);
    }

    /// Connects to `url` and sends `sub`; does not wait for the answer.
    pub async fn connect(url: &str, sub: &Subscribe) -> Self {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
        ws.send(Message::Text(FeedClientMessage::Subscribe(sub.clone()).to_json().into()))
            .await
            .expect("send subscribe");
        Self { ws, said: VecDeque::new(), next: BTreeMap::new() }
    }

    /// Connects, subscribes and waits for `subscribed`.
    pub async fn start(url: &str, sub: &Subscribe) -> Self {
        let mut s = Self::connect(url, sub).await;
        match s.next_event().await {
            FeedEvent::Feed(FeedServerMessage::Subscribed { .. }) => s,
            other => panic!("expected subscribed, got {other:?}"),
        }
    }

    /// The next thing the relay says (60 s at most).
    pub async fn next_event(&mut self) -> FeedEvent {
        loop {
            let msg = match self.said.pop_front() {
                Some(said) => Some(said),
                None => tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                    .await
                    .expect("the feed said nothing within 60 s"),
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(ServerMessage::Error { code, message }) = ServerMessage::parse(&t) {
                        return FeedEvent::Error(code, message);
                    }
                    let m = FeedServerMessage::parse(&t).unwrap_or_else(|e| panic!("bad feed message {t}: {e}"));
                    match &m {
                        FeedServerMessage::Subscribed { from, .. } => self.next = from.clone(),
                        FeedServerMessage::Record(r) => {
                            self.next.insert(r.partition, r.offset + 1);
                        }
                        FeedServerMessage::Lagged { .. } | FeedServerMessage::End => {}
                    }
                    return FeedEvent::Feed(m);
                }
                Some(Ok(Message::Close(f))) => {
                    let _ = self.ws.flush().await;
                    return FeedEvent::Closed(f.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return FeedEvent::Closed(None),
            }
        }
    }

    /// Reads `n` records (panics on anything else but `lagged`-free progress).
    pub async fn records(&mut self, n: usize) -> Vec<FeedRecord> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_event().await {
                FeedEvent::Feed(FeedServerMessage::Record(r)) => out.push(r),
                other => panic!("expected a record, got {other:?} after {} records", out.len()),
            }
        }
        out
    }

    /// Expects no record within `wait`.
    pub async fn expect_quiet(&mut self, wait: Duration) {
        if let Some(said) = self.said.front() {
            panic!("expected nothing, got {said:?}");
        }
        if let Ok(msg) = tokio::time::timeout(wait, self.ws.next()).await {
            panic!("expected nothing, got {msg:?}");
        }
    }

    /// Closes normally.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
