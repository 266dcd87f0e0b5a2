//! What every connection shares: the configuration, the Kafka producer, the feed's fan-out, resend recognition,
//! metrics, the doors (authentication, per-client limits) and shutdown. The endpoints (`ingest`,
//! `fanout::subscriber`) take it; the router (`http`) builds it and hands it to them.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::fanout::Fanout;
use crate::kafka::producer::Producer;
use crate::metrics::Metrics;

/// State shared by every handler; a cheap clone of an `Arc`.
#[derive(Clone)]
pub struct AppState {
    /// The router (`http`) reads the doors and the connection limit from here.
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) producer: Producer,
    pub(crate) fanout: Fanout,
    pub(crate) dedup: crate::ingest::dedup::Dedup,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) clients: Arc<crate::doors::limits::Clients>,
    pub(crate) auth: crate::doors::auth::Authenticator,
    pub(crate) tracker: TaskTracker,
}

impl AppState {
    /// Builds the state and starts the producer (which connects to Kafka in the background).
    pub fn new(config: Config, shutdown: CancellationToken) -> Self {
        let metrics = Arc::new(Metrics::default());
        let producer =
            Producer::start(config.kafka.clone(), config.memory_budget_bytes, Arc::clone(&metrics), shutdown.clone());
        Self::with_producer(config, producer, shutdown)
    }

    /// Builds the state around a producer already made ([`Producer::by_hand`] in the router's tests); the
    /// metrics are the producer's. The feed's fan-out connects to Kafka only when a subscriber first needs it.
    pub fn with_producer(config: Config, producer: Producer, shutdown: CancellationToken) -> Self {
        let metrics = Arc::clone(producer.metrics());
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let fanout = Fanout::new(config.clone(), Arc::clone(&metrics));
        Self {
            shared: Arc::new(Shared {
                dedup: crate::ingest::dedup::Dedup::new(config.dedup_window_frames),
                auth: crate::doors::auth::Authenticator::new(&config.auth),
                config,
                producer,
                fanout,
                metrics,
                shutdown,
                connections,
                clients: Arc::default(),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The Kafka producer.
    pub fn producer(&self) -> &Producer {
        &self.shared.producer
    }

    /// Frames already produced (resend recognition).
    pub fn dedup(&self) -> &crate::ingest::dedup::Dedup {
        &self.shared.dedup
    }

    /// The feed's fan-out.
    pub fn fanout(&self) -> &Fanout {
        &self.shared.fanout
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Cancelled when the relay shuts down.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shared.shutdown
    }
}
