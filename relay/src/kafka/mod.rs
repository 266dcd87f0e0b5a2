//! The relay's side of Kafka: connecting (SASL, TLS), making sure the topic exists, the producer and the readers.
//! Every call the relay makes to Kafka is made in this module, and each has a deadline ([`cluster`]).
//!
//! rskafka speaks the wire protocol; this module adds what rskafka leaves to its users: deadlines and rebuilt
//! connections when a broker stops answering ([`cluster`]), a partitioner ([`partitioner`]), batching with linger
//! and a memory budget ([`producer`]), fetch loops that get past transaction markers ([`consumer`]), and turning
//! configuration into a connected client with errors an operator can act on.

pub mod cluster;
pub mod consumer;
pub mod partitioner;
pub mod producer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rskafka::BackoffConfig;
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};

use crate::config::{KafkaConfig, SaslMechanism};
pub use cluster::{CallError, Cluster, Partition, Position, Timeouts};

/// What can go wrong between the relay and Kafka, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The brokers could not be reached, or the connection failed.
    #[error("cannot reach Kafka at {brokers}: {source}")]
    Unreachable {
        /// The bootstrap list.
        brokers: String,
        /// rskafka's error.
        source: ClientError,
    },
    /// The broker refused the SASL credentials.
    #[error(
        "Kafka refused the SASL credentials of user {user:?} ({mechanism}): check kafka.uname/upassword (or SOUNDLINE_KAFKA_USERNAME/_PASSWORD)"
    )]
    AuthenticationFailed {
        /// The user name.
        user: String,
        /// The mechanism.
        mechanism: &'static str,
    },
    /// The topic is missing and the relay may not create it.
    #[error("topic {0:?} does not exist and create_topic is off: create it, or set SOUNDLINE_CREATE_TOPIC=true")]
    TopicMissing(String),
    /// Kafka failed a call, or did not answer it in time.
    #[error("Kafka at {brokers}: {source}")]
    Unavailable {
        /// The bootstrap list.
        brokers: String,
        /// What failed.
        source: cluster::CallError,
    },
    /// A topic to read does not exist.
    #[error("topic {0:?} does not exist on the brokers")]
    NoSuchTopic(String),
    /// Creating the topic failed.
    #[error("cannot create topic {topic:?}: {source}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// rskafka's error.
        source: ClientError,
    },
    /// The TLS settings are unusable.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Produce responses in which Kafka asked for a slowdown, process-wide; counted by [`ThrottleWatch`].
static THROTTLED: AtomicU64 = AtomicU64::new(0);

/// Produce responses so far in which Kafka asked this process to slow down (a client quota).
pub fn throttled_total() -> u64 {
    THROTTLED.load(Relaxed)
}

/// A tracing layer that counts Kafka's produce throttling, which rskafka handles without telling its caller.
///
/// When a produce response carries a throttle time (the client is over a `producer_byte_rate` quota), rskafka
/// 0.6 logs "broker asked us to throttle", waits, and sends the same request again, although Kafka has already
/// stored its records: each throttle writes the batch twice, and a relay far over its quota livelocks on
/// resends. Its log event is the only trace, so this layer watches for it (install it with a filter on the
/// `rskafka::backoff` target, see the binary's `init_logging`); [`producer`] warns and `/metrics` shows the count.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThrottleWatch;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ThrottleWatch {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        #[derive(Default)]
        struct Fields {
            throttle: bool,
            produce: bool,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "request_name" {
                    self.produce = value == "produce";
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.throttle = format!("{value:?}") == "broker asked us to throttle";
                }
            }
        }
        if event.metadata().target() != "rskafka::backoff" {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.throttle && fields.produce {
            THROTTLED.fetch_add(1, Relaxed);
        }
    }
}

fn mechanism_name(m: SaslMechanism) -> &'static str {
    match m {
        SaslMechanism::Plain => "PLAIN",
        SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
        SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
    }
}

/// Builds a client for `cfg` (use [`Cluster::connect`], which bounds it and everything after): rskafka retries
/// inside for at most `retry_for` of backoff sleeps (its deadline counts nothing else), then reports the last
/// error, so that refused credentials or an unknown certificate come back as what they are.
///
/// # Errors
///
/// [`KafkaError::AuthenticationFailed`] for refused credentials, [`KafkaError::Tls`] for unusable TLS files,
/// [`KafkaError::Unreachable`] otherwise.
///
/// # Cancellation
///
/// Safe to drop: nothing is shared until it returns.
pub async fn connect(cfg: &KafkaConfig, retry_for: Duration) -> Result<Client, KafkaError> {
    let backoff = BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(retry_for),
    };
    let mut builder = ClientBuilder::new(cfg.brokers.clone()).client_id("soundline-relay").backoff_config(backoff);
    if let Some((user, password)) = cfg.credentials.as_ref().filter(|_| cfg.security.sasl()) {
        let credentials = Credentials::new(user.clone(), password.expose().to_owned());
        builder = builder.sasl_config(match cfg.sasl_mechanism {
            SaslMechanism::Plain => SaslConfig::Plain(credentials),
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
        });
    }
    if cfg.security.tls() {
        builder = builder.tls_config(tls_config(cfg)?);
    }
    builder.build().await.map_err(|source| {
        // rskafka reports refused credentials only inside its error text.
        if source.to_string().contains("SaslAuthenticationFailed") {
            KafkaError::AuthenticationFailed {
                user: cfg.credentials.as_ref().map(|(u, _)| u.clone()).unwrap_or_default(),
                mechanism: mechanism_name(cfg.sasl_mechanism),
            }
        } else {
            KafkaError::Unreachable { brokers: cfg.brokers.join(","), source }
        }
    })
}

fn tls_config(cfg: &KafkaConfig) -> Result<Arc<rustls::ClientConfig>, KafkaError> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| KafkaError::Tls(format!("cannot read {}: {e}", path.display())))?;
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| KafkaError::Tls(format!("{} is not valid PEM: {e}", path.display())))?;
                roots.add(cert).map_err(|e| KafkaError::Tls(format!("{}: {e}", path.display())))?;
                added += 1;
            }
            if added == 0 {
                return Err(KafkaError::Tls(format!("{} holds no certificate", path.display())));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KafkaError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Makes sure `cfg.topic` exists (creating it when allowed) and returns its partition count.
///
/// # Errors
///
/// [`KafkaError::TopicMissing`] when it is missing and `create_topic` is off; [`KafkaError::CreateTopic`] or
/// [`KafkaError::Unavailable`] when Kafka fails.
pub async fn ensure_topic(cluster: &Cluster, cfg: &KafkaConfig) -> Result<i32, KafkaError> {
    let unavailable = |source| KafkaError::Unavailable { brokers: cfg.brokers.join(","), source };
    for _ in 0..50 {
        if let Some(n) = cluster.partitions(&cfg.topic).await.map_err(unavailable)? {
            return Ok(n);
        }
        if !cfg.create_topic {
            return Err(KafkaError::TopicMissing(cfg.topic.clone()));
        }
        match cluster.create_topic(&cfg.topic, cfg.partitions, cfg.replication_factor).await {
            Ok(()) => {
                tracing::info!(topic = %cfg.topic, partitions = cfg.partitions, replication = ?cfg.replication_factor, "created topic (replication None: the cluster's default)")
            }
            // Another replica created it first: fine, list again.
            Err(CallError::Kafka(ClientError::ServerError {
                protocol_error: ProtocolError::TopicAlreadyExists,
                ..
            })) => {}
            Err(CallError::Kafka(source)) => return Err(KafkaError::CreateTopic { topic: cfg.topic.clone(), source }),
            Err(e) => return Err(unavailable(e)),
        }
        // Metadata reaches every broker shortly after creation.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(KafkaError::TopicMissing(cfg.topic.clone()))
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::prelude::*;

    use super::*;

    #[test]
    fn the_watch_counts_rskafkas_produce_throttling_and_nothing_else() {
        let subscriber = tracing_subscriber::registry().with(ThrottleWatch);
        let before = throttled_total();
        tracing::subscriber::with_default(subscriber, || {
            let throttle = Duration::from_millis(150);
            let request_name = "produce";
            tracing::info!(target: "rskafka::backoff", ?throttle, request_name, "broker asked us to throttle");
            let request_name = "fetch_records";
            tracing::info!(target: "rskafka::backoff", ?throttle, request_name, "broker asked us to throttle");
            let request_name = "produce";
            tracing::info!(target: "rskafka::backoff", request_name, "request encountered non-fatal error - backing off");
            tracing::info!(target: "soundline_relay", request_name, "broker asked us to throttle");
        });
        assert_eq!(throttled_total() - before, 1);
    }
}
