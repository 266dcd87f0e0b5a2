//! `soundline-relay`: parses the command line and configuration, sets up logging, and runs the server.
//!
//! ```text
//! soundline-relay serve [--config FILE] [--listen ADDR] [--brokers H:P,...] [--topic T] ...
//! ```
//!
//! A configuration error is one line on stderr and exit code 2.

use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};
use soundline_relay::config::{Config, RawConfig, SETTINGS};

/// Settings whose flag takes no value: `--debug` means true.
const SWITCHES: [&str; 2] = ["debug", "log_json"];

fn cli() -> Command {
    let mut serve =
        Command::new("serve").about("Serve recorders: WebSocket frames in, AICP_SOUND envelopes to Kafka, acks out");
    serve = serve.arg(
        Arg::new("config")
            .long("config")
            .value_name("FILE")
            .help("JSON config file (the existing uploader's format, plus a \"relay\" object); also SOUNDLINE_CONFIG"),
    );
    for s in SETTINGS {
        let Some(flag) = s.flag else { continue };
        let arg = Arg::new(s.key).long(flag).help(format!("{} [env: {}]", s.help, s.env));
        serve =
            serve.arg(if SWITCHES.contains(&s.key) { arg.action(ArgAction::SetTrue) } else { arg.value_name("VALUE") });
    }
    Command::new("soundline-relay")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Soundline relay: browser recordings into Kafka, and Kafka back out to browsers")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(serve)
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
    // rskafka logs every connection at info; its warnings are what an operator needs.
    let default = if config.debug { "info,rskafka=warn,soundline_relay=debug" } else { "info,rskafka=warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOUNDLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if config.log_json { builder.json().init() } else { builder.init() }
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

fn main() -> ExitCode {
    let matches = cli().get_matches();
    let Some(("serve", m)) = matches.subcommand() else {
        return ExitCode::from(2);
    };
    let config = match load(m) {
        Ok(c) => c,
        Err(line) => {
            eprintln!("soundline-relay: {line}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soundline-relay: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
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
        // Machine-readable line for scripts and tests that start the relay on port 0.
        println!("listening on http://{addr}");
        match soundline_relay::server::run(listener, config, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("soundline-relay: server failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
