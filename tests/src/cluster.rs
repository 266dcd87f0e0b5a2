//! The three-node KRaft cluster `scripts/kafka.sh cluster start` runs for the suite (replication 3,
//! `min.insync.replicas=2`): where it is, which node leads a partition, and the failures an operator meets, each
//! undone when its guard drops (a failed test included), so the next test finds three healthy nodes.

use std::process::Command;
use std::time::{Duration, Instant};

/// The cluster's bootstrap list, `SOUNDLINE_TEST_CLUSTER` (`make test` exports it).
///
/// # Panics
///
/// When it is not set: these tests need the real cluster, never a skip.
pub fn bootstrap() -> String {
    match std::env::var("SOUNDLINE_TEST_CLUSTER") {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "SOUNDLINE_TEST_CLUSTER is not set: these tests need the three-node Kafka cluster that `make test` \
             starts (or run `scripts/kafka.sh cluster start` and export what `scripts/kafka.sh cluster env` prints)"
        ),
    }
}

/// Node `n`'s (1-3) PLAINTEXT port, from the bootstrap list.
pub fn port(n: u8) -> u16 {
    let list = bootstrap();
    let addr = list.split(',').nth(usize::from(n) - 1).unwrap_or_else(|| panic!("no node {n} in {list}"));
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr}"))
}

fn script(args: &[&str]) {
    let status = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka.sh"))
        .args(args)
        .status()
        .expect("run scripts/kafka.sh");
    assert!(status.success(), "scripts/kafka.sh {} failed", args.join(" "));
}

/// Runs `scripts/kafka.sh cluster node N CMD` (`start`, `stop`: SIGTERM and a controlled shutdown, `kill`: -9).
pub fn node(n: u8, cmd: &str) {
    script(&["cluster", "node", &n.to_string(), cmd]);
}

fn pid(n: u8) -> String {
    let dir = std::env::var("SOUNDLINE_TEST_CLUSTER_DIR").expect("SOUNDLINE_TEST_CLUSTER_DIR (make test exports it)");
    std::fs::read_to_string(format!("{dir}/node{n}/kafka.pid")).expect("the node's pid file").trim().to_owned()
}

/// The node that leads `topic`/`partition` now (Kafka's metadata, read with kcat, an independent client), or
/// `None` while it has no leader.
pub fn leader(topic: &str, partition: i32) -> Option<u8> {
    let out = Command::new("kcat").args(["-L", "-b", &bootstrap(), "-t", topic, "-m", "5"]).output().expect("kcat -L");
    let text = String::from_utf8_lossy(&out.stdout);
    let wanted = format!("partition {partition},");
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with(&wanted))
        .and_then(|l| l.split("leader ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|id| id.trim().parse().ok())
        .filter(|id| (1..=3).contains(id))
}

/// Grows `topic` to `partitions` partitions with Kafka's own `kafka-topics --alter`.
///
/// # Panics
///
/// When the tool fails, or `SOUNDLINE_KAFKA_CLASSPATH` is not set (`make test` exports it).
pub fn add_partitions(topic: &str, partitions: i32) {
    let classpath = std::env::var("SOUNDLINE_KAFKA_CLASSPATH")
        .expect("SOUNDLINE_KAFKA_CLASSPATH is not set: make test exports the Kafka jars' classpath");
    let status = Command::new("java")
        .args(["-cp", &classpath, "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", &bootstrap()])
        .args(["--alter", "--topic", topic, "--partitions", &partitions.to_string()])
        .status()
        .expect("run kafka-topics");
    assert!(status.success(), "kafka-topics --alter --partitions {partitions} failed: {status}");
}

/// Moves `topic`/`partition` onto `replicas` (node ids, the first the preferred leader) with Kafka's own
/// `kafka-reassign-partitions`, and waits up to `within` until the reassignment is complete; whether it was.
///
/// # Panics
///
/// When the tool fails, or `SOUNDLINE_KAFKA_CLASSPATH` is not set (`make test` exports it).
pub fn reassign(topic: &str, partition: i32, replicas: &[u8], within: Duration) -> bool {
    let classpath = std::env::var("SOUNDLINE_KAFKA_CLASSPATH")
        .expect("SOUNDLINE_KAFKA_CLASSPATH is not set: make test exports the Kafka jars' classpath");
    let plan = std::env::temp_dir().join(format!("soundline-reassign-{}-{topic}-{partition}.json", std::process::id()));
    let replicas: Vec<String> = replicas.iter().map(u8::to_string).collect();
    let json = format!(
        r#"{{"version":1,"partitions":[{{"topic":"{topic}","partition":{partition},"replicas":[{}]}}]}}"#,
        replicas.join(",")
    );
    std::fs::write(&plan, json).expect("write the reassignment plan");
    let tool = |action: &str| {
        Command::new("java")
            .args(["-cp", &classpath, "org.apache.kafka.tools.reassign.ReassignPartitionsCommand"])
            .args(["--bootstrap-server", &bootstrap(), "--reassignment-json-file"])
            .arg(&plan)
            .arg(action)
            .output()
            .expect("run kafka-reassign-partitions")
    };
    let started = tool("--execute");
    assert!(
        started.status.success(),
        "kafka-reassign-partitions --execute: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let until = Instant::now() + within;
    let mut done = false;
    while !done && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(500));
        let verify = tool("--verify");
        done = verify.status.success() && String::from_utf8_lossy(&verify.stdout).contains("is completed");
    }
    let _ = std::fs::remove_file(&plan);
    done
}

/// Waits up to `within` until every partition of `topic` has all three nodes in sync again (what an operator waits
/// for between the steps of a rolling restart: no under-replicated partition); whether it happened.
pub fn wait_fully_replicated(topic: &str, partitions: i32, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        let out = Command::new("kcat").args(["-L", "-b", &bootstrap(), "-t", topic, "-m", "5"]).output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let in_sync = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("partition ").and_then(|_| l.split("isrs: ").nth(1)))
            .filter(|isrs| isrs.trim().split(',').count() == 3)
            .count();
        if in_sync == partitions as usize {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    false
}

/// Waits up to `within` until `topic`/`partition` has a leader other than `not`; returns it and when Kafka first
/// named it (since the call).
pub fn wait_leader_other_than(topic: &str, partition: i32, not: u8, within: Duration) -> Option<(u8, Duration)> {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(l) = leader(topic, partition).filter(|l| *l != not) {
            return Some((l, start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Node `n` stopped answering without closing a socket, as a host that crashed or fell off the network: the
/// process frozen (SIGSTOP: its own connections to the other nodes go silent too) and every packet to or from its
/// two ports dropped (iptables, so that not even the kernel answers a connect). Dropping the guard undoes both
/// (SIGCONT), also when the test fails.
pub struct Vanished {
    node: u8,
    rules: Vec<Vec<String>>,
}

impl Vanished {
    /// Cuts node `n` off.
    ///
    /// # Panics
    ///
    /// When iptables or kill fail (the tests run as root in `make test`).
    pub fn node(n: u8) -> Self {
        let (client, controller) = (port(n), port(n) + 1);
        let mut rules = Vec::new();
        for p in [client, controller] {
            for dir in ["--dport", "--sport"] {
                rules.push(
                    ["INPUT", "-i", "lo", "-p", "tcp", dir, &p.to_string(), "-j", "DROP"].map(String::from).to_vec(),
                );
            }
        }
        let cut = Self { node: n, rules };
        for rule in &cut.rules {
            let status = Command::new("iptables").arg("-I").args(rule).status().expect("run iptables");
            assert!(status.success(), "iptables -I {} failed (the cluster tests need root)", rule.join(" "));
        }
        assert!(Command::new("kill").args(["-STOP", &pid(n)]).status().is_ok_and(|s| s.success()), "SIGSTOP node {n}");
        cut
    }
}

impl Drop for Vanished {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = Command::new("iptables").arg("-D").args(rule).status();
        }
        let _ = Command::new("kill").args(["-CONT", &pid(self.node)]).status();
    }
}

/// Node `n` is down (killed or stopped by the test); dropping the guard starts it again and waits until it
/// answers.
pub struct Down(pub u8);

impl Drop for Down {
    fn drop(&mut self) {
        node(self.0, "start");
    }
}

/// Tests that break the cluster take turns: one at a time per test binary.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
