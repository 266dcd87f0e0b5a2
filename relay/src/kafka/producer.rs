//! Batching producer: envelopes in, Kafka offsets out, with linger, retries and a bounded memory budget.
//!
//! # Data Flow
//!
//! ```text
//!  ingest (one task per recorder, one Route per recording: its partition, partition_for_key(carID), once)
//!    │  reserve(bytes) ── waits while the memory budget is spent (backpressure: the recorder is not read)
//!    │  send(route, record, permit) ──────────────────────────────┐ the topic's layout known: straight to
//!    │                                                             │ the recording's partition queue
//!    └─ before the layout is known ─► intake ─► dispatcher ───────┤ (waits for the layout, then routes)
//!                                                                  ▼
//!                          ├─► partition 0 queue ─► worker 0 ── batch (linger / batch_max_bytes) ─► produce ─► Kafka
//!                          ├─► partition 1 queue ─► worker 1 ── ...                                    │
//!                          ...                                                                          ▼
//!  ingest ◄─────────────────────────────── oneshot: Ok(Delivery{partition, offset}) per record ◄─ offsets
//! ```
//!
//! - **Routes**: once the dispatcher knows the topic's partitions it publishes their queues; a recording's
//!   [`Route`] picks its queue once, so a frame costs no routing and no hop through the dispatcher. When the
//!   topic gains partitions, recordings in progress keep theirs (their order), and new routes are placed over the
//!   new count (`murmur2(key) % partitions`, as Kafka's Java client places keys). Records a route sent to the
//!   intake before that stay ahead of its later ones: the route keeps using the intake until the dispatcher has
//!   passed all of them on.
//! - **Order**: a recording's records enter one partition queue in the order they were sent (its route, above),
//!   and each partition has one in-flight request, retried until it succeeds before the next batch is sent, so
//!   records of one key keep their order in Kafka, failures included.
//! - **Acks**: a record's oneshot fires only after Kafka answered the produce request with offsets.
//! - **Failures**: every request has a deadline (`kafka_request_timeout_s`, [`super::cluster`]); a request
//!   unanswered for 3 s marks the partition failing (recorders get a `kafka_unavailable` status, `/readyz` 503)
//!   while the worker waits on; a failed or late one is sent again after a backoff (100 ms doubling to 2 s, with
//!   jitter) on a fresh connection to whichever broker leads the partition now, forever, until Kafka stores it.
//!   Records are never dropped. The only record-level failure is a record larger than the broker accepts
//!   (`MessageTooLarge`): a batch that provokes it is split until the single offending record is refused alone.
//! - **Pace**: with `kafka_max_bytes_per_s` set, the workers share one token bucket and wait before a batch
//!   that would exceed it (batches are then at most one second's worth), so that a broker quota never throttles
//!   the relay: rskafka answers Kafka's throttling by sending the request again, storing its records twice
//!   ([`super::ThrottleWatch`] counts it; the worker warns). Waiting fills the budget: backpressure, not loss.
//! - **Memory**: every record holds a permit of its size from a semaphore of `memory_budget_bytes` until Kafka
//!   acked it. When the budget is spent, `reserve` waits, and the recorder's socket is not read meanwhile.
//!
//! [`Producer::by_hand`] is the seam: the same handle with no Kafka behind it, its records and its link state in
//! a test's hands ([`ByHand`]), so the router can be built and tested in-process (`crate::http::app`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rskafka::client::partition::Compression as RsCompression;
use rskafka::record::Record;
use soundline_shared::backoff::{Backoff, jitter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::cluster::{Cluster, Partition};
use super::partitioner::partition_for_key;
use super::{KafkaError, ensure_topic, throttled_total};
use crate::config::{Compression, KafkaConfig};
use crate::doors::limits::Bucket;
use crate::metrics::Metrics;

/// Where Kafka stored a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Why a record was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    /// The broker refused the record as too large.
    #[error("the record ({bytes} bytes) is larger than the broker accepts")]
    TooLarge {
        /// The record's size.
        bytes: usize,
    },
    /// The relay stopped before Kafka acknowledged the record.
    #[error("the relay stopped before Kafka acknowledged the record")]
    Stopped,
}

/// The state of the relay's link to Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Connected, topic present, no partition failing.
    pub up: bool,
    /// Why not, in one line (empty when up).
    pub detail: String,
}

struct Pending {
    record: Record,
    bytes: usize,
    enqueued: Instant,
    done: oneshot::Sender<Result<Delivery, ProduceError>>,
    /// Sent through the intake: its route's placement, whose count of records there is decremented once this
    /// one reached its queue, and which the dispatcher places it by.
    via_intake: Option<Arc<Placement>>,
    _permit: OwnedSemaphorePermit,
}

impl Pending {
    /// The record left the intake (into its partition's queue, or refused).
    fn left_intake(&mut self) {
        if let Some(placement) = self.via_intake.take() {
            placement.left_intake();
        }
    }
}

/// Every partition's queue, in partition order; published by the dispatcher once the topic's layout is known,
/// and again when the topic gains partitions.
type Queues = Arc<[mpsc::UnboundedSender<Pending>]>;

/// Where one recording's records go: its partition's queue, chosen once (`partition_for_key` of its key, the
/// carID) rather than per record. Made by [`Producer::route`].
pub struct Route {
    key: Vec<u8>,
    queues: watch::Receiver<Option<Queues>>,
    /// The queue of this key's partition, once the layout is known.
    queue: Option<mpsc::UnboundedSender<Pending>>,
    /// Shared with this route's records in the intake, which the dispatcher places by it.
    placement: Arc<Placement>,
}

/// What places a route's records: its pin, and how many of them are in the intake.
struct Placement {
    /// The partition a resumed recording stays on (where its earlier frames are), when the topic has it.
    pinned: Option<i32>,
    /// This route's records in the intake now: while there are any, later ones follow them through it, so that
    /// a recording's records reach their partition in the order they were sent.
    in_intake: AtomicUsize,
}

impl Placement {
    /// One of its records left the intake: once none is left there, the route sends straight to its queue.
    fn left_intake(&self) {
        self.in_intake.fetch_sub(1, Ordering::Release);
    }
}

impl Route {
    /// The Kafka key every record on this route carries.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The queue to send to now, or `None`: through the intake.
    fn queue(&mut self) -> Option<&mpsc::UnboundedSender<Pending>> {
        // Marked changed when made ([`Producer::route`]), then whenever the dispatcher publishes a layout; the
        // partition is chosen from the first layout and kept (the topic gaining partitions moves no recording).
        if self.queue.is_none() && self.queues.has_changed().unwrap_or(false) {
            let queues = self.queues.borrow_and_update();
            self.queue =
                queues.as_ref().and_then(|qs| qs.get(place(&self.key, self.placement.pinned, qs.len())).cloned());
        }
        if self.placement.in_intake.load(Ordering::Acquire) > 0 {
            return None;
        }
        self.queue.as_ref()
    }
}

/// The partition (index into `partitions` queues) a record keyed `key` goes to: `pinned` where the topic has it,
/// else Kafka's Java client's choice.
fn place(key: &[u8], pinned: Option<i32>, partitions: usize) -> usize {
    match pinned {
        Some(p) if p >= 0 && (p as usize) < partitions => p as usize,
        _ => partition_for_key(key, partitions as i32) as usize,
    }
}

/// Handle to the producer; cheap to clone.
#[derive(Clone)]
pub struct Producer {
    intake: mpsc::UnboundedSender<Pending>,
    queues: watch::Receiver<Option<Queues>>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    link: watch::Receiver<Link>,
    metrics: Arc<Metrics>,
}

/// How often the link is probed with a metadata request.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// The failing-map key of the metadata probe (partitions are >= 0).
const METADATA: i32 = -1;

/// Shared by the supervisor and the partition workers.
struct Ctx {
    cfg: KafkaConfig,
    compression: RsCompression,
    metrics: Arc<Metrics>,
    link: watch::Sender<Link>,
    /// The partition queues, for the recorders' routes.
    queues: watch::Sender<Option<Queues>>,
    /// Per partition: the error it is failing with, if any. Link is up when the supervisor is connected and no
    /// partition fails. A std Mutex: held only to update a small map, never across an await.
    failing: std::sync::Mutex<BTreeMap<i32, String>>,
    /// `kafka_max_bytes_per_s`, shared by every partition's worker.
    pace: Option<std::sync::Mutex<Bucket>>,
    /// When the relay last warned that Kafka throttles it.
    throttle_warned: std::sync::Mutex<Option<Instant>>,
}

impl Ctx {
    fn set_partition(&self, partition: i32, failure: Option<String>) {
        let Ok(mut failing) = self.failing.lock() else { return };
        let changed = match failure {
            Some(detail) => failing.insert(partition, detail.clone()).as_ref() != Some(&detail),
            None => failing.remove(&partition).is_some(),
        };
        if changed {
            let link = match failing.iter().next() {
                Some((&METADATA, detail)) => Link { up: false, detail: detail.clone() },
                Some((p, detail)) => Link { up: false, detail: format!("partition {p}: {detail}") },
                None => Link { up: true, detail: String::new() },
            };
            self.publish(link);
        }
    }

    fn publish(&self, link: Link) {
        self.metrics.kafka_up.set(i64::from(link.up));
        self.link.send_if_modified(|cur| {
            if *cur == link {
                return false;
            }
            if link.up {
                tracing::info!("Kafka link is up");
            } else {
                tracing::warn!(detail = %link.detail, "Kafka link is down; holding records and retrying");
            }
            *cur = link;
            true
        });
    }
}

impl Producer {
    /// Starts connecting to Kafka in the background and returns at once; records sent before the topic's layout
    /// is known wait (within the budget) until it is.
    pub fn start(
        cfg: KafkaConfig,
        memory_budget_bytes: u64,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        let (intake, intake_rx) = mpsc::unbounded_channel();
        let (link_tx, link) = watch::channel(Link { up: false, detail: "connecting to Kafka".into() });
        let (queues_tx, queues) = watch::channel(None);
        let compression = match cfg.compression {
            Compression::None => RsCompression::NoCompression,
            Compression::Gzip => RsCompression::Gzip,
            Compression::Lz4 => RsCompression::Lz4,
            Compression::Snappy => RsCompression::Snappy,
            Compression::Zstd => RsCompression::Zstd,
        };
        let ctx = Arc::new(Ctx {
            compression,
            metrics: Arc::clone(&metrics),
            link: link_tx,
            queues: queues_tx,
            pace: cfg
                .max_bytes_per_s
                .map(|n| std::sync::Mutex::new(Bucket::new(n as f64, tokio::time::Instant::now()))),
            failing: std::sync::Mutex::new(BTreeMap::new()),
            throttle_warned: std::sync::Mutex::new(None),
            cfg,
        });
        tokio::spawn(supervise(ctx, intake_rx, shutdown));
        Self::handle(intake, queues, link, memory_budget_bytes, metrics)
    }

    /// A producer with no Kafka behind it: what is sent comes out of the returned [`ByHand`], which also sets
    /// the link state. Its link starts as `start`'s does, down with "connecting to Kafka".
    pub fn by_hand(memory_budget_bytes: u64, metrics: Arc<Metrics>) -> (Self, ByHand) {
        let (intake, intake_rx) = mpsc::unbounded_channel();
        let (link_tx, link) = watch::channel(Link { up: false, detail: "connecting to Kafka".into() });
        let hand = ByHand { intake: intake_rx, link: link_tx, metrics: Arc::clone(&metrics) };
        // No layout is ever published: every record goes through the intake, to the hand.
        let (_, queues) = watch::channel(None);
        (Self::handle(intake, queues, link, memory_budget_bytes, metrics), hand)
    }

    fn handle(
        intake: mpsc::UnboundedSender<Pending>,
        queues: watch::Receiver<Option<Queues>>,
        link: watch::Receiver<Link>,
        memory_budget_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        let budget_bytes = usize::try_from(memory_budget_bytes).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        Self { intake, queues, budget: Arc::new(Semaphore::new(budget_bytes)), budget_bytes, link, metrics }
    }

    /// The route of one recording's records, keyed `key` (its carID): every record sent on it must carry that key.
    pub fn route(&self, key: &[u8]) -> Route {
        self.placed(key, None)
    }

    /// The route of a recording that resumes: it stays on `partition`, where its earlier frames are (unless the
    /// topic has no such partition: then as [`Producer::route`]).
    pub fn route_on(&self, key: &[u8], partition: i32) -> Route {
        self.placed(key, Some(partition))
    }

    fn placed(&self, key: &[u8], pinned: Option<i32>) -> Route {
        let mut queues = self.queues.clone();
        queues.mark_changed();
        let placement = Arc::new(Placement { pinned, in_intake: AtomicUsize::new(0) });
        Route { key: key.to_vec(), queues, queue: None, placement }
    }

    /// The metrics it counts into (shared with the rest of the relay).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The link state, to watch.
    pub fn link(&self) -> watch::Receiver<Link> {
        self.link.clone()
    }

    /// Reserves `bytes` of the memory budget without waiting, or `None` when it is spent.
    pub fn try_reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes.min(self.budget_bytes)).ok()?;
        Arc::clone(&self.budget).try_acquire_many_owned(n).ok()
    }

    /// Reserves `bytes` of the memory budget, waiting until Kafka acks enough held records.
    ///
    /// # Cancellation
    ///
    /// Safe to drop; nothing is reserved then.
    pub async fn reserve(&self, bytes: usize) -> OwnedSemaphorePermit {
        let n = u32::try_from(bytes.min(self.budget_bytes)).unwrap_or(u32::MAX);
        match Arc::clone(&self.budget).acquire_many_owned(n).await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => unreachable!("the memory budget semaphore was closed"),
        }
    }

    /// Hands a record to Kafka on its recording's route. The receiver fires once Kafka stored it (or it was
    /// refused).
    pub fn send(
        &self,
        route: &mut Route,
        record: Record,
        permit: OwnedSemaphorePermit,
    ) -> oneshot::Receiver<Result<Delivery, ProduceError>> {
        debug_assert_eq!(record.key.as_deref(), Some(route.key.as_slice()), "a route carries one key");
        let (done, rx) = oneshot::channel();
        let bytes = permit.num_permits();
        self.metrics.held_bytes.inc_by(bytes as i64);
        let mut pending = Pending { record, bytes, enqueued: Instant::now(), done, via_intake: None, _permit: permit };
        let sent = match route.queue() {
            Some(queue) => queue.send(pending),
            None => {
                route.placement.in_intake.fetch_add(1, Ordering::Relaxed);
                pending.via_intake = Some(Arc::clone(&route.placement));
                self.intake.send(pending)
            }
        };
        if let Err(mpsc::error::SendError(mut p)) = sent {
            p.left_intake();
            self.metrics.held_bytes.dec_by(p.bytes as i64);
            let _ = p.done.send(Err(ProduceError::Stopped));
        }
        rx
    }
}

/// The other end of a [`Producer::by_hand`]: takes the records sent to it and answers them, and sets the link.
pub struct ByHand {
    intake: mpsc::UnboundedReceiver<Pending>,
    link: watch::Sender<Link>,
    metrics: Arc<Metrics>,
}

/// One record sent to a [`ByHand`] producer, waiting for its answer.
pub struct Handed {
    /// The record as ingest built it.
    pub record: Record,
    pending: Pending,
    metrics: Arc<Metrics>,
}

impl ByHand {
    /// The next record sent, in the order it was sent; `None` once every [`Producer`] handle is gone.
    pub async fn next(&mut self) -> Option<Handed> {
        let mut pending = self.intake.recv().await?;
        pending.left_intake();
        let record = std::mem::replace(&mut pending.record, empty_record());
        Some(Handed { record, pending, metrics: Arc::clone(&self.metrics) })
    }

    /// Records sent and not yet taken by [`ByHand::next`].
    pub fn pending(&self) -> usize {
        self.intake.len()
    }

    /// Sets the link state, as the real producer's connection and partitions would.
    pub fn set_link(&self, up: bool, detail: &str) {
        self.metrics.kafka_up.set(i64::from(up));
        self.link.send_replace(Link { up, detail: detail.to_owned() });
    }
}

impl Handed {
    /// Answers the record as Kafka would: stored at `Delivery`, or refused; releases its memory budget.
    pub fn answer(self, result: Result<Delivery, ProduceError>) {
        self.metrics.held_bytes.dec_by(self.pending.bytes as i64);
        let _ = self.pending.done.send(result);
    }
}

fn empty_record() -> Record {
    Record { key: None, value: None, headers: BTreeMap::new(), timestamp: chrono::DateTime::UNIX_EPOCH }
}

/// Connects, makes sure the topic exists, starts the partition workers and routes records to them; follows
/// partitions added to the topic later.
async fn supervise(ctx: Arc<Ctx>, mut intake: mpsc::UnboundedReceiver<Pending>, shutdown: CancellationToken) {
    let mut backoff = Backoff::KAFKA;
    let (cluster, partitions) = loop {
        let attempt = async {
            let cluster = Cluster::connect(&ctx.cfg).await?;
            let n = ensure_topic(&cluster, &ctx.cfg).await?;
            Ok::<_, KafkaError>((cluster, n))
        };
        let result = tokio::select! {
            r = attempt => r,
            () = shutdown.cancelled() => return drain_stopped(intake).await,
        };
        match result {
            Ok(ok) => break ok,
            Err(e) => {
                ctx.publish(Link { up: false, detail: e.to_string() });
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay(jitter())) => {}
                    () = shutdown.cancelled() => return drain_stopped(intake).await,
                }
            }
        }
    };
    tracing::info!(topic = %ctx.cfg.topic, partitions, "producing to Kafka");
    let mut queues: Vec<mpsc::UnboundedSender<Pending>> = Vec::new();
    let spawn_workers = |queues: &mut Vec<mpsc::UnboundedSender<Pending>>, n: i32| {
        for partition in queues.len() as i32..n {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_partition(cluster.partition(&ctx.cfg.topic, partition), rx, Arc::clone(&ctx)));
            queues.push(tx);
        }
    };
    spawn_workers(&mut queues, partitions);
    ctx.queues.send_replace(Some(Queues::from(queues.as_slice())));
    ctx.publish(Link { up: true, detail: String::new() });

    let (grown_tx, mut grown) = mpsc::channel(1);
    tokio::spawn(probe(Arc::clone(&cluster), Arc::clone(&ctx), grown_tx, shutdown));
    loop {
        tokio::select! {
            next = intake.recv() => {
                let Some(mut p) = next else { return };
                let placement = p.via_intake.take();
                let pinned = placement.as_ref().and_then(|placement| placement.pinned);
                let partition = place(p.record.key.as_deref().unwrap_or_default(), pinned, queues.len());
                let refused = queues[partition].send(p).err();
                // Only now may the route send past the intake: its record is in the queue ahead of them.
                if let Some(placement) = placement {
                    placement.left_intake();
                }
                if let Some(mpsc::error::SendError(p)) = refused {
                    let _ = p.done.send(Err(ProduceError::Stopped));
                }
            }
            Some(n) = grown.recv() => {
                if n > queues.len() as i32 {
                    // New partitions: Java producers start using them at once, so do we.
                    tracing::info!(topic = %ctx.cfg.topic, from = queues.len(), to = n, "topic gained partitions");
                    spawn_workers(&mut queues, n);
                    ctx.queues.send_replace(Some(Queues::from(queues.as_slice())));
                }
            }
        }
    }
}

/// Asks Kafka for the topic's metadata every [`PROBE_INTERVAL`], so that `/readyz` and recorders learn that
/// Kafka is gone even while nothing is produced, and new partitions are noticed. Each answer also refreshes the
/// metadata the partition workers look their leaders up in; a late one replaces the client ([`Cluster`]).
async fn probe(cluster: Arc<Cluster>, ctx: Arc<Ctx>, grown: mpsc::Sender<i32>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
            () = shutdown.cancelled() => return,
        }
        match cluster.partitions(&ctx.cfg.topic).await {
            Ok(Some(n)) => {
                ctx.set_partition(METADATA, None);
                let _ = grown.try_send(n);
            }
            Ok(None) => {
                ctx.set_partition(METADATA, Some(format!("topic {:?} is gone from the brokers", ctx.cfg.topic)))
            }
            Err(e) => ctx.set_partition(METADATA, Some(format!("metadata: {e}"))),
        }
    }
}

async fn drain_stopped(mut intake: mpsc::UnboundedReceiver<Pending>) {
    intake.close();
    while let Some(mut p) = intake.recv().await {
        p.left_intake();
        let _ = p.done.send(Err(ProduceError::Stopped));
    }
}

/// One partition's worker: batches its queue and produces one batch at a time.
async fn run_partition(mut part: Partition, mut rx: mpsc::UnboundedReceiver<Pending>, ctx: Arc<Ctx>) {
    let max_bytes = ctx.cfg.batch_max_bytes;
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Linger counts from the oldest record's arrival, as in Kafka's own producer.
        let deadline = tokio::time::Instant::from_std(first.enqueued + ctx.cfg.linger);
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while bytes < max_bytes {
            let next = match rx.try_recv() {
                Ok(p) => Some(p),
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten()
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            let Some(p) = next else { break };
            if bytes + p.bytes > max_bytes {
                carry = Some(p);
                break;
            }
            bytes += p.bytes;
            batch.push(p);
        }
        produce(&mut part, batch, &ctx).await;
    }
}

/// A produce request unanswered this long marks its partition failing (`/readyz`, recorders' `kafka_unavailable`)
/// while the relay goes on waiting for it up to `kafka_request_timeout_s`.
const STALLED_AFTER: Duration = Duration::from_secs(3);

/// Backoff between attempts at one batch: short at first, since a failover usually takes Kafka seconds, and a
/// request that timed out has already waited.
const RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// Produces `batch` until Kafka stores it, splitting it only when the broker says it is too large.
async fn produce(part: &mut Partition, batch: Vec<Pending>, ctx: &Ctx) {
    let partition = part.number();
    let metrics = &ctx.metrics;
    let mut work = VecDeque::from([batch]);
    let mut backoff = RETRY;
    while let Some(batch) = work.pop_front() {
        // rskafka takes the records by value; a copy stays here so that a failed request can be sent again
        // unchanged (a memcpy per record, small beside building the envelope).
        pace(ctx, batch.iter().map(|p| p.bytes).sum()).await;
        let records: Vec<Record> = batch.iter().map(|p| p.record.clone()).collect();
        let throttled_before = throttled_total();
        let sent = Instant::now();
        let result = {
            let request = part.produce(records, ctx.compression);
            tokio::pin!(request);
            tokio::select! {
                r = &mut request => r,
                () = tokio::time::sleep(STALLED_AFTER) => {
                    ctx.set_partition(partition, Some(format!("Kafka has not answered a produce request for {} s", STALLED_AFTER.as_secs())));
                    request.await
                }
            }
        };
        if throttled_total() != throttled_before {
            warn_throttled(ctx);
        }
        match result {
            Ok(offsets) if offsets.len() == batch.len() => {
                ctx.set_partition(partition, None);
                backoff.reset();
                metrics.observe_request(sent.elapsed());
                metrics.batches_total.inc();
                metrics.records_produced_total.inc_by(batch.len() as u64);
                for (p, offset) in batch.into_iter().zip(offsets) {
                    metrics.observe_latency(p.enqueued.elapsed());
                    metrics.held_bytes.dec_by(p.bytes as i64);
                    let _ = p.done.send(Ok(Delivery { partition, offset }));
                }
            }
            Ok(offsets) => {
                // rskafka checks this itself; a mismatch would be a broker bug. Retry rather than ack wrongly.
                tracing::error!(
                    partition,
                    sent = batch.len(),
                    got = offsets.len(),
                    "Kafka returned a wrong number of offsets; retrying"
                );
                work.push_front(batch);
                tokio::time::sleep(backoff.next_delay(jitter())).await;
            }
            Err(e) if e.is_too_large() => {
                if batch.len() == 1 {
                    for p in batch {
                        tracing::warn!(partition, bytes = p.bytes, "Kafka refused a record as too large");
                        metrics.held_bytes.dec_by(p.bytes as i64);
                        let _ = p.done.send(Err(ProduceError::TooLarge { bytes: p.bytes }));
                    }
                } else {
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    work.push_front(second);
                    work.push_front(first);
                }
            }
            Err(e) => {
                metrics.produce_retries_total.inc();
                ctx.set_partition(partition, Some(e.to_string()));
                work.push_front(batch);
                tokio::time::sleep(backoff.next_delay(jitter())).await;
            }
        }
    }
}

/// Waits until `bytes` more fit under `kafka_max_bytes_per_s` (at once when no cap is set).
async fn pace(ctx: &Ctx, bytes: usize) {
    let Some(bucket) = &ctx.pace else { return };
    let wait = match bucket.lock() {
        Ok(mut b) => b.charge(bytes as f64, tokio::time::Instant::now()),
        Err(_) => Duration::ZERO,
    };
    if !wait.is_zero() {
        ctx.metrics.produce_paced_total.inc();
        tokio::time::sleep(wait).await;
    }
}

/// Tells the operator, at most once a minute, that Kafka throttles the relay.
fn warn_throttled(ctx: &Ctx) {
    let Ok(mut last) = ctx.throttle_warned.lock() else { return };
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
        return;
    }
    *last = Some(Instant::now());
    tracing::warn!(
        throttled = throttled_total(),
        cap = ?ctx.cfg.max_bytes_per_s,
        "Kafka throttles this relay (a producer_byte_rate quota): rskafka sends throttled requests again, which stores \
         records twice; set SOUNDLINE_KAFKA_MAX_BYTES_PER_S below the quota (divided by the relays sharing it)"
    );
}

/// The zstd level of the relay's record batches with `compression = zstd`. rskafka 0.6 compresses a batch with
/// `zstd::Encoder::new(writer, 0)`, and level 0 is the C library's compile-time `ZSTD_CLEVEL_DEFAULT`: 3, unless
/// the build defines it (`.cargo/config.toml` makes it 1). Found the only way the library tells: a sample
/// compressed as rskafka does, compared byte for byte with the same sample at levels 1 to 9. `None` if none of them
/// matches (or the encoder failed).
pub fn zstd_default_level() -> Option<i32> {
    let sample = zstd_sample();
    let default = zstd_stream(&sample, 0)?;
    (1..=9).find(|&level| zstd_stream(&sample, level).as_deref() == Some(default.as_slice()))
}

/// 64 KiB of envelope-like text whose matches lie at many distances, so that levels 1 to 9 each compress it to
/// different bytes (checked by the unit test).
fn zstd_sample() -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    let mut out = Vec::with_capacity(1 << 16);
    while out.len() < 1 << 16 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let back = (x as usize >> 8) % (out.len() + 1);
        if x.is_multiple_of(3) && back >= 8 {
            let start = out.len() - back;
            let run = 4 + (x as usize >> 24) % 40;
            for i in 0..run.min(back) {
                out.push(out[start + i]);
            }
        } else {
            out.push(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(x >> 26) as usize]);
        }
    }
    out
}

fn zstd_stream(data: &[u8], level: i32) -> Option<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = zstd::Encoder::new(Vec::new(), level).ok()?;
    encoder.write_all(data).ok()?;
    encoder.finish().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_batches_are_compressed_at_level_1_as_the_build_sets() {
        // The detector tells the levels apart: its sample compresses to different bytes at each of them.
        let sample = zstd_sample();
        let outputs: Vec<Vec<u8>> = (1..=9).map(|level| zstd_stream(&sample, level).expect("zstd")).collect();
        for (i, a) in outputs.iter().enumerate() {
            for (j, b) in outputs.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "levels {} and {} compress the sample alike", i + 1, j + 1);
            }
        }
        assert_eq!(
            zstd_default_level(),
            Some(1),
            "zstd's default level is not 1: .cargo/config.toml's CFLAGS (-DZSTD_CLEVEL_DEFAULT=1) did not reach \
             zstd-sys's build (a CFLAGS in the environment replaces it)"
        );
    }

    fn queues(n: usize) -> (Vec<mpsc::UnboundedReceiver<Pending>>, Queues) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        (rxs, Queues::from(txs.as_slice()))
    }

    fn record(key: &[u8]) -> Record {
        Record { key: Some(key.to_vec()), ..empty_record() }
    }

    #[tokio::test]
    async fn a_route_goes_through_the_intake_until_the_layout_is_known_and_keeps_its_partition_when_the_topic_grows() {
        let (intake, mut intake_rx) = mpsc::unbounded_channel();
        let (layout, queues_rx) = watch::channel(None);
        let (_link_tx, link) = watch::channel(Link { up: true, detail: String::new() });
        let producer = Producer::handle(intake, queues_rx, link, 1 << 20, Arc::new(Metrics::default()));
        let mut route = producer.route(b"CAR-042");
        let send = |route: &mut Route| {
            let permit = producer.try_reserve(10).expect("budget");
            drop(producer.send(route, record(b"CAR-042"), permit));
        };

        send(&mut route);
        let (mut rxs, qs) = queues(12);
        layout.send_replace(Some(qs));
        // The layout is known, but the first record is still in the intake: the second follows it there.
        send(&mut route);
        let mut first = intake_rx.try_recv().expect("first through the intake");
        let mut second = intake_rx.try_recv().expect("second through the intake too");
        first.left_intake();
        second.left_intake();
        // Both have left the intake (the dispatcher passed them on): from now on, straight to the car's partition.
        send(&mut route);
        assert!(intake_rx.try_recv().is_err(), "nothing more through the intake");
        let partition = partition_for_key(b"CAR-042", 12) as usize;
        assert_eq!(partition, 2, "Kafka's choice among 12 (partitioner.rs)");
        assert!(rxs[partition].try_recv().is_ok(), "the third went to partition {partition}'s queue");
        assert!(rxs.iter_mut().all(|rx| rx.try_recv().is_err()), "and only there, once");

        // The topic gains partitions: the recording in progress keeps its partition (its order in Kafka)...
        let (mut more, qs) = queues(24);
        layout.send_replace(Some(qs));
        send(&mut route);
        assert!(rxs[partition].try_recv().is_ok(), "after the growth, still partition {partition}");
        assert!(more.iter_mut().all(|rx| rx.try_recv().is_err()), "and no queue of the new layout");
        // ...and a new recording of the same car is placed over the new count, as Kafka's Java client would.
        let mut next = producer.route(b"CAR-042");
        send(&mut next);
        let now = partition_for_key(b"CAR-042", 24) as usize;
        assert!(more[now].try_recv().is_ok(), "a new route: partition {now} of 24");
    }
}
