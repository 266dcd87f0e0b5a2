//! The relay under stop and outage, with real processes: SIGTERM to the `soundline-relay` binary mid-stream, and a
//! relay that starts before its Kafka broker exists.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use soundline_shared::control::{ClientMessage, ErrorCode, Hello, LinkState, ServerMessage};
use soundline_shared::frame;
use soundline_tests::broker::PrivateBroker;
use soundline_tests::recorder::{Event, Recorder, recording, samples};
use soundline_tests::relay::{Child, InProcess, config, http_get};
use soundline_tests::{client, random_topic, read_all};
use tokio_tungstenite::tungstenite::Message;

const TS: i64 = 1_764_000_000_000;

/// Streams `frames` frames every 5 ms on one connection while collecting what the relay says; returns the acks
/// (seq, partition, offset), the error code and the close code the connection ended with.
async fn stream_until_closed(
    url: String,
    segment: String,
    frames: u32,
) -> (Vec<(u32, i32, i64)>, Option<ErrorCode>, Option<u16>) {
    let (ws, _) = tokio_tungstenite::connect_async(&url).await.expect("connect");
    let (mut tx, mut rx) = ws.split();
    let hello = ClientMessage::Hello(Hello::new(recording(&format!("CAR-{segment}"), &segment))).to_json();
    tx.send(Message::Text(hello.into())).await.expect("hello");
    let sender = tokio::spawn(async move {
        for seq in 0..frames {
            let bytes = frame::encode_to_vec(seq, TS + i64::from(seq) * 100, &samples(&segment, seq, 1600));
            if tx.send(Message::Binary(bytes.into())).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx
    });
    let mut acks = Vec::new();
    let mut error = None;
    let mut close = None;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(30), rx.next()).await {
        match msg {
            Ok(Message::Text(t)) => match ServerMessage::parse(&t).expect("valid server message") {
                ServerMessage::Ack { seq, partition, offset } => acks.push((seq, partition, offset)),
                ServerMessage::Error { code, .. } => error = Some(code),
                _ => {}
            },
            Ok(Message::Close(f)) => {
                close = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    sender.abort();
    (acks, error, close)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_acks_only_what_kafka_has_and_closes_with_1001() {
    let topic = random_topic("sigterm");
    let mut relay = Child::spawn(&[("SOUNDLINE_TOPIC", &topic), ("SOUNDLINE_PARTITIONS", "3")]).await;
    soundline_tests::relay::wait_ready(relay.addr).await;
    let url = format!("ws://{}/ws/record", relay.addr);
    let streams: Vec<_> =
        (0..4).map(|i| tokio::spawn(stream_until_closed(url.clone(), format!("term-{i}"), 2000))).collect();

    // Let frames flow, then SIGTERM while every connection is mid-stream.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = relay.child.id().expect("relay pid").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status =
        tokio::time::timeout(Duration::from_secs(30), relay.child.wait()).await.expect("relay exits within 30 s");
    assert_eq!(status.expect("wait").code(), Some(0), "SIGTERM is a clean exit");

    let mut acked: HashMap<(i32, i64), (String, u32)> = HashMap::new();
    for (i, s) in streams.into_iter().enumerate() {
        let (acks, error, close) = s.await.expect("stream task");
        let segment = format!("term-{i}");
        assert!(!acks.is_empty(), "{segment}: some frames were acked before the stop");
        assert!(acks.len() < 2000, "{segment}: the stop came mid-stream");
        assert_eq!(acks.iter().map(|a| a.0).collect::<Vec<_>>(), (0..acks.len() as u32).collect::<Vec<_>>());
        assert_eq!(error, Some(ErrorCode::ShuttingDown), "{segment}: told why");
        assert_eq!(close, Some(1001), "{segment}: closed with 1001");
        for (seq, p, o) in acks {
            acked.insert((p, o), (segment.clone(), seq));
        }
    }

    let records = read_all(&*client().await, &topic, 3).await;
    let in_kafka: HashSet<(i32, i64)> = records.iter().map(|(p, o, _)| (*p, *o)).collect();
    for (position, (segment, seq)) in &acked {
        assert!(in_kafka.contains(position), "{segment} seq {seq} was acked at {position:?} but is not in Kafka");
    }
    for (p, o, r) in &records {
        let (segment, seq) =
            acked.get(&(*p, *o)).unwrap_or_else(|| panic!("record {p}/{o} is in Kafka but was never acked"));
        assert_eq!(r.headers.get("segmentId").map(Vec::as_slice), Some(segment.as_bytes()));
        assert_eq!(r.headers.get("seq").map(Vec::as_slice), Some(seq.to_string().as_bytes()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_before_kafka_exists_are_held_with_backpressure_and_land_when_it_starts() {
    // A broker of our own, started only after the recorder has streamed.
    let kafka = PrivateBroker::new("outage", 0);
    let topic = random_topic("outage");
    let relay = InProcess::start(config(&[
        ("SOUNDLINE_KAFKA_BROKERS", &kafka.bootstrap()),
        ("SOUNDLINE_TOPIC", &topic),
        ("SOUNDLINE_PARTITIONS", "1"),
        ("SOUNDLINE_MEMORY_BUDGET_BYTES", "1048576"),
    ]))
    .await;
    let (status, body) = http_get(relay.addr, "/readyz").await.expect("readyz");
    assert_eq!(status, 503, "not ready without Kafka: {body}");

    let rec = recording("CAR-OUT", "seg-out");
    let mut r = Recorder::connect(&relay.ws("/ws/record")).await;
    assert!(matches!(r.hello(&rec).await, Event::Server(ServerMessage::Ready { .. })));
    match r.next().await {
        Event::Server(ServerMessage::Status { state: LinkState::KafkaUnavailable, .. }) => {}
        other => panic!("expected a kafka_unavailable status right after ready, got {other:?}"),
    }
    // 40 one-second frames (~43 KB envelopes each) overflow the 1 MiB budget: the relay must say so.
    const FRAMES: u32 = 40;
    for seq in 0..FRAMES {
        r.send_frame(seq, TS + i64::from(seq) * 1000, &samples("seg-out", seq, 16_000)).await;
    }
    match r.next().await {
        Event::Server(ServerMessage::Status { state: LinkState::Backpressure, held_bytes, .. }) => {
            assert!(held_bytes > 900_000, "the budget was spent before backpressure: {held_bytes}");
        }
        other => panic!("expected a backpressure status, got {other:?}"),
    }

    kafka.start();
    let mut acks = Vec::new();
    let mut saw_ok = false;
    while acks.len() < FRAMES as usize {
        match r.next().await {
            Event::Server(ServerMessage::Ack { seq, partition, offset }) => acks.push((seq, partition, offset)),
            Event::Server(ServerMessage::Status { state: LinkState::Ok, .. }) => saw_ok = true,
            Event::Server(ServerMessage::Status { .. }) => {}
            other => panic!("expected acks, got {other:?}"),
        }
    }
    assert!(saw_ok, "the recorder heard that Kafka is back");
    assert_eq!(
        acks.iter().map(|a| a.0).collect::<Vec<_>>(),
        (0..FRAMES).collect::<Vec<_>>(),
        "nothing dropped, in order"
    );
    assert_eq!(
        acks.iter().map(|a| a.2).collect::<Vec<_>>(),
        (0..i64::from(FRAMES)).collect::<Vec<_>>(),
        "offsets 0..40"
    );
    r.close().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_follows_a_broker_killed_and_restarted_without_gaps_or_duplicates() {
    use soundline_shared::feed::{FeedServerMessage, From};
    use soundline_tests::subscriber::{FeedEvent, Subscriber, subscription};

    let kafka = PrivateBroker::new("restart", 1);
    kafka.start();
    let brokers = kafka.bootstrap();
    let topic = random_topic("restart");
    let relay = InProcess::start(config(&[
        ("SOUNDLINE_KAFKA_BROKERS", &brokers),
        ("SOUNDLINE_TOPIC", &topic),
        ("SOUNDLINE_PARTITIONS", "1"),
    ]))
    .await;
    relay.wait_ready().await;
    let mut feed = Subscriber::start(&relay.ws("/ws/feed"), &subscription(None, From::Live)).await;
    let rec = recording("CAR-RS", "seg-rs");
    let mut r = Recorder::start(&relay.ws("/ws/record"), &rec).await;
    for seq in 0..5 {
        r.send_frame(seq, TS + i64::from(seq) * 200, &samples("seg-rs", seq, 1600)).await;
    }
    assert_eq!(r.acks(5).await.len(), 5);

    kafka.kill9();
    let (status, body) = readyz_after_outage(relay.addr).await;
    assert_eq!(status, 503, "/readyz reports the outage: {body}");
    kafka.start(); // on the same log dir

    for seq in 5..10 {
        r.send_frame(seq, TS + i64::from(seq) * 200, &samples("seg-rs", seq, 1600)).await;
    }
    let acks = r.acks(5).await;
    assert_eq!(acks.iter().map(|a| a.0).collect::<Vec<_>>(), [5, 6, 7, 8, 9]);
    let mut offsets = Vec::new();
    while offsets.len() < 10 {
        match feed.next_event().await {
            FeedEvent::Feed(FeedServerMessage::Record(rec)) => offsets.push(rec.offset),
            other => panic!("expected records, got {other:?}"),
        }
    }
    assert_eq!(offsets, (0..10).collect::<Vec<i64>>(), "every record once, in order, across the restart");
    r.close().await;
    feed.close().await;
    relay.stop().await;
}

/// Polls `/readyz` for up to 20 s until it stops saying ready.
async fn readyz_after_outage(addr: std::net::SocketAddr) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..200 {
        last = http_get(addr, "/readyz").await.expect("readyz");
        if last.0 != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}
