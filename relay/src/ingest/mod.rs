//! `/ws/record`: one recorder connection, from hello to the last ack.
//!
//! # Data Flow
//!
//! ```text
//!  socket ─► reader ── hello? ─► ready ─────────────────────────────────► outbound ─► writer ─► socket
//!              │                                                            ▲            ▲
//!              └─ frame ─► decode ─► seq check ─► envelope ─► reserve ─► producer.send    │
//!                                                        (may wait: backpressure)  │      │
//!                                                                                  └─ ack receivers, in order
//!  producer link state (watch) ──────────────────────────────────────────────── status ───┘
//! ```
//!
//! The socket is split, as in axum's chat example: the reader validates and hands records to the producer; the
//! writer owns the sink and sends, in frame order, an ack per record once Kafka stored it, plus status changes.
//! A protocol error stops the reader; the writer still delivers the acks of frames already produced (bounded by
//! the shutdown timeout), then sends the error and closes with its code. SIGTERM does the same with
//! `shutting_down` / 1001. A client's bad input ends only its own connection.

pub mod dedup;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use chrono::{TimeZone, Utc};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rskafka::record::Record;
use soundline_shared::control::{ClientMessage, ErrorCode, Hello, LinkState, ServerMessage};
use soundline_shared::envelope;
use soundline_shared::frame::{AudioFrame, FrameError};
use soundline_shared::recording::Recording;
use tokio::sync::{mpsc, oneshot};

use crate::doors::limits::Throttle;
use crate::kafka::producer::{Delivery, Link, ProduceError, Route};
use crate::state::AppState;
use crate::ws::{Fail, answer_close, classify_read_error, goodbye, idle_timeout, linger, message_len};
use tokio::time::Instant;

/// Outbound work for the writer. Bounded: when 1024 items wait (acks of ~3 minutes of 200 ms frames), the reader
/// stops reading until the writer catches up.
const OUTBOUND_QUEUE: usize = 1024;

/// Bytes Kafka adds around a record in a batch (record header, key, header names): a frame is refused as too
/// large when its envelope plus this exceeds the broker's message size.
const RECORD_OVERHEAD_BYTES: usize = 512;

/// Longest a message to a recorder may take to leave.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

enum Outbound {
    Message(ServerMessage),
    /// A frame handed to Kafka (or a resend of one): its ack goes out, in frame order, once Kafka answers.
    Ack(Unacked),
    /// Stop: deliver pending acks, then send the error (if any) and close with its code.
    Close(ErrorCode, String),
}

/// Serves one upgraded recorder connection until it ends. `span` is the connection's (`ws{peer who endpoint}`):
/// the parent of its log lines, never entered around its futures (that costs on every poll, twice a frame).
pub async fn serve(socket: WebSocket, state: AppState, peer: String, span: tracing::Span) {
    let (sink, stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let held = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(write(sink, out_rx, state.clone(), Arc::clone(&held), span.clone()));
    let mut stream = stream;
    let outcome = read(&mut stream, &out_tx, &state, &held, &peer, &span).await;
    let outcome_was_error = outcome.is_some();
    if let Some(Fail(code, message)) = outcome {
        state.metrics().error(code);
        if code == ErrorCode::ShuttingDown {
            tracing::info!(parent: &span, peer, "closing recorder connection for shutdown");
        } else {
            tracing::info!(parent: &span, peer, %code, message, "closing recorder connection");
        }
        let _ = out_tx.send(Outbound::Close(code, message)).await;
    }
    drop(out_tx);
    let _ = writer.await;
    if outcome_was_error {
        linger(&mut stream).await;
    }
}

/// Reads until the client leaves (`None`) or a problem ends the connection.
async fn read(
    stream: &mut SplitStream<WebSocket>,
    out: &mpsc::Sender<Outbound>,
    state: &AppState,
    held: &AtomicU64,
    peer: &str,
    span: &tracing::Span,
) -> Option<Fail> {
    let shutdown = state.shutdown().clone();
    let limits = &state.config().limits;
    let mut throttle = Throttle::new(limits);
    let mut deadline = Instant::now() + limits.hello_timeout;
    let mut session: Option<Session> = None;
    // One shutdown future and one timer for the connection's life, not one of each per frame (both register
    // with state shared by every connection): the deadline moves with every message, the timer only when it
    // fires before the deadline.
    let cancelled = shutdown.cancelled();
    let idle = tokio::time::sleep_until(deadline);
    tokio::pin!(cancelled, idle);
    loop {
        let msg = tokio::select! {
            biased;
            () = &mut cancelled => {
                return Some(Fail(ErrorCode::ShuttingDown, "the relay is shutting down; reconnect and resend unacked frames".into()));
            }
            msg = stream.next() => msg,
            () = &mut idle => {
                if Instant::now() < deadline {
                    idle.as_mut().reset(deadline);
                    continue;
                }
                return Some(idle_timeout(session.is_none(), limits));
            }
        };
        let msg = match msg {
            None => return None,
            Some(Ok(m)) => m,
            Some(Err(e)) => return classify_read_error(&e, span),
        };
        throttle.admit(message_len(&msg), state.metrics()).await;
        let result = match (msg, session.as_mut()) {
            (Message::Text(text), None) => match hello(&text, state) {
                Ok((s, ready)) => {
                    let (car, segment) = (&s.recording.device.car_id, &s.recording.segment_id);
                    tracing::info!(parent: span, peer, %car, %segment, "recording started");
                    session = Some(s);
                    out.send(Outbound::Message(ready)).await.map_err(|_| Fail(ErrorCode::Internal, String::new()))
                }
                Err(f) => Err(f),
            },
            (Message::Binary(_), None) => Err(Fail(
                ErrorCode::HelloRequired,
                "send the hello (a JSON text message) before any audio frame".into(),
            )),
            (Message::Binary(bytes), Some(s)) => frame(&bytes, s, out, state, held, span).await,
            (Message::Text(_), Some(_)) => Err(Fail(
                ErrorCode::UnexpectedText,
                "only binary audio frames are expected after the hello; send text only once, as the hello".into(),
            )),
            (Message::Close(_), _) => return None,
            (Message::Ping(_) | Message::Pong(_), _) => Ok(()),
        };
        if let Err(fail) = result {
            return Some(fail);
        }
        // Before the hello, pongs and pings do not buy time: the hello must come within hello_timeout_s.
        if session.is_some() {
            deadline = Instant::now() + limits.idle_timeout;
        }
    }
}

/// Per-connection state after the hello.
struct Session {
    recording: Recording,
    /// Car + segment, for recognising resends ([`crate::ingest::dedup`]).
    dedup_key: Arc<str>,
    /// The recording's envelope with everything its frames share already serialized.
    template: envelope::EnvelopeTemplate,
    /// Its partition's queue, chosen once from its Kafka key (the carID, UTF-8).
    route: Route,
    next_seq: Option<u32>,
}

fn hello(text: &str, state: &AppState) -> Result<(Session, ServerMessage), Fail> {
    let msg = ClientMessage::parse(text).map_err(|e| Fail(e.hello_code(), e.to_string()))?;
    let ClientMessage::Hello(Hello { recording, .. }) = msg;
    let cfg = state.config();
    let ready = ServerMessage::Ready {
        protocol: soundline_shared::PROTOCOL_VERSION,
        topic: cfg.kafka.topic.clone(),
        max_frame_samples: cfg.max_frame_samples,
    };
    let dedup_key = crate::ingest::dedup::Dedup::segment_key(&recording.device.car_id, &recording.segment_id);
    let template = envelope::EnvelopeTemplate::new(&cfg.stamp, &recording);
    let route = state.producer().route(recording.device.car_id.as_bytes());
    Ok((Session { recording, dedup_key, template, route, next_seq: None }, ready))
}

async fn frame(
    bytes: &[u8],
    session: &mut Session,
    out: &mpsc::Sender<Outbound>,
    state: &AppState,
    held: &AtomicU64,
    span: &tracing::Span,
) -> Result<(), Fail> {
    let cfg = state.config();
    let frame = AudioFrame::decode(bytes, cfg.max_frame_samples).map_err(|e| match e {
        FrameError::TooManySamples { .. } => Fail(ErrorCode::FrameTooLarge, e.to_string()),
        e => Fail(ErrorCode::BadFrame, e.to_string()),
    })?;
    if let Some(expected) = session.next_seq
        && frame.seq != expected
    {
        return Err(Fail(ErrorCode::SequenceOutOfOrder, format!("expected seq {expected}, got {}", frame.seq)));
    }
    session.next_seq = Some(frame.seq.checked_add(1).ok_or_else(|| {
        Fail(ErrorCode::SequenceOutOfOrder, "seq 4294967295 is the last of a segment; start a new segment".into())
    })?);

    // A resend of a frame this process already produced: ack it again where it landed, produce nothing.
    if let Some(landed) = state.dedup().lookup(&session.dedup_key, frame.seq) {
        state.metrics().duplicates_total.inc();
        let (done, delivery) = oneshot::channel();
        let _ = done.send(Ok(landed));
        let segment = Arc::clone(&session.dedup_key);
        return out
            .send(Outbound::Ack(Unacked { seq: frame.seq, bytes: 0, segment, delivery }))
            .await
            .map_err(|_| Fail(ErrorCode::Internal, "the connection's writer stopped".into()));
    }

    let mut uuid_buf = uuid::Uuid::encode_buffer();
    let uuid = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut uuid_buf);
    let mut value = Vec::new();
    session.template.write_json(uuid, frame.capture_ts_ms, frame.pcm_le, &mut value);
    let size = value.len() + session.route.key().len() + RECORD_OVERHEAD_BYTES;
    if size > cfg.kafka.max_message_bytes {
        return Err(Fail(
            ErrorCode::RecordTooLarge,
            format!(
                "frame seq {} makes a {size}-byte record; the broker accepts at most {} bytes: send shorter frames",
                frame.seq, cfg.kafka.max_message_bytes
            ),
        ));
    }
    tracing::debug!(
        parent: span,
        seq = frame.seq,
        samples = frame.sample_count(),
        bytes = value.len(),
        topic = %cfg.kafka.topic,
        collect_timestamp = frame.capture_ts_ms,
        "frame"
    );
    let record = Record {
        key: Some(session.route.key().to_vec()),
        value: Some(value),
        headers: BTreeMap::from([
            ("segmentId".to_owned(), session.recording.segment_id.as_bytes().to_vec()),
            ("seq".to_owned(), frame.seq.to_string().into_bytes()),
        ]),
        // The relay's receive time, as the old uploader's kafka-python producer set it; the device's clock stays
        // in `collectTimestamp`. A device clock is untrusted: Kafka 4 refuses records stamped more than an hour
        // ahead (`log.message.timestamp.after.max.ms`), and the batch holding one would be retried forever,
        // stalling the partition; records older than `retention.ms` would be deleted as soon as they are acked.
        timestamp: Utc.timestamp_millis_opt(crate::since_epoch().as_millis() as i64).single().unwrap_or_default(),
    };

    let producer = state.producer();
    let permit = match producer.try_reserve(size) {
        Some(p) => p,
        None => {
            state.metrics().backpressure_total.inc();
            let status = |state, message: &str| {
                Outbound::Message(ServerMessage::Status {
                    state,
                    held_bytes: held.load(Ordering::Relaxed),
                    message: message.to_owned(),
                })
            };
            let _ = out
                .send(status(
                    LinkState::Backpressure,
                    "the relay's memory budget is full; waiting for Kafka before reading more",
                ))
                .await;
            let permit = producer.reserve(size).await;
            let _ = out.send(status(LinkState::Ok, "reading again")).await;
            permit
        }
    };
    held.fetch_add(size as u64, Relaxed);
    let metrics = state.metrics();
    metrics.frames_in_total.inc();
    metrics.bytes_in_total.inc_by(frame.pcm_le.len() as u64);
    let delivery = producer.send(&mut session.route, record, permit);
    let segment = Arc::clone(&session.dedup_key);
    out.send(Outbound::Ack(Unacked { seq: frame.seq, bytes: size, segment, delivery }))
        .await
        .map_err(|_| Fail(ErrorCode::Internal, "the connection's writer stopped".into()))
}

/// A frame handed to Kafka whose ack has not been sent yet.
struct Unacked {
    seq: u32,
    /// Its share of the connection's held bytes.
    bytes: usize,
    /// The segment's dedup key: once Kafka has the frame it is remembered there.
    segment: Arc<str>,
    delivery: oneshot::Receiver<Result<Delivery, ProduceError>>,
}

/// Kafka's answer for the oldest unacked frame. Acks go out in frame order: only the oldest is waited on (a
/// recording's frames share one partition, so Kafka answers them in that order anyway).
async fn oldest(unacked: &mut VecDeque<Unacked>) -> Result<Delivery, ProduceError> {
    match unacked.front_mut() {
        Some(u) => (&mut u.delivery).await.unwrap_or(Err(ProduceError::Stopped)),
        None => std::future::pending().await,
    }
}

/// Why the writer stops: the socket failed (nothing more can be sent), the client closed (or left), or the
/// connection must close with a code.
enum Stop {
    SocketGone,
    ClientLeft,
    Close(ErrorCode, String),
}

/// Owns the sink: acks in frame order, status on link changes, and the final error + close.
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    state: AppState,
    held: Arc<AtomicU64>,
    span: tracing::Span,
) {
    let mut pending: VecDeque<Unacked> = VecDeque::new();
    let mut link = state.producer().link();
    let mut last_up = true;
    let mut keepalive = crate::doors::limits::Keepalive::new(&state.config().limits);
    // Waits for the link to change, holding its receiver until then: one registration with the watch (shared
    // by every connection) per change rather than per loop.
    let mut link_changed = std::pin::pin!(changed(link.clone()));
    let stop = loop {
        let step = tokio::select! {
            biased;
            result = oldest(&mut pending), if !pending.is_empty() => match pending.pop_front() {
                Some(u) => deliver(&mut sink, &u, result, &state, &held).await,
                None => Ok(()),
            },
            item = rx.recv() => match item {
                Some(Outbound::Ack(unacked)) => {
                    pending.push_back(unacked);
                    Ok(())
                }
                Some(Outbound::Message(m)) => {
                    let is_ready = matches!(m, ServerMessage::Ready { .. });
                    let mut sent = send(&mut sink, m).await;
                    if is_ready {
                        // A recorder that connects while Kafka is away hears so right after `ready`.
                        let current = link.borrow_and_update().clone();
                        last_up = current.up;
                        if sent.is_ok() && !current.up {
                            sent = send(&mut sink, status(&current, &held)).await;
                        }
                    }
                    sent.map_err(|_| Stop::SocketGone)
                }
                Some(Outbound::Close(code, message)) => Err(Stop::Close(code, message)),
                // The reader ended without an error: the client closed (or left); nobody is there to ack.
                None => Err(Stop::ClientLeft),
            },
            _ = keepalive.ping.tick() => {
                crate::doors::limits::count_ping(state.metrics());
                send_message(&mut sink, Message::Ping(Default::default())).await.map_err(|_| Stop::SocketGone)
            }
            watched = &mut link_changed => {
                link_changed.set(changed(watched));
                let current = link.borrow_and_update().clone();
                if current.up == last_up {
                    Ok(())
                } else {
                    last_up = current.up;
                    send(&mut sink, status(&current, &held)).await.map_err(|_| Stop::SocketGone)
                }
            }
        };
        if let Err(stop) = step {
            break stop;
        }
    };
    let (mut code, mut message) = match stop {
        Stop::Close(code, message) => (code, message),
        Stop::ClientLeft => return answer_close(&mut sink).await,
        Stop::SocketGone => return,
    };
    // Deliver the acks of frames already handed to Kafka, within the shutdown timeout.
    let drained = tokio::time::timeout(state.config().shutdown_timeout, async {
        while !pending.is_empty() {
            let result = oldest(&mut pending).await;
            let Some(u) = pending.pop_front() else { break };
            match deliver(&mut sink, &u, result, &state, &held).await {
                Ok(()) => {}
                Err(Stop::SocketGone | Stop::ClientLeft) => return None,
                Err(Stop::Close(c, m)) => return Some((c, m)),
            }
        }
        None
    })
    .await;
    match drained {
        Ok(Some((c, m))) => (code, message) = (c, m),
        Ok(None) => {}
        Err(_) => {
            tracing::warn!(parent: &span, pending = pending.len(), "closing a recorder connection with acks still pending");
        }
    }
    goodbye(&mut sink, code, &message, SEND_TIMEOUT).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
}

/// Sends one ack, or turns a refused record into the reason to close.
async fn deliver(
    sink: &mut SplitSink<WebSocket, Message>,
    &Unacked { seq, bytes, ref segment, .. }: &Unacked,
    result: Result<Delivery, ProduceError>,
    state: &AppState,
    held: &AtomicU64,
) -> Result<(), Stop> {
    held.fetch_sub(bytes as u64, Relaxed);
    match result {
        Ok(d) => {
            state.dedup().remember(segment, seq, d);
            send(sink, ServerMessage::Ack { seq, partition: d.partition, offset: d.offset })
                .await
                .map_err(|_| Stop::SocketGone)?;
            state.metrics().acks_total.inc();
            Ok(())
        }
        Err(ProduceError::TooLarge { bytes }) => {
            state.metrics().error(ErrorCode::RecordTooLarge);
            Err(Stop::Close(
                ErrorCode::RecordTooLarge,
                format!("Kafka refused frame seq {seq} ({bytes} bytes) as too large"),
            ))
        }
        Err(ProduceError::Stopped) => Err(Stop::Close(
            ErrorCode::ShuttingDown,
            "the relay stopped before Kafka acknowledged every frame; resend unacked frames".into(),
        )),
    }
}

/// Returns `link` once it changed (never, once the producer is gone).
async fn changed(mut link: tokio::sync::watch::Receiver<Link>) -> tokio::sync::watch::Receiver<Link> {
    if link.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    link
}

fn status(link: &Link, held: &AtomicU64) -> ServerMessage {
    let (state, message) = if link.up {
        (LinkState::Ok, "frames are reaching Kafka".to_owned())
    } else {
        (LinkState::KafkaUnavailable, format!("Kafka is unavailable ({}); frames are held and retried", link.detail))
    };
    ServerMessage::Status { state, held_bytes: held.load(Relaxed), message }
}

async fn send(sink: &mut SplitSink<WebSocket, Message>, msg: ServerMessage) -> Result<(), axum::Error> {
    send_message(sink, Message::Text(msg.to_json().into())).await
}

/// A recorder that sends but never reads fills its socket: a send that cannot leave within [`SEND_TIMEOUT`] ends
/// the connection (the reader then stops too) instead of holding its task and slots forever.
async fn send_message(sink: &mut SplitSink<WebSocket, Message>, msg: Message) -> Result<(), axum::Error> {
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(msg)).await {
        Ok(sent) => sent,
        Err(_) => Err(axum::Error::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the recorder read nothing for 30 s",
        ))),
    }
}
