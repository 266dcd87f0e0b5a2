//! `/ws/record` against the real broker: what recorders send lands in Kafka exactly as sent, in order, and each
//! ack names the record that holds the frame.

use std::collections::HashMap;

use soundline_relay::kafka::partitioner::partition_for_key;
use soundline_shared::control::{ErrorCode, ServerMessage};
use soundline_shared::envelope::Envelope;
use soundline_tests::recorder::{Event, Recorder, recording, samples};
use soundline_tests::relay::{InProcess, config, http_get, metric, readyz_once_it_says};
use soundline_tests::{client, now_ms, random_topic, read_all};

const BASE_TS: i64 = 1_764_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_recorders_land_every_frame_exactly_once_in_order_and_acks_point_at_their_records() {
    const CARS: usize = 8;
    const SEGMENTS: usize = 3;
    const FRAMES: u32 = 20;
    const PARTITIONS: i32 = 4;
    let topic = random_topic("ingest");
    let relay = InProcess::start(config(&[("SOUNDLINE_TOPIC", &topic), ("SOUNDLINE_PARTITIONS", "4")])).await;
    relay.wait_ready().await;

    let started = now_ms();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CARS {
        for s in 0..SEGMENTS {
            let url = relay.ws("/ws/record");
            tasks.spawn(async move {
                let rec = recording(&format!("CAR-{c:03}"), &format!("seg-{c}-{s}"));
                let mut r = Recorder::start(&url, &rec).await;
                for seq in 0..FRAMES {
                    r.send_frame(seq, BASE_TS + i64::from(seq) * 200, &samples(&rec.segment_id, seq, 3200)).await;
                }
                let acks = r.acks(FRAMES as usize).await;
                r.close().await;
                (rec, acks)
            });
        }
    }
    let results = tasks.join_all().await;
    let finished = now_ms();

    let records = read_all(&*client().await, &topic, PARTITIONS).await;
    assert_eq!(records.len(), CARS * SEGMENTS * FRAMES as usize, "every frame lands exactly once");
    let by_position: HashMap<(i32, i64), &rskafka::record::Record> =
        records.iter().map(|(p, o, r)| ((*p, *o), r)).collect();

    let mut acked = 0;
    for (rec, acks) in &results {
        let seqs: Vec<u32> = acks.iter().map(|a| a.0).collect();
        assert_eq!(seqs, (0..FRAMES).collect::<Vec<_>>(), "acks of {} come in frame order", rec.segment_id);
        let mut last_offset = -1;
        for &(seq, partition, offset) in acks {
            assert_eq!(
                partition,
                partition_for_key(rec.device.car_id.as_bytes(), PARTITIONS),
                "one car, one partition"
            );
            assert!(offset > last_offset, "offsets of a segment increase with seq");
            last_offset = offset;
            let record = by_position
                .get(&(partition, offset))
                .unwrap_or_else(|| panic!("ack {partition}/{offset} points at no record"));
            assert_eq!(record.key.as_deref(), Some(rec.device.car_id.as_bytes()));
            assert_eq!(record.headers.get("seq").map(Vec::as_slice), Some(seq.to_string().as_bytes()));
            assert_eq!(record.headers.get("segmentId").map(Vec::as_slice), Some(rec.segment_id.as_bytes()));
            let ts = BASE_TS + i64::from(seq) * 200;
            let received = record.timestamp.timestamp_millis();
            assert!((started..=finished).contains(&received), "record timestamp {received}: the relay's receive time");
            let env =
                Envelope::parse(record.value.as_deref().unwrap_or_default()).expect("a valid AICP_SOUND envelope");
            assert_eq!(&env.recording, rec, "metadata as sent in the hello");
            assert_eq!(env.collect_timestamp_ms, ts);
            assert_eq!(env.stamp.ver, "1.0");
            assert_eq!(env.origin.samples(), samples(&rec.segment_id, seq, 3200), "audio as sent");
            acked += 1;
        }
    }
    assert_eq!(acked, records.len(), "every record was acked once");
    let uuids: std::collections::HashSet<String> = records
        .iter()
        .map(|(_, _, r)| Envelope::parse(r.value.as_deref().unwrap_or_default()).map(|e| e.uuid).unwrap_or_default())
        .collect();
    assert_eq!(uuids.len(), records.len(), "uuid is unique per frame");

    let (status, metrics) = http_get(relay.addr, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains(&format!("soundline_acks_total {}", records.len())), "{metrics}");
    assert!(metrics.contains(&format!("soundline_frames_in_total {}", records.len())), "{metrics}");
    // Every record's latency, and every stored request's time: as many as the batches Kafka acknowledged.
    let records_n = Some(records.len() as i64);
    assert_eq!(metric(relay.addr, "soundline_produce_latency_seconds_count").await, records_n, "{metrics}");
    let batches = metric(relay.addr, "soundline_produce_batches_total").await.unwrap_or(0);
    assert!((1..=records.len() as i64).contains(&batches), "{metrics}");
    assert_eq!(metric(relay.addr, "soundline_produce_request_seconds_count").await, Some(batches), "{metrics}");
    assert_eq!(
        metric(relay.addr, "soundline_ack_seconds_count").await,
        records_n,
        "an ack's latency per ack: {metrics}"
    );
    relay.stop().await;
}

/// A device clock is untrusted input. Kafka 4 refuses records timestamped more than an hour ahead of the broker
/// (`log.message.timestamp.after.max.ms`) and deletes at once those older than `retention.ms`; if the record's
/// timestamp were the device's, one phone with a wrong clock would stall its partition (the relay retries a
/// produce until it succeeds) for every car hashed there, or lose acked audio. The record timestamp is the
/// relay's receive time, as the old uploader's kafka-python producer did; `collectTimestamp` keeps the device's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_clock_far_off_keeps_its_capture_time_and_stalls_nobody() {
    let topic = random_topic("clock");
    let relay = InProcess::start(config(&[("SOUNDLINE_TOPIC", &topic), ("SOUNDLINE_PARTITIONS", "1")])).await;
    relay.wait_ready().await;
    let before = now_ms();
    // Year 2100, 1970, and an honest clock, on one partition.
    let clocks = [("CAR-AHEAD", 4_102_444_800_000_i64), ("CAR-BEHIND", 1_000), ("CAR-RIGHT", before)];
    let mut recorders = Vec::new();
    for (car, ts) in clocks {
        let rec = recording(car, &format!("seg-{car}"));
        let mut r = Recorder::start(&relay.ws("/ws/record"), &rec).await;
        for seq in 0..5 {
            r.send_frame(seq, ts + i64::from(seq) * 200, &samples(&rec.segment_id, seq, 3200)).await;
        }
        recorders.push((car, ts, r));
    }
    for (car, _, r) in &mut recorders {
        let acks = tokio::time::timeout(std::time::Duration::from_secs(20), r.acks(5))
            .await
            .unwrap_or_else(|_| panic!("{car}: no acks within 20 s"));
        assert_eq!(acks.iter().map(|a| a.0).collect::<Vec<_>>(), [0, 1, 2, 3, 4], "{car}");
    }
    let after = now_ms();
    let records = read_all(&*client().await, &topic, 1).await;
    assert_eq!(records.len(), 15);
    for (car, ts, _) in &recorders {
        let mine: Vec<_> = records.iter().filter(|(_, _, r)| r.key.as_deref() == Some(car.as_bytes())).collect();
        assert_eq!(mine.len(), 5, "{car}");
        for (seq, (_, _, r)) in mine.iter().enumerate() {
            let at = r.timestamp.timestamp_millis();
            assert!((before..=after).contains(&at), "{car}: record timestamp {at} is not the relay's receive time");
            let env = Envelope::parse(r.value.as_deref().unwrap_or_default()).expect("an envelope");
            assert_eq!(env.collect_timestamp_ms, ts + seq as i64 * 200, "{car}: the device's capture time, as sent");
        }
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_relay_that_may_not_create_the_topic_says_so_in_readyz() {
    let topic = random_topic("missing");
    let relay = InProcess::start(config(&[("SOUNDLINE_TOPIC", &topic), ("SOUNDLINE_CREATE_TOPIC", "false")])).await;
    let last = readyz_once_it_says(relay.addr, "does not exist").await;
    assert_eq!(last.0, 503);
    assert!(last.1.contains(&format!("topic \"{topic}\" does not exist and create_topic is off")), "{}", last.1);
    let (status, body) = http_get(relay.addr, "/healthz").await.expect("healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"), "alive even when not ready");
    relay.stop().await;
}

#[tokio::test]
async fn frames_larger_than_the_broker_accepts_are_refused_not_truncated() {
    let topic = random_topic("toolarge");
    let relay =
        InProcess::start(config(&[("SOUNDLINE_TOPIC", &topic), ("SOUNDLINE_MAX_MESSAGE_BYTES", "65536")])).await;
    relay.wait_ready().await;
    let rec = recording("CAR-BIG", "seg-big");
    let mut r = Recorder::start(&relay.ws("/ws/record"), &rec).await;
    r.send_frame(0, BASE_TS, &samples("seg-big", 0, 1600)).await;
    assert_eq!(r.acks(1).await.len(), 1, "a 100 ms frame fits");
    r.send_frame(1, BASE_TS + 100, &samples("seg-big", 1, 32_000)).await;
    let (code, message, close) = r.expect_error().await;
    assert_eq!((code, close), (ErrorCode::RecordTooLarge, 4009));
    assert!(message.contains("the broker accepts at most 65536 bytes"), "{message}");
    let records = read_all(&*client().await, &topic, 6).await;
    assert_eq!(records.len(), 1, "only the frame that fits is in Kafka");
    relay.stop().await;
}

#[tokio::test]
async fn a_recorder_that_connects_gets_ready_with_topic_and_frame_limit() {
    let topic = random_topic("ready");
    let relay = InProcess::start(config(&[("SOUNDLINE_TOPIC", &topic), ("SOUNDLINE_MAX_FRAME_MS", "1000")])).await;
    relay.wait_ready().await;
    let mut r = Recorder::connect(&relay.ws("/ws/record")).await;
    let ready = r.hello(&recording("CAR-1", "seg-1")).await;
    assert_eq!(ready, Event::Server(ServerMessage::Ready { protocol: 1, topic, max_frame_samples: 16_000 }));
    r.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_resent_frame_is_acked_again_at_its_first_offset_without_landing_twice() {
    let topic = random_topic("dedup");
    let relay = InProcess::start(config(&[("SOUNDLINE_TOPIC", &topic), ("SOUNDLINE_PARTITIONS", "1")])).await;
    relay.wait_ready().await;
    let rec = recording("CAR-DUP", "seg-dup");
    let mut first = Recorder::start(&relay.ws("/ws/record"), &rec).await;
    for seq in 0..5 {
        first.send_frame(seq, BASE_TS + i64::from(seq) * 200, &samples("seg-dup", seq, 1600)).await;
    }
    let before = first.acks(5).await;
    first.close().await;

    // As after a lost connection whose last acks never arrived: resend 3 and 4, then go on with 5.
    let mut again = Recorder::start(&relay.ws("/ws/record"), &rec).await;
    for seq in 3..6 {
        again.send_frame(seq, BASE_TS + i64::from(seq) * 200, &samples("seg-dup", seq, 1600)).await;
    }
    let after = again.acks(3).await;
    again.close().await;
    assert_eq!(after[..2], before[3..], "the resent frames are acked at the offsets they first landed at");
    assert_eq!(after[2].0, 5);
    let records = read_all(&*client().await, &topic, 1).await;
    assert_eq!(records.len(), 6, "six frames, six records: nothing landed twice");
    let (_, metrics) = http_get(relay.addr, "/metrics").await.expect("metrics");
    assert!(metrics.contains("soundline_duplicates_total 2"), "{metrics}");
    relay.stop().await;
}

#[tokio::test]
async fn a_hello_with_only_car_and_segment_lands_envelopes_with_the_legacy_defaults() {
    let topic = random_topic("ingest-minimal-hello");
    let relay = InProcess::start(config(&[("SOUNDLINE_TOPIC", &topic), ("SOUNDLINE_PARTITIONS", "1")])).await;
    relay.wait_ready().await;
    // What the old uploader's users might send: no railType, no locationInfo, no inspectionInfo.
    let mut r = Recorder::connect(&relay.ws("/ws/record")).await;
    r.send_text(
        r#"{"type":"hello","protocol":1,"deviceInfo":{"carID":"CAR-MIN"},"segmentId":"seg-min","format":{"hz":16000,"bits":16,"channels":1}}"#,
    )
    .await;
    assert!(matches!(r.next().await, Event::Server(ServerMessage::Ready { .. })));
    r.send_frame(0, BASE_TS, &samples("seg-min", 0, 1600)).await;
    r.acks(1).await;
    r.close().await;
    let records = read_all(&*client().await, &topic, 1).await;
    assert_eq!(records.len(), 1);
    let value = records[0].2.value.as_deref().expect("a value");
    let env = Envelope::parse(value).expect("a valid envelope");
    assert_eq!(env.recording.device.car_id, "CAR-MIN");
    assert_eq!(env.recording.device.rail_type, 0);
    assert_eq!((env.recording.location.unit_id.as_str(), env.recording.location.sty.as_str()), ("", ""));
    assert_eq!(env.recording.inspection_info, "");
    // Field for field, as the legacy consumers read it.
    let json: serde_json::Value = serde_json::from_slice(value).expect("json");
    assert_eq!(json["deviceInfo"], serde_json::json!({"carID": "CAR-MIN", "railType": 0}));
    assert_eq!(json["locationInfo"], serde_json::json!({"unitId": "", "sty": ""}));
    assert_eq!(json["inspectionInfo"], "");
    relay.stop().await;
}
