//! A recorder that behaves like the page's uplink under faults: it records in real time whatever happens to
//! the connection, keeps every frame until the relay acks it, reconnects with backoff when the connection
//! drops, and resends what is unacked, in order, after each `ready`. For the fault tests.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use soundline_shared::control::{ClientMessage, Hello, LinkState, ServerMessage};
use soundline_shared::frame;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::recorder::{recording, samples};

/// What a resilient recorder saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Frames recorded (all of them, outages or not).
    pub recorded: u32,
    /// seq -> where the relay said it landed (the last ack, for a frame acked twice).
    pub acked: BTreeMap<u32, (i32, i64)>,
    /// Connections opened after the first.
    pub reconnects: u32,
    /// Link states the relay reported.
    pub statuses: Vec<LinkState>,
    /// Frames still unacked at the end (must be 0).
    pub unacked: usize,
}

/// Records `frames` frames of `frame_ms` in real time as car `car`, segment `segment`, through `url`; returns once
/// every frame is acked or `give_up` after the last frame was recorded.
pub async fn record(
    url: String,
    car: String,
    segment: String,
    frames: u32,
    frame_ms: u64,
    give_up: Duration,
) -> Outcome {
    // The microphone: never waits for the network.
    let (mic_tx, mut mic) = mpsc::unbounded_channel::<(u32, Vec<u8>)>();
    let ts0 = 1_764_000_000_000_i64;
    let seg = segment.clone();
    let microphone = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(frame_ms));
        for seq in 0..frames {
            tick.tick().await;
            let pcm = samples(&seg, seq, (16 * frame_ms) as usize);
            let _ = mic_tx.send((seq, frame::encode_to_vec(seq, ts0 + i64::from(seq) * frame_ms as i64, &pcm)));
        }
    });
    let hello = ClientMessage::Hello(Hello::new(recording(&car, &segment))).to_json();
    let mut out = Outcome::default();
    let mut unacked: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut mic_done = false;
    let mut deadline = None;
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    'connections: loop {
        if mic_done && unacked.is_empty() {
            break;
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() > d) {
            break;
        }
        if !first {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            out.reconnects += 1;
        }
        first = false;
        let Ok(Ok((ws, _))) =
            tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(&url)).await
        else {
            // Keep recording while the relay is away.
            loop {
                match mic.try_recv() {
                    Ok((seq, bytes)) => {
                        unacked.insert(seq, bytes);
                        out.recorded += 1;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) if !mic_done => {
                        mic_done = true;
                        deadline = Some(tokio::time::Instant::now() + give_up);
                        break;
                    }
                    Err(_) => break,
                }
            }
            continue;
        };
        let (mut tx, mut rx) = ws.split();
        if tx.send(Message::Text(hello.clone().into())).await.is_err() {
            continue;
        }
        // Wait for ready, then resend everything unacked, in order.
        loop {
            match tokio::time::timeout(Duration::from_secs(10), rx.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => match ServerMessage::parse(&t) {
                    Ok(ServerMessage::Ready { .. }) => break,
                    Ok(ServerMessage::Status { state, .. }) => out.statuses.push(state),
                    _ => continue 'connections,
                },
                Ok(Some(Ok(_))) => {}
                _ => continue 'connections,
            }
        }
        backoff = Duration::from_millis(100);
        for bytes in unacked.values() {
            if tx.send(Message::Binary(bytes.clone().into())).await.is_err() {
                continue 'connections;
            }
        }
        loop {
            if mic_done && unacked.is_empty() {
                let _ = tx.close().await;
                break 'connections;
            }
            let remaining =
                deadline.map(|d: tokio::time::Instant| d.saturating_duration_since(tokio::time::Instant::now()));
            if remaining == Some(Duration::ZERO) {
                break 'connections;
            }
            tokio::select! {
                recorded = mic.recv(), if !mic_done => match recorded {
                    Some((seq, bytes)) => {
                        out.recorded += 1;
                        let sent = tx.send(Message::Binary(bytes.clone().into())).await;
                        unacked.insert(seq, bytes);
                        if sent.is_err() {
                            continue 'connections;
                        }
                    }
                    None => {
                        mic_done = true;
                        deadline = Some(tokio::time::Instant::now() + give_up);
                    }
                },
                said = rx.next() => match said {
                    Some(Ok(Message::Text(t))) => match ServerMessage::parse(&t) {
                        Ok(ServerMessage::Ack { seq, partition, offset }) => {
                            unacked.remove(&seq);
                            out.acked.insert(seq, (partition, offset));
                        }
                        Ok(ServerMessage::Status { state, .. }) => out.statuses.push(state),
                        Ok(ServerMessage::Error { .. }) | Err(_) => {}
                        Ok(ServerMessage::Ready { .. }) => {}
                    },
                    Some(Ok(Message::Close(_)) | Err(_)) | None => continue 'connections,
                    Some(Ok(_)) => {}
                },
                () = tokio::time::sleep(remaining.unwrap_or(Duration::from_secs(3600))) => break 'connections,
            }
        }
    }
    microphone.abort();
    out.unacked = unacked.len();
    out
}
