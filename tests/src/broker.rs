//! A Kafka broker of a test's own: `scripts/kafka.sh` on ports and a log dir nobody else uses, for tests that
//! start Kafka late, stop it or kill it, without disturbing the shared test broker.

use std::path::PathBuf;
use std::process::Command;

/// A private single-node broker; stopped and removed when dropped.
pub struct PrivateBroker {
    /// Its PLAINTEXT port (the controller uses the next one).
    pub port: u16,
    state_dir: PathBuf,
}

impl PrivateBroker {
    /// A broker in block `slot` (0 or 1) of this test process's ports; not started yet.
    pub fn new(name: &str, slot: u16) -> Self {
        // 3 ports per broker, 2 brokers per test process, spread by pid so parallel runs do not collide.
        let port = 19_300 + (std::process::id() % 100) as u16 * 6 + slot * 3;
        let state_dir = std::env::temp_dir().join(format!("soundline-{name}-kafka-{port}"));
        let _ = std::fs::remove_dir_all(&state_dir);
        Self { port, state_dir }
    }

    /// `127.0.0.1:port`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self, cmd: &str) -> bool {
        Command::new("bash")
            .args([concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka.sh"), cmd])
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_STATE_DIR", &self.state_dir)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts it (again, on the same log dir) and waits until it answers.
    ///
    /// # Panics
    ///
    /// When it does not start.
    pub fn start(&self) {
        assert!(self.script("start"), "the private broker on port {} did not start", self.port);
    }

    /// Caps every client's produce rate at `bytes_per_s` (a default client quota, as an operator would set one),
    /// with Kafka's own `kafka-configs` tool.
    ///
    /// # Panics
    ///
    /// When the tool fails, or `SOUNDLINE_KAFKA_CLASSPATH` is not set.
    pub fn set_producer_quota(&self, bytes_per_s: u64) {
        let classpath = std::env::var("SOUNDLINE_KAFKA_CLASSPATH")
            .expect("SOUNDLINE_KAFKA_CLASSPATH is not set: make test exports the Kafka jars' classpath");
        let status = Command::new("java")
            .args(["-cp", &classpath, "org.apache.kafka.tools.ConfigCommand", "--bootstrap-server"])
            .arg(self.bootstrap())
            .args(["--alter", "--entity-type", "clients", "--entity-default", "--add-config"])
            .arg(format!("producer_byte_rate={bytes_per_s}"))
            .status()
            .expect("run kafka-configs");
        assert!(status.success(), "kafka-configs failed: {status}");
    }

    /// `kill -9`: no clean shutdown, as when a broker's machine dies.
    ///
    /// # Panics
    ///
    /// When it is not running.
    pub fn kill9(&self) {
        let pid = std::fs::read_to_string(self.state_dir.join("kafka.pid")).expect("the private broker's pid file");
        assert!(Command::new("kill").args(["-9", pid.trim()]).status().is_ok_and(|s| s.success()), "kill -9 {pid}");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.script("stop");
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}
