//! The relay's counters, rendered at `/metrics` in the Prometheus text format.
//!
//! Plain atomics, updated on the hot path with `Relaxed` ordering (each value is independent; a scrape may see
//! one counter a frame ahead of another, which Prometheus tolerates). No metrics library: the set is small and
//! fixed, and this keeps the per-frame cost at a few uncontended atomic adds.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use soundline_shared::control::ErrorCode;

/// Upper bounds (seconds) of the produce latency histogram's buckets.
const LATENCY_BUCKETS_S: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A Prometheus histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS_S.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS_S.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Why a feed record was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedDrop {
    /// A subscriber fell behind the live stream (counted per subscriber).
    Lagged,
    /// Neither an envelope nor JSON, and `feed_malformed` is `skip`.
    Malformed,
}

impl FeedDrop {
    const ALL: [Self; 2] = [Self::Lagged, Self::Malformed];
    fn label(self) -> &'static str {
        match self {
            Self::Lagged => "lagged",
            Self::Malformed => "malformed",
        }
    }
}

/// Which rate a throttled connection went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// `max_messages_per_s`.
    Messages,
    /// `max_bytes_per_s`.
    Bytes,
}

/// Why a connection was refused before it became a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` WebSockets were open.
    MaxConnections,
    /// The client's address held `max_connections_per_client`.
    PerClient,
    /// The TLS handshake failed or took longer than `hello_timeout_s`.
    TlsHandshake,
    /// No token.
    AuthMissing,
    /// A token that is not valid here.
    AuthInvalid,
    /// A JWT past its expiry.
    AuthExpired,
    /// The client's address held `max_connections_per_client` connections not yet upgraded (TCP, TLS, HTTP).
    PendingPerClient,
    /// `max_connections` connections were not yet upgraded.
    PendingMax,
    /// The first request's headers did not arrive within `hello_timeout_s` (a slow-loris trickle, or silence).
    HeaderTimeout,
    /// A request line and headers over `max_header_bytes` (HTTP 431), or an over-long URI (414).
    HeadersTooLarge,
    /// Bytes that are not HTTP/1.1 (HTTP 400).
    BadHttp,
    /// A connection still plain HTTP after its lifetime (`net::HTTP_LIFETIME`).
    HttpLifetime,
}

impl Refused {
    const ALL: [Self; 12] = [
        Self::MaxConnections,
        Self::PerClient,
        Self::TlsHandshake,
        Self::AuthMissing,
        Self::AuthInvalid,
        Self::AuthExpired,
        Self::PendingPerClient,
        Self::PendingMax,
        Self::HeaderTimeout,
        Self::HeadersTooLarge,
        Self::BadHttp,
        Self::HttpLifetime,
    ];
    fn label(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::PerClient => "per_client",
            Self::TlsHandshake => "tls_handshake",
            Self::AuthMissing => "auth_missing",
            Self::AuthInvalid => "auth_invalid",
            Self::AuthExpired => "auth_expired",
            Self::PendingPerClient => "pending_per_client",
            Self::PendingMax => "pending_max",
            Self::HeaderTimeout => "header_timeout",
            Self::HeadersTooLarge => "headers_too_large",
            Self::BadHttp => "bad_http",
            Self::HttpLifetime => "http_lifetime",
        }
    }
}

/// What the feed's live partition readers report, for one rendering.
#[derive(Debug, Default)]
pub struct FeedReaders {
    /// (topic, partition, records behind the partition's end) per partition read.
    pub lag: Vec<(std::sync::Arc<str>, i32, i64)>,
    /// Fetch rounds so far.
    pub fetches: u64,
    /// Record bytes read so far.
    pub fetched_bytes: u64,
    /// Readers running now.
    pub readers: i64,
}

/// Every metric the relay exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Recorder connections open now.
    pub connections_active: AtomicI64,
    /// Recorder connections accepted since start.
    pub connections_total: AtomicU64,
    refused: [AtomicU64; Refused::ALL.len()],
    throttled: [AtomicU64; 2],
    /// Keepalive pings sent.
    pub pings_sent_total: AtomicU64,
    /// WebSocket requests refused because their `Origin` is not allowed.
    pub origin_refused_total: AtomicU64,
    /// Audio frames received and accepted.
    pub frames_in_total: AtomicU64,
    /// PCM bytes in accepted frames.
    pub bytes_in_total: AtomicU64,
    /// Frames acked to recorders.
    pub acks_total: AtomicU64,
    /// Records Kafka acknowledged.
    pub records_produced_total: AtomicU64,
    /// Resent frames acked again from the dedup window instead of produced twice.
    pub duplicates_total: AtomicU64,
    /// Produce requests sent (one per batch).
    pub batches_total: AtomicU64,
    /// Produce requests that failed and were retried.
    pub produce_retries_total: AtomicU64,
    /// Produce requests held back to stay under `kafka_max_bytes_per_s`.
    pub produce_paced_total: AtomicU64,
    /// Envelope bytes held in memory, not yet acked by Kafka.
    pub held_bytes: AtomicI64,
    /// Times a recorder had to wait because the memory budget was full.
    pub backpressure_total: AtomicU64,
    /// Time from a record entering the producer to Kafka's acknowledgement.
    pub produce_latency: Histogram,
    /// 1 when the relay can reach Kafka and the topic exists.
    pub kafka_up: AtomicI64,
    /// Feed subscribers connected now.
    pub feed_subscribers: AtomicI64,
    /// Records sent to feed subscribers.
    pub feed_delivered_total: AtomicU64,
    /// Live records a subscriber's task woke up for (of its partitions), delivered or filtered out.
    pub feed_considered_total: AtomicU64,
    /// Records subscribers' own history reads (bounded reads included) fetched from Kafka.
    pub feed_history_records_total: AtomicU64,
    /// Their bytes (keys and values).
    pub feed_history_bytes_total: AtomicU64,
    feed_dropped: [AtomicU64; FeedDrop::ALL.len()],
    errors: [AtomicU64; ErrorCode::ALL.len()],
}

impl Metrics {
    /// Counts one error sent to a client.
    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    /// How many errors of `code` were sent.
    pub fn errors(&self, code: ErrorCode) -> u64 {
        ErrorCode::ALL.iter().position(|c| *c == code).map_or(0, |i| self.errors[i].load(Relaxed))
    }

    /// Counts a connection refused before it became a WebSocket.
    pub fn refused(&self, why: Refused) {
        if let Some(i) = Refused::ALL.iter().position(|r| *r == why) {
            self.refused[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts a pause of a connection that went over a rate.
    pub fn throttled(&self, which: Throttled) {
        self.throttled[usize::from(which == Throttled::Bytes)].fetch_add(1, Relaxed);
    }

    /// Counts `n` feed records not delivered for `reason`.
    pub fn feed_dropped(&self, reason: FeedDrop, n: u64) {
        if let Some(i) = FeedDrop::ALL.iter().position(|r| *r == reason) {
            self.feed_dropped[i].fetch_add(n, Relaxed);
        }
    }

    /// The Prometheus text exposition, with what the feed's live partition readers report.
    pub fn render(&self, feed: &FeedReaders) -> String {
        let consumer_lag = &feed.lag;
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter("soundline_connections_total", "Recorder connections accepted.", self.connections_total.load(Relaxed));
        counter(
            "soundline_pings_sent_total",
            "Keepalive pings sent to WebSockets.",
            self.pings_sent_total.load(Relaxed),
        );
        counter("soundline_frames_in_total", "Audio frames received and accepted.", self.frames_in_total.load(Relaxed));
        counter("soundline_bytes_in_total", "PCM bytes in accepted frames.", self.bytes_in_total.load(Relaxed));
        counter(
            "soundline_acks_total",
            "Frames acked to recorders after Kafka stored them.",
            self.acks_total.load(Relaxed),
        );
        counter(
            "soundline_records_produced_total",
            "Records Kafka acknowledged.",
            self.records_produced_total.load(Relaxed),
        );
        counter(
            "soundline_origin_refused_total",
            "WebSocket requests refused because their Origin is not allowed.",
            self.origin_refused_total.load(Relaxed),
        );
        counter(
            "soundline_duplicates_total",
            "Resent frames acked again without producing them twice.",
            self.duplicates_total.load(Relaxed),
        );
        counter(
            "soundline_produce_batches_total",
            "Produce requests that succeeded.",
            self.batches_total.load(Relaxed),
        );
        counter(
            "soundline_produce_retries_total",
            "Produce requests that failed and were retried.",
            self.produce_retries_total.load(Relaxed),
        );
        counter(
            "soundline_produce_paced_total",
            "Produce requests held back to stay under kafka_max_bytes_per_s.",
            self.produce_paced_total.load(Relaxed),
        );
        counter(
            "soundline_kafka_throttled_total",
            "Produce responses in which Kafka asked the relay to slow down (a client quota): rskafka sends such a request again, which stores its records twice; keep kafka_max_bytes_per_s below the quota.",
            crate::kafka::throttled_total(),
        );
        counter(
            "soundline_feed_fetches_total",
            "Fetch rounds of the feed's live partition consumers (one fetch request each; two or three to get past a transaction marker).",
            feed.fetches,
        );
        counter(
            "soundline_feed_considered_total",
            "Live records feed subscribers woke up for, delivered or filtered out (a car's subscriber wakes for its car's records only).",
            self.feed_considered_total.load(Relaxed),
        );
        counter(
            "soundline_feed_fetched_bytes_total",
            "Bytes of record keys and values the feed's live partition readers read from Kafka.",
            feed.fetched_bytes,
        );
        counter(
            "soundline_feed_history_records_total",
            "Records the feed read from Kafka for subscribers' history and bounded reads (each subscriber's own fetches, every record of the partitions read, wanted or not).",
            self.feed_history_records_total.load(Relaxed),
        );
        counter(
            "soundline_feed_history_bytes_total",
            "Bytes of record keys and values read for subscribers' history and bounded reads.",
            self.feed_history_bytes_total.load(Relaxed),
        );
        counter(
            "soundline_backpressure_total",
            "Times a recorder waited because the memory budget was full.",
            self.backpressure_total.load(Relaxed),
        );
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge("soundline_connections_active", "Recorder connections open now.", self.connections_active.load(Relaxed));
        gauge(
            "soundline_held_bytes",
            "Envelope bytes held in memory until Kafka acks them.",
            self.held_bytes.load(Relaxed),
        );
        gauge("soundline_kafka_up", "1 when Kafka is reachable and the topic exists.", self.kafka_up.load(Relaxed));
        gauge("soundline_feed_subscribers", "Feed subscribers connected now.", self.feed_subscribers.load(Relaxed));
        gauge(
            "soundline_feed_partition_readers",
            "Partitions the feed reads live now (those some subscriber needs, or needed within feed_reader_idle_s).",
            feed.readers,
        );
        labelled(
            &mut out,
            "soundline_errors_total",
            "Errors sent to clients, by code.",
            "code",
            ErrorCode::ALL.iter().zip(&self.errors),
        );
        labelled(
            &mut out,
            "soundline_connections_refused_total",
            "Connections refused before the WebSocket opened, by reason.",
            "reason",
            Refused::ALL.iter().map(|r| r.label()).zip(&self.refused),
        );
        labelled(
            &mut out,
            "soundline_throttled_total",
            "Pauses of connections that sent faster than a limit, by limit.",
            "limit",
            ["messages", "bytes"].into_iter().zip(&self.throttled),
        );
        let _ = writeln!(
            out,
            "# HELP soundline_feed_delivered_total Records sent to feed subscribers.\n# TYPE soundline_feed_delivered_total counter\nsoundline_feed_delivered_total {}",
            self.feed_delivered_total.load(Relaxed)
        );
        labelled(
            &mut out,
            "soundline_feed_dropped_total",
            "Feed records not delivered, by reason.",
            "reason",
            FeedDrop::ALL.iter().map(|r| r.label()).zip(&self.feed_dropped),
        );
        let _ = writeln!(
            out,
            "# HELP soundline_consumer_lag Records between the feed consumer and the partition's end.\n# TYPE soundline_consumer_lag gauge"
        );
        for (topic, partition, lag) in consumer_lag {
            let _ = writeln!(out, "soundline_consumer_lag{{topic=\"{topic}\",partition=\"{partition}\"}} {lag}");
        }
        self.produce_latency.render(
            "soundline_produce_latency_seconds",
            "Time from a record entering the producer to Kafka's acknowledgement.",
            &mut out,
        );
        out
    }
}

/// One counter with one label: its HELP and TYPE lines, then a line per label value.
fn labelled<'a, V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (V, &'a AtomicU64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, n) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {}", n.load(Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.produce_latency.observe(Duration::from_micros(500));
        m.produce_latency.observe(Duration::from_millis(30));
        let text = m.render(&FeedReaders::default());
        assert!(text.contains("soundline_produce_latency_seconds_bucket{le=\"0.001\"} 1"), "{text}");
        assert!(text.contains("soundline_produce_latency_seconds_bucket{le=\"0.05\"} 2"), "{text}");
        assert!(text.contains("soundline_produce_latency_seconds_count 2"), "{text}");
    }

    #[test]
    fn errors_are_labelled_by_code() {
        let m = Metrics::default();
        m.error(ErrorCode::BadFrame);
        assert!(m.render(&FeedReaders::default()).contains("soundline_errors_total{code=\"bad_frame\"} 1"));
        assert_eq!(m.errors(ErrorCode::BadFrame), 1);
    }
}
