//! The relay's configuration: one table of settings, three sources, one typed [`Config`].
//!
//! Sources, in rising precedence:
//! 1. the JSON config file (`--config FILE` or `SOUNDLINE_CONFIG`), in the existing uploader's format
//!    (`{"isDebug":..,"version":..,"kafka":{"urls":[{"host":..,"port":..}],"weight_topic":..,"uname":..,
//!    "upassword":..,"communication_protocol":..,"security_protocol":..,"sasl_mechanism":..}}`), so operators keep
//!    their file, extended with a `"relay"` object for the relay's own keys;
//! 2. environment variables `SOUNDLINE_*`;
//! 3. command-line flags.
//!
//! Every setting is a row of [`SETTINGS`]; the README's configuration table is checked against it by a test.
//! A wrong or missing value is one [`ConfigError`] line naming where the value came from (file key, variable or
//! flag) and what is expected; `main` prints it and exits with code 2. Kafka credentials come from the file or
//! the environment only, never from a flag (flags show up in `ps`), and never appear in logs: [`Secret`] prints
//! as `***`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use soundline_shared::envelope::Stamp;

/// One setting: its canonical key and where each source spells it.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Canonical key.
    pub key: &'static str,
    /// Dotted path in the JSON config file.
    pub file: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Command-line flag (without `--`), if any.
    pub flag: Option<&'static str>,
    /// Default, if any.
    pub default: Option<&'static str>,
    /// One line of help.
    pub help: &'static str,
}

const fn s(
    key: &'static str,
    file: &'static str,
    env: &'static str,
    flag: Option<&'static str>,
    default: Option<&'static str>,
    help: &'static str,
) -> Setting {
    Setting { key, file, env, flag, default, help }
}

/// Every setting the relay reads.
#[rustfmt::skip]
pub const SETTINGS: &[Setting] = &[
    s("listen", "relay.listen", "SOUNDLINE_LISTEN", Some("listen"), Some("127.0.0.1:8080"), "address:port the HTTP/WebSocket server binds"),
    s("static_dir", "relay.static_dir", "SOUNDLINE_STATIC_DIR", Some("static-dir"), None, "directory of the built web app (trunk's dist/) to serve at /"),
    s("debug", "isDebug", "SOUNDLINE_DEBUG", Some("debug"), Some("false"), "debug logging: one line per frame (size, topic, timestamp)"),
    s("log_json", "relay.log_json", "SOUNDLINE_LOG_JSON", Some("log-json"), Some("false"), "log as JSON lines instead of human-readable text"),
    s("brokers", "kafka.urls", "SOUNDLINE_KAFKA_BROKERS", Some("brokers"), None, "Kafka bootstrap brokers, host:port[,host:port...] (file: [{\"host\":..,\"port\":..}])"),
    s("topic", "kafka.weight_topic", "SOUNDLINE_TOPIC", Some("topic"), Some("aicp-sound"), "Kafka topic the envelopes are produced to"),
    s("security_protocol", "kafka.security_protocol", "SOUNDLINE_KAFKA_SECURITY_PROTOCOL", Some("security-protocol"), Some("PLAINTEXT"), "PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL"),
    s("sasl_mechanism", "kafka.sasl_mechanism", "SOUNDLINE_KAFKA_SASL_MECHANISM", Some("sasl-mechanism"), Some("PLAIN"), "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL_*)"),
    s("username", "kafka.uname", "SOUNDLINE_KAFKA_USERNAME", None, None, "SASL user name (file or environment only)"),
    s("password", "kafka.upassword", "SOUNDLINE_KAFKA_PASSWORD", None, None, "SASL password (file or environment only; or SOUNDLINE_KAFKA_PASSWORD_FILE)"),
    s("password_file", "relay.kafka_password_file", "SOUNDLINE_KAFKA_PASSWORD_FILE", None, None, "file whose first line is the SASL password"),
    s("ca_file", "relay.kafka_ca_file", "SOUNDLINE_KAFKA_CA_FILE", Some("kafka-ca-file"), None, "PEM file of CA certificates for SSL/SASL_SSL (default: the Mozilla roots)"),
    s("ver", "kafka.communication_protocol", "SOUNDLINE_VER", Some("ver"), Some("1.0"), "the envelope's \"ver\" string"),
    s("sys_type", "relay.sys_type", "SOUNDLINE_SYS_TYPE", None, Some("3"), "the envelope's \"sysType\""),
    s("sys_tag", "relay.sys_tag", "SOUNDLINE_SYS_TAG", None, Some("AICP_SOUND"), "the envelope's \"sysTag\""),
    s("create_topic", "relay.create_topic", "SOUNDLINE_CREATE_TOPIC", Some("create-topic"), Some("true"), "create the topic when it is missing (false: a missing topic is an error)"),
    s("partitions", "relay.partitions", "SOUNDLINE_PARTITIONS", Some("partitions"), Some("6"), "partitions of a topic the relay creates"),
    s("replication_factor", "relay.replication_factor", "SOUNDLINE_REPLICATION_FACTOR", Some("replication-factor"), Some("1"), "replication factor of a topic the relay creates"),
    s("compression", "relay.compression", "SOUNDLINE_COMPRESSION", Some("compression"), Some("none"), "record batch compression: none, gzip, lz4, snappy or zstd"),
    s("linger_ms", "relay.linger_ms", "SOUNDLINE_LINGER_MS", Some("linger-ms"), Some("5"), "how long a partition's batch waits for more records before it is sent"),
    s("batch_max_bytes", "relay.batch_max_bytes", "SOUNDLINE_BATCH_MAX_BYTES", None, Some("1000000"), "largest record batch sent in one produce request"),
    s("kafka_max_bytes_per_s", "relay.kafka_max_bytes_per_s", "SOUNDLINE_KAFKA_MAX_BYTES_PER_S", None, Some("0"), "record bytes the relay produces per second at most (0: no cap); set it below the broker's producer_byte_rate quota, divided by the relay replicas sharing it"),
    s("max_message_bytes", "relay.max_message_bytes", "SOUNDLINE_MAX_MESSAGE_BYTES", None, Some("1048588"), "the broker's/topic's max message size; larger envelopes are refused, never truncated"),
    s("memory_budget_bytes", "relay.memory_budget_bytes", "SOUNDLINE_MEMORY_BUDGET_BYTES", None, Some("268435456"), "bytes of envelopes held before Kafka acked them; when full, the relay stops reading recorders"),
    s("max_frame_ms", "relay.max_frame_ms", "SOUNDLINE_MAX_FRAME_MS", None, Some("2000"), "longest accepted audio frame, in ms of 16 kHz audio"),
    s("max_connections", "relay.max_connections", "SOUNDLINE_MAX_CONNECTIONS", None, Some("10000"), "WebSocket connections served at once; more are refused with HTTP 503"),
    s("allowed_origins", "relay.allowed_origins", "SOUNDLINE_ALLOWED_ORIGINS", Some("allowed-origins"), Some(""), "browser origins (scheme://host[:port]) besides the relay's own that may open its WebSockets, comma-separated; * for any"),
    s("dedup_window_frames", "relay.dedup_window_frames", "SOUNDLINE_DEDUP_WINDOW_FRAMES", None, Some("100000"), "frames remembered per process to ack a resend again instead of producing it twice (0: off)"),
    s("feed_topics", "relay.feed_topics", "SOUNDLINE_FEED_TOPICS", Some("feed-topics"), Some(""), "other topics /ws/feed may serve besides the audio topic, comma-separated (e.g. analysis results)"),
    s("feed_buffer_records", "relay.feed_buffer_records", "SOUNDLINE_FEED_BUFFER_RECORDS", None, Some("1024"), "live records a feed subscriber may fall behind before it is told it lagged"),
    s("feed_send_timeout_s", "relay.feed_send_timeout_s", "SOUNDLINE_FEED_SEND_TIMEOUT_S", None, Some("10"), "a feed subscriber that reads nothing for this long is disconnected (too_slow)"),
    s("feed_reader_idle_s", "relay.feed_reader_idle_s", "SOUNDLINE_FEED_READER_IDLE_S", None, Some("30"), "a partition's live reader stops when no feed subscriber has needed it for this long (a subscriber to one car needs only that car's partition)"),
    s("feed_malformed", "relay.feed_malformed", "SOUNDLINE_FEED_MALFORMED", None, Some("opaque"), "records neither envelope nor JSON: opaque (delivered as base64) or skip (counted, dropped)"),
    s("shutdown_timeout_s", "relay.shutdown_timeout_s", "SOUNDLINE_SHUTDOWN_TIMEOUT_S", None, Some("20"), "on SIGTERM, how long to wait for Kafka to ack what is in flight"),
    s("auth_tokens", "relay.auth_tokens", "SOUNDLINE_AUTH_TOKENS", None, None, "static bearer tokens, name:token[,name:token...] (file or environment only); any auth_* setting turns authentication on"),
    s("auth_tokens_file", "relay.auth_tokens_file", "SOUNDLINE_AUTH_TOKENS_FILE", Some("auth-tokens-file"), None, "file of static bearer tokens, one name:token per line (lines starting with # are comments)"),
    s("auth_jwt_secret", "relay.auth_jwt_secret", "SOUNDLINE_AUTH_JWT_SECRET", None, None, "HS256 key of JWT bearer tokens (exp required, sub = the identity in logs; file or environment only)"),
    s("auth_jwt_secret_file", "relay.auth_jwt_secret_file", "SOUNDLINE_AUTH_JWT_SECRET_FILE", Some("auth-jwt-secret-file"), None, "file whose first line is the HS256 key"),
    s("max_connections_per_client", "relay.max_connections_per_client", "SOUNDLINE_MAX_CONNECTIONS_PER_CLIENT", None, Some("200"), "WebSocket connections one client address may hold at once; more are refused with HTTP 429"),
    s("client_ip_header", "relay.client_ip_header", "SOUNDLINE_CLIENT_IP_HEADER", Some("client-ip-header"), None, "header in which the ingress in front names the client (e.g. X-Forwarded-For: its last address counts); set it only when every connection comes through that ingress; unset: the TCP peer"),
    s("max_messages_per_s", "relay.max_messages_per_s", "SOUNDLINE_MAX_MESSAGES_PER_S", None, Some("200"), "WebSocket messages (frames, pings, text) one connection may send per second; faster senders are throttled"),
    s("max_bytes_per_s", "relay.max_bytes_per_s", "SOUNDLINE_MAX_BYTES_PER_S", None, Some("1048576"), "bytes one connection may send per second (32x real time, room for resends); faster senders are throttled"),
    s("hello_timeout_s", "relay.hello_timeout_s", "SOUNDLINE_HELLO_TIMEOUT_S", None, Some("10"), "time a new connection has for each step: TLS handshake, HTTP request headers, then the hello or subscribe"),
    s("idle_timeout_s", "relay.idle_timeout_s", "SOUNDLINE_IDLE_TIMEOUT_S", None, Some("60"), "a connection that sends nothing, not even a pong, for this long is closed (idle_timeout, 4015)"),
    s("max_header_bytes", "relay.max_header_bytes", "SOUNDLINE_MAX_HEADER_BYTES", None, Some("16384"), "request line and headers of one HTTP request, in bytes; larger requests get 431 (a browser sends a few KiB, a JWT is about 1 KiB)"),
    s("ping_interval_s", "relay.ping_interval_s", "SOUNDLINE_PING_INTERVAL_S", None, Some("20"), "how often the relay pings each WebSocket (browsers answer by themselves); at most half of idle_timeout_s"),
    s("tls_cert_file", "relay.tls_cert_file", "SOUNDLINE_TLS_CERT_FILE", Some("tls-cert-file"), None, "PEM certificate chain: the relay serves HTTPS/WSS itself (with tls_key_file); unset: plain HTTP, e.g. behind an ingress"),
    s("tls_key_file", "relay.tls_key_file", "SOUNDLINE_TLS_KEY_FILE", Some("tls-key-file"), None, "PEM private key of tls_cert_file"),
];

/// A configuration value that is wrong or missing: one line, naming where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    /// Where the value came from: `config file key kafka.weight_topic`, `SOUNDLINE_TOPIC`, `--topic`, ...
    pub origin: String,
    /// What is wrong and what is expected.
    pub message: String,
}

fn err(origin: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { origin: origin.into(), message: message.into() }
}

/// A secret value: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// `security_protocol`, as Kafka's clients spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no SASL.
    Plaintext,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
    /// TLS without SASL.
    Ssl,
}

impl SecurityProtocol {
    /// Whether the connection uses TLS.
    pub fn tls(self) -> bool {
        matches!(self, Self::SaslSsl | Self::Ssl)
    }
    /// Whether the connection authenticates with SASL.
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// `sasl_mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// PLAIN.
    Plain,
    /// SCRAM-SHA-256.
    ScramSha256,
    /// SCRAM-SHA-512.
    ScramSha512,
}

/// Record batch compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// none.
    None,
    /// gzip.
    Gzip,
    /// lz4.
    Lz4,
    /// snappy.
    Snappy,
    /// zstd.
    Zstd,
}

/// How the relay reaches Kafka.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// Topic for envelopes.
    pub topic: String,
    /// Transport security.
    pub security: SecurityProtocol,
    /// SASL mechanism, used when `security.sasl()`.
    pub sasl_mechanism: SaslMechanism,
    /// SASL credentials, required when `security.sasl()`.
    pub credentials: Option<(String, Secret)>,
    /// CA certificates for TLS (PEM); `None`: the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Create the topic when missing.
    pub create_topic: bool,
    /// Partitions of a created topic.
    pub partitions: i32,
    /// Replication factor of a created topic.
    pub replication_factor: i16,
    /// Record batch compression.
    pub compression: Compression,
    /// Batch linger.
    pub linger: Duration,
    /// Largest batch in one produce request, bytes.
    pub batch_max_bytes: usize,
    /// The broker's max message size, bytes.
    pub max_message_bytes: usize,
    /// Record bytes produced per second at most (`None`: no cap). Kept below a broker quota, it spares the relay
    /// Kafka's throttling, which rskafka answers by sending the throttled request again (duplicates).
    pub max_bytes_per_s: Option<u64>,
}

/// The live feed (`/ws/feed`).
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// Topics served besides the audio topic.
    pub topics: Vec<String>,
    /// Live records a subscriber may fall behind.
    pub buffer_records: usize,
    /// Longest a send to a subscriber may take.
    pub send_timeout: Duration,
    /// How long a partition reader nobody needs keeps running.
    pub reader_idle: Duration,
    /// Skip (count) records that are neither envelopes nor JSON, instead of delivering them as opaque.
    pub skip_malformed: bool,
}

/// Who may connect ([`crate::doors::auth`]). Empty: authentication is off.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Static bearer tokens and the name each stands for.
    pub tokens: Vec<(String, Secret)>,
    /// HS256 key of JWT bearer tokens.
    pub jwt_secret: Option<Secret>,
}

impl AuthConfig {
    /// Whether connections must bring a token.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || self.jwt_secret.is_some()
    }
}

/// Limits on each client and connection ([`crate::doors::limits`]).
#[derive(Debug, Clone)]
pub struct Limits {
    /// WebSocket connections per client address.
    pub connections_per_client: usize,
    /// Header naming the client's address (set by an ingress), lower case.
    pub client_ip_header: Option<String>,
    /// Messages per second per connection.
    pub messages_per_s: u32,
    /// Bytes per second per connection.
    pub bytes_per_s: u64,
    /// Time for each step of a new connection (TLS, HTTP headers, hello/subscribe).
    pub hello_timeout: Duration,
    /// Silence after which a connection is closed.
    pub idle_timeout: Duration,
    /// Interval of the relay's pings.
    pub ping_interval: Duration,
    /// Bytes of one request's line and headers.
    pub max_header_bytes: usize,
}

/// The relay's own TLS certificate and key, when it terminates TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The relay's whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bind address.
    pub listen: SocketAddr,
    /// Built web app to serve at `/`.
    pub static_dir: Option<PathBuf>,
    /// Debug logging.
    pub debug: bool,
    /// JSON logs.
    pub log_json: bool,
    /// Kafka.
    pub kafka: KafkaConfig,
    /// `ver`, `sysType`, `sysTag` of every envelope.
    pub stamp: Stamp,
    /// Bytes of envelopes held before Kafka acked them.
    pub memory_budget_bytes: u64,
    /// Largest frame, in samples.
    pub max_frame_samples: u32,
    /// WebSocket connections at once.
    pub max_connections: usize,
    /// SIGTERM grace period.
    pub shutdown_timeout: Duration,
    /// The live feed.
    pub feed: FeedConfig,
    /// Frames remembered to recognise resends.
    pub dedup_window_frames: usize,
    /// Origins besides the relay's own allowed to open WebSockets (`*`: any).
    pub allowed_origins: Vec<String>,
    /// Authentication.
    pub auth: AuthConfig,
    /// Per-client and per-connection limits.
    pub limits: Limits,
    /// TLS termination; `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
}

/// Raw values by setting key, each with a description of its origin.
#[derive(Debug, Default, Clone)]
pub struct RawConfig {
    values: HashMap<&'static str, (String, String)>,
}

impl RawConfig {
    /// Sets `key` from `origin` (later calls win: apply sources in rising precedence).
    pub fn set(&mut self, key: &'static str, origin: String, value: String) {
        self.values.insert(key, (origin, value));
    }

    /// Reads the JSON config file's text.
    ///
    /// # Errors
    ///
    /// Not JSON, not an object, a known key with the wrong JSON type, or an unknown key in the `relay` object.
    pub fn apply_file(&mut self, path: &str, text: &str) -> Result<(), ConfigError> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| err(format!("config file {path}"), format!("not valid JSON: {e}")))?;
        if !root.is_object() {
            return Err(err(format!("config file {path}"), "must be a JSON object"));
        }
        if let Some(relay) = root.get("relay") {
            let Some(relay) = relay.as_object() else {
                return Err(err(format!("config file {path}: key relay"), "must be an object"));
            };
            for k in relay.keys() {
                let dotted = format!("relay.{k}");
                if !SETTINGS.iter().any(|s| s.file == dotted) {
                    return Err(err(
                        format!("config file {path}: key {dotted}"),
                        "is not a relay setting (see the README's configuration table)",
                    ));
                }
            }
        }
        for setting in SETTINGS {
            let mut node = Some(&root);
            for part in setting.file.split('.') {
                node = node.and_then(|n| n.get(part));
            }
            let Some(value) = node else { continue };
            let origin = format!("config file {path}: key {}", setting.file);
            let text =
                if setting.key == "brokers" { urls_to_text(&origin, value)? } else { scalar_text(&origin, value)? };
            if let Some(text) = text {
                self.set(setting.key, origin, text);
            }
        }
        Ok(())
    }

    /// Reads `SOUNDLINE_*` variables through `get` (`std::env::var` in production).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        for setting in SETTINGS {
            if let Some(v) = get(setting.env) {
                self.set(setting.key, setting.env.to_owned(), v);
            }
        }
    }

    fn get(&self, key: &str) -> Option<(&str, &str)> {
        self.values.get(key).map(|(o, v)| (o.as_str(), v.as_str())).or_else(|| {
            let setting = SETTINGS.iter().find(|s| s.key == key)?;
            setting.default.map(|d| ("default", d))
        })
    }

    fn parse<T>(&self, key: &str, expected: &str, f: impl Fn(&str) -> Option<T>) -> Result<T, ConfigError> {
        let Some((origin, raw)) = self.get(key) else {
            let s = SETTINGS.iter().find(|s| s.key == key);
            let how = s.map(|s| format!("set {} or config file key {}", s.env, s.file)).unwrap_or_default();
            return Err(err(key, format!("is required: {how}")));
        };
        f(raw.trim()).ok_or_else(|| err(origin, format!("expected {expected}, got {raw:?}")))
    }

    fn optional<T>(&self, key: &str, expected: &str, f: impl Fn(&str) -> Option<T>) -> Result<Option<T>, ConfigError> {
        if self.get(key).is_none() { Ok(None) } else { self.parse(key, expected, f).map(Some) }
    }

    /// Turns the raw values into a [`Config`], checking each.
    ///
    /// # Errors
    ///
    /// The first wrong or missing value.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let boolean = |v: &str| match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => None,
        };
        let brokers = self.parse("brokers", "host:port[,host:port...]", |v| {
            let list: Vec<String> = v.split(',').map(|b| b.trim().to_owned()).collect();
            list.iter().all(|b| valid_host_port(b)).then_some(list)
        })?;
        let security = self.parse("security_protocol", "PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL", |v| {
            match v.to_ascii_uppercase().as_str() {
                "PLAINTEXT" => Some(SecurityProtocol::Plaintext),
                "SASL_PLAINTEXT" => Some(SecurityProtocol::SaslPlaintext),
                "SASL_SSL" => Some(SecurityProtocol::SaslSsl),
                "SSL" => Some(SecurityProtocol::Ssl),
                _ => None,
            }
        })?;
        let sasl_mechanism = self.parse("sasl_mechanism", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", |v| {
            match v.to_ascii_uppercase().as_str() {
                "PLAIN" => Some(SaslMechanism::Plain),
                "SCRAM-SHA-256" => Some(SaslMechanism::ScramSha256),
                "SCRAM-SHA-512" => Some(SaslMechanism::ScramSha512),
                _ => None,
            }
        })?;
        let credentials = if security.sasl() {
            let user = self.parse("username", "a SASL user name", |v| (!v.is_empty()).then(|| v.to_owned()))?;
            let password = match self.optional("password_file", "a readable file path", |v| Some(PathBuf::from(v)))? {
                Some(path) => {
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        err("SOUNDLINE_KAFKA_PASSWORD_FILE", format!("cannot read {}: {e}", path.display()))
                    })?;
                    text.lines().next().unwrap_or_default().to_owned()
                }
                None => self.parse("password", "a SASL password", |v| Some(v.to_owned()))?,
            };
            Some((user, Secret(password)))
        } else {
            None
        };
        let ca_file = self.optional("ca_file", "a PEM file path", |v| Some(PathBuf::from(v)))?;
        if let Some(path) = &ca_file
            && !path.is_file()
        {
            let origin = self.get("ca_file").map(|(o, _)| o.to_owned()).unwrap_or_default();
            return Err(err(origin, format!("{} is not a readable file", path.display())));
        }
        let compression =
            self.parse("compression", "none, gzip, lz4, snappy or zstd", |v| match v.to_ascii_lowercase().as_str() {
                "none" => Some(Compression::None),
                "gzip" => Some(Compression::Gzip),
                "lz4" => Some(Compression::Lz4),
                "snappy" => Some(Compression::Snappy),
                "zstd" => Some(Compression::Zstd),
                _ => None,
            })?;
        let max_message_bytes = self.parse("max_message_bytes", "a byte count of at least 65536", |v| {
            v.parse().ok().filter(|n| *n >= 65_536)
        })?;
        let batch_max_bytes: usize =
            self.parse("batch_max_bytes", "a byte count of at least 1024", |v| v.parse().ok().filter(|n| *n >= 1024))?;
        let max_frame_ms: u32 = self.parse("max_frame_ms", "milliseconds between 10 and 10000", |v| {
            v.parse().ok().filter(|n| (10..=10_000).contains(n))
        })?;
        let max_bytes_per_s =
            self.parse("kafka_max_bytes_per_s", "0 (no cap) or a byte rate of at least 16384", |v| {
                v.parse().ok().filter(|n| *n == 0 || *n >= 16_384).map(|n: u64| (n > 0).then_some(n))
            })?;
        let kafka =
            KafkaConfig {
                brokers,
                topic: self.parse("topic", "a Kafka topic name (1-249 of [a-zA-Z0-9._-])", |v| {
                    valid_topic(v).then(|| v.to_owned())
                })?,
                security,
                sasl_mechanism,
                credentials,
                ca_file,
                create_topic: self.parse("create_topic", "true or false", boolean)?,
                partitions: self.parse("partitions", "a partition count between 1 and 10000", |v| {
                    v.parse().ok().filter(|n| (1..=10_000).contains(n))
                })?,
                replication_factor: self.parse("replication_factor", "a replication factor between 1 and 32", |v| {
                    v.parse().ok().filter(|n| (1..=32).contains(n))
                })?,
                compression,
                linger: Duration::from_millis(self.parse("linger_ms", "milliseconds between 0 and 10000", |v| {
                    v.parse().ok().filter(|n| *n <= 10_000)
                })?),
                // A batch is one Kafka message as far as message.max.bytes goes: never build one the broker refuses.
                // Under a pace, a batch is at most one second's worth, so that no single request bursts past a quota.
                batch_max_bytes: batch_max_bytes
                    .min(max_message_bytes)
                    .min(max_bytes_per_s.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))),
                max_message_bytes,
                max_bytes_per_s,
            };
        let auth = self.auth()?;
        let limits = self.limits()?;
        let tls = match (
            self.optional("tls_cert_file", "a PEM file path", |v| Some(PathBuf::from(v)))?,
            self.optional("tls_key_file", "a PEM file path", |v| Some(PathBuf::from(v)))?,
        ) {
            (Some(cert), Some(key)) => {
                for (k, path) in [("tls_cert_file", &cert), ("tls_key_file", &key)] {
                    if !path.is_file() {
                        return Err(err(self.origin(k), format!("{} is not a readable file", path.display())));
                    }
                }
                Some(TlsFiles { cert, key })
            }
            (None, None) => None,
            (Some(_), None) => return Err(err(self.origin("tls_cert_file"), "is set without tls_key_file: set both")),
            (None, Some(_)) => return Err(err(self.origin("tls_key_file"), "is set without tls_cert_file: set both")),
        };
        let stamp = Stamp {
            ver: self.parse("ver", "a version string", |v| Some(v.to_owned()))?,
            sys_type: self.parse("sys_type", "an integer", |v| v.parse().ok())?,
            sys_tag: self.parse("sys_tag", "a non-empty tag", |v| (!v.is_empty()).then(|| v.to_owned()))?,
        };
        Ok(Config {
            listen: self.parse("listen", "address:port, e.g. 0.0.0.0:8080", |v| v.parse().ok())?,
            static_dir: self.optional("static_dir", "a directory", |v| Some(PathBuf::from(v)))?,
            debug: self.parse("debug", "true or false", boolean)?,
            log_json: self.parse("log_json", "true or false", boolean)?,
            kafka,
            stamp,
            memory_budget_bytes: self.parse("memory_budget_bytes", "a byte count of at least 1048576", |v| {
                v.parse().ok().filter(|n| *n >= 1 << 20)
            })?,
            max_frame_samples: max_frame_ms * (soundline_shared::SAMPLE_RATE_HZ / 1000),
            max_connections: self.parse("max_connections", "a count between 1 and 1000000", |v| {
                v.parse().ok().filter(|n| (1..=1_000_000).contains(n))
            })?,
            shutdown_timeout: Duration::from_secs(self.parse(
                "shutdown_timeout_s",
                "seconds between 1 and 600",
                |v| v.parse().ok().filter(|n| (1..=600).contains(n)),
            )?),
            allowed_origins: self.parse(
                "allowed_origins",
                "origins like https://host[:port], separated by commas, or *",
                |v| {
                    let list: Vec<String> = v
                        .split(',')
                        .map(|o| o.trim().trim_end_matches('/').to_owned())
                        .filter(|o| !o.is_empty())
                        .collect();
                    list.iter()
                        .all(|o| o == "*" || o.starts_with("http://") || o.starts_with("https://"))
                        .then_some(list)
                },
            )?,
            auth,
            limits,
            tls,
            dedup_window_frames: self.parse("dedup_window_frames", "a frame count between 0 and 10000000", |v| {
                v.parse().ok().filter(|n| *n <= 10_000_000)
            })?,
            feed: FeedConfig {
                topics: self.parse("feed_topics", "topic names separated by commas", |v| {
                    let list: Vec<String> =
                        v.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect();
                    list.iter().all(|t| valid_topic(t)).then_some(list)
                })?,
                buffer_records: self.parse("feed_buffer_records", "a record count between 16 and 1000000", |v| {
                    v.parse().ok().filter(|n| (16..=1_000_000).contains(n))
                })?,
                send_timeout: Duration::from_secs(self.parse(
                    "feed_send_timeout_s",
                    "seconds between 1 and 600",
                    |v| v.parse().ok().filter(|n| (1..=600).contains(n)),
                )?),
                reader_idle: Duration::from_secs(self.parse(
                    "feed_reader_idle_s",
                    "seconds between 1 and 3600",
                    |v| v.parse().ok().filter(|n| (1..=3600).contains(n)),
                )?),
                skip_malformed: self.parse("feed_malformed", "opaque or skip", |v| match v {
                    "opaque" => Some(false),
                    "skip" => Some(true),
                    _ => None,
                })?,
            },
        })
    }
}

impl RawConfig {
    fn origin(&self, key: &str) -> String {
        self.get(key).map(|(o, _)| o.to_owned()).unwrap_or_else(|| key.to_owned())
    }

    /// A file's text, or a one-line error naming the setting that named it.
    fn read_file(&self, key: &str) -> Result<Option<String>, ConfigError> {
        let Some(path) = self.optional(key, "a file path", |v| (!v.is_empty()).then(|| PathBuf::from(v)))? else {
            return Ok(None);
        };
        std::fs::read_to_string(&path)
            .map(Some)
            .map_err(|e| err(self.origin(key), format!("cannot read {}: {e}", path.display())))
    }

    fn auth(&self) -> Result<AuthConfig, ConfigError> {
        let mut tokens = Vec::new();
        if let Some((origin, list)) = self.get("auth_tokens") {
            for (i, entry) in list.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
                tokens.push(static_token(entry).map_err(|m| err(format!("{origin} (entry {})", i + 1), m))?);
            }
        }
        if let Some(text) = self.read_file("auth_tokens_file")? {
            let origin = self.origin("auth_tokens_file");
            for (n, line) in text.lines().enumerate() {
                // `#` may be part of a token: only a line that starts with it is a comment.
                let line = line.trim();
                if !line.is_empty() && !line.starts_with('#') {
                    tokens.push(static_token(line).map_err(|m| err(format!("{origin} line {}", n + 1), m))?);
                }
            }
        }
        let jwt_secret = match self.read_file("auth_jwt_secret_file")? {
            Some(text) => Some(text.lines().next().unwrap_or_default().trim_end().to_owned()),
            None => self.get("auth_jwt_secret").map(|(_, v)| v.to_owned()),
        };
        if let Some(key) = &jwt_secret
            && key.len() < 32
        {
            let origin = if self.get("auth_jwt_secret_file").is_some() {
                self.origin("auth_jwt_secret_file")
            } else {
                self.origin("auth_jwt_secret")
            };
            return Err(err(origin, format!("an HS256 key must be at least 32 bytes, got {}", key.len())));
        }
        Ok(AuthConfig { tokens, jwt_secret: jwt_secret.map(Secret) })
    }

    fn limits(&self) -> Result<Limits, ConfigError> {
        let seconds = |key: &str, max: u64| {
            self.parse(key, &format!("seconds between 1 and {max}"), |v| {
                v.parse().ok().filter(|n| (1..=max).contains(n)).map(Duration::from_secs)
            })
        };
        let client_ip_header = self.optional("client_ip_header", "an HTTP header name like X-Forwarded-For", |v| {
            axum::http::HeaderName::from_bytes(v.as_bytes()).ok().map(|h| h.as_str().to_owned())
        })?;
        let (idle_timeout, ping_interval) = (seconds("idle_timeout_s", 3600)?, seconds("ping_interval_s", 3600)?);
        if ping_interval * 2 > idle_timeout {
            return Err(err(
                self.origin("ping_interval_s"),
                format!(
                    "must be at most half of idle_timeout_s ({} s), or clients that answer every ping are cut off as idle",
                    idle_timeout.as_secs()
                ),
            ));
        }
        Ok(Limits {
            connections_per_client: self.parse("max_connections_per_client", "a count between 1 and 1000000", |v| {
                v.parse().ok().filter(|n| (1..=1_000_000).contains(n))
            })?,
            client_ip_header,
            messages_per_s: self.parse("max_messages_per_s", "a rate between 1 and 1000000", |v| {
                v.parse().ok().filter(|n| (1..=1_000_000).contains(n))
            })?,
            bytes_per_s: self.parse("max_bytes_per_s", "a rate of at least 65536 bytes/s", |v| {
                v.parse().ok().filter(|n| *n >= 65_536)
            })?,
            hello_timeout: seconds("hello_timeout_s", 300)?,
            idle_timeout,
            ping_interval,
            max_header_bytes: self.parse("max_header_bytes", "a size between 4096 and 1048576 bytes", |v| {
                v.parse().ok().filter(|n| (4096..=1_048_576).contains(n))
            })?,
        })
    }
}

/// Characters of a bearer token: RFC 7230's `tchar` less `:` (tokens travel as a WebSocket subprotocol
/// `bearer.<token>`, which must be a `token`).
pub fn valid_token_text(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn static_token(entry: &str) -> Result<(String, Secret), String> {
    let Some((name, token)) = entry.rsplit_once(':') else {
        return Err("expected name:token".into());
    };
    let (name, token) = (name.trim(), token.trim());
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err("the name before ':' must be non-empty, without spaces".into());
    }
    if token.len() < 16 || !valid_token_text(token) {
        return Err(format!("the token of {name} must be at least 16 characters of A-Z a-z 0-9 and !#$%&'*+-.^_`|~"));
    }
    Ok((name.to_owned(), Secret(token.to_owned())))
}

fn scalar_text(origin: &str, value: &Value) -> Result<Option<String>, ConfigError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Array(_) | Value::Object(_) => Err(err(origin, "expected a string, number or boolean")),
    }
}

fn urls_to_text(origin: &str, value: &Value) -> Result<Option<String>, ConfigError> {
    let Some(items) = value.as_array() else {
        return Err(err(origin, "expected a list like [{\"host\":\"kafka-1\",\"port\":9092}]"));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let host = item.get("host").and_then(Value::as_str).filter(|h| !h.is_empty());
        let port = item.get("port").and_then(|p| p.as_u64().or_else(|| p.as_str().and_then(|s| s.parse().ok())));
        match (host, port) {
            (Some(h), Some(p)) if (1..=65_535).contains(&p) => out.push(format!("{h}:{p}")),
            _ => return Err(err(format!("{origin}[{i}]"), "expected {\"host\": \"name\", \"port\": 1-65535}")),
        }
    }
    if out.is_empty() {
        return Err(err(origin, "lists no broker"));
    }
    Ok(Some(out.join(",")))
}

fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

fn valid_topic(s: &str) -> bool {
    (1..=249).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEGACY: &str = r#"{"isDebug":false,"version":"2.3.1","kafka":{"urls":[{"host":"kafka-1","port":9092},{"host":"kafka-2","port":"9093"}],
        "weight_topic":"aicp_sound_topic","uname":"alice","upassword":"s3cret","communication_protocol":"1.2",
        "security_protocol":"SASL_PLAINTEXT","sasl_mechanism":"SCRAM-SHA-512"}}"#;

    fn from(file: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::default();
        if let Some(text) = file {
            raw.apply_file("relay.json", text)?;
        }
        raw.apply_env(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()));
        raw.resolve()
    }

    #[test]
    fn the_existing_uploaders_file_configures_the_relay() {
        let c = from(Some(LEGACY), &[]).expect("valid");
        assert_eq!(c.kafka.brokers, ["kafka-1:9092", "kafka-2:9093"]);
        assert_eq!(c.kafka.topic, "aicp_sound_topic");
        assert_eq!(c.kafka.security, SecurityProtocol::SaslPlaintext);
        assert_eq!(c.kafka.sasl_mechanism, SaslMechanism::ScramSha512);
        let (user, password) = c.kafka.credentials.expect("credentials");
        assert_eq!((user.as_str(), password.expose()), ("alice", "s3cret"));
        assert_eq!(c.stamp.ver, "1.2");
        assert_eq!(c.stamp.sys_tag, "AICP_SOUND");
        assert_eq!(c.stamp.sys_type, 3);
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = from(Some(LEGACY), &[("SOUNDLINE_TOPIC", "other"), ("SOUNDLINE_KAFKA_BROKERS", "k:1")]).expect("valid");
        assert_eq!(c.kafka.topic, "other");
        assert_eq!(c.kafka.brokers, ["k:1"]);
    }

    #[test]
    fn missing_brokers_name_where_to_set_them() {
        let e = from(None, &[]).unwrap_err();
        assert_eq!(e.to_string(), "brokers: is required: set SOUNDLINE_KAFKA_BROKERS or config file key kafka.urls");
    }

    #[test]
    fn a_wrong_value_names_its_origin_and_what_is_expected() {
        let e = from(None, &[("SOUNDLINE_KAFKA_BROKERS", "k:1"), ("SOUNDLINE_LINGER_MS", "soon")]).unwrap_err();
        assert_eq!(e.to_string(), "SOUNDLINE_LINGER_MS: expected milliseconds between 0 and 10000, got \"soon\"");
        let e = from(Some(r#"{"kafka":{"urls":[{"host":"k"}]}}"#), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config file relay.json: key kafka.urls[0]: expected {\"host\": \"name\", \"port\": 1-65535}"
        );
        let e = from(Some(r#"{"kafka":{"urls":[{"host":"k","port":1}]},"relay":{"lingr_ms":3}}"#), &[]).unwrap_err();
        assert!(e.to_string().contains("key relay.lingr_ms: is not a relay setting"), "{e}");
        let e = from(Some("{not json"), &[]).unwrap_err();
        assert!(e.to_string().starts_with("config file relay.json: not valid JSON"), "{e}");
    }

    #[test]
    fn the_kafka_rate_cap_is_off_by_default_and_checked() {
        let k = [("SOUNDLINE_KAFKA_BROKERS", "k:1")];
        assert_eq!(from(None, &k).expect("valid").kafka.max_bytes_per_s, None);
        let c = from(None, &[k[0], ("SOUNDLINE_KAFKA_MAX_BYTES_PER_S", "49152")]).expect("valid");
        assert_eq!(c.kafka.max_bytes_per_s, Some(49_152));
        let e = from(None, &[k[0], ("SOUNDLINE_KAFKA_MAX_BYTES_PER_S", "100")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SOUNDLINE_KAFKA_MAX_BYTES_PER_S: expected 0 (no cap) or a byte rate of at least 16384, got \"100\""
        );
    }

    #[test]
    fn sasl_without_credentials_is_an_error() {
        let e = from(None, &[("SOUNDLINE_KAFKA_BROKERS", "k:1"), ("SOUNDLINE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")])
            .unwrap_err();
        assert_eq!(e.origin, "username");
    }

    #[test]
    fn secrets_never_print() {
        let c = from(Some(LEGACY), &[]).expect("valid");
        let printed = format!("{c:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("***"));
    }

    #[test]
    fn batches_never_exceed_the_message_size() {
        let c = from(None, &[("SOUNDLINE_KAFKA_BROKERS", "k:1"), ("SOUNDLINE_MAX_MESSAGE_BYTES", "100000")])
            .expect("valid");
        assert_eq!(c.kafka.batch_max_bytes, 100_000);
    }

    #[test]
    fn the_readme_documents_every_setting() {
        let readme = include_str!("../../README.md");
        for s in SETTINGS {
            let row = format!("| {} | `{}` | `{}` |", s.key, s.file, s.env);
            assert!(readme.contains(&row), "README's configuration table lacks {row}");
        }
    }

    #[test]
    fn every_setting_has_a_distinct_key_variable_and_flag() {
        let (mut keys, mut envs, mut files, mut flags) = Default::default();
        let fresh = |set: &mut std::collections::HashSet<&'static str>, v| set.insert(v);
        for s in SETTINGS {
            assert!(
                fresh(&mut keys, s.key) && fresh(&mut envs, s.env) && fresh(&mut files, s.file),
                "{} repeats",
                s.key
            );
            assert!(s.env.starts_with("SOUNDLINE_"));
            if let Some(f) = s.flag {
                assert!(fresh(&mut flags, f), "flag {f} repeats");
            }
        }
        for secret in ["username", "password", "password_file", "auth_tokens", "auth_jwt_secret"] {
            let s = SETTINGS.iter().find(|s| s.key == secret).expect("exists");
            assert!(s.flag.is_none(), "{secret} must not be settable on the command line");
        }
    }
}
