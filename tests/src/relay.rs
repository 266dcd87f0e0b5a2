//! A relay for tests: the real server, in this process on `127.0.0.1:0`, or the real binary as a child process.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use soundline_relay::config::{Config, RawConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Builds a relay configuration for the test broker from `SOUNDLINE_*`-style pairs (later pairs win).
pub fn config(overrides: &[(&str, &str)]) -> Config {
    let mut raw = RawConfig::default();
    let bootstrap = crate::kafka_bootstrap();
    let base = [
        ("SOUNDLINE_KAFKA_BROKERS", bootstrap.as_str()),
        ("SOUNDLINE_LISTEN", "127.0.0.1:0"),
        ("SOUNDLINE_SHUTDOWN_TIMEOUT_S", "10"),
    ];
    raw.apply_env(|k| overrides.iter().rev().chain(base.iter()).find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()));
    raw.resolve().unwrap_or_else(|e| panic!("test relay config: {e}"))
}

/// The relay server running inside the test process.
pub struct InProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl InProcess {
    /// Starts `soundline_relay::http::run` on an ephemeral port.
    pub async fn start(config: Config) -> Self {
        Self::start_at("127.0.0.1:0".parse().expect("address"), config).await
    }

    /// Starts it on `addr` (to restart a relay where its clients expect it).
    pub async fn start_at(addr: SocketAddr, config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(soundline_relay::http::run(listener, config, async move {
            let _ = stopped.await;
        }));
        Self { addr, stop: Some(stop), task: Some(task) }
    }

    /// `ws://` URL of `path`.
    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Waits until `/readyz` answers 200 (Kafka connected, topic present).
    pub async fn wait_ready(&self) {
        wait_ready(self.addr).await;
    }

    /// Graceful shutdown; returns when `run` returned.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("relay task panicked").expect("relay run failed");
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Waits (30 s at most) until the relay at `addr` says it is ready.
pub async fn wait_ready(addr: SocketAddr) {
    for _ in 0..300 {
        if let Ok((200, _)) = http_get(addr, "/readyz").await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = http_get(addr, "/readyz").await;
    panic!("relay at {addr} not ready within 30 s: {last:?}");
}

/// Polls `/readyz` (45 s at most: a loaded machine can be slow to fail a SASL handshake) until its body contains
/// `needle`; returns the last (status, body).
pub async fn readyz_once_it_says(addr: SocketAddr, needle: &str) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..450 {
        last = http_get(addr, "/readyz").await.expect("GET /readyz");
        if last.1.contains(needle) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

/// A slow-loris client: starts a request to `addr` and then sends one more header line every `every`, never
/// ending the headers. Returns how long the relay let it trickle before cutting it off, or `None` when it was
/// still open after `give_up`.
pub async fn slow_loris(addr: SocketAddr, every: Duration, give_up: Duration) -> Option<Duration> {
    use tokio::io::AsyncWriteExt;
    let mut loris = tokio::net::TcpStream::connect(addr).await.expect("connect");
    loris.write_all(b"GET /ws/record HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    let started = tokio::time::Instant::now();
    let cut = tokio::time::timeout(give_up, async {
        for i in 0.. {
            if loris.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes()).await.is_err() {
                break;
            }
            tokio::time::sleep(every).await;
        }
    })
    .await;
    cut.ok().map(|()| started.elapsed())
}

/// Sends `bytes` on a raw TCP connection and returns what came back before the relay closed it (10 s at most).
pub async fn raw_tcp(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.write_all(bytes).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "the relay kept the connection open for 10 s after {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of the relay's `/metrics` line for `name` (a metric name, with its labels if it has any).
pub async fn metric(addr: SocketAddr, name: &str) -> Option<i64> {
    let (_, text) = http_get(addr, "/metrics").await.ok()?;
    let name = name.trim_end();
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls [`metric`] for up to 2 s until it reads `expected`; returns the last value read.
pub async fn metric_settles(addr: SocketAddr, name: &str, expected: i64) -> Option<i64> {
    metric_until(addr, name, Duration::from_secs(2), |v| v == Some(expected)).await
}

/// Polls [`metric`] every 50 ms for up to `within` until `done` holds for it; returns the last value read.
pub async fn metric_until(
    addr: SocketAddr,
    name: &str,
    within: Duration,
    done: impl Fn(Option<i64>) -> bool,
) -> Option<i64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = metric(addr, name).await;
        if done(last) || tokio::time::Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP/1.1 GET (the tests need status and body only; no client library needed).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_get_with_headers(addr, path).await.map(|(status, _, body)| (status, body))
}

/// GET returning the status, the response headers (lower-cased names, `name: value` per line) and the body.
pub async fn http_get_with_headers(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response.as_str(), ""));
    let headers = head.lines().skip(1).map(|l| l.to_ascii_lowercase()).collect::<Vec<_>>().join("\n");
    Ok((status, headers, body.to_owned()))
}

/// The `soundline-relay` binary as a child process.
pub struct Child {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The process.
    pub child: tokio::process::Child,
}

impl Child {
    /// Runs `soundline-relay serve` with `env` (plus the test broker and port 0) and waits for its listen line.
    /// A relay that exits before listening (its fixed port still taken, say, right after a `kill -9`) is started
    /// again, for up to 10 s.
    pub async fn spawn(env: &[(&str, &str)]) -> Self {
        for _attempt in 0..20 {
            let mut cmd = tokio::process::Command::new(relay_bin());
            cmd.arg("serve");
            cmd.env("SOUNDLINE_KAFKA_BROKERS", crate::kafka_bootstrap()).env("SOUNDLINE_LISTEN", "127.0.0.1:0");
            for (k, v) in env {
                cmd.env(k, v);
            }
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
            let mut child = cmd.spawn().expect("spawn soundline-relay");
            let stdout = child.stdout.take().expect("stdout");
            let mut lines = BufReader::new(stdout).lines();
            let addr = tokio::time::timeout(Duration::from_secs(30), async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(a) = line.strip_prefix("listening on http://") {
                        return a.parse::<SocketAddr>().ok();
                    }
                }
                None
            })
            .await
            .expect("soundline-relay printed no listen address within 30 s");
            match addr {
                Some(addr) => return Self { addr, child },
                None => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        panic!("soundline-relay exited before listening, 20 times (see its stderr above)");
    }
}

/// The `soundline-loadgen` binary: `SOUNDLINE_LOADGEN_BIN`, or the one cargo built beside this test binary.
///
/// # Panics
///
/// When neither exists (`make test` builds it first).
pub fn loadgen_bin() -> std::path::PathBuf {
    built_binary("SOUNDLINE_LOADGEN_BIN", "soundline-loadgen")
}

/// The `soundline-floor` binary (`make bench`'s per-frame floor): `SOUNDLINE_FLOOR_BIN`, or the one cargo built
/// beside this test binary.
///
/// # Panics
///
/// When neither exists (`make test` builds it first).
pub fn floor_bin() -> std::path::PathBuf {
    built_binary("SOUNDLINE_FLOOR_BIN", "soundline-floor")
}

/// The `soundline-relay` binary: `SOUNDLINE_RELAY_BIN`, or the one cargo built beside this test binary.
///
/// # Panics
///
/// When neither exists (`make test` builds it first).
pub fn relay_bin() -> std::path::PathBuf {
    built_binary("SOUNDLINE_RELAY_BIN", "soundline-relay")
}

fn built_binary(variable: &str, name: &str) -> std::path::PathBuf {
    if let Ok(path) = std::env::var(variable) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let candidate = exe.parent().and_then(|deps| deps.parent()).map(|p| p.join(name));
    match candidate {
        Some(p) if p.is_file() => p,
        _ => panic!("no {name} binary: run `cargo build -p {name}` first, or set {variable} (make test does)"),
    }
}
