//! The relay's metrics, served at `/metrics` in the Prometheus text format (0.0.4), by `prometheus-client`.
//!
//! Counters and gauges are `prometheus-client`'s atomics, updated on the hot path without locks (a scrape may
//! see one counter a frame ahead of another, which Prometheus tolerates); labelled counters, bumped only on rare
//! events (errors, refusals, throttling), are its `Family`s, every label value present from the start so that a
//! rate over them is defined before the first event. What the feed's partition readers report is read at each
//! scrape ([`FeedReaders`]). Each help text says exactly what is counted.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use soundline_shared::control::ErrorCode;

/// Upper bounds (seconds) of the latency histograms' buckets: 10 ms wide from 10 to 60 ms, finer than 50 ms up
/// to 150 ms, where an ack's latency on a healthy cluster lies and a p99 target of 100 ms is read.
const LATENCY_BUCKETS_S: [f64; 17] =
    [0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 10.0];

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

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

/// A counter (`u64`).
pub type Count = Counter<u64, AtomicU64>;
/// A gauge (`i64`).
pub type Level = Gauge<i64, AtomicI64>;
/// One label's name and value.
type Label = [(&'static str, &'static str); 1];

/// Every metric the relay exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// WebSocket connections open now, on both endpoints (recorders and feed subscribers).
    pub connections_active: Level,
    /// WebSocket connections upgraded, on both endpoints, those refused for their token included.
    pub connections_total: Count,
    refused: Family<Label, Count>,
    throttled: Family<Label, Count>,
    /// Keepalive pings sent.
    pub pings_sent_total: Count,
    /// WebSocket requests refused because their `Origin` is not allowed.
    pub origin_refused_total: Count,
    /// Audio frames validated and handed to the producer (not resends acked from the dedup window).
    pub frames_in_total: Count,
    /// PCM bytes in those frames.
    pub bytes_in_total: Count,
    /// Acks sent to recorders, resends acked again included.
    pub acks_total: Count,
    /// Records Kafka acknowledged.
    pub records_produced_total: Count,
    /// Resent frames acked again from the dedup window instead of produced twice.
    pub duplicates_total: Count,
    /// Frames a resumed recording had in Kafka already (another relay stored them; their acks were lost), found
    /// there and put in the dedup window.
    pub resumed_frames_total: Count,
    /// Produce requests Kafka answered with offsets (one per batch).
    pub batches_total: Count,
    /// Produce requests that failed (and were sent again after a backoff).
    pub produce_retries_total: Count,
    /// Produce requests held back to stay under `kafka_max_bytes_per_s`.
    pub produce_paced_total: Count,
    /// Envelope bytes held in memory, not yet acked by Kafka.
    pub held_bytes: Level,
    /// Frames that waited because the memory budget was full.
    pub backpressure_total: Count,
    /// Time from a record entering the producer to Kafka's acknowledgement.
    pub produce_latency: Histogram,
    /// Time of each produce request that Kafka stored: rskafka's encoding and compression of the batch, the
    /// round trip, the broker's work. Kafka's (and its client's) share of a record's latency; the rest of
    /// `produce_latency` is the batch's linger and its wait behind the partition's request in flight.
    pub produce_request: Histogram,
    /// Time from the relay taking up a frame to its ack written to the recorder's socket: the recorder's ack
    /// latency as far as this process holds it (produce latency included; the network and the client's own
    /// reading not).
    pub ack_latency: Histogram,
    /// 1 when the relay can reach Kafka, the topic exists and no partition fails.
    pub kafka_up: Level,
    /// Feed subscribers connected now.
    pub feed_subscribers: Level,
    /// Records sent to feed subscribers.
    pub feed_delivered_total: Count,
    /// Live records a subscriber's task woke up for (of its partitions), delivered or filtered out.
    pub feed_considered_total: Count,
    /// Live records the hubs read the value of (classified): those someone here may want.
    pub feed_classified_total: Count,
    /// Records subscribers' own history reads (bounded reads included) fetched from Kafka.
    pub feed_history_records_total: Count,
    /// Their bytes (keys and values).
    pub feed_history_bytes_total: Count,
    feed_dropped: Family<Label, Count>,
    errors: Family<Label, Count>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        fn add<M: prometheus_client::registry::Metric + Clone>(r: &mut Registry, name: &str, help: &str, m: &M) -> M {
            r.register(name, help, m.clone());
            m.clone()
        }
        let r = &mut registry;
        let count = |r: &mut Registry, name: &str, help: &str| add(r, name, help, &Count::default());
        let level = |r: &mut Registry, name: &str, help: &str| add(r, name, help, &Level::default());
        let family = |r: &mut Registry, name: &str, help: &str, label: &'static str, values: &[&'static str]| {
            let family = add(r, name, help, &Family::<Label, Count>::default());
            for value in values {
                let _ = family.get_or_create(&[(label, *value)]);
            }
            family
        };
        let codes: Vec<&'static str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let refusals: Vec<&'static str> = Refused::ALL.iter().map(|r| r.label()).collect();
        let drops: Vec<&'static str> = FeedDrop::ALL.iter().map(|r| r.label()).collect();
        let histogram =
            |r: &mut Registry, name: &str, help: &str| add(r, name, help, &Histogram::new(LATENCY_BUCKETS_S));
        Self {
            connections_active: level(
                r,
                "soundline_connections_active",
                "WebSocket connections open now, on both endpoints (recorders and feed subscribers)",
            ),
            connections_total: count(
                r,
                "soundline_connections",
                "WebSocket connections upgraded, on both endpoints (recorders and feed subscribers), those then refused for their token included",
            ),
            refused: family(
                r,
                "soundline_connections_refused",
                "Connections refused before their WebSocket opened, by reason (a refused token is counted here too, though its WebSocket opens to say so)",
                "reason",
                &refusals,
            ),
            throttled: family(
                r,
                "soundline_throttled",
                "Pauses of connections that sent faster than a limit, by limit",
                "limit",
                &["messages", "bytes"],
            ),
            pings_sent_total: count(r, "soundline_pings_sent", "Keepalive pings sent to WebSockets"),
            origin_refused_total: count(
                r,
                "soundline_origin_refused",
                "WebSocket requests refused because their Origin is not allowed",
            ),
            frames_in_total: count(
                r,
                "soundline_frames_in",
                "Audio frames validated and handed to the producer (resends acked again from the dedup window are not counted)",
            ),
            bytes_in_total: count(
                r,
                "soundline_bytes_in",
                "PCM bytes in the frames counted by soundline_frames_in_total",
            ),
            acks_total: count(
                r,
                "soundline_acks",
                "Acks sent to recorders, each after Kafka stored the frame (resends acked again from the dedup window included)",
            ),
            records_produced_total: count(r, "soundline_records_produced", "Records Kafka acknowledged"),
            duplicates_total: count(
                r,
                "soundline_duplicates",
                "Resent frames acked again from the dedup window without producing them twice",
            ),
            resumed_frames_total: count(
                r,
                "soundline_resumed_frames",
                "Frames of resumed recordings found already stored in Kafka after the recorder's last ack (another relay produced them), acked instead of produced again",
            ),
            batches_total: count(
                r,
                "soundline_produce_batches",
                "Produce requests Kafka answered with offsets, one per batch (failed attempts are in soundline_produce_retries_total)",
            ),
            produce_retries_total: count(
                r,
                "soundline_produce_retries",
                "Produce requests that failed and were sent again after a backoff",
            ),
            produce_paced_total: count(
                r,
                "soundline_produce_paced",
                "Produce requests held back to stay under kafka_max_bytes_per_s",
            ),
            held_bytes: level(r, "soundline_held_bytes", "Envelope bytes held in memory until Kafka acks them"),
            backpressure_total: count(
                r,
                "soundline_backpressure",
                "Frames that waited because the memory budget was full (their recorder was not read meanwhile)",
            ),
            produce_latency: histogram(
                r,
                "soundline_produce_latency_seconds",
                "Time from a record entering the producer to Kafka's acknowledgement of its batch",
            ),
            produce_request: histogram(
                r,
                "soundline_produce_request_seconds",
                "Time of each produce request Kafka stored (rskafka's encoding and compression, the round trip, the broker)",
            ),
            ack_latency: histogram(
                r,
                "soundline_ack_seconds",
                "Time from the relay taking up a frame to its ack written to the recorder's socket",
            ),
            kafka_up: level(
                r,
                "soundline_kafka_up",
                "1 when Kafka is reachable, the topic exists and no partition fails",
            ),
            feed_subscribers: level(
                r,
                "soundline_feed_subscribers",
                "Feed subscribers connected now (bounded reads included)",
            ),
            feed_delivered_total: count(r, "soundline_feed_delivered", "Records sent to feed subscribers"),
            feed_considered_total: count(
                r,
                "soundline_feed_considered",
                "Live records feed subscribers woke up for, delivered or filtered out (a car's subscriber wakes for its car's records only)",
            ),
            feed_classified_total: count(
                r,
                "soundline_feed_classified",
                "Live records whose value the feed read to classify them: those keyed by a watched car, or all while someone watches everything (the rest of a read partition passes through unread)",
            ),
            feed_history_records_total: count(
                r,
                "soundline_feed_history_records",
                "Records the feed read from Kafka for subscribers' history and bounded reads (each subscriber's own fetches, every record of the partitions read, wanted or not)",
            ),
            feed_history_bytes_total: count(
                r,
                "soundline_feed_history_bytes",
                "Bytes of record keys and values read for subscribers' history and bounded reads",
            ),
            feed_dropped: family(
                r,
                "soundline_feed_dropped",
                "Feed records not delivered, by reason (lagged: per subscriber that fell behind; malformed: with feed_malformed=skip)",
                "reason",
                &drops,
            ),
            errors: family(
                r,
                "soundline_errors",
                "Errors sent to clients, by code (each followed by its close code)",
                "code",
                &codes,
            ),
            registry,
        }
    }
}

impl Metrics {
    /// Counts one error sent to a client.
    pub fn error(&self, code: ErrorCode) {
        self.errors.get_or_create(&[("code", code.as_str())]).inc();
    }

    /// How many errors of `code` were sent.
    pub fn errors(&self, code: ErrorCode) -> u64 {
        self.errors.get(&[("code", code.as_str())]).map_or(0, |c| c.get())
    }

    /// Counts a connection refused before it became a WebSocket.
    pub fn refused(&self, why: Refused) {
        self.refused.get_or_create(&[("reason", why.label())]).inc();
    }

    /// Counts a pause of a connection that went over a rate.
    pub fn throttled(&self, which: Throttled) {
        let limit = match which {
            Throttled::Messages => "messages",
            Throttled::Bytes => "bytes",
        };
        self.throttled.get_or_create(&[("limit", limit)]).inc();
    }

    /// Counts `n` feed records not delivered for `reason`.
    pub fn feed_dropped(&self, reason: FeedDrop, n: u64) {
        self.feed_dropped.get_or_create(&[("reason", reason.label())]).inc_by(n);
    }

    /// Records one produce latency.
    pub fn observe_latency(&self, d: Duration) {
        self.produce_latency.observe(d.as_secs_f64());
    }

    /// Records one frame's ack latency inside the relay.
    pub fn observe_ack(&self, d: Duration) {
        self.ack_latency.observe(d.as_secs_f64());
    }

    /// Records one produce request's time.
    pub fn observe_request(&self, d: Duration) {
        self.produce_request.observe(d.as_secs_f64());
    }

    /// The Prometheus text exposition, with what the feed's live partition readers report.
    pub fn render(&self, feed: &FeedReaders) -> String {
        let mut scrape = Registry::default();
        scrape.register(
            "soundline_kafka_throttled",
            "Produce responses in which Kafka asked the relay to slow down (a client quota): rskafka sends such a request again, which stores its records twice; keep kafka_max_bytes_per_s below the quota",
            ConstCounter::new(crate::kafka::throttled_total()),
        );
        scrape.register(
            "soundline_feed_fetches",
            "Fetch requests of the feed's live partition readers (two or three to get past a transaction marker)",
            ConstCounter::new(feed.fetches),
        );
        scrape.register(
            "soundline_feed_fetched_bytes",
            "Bytes of record keys and values the feed's live partition readers read from Kafka",
            ConstCounter::new(feed.fetched_bytes),
        );
        scrape.register(
            "soundline_feed_partition_readers",
            "Partitions the feed reads live now (those some subscriber needs, or needed within feed_reader_idle_s)",
            ConstGauge::new(feed.readers),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            scrape.register(
                "soundline_runtime_worker_threads",
                "Worker threads of the async runtime serving this relay (setting worker_threads)",
                ConstGauge::new(runtime.metrics().num_workers() as i64),
            );
        }
        let lag = Family::<Vec<(&'static str, String)>, Level>::default();
        for (topic, partition, behind) in &feed.lag {
            lag.get_or_create(&vec![("topic", topic.to_string()), ("partition", partition.to_string())]).set(*behind);
        }
        scrape.register(
            "soundline_consumer_lag",
            "Records between a live partition reader and the partition's end, per topic and partition read",
            lag,
        );
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &scrape);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe_latency(Duration::from_micros(500));
        m.observe_latency(Duration::from_millis(30));
        let text = m.render(&FeedReaders::default());
        assert!(text.contains("soundline_produce_latency_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("soundline_produce_latency_seconds_bucket{le=\"0.05\"} 2\n"), "{text}");
        assert!(text.contains("soundline_produce_latency_seconds_count 2\n"), "{text}");
        m.observe_request(Duration::from_millis(45));
        let text = m.render(&FeedReaders::default());
        assert!(text.contains("soundline_produce_request_seconds_bucket{le=\"0.04\"} 0\n"), "{text}");
        assert!(text.contains("soundline_produce_request_seconds_bucket{le=\"0.05\"} 1\n"), "{text}");
        assert!(text.contains("soundline_produce_request_seconds_count 1\n"), "{text}");
        m.observe_ack(Duration::from_millis(120));
        let text = m.render(&FeedReaders::default());
        assert!(text.contains("soundline_ack_seconds_bucket{le=\"0.1\"} 0\n"), "{text}");
        assert!(text.contains("soundline_ack_seconds_bucket{le=\"0.15\"} 1\n"), "{text}");
    }

    #[test]
    fn errors_are_labelled_by_code_and_every_code_is_there_from_the_start() {
        let m = Metrics::default();
        m.error(ErrorCode::BadFrame);
        let text = m.render(&FeedReaders::default());
        assert!(text.contains("soundline_errors_total{code=\"bad_frame\"} 1\n"), "{text}");
        assert_eq!(m.errors(ErrorCode::BadFrame), 1);
        for code in ErrorCode::ALL {
            assert!(text.contains(&format!("soundline_errors_total{{code=\"{}\"}} ", code.as_str())), "{code:?}");
        }
        for why in Refused::ALL {
            let line = format!("soundline_connections_refused_total{{reason=\"{}\"}} 0\n", why.label());
            assert!(text.contains(&line), "{line}");
        }
    }

    #[test]
    fn every_metric_has_help_and_a_type_and_the_readers_report_is_included() {
        let m = Metrics::default();
        m.frames_in_total.inc_by(3);
        m.held_bytes.inc_by(6_400);
        let feed = FeedReaders { lag: vec![("aicp-sound".into(), 2, 17)], fetches: 5, fetched_bytes: 900, readers: 1 };
        let text = m.render(&feed);
        for line in [
            "# HELP soundline_frames_in_total Audio frames validated and handed to the producer (resends acked again from the dedup window are not counted).",
            "# TYPE soundline_frames_in_total counter",
            "soundline_frames_in_total 3",
            "# TYPE soundline_held_bytes gauge",
            "soundline_held_bytes 6400",
            "soundline_feed_fetches_total 5",
            "soundline_feed_fetched_bytes_total 900",
            "soundline_feed_partition_readers 1",
            "soundline_consumer_lag{topic=\"aicp-sound\",partition=\"2\"} 17",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let samples = text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split(['{', ' ']).next().unwrap_or(""));
        for name in samples {
            let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            assert!(text.contains(&format!("# HELP {family} ")), "{name} has no help");
            assert!(text.contains(&format!("# TYPE {family} ")), "{name} has no type");
        }
    }
}
