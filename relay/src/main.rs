//! `soundline-relay`: parses the command line and configuration, sets up logging, and runs the server.
//!
//! ```text
//! soundline-relay serve [--config FILE] [--listen ADDR] [--brokers H:P,...] [--topic T] ...
//! soundline-relay tail  [--config FILE] [--from earliest|latest|MS] [--car ID] [--segment ID] [--full|--json] [--count N]
//! soundline-relay check-config [--config FILE] ...     validate the configuration and exit
//! soundline-relay token --sub NAME [--ttl-s 3600]     print an HS256 JWT signed with the configured key
//! soundline-relay healthcheck [--addr HOST:PORT]        exit 0 if /healthz answers (container HEALTHCHECK)
//! ```
//!
//! A configuration error is one line on stderr and exit code 2.

use std::process::ExitCode;

/// mimalloc instead of glibc's allocator: the relay allocates per frame (rskafka's owned records, acks, feed
/// messages) on many threads; under 2000 real-time recorders glibc's malloc and free were ~11% of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use soundline_relay::config::settings::{SETTINGS, Settings};
use soundline_relay::config::{Config, RawConfig};

/// Soundline relay: browser recordings into Kafka, and Kafka back out to browsers
#[derive(Parser)]
#[command(name = "soundline-relay", version, subcommand_required = true, arg_required_else_help = true)]
#[command(disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve recorders: WebSocket frames in, AICP_SOUND envelopes to Kafka, acks out
    #[command(after_help = secrets_help())]
    Serve(Configured),
    /// Print the topic's records: topic:partition:offset: key=... value=...
    #[command(after_help = secrets_help())]
    Tail {
        #[command(flatten)]
        configured: Configured,
        /// where to start reading
        #[arg(long, value_name = "earliest|latest|MS", default_value = "latest")]
        from: String,
        /// only envelopes of this carID
        #[arg(long, value_name = "CAR_ID")]
        car: Option<String>,
        /// only envelopes of this segmentId
        #[arg(long, value_name = "SEGMENT_ID")]
        segment: Option<String>,
        /// print whole values instead of a summary
        #[arg(long)]
        full: bool,
        /// one JSON object per record
        #[arg(long, conflicts_with = "full")]
        json: bool,
        /// stop after N records
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Print an HS256 JWT for a recorder or subscriber, signed with the configured key
    #[command(after_help = secrets_help())]
    Token {
        #[command(flatten)]
        configured: Configured,
        /// the identity (JWT sub) in the relay's logs
        #[arg(long, value_name = "NAME")]
        sub: String,
        /// how long the token is valid
        #[arg(long = "ttl-s", value_name = "SECONDS", default_value = "3600", value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
        ttl_s: u64,
    },
    /// Load the configuration (file, SOUNDLINE_* variables, flags) and say if it is valid
    #[command(after_help = secrets_help())]
    CheckConfig(Configured),
    /// Exit 0 if the relay on this machine answers /healthz (for container HEALTHCHECKs: no curl needed)
    Healthcheck {
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
        addr: String,
    },
}

/// The configuration's sources: the file, and every setting as a flag and a variable.
#[derive(Args)]
struct Configured {
    /// JSON config file (the existing uploader's format, plus a "relay" object)
    #[arg(long, env = "SOUNDLINE_CONFIG", value_name = "FILE")]
    config: Option<String>,
    #[command(flatten)]
    settings: Settings,
}

/// Names the settings that are variables (or file keys) only, below each command's flags.
fn secrets_help() -> String {
    let secrets: Vec<String> =
        SETTINGS.iter().filter(|s| s.flag.is_none()).map(|s| format!("  {:<32} {}", s.env, s.help)).collect();
    format!("Secrets: the config file or the environment only, never a flag:\n{}", secrets.join("\n"))
}

/// The configuration from the file (`--config` or `SOUNDLINE_CONFIG`), then the variables and flags clap parsed
/// into `m`.
fn load(configured: &Configured, m: &ArgMatches) -> Result<Config, String> {
    let mut raw = RawConfig::default();
    if let Some(path) = &configured.config {
        let text = std::fs::read_to_string(path).map_err(|e| format!("config file {path}: cannot read it: {e}"))?;
        raw.apply_file(path, &text).map_err(|e| e.to_string())?;
    }
    raw.apply_matches(m);
    raw.resolve().map_err(|e| e.to_string())
}

fn init_logging(config: &Config) {
    use tracing_subscriber::prelude::*;
    // rskafka logs every connection at info; its warnings are what an operator needs.
    let default = if config.debug { "info,rskafka=warn,soundline_relay=debug" } else { "info,rskafka=warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOUNDLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let lines = if config.log_json { lines.json().boxed() } else { lines.boxed() };
    // Kafka's produce throttling reaches the relay only as an rskafka info event, whatever the log filter says.
    let throttles = soundline_relay::kafka::ThrottleWatch
        .with_filter(tracing_subscriber::filter::Targets::new().with_target("rskafka::backoff", tracing::Level::INFO));
    tracing_subscriber::registry().with(lines.with_filter(filter)).with(throttles).init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn auth_summary(config: &Config) -> String {
    let auth = &config.auth;
    match (auth.tokens.len(), auth.jwt_secret.is_some()) {
        (0, false) => "off (anyone who reaches the relay may record)".into(),
        (n, jwt) => format!("on: {n} static token(s){}", if jwt { " and HS256 JWTs" } else { "" }),
    }
}

/// Prints an HS256 JWT for `sub`, valid for `ttl_s`, signed with the configured key.
fn token(config: &Config, sub: &str, ttl_s: u64) -> ExitCode {
    let Some(key) = &config.auth.jwt_secret else {
        eprintln!("soundline-relay: no JWT key: set SOUNDLINE_AUTH_JWT_SECRET or SOUNDLINE_AUTH_JWT_SECRET_FILE");
        return ExitCode::from(2);
    };
    let now = soundline_relay::since_epoch().as_secs();
    let claims = serde_json::json!({ "sub": sub, "iat": now, "exp": now + ttl_s });
    println!("{}", soundline_relay::doors::auth::sign_jwt(key.expose().as_bytes(), &claims));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let Some((_, m)) = matches.subcommand() else {
        return ExitCode::from(2);
    };
    let configured = match &cli.command {
        Cmd::Healthcheck { addr } => return healthcheck(addr),
        Cmd::Serve(c) | Cmd::CheckConfig(c) | Cmd::Tail { configured: c, .. } | Cmd::Token { configured: c, .. } => c,
    };
    let config = match load(configured, m) {
        Ok(c) => c,
        Err(line) => {
            eprintln!("soundline-relay: {line}");
            return ExitCode::from(2);
        }
    };
    if let Some(files) = &config.tls
        && let Err(e) = soundline_relay::http::net::tls_acceptor(files)
    {
        eprintln!("soundline-relay: TLS: {e}");
        return ExitCode::from(2);
    }
    if matches!(cli.command, Cmd::CheckConfig(_)) {
        println!(
            "configuration ok: brokers {} ({:?}), topic {}, listen {} ({}), authentication {}",
            config.kafka.brokers.join(","),
            config.kafka.security,
            config.kafka.topic,
            config.listen,
            if config.tls.is_some() { "https" } else { "http" },
            auth_summary(&config)
        );
        return ExitCode::SUCCESS;
    }
    if let Cmd::Token { sub, ttl_s, .. } = &cli.command {
        return token(&config, sub, *ttl_s);
    }
    init_logging(&config);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.worker_threads {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soundline-relay: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Cmd::Tail { from, car, segment, full, json, count, .. } = cli.command {
        let format = if json {
            soundline_relay::tail::Format::Json
        } else if full {
            soundline_relay::tail::Format::Full
        } else {
            soundline_relay::tail::Format::Summary
        };
        return runtime.block_on(tail(config, &from, car, segment, format, count));
    }
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("soundline-relay: cannot listen on {}: {e}", config.listen);
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(
            listen = %addr,
            brokers = %config.kafka.brokers.join(","),
            topic = %config.kafka.topic,
            security = ?config.kafka.security,
            "soundline-relay {} serving",
            env!("CARGO_PKG_VERSION")
        );
        tracing::info!(authentication = %auth_summary(&config), tls = config.tls.is_some(), "doors");
        tracing::info!(
            worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            "runtime (setting worker_threads)"
        );
        if matches!(config.kafka.compression, soundline_relay::config::Compression::Zstd) {
            match soundline_relay::kafka::producer::zstd_default_level() {
                Some(1) => tracing::info!("record batches compressed with zstd at level 1"),
                level => tracing::warn!(
                    ?level,
                    "record batches compressed with zstd at a level other than 1, at more CPU per frame: this build \
                     did not get .cargo/config.toml's CFLAGS (-DZSTD_CLEVEL_DEFAULT=1)"
                ),
            }
        }
        // Machine-readable line for scripts and tests that start the relay on port 0.
        println!("listening on {}://{addr}", if config.tls.is_some() { "https" } else { "http" });
        match soundline_relay::http::run(listener, config, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("soundline-relay: server failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn tail(
    config: Config,
    from: &str,
    car: Option<String>,
    segment: Option<String>,
    format: soundline_relay::tail::Format,
    count: Option<u64>,
) -> ExitCode {
    let Some(start) = soundline_relay::tail::parse_start(from) else {
        eprintln!("soundline-relay: --from: expected earliest, latest or milliseconds since the epoch, got {from:?}");
        return ExitCode::from(2);
    };
    let options =
        soundline_relay::tail::Options { topic: config.kafka.topic.clone(), start, car, segment, format, count };
    let stdout = std::io::stdout().lock();
    match soundline_relay::tail::run(&config, &options, stdout, shutdown_signal()).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soundline-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// GET /healthz with a plain TCP exchange and a 3 s budget: exit 0 on `200`, 1 otherwise.
fn healthcheck(addr: &str) -> ExitCode {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let timeout = std::time::Duration::from_secs(3);
    let answer = (|| -> std::io::Result<String> {
        let target = addr.to_socket_addrs()?.next().ok_or_else(|| std::io::Error::other("no address"))?;
        let mut stream = std::net::TcpStream::connect_timeout(&target, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })();
    match answer {
        Ok(r) if r.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("soundline-relay: {addr}/healthz answered {}", r.lines().next().unwrap_or_default());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("soundline-relay: {addr}/healthz: {e}");
            ExitCode::FAILURE
        }
    }
}
