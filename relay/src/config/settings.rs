//! Every setting the relay reads, declared once, as clap-derive structs: each field is a flag (`--listen`) and a
//! `SOUNDLINE_*` variable (clap's `env` feature), with its help and default. `--help`, the README's configuration
//! table (a test compares them) and the config file's `relay` keys (the field names; [`super::file`]) all come
//! from these two structs, through [`SETTINGS`].
//!
//! [`Secrets`] are variables only: clap parses them from an empty command line ([`secrets_from_env`]), so no flag
//! can carry a credential (flags show up in `ps`), and their values are hidden from `--help`.

use std::sync::LazyLock;

use clap::{ArgMatches, Args, Command};

/// The settings that are flags and variables.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Settings (each also a SOUNDLINE_* variable, and a key of the config file)")]
pub struct Settings {
    /// address:port the HTTP/WebSocket server binds
    #[arg(long, env = "SOUNDLINE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: Option<String>,
    /// directory of the built web app (trunk's dist/) to serve at /
    #[arg(long, env = "SOUNDLINE_STATIC_DIR")]
    pub static_dir: Option<String>,
    /// debug logging: one line per frame (size, topic, timestamp)
    #[arg(long, env = "SOUNDLINE_DEBUG", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", default_value = "false")]
    pub debug: Option<String>,
    /// log as JSON lines instead of human-readable text
    #[arg(long, env = "SOUNDLINE_LOG_JSON", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", default_value = "false")]
    pub log_json: Option<String>,
    /// threads that run connections and Kafka clients, 2 whatever the node's core count (one thread queues acks under heavy load, see BENCHMARKS.md); 1 for a relay that stays well below a core; 0: one per core
    #[arg(long, env = "SOUNDLINE_WORKER_THREADS", default_value = "2")]
    pub worker_threads: Option<String>,
    /// Kafka bootstrap brokers, host:port[,host:port...] (file: [{"host":..,"port":..}])
    #[arg(long, env = "SOUNDLINE_KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// Kafka topic the envelopes are produced to
    #[arg(long, env = "SOUNDLINE_TOPIC", default_value = "aicp-sound")]
    pub topic: Option<String>,
    /// PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL
    #[arg(long, env = "SOUNDLINE_KAFKA_SECURITY_PROTOCOL", default_value = "PLAINTEXT")]
    pub security_protocol: Option<String>,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL_*)
    #[arg(long, env = "SOUNDLINE_KAFKA_SASL_MECHANISM", default_value = "PLAIN")]
    pub sasl_mechanism: Option<String>,
    /// file whose first line is the SASL password
    #[arg(long, env = "SOUNDLINE_KAFKA_PASSWORD_FILE")]
    pub kafka_password_file: Option<String>,
    /// PEM file of CA certificates for SSL/SASL_SSL (default: the Mozilla roots)
    #[arg(long, env = "SOUNDLINE_KAFKA_CA_FILE")]
    pub kafka_ca_file: Option<String>,
    /// the envelope's "ver" string
    #[arg(long, env = "SOUNDLINE_VER", default_value = "1.0")]
    pub ver: Option<String>,
    /// the envelope's "sysType"
    #[arg(long, env = "SOUNDLINE_SYS_TYPE", default_value = "3")]
    pub sys_type: Option<String>,
    /// the envelope's "sysTag"; the feed and `tail` know envelopes by it
    #[arg(long, env = "SOUNDLINE_SYS_TAG", default_value = "AICP_SOUND")]
    pub sys_tag: Option<String>,
    /// create the topic when it is missing (false: a missing topic is an error)
    #[arg(long, env = "SOUNDLINE_CREATE_TOPIC", default_value = "true")]
    pub create_topic: Option<String>,
    /// partitions of a topic the relay creates
    #[arg(long, env = "SOUNDLINE_PARTITIONS", default_value = "6")]
    pub partitions: Option<String>,
    /// replication factor of a topic the relay creates: 1-32, or "default" for the cluster's default.replication.factor (its min.insync.replicas applies either way; 3 and 2 keep every acked frame through the loss of one broker)
    #[arg(long, env = "SOUNDLINE_REPLICATION_FACTOR", default_value = "default")]
    pub replication_factor: Option<String>,
    /// record batch compression: zstd, none, gzip, lz4 or snappy; zstd (level 1, logged at start) stores audio in fewer bytes for a little more of the relay's CPU (BENCHMARKS.md); consumers must decode it (kafka-python: pip install zstandard)
    #[arg(long, env = "SOUNDLINE_COMPRESSION", default_value = "zstd")]
    pub compression: Option<String>,
    /// how long a partition's batch waits for more records before it is sent
    #[arg(long, env = "SOUNDLINE_LINGER_MS", default_value = "5")]
    pub linger_ms: Option<String>,
    /// largest record batch sent in one produce request
    #[arg(long, env = "SOUNDLINE_BATCH_MAX_BYTES", default_value = "1000000")]
    pub batch_max_bytes: Option<String>,
    /// record bytes the relay produces per second at most (0: no cap); set it below the broker's producer_byte_rate quota, divided by the relay replicas sharing it
    #[arg(long, env = "SOUNDLINE_KAFKA_MAX_BYTES_PER_S", default_value = "0")]
    pub kafka_max_bytes_per_s: Option<String>,
    /// how long the relay waits for Kafka to answer one produce, fetch or list-offsets request before it drops the connection, looks the partition's leader up again and sends the same records again (a broker that vanished without closing its sockets); connects get 2 s, metadata requests 3 s
    #[arg(long, env = "SOUNDLINE_KAFKA_REQUEST_TIMEOUT_S", default_value = "10")]
    pub kafka_request_timeout_s: Option<String>,
    /// the broker's/topic's max message size; larger envelopes are refused, never truncated
    #[arg(long, env = "SOUNDLINE_MAX_MESSAGE_BYTES", default_value = "1048588")]
    pub max_message_bytes: Option<String>,
    /// bytes of envelopes held before Kafka acked them; when full, the relay stops reading recorders
    #[arg(long, env = "SOUNDLINE_MEMORY_BUDGET_BYTES", default_value = "268435456")]
    pub memory_budget_bytes: Option<String>,
    /// longest accepted audio frame, in ms of 16 kHz audio
    #[arg(long, env = "SOUNDLINE_MAX_FRAME_MS", default_value = "2000")]
    pub max_frame_ms: Option<String>,
    /// WebSocket connections served at once; more are refused with HTTP 503
    #[arg(long, env = "SOUNDLINE_MAX_CONNECTIONS", default_value = "10000")]
    pub max_connections: Option<String>,
    /// browser origins (scheme://host[:port]) besides the relay's own that may open its WebSockets, comma-separated; * for any
    #[arg(long, env = "SOUNDLINE_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: Option<String>,
    /// frames remembered per process to ack a resend again instead of producing it twice (0: off)
    #[arg(long, env = "SOUNDLINE_DEDUP_WINDOW_FRAMES", default_value = "100000")]
    pub dedup_window_frames: Option<String>,
    /// other topics /ws/feed may serve besides the audio topic, comma-separated (e.g. analysis results)
    #[arg(long, env = "SOUNDLINE_FEED_TOPICS", default_value = "")]
    pub feed_topics: Option<String>,
    /// live records a feed subscriber may fall behind before it is told it lagged
    #[arg(long, env = "SOUNDLINE_FEED_BUFFER_RECORDS", default_value = "1024")]
    pub feed_buffer_records: Option<String>,
    /// a feed subscriber that reads nothing for this long is disconnected (too_slow)
    #[arg(long, env = "SOUNDLINE_FEED_SEND_TIMEOUT_S", default_value = "10")]
    pub feed_send_timeout_s: Option<String>,
    /// a partition's live reader stops when no feed subscriber has needed it for this long (a subscriber to one car needs only that car's partition)
    #[arg(long, env = "SOUNDLINE_FEED_READER_IDLE_S", default_value = "30")]
    pub feed_reader_idle_s: Option<String>,
    /// records neither envelope nor JSON: opaque (delivered as base64) or skip (counted, dropped)
    #[arg(long, env = "SOUNDLINE_FEED_MALFORMED", default_value = "opaque")]
    pub feed_malformed: Option<String>,
    /// on SIGTERM, how long to wait for Kafka to ack what is in flight
    #[arg(long, env = "SOUNDLINE_SHUTDOWN_TIMEOUT_S", default_value = "20")]
    pub shutdown_timeout_s: Option<String>,
    /// file of static bearer tokens, one name:token per line (lines starting with # are comments)
    #[arg(long, env = "SOUNDLINE_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<String>,
    /// file whose first line is the HS256 key
    #[arg(long, env = "SOUNDLINE_AUTH_JWT_SECRET_FILE")]
    pub auth_jwt_secret_file: Option<String>,
    /// WebSocket connections one client address may hold at once; more are refused with HTTP 429
    #[arg(long, env = "SOUNDLINE_MAX_CONNECTIONS_PER_CLIENT", default_value = "200")]
    pub max_connections_per_client: Option<String>,
    /// header in which the ingress in front names the client (e.g. X-Forwarded-For: its last address counts); set it only when every connection comes through that ingress; unset: the TCP peer
    #[arg(long, env = "SOUNDLINE_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,
    /// WebSocket messages (frames, pings, text) one connection may send per second; faster senders are throttled
    #[arg(long, env = "SOUNDLINE_MAX_MESSAGES_PER_S", default_value = "200")]
    pub max_messages_per_s: Option<String>,
    /// bytes one connection may send per second (32x real time, room for resends); faster senders are throttled
    #[arg(long, env = "SOUNDLINE_MAX_BYTES_PER_S", default_value = "1048576")]
    pub max_bytes_per_s: Option<String>,
    /// time a new connection has for each step: TLS handshake, HTTP request headers, then the hello or subscribe
    #[arg(long, env = "SOUNDLINE_HELLO_TIMEOUT_S", default_value = "10")]
    pub hello_timeout_s: Option<String>,
    /// a connection that sends nothing, not even a pong, for this long is closed (idle_timeout, 4015)
    #[arg(long, env = "SOUNDLINE_IDLE_TIMEOUT_S", default_value = "60")]
    pub idle_timeout_s: Option<String>,
    /// request line and headers of one HTTP request, in bytes; larger requests get 431 (a browser sends a few KiB, a JWT is about 1 KiB)
    #[arg(long, env = "SOUNDLINE_MAX_HEADER_BYTES", default_value = "16384")]
    pub max_header_bytes: Option<String>,
    /// how often the relay pings each WebSocket (browsers answer by themselves); at most half of idle_timeout_s
    #[arg(long, env = "SOUNDLINE_PING_INTERVAL_S", default_value = "20")]
    pub ping_interval_s: Option<String>,
    /// PEM certificate chain: the relay serves HTTPS/WSS itself (with tls_key_file); unset: plain HTTP, e.g. behind an ingress
    #[arg(long, env = "SOUNDLINE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<String>,
    /// PEM private key of tls_cert_file
    #[arg(long, env = "SOUNDLINE_TLS_KEY_FILE")]
    pub tls_key_file: Option<String>,
}

/// The settings that are variables (or keys of the config file) only: credentials.
#[derive(Args, Debug, Clone, Default)]
pub struct Secrets {
    /// SASL user name (file or environment only)
    #[arg(env = "SOUNDLINE_KAFKA_USERNAME", hide_env_values = true)]
    pub username: Option<String>,
    /// SASL password (file or environment only; or SOUNDLINE_KAFKA_PASSWORD_FILE)
    #[arg(env = "SOUNDLINE_KAFKA_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// static bearer tokens, name:token[,name:token...] (file or environment only); any auth_* setting turns authentication on
    #[arg(env = "SOUNDLINE_AUTH_TOKENS", hide_env_values = true)]
    pub auth_tokens: Option<String>,
    /// HS256 key of JWT bearer tokens (exp required, sub = the identity in logs; file or environment only)
    #[arg(env = "SOUNDLINE_AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<String>,
}

/// One setting, as `--help` and the README describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Canonical key: the field's name, the key in the config file's `relay` object, the name in errors.
    pub key: String,
    /// Where the config file holds it (dotted path).
    pub file: String,
    /// Environment variable.
    pub env: String,
    /// Command-line flag (without `--`); `None` for [`Secrets`].
    pub flag: Option<String>,
    /// Default, if any.
    pub default: Option<String>,
    /// One line of help.
    pub help: String,
}

/// Every setting: [`Settings`] then [`Secrets`], in declaration order.
pub static SETTINGS: LazyLock<Vec<Setting>> = LazyLock::new(|| {
    let settings = Settings::augment_args(Command::new("settings"));
    let secrets = Secrets::augment_args(Command::new("secrets"));
    settings
        .get_arguments()
        .chain(secrets.get_arguments())
        .map(|arg| {
            let key = arg.get_id().as_str().to_owned();
            Setting {
                file: super::file::key_of(&key),
                env: arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default(),
                flag: arg.get_long().map(str::to_owned),
                default: arg.get_default_values().first().map(|d| d.to_string_lossy().into_owned()),
                help: arg.get_help().map(ToString::to_string).unwrap_or_default(),
                key,
            }
        })
        .collect()
});

/// The secrets' values from the environment, through clap (an empty command line: variables only).
pub fn secrets_from_env() -> ArgMatches {
    Secrets::augment_args(Command::new("secrets").no_binary_name(true))
        .try_get_matches_from(std::iter::empty::<String>())
        .unwrap_or_default()
}

/// Where `key`'s value in `matches` came from, as errors name it: the variable or the flag. `None`: not given
/// (a default, or absent), so that the config file's value, if any, stands.
pub fn given<'m>(matches: &'m ArgMatches, key: &str) -> Option<(String, &'m String)> {
    let value = matches.try_get_one::<String>(key).ok().flatten()?;
    let setting = SETTINGS.iter().find(|s| s.key == key)?;
    match matches.value_source(key)? {
        clap::parser::ValueSource::EnvVariable => Some((setting.env.clone(), value)),
        clap::parser::ValueSource::CommandLine => {
            Some((format!("--{}", setting.flag.as_deref().unwrap_or(key)), value))
        }
        _ => None,
    }
}
