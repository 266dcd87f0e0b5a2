//! Reading a topic back: one fetch loop per partition, records out in partition order.
//!
//! # Data Flow
//!
//! ```text
//!  Kafka ─► fetch loop, partition 0 ─┐
//!  Kafka ─► fetch loop, partition 1 ─┼─► bounded channel (records in each partition's order) ─► tail / feed
//!  ...                               ┘   full: the fetch loops wait (a slow reader never buffers unboundedly)
//! ```
//!
//! rskafka has no consumer groups: the relay reads partitions directly from a start position it chooses. A fetch
//! that fails is retried with backoff, logged once per failure streak; a start offset that retention removed
//! meanwhile is replaced by the earliest kept one.
//!
//! **Offsets have gaps.** A transactional producer's commit and abort markers (control batches) take offsets of
//! their own, and compaction removes records: the next offset to read is always the last record's offset plus
//! one, never a count. [`fetch`] is the one fetch every reader here uses (the live loops, the feed's history,
//! `tail`), and it gets past markers: rskafka 0.6 fails to parse any fetch response holding a control batch
//! ("Unknown control batch record version", influxdata/rskafka#297, open), and once that is fixed it drops
//! markers without saying where they were. Without this a transactional topic stops its readers for good at
//! the first marker.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rskafka::record::{Record, RecordAndOffset};
use soundline_shared::backoff::{Backoff, jitter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::KafkaError;
pub use super::cluster::Position;
use super::cluster::{CallError, Cluster, Partition};

/// What the fetch loops report for `/readyz` and `/metrics`: partitions failing now, and lag (high watermark minus
/// the next offset to read) per partition. A std Mutex: held briefly to update small maps, never across an await.
#[derive(Debug, Default)]
pub struct ConsumerHealth {
    failing: Mutex<BTreeMap<(Arc<str>, i32), String>>,
    lag: Mutex<BTreeMap<(Arc<str>, i32), i64>>,
    fetches: AtomicU64,
    fetched_bytes: AtomicU64,
    running: AtomicI64,
}

impl ConsumerHealth {
    /// Fetch rounds the loops have made.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Relaxed)
    }

    /// Bytes of record keys and values the loops have read.
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched_bytes.load(Relaxed)
    }

    /// Partition readers running now.
    pub fn running(&self) -> i64 {
        self.running.load(Relaxed)
    }

    /// The first failing partition's error, if any.
    pub fn failure(&self) -> Option<String> {
        let failing = self.failing.lock().ok()?;
        failing.iter().next().map(|((t, p), e)| format!("reading {t}/{p}: {e}"))
    }

    /// Lag per (topic, partition).
    pub fn lag(&self) -> Vec<(Arc<str>, i32, i64)> {
        self.lag.lock().map(|l| l.iter().map(|((t, p), n)| (Arc::clone(t), *p, *n)).collect()).unwrap_or_default()
    }

    fn set_failing(&self, topic: &Arc<str>, partition: i32, error: Option<String>) {
        if let Ok(mut f) = self.failing.lock() {
            match error {
                Some(e) => f.insert((Arc::clone(topic), partition), e),
                None => f.remove(&(Arc::clone(topic), partition)),
            };
        }
    }

    fn set_lag(&self, topic: &Arc<str>, partition: i32, lag: i64) {
        if let Ok(mut l) = self.lag.lock() {
            l.insert((Arc::clone(topic), partition), lag.max(0));
        }
    }
}

/// One record read from Kafka.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The record.
    pub record: Record,
}

/// Largest fetch response per request.
const FETCH_MAX_BYTES: i32 = 4 * 1024 * 1024;
/// How long the broker may hold a fetch open waiting for new records.
const FETCH_MAX_WAIT_MS: i32 = 500;

/// The number of partitions of `topic`.
///
/// # Errors
///
/// [`KafkaError::NoSuchTopic`] when it does not exist; [`KafkaError::Unavailable`] when Kafka fails or is late.
pub async fn partitions(cluster: &Cluster, topic: &str) -> Result<i32, KafkaError> {
    match cluster.partitions(topic).await {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(KafkaError::NoSuchTopic(topic.to_owned())),
        Err(source) => Err(KafkaError::Unavailable { brokers: cluster.brokers(), source }),
    }
}

/// How often [`follow_topic`] asks whether the topic gained partitions.
const RESCAN_INTERVAL: Duration = Duration::from_secs(5);

/// Reads every partition of `topic` (`partitions` of them now) from `start` into `tx` until `tx` is closed, and
/// the partitions it gains later from their beginning (everything in a new partition is newer than `start`).
pub fn follow_topic(cluster: Arc<Cluster>, topic: &str, partitions: i32, start: Position, tx: mpsc::Sender<Consumed>) {
    let topic: Arc<str> = Arc::from(topic);
    let health = Arc::new(ConsumerHealth::default());
    let reader = Reader { cluster: Arc::clone(&cluster), topic: Arc::clone(&topic), health };
    for partition in 0..partitions {
        spawn_partition_reader(reader.clone(), partition, start, tx.clone(), CancellationToken::new());
    }
    tokio::spawn(async move {
        let mut known = partitions;
        loop {
            tokio::select! {
                () = tokio::time::sleep(RESCAN_INTERVAL) => {}
                () = tx.closed() => return,
            }
            let Ok(Some(n)) = cluster.partitions(&topic).await else { continue };
            for partition in known..n {
                tracing::info!(%topic, partition, "the topic gained a partition; reading it");
                spawn_partition_reader(
                    reader.clone(),
                    partition,
                    Position::Earliest,
                    tx.clone(),
                    CancellationToken::new(),
                );
            }
            known = known.max(n);
        }
    });
}

/// What a partition reader reads from and reports to.
#[derive(Clone)]
pub struct Reader {
    /// The Kafka cluster.
    pub cluster: Arc<Cluster>,
    /// The topic.
    pub topic: Arc<str>,
    /// Failures, lag, fetches and bytes go here.
    pub health: Arc<ConsumerHealth>,
}

/// Reads one partition from `start` into `tx` until `tx` is closed or `stop` is cancelled.
pub fn spawn_partition_reader(
    reader: Reader,
    partition: i32,
    start: Position,
    tx: mpsc::Sender<Consumed>,
    stop: CancellationToken,
) {
    // Counted before the task runs: a subscriber that has been told `subscribed` sees its readers in /metrics.
    reader.health.running.fetch_add(1, Relaxed);
    tokio::spawn(async move {
        let Reader { cluster, topic, health } = reader;
        let part = cluster.partition(&topic, partition);
        tokio::select! {
            () = read_partition(part, start, tx, Arc::clone(&health)) => {}
            () = stop.cancelled() => {}
        }
        health.running.fetch_sub(1, Relaxed);
        // A stopped reader is neither failing nor lagging.
        health.set_failing(&topic, partition, None);
        if let Ok(mut lag) = health.lag.lock() {
            lag.remove(&(Arc::clone(&topic), partition));
        }
    });
}

/// What one [`fetch`] read.
#[derive(Debug)]
pub struct Fetched {
    /// The records, in offset order (possibly none).
    pub records: Vec<RecordAndOffset>,
    /// The partition's high watermark, when the broker said it.
    pub high_watermark: Option<i64>,
    /// Where to fetch next: after the last record, past a transaction marker, or `offset` again.
    pub next: i64,
    /// Nothing to read before the next fetch: the broker waited `max_wait_ms`, or an open transaction holds
    /// its records back. A caller reading up to a known offset stops here.
    pub caught_up: bool,
}

/// One fetch of up to `max_bytes` at `offset` that never stops at a transaction marker, and goes on from the
/// oldest record kept when retention removed `offset`.
///
/// - When rskafka cannot parse the response because it holds a control batch, the first batch at `offset` is
///   fetched alone (a 1-byte limit: Kafka still sends one whole batch): records are returned as usual, and when
///   that batch is itself the marker, `next` steps past it. Until the marker is passed, each batch costs two
///   fetches (the full one that fails, then the batch alone), the marker itself two. (Were `offset` removed by
///   compaction right before a marker, the steps are one offset each: correct, and bounded by the gap.)
/// - When the fetch answers no record although the log goes on, below the last stable offset (`read_committed`:
///   every record there is readable), a marker sits at `offset` and `next` steps past it; at or above it an open
///   transaction holds its records back, and the reader waits (`caught_up`).
/// - `OffsetOutOfRange` (retention removed `offset`): the read goes on from the earliest offset kept, logged.
///
/// # Errors
///
/// Kafka failed, was late, or answered something rskafka cannot read other than a marker.
///
/// # Cancellation
///
/// Safe: nothing is consumed or committed; fetch again from the same offset.
pub async fn fetch(part: &mut Partition, offset: i64, max_bytes: i32, max_wait_ms: i32) -> Result<Fetched, CallError> {
    let mut offset = offset;
    let (records, high_watermark) = loop {
        match part.fetch_records(offset, max_bytes, max_wait_ms).await {
            Ok(fetched) => break fetched,
            Err(e) if e.is_unparsed_marker() => match part.fetch_records(offset, 2, max_wait_ms).await {
                Ok(fetched) => break fetched,
                Err(e) if e.is_unparsed_marker() => {
                    return Ok(Fetched {
                        records: Vec::new(),
                        high_watermark: None,
                        next: offset + 1,
                        caught_up: false,
                    });
                }
                Err(e) => return Err(e),
            },
            Err(e) if e.is_offset_out_of_range() => {
                let earliest = part.offset(Position::Earliest).await?;
                if earliest == offset {
                    return Err(e);
                }
                tracing::warn!(topic = %part.topic(), partition = part.number(), from = offset, to = earliest, "offset out of range; skipping to the earliest kept record");
                offset = earliest;
            }
            Err(e) => return Err(e),
        }
    };
    if let Some(last) = records.last() {
        let next = last.offset + 1;
        return Ok(Fetched { records, high_watermark: Some(high_watermark), next, caught_up: false });
    }
    if offset >= high_watermark {
        return Ok(Fetched { records, high_watermark: Some(high_watermark), next: offset, caught_up: true });
    }
    // ListOffsets(latest) under read_committed answers the last stable offset.
    let stable = part.offset(Position::Latest).await?;
    let (next, caught_up) = if offset < stable { (offset + 1, false) } else { (offset, true) };
    Ok(Fetched { records, high_watermark: Some(high_watermark), next, caught_up })
}

/// Reads `part` from `from` up to where it ends now (asked first), handing each record to `visit` in offset
/// order, until `max_bytes` of keys and values were read: `Ok(true)` when it reached that end, `Ok(false)` when it
/// stopped at the limit first. One bounded read, for a question about the recent past of one partition.
///
/// # Errors
///
/// Kafka failed or was late.
pub async fn read_to_end(
    part: &mut Partition,
    from: i64,
    max_bytes: usize,
    mut visit: impl FnMut(i64, &Record),
) -> Result<bool, CallError> {
    let end = part.offset(Position::Latest).await?;
    let (mut offset, mut read) = (from, 0);
    while offset < end {
        if read >= max_bytes {
            return Ok(false);
        }
        let fetched = fetch(part, offset, 1024 * 1024, 100).await?;
        for r in &fetched.records {
            if r.offset >= end {
                return Ok(true);
            }
            visit(r.offset, &r.record);
        }
        read += record_bytes(&fetched.records);
        if fetched.caught_up {
            break;
        }
        offset = fetched.next;
    }
    Ok(true)
}

/// Bytes of keys and values in `records`, for the fetch counters.
pub fn record_bytes(records: &[RecordAndOffset]) -> usize {
    records
        .iter()
        .map(|r| r.record.key.as_ref().map_or(0, Vec::len) + r.record.value.as_ref().map_or(0, Vec::len))
        .sum()
}

/// One partition's fetch loop.
async fn read_partition(mut part: Partition, start: Position, tx: mpsc::Sender<Consumed>, health: Arc<ConsumerHealth>) {
    let topic = Arc::clone(part.topic());
    let partition = part.number();
    let mut backoff = Backoff::KAFKA;
    let mut failing = false;
    let failed = |e: &dyn std::fmt::Display, failing: &mut bool| {
        if !*failing {
            tracing::warn!(%topic, partition, error = %e, "reading from Kafka failed; retrying");
            health.set_failing(&topic, partition, Some(e.to_string()));
            *failing = true;
        }
    };
    let mut offset = loop {
        if tx.is_closed() {
            return;
        }
        match part.offset(start).await {
            Ok(offset) => break offset,
            Err(e) => {
                failed(&e, &mut failing);
                tokio::time::sleep(backoff.next_delay(jitter())).await;
            }
        }
    };
    loop {
        health.fetches.fetch_add(1, Relaxed);
        let fetched = tokio::select! {
            r = fetch(&mut part, offset, FETCH_MAX_BYTES, FETCH_MAX_WAIT_MS) => r,
            () = tx.closed() => return,
        };
        match fetched {
            Ok(Fetched { records, high_watermark, next, caught_up }) => {
                if failing {
                    tracing::info!(%topic, partition, offset, "reading from Kafka again");
                    health.set_failing(&topic, partition, None);
                    failing = false;
                }
                if let Some(hw) = high_watermark {
                    health.set_lag(&topic, partition, hw - next);
                }
                backoff.reset();
                health.fetched_bytes.fetch_add(record_bytes(&records) as u64, Relaxed);
                for r in records {
                    let consumed =
                        Consumed { topic: Arc::clone(&topic), partition, offset: r.offset, record: r.record };
                    if tx.send(consumed).await.is_err() {
                        return;
                    }
                }
                offset = next;
                if caught_up && high_watermark.is_some_and(|hw| offset < hw) {
                    // An open transaction: the broker answers at once; its records come when it commits.
                    tokio::time::sleep(Duration::from_millis(FETCH_MAX_WAIT_MS as u64)).await;
                }
            }
            Err(e) => {
                failed(&e, &mut failing);
                tokio::time::sleep(backoff.next_delay(jitter())).await;
            }
        }
    }
}
