//! Soundline's relay: the server between recorders and Kafka, laid out along the path of an audio frame.
//!
//! ```text
//!  http/ accepts (net.rs: TCP, TLS, header limits), routes, serves the page (web.rs)
//!    │     doors/: who may connect (auth.rs) and how much (limits.rs)
//!    ├─► /ws/record ─► ingest/ ─► kafka/producer.rs ─► Kafka        (ingest/dedup.rs: a resend is acked again)
//!    │                validate,    batch per partition     │
//!    │                envelope,    (kafka/partitioner.rs)  │
//!    │                ack ◄──────── offsets                │
//!    │                                                     ▼
//!    └─► /ws/feed ◄── fanout/subscriber.rs ◄── fanout/ ◄── kafka/consumer.rs
//!                     filters, history,        one hub per topic,   one fetch loop per partition
//!                     bounded reads            broadcast by car     (only those subscribers need)
//! ```
//!
//! Dependencies point one way, down this list: the router depends on the endpoints, never the reverse.
//!
//! - [`http`]: the listener, routes, origin check, `/readyz`, `/metrics`, graceful shutdown; [`http::run`] is what
//!   `main` calls. [`http::net`]: accepting; [`http::web`]: the built web app with its CSP and cache headers.
//! - [`doors`]: [`doors::auth`] (static bearer tokens, HS256 JWTs) and [`doors::limits`] (per-client
//!   connections, rates, idle time, pings).
//! - [`ingest`]: one recorder connection: hello, frames, acks, errors and close codes; [`ingest::dedup`].
//! - [`fanout`]: Kafka back out to subscribers, a partition read only while one needs it;
//!   [`fanout::subscriber`]: one `/ws/feed` connection.
//! - [`ws`]: the WebSocket session toolkit both endpoints share (failures, error and close, close handshake).
//! - [`state`]: what every connection shares (config, producer, fan-out, metrics, doors, shutdown).
//! - [`kafka`]: connecting (SASL/TLS), the topic, the Java-compatible partitioner, the producer and consumer.
//! - [`config`]: every setting declared once ([`config::settings`], clap derive); the file (the existing
//!   uploader's JSON, [`config::file`]), `SOUNDLINE_*` variables and flags, into one typed config.
//! - [`metrics`]: counters for `/metrics`.
//! - [`tail`]: the command-line consumer (`soundline-relay tail`), reading through [`kafka::consumer`].
#![deny(unsafe_code)]

pub mod config;
pub mod doors;
pub mod fanout;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod state;
pub mod tail;
pub mod ws;

/// Wall-clock time since the Unix epoch (zero if the clock is before it): token expiry, record timestamps.
pub fn since_epoch() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}
