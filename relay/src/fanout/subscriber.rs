//! `/ws/feed`: one subscriber, from its subscribe to the live stream.
//!
//! # Data Flow
//!
//! ```text
//!  subscribe ─► allowlist ─► hub.join() ─► (broadcast receiver, live positions)
//!                                │
//!     history: own fetch per partition, [start, live position) ─► filter ─► socket
//!     live:    broadcast receiver, offsets >= next per partition ─► filter ─► socket
//!              lagged: tell {missed, resumeFrom}, carry on live
//!              a car's, when the topic grew: join the car's partition under the new count, its history from 0
//!  bounded read (until): own fetches of the named partitions, [from, until) ─► filter ─► end, close 1000
//! ```
//!
//! A subscription with `"pcm": false` gets envelopes without their base64 PCM (the hub serializes both forms
//! once per record).
//!
//! Everything a subscriber does costs only itself: history is read with its own bounded fetches (1 MiB per
//! request, paced by its socket), live records come from the shared hub, and a send that takes longer than
//! `feed_send_timeout_s` ends the connection with `too_slow` (4012).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use soundline_shared::control::ErrorCode;
use soundline_shared::feed::{FeedClientMessage, FeedServerMessage, From, Subscribe};
use tokio::sync::broadcast::error::RecvError;

use crate::fanout::{Hub, Published};
use crate::kafka::consumer::{fetch, record_bytes};
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::{CallError, Cluster, KafkaError, Position};
use crate::metrics::FeedDrop;
use crate::state::AppState;

/// Bytes per history fetch.
const HISTORY_FETCH_BYTES: i32 = 1024 * 1024;

use crate::doors::limits::{Keepalive, Throttle, count_ping};
use crate::ws::{Fail, answer_close, goodbye, idle_timeout, linger, message_len};

type Sink = SplitSink<WebSocket, Message>;

/// Serves one feed connection until it ends. `span` is the connection's (`ws{peer who endpoint}`), the parent
/// of its log lines.
pub async fn serve(socket: WebSocket, state: AppState, peer: String, span: tracing::Span) {
    let (mut sink, mut stream) = socket.split();
    state.metrics().feed_subscribers.inc();
    let outcome = tokio::select! {
        r = subscribe_and_deliver(&mut sink, &mut stream, &state, &span) => r,
        () = state.shutdown().cancelled() => Err(Fail(ErrorCode::ShuttingDown, "the relay is shutting down; subscribe again".into())),
    };
    state.metrics().feed_subscribers.dec();
    match outcome {
        // The subscriber closed (or left): echo its close frame.
        Ok(()) => answer_close(&mut sink).await,
        Err(Fail(code, message)) => {
            state.metrics().error(code);
            tracing::info!(parent: &span, peer, %code, message, "closing feed connection");
            // A subscriber too slow to read gets no more writes: they would block again.
            if code != ErrorCode::TooSlow {
                goodbye(&mut sink, code, &message, Duration::from_secs(2)).await;
                linger(&mut stream).await;
            }
        }
    }
}

async fn subscribe_and_deliver(
    sink: &mut Sink,
    stream: &mut SplitStream<WebSocket>,
    state: &AppState,
    span: &tracing::Span,
) -> Result<(), Fail> {
    let Some(sub) = read_subscribe(stream, state, span).await? else { return Ok(()) };
    let cfg = state.config();
    let topic = sub.topic.clone().unwrap_or_else(|| cfg.kafka.topic.clone());
    if topic != cfg.kafka.topic && !cfg.feed.topics.contains(&topic) {
        let mut allowed = vec![cfg.kafka.topic.as_str()];
        allowed.extend(cfg.feed.topics.iter().map(String::as_str));
        return Err(Fail(
            ErrorCode::TopicNotAllowed,
            format!("topic {topic:?} is not served here; allowed: {}", allowed.join(", ")),
        ));
    }
    let hub = state.fanout().hub(&topic).await.map_err(|e| match e {
        KafkaError::NoSuchTopic(_) => Fail(ErrorCode::UnknownTopic, e.to_string()),
        e => Fail(ErrorCode::Internal, e.to_string()),
    })?;
    // The client leaving (or going silent, or flooding) ends delivery at once, whichever phase it is in.
    let client_gone = async {
        let limits = &cfg.limits;
        let mut throttle = Throttle::new(limits);
        loop {
            match tokio::time::timeout(limits.idle_timeout, stream.next()).await {
                Err(_) => return Err(idle_timeout(false, limits)),
                Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_))) => return Ok(()),
                Ok(Some(Ok(m))) => throttle.admit(message_len(&m), state.metrics()).await,
            }
        }
    };
    tokio::select! {
        r = deliver(sink, &hub, &sub, state) => r,
        r = client_gone => r,
    }
}

/// The subscribe, or `None` when the client closed (or left) before sending one.
async fn read_subscribe(
    stream: &mut SplitStream<WebSocket>,
    state: &AppState,
    span: &tracing::Span,
) -> Result<Option<Subscribe>, Fail> {
    let limits = &state.config().limits;
    // Pings and pongs do not count as the subscribe, nor buy time for it.
    let first = tokio::time::timeout(limits.hello_timeout, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => return other,
            }
        }
    })
    .await
    .map_err(|_| idle_timeout(true, limits))?;
    match first {
        Some(Ok(Message::Text(text))) => match FeedClientMessage::parse(&text) {
            Ok(FeedClientMessage::Subscribe(sub)) => Ok(Some(sub)),
            Err(e) => Err(Fail(ErrorCode::BadSubscribe, e.to_string())),
        },
        Some(Ok(Message::Close(_))) | None => Ok(None),
        Some(Ok(_)) => Err(Fail(ErrorCode::BadSubscribe, "send a subscribe (a JSON text message) first".into())),
        Some(Err(e)) => Err(crate::ws::classify_read_error(&e, span)
            .unwrap_or_else(|| Fail(ErrorCode::BadSubscribe, format!("the first message could not be read: {e}")))),
    }
}

async fn send(sink: &mut Sink, text: Utf8Bytes, state: &AppState) -> Result<(), Fail> {
    send_within(sink, Message::Text(text), state).await
}

async fn ping(sink: &mut Sink, state: &AppState) -> Result<(), Fail> {
    count_ping(state.metrics());
    send_within(sink, Message::Ping(Default::default()), state).await
}

/// One message, within `feed_send_timeout_s`: a subscriber that reads nothing that long is `too_slow`.
async fn send_within(sink: &mut Sink, msg: Message, state: &AppState) -> Result<(), Fail> {
    match tokio::time::timeout(state.config().feed.send_timeout, sink.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Fail(ErrorCode::Internal, "the connection failed".into())),
        Err(_) => Err(Fail(ErrorCode::TooSlow, "the subscriber read nothing for longer than the send timeout".into())),
    }
}

/// What a failed Kafka call tells the subscriber.
fn kafka_failed(e: impl std::fmt::Display) -> Fail {
    Fail(ErrorCode::Internal, e.to_string())
}

/// The position a subscription's `from` names in partition `p` (the live position when it names none there).
fn position(from: &From, p: i32, live: i64) -> Position {
    match from {
        From::Live => Position::Offset(live),
        From::Offsets(o) => Position::Offset(o.get(&p).copied().unwrap_or(live)),
        From::Earliest => Position::Earliest,
        From::TimestampMs(ms) => Position::TimestampMs(*ms),
    }
}

/// Resolves the subscription's start offset per partition it reads (never past the live position).
async fn starts(
    hub: &Hub,
    from: &From,
    live: &BTreeMap<i32, i64>,
    cluster: &Arc<Cluster>,
) -> Result<BTreeMap<i32, i64>, Fail> {
    let mut out = BTreeMap::new();
    for (&p, &live_p) in live {
        let wanted = cluster.partition(&hub.topic, p).offset(position(from, p, live_p)).await.map_err(kafka_failed)?;
        out.insert(p, wanted.clamp(0, live_p));
    }
    Ok(out)
}

/// How often a car's live subscription looks whether the topic gained partitions (the hub learns of them within
/// 5 s, the producer places new recordings there within 2 s: the car's new records are read from the
/// partition's start, so none is missed in between).
const GROWTH_CHECK: Duration = Duration::from_secs(1);

async fn deliver(sink: &mut Sink, hub: &Arc<Hub>, sub: &Subscribe, state: &AppState) -> Result<(), Fail> {
    let partitions = hub.partition_count();
    let mut keepalive = Keepalive::new(&state.config().limits);
    if let Some(bounds) = &sub.until {
        return deliver_range(sink, hub, sub, bounds, &mut keepalive, state).await;
    }
    // A car's records all sit on its partition (the producer's murmur2 choice): read only that one.
    let car_partition = sub.car_id.as_deref().map(|car| [partition_for_key(car.as_bytes(), partitions)]);
    let (mut live_rx, live, membership) = hub
        .join(car_partition.as_ref().map(|p| &p[..]), sub.car_id.as_deref())
        .await
        .map_err(|e| Fail(ErrorCode::Internal, e.to_string()))?;
    let cluster = state.fanout().cluster().await.map_err(kafka_failed)?;
    let start = starts(hub, &sub.from, &live, &cluster).await?;
    send_subscribed(sink, hub, &start, state).await?;
    let (car, segment) = (sub.car_id.as_deref(), sub.segment_id.as_deref());
    let metrics = state.metrics();

    // History: this subscriber's own fetches, partition by partition, up to where the live stream starts.
    for (&p, &from) in &start {
        let until = live.get(&p).copied().unwrap_or(from);
        history(sink, &cluster, hub, sub, (p, from, until), &mut keepalive, state).await?;
    }

    // Live: each offset at most once per partition.
    let mut next: BTreeMap<i32, i64> = live.clone();
    // A car's subscription follows the topic's growth: the car's recordings that start after it are placed over
    // the new count, so the car's partition under that count is joined too.
    let mut memberships = vec![membership];
    let mut growth = tokio::time::interval(GROWTH_CHECK);
    loop {
        let received = tokio::select! {
            r = live_rx.recv() => r,
            _ = keepalive.ping.tick() => {
                ping(sink, state).await?;
                continue;
            }
            _ = growth.tick(), if car.is_some() => {
                let Some(car) = car else { continue };
                let p = partition_for_key(car.as_bytes(), hub.partition_count());
                if let std::collections::btree_map::Entry::Vacant(slot) = next.entry(p) {
                    let (_same_stream, joined, m) =
                        hub.join(Some(&[p]), Some(car)).await.map_err(|e| Fail(ErrorCode::Internal, e.to_string()))?;
                    memberships.push(m);
                    let until = joined.get(&p).copied().unwrap_or(0);
                    // The partition was added after this subscription began: all it holds is newer, from its start.
                    history(sink, &cluster, hub, sub, (p, 0, until), &mut keepalive, state).await?;
                    slot.insert(until);
                    tracing::debug!(topic = %hub.topic, partition = p, "feed: a car's subscription follows the topic's growth");
                }
                continue;
            }
        };
        let published: Arc<Published> = match received {
            Ok(p) => p,
            Err(RecvError::Lagged(missed)) => {
                metrics.feed_dropped(FeedDrop::Lagged, missed);
                let lagged = FeedServerMessage::Lagged { missed, resume_from: next.clone() };
                send(sink, serde_json::to_string(&lagged).unwrap_or_default().into(), state).await?;
                continue;
            }
            Err(RecvError::Closed) => return Ok(()),
        };
        // A car's subscription reads its partition only (other partitions' records come by for other
        // subscribers); one of every partition follows partitions the topic gains.
        let slot = match car {
            Some(_) => next.get_mut(&published.partition),
            None => Some(next.entry(published.partition).or_insert(0)),
        };
        let Some(slot) = slot else { continue };
        metrics.feed_considered_total.inc();
        if published.offset < *slot {
            continue;
        }
        *slot = published.offset + 1;
        if published.matches(car, segment) {
            send(sink, published.text(sub.pcm).clone(), state).await?;
            metrics.feed_delivered_total.inc();
        }
    }
}

/// `subscribed`: where delivery starts per partition and, on the audio topic, the other topics served here
/// (`feed_topics`).
async fn send_subscribed(sink: &mut Sink, hub: &Hub, start: &BTreeMap<i32, i64>, state: &AppState) -> Result<(), Fail> {
    let cfg = state.config();
    let subscribed = FeedServerMessage::Subscribed {
        topic: hub.topic.to_string(),
        partitions: hub.partition_count(),
        from: start.clone(),
        feed_topics: if *hub.topic == *cfg.kafka.topic { cfg.feed.topics.clone() } else { Vec::new() },
    };
    send(sink, serde_json::to_string(&subscribed).unwrap_or_default().into(), state).await
}

/// A bounded read: the named partitions from the subscription's start up to its `until` (never past their end
/// now), then `end` and a normal close. It joins no hub: it starts no partition reader and costs the relay only
/// its own fetches.
async fn deliver_range(
    sink: &mut Sink,
    hub: &Hub,
    sub: &Subscribe,
    bounds: &BTreeMap<i32, i64>,
    keepalive: &mut Keepalive,
    state: &AppState,
) -> Result<(), Fail> {
    let partitions = hub.partition_count();
    let cluster = state.fanout().cluster().await.map_err(kafka_failed)?;
    let mut ends = BTreeMap::new();
    for &p in bounds.keys().filter(|&&p| p < partitions) {
        ends.insert(p, cluster.partition(&hub.topic, p).offset(Position::Latest).await.map_err(kafka_failed)?);
    }
    let start = starts(hub, &sub.from, &ends, &cluster).await?;
    send_subscribed(sink, hub, &start, state).await?;
    for (&p, &from) in &start {
        let until = bounds.get(&p).copied().unwrap_or(from).min(ends.get(&p).copied().unwrap_or(from));
        history(sink, &cluster, hub, sub, (p, from, until), keepalive, state).await?;
    }
    send(sink, serde_json::to_string(&FeedServerMessage::End).unwrap_or_default().into(), state).await?;
    let close = CloseFrame { code: 1000, reason: "the requested range is delivered".into() };
    send_within(sink, Message::Close(Some(close)), state).await
}

/// Partition `p`'s records in `[from, until)` that the subscription wants, with this subscriber's own fetches.
async fn history(
    sink: &mut Sink,
    cluster: &Arc<Cluster>,
    hub: &Hub,
    sub: &Subscribe,
    (p, from, until): (i32, i64, i64),
    keepalive: &mut Keepalive,
    state: &AppState,
) -> Result<(), Fail> {
    if from >= until {
        return Ok(());
    }
    let (car, segment) = (sub.car_id.as_deref(), sub.segment_id.as_deref());
    let metrics = state.metrics();
    let mut part = cluster.partition(&hub.topic, p);
    let mut offset = from;
    while offset < until {
        if keepalive.ping_due() {
            ping(sink, state).await?;
        }
        // Where retention removed the start, `fetch` goes on from the oldest record kept.
        let fetched = fetch(&mut part, offset, HISTORY_FETCH_BYTES, 100)
            .await
            .map_err(|e: CallError| Fail(ErrorCode::Internal, format!("reading history: {e}")))?;
        if fetched.caught_up {
            break;
        }
        let records = fetched.records;
        if records.is_empty() {
            // Past a transaction marker.
            offset = fetched.next;
            continue;
        }
        metrics.feed_history_records_total.inc_by(records.len() as u64);
        metrics.feed_history_bytes_total.inc_by(record_bytes(&records) as u64);
        for r in records {
            if r.offset >= until {
                return Ok(());
            }
            if keepalive.ping_due() {
                ping(sink, state).await?;
            }
            offset = r.offset + 1;
            let Some(published) = Published::new(&hub.topic, p, r.offset, r.record, &hub.classifier) else {
                continue;
            };
            if published.matches(car, segment) {
                send(sink, published.text(sub.pcm).clone(), state).await?;
                metrics.feed_delivered_total.inc();
            }
        }
    }
    Ok(())
}
