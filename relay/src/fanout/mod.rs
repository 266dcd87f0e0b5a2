//! Fan-out: Kafka back out to every feed subscriber, one live reader per needed partition per topic per relay
//! process, broadcast to the subscribers.
//!
//! # Data Flow
//!
//! ```text
//!  Kafka ─► reader p3 (a car's subscriber needs it) ─┐                    ┌─► car CAR-7's ring ─► its subscribers
//!  Kafka ─► reader p7 (an unfiltered one needs all) ─┼─► hub: classify, ─┤
//!  ...      (none where nobody needs the partition)  ┘   serialize once,  └─► every record's ring ─► unfiltered ones
//!                                                        advance positions  (feed_buffer_records each; full: the
//!                                                                            slowest lags, nobody waits)
//! ```
//!
//! **Readers on demand.** A hub (per topic) starts with no reader. A subscription filtered to a car needs only that
//! car's partition (`murmur2(carID) % partitions`, the producer's choice); an unfiltered one needs all of them.
//! Joining starts a reader at the partition's end where none runs; leaving (the [`Membership`] dropped) lets it
//! stop once nobody has needed it for `feed_reader_idle_s`. So a relay replica reads from Kafka what its own
//! subscribers watch, not the whole topic, and nothing when nobody watches: replicas scale out instead of each
//! multiplying the topic's reads. Each record someone may want (its key is a watched car, or someone watches
//! everything) is classified once, here ([`record`]: one borrowed pass over its value, no PCM decoded; the rest
//! are passed over unread), and shared by reference with every subscriber; each form of its message (with PCM or
//! without) is written once, by the first subscriber that wants it. Subscribers are indexed by car: a record goes to its car's ring (if anyone
//! watches that car) and to the ring of every record (if anyone watches everything), so it wakes only the
//! subscribers who may want it.
//!
//! **Joining without gaps or duplicates.** The hub advances `position` (the next offset it will publish) of a
//! partition before it publishes each record. A subscriber first subscribes to the broadcast, then reads the
//! positions (starting readers there where needed): every record at or after them is published after its
//! subscription, so it will arrive on the broadcast; everything before them it reads itself from Kafka
//! (history). Per partition it then delivers each offset at most once. When the broadcast ring overflows (a slow
//! subscriber), the subscriber is told how many records it missed and the offsets to resume from (see
//! `subscriber.rs`); publishing never waits for it.

pub mod record;
pub mod subscriber;

pub use record::{Classifier, Published};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka::consumer::{Consumed, ConsumerHealth, Reader, partitions, spawn_partition_reader};
use crate::kafka::{Cluster, KafkaError, Position};
use crate::metrics::Metrics;

/// One partition of a hub: where its live stream stands, and its reader while anyone needs it.
struct PartitionState {
    /// Next offset the hub publishes (while a reader runs; where it stopped, after).
    position: i64,
    reader: Option<LiveReader>,
}

/// A running partition reader and who needs it.
struct LiveReader {
    /// Subscribers reading this partition now.
    subscribers: usize,
    /// When the last of them left: the reader stops `reader_idle` later.
    idle_since: Option<Instant>,
    stop: CancellationToken,
}

/// One topic's live stream.
pub struct Hub {
    /// The topic.
    pub topic: Arc<str>,
    /// Every record, for subscribers without a car filter.
    tx: broadcast::Sender<Arc<Published>>,
    /// One stream per watched car, so a record wakes only the subscribers of its car. An entry lives while its
    /// channel has receivers (removed by the hub's task when a send finds none); a std Mutex, held briefly.
    by_car: Mutex<HashMap<String, broadcast::Sender<Arc<Published>>>>,
    /// Ring size of each car's stream.
    buffer_records: usize,
    /// Per partition. Written by joins, leaves and the hub's task; a std Mutex held briefly, never across an await.
    partitions: Mutex<Vec<PartitionState>>,
    /// Subscribers that read every partition (no car filter): a partition the topic gains is read for them.
    everything: AtomicUsize,
    reader: Reader,
    records_tx: mpsc::Sender<Consumed>,
    /// What its records are (the relay's `sysTag` marks envelopes), for the live stream and history alike.
    pub classifier: Classifier,
    /// The bootstrap list, for errors.
    brokers: String,
}

/// A subscriber's hold on the partitions it reads. Dropping it (the subscriber left) lets their readers stop once
/// nobody has needed them for `feed_reader_idle_s`.
pub struct Membership {
    hub: Arc<Hub>,
    /// `None`: every partition, those the topic gains included.
    partitions: Option<Vec<i32>>,
}

impl Hub {
    /// The topic's partitions, as far as the hub knows.
    pub fn partition_count(&self) -> i32 {
        self.partitions.lock().map(|p| p.len() as i32).unwrap_or_default()
    }

    /// Joins the live stream of `wanted` partitions (`None`: all), starting a reader at the partition's end
    /// where none runs: the stream of one car's records when `car` is given, else of every record. Returns the
    /// broadcast receiver, per wanted partition the offset from which it is complete, and the membership that
    /// keeps those readers running.
    ///
    /// # Errors
    ///
    /// Kafka did not say where a partition ends.
    ///
    /// # Cancellation
    ///
    /// Safe: a reader started for this join and left without a membership stops when idle.
    pub async fn join(
        self: &Arc<Self>,
        wanted: Option<&[i32]>,
        car: Option<&str>,
    ) -> Result<(broadcast::Receiver<Arc<Published>>, BTreeMap<i32, i64>, Membership), KafkaError> {
        // Order matters: subscribe first, then read the positions (see the module doc).
        let rx = match car {
            None => self.tx.subscribe(),
            Some(car) => {
                let mut by_car = self.by_car.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                by_car.entry(car.to_owned()).or_insert_with(|| broadcast::channel(self.buffer_records).0).subscribe()
            }
        };
        let wanted: Vec<i32> = match wanted {
            Some(w) => w.to_vec(),
            None => (0..self.partition_count()).collect(),
        };
        let unread: Vec<i32> = {
            let parts = self.lock();
            wanted.iter().copied().filter(|p| parts.get(*p as usize).is_some_and(|s| s.reader.is_none())).collect()
        };
        // Where the unread partitions end, asked before taking the lock again (it is never held across an await).
        let mut ends = HashMap::new();
        for p in unread {
            let end = self.reader.cluster.partition(&self.topic, p).offset(Position::Latest).await;
            ends.insert(p, end.map_err(|source| KafkaError::Unavailable { brokers: self.brokers.clone(), source })?);
        }
        let all = wanted.len() as i32 == self.partition_count();
        let mut positions = BTreeMap::new();
        {
            let mut parts = self.lock();
            for &p in &wanted {
                let Some(state) = parts.get_mut(p as usize) else { continue };
                match &mut state.reader {
                    Some(reader) => {
                        reader.subscribers += 1;
                        reader.idle_since = None;
                    }
                    // Every record at or after `position` is published by the new reader, after this subscription.
                    // Without an end (the reader was stopped between the two looks) it starts where the hub
                    // stopped publishing, so the subscriber's history (up to `position`) and the live stream meet.
                    None => {
                        state.position = ends.get(&p).map_or(state.position, |&end| end.max(state.position));
                        state.reader = Some(self.start_reader(p, state.position, 1));
                    }
                }
                positions.insert(p, state.position);
            }
            if all {
                self.everything.fetch_add(1, Relaxed);
            }
        }
        let partitions = (!all).then_some(wanted);
        Ok((rx, positions, Membership { hub: Arc::clone(self), partitions }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PartitionState>> {
        self.partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn start_reader(&self, partition: i32, from: i64, subscribers: usize) -> LiveReader {
        let stop = CancellationToken::new();
        spawn_partition_reader(
            self.reader.clone(),
            partition,
            Position::Offset(from),
            self.records_tx.clone(),
            stop.clone(),
        );
        tracing::debug!(topic = %self.topic, partition, from, "feed: partition reader started");
        LiveReader { subscribers, idle_since: None, stop }
    }

    /// Whether anyone here may want a record keyed `key`: a subscriber of every record, or of the car the key
    /// names (filters match a car's envelopes keyed by its carID or not keyed: [`Published::matches`]). A record
    /// nobody wants is not classified: with a few watched cars among thousands, most of a partition passes
    /// through without its value being read.
    fn wanted(&self, key: Option<&[u8]>) -> bool {
        if self.tx.receiver_count() > 0 {
            return true;
        }
        match key.map(std::str::from_utf8) {
            Some(Ok(car)) => self.by_car.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(car),
            // Not keyed, or not UTF-8: the value may still be a watched car's envelope.
            _ => true,
        }
    }

    /// Sends a record to the subscribers of every record and to those of its car. No subscriber is not an error:
    /// the record is simply not needed now; a car's stream nobody receives any more is removed.
    fn publish(&self, p: Arc<Published>) {
        if let Some(car) = p.car_id.as_deref() {
            let mut by_car = self.by_car.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(tx) = by_car.get(car)
                && tx.send(Arc::clone(&p)).is_err()
            {
                by_car.remove(car);
            }
        }
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(p);
        }
    }

    /// Stops the readers nobody has needed for `idle`.
    fn reap(&self, idle: Duration) {
        let mut parts = self.lock();
        for (p, state) in parts.iter_mut().enumerate() {
            if state.reader.as_ref().and_then(|r| r.idle_since).is_some_and(|since| since.elapsed() >= idle) {
                if let Some(r) = state.reader.take() {
                    r.stop.cancel();
                }
                tracing::debug!(topic = %self.topic, partition = p, "feed: partition reader stopped (no subscriber)");
            }
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut parts = self.hub.lock();
        let now = Instant::now();
        let mut leave = |state: &mut PartitionState| {
            if let Some(r) = state.reader.as_mut() {
                r.subscribers = r.subscribers.saturating_sub(1);
                if r.subscribers == 0 {
                    r.idle_since = Some(now);
                }
            }
        };
        match &self.partitions {
            Some(ps) => {
                for p in ps {
                    if let Some(state) = parts.get_mut(*p as usize) {
                        leave(state);
                    }
                }
            }
            None => {
                parts.iter_mut().for_each(&mut leave);
                self.hub.everything.fetch_sub(1, Relaxed);
            }
        }
    }
}

/// All hubs of this process, started on demand.
pub struct Fanout {
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<ConsumerHealth>,
    cluster: tokio::sync::OnceCell<Arc<Cluster>>,
    hubs: tokio::sync::Mutex<HashMap<String, Arc<Hub>>>,
}

impl Fanout {
    /// A fan-out with no hub running yet.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            metrics,
            health: Arc::new(ConsumerHealth::default()),
            cluster: tokio::sync::OnceCell::new(),
            hubs: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The consumers' health, for `/readyz` and `/metrics`.
    pub fn health(&self) -> &ConsumerHealth {
        &self.health
    }

    /// The Kafka cluster the feed reads from (connected on first use).
    ///
    /// # Errors
    ///
    /// Kafka unreachable or credentials refused.
    pub async fn cluster(&self) -> Result<Arc<Cluster>, KafkaError> {
        self.cluster.get_or_try_init(|| Cluster::connect(&self.config.kafka)).await.cloned()
    }

    /// The hub of `topic`, created (with no reader running) if there is none yet.
    ///
    /// # Errors
    ///
    /// [`KafkaError::NoSuchTopic`] when the topic does not exist; other [`KafkaError`]s when Kafka fails.
    pub async fn hub(&self, topic: &str) -> Result<Arc<Hub>, KafkaError> {
        let mut hubs = self.hubs.lock().await;
        if let Some(hub) = hubs.get(topic) {
            return Ok(Arc::clone(hub));
        }
        let cluster = self.cluster().await?;
        let brokers = cluster.brokers();
        let n = partitions(&cluster, topic).await?;
        let (tx, _) = broadcast::channel(self.config.feed.buffer_records);
        let (records_tx, records_rx) = mpsc::channel(1024);
        let hub = Arc::new(Hub {
            topic: Arc::from(topic),
            tx,
            by_car: Mutex::new(HashMap::new()),
            buffer_records: self.config.feed.buffer_records,
            partitions: Mutex::new((0..n).map(|_| PartitionState { position: 0, reader: None }).collect()),
            everything: AtomicUsize::new(0),
            reader: Reader { cluster, topic: Arc::from(topic), health: Arc::clone(&self.health) },
            records_tx,
            classifier: Classifier::of(&self.config),
            brokers,
        });
        tokio::spawn(run_hub(
            Arc::downgrade(&hub),
            records_rx,
            self.config.feed.reader_idle,
            Arc::clone(&self.metrics),
        ));
        tracing::info!(topic, partitions = n, "feed: hub ready; partitions are read while subscribers need them");
        hubs.insert(topic.to_owned(), Arc::clone(&hub));
        Ok(hub)
    }
}

/// The hub's task: classify and publish each consumed record; stop readers nobody needs; follow partitions
/// added later.
async fn run_hub(
    hub: std::sync::Weak<Hub>,
    mut records: mpsc::Receiver<Consumed>,
    reader_idle: Duration,
    metrics: Arc<Metrics>,
) {
    // Partitions the topic gains: the producer places new recordings there within its 2 s probe; the feed
    // follows within 5 s.
    let mut rescan = tokio::time::interval(Duration::from_secs(5));
    rescan.tick().await;
    let mut reap = tokio::time::interval((reader_idle / 4).max(Duration::from_millis(250)));
    loop {
        tokio::select! {
            consumed = records.recv() => {
                let (Some(c), Some(hub)) = (consumed, hub.upgrade()) else { return };
                if let Some(state) = hub.lock().get_mut(c.partition as usize) {
                    // A stopped reader's last records may still come through after a new reader started further
                    // on: positions never go back.
                    state.position = state.position.max(c.offset + 1);
                }
                // After the position moved: a subscriber that joined before it (and so expects this record live)
                // was in the car index before that, and is seen here.
                if !hub.wanted(c.record.key.as_deref()) {
                    continue;
                }
                metrics.feed_classified_total.inc();
                match Published::new(&hub.topic, c.partition, c.offset, c.record, &hub.classifier) {
                    Some(p) => hub.publish(Arc::new(p)),
                    None => metrics.feed_dropped(crate::metrics::FeedDrop::Malformed, 1),
                }
            }
            _ = reap.tick() => {
                let Some(hub) = hub.upgrade() else { return };
                hub.reap(reader_idle);
            }
            _ = rescan.tick() => {
                let Some(hub) = hub.upgrade() else { return };
                let known = hub.partition_count();
                // Bounded below Kafka's own deadlines: the hub's loop publishes records meanwhile.
                let asked = tokio::time::timeout(Duration::from_secs(2), partitions(&hub.reader.cluster, &hub.topic));
                let Ok(Ok(n)) = asked.await else { continue };
                let everything = hub.everything.load(Relaxed);
                for p in known..n {
                    tracing::info!(topic = %hub.topic, partition = p, "feed: topic gained a partition");
                    // Read from its start for the subscribers that take every partition.
                    let reader = (everything > 0).then(|| hub.start_reader(p, 0, everything));
                    hub.lock().push(PartitionState { position: 0, reader });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{TimeZone, Utc};
    use rskafka::record::Record;
    use soundline_shared::envelope::{Envelope, Stamp};
    use soundline_shared::feed::{FeedRecord, FeedServerMessage};
    use soundline_shared::recording::Recording;

    use super::record::Kind;
    use super::*;

    fn record(value: &[u8]) -> Record {
        Record {
            key: Some(b"CAR-\"1\"".to_vec()),
            value: Some(value.to_vec()),
            headers: BTreeMap::from([("seq".to_owned(), b"7".to_vec()), ("segmentId".to_owned(), b"seg".to_vec())]),
            timestamp: Utc.timestamp_millis_opt(42).single().expect("valid"),
        }
    }

    fn classifier(skip_malformed: bool) -> Classifier {
        Classifier { sys_tag: Arc::from(soundline_shared::envelope::DEFAULT_SYS_TAG), skip_malformed }
    }

    fn publish(offset: i64, value: &[u8], skip_malformed: bool) -> Option<Published> {
        Published::new(&Arc::from("t"), 2, offset, record(value), &classifier(skip_malformed))
    }

    fn parsed(p: &Published, pcm: bool) -> FeedRecord {
        match FeedServerMessage::parse(p.text(pcm)) {
            Ok(FeedServerMessage::Record(r)) => r,
            other => panic!("not a record message: {other:?} from {}", p.text(pcm).as_str()),
        }
    }

    fn envelope() -> Envelope {
        let mut rec = Recording::default();
        rec.device.car_id = "CAR-1".into();
        rec.segment_id = "seg".into();
        Envelope::from_samples(uuid::Uuid::nil(), &Stamp::default(), &rec, 7, &[1, 2, 3])
    }

    #[test]
    fn an_envelope_goes_out_as_kafka_has_it_and_without_its_pcm_for_lists() {
        let env = envelope();
        let json = env.to_json();
        let p = publish(9, &json, false).expect("published");
        assert_eq!(
            (p.car_id.as_deref(), p.segment_id.as_deref(), p.kind()),
            (Some("CAR-1"), Some("seg"), Kind::Envelope)
        );
        let r = parsed(&p, true);
        assert_eq!((r.topic.as_str(), r.partition, r.offset, r.timestamp_ms), ("t", 2, 9, 42));
        assert_eq!((r.kind.as_str(), r.key.as_deref()), ("envelope", Some("CAR-\"1\"")));
        assert_eq!((r.segment_id.as_deref(), r.seq), (Some("seg"), Some(7)));
        let value = String::from_utf8(json.clone()).expect("utf-8");
        assert!(p.text(true).as_str().ends_with(&format!(",\"value\":{value}}}")), "the value byte for byte");
        let without = parsed(&p, false);
        let expected: serde_json::Value = serde_json::from_slice(&env.to_json_without_pcm()).expect("json");
        assert_eq!(without.value, expected, "every field but originData.base64, in its order");
        assert!(without.value["originData"].get("base64").is_none());
        assert_eq!(without.value["originData"]["size"], 6);
    }

    #[test]
    fn a_cars_filter_takes_its_envelopes_keyed_by_its_car_or_not_keyed() {
        let json = envelope().to_json();
        let with_key = |key: Option<&[u8]>| {
            let r = Record { key: key.map(<[u8]>::to_vec), ..record(&json) };
            Published::new(&Arc::from("t"), 0, 1, r, &classifier(false)).expect("published")
        };
        assert!(with_key(Some(b"CAR-1")).matches(Some("CAR-1"), Some("seg")));
        assert!(with_key(None).matches(Some("CAR-1"), None), "not keyed: the envelope says whose it is");
        assert!(!with_key(Some(b"CAR-2")).matches(Some("CAR-1"), None), "keyed for another car");
        assert!(with_key(Some(b"CAR-2")).matches(None, Some("seg")), "a segment filter alone looks at the envelope");
        assert!(!with_key(Some(b"CAR-1")).matches(Some("CAR-2"), None));
    }

    #[test]
    fn other_json_and_garbage_are_delivered_as_json_and_base64_or_skipped() {
        let p = publish(1, b" {\"score\": 0.5}\n", false).expect("published");
        let r = parsed(&p, false);
        assert_eq!((r.kind.as_str(), r.value.clone()), ("json", serde_json::json!({"score": 0.5})));
        assert_eq!(p.car_id, None, "not an envelope: no filter matches it");
        let r = parsed(&publish(2, b"[1, 2]", false).expect("published"), true);
        assert_eq!((r.kind.as_str(), r.value.clone()), ("json", serde_json::json!([1, 2])));
        let r = parsed(&publish(3, &[0xff, 0x00], false).expect("published"), true);
        assert_eq!((r.kind.as_str(), r.value.clone()), ("opaque", serde_json::json!("/wA=")));
        assert!(publish(3, &[0xff, 0x00], true).is_none(), "skipped when configured");
        let r = parsed(&publish(4, b"{\"a\": 1} trailing", false).expect("published"), true);
        assert_eq!(r.kind, "opaque", "JSON followed by more is not JSON");
    }

    #[test]
    fn only_an_object_with_the_tag_a_car_a_segment_and_origin_data_is_an_envelope() {
        let env = serde_json::from_slice::<serde_json::Value>(&envelope().to_json()).expect("json");
        let mut variants = Vec::new();
        for (path, replacement) in [
            ("/sysTag", serde_json::json!("OTHER")),
            ("/deviceInfo/carID", serde_json::json!(7)),
            ("/segmentId", serde_json::Value::Null),
            ("/originData", serde_json::json!("x")),
        ] {
            let mut v = env.clone();
            *v.pointer_mut(path).expect("field") = replacement;
            variants.push(v);
        }
        for v in variants {
            let p = publish(5, v.to_string().as_bytes(), false).expect("published");
            assert_eq!((p.kind(), p.car_id.as_deref()), (Kind::Json, None), "{v}");
            assert_eq!(parsed(&p, false).value, v, "delivered whole, as JSON");
        }
    }

    #[test]
    fn the_relays_own_sys_tag_marks_its_envelopes() {
        let mut env = serde_json::from_slice::<serde_json::Value>(&envelope().to_json()).expect("json");
        env["sysTag"] = serde_json::json!("RAIL_AUDIO");
        let own = Classifier { sys_tag: Arc::from("RAIL_AUDIO"), skip_malformed: false };
        let p = Published::new(&Arc::from("t"), 0, 1, record(env.to_string().as_bytes()), &own).expect("published");
        assert_eq!(
            (p.kind(), p.car_id.as_deref(), p.segment_id.as_deref()),
            (Kind::Envelope, Some("CAR-1"), Some("seg"))
        );
        let default_tagged = envelope().to_json();
        let p = Published::new(&Arc::from("t"), 0, 2, record(&default_tagged), &own).expect("published");
        assert_eq!(p.kind(), Kind::Json, "another relay's tag is not this relay's envelope");
    }
}
