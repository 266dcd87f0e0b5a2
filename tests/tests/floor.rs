//! `make bench`'s floor, `soundline-floor` (loadgen/src/floor.rs), speaks the relay's recorder protocol: driven by
//! `soundline-loadgen --no-kafka` as `scripts/bench.sh` drives it, every frame sent is acked, nothing is read back
//! from Kafka, and the floor's CPU is measured (its pid given as the relay's).

use std::process::Stdio;
use std::time::Duration;

use soundline_tests::relay::{floor_bin, loadgen_bin};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn the_floor_acks_every_frame_of_the_relays_protocol_without_kafka() {
    let mut floor = tokio::process::Command::new(floor_bin())
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn soundline-floor");
    let mut lines = BufReader::new(floor.stdout.take().expect("stdout")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("soundline-floor said where it listens within 10 s")
        .expect("read its stdout")
        .and_then(|line| line.strip_prefix("listening on http://").map(str::to_owned))
        .expect("a 'listening on http://ADDR' line");
    let pid = floor.id().expect("pid").to_string();
    // Nothing listens on the Kafka address given: --no-kafka must not need one.
    let args = [
        "--relay",
        &addr,
        "--kafka",
        "127.0.0.1:1",
        "--no-kafka",
        "--recorders",
        "20",
        "--duration-s",
        "2",
        "--ramp-s",
        "0.5",
        "--frame-ms",
        "200",
        "--relay-pid",
        &pid,
        "--json",
    ];
    let out = tokio::process::Command::new(loadgen_bin()).args(args).output().await.expect("run soundline-loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("loadgen's JSON report");
    assert_eq!(report["frames_sent"], 20 * 10, "{report}");
    assert_eq!(report["frames_acked"], report["frames_sent"], "{report}");
    assert_eq!(report["frames_in_kafka"], serde_json::Value::Null, "nothing read back: {report}");
    assert_eq!((report["lost"].as_u64(), report["errors"].as_u64()), (Some(0), Some(0)), "{report}");
    assert_eq!(report["recorders_failed"], 0, "{report}");
    assert!(report["relay"]["cpu_s"].is_number(), "the floor's CPU measured: {report}");
    assert!(out.status.success(), "{report}");
}
