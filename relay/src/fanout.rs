//! Fan-out: one live consumer per partition per topic per relay process, broadcast to every feed subscriber.
//!
//! # Data Flow
//!
//! ```text
//!  Kafka ─► fetch loop p0 ─┐                      ┌─► subscriber A (filters, its own position per partition)
//!  Kafka ─► fetch loop p1 ─┼─► hub: classify, ─► broadcast ring ─► subscriber B
//!  ...                     ┘   serialize once,    (feed_buffer_records)   ...
//!                              advance positions  full: the slowest subscriber lags, nobody waits
//! ```
//!
//! A hub starts on the first subscription to its topic, at the topic's end, and runs for the life of the process:
//! subscribers never multiply Kafka fetches. Each record's `record` message is serialized once, here, and shared
//! by reference with every subscriber.
//!
//! **Joining without gaps or duplicates.** The hub advances `positions[p]` (the next offset it will publish) before
//! it publishes each record. A subscriber first subscribes to the broadcast, then reads `positions`: every record
//! at or after those offsets is published after its subscription, so it will arrive on the broadcast; everything
//! before them it reads itself from Kafka (history). Per partition it then delivers each offset at most once.
//! When the broadcast ring overflows (a slow subscriber), the subscriber is told how many records it missed and
//! the offsets to resume from (see `feed.rs`); publishing never waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rskafka::client::Client;
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use rskafka::record::Record;
use soundline_shared::feed::{FeedRecord, FeedServerMessage, FeedValue};
use tokio::sync::{broadcast, mpsc};

use crate::config::Config;
use crate::kafka::consumer::{Consumed, ConsumerHealth, Start, partitions, spawn_partition_reader};
use crate::kafka::{KafkaError, connect};
use crate::metrics::Metrics;

/// A record ready to send: its position, what filters look at, and the serialized `record` message.
#[derive(Debug)]
pub struct Published {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// `deviceInfo.carID`, when the value is an envelope.
    pub car_id: Option<String>,
    /// `segmentId`, when the value is an envelope.
    pub segment_id: Option<String>,
    /// The `{"type":"record",...}` text.
    pub text: Utf8Bytes,
}

impl Published {
    /// Whether a subscriber with these filters wants this record (filters match envelopes only).
    pub fn matches(&self, car_id: Option<&str>, segment_id: Option<&str>) -> bool {
        car_id.is_none_or(|c| self.car_id.as_deref() == Some(c))
            && segment_id.is_none_or(|s| self.segment_id.as_deref() == Some(s))
    }
}

/// Builds the feed message for one record, or `None` when it is malformed (neither envelope nor JSON) and the
/// relay is configured to skip such records.
pub fn publish(topic: &str, partition: i32, offset: i64, record: &Record, skip_malformed: bool) -> Option<Published> {
    let raw = record.value.as_deref().unwrap_or_default();
    let value = FeedValue::classify(raw);
    let (car_id, segment_id) = match &value {
        FeedValue::Envelope(env) => (Some(env.recording.device.car_id.clone()), Some(env.recording.segment_id.clone())),
        _ => (None, None),
    };
    // The value goes out as it is in Kafka: spliced in, not parsed into a tree and written again (an envelope is
    // tens of KB, and this runs once per record). It is valid JSON: `classify` just parsed it.
    let value_json = match (&value, std::str::from_utf8(raw)) {
        (FeedValue::Opaque(_), _) if skip_malformed => return None,
        (FeedValue::Envelope(_) | FeedValue::Json(_), Ok(text)) => text.trim().to_owned(),
        (FeedValue::Opaque(bytes), _) => format!("\"{}\"", BASE64.encode(bytes)),
        // JSON is UTF-8 by definition; this arm is unreachable in practice but must not lose the record.
        (_, Err(_)) => format!("\"{}\"", BASE64.encode(raw)),
    };
    let header = FeedServerMessage::Record(FeedRecord {
        topic: topic.to_owned(),
        partition,
        offset,
        timestamp_ms: record.timestamp.timestamp_millis(),
        key: record.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
        kind: value.kind().to_owned(),
        value: serde_json::Value::Null,
    });
    // `{"type":"record",...,"value":null}` with the null replaced by the value.
    let mut text = serde_json::to_string(&header).unwrap_or_default();
    if !text.ends_with("null}") {
        return None;
    }
    text.truncate(text.len() - "null}".len());
    text.push_str(&value_json);
    text.push('}');
    Some(Published { partition, offset, car_id, segment_id, text: Utf8Bytes::from(text) })
}

/// One topic's live stream.
pub struct Hub {
    /// The topic.
    pub topic: Arc<str>,
    tx: broadcast::Sender<Arc<Published>>,
    /// Next offset the hub publishes, per partition. Written by the hub's task only; a std Mutex held briefly.
    positions: Mutex<Vec<i64>>,
}

impl Hub {
    /// Subscribes to the live stream and returns, with it, the positions from which it is complete.
    pub fn join(&self) -> (broadcast::Receiver<Arc<Published>>, Vec<i64>) {
        // Order matters: subscribe first, then read the positions (see the module doc).
        let rx = self.tx.subscribe();
        let positions = self.positions.lock().map(|p| p.clone()).unwrap_or_default();
        (rx, positions)
    }
}

/// All hubs of this process, started on demand.
pub struct Fanout {
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<ConsumerHealth>,
    client: tokio::sync::OnceCell<Arc<Client>>,
    hubs: tokio::sync::Mutex<HashMap<String, Arc<Hub>>>,
}

impl Fanout {
    /// A fan-out with no hub running yet.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            metrics,
            health: Arc::new(ConsumerHealth::default()),
            client: tokio::sync::OnceCell::new(),
            hubs: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The consumers' health, for `/readyz` and `/metrics`.
    pub fn health(&self) -> &ConsumerHealth {
        &self.health
    }

    /// The Kafka client the feed reads with (connected on first use).
    ///
    /// # Errors
    ///
    /// Kafka unreachable or credentials refused.
    pub async fn client(&self) -> Result<Arc<Client>, KafkaError> {
        self.client
            .get_or_try_init(|| async { connect(&self.config.kafka, Duration::from_secs(5)).await.map(Arc::new) })
            .await
            .cloned()
    }

    /// The hub of `topic`, starting it at the topic's end if it is not running.
    ///
    /// # Errors
    ///
    /// [`KafkaError::NoSuchTopic`] when the topic does not exist; other [`KafkaError`]s when Kafka fails.
    pub async fn hub(&self, topic: &str) -> Result<Arc<Hub>, KafkaError> {
        let mut hubs = self.hubs.lock().await;
        if let Some(hub) = hubs.get(topic) {
            return Ok(Arc::clone(hub));
        }
        let client = self.client().await?;
        let brokers = self.config.kafka.brokers.join(",");
        let n = partitions(&client, &brokers, topic).await?;
        let mut positions = Vec::with_capacity(n as usize);
        for p in 0..n {
            let pc = client
                .partition_client(topic.to_owned(), p, UnknownTopicHandling::Retry)
                .await
                .map_err(|source| KafkaError::Unreachable { brokers: brokers.clone(), source })?;
            positions.push(
                pc.get_offset(OffsetAt::Latest)
                    .await
                    .map_err(|source| KafkaError::Unreachable { brokers: brokers.clone(), source })?,
            );
        }
        let (tx, _) = broadcast::channel(self.config.feed.buffer_records);
        let hub = Arc::new(Hub { topic: Arc::from(topic), tx, positions: Mutex::new(positions.clone()) });
        let (records_tx, records_rx) = mpsc::channel(1024);
        for (p, offset) in positions.iter().enumerate() {
            spawn_partition_reader(
                Arc::clone(&client),
                Arc::clone(&hub.topic),
                p as i32,
                Start::Offset(*offset),
                records_tx.clone(),
                Arc::clone(&self.health),
            );
        }
        tokio::spawn(run_hub(
            Arc::clone(&hub),
            records_rx,
            records_tx,
            client,
            self.config.feed.skip_malformed,
            Arc::clone(&self.metrics),
            Arc::clone(&self.health),
        ));
        tracing::info!(topic, partitions = n, "feed: consuming topic live");
        hubs.insert(topic.to_owned(), Arc::clone(&hub));
        Ok(hub)
    }
}

/// The hub's task: classify and publish each consumed record; follow partitions added later.
async fn run_hub(
    hub: Arc<Hub>,
    mut records: mpsc::Receiver<Consumed>,
    records_tx: mpsc::Sender<Consumed>,
    client: Arc<Client>,
    skip_malformed: bool,
    metrics: Arc<Metrics>,
    health: Arc<ConsumerHealth>,
) {
    let mut rescan = tokio::time::interval(Duration::from_secs(30));
    rescan.tick().await;
    loop {
        tokio::select! {
            consumed = records.recv() => {
                let Some(c) = consumed else { return };
                let published = publish(&hub.topic, c.partition, c.offset, &c.record, skip_malformed);
                if let Ok(mut positions) = hub.positions.lock()
                    && let Some(slot) = positions.get_mut(c.partition as usize)
                {
                    *slot = c.offset + 1;
                }
                match published {
                    // No subscriber is not an error: the record is simply not needed now.
                    Some(p) => drop(hub.tx.send(Arc::new(p))),
                    None => metrics.feed_dropped(crate::metrics::FeedDrop::Malformed, 1),
                }
            }
            _ = rescan.tick() => {
                let known = hub.positions.lock().map(|p| p.len()).unwrap_or_default() as i32;
                let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), partitions(&client, "", &hub.topic)).await else { continue };
                for p in known..n {
                    tracing::info!(topic = %hub.topic, partition = p, "feed: topic gained a partition");
                    if let Ok(mut positions) = hub.positions.lock() {
                        positions.push(0);
                    }
                    spawn_partition_reader(Arc::clone(&client), Arc::clone(&hub.topic), p, Start::Earliest, records_tx.clone(), Arc::clone(&health));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{TimeZone, Utc};
    use soundline_shared::envelope::{Envelope, Stamp};
    use soundline_shared::recording::Recording;

    use super::*;

    fn record(value: &[u8]) -> Record {
        Record {
            key: Some(b"CAR-\"1\"".to_vec()),
            value: Some(value.to_vec()),
            headers: BTreeMap::new(),
            timestamp: Utc.timestamp_millis_opt(42).single().expect("valid"),
        }
    }

    fn parsed(p: &Published) -> FeedRecord {
        match FeedServerMessage::parse(&p.text) {
            Ok(FeedServerMessage::Record(r)) => r,
            other => panic!("not a record message: {other:?} from {}", p.text.as_str()),
        }
    }

    #[test]
    fn an_envelope_is_spliced_in_unchanged_with_its_filters() {
        let mut rec = Recording::default();
        rec.device.car_id = "CAR-1".into();
        rec.segment_id = "seg".into();
        let env = Envelope::from_samples(uuid::Uuid::nil(), &Stamp::default(), &rec, 7, &[1, 2, 3]);
        let json = env.to_json();
        let p = publish("t", 2, 9, &record(&json), false).expect("published");
        assert_eq!((p.car_id.as_deref(), p.segment_id.as_deref()), (Some("CAR-1"), Some("seg")));
        let r = parsed(&p);
        assert_eq!((r.topic.as_str(), r.partition, r.offset, r.timestamp_ms), ("t", 2, 9, 42));
        assert_eq!((r.kind.as_str(), r.key.as_deref()), ("envelope", Some("CAR-\"1\"")));
        assert_eq!(r.value, serde_json::from_slice::<serde_json::Value>(&json).expect("json"));
    }

    #[test]
    fn other_json_and_garbage_are_delivered_as_json_and_base64_or_skipped() {
        let r = parsed(&publish("t", 0, 1, &record(b" {\"score\": 0.5}\n"), false).expect("published"));
        assert_eq!((r.kind.as_str(), r.value.clone()), ("json", serde_json::json!({"score": 0.5})));
        let r = parsed(&publish("t", 0, 2, &record(&[0xff, 0x00]), false).expect("published"));
        assert_eq!((r.kind.as_str(), r.value.clone()), ("opaque", serde_json::json!("/wA=")));
        assert!(publish("t", 0, 2, &record(&[0xff, 0x00]), true).is_none(), "skipped when configured");
    }
}
