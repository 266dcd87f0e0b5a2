//! `/ws/record`: one recorder connection, from hello to the last ack.
//!
//! # Data Flow
//!
//! ```text
//!  socket ─► read ── hello? ─► ready ───────────────────────────────────────────────────► socket
//!             │                                                                            ▲
//!             └─ frame ─► decode ─► seq check ─► envelope ─► reserve ─► producer.send      │
//!                                                (may wait: backpressure)        │         │
//!                                                     unacked, in frame order ◄──┘── ack ──┤
//!  producer link state (watch) ───────────────────────────────────────────────────── status ┘
//! ```
//!
//! One task owns the connection's socket and waits, in one `select!`, for whichever comes first: Kafka's answer
//! for the oldest unacked frame (its ack goes out, in frame order), the recorder's next message, a change of the
//! Kafka link (a status), the keepalive ping, the idle timer, shutdown. Reading pauses while everything else goes
//! on: when the connection is over its rate (throttle), while its latest frame waits for the memory budget
//! (backpressure), and while [`MAX_UNACKED`] frames wait for their acks. (A reader task and a writer task, as in
//! axum's chat example, cost one more task wake-up and channel hop per frame: BENCHMARKS.md.)
//!
//! A protocol error stops reading; the acks of frames already produced still go out (bounded by the shutdown
//! timeout), then the error and the close with its code. SIGTERM does the same with `shutting_down` / 1001. A
//! client's bad input ends only its own connection.

pub mod dedup;
pub mod resume;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use chrono::{TimeZone, Utc};
use futures_util::StreamExt;
use rskafka::record::Record;
use soundline_shared::control::{ClientMessage, ErrorCode, Hello, LinkState, Resume, ServerMessage};
use soundline_shared::envelope;
use soundline_shared::frame::{AudioFrame, FrameError};
use soundline_shared::recording::Recording;
use tokio::sync::{OwnedSemaphorePermit, oneshot, watch};
use tokio::time::Instant;

use crate::doors::limits::{Keepalive, Throttle};
use crate::ingest::dedup::SegmentKey;
use crate::kafka::producer::{Delivery, Link, ProduceError, Route};
use crate::state::AppState;
use crate::ws::{Fail, answer_close, classify_read_error, goodbye, idle_timeout, linger, message_len};

/// Frames that may wait for their acks (~3 minutes of 200 ms frames): with this many, the relay reads nothing
/// more from the recorder until Kafka answers.
pub const MAX_UNACKED: usize = 1024;

/// Bytes Kafka adds around a record in a batch (record header, key, header names): a frame is refused as too
/// large when its envelope plus this exceeds the broker's message size.
const RECORD_OVERHEAD_BYTES: usize = 512;

/// Longest a message to a recorder may take to leave.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How a connection's loop ended.
enum End {
    /// The client closed (or left): nobody is there to ack.
    ClientLeft,
    /// The socket failed: nothing more can be sent.
    SocketGone,
    /// Close with a code, once the acks of frames already handed to Kafka went out.
    Fail(Fail),
}

/// Serves one upgraded recorder connection until it ends. `span` is the connection's (`ws{peer who endpoint}`):
/// the parent of its log lines, never entered around its futures (that costs on every poll, twice a frame).
pub async fn serve(mut socket: WebSocket, state: AppState, peer: String, span: tracing::Span) {
    let mut conn = Conn {
        state: &state,
        span: &span,
        peer: &peer,
        session: None,
        unacked: VecDeque::new(),
        held: 0,
        link: state.producer().link(),
        last_up: true,
    };
    let Fail(mut code, mut message) = match conn.run(&mut socket).await {
        End::ClientLeft => return answer_close(&mut socket).await,
        End::SocketGone => return,
        End::Fail(fail) => fail,
    };
    state.metrics().error(code);
    if code == ErrorCode::ShuttingDown {
        tracing::info!(parent: &span, peer, "closing recorder connection for shutdown");
    } else {
        tracing::info!(parent: &span, peer, %code, message, "closing recorder connection");
    }
    // Deliver the acks of frames already handed to Kafka, within the shutdown timeout.
    let drained = tokio::time::timeout(state.config().shutdown_timeout, async {
        while !conn.unacked.is_empty() {
            let result = oldest(&mut conn.unacked).await;
            let Some(u) = conn.unacked.pop_front() else { break };
            if let Err(end) = conn.deliver(&mut socket, &u, result).await {
                return Some(end);
            }
        }
        None
    })
    .await;
    match drained {
        Ok(None) => {}
        Ok(Some(End::Fail(Fail(c, m)))) => {
            // A refused record (or the producer stopping) while draining: that is what the client hears.
            if c != code {
                state.metrics().error(c);
            }
            (code, message) = (c, m);
        }
        Ok(Some(End::SocketGone | End::ClientLeft)) => return,
        Err(_) => {
            let pending = conn.unacked.len();
            tracing::warn!(parent: &span, pending, "closing a recorder connection with acks still pending");
        }
    }
    goodbye(&mut socket, code, &message, SEND_TIMEOUT).await;
    linger(&mut socket).await;
}

/// One connection's state, owned by its task.
struct Conn<'a> {
    state: &'a AppState,
    span: &'a tracing::Span,
    peer: &'a str,
    session: Option<Session>,
    /// Frames handed to Kafka (or resends of them) whose acks have not gone out, oldest first.
    unacked: VecDeque<Unacked>,
    /// Bytes of this connection's records Kafka has not acked yet (reported in `status`).
    held: usize,
    link: watch::Receiver<Link>,
    /// The link state the recorder last heard.
    last_up: bool,
}

/// A frame built into its record, ready for Kafka once the memory budget has room for `size` bytes.
struct Built {
    record: Record,
    seq: u32,
    /// When its handling began, for `soundline_ack_seconds`.
    read: Instant,
    size: usize,
    pcm_bytes: usize,
}

/// A frame read while the memory budget was spent: it waits for its permit (reading is paused meanwhile).
struct Parked<'a> {
    frame: Built,
    permit: Pin<Box<dyn Future<Output = OwnedSemaphorePermit> + Send + 'a>>,
}

impl<'a> Conn<'a> {
    /// Runs the connection until the client leaves, the socket fails or a problem ends it.
    async fn run(&mut self, socket: &mut WebSocket) -> End {
        let state = self.state;
        let limits = &state.config().limits;
        let mut throttle = Throttle::new(limits);
        let mut deadline = Instant::now() + limits.hello_timeout;
        // One shutdown future and one timer each for the connection's life, not one per frame (they register
        // with state shared by every connection): the idle deadline moves with every message, the timer only
        // when it fires before the deadline.
        let cancelled = state.shutdown().cancelled();
        let idle = tokio::time::sleep_until(deadline);
        let pause = tokio::time::sleep_until(deadline);
        tokio::pin!(cancelled, idle, pause);
        // A message read while over the rate, handled once the pause is over.
        let mut stalled: Option<Message> = None;
        let mut parked: Option<Parked<'a>> = None;
        let mut keepalive = Keepalive::new(limits);
        // Waits for the link to change, holding its receiver until then: one registration with the watch (shared
        // by every connection) per change rather than per loop.
        let mut link_changed = std::pin::pin!(changed(self.link.clone()));
        let mut was_reading = true;
        loop {
            let reading = stalled.is_none() && parked.is_none() && self.unacked.len() < MAX_UNACKED;
            // Time spent not reading (the relay's choice) is not the recorder's silence.
            if reading && !was_reading && self.session.is_some() {
                deadline = Instant::now() + limits.idle_timeout;
            }
            was_reading = reading;
            // Ok(true): a message of the recorder's was handled (its idle deadline moves).
            let step: Result<bool, End> = tokio::select! {
                biased;
                () = &mut cancelled => Err(End::Fail(Fail(
                    ErrorCode::ShuttingDown,
                    "the relay is shutting down; reconnect and resend unacked frames".into(),
                ))),
                result = oldest(&mut self.unacked), if !self.unacked.is_empty() => match self.unacked.pop_front() {
                    Some(u) => self.deliver(socket, &u, result).await.map(|()| false),
                    None => Ok(false),
                },
                permit = wait_for_budget(&mut parked), if parked.is_some() => match parked.take() {
                    Some(p) => {
                        self.hand_over(p.frame, permit);
                        let reading_again = self.status_message(LinkState::Ok, "reading again");
                        send(socket, reading_again).await.map(|()| true).map_err(|_| End::SocketGone)
                    }
                    None => Ok(false),
                },
                () = &mut pause, if stalled.is_some() => match stalled.take() {
                    Some(msg) => self.handle(socket, msg, &mut parked).await.map(|()| true),
                    None => Ok(false),
                },
                msg = socket.next(), if reading => match msg {
                    None => Err(End::ClientLeft),
                    Some(Err(e)) => Err(classify_read_error(&e, self.span).map_or(End::ClientLeft, End::Fail)),
                    Some(Ok(msg)) => match throttle.charge(message_len(&msg), Instant::now()) {
                        Some((wait, which)) => {
                            state.metrics().throttled(which);
                            pause.as_mut().reset(Instant::now() + wait);
                            stalled = Some(msg);
                            Ok(false)
                        }
                        None => self.handle(socket, msg, &mut parked).await.map(|()| true),
                    },
                },
                () = &mut idle, if reading => {
                    if Instant::now() < deadline {
                        idle.as_mut().reset(deadline);
                        Ok(false)
                    } else {
                        Err(End::Fail(idle_timeout(self.session.is_none(), limits)))
                    }
                }
                _ = keepalive.ping.tick() => {
                    crate::doors::limits::count_ping(state.metrics());
                    send_message(socket, Message::Ping(Default::default())).await.map(|()| false).map_err(|_| End::SocketGone)
                }
                watched = &mut link_changed => {
                    link_changed.set(changed(watched));
                    let current = self.link.borrow_and_update().clone();
                    if current.up == self.last_up {
                        Ok(false)
                    } else {
                        self.last_up = current.up;
                        let status = self.link_status(&current);
                        send(socket, status).await.map(|()| false).map_err(|_| End::SocketGone)
                    }
                }
            };
            match step {
                // Before the hello, pongs and pings do not buy time: the hello must come within hello_timeout_s.
                Ok(true) if self.session.is_some() => deadline = Instant::now() + limits.idle_timeout,
                Ok(_) => {}
                Err(end) => return end,
            }
        }
    }

    /// One message of the recorder's, in its turn.
    async fn handle(
        &mut self,
        socket: &mut WebSocket,
        msg: Message,
        parked: &mut Option<Parked<'a>>,
    ) -> Result<(), End> {
        match (msg, self.session.is_some()) {
            (Message::Text(text), false) => {
                let (s, ready, resume) = hello(&text, self.state).map_err(End::Fail)?;
                let (car, segment) = (&s.recording.device.car_id, &s.recording.segment_id);
                match resume {
                    None => tracing::info!(parent: self.span, peer = self.peer, %car, %segment, "recording started"),
                    Some(r) => {
                        // Before `ready`: the resends that follow it must find what is already in Kafka.
                        match resume::find_stored(self.state, r, car, segment, s.dedup_key).await {
                            Ok(found) => {
                                self.state.metrics().resumed_frames_total.inc_by(found.frames as u64);
                                tracing::info!(parent: self.span, peer = self.peer, %car, %segment, partition = r.partition, after = r.offset, found = found.frames, complete = found.complete, "recording resumed")
                            }
                            Err(e) => {
                                tracing::warn!(parent: self.span, peer = self.peer, %car, %segment, error = %e, "recording resumed without looking in Kafka (resent frames may land twice)")
                            }
                        }
                    }
                }
                self.session = Some(s);
                send(socket, ready).await.map_err(|_| End::SocketGone)?;
                // A recorder that connects while Kafka is away hears so right after `ready`.
                let current = self.link.borrow_and_update().clone();
                self.last_up = current.up;
                if !current.up {
                    send(socket, self.link_status(&current)).await.map_err(|_| End::SocketGone)?;
                }
                Ok(())
            }
            (Message::Binary(_), false) => Err(End::Fail(Fail(
                ErrorCode::HelloRequired,
                "send the hello (a JSON text message) before any audio frame".into(),
            ))),
            (Message::Binary(bytes), true) => self.frame(socket, &bytes, parked).await,
            (Message::Text(_), true) => Err(End::Fail(Fail(
                ErrorCode::UnexpectedText,
                "only binary audio frames are expected after the hello; send text only once, as the hello".into(),
            ))),
            (Message::Close(_), _) => Err(End::ClientLeft),
            (Message::Ping(_) | Message::Pong(_), _) => Ok(()),
        }
    }

    /// One audio frame: checked, built into its envelope and handed to Kafka (or parked until the memory budget
    /// has room).
    async fn frame(
        &mut self,
        socket: &mut WebSocket,
        bytes: &[u8],
        parked: &mut Option<Parked<'a>>,
    ) -> Result<(), End> {
        let read = Instant::now();
        let (state, span) = (self.state, self.span);
        let cfg = state.config();
        let Some(session) = self.session.as_mut() else { return Ok(()) };
        let fail = |code, message| End::Fail(Fail(code, message));
        let frame = AudioFrame::decode(bytes, cfg.max_frame_samples).map_err(|e| match e {
            FrameError::TooManySamples { .. } => fail(ErrorCode::FrameTooLarge, e.to_string()),
            e => fail(ErrorCode::BadFrame, e.to_string()),
        })?;
        if let Some(expected) = session.next_seq
            && frame.seq != expected
        {
            return Err(fail(ErrorCode::SequenceOutOfOrder, format!("expected seq {expected}, got {}", frame.seq)));
        }
        session.next_seq = Some(frame.seq.checked_add(1).ok_or_else(|| {
            fail(ErrorCode::SequenceOutOfOrder, "seq 4294967295 is the last of a segment; start a new segment".into())
        })?);

        // A resend of a frame this process already produced: ack it again where it landed (after the acks before
        // it), produce nothing.
        if let Some(landed) = state.dedup().lookup(session.dedup_key, frame.seq) {
            state.metrics().duplicates_total.inc();
            let (done, delivery) = oneshot::channel();
            let _ = done.send(Ok(landed));
            let segment = session.dedup_key;
            self.unacked.push_back(Unacked { seq: frame.seq, read, bytes: 0, segment, delivery });
            return Ok(());
        }

        let mut uuid_buf = uuid::Uuid::encode_buffer();
        let uuid = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut uuid_buf);
        let mut value = Vec::new();
        session.template.write_json(uuid, frame.capture_ts_ms, frame.pcm_le, &mut value);
        let size = value.len() + session.route.key().len() + RECORD_OVERHEAD_BYTES;
        if size > cfg.kafka.max_message_bytes {
            return Err(fail(
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
        let built = Built { record, seq: frame.seq, read, size, pcm_bytes: frame.pcm_le.len() };
        if let Some(permit) = producer.try_reserve(size) {
            self.hand_over(built, permit);
            return Ok(());
        }
        state.metrics().backpressure_total.inc();
        let full = "the relay's memory budget is full; waiting for Kafka before reading more";
        send(socket, self.status_message(LinkState::Backpressure, full)).await.map_err(|_| End::SocketGone)?;
        *parked = Some(Parked { frame: built, permit: Box::pin(producer.reserve(size)) });
        Ok(())
    }

    /// Hands a frame's record to Kafka; its ack waits in [`Conn::unacked`].
    fn hand_over(&mut self, Built { record, seq, read, size, pcm_bytes }: Built, permit: OwnedSemaphorePermit) {
        let Some(session) = self.session.as_mut() else { return };
        let metrics = self.state.metrics();
        metrics.frames_in_total.inc();
        metrics.bytes_in_total.inc_by(pcm_bytes as u64);
        self.held += size;
        let delivery = self.state.producer().send(&mut session.route, record, permit);
        let segment = session.dedup_key;
        self.unacked.push_back(Unacked { seq, read, bytes: size, segment, delivery });
    }

    /// Sends one ack, or turns a refused record into the reason to close.
    async fn deliver(
        &mut self,
        socket: &mut WebSocket,
        &Unacked { seq, read, bytes, segment, .. }: &Unacked,
        result: Result<Delivery, ProduceError>,
    ) -> Result<(), End> {
        self.held -= bytes;
        match result {
            Ok(d) => {
                self.state.dedup().remember(segment, seq, d);
                send(socket, ServerMessage::Ack { seq, partition: d.partition, offset: d.offset })
                    .await
                    .map_err(|_| End::SocketGone)?;
                self.state.metrics().acks_total.inc();
                self.state.metrics().observe_ack(read.elapsed());
                Ok(())
            }
            Err(ProduceError::TooLarge { bytes }) => Err(End::Fail(Fail(
                ErrorCode::RecordTooLarge,
                format!("Kafka refused frame seq {seq} ({bytes} bytes) as too large"),
            ))),
            Err(ProduceError::Stopped) => Err(End::Fail(Fail(
                ErrorCode::ShuttingDown,
                "the relay stopped before Kafka acknowledged every frame; resend unacked frames".into(),
            ))),
        }
    }

    /// A `status` message: `state`, what this connection holds, and why.
    fn status_message(&self, state: LinkState, message: &str) -> ServerMessage {
        ServerMessage::Status { state, held_bytes: self.held as u64, message: message.to_owned() }
    }

    /// The `status` that tells the recorder where the Kafka link stands.
    fn link_status(&self, link: &Link) -> ServerMessage {
        if link.up {
            self.status_message(LinkState::Ok, "frames are reaching Kafka")
        } else {
            let why = format!("Kafka is unavailable ({}); frames are held and retried", link.detail);
            self.status_message(LinkState::KafkaUnavailable, &why)
        }
    }
}

/// Per-connection state after the hello.
struct Session {
    recording: Recording,
    /// Car + segment, for recognising resends ([`crate::ingest::dedup`]).
    dedup_key: SegmentKey,
    /// The recording's envelope with everything its frames share already serialized.
    template: envelope::EnvelopeTemplate,
    /// Its partition's queue, chosen once from its Kafka key (the carID, UTF-8).
    route: Route,
    next_seq: Option<u32>,
}

fn hello(text: &str, state: &AppState) -> Result<(Session, ServerMessage, Option<Resume>), Fail> {
    let msg = ClientMessage::parse(text).map_err(|e| Fail(e.hello_code(), e.to_string()))?;
    let ClientMessage::Hello(Hello { recording, resume, .. }) = msg;
    let cfg = state.config();
    let ready = ServerMessage::Ready {
        protocol: soundline_shared::PROTOCOL_VERSION,
        topic: cfg.kafka.topic.clone(),
        max_frame_samples: cfg.max_frame_samples,
    };
    let dedup_key = state.dedup().segment_key(&recording.device.car_id, &recording.segment_id);
    let template = envelope::EnvelopeTemplate::new(&cfg.stamp, &recording);
    let key = recording.device.car_id.as_bytes();
    let route = match resume {
        Some(r) => state.producer().route_on(key, r.partition),
        None => state.producer().route(key),
    };
    Ok((Session { recording, dedup_key, template, route, next_seq: None }, ready, resume))
}

/// A frame handed to Kafka whose ack has not been sent yet.
struct Unacked {
    seq: u32,
    /// When the relay began handling the frame: its ack's latency inside the relay runs from here.
    read: Instant,
    /// Its share of the connection's held bytes.
    bytes: usize,
    /// The segment's dedup key: once Kafka has the frame it is remembered there.
    segment: SegmentKey,
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

/// The parked frame's permit, once the memory budget has room (never, with nothing parked).
async fn wait_for_budget(parked: &mut Option<Parked<'_>>) -> OwnedSemaphorePermit {
    match parked {
        Some(p) => p.permit.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Returns `link` once it changed (never, once the producer is gone).
async fn changed(mut link: tokio::sync::watch::Receiver<Link>) -> tokio::sync::watch::Receiver<Link> {
    if link.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    link
}

async fn send(socket: &mut WebSocket, msg: ServerMessage) -> Result<(), axum::Error> {
    send_message(socket, Message::Text(msg.to_json().into())).await
}

/// A recorder that sends but never reads fills its socket: a send that cannot leave within [`SEND_TIMEOUT`] ends
/// the connection instead of holding its task and slots forever.
async fn send_message(socket: &mut WebSocket, msg: Message) -> Result<(), axum::Error> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(msg)).await {
        Ok(sent) => sent,
        Err(_) => Err(axum::Error::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the recorder read nothing for 30 s",
        ))),
    }
}
