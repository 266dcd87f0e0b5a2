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

use clap::{Arg, ArgAction, ArgMatches, Command};
use soundline_relay::config::{Config, RawConfig, SETTINGS};

/// Settings whose flag takes no value: `--debug` means true.
const SWITCHES: [&str; 2] = ["debug", "log_json"];

/// Adds `--config` and every setting's flag: `serve` and `tail` read the same configuration.
fn with_config_args(mut cmd: Command) -> Command {
    cmd = cmd.arg(
        Arg::new("config")
            .long("config")
            .value_name("FILE")
            .help("JSON config file (the existing uploader's format, plus a \"relay\" object); also SOUNDLINE_CONFIG"),
    );
    for s in SETTINGS {
        let Some(flag) = s.flag else { continue };
        let arg = Arg::new(s.key).long(flag).help(format!("{} [env: {}]", s.help, s.env));
        cmd = cmd.arg(if SWITCHES.contains(&s.key) { arg.action(ArgAction::SetTrue) } else { arg.value_name("VALUE") });
    }
    cmd
}

fn cli() -> Command {
    let serve = with_config_args(
        Command::new("serve").about("Serve recorders: WebSocket frames in, AICP_SOUND envelopes to Kafka, acks out"),
    );
    let tail_cmd = with_config_args(
        Command::new("tail").about("Print the topic's records: topic:partition:offset: key=... value=..."),
    )
    .arg(
        Arg::new("from")
            .long("from")
            .value_name("earliest|latest|MS")
            .default_value("latest")
            .help("where to start reading"),
    )
    .arg(Arg::new("car").long("car").value_name("CAR_ID").help("only envelopes of this carID"))
    .arg(Arg::new("segment").long("segment").value_name("SEGMENT_ID").help("only envelopes of this segmentId"))
    .arg(Arg::new("full").long("full").action(ArgAction::SetTrue).help("print whole values instead of a summary"))
    .arg(
        Arg::new("json")
            .long("json")
            .action(ArgAction::SetTrue)
            .conflicts_with("full")
            .help("one JSON object per record"),
    )
    .arg(
        Arg::new("count")
            .long("count")
            .value_name("N")
            .value_parser(clap::value_parser!(u64))
            .help("stop after N records"),
    );
    let check = with_config_args(
        Command::new("check-config")
            .about("Load the configuration (file, SOUNDLINE_* variables, flags) and say if it is valid"),
    );
    let token_cmd = with_config_args(
        Command::new("token").about("Print an HS256 JWT for a recorder or subscriber, signed with the configured key"),
    )
    .arg(
        Arg::new("sub")
            .long("sub")
            .value_name("NAME")
            .required(true)
            .help("the identity (JWT sub) in the relay's logs"),
    )
    .arg(
        Arg::new("ttl-s")
            .long("ttl-s")
            .value_name("SECONDS")
            .default_value("3600")
            .value_parser(clap::value_parser!(u64).range(1..=31_536_000))
            .help("how long the token is valid"),
    );
    let healthcheck = Command::new("healthcheck")
        .about("Exit 0 if the relay on this machine answers /healthz (for container HEALTHCHECKs: no curl needed)")
        .arg(Arg::new("addr").long("addr").value_name("HOST:PORT").default_value("127.0.0.1:8080"));
    Command::new("soundline-relay")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Soundline relay: browser recordings into Kafka, and Kafka back out to browsers")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(serve)
        .subcommand(tail_cmd)
        .subcommand(token_cmd)
        .subcommand(check)
        .subcommand(healthcheck)
        .disable_help_subcommand(true)
}

fn load(m: &ArgMatches) -> Result<Config, String> {
    let mut raw = RawConfig::default();
    let file = m.get_one::<String>("config").cloned().or_else(|| std::env::var("SOUNDLINE_CONFIG").ok());
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("config file {path}: cannot read it: {e}"))?;
        raw.apply_file(&path, &text).map_err(|e| e.to_string())?;
    }
    raw.apply_env(|k| std::env::var(k).ok());
    for s in SETTINGS {
        let Some(flag) = s.flag else { continue };
        if SWITCHES.contains(&s.key) {
            if m.get_flag(s.key) {
                raw.set(s.key, format!("--{flag}"), "true".into());
            }
        } else if let Some(v) = m.get_one::<String>(s.key) {
            raw.set(s.key, format!("--{flag}"), v.clone());
        }
    }
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

/// Prints an HS256 JWT for `--sub`, valid for `--ttl-s`, signed with the configured key.
fn token(config: &Config, m: &ArgMatches) -> ExitCode {
    let Some(key) = &config.auth.jwt_secret else {
        eprintln!("soundline-relay: no JWT key: set SOUNDLINE_AUTH_JWT_SECRET or SOUNDLINE_AUTH_JWT_SECRET_FILE");
        return ExitCode::from(2);
    };
    let sub = m.get_one::<String>("sub").map_or("", String::as_str);
    let ttl = m.get_one::<u64>("ttl-s").copied().unwrap_or(3600);
    let now = soundline_relay::since_epoch().as_secs();
    let claims = serde_json::json!({ "sub": sub, "iat": now, "exp": now + ttl });
    println!("{}", soundline_relay::doors::auth::sign_jwt(key.expose().as_bytes(), &claims));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let matches = cli().get_matches();
    let Some((command, m)) = matches.subcommand() else {
        return ExitCode::from(2);
    };
    if command == "healthcheck" {
        return healthcheck(m.get_one::<String>("addr").map_or("127.0.0.1:8080", String::as_str));
    }
    let config = match load(m) {
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
    if command == "check-config" {
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
    if command == "token" {
        return token(&config, m);
    }
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soundline-relay: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if command == "tail" {
        return runtime.block_on(tail(config, m));
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

async fn tail(config: Config, m: &ArgMatches) -> ExitCode {
    let from = m.get_one::<String>("from").map_or("latest", String::as_str);
    let Some(start) = soundline_relay::tail::parse_start(from) else {
        eprintln!("soundline-relay: --from: expected earliest, latest or milliseconds since the epoch, got {from:?}");
        return ExitCode::from(2);
    };
    let format = if m.get_flag("json") {
        soundline_relay::tail::Format::Json
    } else if m.get_flag("full") {
        soundline_relay::tail::Format::Full
    } else {
        soundline_relay::tail::Format::Summary
    };
    let options = soundline_relay::tail::Options {
        topic: config.kafka.topic.clone(),
        start,
        car: m.get_one::<String>("car").cloned(),
        segment: m.get_one::<String>("segment").cloned(),
        format,
        count: m.get_one::<u64>("count").copied(),
    };
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
