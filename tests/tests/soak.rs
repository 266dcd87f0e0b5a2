//! The short soak: 500 real-time recorders and 50 subscribers for two minutes through the real relay binary,
//! driven by `soundline-loadgen` over the real protocol, with 200 idle connections held open throughout.
//! Zero loss (every frame sent is acked and found in Kafka), no recorder failing, and the relay's memory flat
//! after warm-up (the first minute: connections, the feed's buffers and the dedup window filling up; within
//! 10% from then to the end). The 30-minute version is the same command with `--duration-s 1800`
//! (RELIABILITY.md).

use soundline_tests::random_topic;
use soundline_tests::relay::{Child, loadgen_bin, wait_ready};

#[tokio::test]
async fn five_hundred_recorders_and_fifty_subscribers_for_two_minutes_lose_nothing_and_stay_flat() {
    let topic = random_topic("soak");
    let relay =
        Child::spawn(&[("SOUNDLINE_TOPIC", topic.as_str()), ("SOUNDLINE_MAX_CONNECTIONS_PER_CLIENT", "2000")]).await;
    wait_ready(relay.addr).await;
    let pid = relay.child.id().expect("pid").to_string();
    let addr = relay.addr.to_string();
    let kafka = soundline_tests::kafka_bootstrap();
    let args = format!(
        "--relay {addr} --kafka {kafka} --topic {topic} --recorders 500 --subscribers 50 --idle 200 \
         --duration-s 120 --warmup-s 60 --ramp-s 10 --frame-ms 200 --relay-pid {pid} --json"
    );
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = tokio::process::Command::new(loadgen_bin()).args(args).output().await.expect("run soundline-loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("loadgen's JSON report");
    assert_eq!(report["frames_sent"], 500 * 600, "{report}");
    assert_eq!(report["frames_in_kafka"], report["frames_sent"], "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["recorders_failed"], 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(out.status.success(), "{report}");
    let growth = report["memory"]["growth_after_warmup_pct"].as_f64().expect("RSS samples");
    assert!(growth < 10.0, "relay RSS grew {growth:.1}% after warm-up: {}", report["memory"]);
    assert!(report["fanout_ms"]["seen"].as_u64().unwrap_or(0) > 0, "subscribers saw records: {report}");
}
