//! The relay's configuration: three sources, one typed [`Config`].
//!
//! Sources, in rising precedence:
//! 1. the JSON config file (`--config FILE` or `SOUNDLINE_CONFIG`), in the existing uploader's format, so
//!    operators keep their file, extended with a `"relay"` object for the relay's own keys ([`file`]);
//! 2. environment variables `SOUNDLINE_*`;
//! 3. command-line flags.
//!
//! Every setting is declared once, in [`settings`] (clap-derive: flags, variables, help, defaults); `--help` and
//! the README's configuration table come from there. [`RawConfig`] gathers the texts with where each came from,
//! [`RawConfig::resolve`] checks them into a [`Config`]. A wrong or missing value is one [`ConfigError`] line
//! naming where the value came from (file key, variable or flag) and what is expected; `main` prints it and exits
//! with code 2. Kafka credentials come from the file or the environment only, never from a flag (flags show up
//! in `ps`), and never appear in logs: [`Secret`] prints as `***`.

pub mod file;
pub mod settings;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::ArgMatches;
use soundline_shared::envelope::Stamp;

pub use settings::{SETTINGS, Setting};

/// A configuration value that is wrong or missing: one line, naming where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    /// Where the value came from: `config file key kafka.weight_topic`, `SOUNDLINE_TOPIC`, `--topic`, ...
    pub origin: String,
    /// What is wrong and what is expected.
    pub message: String,
}

pub(crate) fn err(origin: impl Into<String>, message: impl Into<String>) -> ConfigError {
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
    /// Replication factor of a created topic; `None`: the cluster's `default.replication.factor`.
    pub replication_factor: Option<i16>,
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
    /// How long one produce, fetch or list-offsets request may go unanswered before the relay reconnects.
    pub request_timeout: Duration,
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
    /// Worker threads of the async runtime; `None`: one per core.
    pub worker_threads: Option<usize>,
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
    values: HashMap<String, (String, String)>,
}

impl RawConfig {
    /// Sets `key` from `origin` (later calls win: apply sources in rising precedence).
    pub fn set(&mut self, key: &str, origin: String, value: String) {
        self.values.insert(key.to_owned(), (origin, value));
    }

    /// Reads the JSON config file's text ([`file::UploaderFile`]).
    ///
    /// # Errors
    ///
    /// Not JSON, not an object, a known key with the wrong JSON type, or an unknown key in the `relay` object.
    pub fn apply_file(&mut self, path: &str, text: &str) -> Result<(), ConfigError> {
        let known: Vec<&str> = SETTINGS.iter().map(|s| s.key.as_str()).collect();
        for (key, origin, text) in file::UploaderFile::parse(path, text)?.values(path, &known)? {
            self.set(&key, origin, text);
        }
        Ok(())
    }

    /// Reads what clap parsed: the flags and `SOUNDLINE_*` variables of [`settings::Settings`] (in `matches`) and
    /// the [`settings::Secrets`] from the environment. Defaults are left to [`RawConfig::resolve`], below the file.
    pub fn apply_matches(&mut self, matches: &ArgMatches) {
        let secrets = settings::secrets_from_env();
        for setting in SETTINGS.iter() {
            if let Some((origin, value)) =
                settings::given(matches, &setting.key).or_else(|| settings::given(&secrets, &setting.key))
            {
                self.set(&setting.key, origin, value.clone());
            }
        }
    }

    /// Reads `SOUNDLINE_*` variables through `get`, as clap would from the environment (tests build a
    /// configuration this way without touching the process's environment).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        for setting in SETTINGS.iter() {
            if let Some(v) = get(&setting.env) {
                self.set(&setting.key, setting.env.clone(), v);
            }
        }
    }

    fn get(&self, key: &str) -> Option<(&str, &str)> {
        self.values.get(key).map(|(o, v)| (o.as_str(), v.as_str())).or_else(|| {
            let setting = SETTINGS.iter().find(|s| s.key == key)?;
            setting.default.as_deref().map(|d| ("default", d))
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
            let password =
                match self.optional("kafka_password_file", "a readable file path", |v| Some(PathBuf::from(v)))? {
                    Some(path) => {
                        let text = std::fs::read_to_string(&path).map_err(|e| {
                            err(self.origin("kafka_password_file"), format!("cannot read {}: {e}", path.display()))
                        })?;
                        text.lines().next().unwrap_or_default().to_owned()
                    }
                    None => self.parse("password", "a SASL password", |v| Some(v.to_owned()))?,
                };
            Some((user, Secret(password)))
        } else {
            None
        };
        let ca_file = self.optional("kafka_ca_file", "a PEM file path", |v| Some(PathBuf::from(v)))?;
        if let Some(path) = &ca_file
            && !path.is_file()
        {
            let origin = self.get("kafka_ca_file").map(|(o, _)| o.to_owned()).unwrap_or_default();
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
                replication_factor: self.parse(
                    "replication_factor",
                    "a replication factor between 1 and 32, or \"default\" (the cluster's)",
                    |v| match v {
                        "default" => Some(None),
                        n => n.parse().ok().filter(|n| (1..=32).contains(n)).map(Some),
                    },
                )?,
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
                request_timeout: Duration::from_secs(self.parse(
                    "kafka_request_timeout_s",
                    "seconds between 1 and 300",
                    |v| v.parse().ok().filter(|n| (1..=300).contains(n)),
                )?),
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
            worker_threads: self.parse("worker_threads", "a thread count between 0 (one per core) and 1024", |v| {
                v.parse().ok().filter(|n| *n <= 1024).map(|n: usize| (n > 0).then_some(n))
            })?,
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
    fn two_worker_threads_by_default_zero_for_one_per_core_and_checked() {
        let k = [("SOUNDLINE_KAFKA_BROKERS", "k:1")];
        assert_eq!(from(None, &k).expect("valid").worker_threads, Some(2));
        assert_eq!(from(None, &[k[0], ("SOUNDLINE_WORKER_THREADS", "0")]).expect("valid").worker_threads, None);
        assert_eq!(from(None, &[k[0], ("SOUNDLINE_WORKER_THREADS", "4")]).expect("valid").worker_threads, Some(4));
        let file = r#"{"kafka":{"urls":[{"host":"k","port":1}]},"relay":{"worker_threads":1}}"#;
        assert_eq!(from(Some(file), &[]).expect("valid").worker_threads, Some(1));
        for bad in ["-1", "many", "5000"] {
            let e = from(None, &[k[0], ("SOUNDLINE_WORKER_THREADS", bad)]).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "SOUNDLINE_WORKER_THREADS: expected a thread count between 0 (one per core) and 1024, got {bad:?}"
                )
            );
        }
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

    /// The README's configuration table, as the settings declare it.
    fn readme_table() -> String {
        let code = |v: &str| format!("`{v}`");
        let mut out = String::from(
            "| setting | config file key | environment | flag | default | meaning |\n|---|---|---|---|---|---|\n",
        );
        for s in SETTINGS.iter() {
            let flag = s.flag.as_deref().map_or("—".into(), |f| code(&format!("--{f}")));
            let default = match s.default.as_deref() {
                None => "—".into(),
                Some("") => "(none)".into(),
                Some(d) => code(d),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {flag} | {default} | {} |\n",
                s.key,
                code(&s.file),
                code(&s.env),
                s.help
            ));
        }
        out
    }

    #[test]
    fn the_readme_table_is_the_settings_as_declared() {
        let readme = include_str!("../../../README.md");
        let table = readme_table();
        assert!(
            readme.contains(&table),
            "README's configuration table differs from the settings; it should be:\n{table}"
        );
    }

    #[test]
    fn every_setting_has_a_distinct_key_variable_and_flag_and_secrets_have_no_flag() {
        let (mut keys, mut envs, mut files, mut flags) = Default::default();
        let fresh = |set: &mut std::collections::HashSet<String>, v: &str| set.insert(v.to_owned());
        for s in SETTINGS.iter() {
            assert!(
                fresh(&mut keys, &s.key) && fresh(&mut envs, &s.env) && fresh(&mut files, &s.file),
                "{} repeats",
                s.key
            );
            assert!(s.env.starts_with("SOUNDLINE_"), "{}", s.key);
            assert!(!s.help.is_empty(), "{} has no help", s.key);
            if let Some(f) = &s.flag {
                assert!(fresh(&mut flags, f), "flag {f} repeats");
            }
        }
        for secret in ["username", "password", "auth_tokens", "auth_jwt_secret"] {
            let s = SETTINGS.iter().find(|s| s.key == secret).expect("exists");
            assert!(s.flag.is_none(), "{secret} must not be settable on the command line");
        }
        assert_eq!(SETTINGS.iter().filter(|s| s.flag.is_none()).count(), 4, "only the secrets lack a flag");
    }

    /// What `serve` parses: the settings as flags and variables.
    fn command() -> clap::Command {
        <settings::Settings as clap::Args>::augment_args(clap::Command::new("serve").no_binary_name(true))
    }

    #[test]
    fn flags_win_over_the_file_and_a_default_never_hides_the_file() {
        let matches = command()
            .try_get_matches_from(["--linger-ms", "7", "--debug", "--kafka-ca-file", "/nonexistent/ca.pem"])
            .expect("valid flags");
        let mut raw = RawConfig::default();
        raw.apply_file("relay.json", LEGACY).expect("valid file");
        raw.apply_matches(&matches);
        let e = raw.resolve().unwrap_err();
        assert_eq!(e.to_string(), "--kafka-ca-file: /nonexistent/ca.pem is not a readable file");
        let matches = command().try_get_matches_from(["--linger-ms", "7", "--debug"]).expect("valid flags");
        raw = RawConfig::default();
        raw.apply_file("relay.json", LEGACY).expect("valid file");
        raw.apply_matches(&matches);
        let c = raw.resolve().expect("valid");
        assert_eq!(c.kafka.linger, Duration::from_millis(7), "the flag");
        assert!(c.debug, "--debug alone means true");
        assert_eq!(c.kafka.topic, "aicp_sound_topic", "the file's topic, not the flag's default");
        let matches = command().try_get_matches_from(["--linger-ms", "soon"]).expect("clap takes any text");
        raw = RawConfig::default();
        raw.apply_file("relay.json", LEGACY).expect("valid file");
        raw.apply_matches(&matches);
        assert_eq!(
            raw.resolve().unwrap_err().to_string(),
            "--linger-ms: expected milliseconds between 0 and 10000, got \"soon\""
        );
    }

    #[test]
    fn a_secret_is_no_flag() {
        let e = command().try_get_matches_from(["--kafka-password", "hunter2"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        let e = command().try_get_matches_from(["hunter2"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument, "nor a positional argument");
    }
}
