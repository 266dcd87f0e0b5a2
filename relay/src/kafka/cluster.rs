//! The relay's handle on a Kafka cluster: every call it makes to Kafka goes through here, each with a deadline.
//!
//! # Why
//!
//! rskafka 0.6 sets no I/O timeout of its own and retries without limit (its `BackoffConfig` deadline counts only
//! the sleeps between attempts). A broker that vanishes without closing its sockets (a host crash, a partition, a
//! NIC that stops) therefore holds a request until TCP gives up (~15 minutes), and a connect to a blackholed
//! address ~127 s. Worse, the connections stay cached: the client's one "arbitrary broker" connection, used for
//! every metadata request, and each partition client's leader connection. So a deadline alone is not enough; the
//! stuck client must be thrown away:
//!
//! - **Partition calls** (produce, fetch, list offsets) run on a [`Partition`], which holds an rskafka partition
//!   client. A call that misses its deadline drops that client (and its leader connection); the next call builds a
//!   new one, which looks the leader up afresh. That is also the fix for rskafka's stale leader cache
//!   (influxdata/rskafka#283, unreleased): a partition client reconnecting after `NOT_LEADER_OR_FOLLOWER` reads its
//!   leader from a metadata cache it never invalidates. Every failed or late partition call asks the cluster for
//!   fresh metadata ([`Cluster::refresh`], at most once a second), which replaces that cache.
//! - **Metadata calls** run on the shared client. One that misses its deadline means the arbitrary connection is
//!   stuck: the whole client is replaced ([`Cluster::replace`]), its bootstrap list ordered so that brokers that
//!   accept a TCP connection within [`Timeouts::connect`] come first.
//!
//! ```text
//!  producer workers ─┐                                   ┌─► Partition (its own leader connection) ─► leader
//!  feed readers ─────┼─► Cluster: current rskafka Client ┤     late or broken: dropped, built again
//!  tail, history ────┘   (generation n)                  └─► metadata (the arbitrary connection)
//!                        late: Client n+1, bootstrap brokers that answer first
//! ```
//!
//! A request abandoned at its deadline may still have been carried out by the broker: a produce retried after it
//! can store its records twice (RELIABILITY.md, duplicates case 3). Nothing is lost: the producer resends the same
//! records until Kafka answers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rskafka::client::Client;
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::record::{Record, RecordAndOffset};
use rskafka::topic::Topic;

use super::{KafkaError, connect};
use crate::config::KafkaConfig;

/// How long the relay waits for Kafka, per kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Building a client or a partition client: the TCP connect, the version handshake, SASL, the leader lookup.
    pub connect: Duration,
    /// One metadata request on the shared connection.
    pub metadata: Duration,
    /// One produce, list-offsets or fetch request (a fetch gets its `max_wait` on top).
    pub request: Duration,
}

impl Timeouts {
    /// The relay's: `request` from `kafka_request_timeout_s`, the rest fixed below it.
    pub fn for_request(request: Duration) -> Self {
        Self { connect: Duration::from_secs(2).min(request), metadata: Duration::from_secs(3).min(request), request }
    }
}

/// A call to Kafka that failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Kafka did not answer within the deadline; the connection it was waiting on has been dropped.
    #[error("Kafka did not answer {what} within {} s", after.as_secs_f32())]
    TimedOut {
        /// The call.
        what: &'static str,
        /// Its deadline.
        after: Duration,
    },
    /// Kafka (or the way to it) answered with an error.
    #[error("{0}")]
    Kafka(#[from] ClientError),
}

impl CallError {
    /// Kafka no longer keeps the offset asked for (retention removed it).
    pub fn is_offset_out_of_range(&self) -> bool {
        matches!(self, Self::Kafka(ClientError::ServerError { protocol_error: ProtocolError::OffsetOutOfRange, .. }))
    }

    /// The broker refused a record or a batch as too large.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            Self::Kafka(ClientError::ServerError {
                protocol_error: ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge,
                ..
            })
        )
    }

    /// rskafka 0.6 failed to parse a fetch response holding a transaction marker (influxdata/rskafka#297).
    pub fn is_unparsed_marker(&self) -> bool {
        matches!(self, Self::Kafka(e) if e.to_string().contains("Unknown control batch record version"))
    }
}

/// The current client and its generation (bumped by every replacement).
struct Current {
    generation: u64,
    client: Arc<Client>,
}

/// One Kafka cluster, as the relay reaches it. Cheap to share (`Arc`); every method is safe to call from many tasks.
pub struct Cluster {
    cfg: KafkaConfig,
    timeouts: Timeouts,
    /// A std Mutex: held only to read or swap the pointer, never across an await.
    current: Mutex<Current>,
    /// Serialises replacements, so that a storm of late calls builds one new client, not one each.
    replacing: tokio::sync::Mutex<()>,
    /// When metadata was last refreshed on behalf of a failing partition call (at most once a second).
    refreshed: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("brokers", &self.cfg.brokers).field("timeouts", &self.timeouts).finish()
    }
}

impl Cluster {
    /// Connects to `cfg.brokers` within the connect deadline (brokers that accept a TCP connection tried first);
    /// every later call gets the deadlines of `cfg.request_timeout` ([`Timeouts::for_request`]).
    ///
    /// # Errors
    ///
    /// As [`connect`]; [`KafkaError::Unreachable`] also when no broker answered in time.
    ///
    /// # Cancellation
    ///
    /// Safe to drop: nothing is shared until it returns.
    pub async fn connect(cfg: &KafkaConfig) -> Result<Arc<Self>, KafkaError> {
        let timeouts = Timeouts::for_request(cfg.request_timeout);
        let client = build(cfg, timeouts).await?;
        Ok(Arc::new(Self {
            cfg: cfg.clone(),
            timeouts,
            current: Mutex::new(Current { generation: 0, client }),
            replacing: tokio::sync::Mutex::new(()),
            refreshed: Mutex::new(None),
        }))
    }

    /// The deadlines this cluster's calls get.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The bootstrap list, for messages.
    pub fn brokers(&self) -> String {
        self.cfg.brokers.join(",")
    }

    fn current(&self) -> (u64, Arc<Client>) {
        let c = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (c.generation, Arc::clone(&c.client))
    }

    /// Replaces the client of `generation` by a new one (unless another task already did). Failing to build one
    /// keeps the old: the next late call tries again.
    pub async fn replace(&self, generation: u64) {
        let _one_at_a_time = self.replacing.lock().await;
        if self.current().0 != generation {
            return;
        }
        match build(&self.cfg, self.timeouts).await {
            Ok(client) => {
                let mut c = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                c.generation += 1;
                c.client = client;
                tracing::info!(generation = c.generation, "Kafka client replaced (a broker stopped answering)");
            }
            Err(e) => tracing::warn!(error = %e, "replacing the Kafka client failed; the next late call tries again"),
        }
    }

    /// Every topic and its partitions (a metadata request), within `timeouts.metadata`. It also refreshes the
    /// metadata cache every partition client looks its leader up in.
    ///
    /// # Errors
    ///
    /// Kafka failed or was late (then the client has been replaced).
    pub async fn list_topics(&self) -> Result<Vec<Topic>, CallError> {
        let (generation, client) = self.current();
        match tokio::time::timeout(self.timeouts.metadata, client.list_topics()).await {
            Ok(r) => Ok(r?),
            Err(_) => {
                self.replace(generation).await;
                Err(CallError::TimedOut { what: "a metadata request", after: self.timeouts.metadata })
            }
        }
    }

    /// The number of partitions of `topic`, `None` when it does not exist (or has none).
    ///
    /// # Errors
    ///
    /// As [`Cluster::list_topics`].
    pub async fn partitions(&self, topic: &str) -> Result<Option<i32>, CallError> {
        let topics = self.list_topics().await?;
        Ok(topics.iter().find(|t| t.name == topic).map(|t| t.partitions.len() as i32).filter(|n| *n > 0))
    }

    /// Fresh metadata for the partition clients to look their leaders up in, at most once a second (a failing
    /// partition call asks for it; many at once cost one request).
    pub async fn refresh(&self) {
        {
            let mut last = self.refreshed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *last = Some(Instant::now());
        }
        if let Err(e) = self.list_topics().await {
            tracing::debug!(error = %e, "refreshing Kafka metadata failed");
        }
    }

    /// Creates `topic`, within the request deadline; `replication_factor` `None` asks for the cluster's
    /// `default.replication.factor` (-1 in CreateTopics v4+, KIP-464).
    ///
    /// # Errors
    ///
    /// Kafka refused it (`TopicAlreadyExists` included), failed or was late.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: Option<i16>,
    ) -> Result<(), CallError> {
        let (_, client) = self.current();
        let controller = client.controller_client()?;
        let timeout_ms = i32::try_from(self.timeouts.request.as_millis()).unwrap_or(i32::MAX);
        match tokio::time::timeout(
            self.timeouts.request + self.timeouts.connect,
            controller.create_topic(topic, partitions, replication_factor.unwrap_or(-1), timeout_ms),
        )
        .await
        {
            Ok(r) => Ok(r?),
            Err(_) => Err(CallError::TimedOut { what: "a create-topic request", after: self.timeouts.request }),
        }
    }

    /// A handle on one partition of `topic`; its partition client is built on first use.
    pub fn partition(self: &Arc<Self>, topic: &str, partition: i32) -> Partition {
        Partition { cluster: Arc::clone(self), topic: Arc::from(topic), partition, client: None }
    }
}

/// Builds an rskafka client within `timeouts.connect`, bootstrap brokers that accept TCP first.
async fn build(cfg: &KafkaConfig, timeouts: Timeouts) -> Result<Arc<Client>, KafkaError> {
    let mut ordered = cfg.clone();
    ordered.brokers = answering_first(&cfg.brokers, timeouts.connect).await;
    let unreachable = || KafkaError::Unreachable {
        brokers: cfg.brokers.join(","),
        source: ClientError::InvalidResponse(format!("no broker answered within {} s", timeouts.connect.as_secs())),
    };
    // rskafka's own retries end after `connect` of sleeps with the last error (a refused password, an unknown
    // certificate); the outer bound catches an attempt that hangs (a blackholed broker) on top of them.
    match tokio::time::timeout(timeouts.connect * 3, connect(&ordered, timeouts.connect)).await {
        Ok(r) => r.map(Arc::new),
        Err(_) => Err(unreachable()),
    }
}

/// `brokers` that accept a TCP connection within `within` (all tried at once); when none does, all of them
/// (Kafka may be starting: let rskafka report why). rskafka shuffles its bootstrap list and tries it in turn, so
/// a blackholed broker left in it would cost a whole connect timeout one time in n.
async fn answering_first(brokers: &[String], within: Duration) -> Vec<String> {
    let probes = brokers.iter().map(|b| async move {
        let ok =
            tokio::time::timeout(within, tokio::net::TcpStream::connect(b.as_str())).await.is_ok_and(|r| r.is_ok());
        (b.clone(), ok)
    });
    let answered: Vec<String> =
        futures_util::future::join_all(probes).await.into_iter().filter_map(|(b, ok)| ok.then_some(b)).collect();
    if answered.is_empty() { brokers.to_vec() } else { answered }
}

/// Where to start reading a partition: the one position type of every reader (the feed's live readers, its
/// history, bounded reads, `tail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The oldest record kept.
    Earliest,
    /// Only records produced from now on (the partition's end).
    Latest,
    /// The first record whose timestamp is at or after this many ms since the epoch (the end when none is).
    TimestampMs(i64),
    /// This offset.
    Offset(i64),
}

/// One partition of a topic, with a deadline on every call. A call that misses it (or finds the connection
/// broken) drops the partition client, so that the next one looks the leader up again.
pub struct Partition {
    cluster: Arc<Cluster>,
    topic: Arc<str>,
    partition: i32,
    client: Option<Arc<PartitionClient>>,
}

impl Partition {
    /// The partition's number.
    pub fn number(&self) -> i32 {
        self.partition
    }

    /// The topic.
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    async fn client(&mut self) -> Result<Arc<PartitionClient>, CallError> {
        if let Some(pc) = &self.client {
            return Ok(Arc::clone(pc));
        }
        let (_, client) = self.cluster.current();
        let after = self.cluster.timeouts.connect;
        let built = tokio::time::timeout(
            after,
            client.partition_client(self.topic.to_string(), self.partition, UnknownTopicHandling::Retry),
        )
        .await;
        match built {
            Ok(Ok(pc)) => {
                let pc = Arc::new(pc);
                self.client = Some(Arc::clone(&pc));
                Ok(pc)
            }
            Ok(Err(e)) => {
                self.cluster.refresh().await;
                Err(e.into())
            }
            Err(_) => {
                // The leader named by the cached metadata does not answer, or the lookup itself hangs on the
                // shared connection: fresh metadata (which replaces a stuck client).
                self.cluster.refresh().await;
                Err(CallError::TimedOut { what: "a connection to the partition's leader", after })
            }
        }
    }

    /// Runs `call` on the partition client within `after`; a late or failed call drops the client and asks for
    /// fresh metadata.
    async fn call<T, F>(
        &mut self,
        what: &'static str,
        after: Duration,
        call: impl FnOnce(Arc<PartitionClient>) -> F,
    ) -> Result<T, CallError>
    where
        F: Future<Output = Result<T, ClientError>>,
    {
        let pc = self.client().await?;
        match tokio::time::timeout(after, call(pc)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                // Server answers that say nothing about the connection keep it.
                let keep = matches!(
                    e,
                    ClientError::ServerError {
                        protocol_error: ProtocolError::OffsetOutOfRange
                            | ProtocolError::MessageTooLarge
                            | ProtocolError::RecordListTooLarge,
                        ..
                    }
                ) || e.to_string().contains("Unknown control batch record version");
                if !keep {
                    self.client = None;
                    self.cluster.refresh().await;
                }
                Err(e.into())
            }
            Err(_) => {
                tracing::warn!(topic = %self.topic, partition = self.partition, what, after_s = after.as_secs_f32(), "Kafka did not answer in time; reconnecting");
                self.client = None;
                self.cluster.refresh().await;
                Err(CallError::TimedOut { what, after })
            }
        }
    }

    /// Produces `records` (acks=all, rskafka's only mode) and returns their offsets, within the request deadline.
    ///
    /// # Errors
    ///
    /// Kafka refused or failed, or was late: the records may or may not be stored.
    ///
    /// # Cancellation
    ///
    /// The request may still be carried out by the broker.
    pub async fn produce(&mut self, records: Vec<Record>, compression: Compression) -> Result<Vec<i64>, CallError> {
        let after = self.cluster.timeouts.request;
        self.call("a produce request", after, |pc| async move { pc.produce(records, compression).await }).await
    }

    /// One fetch at `offset` of up to `max_bytes`, waiting up to `max_wait_ms` for records: the records and the
    /// high watermark.
    ///
    /// # Errors
    ///
    /// Kafka failed or was late.
    pub async fn fetch_records(
        &mut self,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<(Vec<RecordAndOffset>, i64), CallError> {
        let after = self.cluster.timeouts.request + Duration::from_millis(max_wait_ms.max(0) as u64);
        self.call(
            "a fetch request",
            after,
            |pc| async move { pc.fetch_records(offset, 1..max_bytes, max_wait_ms).await },
        )
        .await
    }

    /// The offset `position` names now (a list-offsets request; a timestamp no record reaches: the end).
    ///
    /// # Errors
    ///
    /// Kafka failed or was late.
    pub async fn offset(&mut self, position: Position) -> Result<i64, CallError> {
        let at = match position {
            Position::Offset(o) => return Ok(o),
            Position::Earliest => OffsetAt::Earliest,
            Position::Latest => OffsetAt::Latest,
            Position::TimestampMs(ms) => {
                use chrono::TimeZone as _;
                OffsetAt::Timestamp(chrono::Utc.timestamp_millis_opt(ms).single().unwrap_or_default())
            }
        };
        let after = self.cluster.timeouts.request;
        let found = self.call("a list-offsets request", after, |pc| async move { pc.get_offset(at).await }).await?;
        if found < 0 {
            // Kafka answers -1 when no record is that recent.
            return Box::pin(self.offset(Position::Latest)).await;
        }
        Ok(found)
    }
}
