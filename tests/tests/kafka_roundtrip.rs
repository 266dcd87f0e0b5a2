//! rskafka against the project's real Apache Kafka 4.x broker: the requests the relay will depend on
//! (Metadata, CreateTopics, Produce, Fetch, ListOffsets, SASL) all negotiate, and an envelope comes back byte-identical.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::record::Record;
use soundline_shared::envelope::{Envelope, Stamp};
use soundline_shared::recording::{DeviceInfo, LocationInfo, Recording};
use soundline_tests::{client, create_topic, random_topic, sasl_client};

fn envelope() -> Envelope {
    let recording = Recording {
        device: DeviceInfo { car_id: "CAR-7".into(), rail_type: 1 },
        location: LocationInfo { unit_id: "U1".into(), sty: "bay 2".into() },
        segment_id: "seg-1".into(),
        inspection_info: "axle 2".into(),
    };
    let samples: Vec<i16> = (0..3200).map(|i| ((i as f32 * 0.39).sin() * 8000.0) as i16).collect();
    Envelope::from_samples(
        uuid::Uuid::new_v4(),
        &Stamp { ver: "1.0".into(), ..Stamp::default() },
        &recording,
        1_732_530_000_123,
        &samples,
    )
}

async fn round_trip(client: &rskafka::client::Client, compression: Compression) {
    let topic = random_topic("roundtrip");
    create_topic(client, &topic, 1).await;
    let partition = client.partition_client(&topic, 0, UnknownTopicHandling::Retry).await.expect("partition client");

    let env = envelope();
    let value = env.to_json();
    let record = Record {
        key: Some(b"CAR-7".to_vec()),
        value: Some(value.clone()),
        headers: BTreeMap::from([("segment".to_owned(), b"seg-1".to_vec()), ("seq".to_owned(), b"0".to_vec())]),
        timestamp: Utc.timestamp_millis_opt(env.collect_timestamp_ms).single().expect("valid ms"),
    };
    let offsets = partition.produce(vec![record.clone()], compression).await.expect("produce");
    assert_eq!(offsets, vec![0]);
    assert_eq!(partition.get_offset(OffsetAt::Latest).await.expect("list offsets"), 1);

    let (records, high_watermark) = partition.fetch_records(0, 1..1_000_000, 1_000).await.expect("fetch");
    assert_eq!(high_watermark, 1);
    assert_eq!(records.len(), 1);
    let got = &records[0];
    assert_eq!(got.offset, 0);
    assert_eq!(got.record, record, "key, value, headers and timestamp come back as sent");
    assert_eq!(got.record.value.as_deref(), Some(value.as_slice()), "value is byte-identical");
    assert_eq!(Envelope::parse(&value), Ok(env));
    client.controller_client().expect("controller").delete_topic(&topic, 5_000).await.expect("delete topic");
}

#[tokio::test]
async fn envelope_round_trips_byte_identical_through_kafka_4() {
    round_trip(&*client().await, Compression::NoCompression).await;
}

#[tokio::test]
async fn envelope_round_trips_with_every_compression() {
    let client = client().await;
    for compression in [Compression::Gzip, Compression::Lz4, Compression::Snappy, Compression::Zstd] {
        round_trip(&client, compression).await;
    }
}

#[tokio::test]
async fn sasl_plain_and_scram_authenticate_and_produce() {
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let client = sasl_client(mechanism, None).await.unwrap_or_else(|e| panic!("{mechanism}: {e}"));
        round_trip(&client, Compression::NoCompression).await;
    }
}

#[tokio::test]
async fn sasl_wrong_password_is_refused() {
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let err = sasl_client(mechanism, Some("not-the-password")).await.err();
        let err = err.unwrap_or_else(|| panic!("{mechanism} accepted a wrong password"));
        eprintln!("{mechanism}: {err}");
        assert!(err.to_string().contains("SaslAuthenticationFailed"), "{mechanism}: {err}");
    }
}
