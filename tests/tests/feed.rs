//! `/ws/feed` against the real broker: every record to every subscriber in partition order, resume, filters,
//! the topic allowlist, opaque records, and a subscriber that never reads.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::Record;
use soundline_shared::control::ErrorCode;
use soundline_shared::envelope::{Envelope, Stamp};
use soundline_shared::feed::{FeedRecord, FeedServerMessage, From};
use soundline_tests::recorder::{Recorder, recording, samples};
use soundline_tests::relay::{InProcess, config, http_get};
use soundline_tests::subscriber::{FeedEvent, Subscriber, subscription};
use soundline_tests::{client, create_topic, random_topic, read_all};

const TS: i64 = 1_764_000_000_000;

fn envelope(car: &str, segment: &str, seq: u32) -> Vec<u8> {
    Envelope::from_samples(
        uuid::Uuid::new_v4(),
        &Stamp { ver: "1.0".into(), ..Stamp::default() },
        &recording(car, segment),
        TS + i64::from(seq) * 200,
        &samples(segment, seq, 1600),
    )
    .to_json()
}

fn record(key: &str, value: Vec<u8>) -> Record {
    Record {
        key: Some(key.as_bytes().to_vec()),
        value: Some(value),
        headers: BTreeMap::new(),
        timestamp: Utc.timestamp_millis_opt(TS).single().expect("valid"),
    }
}

/// Produces `values` straight to `partition` with rskafka, as any Kafka producer would.
async fn produce(topic: &str, partition: i32, values: Vec<(String, Vec<u8>)>) {
    let client = client().await;
    let pc = client.partition_client(topic, partition, UnknownTopicHandling::Retry).await.expect("partition client");
    pc.produce(values.into_iter().map(|(k, v)| record(&k, v)).collect(), Compression::NoCompression)
        .await
        .expect("produce");
}

fn assert_partition_order(records: &[FeedRecord]) {
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for r in records {
        if let Some(prev) = last.insert(r.partition, r.offset) {
            assert!(r.offset > prev, "partition {} went from offset {prev} to {}", r.partition, r.offset);
        }
    }
}

async fn relay_for(topic: &str, extra: &[(&str, &str)]) -> InProcess {
    let mut env = vec![("SOUNDLINE_TOPIC", topic), ("SOUNDLINE_PARTITIONS", "3")];
    env.extend_from_slice(extra);
    let relay = InProcess::start(config(&env)).await;
    relay.wait_ready().await;
    relay
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscribers_get_every_record_in_partition_order_from_the_relay_and_from_plain_producers() {
    let topic = random_topic("feed");
    let relay = relay_for(&topic, &[]).await;
    let mut subscribers = Vec::new();
    for _ in 0..5 {
        subscribers.push(Subscriber::start(&relay.ws("/ws/feed"), &subscription(None, From::Live)).await);
    }
    // 2 recorders x 20 frames through the relay, and 10 envelopes from a plain producer.
    let mut recorders = tokio::task::JoinSet::new();
    for car in ["CAR-F1", "CAR-F2"] {
        let url = relay.ws("/ws/record");
        recorders.spawn(async move {
            let segment = format!("seg-{car}");
            let mut r = Recorder::start(&url, &recording(car, &segment)).await;
            for seq in 0..20 {
                r.send_frame(seq, TS + i64::from(seq) * 200, &samples(&segment, seq, 1600)).await;
            }
            r.acks(20).await;
            r.close().await;
        });
    }
    produce(&topic, 2, (0..10).map(|i| ("CAR-P".to_owned(), envelope("CAR-P", "seg-p", i))).collect()).await;
    recorders.join_all().await;

    let in_kafka: BTreeSet<(i32, i64)> =
        read_all(&*client().await, &topic, 3).await.iter().map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(in_kafka.len(), 50);
    for (i, mut s) in subscribers.into_iter().enumerate() {
        let records = s.records(50).await;
        assert_partition_order(&records);
        let got: BTreeSet<(i32, i64)> = records.iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(got, in_kafka, "subscriber {i} got every record once");
        assert!(records.iter().all(|r| r.kind == "envelope" && r.topic == topic));
        let plain = records.iter().filter(|r| r.key.as_deref() == Some("CAR-P")).count();
        assert_eq!(plain, 10, "records from a plain producer are delivered too");
        s.close().await;
    }
    let (_, metrics) = http_get(relay.addr, "/metrics").await.expect("metrics");
    assert!(metrics.contains("soundline_feed_delivered_total 250"), "{metrics}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resuming_with_its_offsets_gets_exactly_the_records_after_them() {
    let topic = random_topic("feed-resume");
    let relay = relay_for(&topic, &[]).await;
    for p in 0..3 {
        produce(&topic, p, (0..4).map(|i| (format!("CAR-{p}"), envelope(&format!("CAR-{p}"), "seg-r", i))).collect())
            .await;
    }
    let mut first = Subscriber::start(&relay.ws("/ws/feed"), &subscription(None, From::Earliest)).await;
    let seen = first.records(7).await;
    let resume = first.next.clone();
    first.close().await;

    for p in 0..3 {
        produce(&topic, p, (4..6).map(|i| (format!("CAR-{p}"), envelope(&format!("CAR-{p}"), "seg-r", i))).collect())
            .await;
    }
    let mut second = Subscriber::start(&relay.ws("/ws/feed"), &subscription(None, From::Offsets(resume))).await;
    let rest = second.records(12 + 6 - 7).await;
    second.expect_quiet(Duration::from_millis(500)).await;

    let all: BTreeSet<(i32, i64)> =
        read_all(&*client().await, &topic, 3).await.iter().map(|(p, o, _)| (*p, *o)).collect();
    let first_set: HashSet<(i32, i64)> = seen.iter().map(|r| (r.partition, r.offset)).collect();
    let rest_set: HashSet<(i32, i64)> = rest.iter().map(|r| (r.partition, r.offset)).collect();
    assert!(first_set.is_disjoint(&rest_set), "no record twice");
    assert_eq!(first_set.union(&rest_set).copied().collect::<BTreeSet<_>>(), all, "no record missing");
    assert_partition_order(&rest);
    second.close().await;
    relay.stop().await;
}

/// `from: {"timestampMs": T}` starts each partition at the first record the relay received at or after T, whatever
/// the device clocks said (their capture time is `collectTimestamp`, here years in the past).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_from_a_time_gets_exactly_the_frames_received_after_it() {
    let topic = random_topic("feed-time");
    let relay = relay_for(&topic, &[]).await;
    let mut recorders = Vec::new();
    for car in ["CAR-T1", "CAR-T2", "CAR-T3"] {
        let rec = recording(car, &format!("seg-{car}"));
        recorders.push((Recorder::start(&relay.ws("/ws/record"), &rec).await, rec));
    }
    let mut send = async |seqs: std::ops::Range<u32>| {
        for (r, rec) in &mut recorders {
            for seq in seqs.clone() {
                r.send_frame(seq, TS + i64::from(seq) * 200, &samples(&rec.segment_id, seq, 1600)).await;
            }
            r.acks(seqs.len()).await;
        }
    };
    send(0..4).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let from = soundline_tests::now_ms();
    tokio::time::sleep(Duration::from_millis(50)).await;
    send(4..7).await;
    let mut sub = Subscriber::start(&relay.ws("/ws/feed"), &subscription(None, From::TimestampMs(from))).await;
    let got = sub.records(9).await;
    sub.expect_quiet(Duration::from_millis(500)).await;
    let mut by_car: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in &got {
        assert!(r.timestamp_ms >= from, "record stamped {} delivered from {from}", r.timestamp_ms);
        by_car
            .entry(r.key.clone().unwrap_or_default())
            .or_default()
            .push(r.value["collectTimestamp"].as_i64().unwrap_or(0));
    }
    let expected: Vec<i64> = (4..7).map(|seq| TS + seq * 200).collect();
    for car in ["CAR-T1", "CAR-T2", "CAR-T3"] {
        assert_eq!(by_car.get(car), Some(&expected), "{car}: exactly the frames sent after {from}, in order");
    }
    sub.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn filters_deliver_exactly_the_matching_records() {
    let topic = random_topic("feed-filter");
    let relay = relay_for(&topic, &[]).await;
    // Where any Kafka producer puts CAR-A's records (murmur2 of the key), the one partition a CAR-A subscriber reads.
    produce(
        &topic,
        soundline_relay::kafka::partitioner::partition_for_key(b"CAR-A", 3),
        vec![
            ("CAR-A".into(), envelope("CAR-A", "seg-1", 0)),
            ("CAR-B".into(), envelope("CAR-B", "seg-1", 0)),
            ("CAR-A".into(), envelope("CAR-A", "seg-2", 0)),
            ("CAR-A".into(), br#"{"carID":"CAR-A","result":"ok"}"#.to_vec()),
            ("CAR-A".into(), envelope("CAR-A", "seg-1", 1)),
            // CAR-A's envelope keyed for another car: not CAR-A's record (a car's are keyed by its carID).
            ("CAR-X".into(), envelope("CAR-A", "seg-1", 2)),
        ],
    )
    .await;
    let mut sub = subscription(None, From::Earliest);
    sub.car_id = Some("CAR-A".into());
    let mut by_car = Subscriber::start(&relay.ws("/ws/feed"), &sub).await;
    assert_eq!(by_car.records(3).await.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 2, 4]);
    by_car.expect_quiet(Duration::from_millis(300)).await;

    sub.segment_id = Some("seg-1".into());
    let mut by_both = Subscriber::start(&relay.ws("/ws/feed"), &sub).await;
    assert_eq!(by_both.records(2).await.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 4]);
    by_both.expect_quiet(Duration::from_millis(300)).await;
    relay.stop().await;
}

#[tokio::test]
async fn an_allowlisted_json_topic_arrives_as_json_and_other_topics_are_refused() {
    let topic = random_topic("feed-audio");
    let analysis = random_topic("feed-analysis");
    create_topic(&*client().await, &analysis, 1).await;
    let relay = relay_for(&topic, &[("SOUNDLINE_FEED_TOPICS", &analysis)]).await;
    produce(&analysis, 0, vec![("CAR-A".into(), br#"{"carID":"CAR-A","defect":"flat wheel","score":0.93}"#.to_vec())])
        .await;

    let mut sub = Subscriber::start(&relay.ws("/ws/feed"), &subscription(Some(&analysis), From::Earliest)).await;
    let r = sub.records(1).await.remove(0);
    assert_eq!((r.topic.as_str(), r.kind.as_str(), r.key.as_deref()), (analysis.as_str(), "json", Some("CAR-A")));
    assert_eq!(r.value, serde_json::json!({"carID": "CAR-A", "defect": "flat wheel", "score": 0.93}));

    let mut refused = Subscriber::connect(&relay.ws("/ws/feed"), &subscription(Some("payroll"), From::Live)).await;
    match refused.next_event().await {
        FeedEvent::Error(ErrorCode::TopicNotAllowed, message) => {
            assert!(message.contains("\"payroll\" is not served here"), "{message}");
        }
        other => panic!("expected topic_not_allowed, got {other:?}"),
    }
    assert_eq!(refused.next_event().await, FeedEvent::Closed(Some(4011)));
    relay.stop().await;
}

#[tokio::test]
async fn garbage_on_the_topic_is_delivered_as_opaque_and_the_feed_goes_on() {
    let topic = random_topic("feed-garbage");
    let relay = relay_for(&topic, &[]).await;
    let mut live = Subscriber::start(&relay.ws("/ws/feed"), &subscription(None, From::Live)).await;
    produce(
        &topic,
        1,
        vec![
            ("CAR-G".into(), envelope("CAR-G", "s", 0)),
            ("CAR-G".into(), vec![0xff, 0x00, 0x13]),
            ("CAR-G".into(), envelope("CAR-G", "s", 1)),
        ],
    )
    .await;
    let records = live.records(3).await;
    assert_eq!(records.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(), ["envelope", "opaque", "envelope"]);
    assert_eq!(records[1].value, serde_json::json!("/wAT"), "opaque bytes as base64");
    relay.stop().await;

    // With feed_malformed=skip the garbage is counted, not delivered.
    let relay = relay_for(&topic, &[("SOUNDLINE_FEED_MALFORMED", "skip")]).await;
    let mut history = Subscriber::start(&relay.ws("/ws/feed"), &subscription(None, From::Earliest)).await;
    assert_eq!(history.records(2).await.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 2]);
    produce(&topic, 1, vec![("CAR-G".into(), b"\x01\x02".to_vec()), ("CAR-G".into(), envelope("CAR-G", "s", 2))]).await;
    assert_eq!(history.records(1).await[0].offset, 4, "the live stream skips the garbage and goes on");
    let (_, metrics) = http_get(relay.addr, "/metrics").await.expect("metrics");
    assert!(metrics.contains("soundline_feed_dropped_total{reason=\"malformed\"} 1"), "{metrics}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_cut_off_or_told_while_others_and_ingestion_carry_on() {
    const FRAMES: u32 = 1500;
    let topic = random_topic("feed-slow");
    // The recorder sends 8 MB/s, far past the per-connection default of 1 MiB/s, which would stretch the test
    // to 50 s of waiting; recorders' limits are not what this test is about.
    let relay = relay_for(
        &topic,
        &[
            ("SOUNDLINE_FEED_BUFFER_RECORDS", "512"),
            ("SOUNDLINE_FEED_SEND_TIMEOUT_S", "2"),
            ("SOUNDLINE_MAX_BYTES_PER_S", "16777216"),
        ],
    )
    .await;
    let mut slow = Subscriber::start(&relay.ws("/ws/feed"), &subscription(None, From::Live)).await;
    let mut fast = Subscriber::start(&relay.ws("/ws/feed"), &subscription(None, From::Live)).await;

    // One-second frames (~58 KB feed messages): 1500 of them overflow the slow subscriber's socket buffers
    // (a few MB) and its 512-record ring, while the ring is ample for a subscriber that reads.
    let url = relay.ws("/ws/record");
    let recorder = tokio::spawn(async move {
        let mut r = Recorder::start(&url, &recording("CAR-SLOW", "seg-slow")).await;
        // 250 frames a second: far faster than real time, and a pace a reading subscriber keeps up with even in a
        // debug build on a busy machine (so only the one that never reads can fall behind).
        let mut pace = tokio::time::interval(Duration::from_millis(4));
        for seq in 0..FRAMES {
            pace.tick().await;
            r.send_frame(seq, TS + i64::from(seq) * 1000, &samples("seg-slow", seq, 16_000)).await;
        }
        let acks = r.acks(FRAMES as usize).await;
        r.close().await;
        acks
    });
    let fast_records = fast.records(FRAMES as usize).await;
    assert_partition_order(&fast_records);
    assert_eq!(recorder.await.expect("recorder").len(), FRAMES as usize, "ingestion acked every frame");
    // Give the relay's send timeout time to fire for the slow one.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut slow_records = 0;
    let mut told = false;
    loop {
        match slow.next_event().await {
            FeedEvent::Feed(FeedServerMessage::Record(_)) => slow_records += 1,
            FeedEvent::Feed(FeedServerMessage::Lagged { missed, resume_from }) => {
                assert!(missed > 0 && !resume_from.is_empty());
                told = true;
            }
            FeedEvent::Closed(_) | FeedEvent::Error(..) => break,
            FeedEvent::Feed(other) => panic!("unexpected {other:?}"),
        }
        if slow_records + usize::from(told) >= FRAMES as usize {
            break;
        }
    }
    assert!(slow_records < FRAMES as usize, "the slow subscriber did not get everything ({slow_records})");
    let (_, metrics) = http_get(relay.addr, "/metrics").await.expect("metrics");
    let cut_off = metrics.contains("soundline_errors_total{code=\"too_slow\"} 1");
    assert!(told || cut_off, "the slow subscriber was told it lagged or cut off with too_slow:\n{metrics}");
    relay.stop().await;
}

/// Runs Kafka's own ProducerPerformance with a transactional id: `records` records of 100 bytes at 200 per
/// second in transactions of 50 ms, so commit markers take offsets between them.
fn produce_transactionally(topic: &str, records: u32) {
    let classpath = std::env::var("SOUNDLINE_KAFKA_CLASSPATH")
        .expect("SOUNDLINE_KAFKA_CLASSPATH is not set: make test exports the Kafka jars' classpath (scripts/kafka.sh classpath)");
    let out = std::process::Command::new("java")
        .args(["-cp", &classpath, "org.apache.kafka.tools.ProducerPerformance"])
        .args(["--topic", topic, "--num-records", &records.to_string(), "--record-size", "100", "--throughput", "200"])
        .args([
            "--transactional-id",
            &format!("tx-{}", uuid::Uuid::new_v4().simple()),
            "--transaction-duration-ms",
            "50",
        ])
        .args(["--producer-props", &format!("bootstrap.servers={}", soundline_tests::kafka_bootstrap())])
        .output()
        .expect("run Kafka's ProducerPerformance (java)");
    assert!(out.status.success(), "ProducerPerformance failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The offsets of `topic`'s records (one partition), as librdkafka reads them (kcat, `read_committed`): an
/// independent client, since rskafka itself cannot read past a marker.
fn offsets_in_kafka(topic: &str) -> Vec<i64> {
    let out = std::process::Command::new("kcat")
        .args(["-C", "-b", &soundline_tests::kafka_bootstrap(), "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q"])
        .args(["-f", "%o\\n", "-X", "isolation.level=read_committed"])
        .output()
        .expect("run kcat (make test installs it)");
    assert!(out.status.success(), "kcat failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().parse().expect("an offset")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_transaction_markers_is_read_across_its_offset_gaps_without_busy_fetching() {
    let topic = random_topic("feed-gaps");
    create_topic(&*client().await, &topic, 1).await;
    produce_transactionally(&topic, 40);
    let first_batch = offsets_in_kafka(&topic);
    assert_eq!(first_batch.len(), 40);
    let gap = first_batch.windows(2).position(|w| w[1] > w[0] + 1).expect("a commit marker between records");
    let relay = relay_for(&topic, &[]).await;

    // History across the gaps: every record once, in order, then nothing more.
    let mut live = Subscriber::start(&relay.ws("/ws/feed"), &subscription(None, From::Earliest)).await;
    let got: Vec<i64> = live.records(40).await.iter().map(|r| r.offset).collect();
    assert_eq!(got, first_batch);
    live.expect_quiet(Duration::from_millis(500)).await;

    // A resume with the last offset received + 1, right before a gap: exactly the records after it.
    let resume = BTreeMap::from([(0, first_batch[gap] + 1)]);
    let mut resumed = Subscriber::start(&relay.ws("/ws/feed"), &subscription(None, From::Offsets(resume))).await;
    let rest: Vec<i64> = resumed.records(40 - gap - 1).await.iter().map(|r| r.offset).collect();
    assert_eq!(rest, first_batch[gap + 1..]);
    resumed.expect_quiet(Duration::from_millis(500)).await;
    resumed.close().await;

    // Live across the gaps: the hub's reader ends on a commit marker, which must not make it fetch in a loop.
    produce_transactionally(&topic, 20);
    let all = offsets_in_kafka(&topic);
    let got: Vec<i64> = live.records(20).await.iter().map(|r| r.offset).collect();
    assert_eq!(got, all[40..]);
    let fetches = || async { soundline_tests::relay::metric(relay.addr, "soundline_feed_fetches_total").await };
    let before = fetches().await.expect("fetch counter");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = fetches().await.expect("fetch counter") - before;
    // One partition, fetches that wait up to 500 ms for records: about 6 in 3 s.
    assert!(during <= 20, "{during} fetches in 3 s on an idle partition ending in a commit marker");
    live.expect_quiet(Duration::from_millis(200)).await;
    live.close().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_to_one_car_reads_only_its_partition_wakes_only_for_its_car_and_readers_stop_when_nobody_needs_them()
 {
    use soundline_relay::kafka::partitioner::partition_for_key;
    use soundline_tests::relay::{metric, metric_until};
    const PARTITIONS: i32 = 12;
    let topic = random_topic("feed-on-demand");
    let relay = relay_for(&topic, &[("SOUNDLINE_PARTITIONS", "12"), ("SOUNDLINE_FEED_READER_IDLE_S", "1")]).await;
    let readers = "soundline_feed_partition_readers";
    assert_eq!(metric(relay.addr, readers).await, Some(0), "no subscriber, no reader");

    let watched = "CAR-W0";
    let watched_partition = partition_for_key(watched.as_bytes(), PARTITIONS);
    let sub = soundline_shared::feed::Subscribe { car_id: Some(watched.into()), ..subscription(None, From::Live) };
    let mut one_car = Subscriber::start(&relay.ws("/ws/feed"), &sub).await;
    assert_eq!(metric(relay.addr, readers).await, Some(1), "a car's subscriber needs one partition");

    // Twelve cars stream: the watched one, one more on its partition, ten others.
    let neighbour = (0..)
        .map(|i| format!("CAR-N{i}"))
        .find(|c| partition_for_key(c.as_bytes(), PARTITIONS) == watched_partition)
        .expect("a car on the watched partition");
    let mut recorders = tokio::task::JoinSet::new();
    for c in 0..12 {
        let url = relay.ws("/ws/record");
        let neighbour = neighbour.clone();
        recorders.spawn(async move {
            let car = match c {
                0 => "CAR-W0".to_owned(),
                1 => neighbour,
                _ => format!("CAR-O{c}"),
            };
            let segment = format!("seg-{car}");
            let mut r = Recorder::start(&url, &recording(&car, &segment)).await;
            for seq in 0..10 {
                r.send_frame(seq, TS + i64::from(seq) * 200, &samples(&segment, seq, 1600)).await;
            }
            r.acks(10).await;
            r.close().await;
        });
    }
    recorders.join_all().await;
    let got = one_car.records(10).await;
    assert!(got.iter().all(|r| r.key.as_deref() == Some(watched) && r.partition == watched_partition));
    one_car.expect_quiet(Duration::from_millis(300)).await;
    // The hub's stream of one car: the subscriber woke for its car's 10 records, not for its neighbour's.
    let considered = metric(relay.addr, "soundline_feed_considered_total").await;
    assert_eq!(considered, Some(10), "woken for other cars' records");
    // And the hub read the values of those 10 only: the neighbour's records on the same partition passed unread.
    let classified = metric(relay.addr, "soundline_feed_classified_total").await;
    assert_eq!(classified, Some(10), "classified records nobody watches");

    // What the relay read from Kafka for it: the watched partition's records at most, far from the topic.
    let in_kafka = read_all(&*client().await, &topic, PARTITIONS).await;
    let bytes = |r: &Record| r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len);
    let topic_bytes: usize = in_kafka.iter().map(|(_, _, r)| bytes(r)).sum();
    let partition_bytes: usize =
        in_kafka.iter().filter(|(p, _, _)| *p == watched_partition).map(|(_, _, r)| bytes(r)).sum();
    let fetched = metric(relay.addr, "soundline_feed_fetched_bytes_total").await.expect("fetched bytes") as usize;
    eprintln!("fed one car: read {fetched} of the topic's {topic_bytes} bytes ({partition_bytes} on its partition)");
    assert_eq!(fetched, partition_bytes, "the watched partition was read once, and nothing else");

    // It leaves: within the idle time (1 s here) its reader stops, and so do the fetches.
    one_car.close().await;
    let left = metric_until(relay.addr, readers, Duration::from_secs(10), |v| v == Some(0)).await;
    assert_eq!(left, Some(0), "the reader stops once nobody needs it");
    let before = metric(relay.addr, "soundline_feed_fetches_total").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(metric(relay.addr, "soundline_feed_fetches_total").await, before, "no reader, no fetch");

    // A subscriber without a car filter reads every partition.
    let all = Subscriber::start(&relay.ws("/ws/feed"), &subscription(None, From::Live)).await;
    assert_eq!(metric(relay.addr, readers).await, Some(i64::from(PARTITIONS)));
    all.close().await;
    relay.stop().await;
}

/// A list without audio, and one recording's audio by its offsets: `"pcm": false` records carry the envelope
/// without `originData.base64` (and the `segmentId` and `seq` headers); a bounded read (`until`) delivers
/// exactly the named range of that segment, then `end` and a close with 1000, and starts no partition reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_comes_without_pcm_and_a_bounded_read_fetches_one_recording() {
    let topic = random_topic("feed-bounded");
    let relay = relay_for(&topic, &[("SOUNDLINE_PARTITIONS", "1"), ("SOUNDLINE_FEED_READER_IDLE_S", "1")]).await;
    // Two recordings of two cars, interleaved on the one partition.
    let (a, b) = (recording("CAR-BA", "seg-BA"), recording("CAR-BB", "seg-BB"));
    let mut ra = Recorder::start(&relay.ws("/ws/record"), &a).await;
    let mut rb = Recorder::start(&relay.ws("/ws/record"), &b).await;
    for seq in 0..6u32 {
        ra.send_frame(seq, TS + i64::from(seq) * 200, &samples("seg-BA", seq, 3200)).await;
        ra.acks(1).await;
        rb.send_frame(seq, TS + i64::from(seq) * 200, &samples("seg-BB", seq, 3200)).await;
        rb.acks(1).await;
    }
    let light = soundline_shared::feed::Subscribe { pcm: false, ..subscription(None, From::Earliest) };
    let mut list = Subscriber::start(&relay.ws("/ws/feed"), &light).await;
    let listed = list.records(12).await;
    for r in &listed {
        assert!(r.value["originData"].get("base64").is_none(), "no PCM in a pcm:false record: {}", r.value);
        assert_eq!(r.value["originData"]["size"], 6400, "the size still says how much audio there is");
        assert!(r.segment_id.as_deref().is_some_and(|s| s.starts_with("seg-B")) && r.seq.is_some(), "{r:?}");
    }
    let of_a: Vec<&FeedRecord> = listed.iter().filter(|r| r.segment_id.as_deref() == Some("seg-BA")).collect();
    assert_eq!(of_a.iter().map(|r| r.seq.unwrap_or(99)).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
    let (first, last) = (of_a[1].offset, of_a[4].offset);
    drop(list);
    let readers = "soundline_feed_partition_readers";
    let idle =
        soundline_tests::relay::metric_until(relay.addr, readers, Duration::from_secs(10), |v| v == Some(0)).await;
    assert_eq!(idle, Some(0), "the list's reader stopped after it left");

    // Frames 1 to 4 of seg-BA, by their offsets: exactly those, with PCM, then end and 1000.
    let bounded = soundline_shared::feed::Subscribe {
        from: From::Offsets(BTreeMap::from([(0, first)])),
        until: Some(BTreeMap::from([(0, last + 1)])),
        segment_id: Some("seg-BA".into()),
        ..subscription(None, From::Live)
    };
    let history = "soundline_feed_history_records_total";
    let read_before = soundline_tests::relay::metric(relay.addr, history).await.unwrap_or_default();
    let mut fetch = Subscriber::start(&relay.ws("/ws/feed"), &bounded).await;
    let mut got = Vec::new();
    loop {
        match fetch.next_event().await {
            FeedEvent::Feed(FeedServerMessage::Record(r)) => got.push(r),
            FeedEvent::Feed(FeedServerMessage::Subscribed { .. }) => {}
            FeedEvent::Feed(FeedServerMessage::End) => break,
            other => panic!("expected records then end, got {other:?}"),
        }
    }
    assert_eq!(got.iter().map(|r| r.seq.unwrap_or(99)).collect::<Vec<_>>(), [1, 2, 3, 4]);
    for r in &got {
        let env = Envelope::parse(r.value.to_string().as_bytes()).expect("a whole envelope, PCM included");
        assert_eq!(env.origin.samples(), samples("seg-BA", r.seq.unwrap_or_default(), 3200));
    }
    assert_eq!(fetch.next_event().await, FeedEvent::Closed(Some(1000)), "a normal close after end");
    assert_eq!(soundline_tests::relay::metric(relay.addr, readers).await, Some(0), "a bounded read starts no reader");
    // Its cost: the records of the partition between the first and the last offset (the other car's among them),
    // and at most the rest of the fetched batch.
    let read = soundline_tests::relay::metric(relay.addr, history).await.unwrap_or_default() - read_before;
    assert!(
        (last - first + 1..=12).contains(&read),
        "the bounded read fetched {read} records for offsets {first}..={last}"
    );
    relay.stop().await;
}
