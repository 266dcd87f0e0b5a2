//! Soundline's relay: the server between recorders and Kafka.
//!
//! An audio frame's path through this crate:
//!
//! ```text
//!  /ws/record ─► ingest.rs ─► kafka/producer.rs ─► Kafka
//!  (server.rs)   validate,     batch per partition     │
//!                envelope,     (kafka/partitioner.rs), │
//!                ack ◄──────── offsets                 │
//!                                                      ▼
//!  /ws/feed ◄── feed.rs ◄── fanout.rs ◄── kafka/consumer.rs
//!               filters,    one hub per topic,  one fetch loop per partition
//!               history     broadcast           (only the partitions subscribers need)
//! ```
//!
//! - [`config`]: file (the existing uploader's JSON), `SOUNDLINE_*` variables and flags, into one typed config.
//! - [`net`]: accepting TCP (and TLS when the relay terminates it), HTTP with a header-read timeout.
//! - [`auth`]: static bearer tokens and HS256 JWTs; [`limits`]: per-client connections, rates, idle time, pings.
//! - [`server`]: routes, shared state, connection limit, graceful shutdown; [`server::run`] is what `main` calls.
//! - [`ingest`]: one recorder connection: hello, frames, acks, errors and close codes.
//! - [`dedup`]: frames already produced, so a resend is acked again rather than produced twice.
//! - [`kafka`]: connecting (SASL/TLS), the topic, the Java-compatible partitioner and the batching producer.
//! - [`metrics`]: counters for `/metrics`.
//! - [`fanout`] and [`feed`]: Kafka back out to `/ws/feed` subscribers, a partition read only while one needs it.
//! - [`web`]: the built web app's files, with a strict Content-Security-Policy and cache headers.
//! - [`tail`]: the command-line consumer (`soundline-relay tail`), reading through [`kafka::consumer`].
#![deny(unsafe_code)]

pub mod auth;
pub mod config;
pub mod dedup;
pub mod fanout;
pub mod feed;
pub mod ingest;
pub mod kafka;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod server;
pub mod tail;
pub mod web;

/// Wall-clock time since the Unix epoch (zero if the clock is before it): token expiry, record timestamps.
pub fn since_epoch() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}
