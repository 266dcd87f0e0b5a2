//! A real load balancer in front of several relays: HAProxy (Debian's), configured as an ingress for
//! WebSockets would be (deploy/k8s/ingress.yaml's annotations say the same): round robin over the relays that
//! answer `/readyz`, a connection refused by a dead relay retried on another, WebSocket tunnels kept for an hour.
//! Stopped when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An HAProxy process balancing over relays.
pub struct Balancer {
    /// Where clients connect.
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Balancer {
    /// Starts HAProxy on a free loopback port in front of `relays`, checking each relay's `/readyz` every
    /// 500 ms (a relay that fails two checks is taken out, one that passes two is put back).
    ///
    /// # Panics
    ///
    /// When `haproxy` is missing (`scripts/setup.sh` installs it) or does not start.
    pub async fn start(relays: &[SocketAddr]) -> Self {
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("local addr")
        };
        let dir = std::env::temp_dir().join(format!("soundline-haproxy-{}-{}", std::process::id(), addr.port()));
        std::fs::create_dir_all(&dir).expect("haproxy dir");
        let servers: String = relays
            .iter()
            .enumerate()
            .map(|(i, r)| format!("    server relay{i} {r} check inter 500ms fall 2 rise 2\n"))
            .collect();
        let config = format!(
            "global\n    maxconn 4096\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n    \
             timeout tunnel 1h\n    retries 3\n    option redispatch\n\
             frontend recorders\n    bind {addr}\n    default_backend relays\n\
             backend relays\n    balance roundrobin\n    option httpchk GET /readyz\n{servers}"
        );
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).expect("write haproxy.cfg");
        let mut child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run haproxy (scripts/setup.sh installs it)");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Self { addr, child, dir };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("haproxy did not listen on {addr} within 10 s");
    }

    /// `ws://<balancer><path>`.
    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
