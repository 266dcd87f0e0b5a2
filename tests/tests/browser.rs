//! End to end in a real headless Chromium: the Trunk-built page records a fake microphone (a WAV this test
//! writes: 1 kHz + 10 kHz tones at 48 kHz) through the real relay into the real broker. What lands in Kafka is
//! checked sample by sample: the 1 kHz tone at its level, no 6 kHz alias of the 10 kHz tone, continuous sequence
//! numbers, the recording's length; with authentication on. Then the same through faults: the relay killed
//! (`kill -9`) mid-recording and restarted, and the network between browser and relay cut for 30 s.
//!
//! The page is driven by `tests/e2e/record.mjs` (playwright-core with Debian's Chromium); `make test` installs
//! both and builds `dist/` first. One test runs `scripts/run.sh` itself, the script behind `make run`, and
//! records through the page it serves.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use soundline_tests::page::{PageRun, check_audio, record_through, repo, report_of};
use soundline_tests::proxy::Proxy;
use soundline_tests::relay::{Child, InProcess, wait_ready};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_records_five_seconds_of_a_tone_into_kafka_without_aliasing() {
    let run = PageRun::new("tone");
    // With authentication on: the technician types the token into the page, which sends it as a subprotocol;
    // the feed, refused at load without it, reconnects once it is entered.
    let token = "e2e-technician-token-0123456789";
    let relay = InProcess::start(run.relay_config(&[("SOUNDLINE_AUTH_TOKENS", &format!("e2e:{token}"))])).await;
    relay.wait_ready().await;
    let report = report_of(run.node(relay.addr, 5_000, &[("TOKEN", token.into())])).await;
    let frames = run.check_page_and_read_kafka(&report, false).await;
    check_audio(&frames, 5.0);
    let first = &frames[0].1;
    assert_eq!(first.recording.location.unit_id, "e2e-depot");
    assert_eq!(first.recording.inspection_info, "end-to-end test");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_killed_mid_recording_and_restarted_loses_no_frame() {
    let run = PageRun::new("kill");
    let env = run.relay_env();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut relay = Child::spawn(&pairs).await;
    wait_ready(relay.addr).await;
    let addr = relay.addr;
    let listen = addr.to_string();
    let mut restarted = None;
    // kill -9 (no drain, no goodbye) while the page records, back 4 s later where it was.
    record_through(&run, addr, 2_500, 8_000, 10.0, || async {
        relay.child.start_kill().expect("kill -9 the relay");
        let _ = relay.child.wait().await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        restarted = Some(Child::spawn(&[&pairs[..], &[("SOUNDLINE_LISTEN", listen.as_str())]].concat()).await);
    })
    .await;
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_seconds_without_network_lose_no_frame() {
    let run = PageRun::new("network");
    let relay = InProcess::start(run.relay_config(&[])).await;
    relay.wait_ready().await;
    let proxy = Proxy::start(relay.addr).await;
    // The page comes through the proxy; 3 s in, the network goes for 30 s while the page records on.
    record_through(&run, proxy.addr, 3_000, 8_000, 35.0, || async {
        proxy.cut();
        tokio::time::sleep(Duration::from_secs(30)).await;
        proxy.restore();
    })
    .await;
    relay.stop().await;
}

const MAKE_RUN_TOKEN: &str = "make-run-technician-token-0123";

/// `make run` as a developer runs it: `scripts/run.sh` itself (its `trunk watch` build, its relay serving the
/// page and the WebSockets on one origin), against the test broker instead of starting the development one. The
/// page records in Chromium through exactly that; every frame must be in Kafka, the feed panel must list the
/// recording, and the console must stay free of errors (a refused WebSocket would log one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_make_run_serves_records_into_kafka_and_lists_it_in_the_feed() {
    let run = PageRun::new("make-run");
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        probe.local_addr().expect("local addr")
    };
    let mut script = tokio::process::Command::new("bash");
    script
        .arg(repo().join("scripts/run.sh"))
        .env("SOUNDLINE_KAFKA_BROKERS", soundline_tests::kafka_bootstrap())
        .env("SOUNDLINE_TOPIC", &run.topic)
        .env("SOUNDLINE_PARTITIONS", "1")
        .env("SOUNDLINE_LISTEN", listen.to_string())
        .env("SOUNDLINE_RUN_DIST", run.dir.join("make-run-dist"))
        // With an access token: the page offers it as a WebSocket subprotocol, which is what Trunk's proxy lost.
        .env("SOUNDLINE_AUTH_TOKENS", format!("make-run:{MAKE_RUN_TOKEN}"))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so that the relay, trunk and trunk's cargo all stop with it.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = script.spawn().expect("bash scripts/run.sh");
    let group = Group(child.id().expect("pid"));
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let url_line = format!("==> open http://{listen}/");
    // A cold build of the relay and the web app takes minutes on two cores.
    let opened = tokio::time::timeout(Duration::from_secs(900), async {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("make run: {line}");
            if line.starts_with(&url_line) {
                return true;
            }
        }
        false
    })
    .await
    .expect("scripts/run.sh printed the URL within 15 min");
    assert!(opened, "scripts/run.sh ended before printing {url_line:?} (its output is above)");
    let drain = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("make run: {line}");
        }
    });

    // What developers keep from `trunk serve`: a change under www/ rebuilds the page. A probe file (not part of
    // the build) is added; trunk writes the page again. (It is removed when the test ends: trunk does not
    // rebuild for a removal.)
    let index = run.dir.join("make-run-dist").join("index.html");
    let written = || std::fs::metadata(&index).and_then(|m| m.modified()).expect("dist/index.html");
    let before = written();
    let probe = Probe(repo().join("www").join(format!("make-run-probe-{}.txt", std::process::id())));
    std::fs::write(&probe.0, b"a change trunk watch must see\n").expect("write the probe");
    let rebuilt = tokio::time::timeout(Duration::from_secs(180), async {
        while written() == before {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(rebuilt.is_ok(), "trunk watch did not rebuild the page within 3 min of a new file under www/");
    // Let the rebuild finish writing before the page loads its files.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let report = report_of(run.node(listen, 4_000, &[("TOKEN", MAKE_RUN_TOKEN.into())])).await;
    let frames = run.check_page_and_read_kafka(&report, false).await;
    check_audio(&frames, 4.0);

    // Ctrl+C, as a developer stops it: the script stops the relay and the watcher.
    group.signal("INT");
    let ended = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    assert!(ended.is_ok(), "scripts/run.sh did not stop within 30 s of Ctrl+C");
    drain.abort();
    drop(probe);
}

/// The process group of `scripts/run.sh` (the script, the relay, trunk and its cargo); killed when the test
/// ends, however it ends, so that no relay or watcher outlives it.
struct Group(u32);

impl Group {
    fn signal(&self, name: &str) {
        let _ = std::process::Command::new("kill").args([&format!("-{name}"), "--", &format!("-{}", self.0)]).status();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal("KILL");
    }
}

/// A file under www/ that a test adds; removed when the test ends, however it ends.
struct Probe(PathBuf);

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
