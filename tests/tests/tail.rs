//! `soundline-relay tail`, the real binary against the real broker: known records in, the old consumer script's
//! `topic:partition:offset: key=... value=...` lines out; `--json`, `--full`, filters and `--count`.

use std::collections::BTreeMap;
use std::process::Command;

use chrono::{TimeZone, Utc};
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::Record;
use soundline_shared::envelope::{Envelope, Stamp};
use soundline_tests::recorder::{recording, samples};
use soundline_tests::{client, create_topic, kafka_bootstrap, random_topic};

const TS: i64 = 1_764_000_000_000; // 2025-11-24T16:00:00Z

fn envelope_record(car: &str, segment: &str, seq: u32) -> Record {
    tagged_record(car, segment, seq, &Stamp::default().sys_tag)
}

/// An envelope stamped `sys_tag`, as a relay configured with that tag writes it.
fn tagged_record(car: &str, segment: &str, seq: u32, sys_tag: &str) -> Record {
    let ts = TS + i64::from(seq) * 200;
    let env = Envelope::from_samples(
        uuid::Uuid::from_u128(u128::from(seq) + 1),
        &Stamp { ver: "1.0".into(), sys_tag: sys_tag.into(), ..Stamp::default() },
        &recording(car, segment),
        ts,
        &samples(segment, seq, 3200),
    );
    record(Some(car), env.to_json(), ts)
}

fn record(key: Option<&str>, value: Vec<u8>, ts: i64) -> Record {
    Record {
        key: key.map(|k| k.as_bytes().to_vec()),
        value: Some(value),
        headers: BTreeMap::new(),
        timestamp: Utc.timestamp_millis_opt(ts).single().expect("valid ms"),
    }
}

/// A topic with two partitions holding envelopes, other JSON and garbage at known offsets.
async fn known_topic() -> String {
    let topic = random_topic("tail");
    let client = client().await;
    create_topic(&client, &topic, 2).await;
    let p0 = client.partition_client(&topic, 0, UnknownTopicHandling::Retry).await.expect("partition 0");
    let p1 = client.partition_client(&topic, 1, UnknownTopicHandling::Retry).await.expect("partition 1");
    let analysis = br#"{"carID":"CAR-A","result":"wheel flat","score":0.93}"#.to_vec();
    p0.produce(
        vec![
            envelope_record("CAR-A", "seg-a", 0),
            envelope_record("CAR-A", "seg-a", 1),
            record(Some("CAR-A"), analysis, TS + 999),
        ],
        Compression::NoCompression,
    )
    .await
    .expect("produce to partition 0");
    p1.produce(
        vec![envelope_record("CAR-B", "seg-b", 0), record(None, b"\x00\x01\xffnot json".to_vec(), TS)],
        Compression::NoCompression,
    )
    .await
    .expect("produce to partition 1");
    topic
}

fn tail(topic: &str, args: &[&str]) -> Vec<String> {
    tail_with(topic, args, &[])
}

/// As [`tail`], with more relay settings in its environment.
fn tail_with(topic: &str, args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let out = Command::new(soundline_tests::relay::relay_bin())
        .arg("tail")
        .args(args)
        .env("SOUNDLINE_KAFKA_BROKERS", kafka_bootstrap())
        .env("SOUNDLINE_TOPIC", topic)
        .envs(env.iter().copied())
        .output()
        .expect("run soundline-relay tail");
    assert!(out.status.success(), "tail failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut lines: Vec<String> =
        String::from_utf8(out.stdout).expect("utf-8 output").lines().map(str::to_owned).collect();
    // Partitions interleave as they arrive; within a partition the order is the offsets'. Compare sorted, and
    // check the per-partition order separately.
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for line in &lines {
        if let Some((partition, offset)) =
            line.split(':').nth(1).zip(line.split(':').nth(2).and_then(|o| o.parse::<i64>().ok()))
        {
            let prev = last.insert(partition.to_owned(), offset);
            assert!(prev.is_none_or(|p| p < offset), "partition {partition} printed out of order: {lines:?}");
        }
    }
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_one_summary_line_per_record_like_the_old_consumer() {
    let topic = known_topic().await;
    let lines = tokio::task::spawn_blocking(move || {
        let lines = tail(&topic, &["--from", "earliest", "--count", "5"]);
        (topic, lines)
    })
    .await
    .expect("tail");
    let (t, lines) = lines;
    assert_eq!(
        lines,
        [
            format!(
                "{t}:0:0: key=CAR-A value=car=CAR-A segment=seg-a time=2025-11-24T16:00:00.000Z duration=200ms bytes=6400"
            ),
            format!(
                "{t}:0:1: key=CAR-A value=car=CAR-A segment=seg-a time=2025-11-24T16:00:00.200Z duration=200ms bytes=6400"
            ),
            format!("{t}:0:2: key=CAR-A value=json {{\"carID\":\"CAR-A\",\"result\":\"wheel flat\",\"score\":0.93}}"),
            format!(
                "{t}:1:0: key=CAR-B value=car=CAR-B segment=seg-b time=2025-11-24T16:00:00.000Z duration=200ms bytes=6400"
            ),
            format!("{t}:1:1: key=null value=opaque 11 bytes"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_filters_by_car_and_segment_and_prints_json_or_full_values() {
    let topic = known_topic().await;
    tokio::task::spawn_blocking(move || {
        let car_b = tail(&topic, &["--from", "earliest", "--count", "1", "--car", "CAR-B"]);
        assert_eq!(car_b.len(), 1);
        assert!(car_b[0].starts_with(&format!("{topic}:1:0: key=CAR-B value=car=CAR-B")), "{car_b:?}");

        let seg_a = tail(&topic, &["--from", "earliest", "--count", "2", "--segment", "seg-a", "--json"]);
        assert_eq!(seg_a.len(), 2);
        for (offset, line) in seg_a.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).expect("--json prints JSON lines");
            assert_eq!(v["topic"], topic.as_str());
            assert_eq!((v["partition"].as_i64(), v["offset"].as_i64()), (Some(0), Some(offset as i64)));
            assert_eq!(v["kind"], "envelope");
            assert_eq!(v["key"], "CAR-A");
            assert_eq!(v["timestampMs"], TS + offset as i64 * 200);
            assert_eq!(v["value"]["segmentId"], "seg-a", "the envelope as it is in Kafka");
            assert_eq!(v["value"]["sysTag"], "AICP_SOUND");
        }

        let full = tail(&topic, &["--from", "earliest", "--count", "5", "--full"]);
        assert!(full.contains(&format!("{topic}:1:1: key=null value=base64:AAH/bm90IGpzb24=")), "{full:?}");
        assert!(full.contains(&format!(
            "{topic}:0:2: key=CAR-A value={{\"carID\":\"CAR-A\",\"result\":\"wheel flat\",\"score\":0.93}}"
        )));
    })
    .await
    .expect("tail runs");
}

/// A relay configured with its own `sysTag` writes its envelopes with it: `tail` with the same settings knows
/// them by that tag, and an envelope with the built-in tag is another system's JSON to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_knows_envelopes_by_the_configured_sys_tag() {
    let topic = random_topic("tail-tag");
    let client = client().await;
    create_topic(&client, &topic, 1).await;
    let p0 = client.partition_client(&topic, 0, UnknownTopicHandling::Retry).await.expect("partition 0");
    let records = vec![tagged_record("CAR-T", "seg-t", 0, "RAIL_AUDIO"), envelope_record("CAR-D", "seg-d", 0)];
    p0.produce(records, Compression::NoCompression).await.expect("produce");
    tokio::task::spawn_blocking(move || {
        let lines = tail_with(&topic, &["--from", "earliest", "--count", "2"], &[("SOUNDLINE_SYS_TAG", "RAIL_AUDIO")]);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[0],
            format!(
                "{topic}:0:0: key=CAR-T value=car=CAR-T segment=seg-t time=2025-11-24T16:00:00.000Z duration=200ms bytes=6400"
            )
        );
        // Shown as JSON (its first 200 characters), not summarised as a recording's frame.
        let json = format!("{topic}:0:1: key=CAR-D value=json {{\"collectTimestamp\":1764000000000,\"deviceInfo\":");
        assert!(lines[1].starts_with(&json), "{lines:?}");
    })
    .await
    .expect("tail runs");
}

#[test]
fn tail_of_a_missing_topic_is_one_clear_line() {
    let out = Command::new(soundline_tests::relay::relay_bin())
        .args(["tail", "--count", "1"])
        .env("SOUNDLINE_KAFKA_BROKERS", kafka_bootstrap())
        .env("SOUNDLINE_TOPIC", "no-such-topic-here")
        .output()
        .expect("run soundline-relay tail");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "soundline-relay: topic \"no-such-topic-here\" does not exist on the brokers\n"
    );
}
