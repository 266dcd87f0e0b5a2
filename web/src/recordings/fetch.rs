//! Fetching one recording's audio from Kafka, only when it is played or downloaded: a bounded read on its own
//! `/ws/feed` connection (its partition, from its first offset to its last, its segment only, with PCM), which
//! the relay ends with `end`. Browser only.
//!
//! Where it sits: between the recordings list (which knows each frame's partition and offset, without audio)
//! and the player and the WAV download. The cost is bounded: the relay reads `last - first + 1` records of one
//! partition (other cars' records among them), and sends this recording's frames only.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt as _, StreamExt as _};
use gloo_net::websocket::{Message, WebSocketError, futures::WebSocket};
use soundline_shared::feed::{FeedClientMessage, FeedServerMessage, From, Subscribe};

/// What a fetch brought back.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Samples by sequence number.
    pub frames: BTreeMap<u32, Vec<i16>>,
    /// Bytes received (the messages' text).
    pub bytes: usize,
}

/// Fetches frames of `segment_id` at `partition`, offsets `first..=last`, from the feed at `url`: the frames, or
/// why not (the relay's close reason, or the socket's failure).
///
/// # Errors
///
/// The socket could not open, or closed before the relay's `end`.
pub async fn recording(
    url: &str,
    token: &str,
    segment_id: &str,
    partition: i32,
    first: i64,
    last: i64,
) -> Result<Fetched, String> {
    let mut ws = WebSocket::open_with_protocols(url, &crate::socket_protocols(token)).map_err(|e| e.to_string())?;
    let subscribe = FeedClientMessage::Subscribe(Subscribe {
        from: From::Offsets(BTreeMap::from([(partition, first)])),
        until: Some(BTreeMap::from([(partition, last + 1)])),
        ..Subscribe::live(None, Some(segment_id.to_owned()))
    })
    .to_json();
    // The sink waits for the socket to open.
    ws.send(Message::Text(subscribe)).await.map_err(|e| describe(&e))?;
    let mut got = Fetched::default();
    while let Some(message) = ws.next().await {
        let text = match message {
            Ok(Message::Text(text)) => text,
            Ok(Message::Bytes(_)) => continue,
            Err(e) => return Err(describe(&e)),
        };
        got.bytes += text.len();
        match FeedServerMessage::parse(&text) {
            Ok(FeedServerMessage::Record(r)) if r.kind == "envelope" => {
                let Some(seq) = r.seq else { continue };
                let pcm =
                    r.value["originData"]["base64"].as_str().and_then(|b| BASE64.decode(b).ok()).unwrap_or_default();
                let samples = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
                got.frames.entry(seq).or_insert(samples);
            }
            // The relay closes with 1000 right after; dropping the socket closes it from this side too.
            Ok(FeedServerMessage::End) => return Ok(got),
            _ => {}
        }
    }
    Err("closed".into())
}

/// A socket failure in one line: the relay's close reason when it gave one.
fn describe(e: &WebSocketError) -> String {
    match e {
        WebSocketError::ConnectionClose(close) if !close.reason.is_empty() => close.reason.clone(),
        WebSocketError::ConnectionClose(close) => format!("closed ({})", close.code),
        other => other.to_string(),
    }
}
