//! A recorder that behaves like the page's uplink under faults: it records in real time whatever happens to
//! the connection, keeps every frame until the relay acks it, reconnects with backoff when the connection
//! drops, and resends what is unacked, in order, after each `ready`. For the fault tests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use soundline_shared::control::{ClientMessage, Hello, LinkState, Resume, ServerMessage};
use soundline_shared::frame;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use soundline_shared::envelope::Envelope;

use crate::read_all;
use crate::recorder::{recording, samples};

/// Frame length of the recorders the fault tests start.
pub const FRAME_MS: u64 = 100;

/// By car: seq -> every (partition, offset) the frame landed at.
pub type Landed = BTreeMap<String, BTreeMap<u32, Vec<(i32, i64)>>>;

/// Kafka's records of `topic` (its `partitions`, read from `bootstrap`), by car: seq -> every (partition, offset)
/// it landed at.
pub async fn landed(bootstrap: &str, topic: &str, partitions: i32) -> Landed {
    let brokers = bootstrap.split(',').map(str::to_owned).collect();
    let client = rskafka::client::ClientBuilder::new(brokers).build().await.expect("client");
    let mut out = Landed::new();
    for (p, offset, r) in read_all(&client, topic, partitions).await {
        let envelope = Envelope::parse(r.value.as_deref().unwrap_or_default()).expect("an envelope");
        let seq: u32 = std::str::from_utf8(&r.headers["seq"]).expect("utf-8").parse().expect("seq header");
        out.entry(envelope.recording.device.car_id).or_default().entry(seq).or_default().push((p, offset));
    }
    out
}

/// Starts `n` resilient recorders (cars `CAR-{tag}-i`) of `frames` frames of [`FRAME_MS`] through `url`; returns
/// their outcomes by car once they are done.
pub fn start_recorders(url: &str, tag: &str, n: usize, frames: u32) -> Vec<tokio::task::JoinHandle<(String, Outcome)>> {
    (0..n)
        .map(|i| {
            let (url, car, segment) = (url.to_owned(), format!("CAR-{tag}-{i}"), format!("seg-{tag}-{i}"));
            tokio::spawn(async move {
                let o = record(url, car.clone(), segment, frames, FRAME_MS, Duration::from_secs(90)).await;
                (car, o)
            })
        })
        .collect()
}

/// Waits for every recorder started by [`start_recorders`].
pub async fn outcomes(recorders: Vec<tokio::task::JoinHandle<(String, Outcome)>>) -> Vec<(String, Outcome)> {
    let mut out = Vec::new();
    for r in recorders {
        out.push(r.await.expect("recorder"));
    }
    out
}

/// Every frame recorded is in Kafka, each ack names a record of that frame, and a car's records sit in one
/// partition in `seq` order (first copies; a duplicate may come later); returns the duplicates.
///
/// # Panics
///
/// When any of that does not hold.
pub fn check(outcomes: &[(String, Outcome)], frames: u32, in_kafka: &Landed) -> usize {
    let mut duplicates = 0;
    for (car, o) in outcomes {
        assert_eq!(o.recorded, frames, "{car} recorded through the fault");
        assert_eq!(o.unacked, 0, "{car}: every frame acked in the end");
        assert_eq!(o.acked.len(), frames as usize, "{car}: an ack for every frame");
        let kafka = &in_kafka[car];
        assert_eq!(
            kafka.keys().copied().collect::<BTreeSet<_>>(),
            (0..frames).collect(),
            "{car}: every frame in Kafka"
        );
        for (seq, at) in &o.acked {
            assert!(kafka[seq].contains(at), "{car} seq {seq}: acked at {at:?}, Kafka has it at {:?}", kafka[seq]);
        }
        let firsts: Vec<(i32, i64)> = kafka.values().map(|v| v[0]).collect();
        assert!(firsts.iter().all(|(p, _)| *p == firsts[0].0), "{car}: every frame in one partition");
        assert!(firsts.windows(2).all(|w| w[0].1 < w[1].1), "{car}: frames in Kafka in seq order");
        duplicates += kafka.values().map(|v| v.len() - 1).sum::<usize>();
    }
    duplicates
}

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
    /// The longest a frame waited from being recorded to its (first) ack: the stall a fault caused.
    pub longest_ack_wait: Duration,
    /// When each ack arrived, in arrival order.
    pub ack_times: Vec<tokio::time::Instant>,
    /// Errors the relay sent (each ends a connection; the recorder reconnects and resends).
    pub errors: Vec<soundline_shared::control::ErrorCode>,
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
    let (mic_tx, mut mic) = mpsc::unbounded_channel::<(u32, Vec<u8>, tokio::time::Instant)>();
    let ts0 = 1_764_000_000_000_i64;
    let seg = segment.clone();
    let microphone = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(frame_ms));
        for seq in 0..frames {
            tick.tick().await;
            let pcm = samples(&seg, seq, (16 * frame_ms) as usize);
            let bytes = frame::encode_to_vec(seq, ts0 + i64::from(seq) * frame_ms as i64, &pcm);
            let _ = mic_tx.send((seq, bytes, tokio::time::Instant::now()));
        }
    });
    // As the page: a reconnect says where the last acked frame landed, so that another relay finds what was
    // stored after it instead of producing it twice.
    let mut last_ack: Option<Resume> = None;
    let mut out = Outcome::default();
    let mut unacked: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut recorded_at: BTreeMap<u32, tokio::time::Instant> = BTreeMap::new();
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
                    Ok((seq, bytes, at)) => {
                        recorded_at.insert(seq, at);
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
        let hello = ClientMessage::Hello(Hello { resume: last_ack, ..Hello::new(recording(&car, &segment)) }).to_json();
        if tx.send(Message::Text(hello.into())).await.is_err() {
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
                    Some((seq, bytes, at)) => {
                        recorded_at.insert(seq, at);
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
                            out.ack_times.push(tokio::time::Instant::now());
                            if let Some(at) = recorded_at.remove(&seq) {
                                out.longest_ack_wait = out.longest_ack_wait.max(at.elapsed());
                            }
                            unacked.remove(&seq);
                            out.acked.insert(seq, (partition, offset));
                            last_ack = Some(Resume { partition, offset });
                        }
                        Ok(ServerMessage::Status { state, .. }) => out.statuses.push(state),
                        Ok(ServerMessage::Error { code, .. }) => out.errors.push(code),
                        Err(_) => {}
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
