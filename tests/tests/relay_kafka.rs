//! The relay's Kafka side against the real broker: SASL (PLAIN, SCRAM-SHA-256/512) and its errors, and the
//! partitioner checked against where Kafka's own Java producer puts the same keys.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use soundline_relay::kafka::partitioner::partition_for_key;
use soundline_tests::recorder::{Recorder, recording, samples};
use soundline_tests::relay::{Child, InProcess, config, http_get, metric, readyz_once_it_says, wait_ready};
use soundline_tests::{client, create_topic, kafka_sasl, random_topic, read_all};

#[tokio::test]
async fn relay_produces_over_sasl_plain_and_scram() {
    let (addr, user, password) = kafka_sasl();
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let topic = random_topic("sasl");
        let relay = InProcess::start(config(&[
            ("SOUNDLINE_KAFKA_BROKERS", &addr),
            ("SOUNDLINE_TOPIC", &topic),
            ("SOUNDLINE_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
            ("SOUNDLINE_KAFKA_SASL_MECHANISM", mechanism),
            ("SOUNDLINE_KAFKA_USERNAME", &user),
            ("SOUNDLINE_KAFKA_PASSWORD", &password),
        ]))
        .await;
        three_frames_through(&relay, &topic, mechanism).await;
        relay.stop().await;
    }
}

#[tokio::test]
async fn a_wrong_sasl_password_is_a_clear_error_in_readyz() {
    let (addr, user, _) = kafka_sasl();
    let relay = InProcess::start(config(&[
        ("SOUNDLINE_KAFKA_BROKERS", &addr),
        ("SOUNDLINE_TOPIC", &random_topic("sasl-bad")),
        ("SOUNDLINE_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
        ("SOUNDLINE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
        ("SOUNDLINE_KAFKA_USERNAME", &user),
        ("SOUNDLINE_KAFKA_PASSWORD", "not-the-password"),
    ]))
    .await;
    let last = readyz_once_it_says(relay.addr, "SASL").await;
    assert_eq!(last.0, 503);
    assert_eq!(
        last.1,
        format!(
            "not ready: Kafka refused the SASL credentials of user \"{user}\" (SCRAM-SHA-256): check kafka.uname/upassword \
             (or SOUNDLINE_KAFKA_USERNAME/_PASSWORD)\n"
        )
    );
    assert!(!last.1.contains("not-the-password"), "the password never appears");
    let (_, metrics) = http_get(relay.addr, "/metrics").await.expect("metrics");
    assert!(metrics.contains("soundline_kafka_up 0"));
    assert!(!metrics.contains("not-the-password"));
    relay.stop().await;
}

#[tokio::test]
async fn partitions_match_where_the_java_producer_puts_the_same_keys() {
    const PARTITIONS: i32 = 12;
    let classpath = std::env::var("SOUNDLINE_KAFKA_CLASSPATH")
        .expect("SOUNDLINE_KAFKA_CLASSPATH is not set: make test exports the Kafka jars' classpath (scripts/kafka.sh classpath)");
    let topic = random_topic("java-partitioner");
    let client = client().await;
    create_topic(&client, &topic, PARTITIONS).await;

    let keys: Vec<String> = (0..200)
        .map(|i| format!("CAR-{i:04}"))
        .chain(["21", "foobar", "abc", "车厢-7", "a-little-bit-longer-string"].map(String::from))
        .collect();
    let mut producer = Command::new("java")
        .args(["-cp", &classpath, "org.apache.kafka.tools.ConsoleProducer"])
        .args(["--bootstrap-server", &soundline_tests::kafka_bootstrap(), "--topic", &topic])
        .args(["--property", "parse.key=true", "--property", "key.separator=|"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run Kafka's ConsoleProducer (java)");
    {
        let mut stdin = producer.stdin.take().expect("stdin");
        for key in &keys {
            writeln!(stdin, "{key}|value of {key}").expect("write to the console producer");
        }
    }
    assert!(producer.wait().expect("console producer").success(), "the Java console producer failed");

    let records = read_all(&client, &topic, PARTITIONS).await;
    assert_eq!(records.len(), keys.len());
    let java: HashMap<String, i32> = records
        .iter()
        .map(|(p, _, r)| (String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned(), *p))
        .collect();
    for key in &keys {
        assert_eq!(Some(&partition_for_key(key.as_bytes(), PARTITIONS)), java.get(key), "partition of key {key:?}");
    }
}

fn tls_env() -> (String, String, String) {
    let get = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: make test starts the broker with TLS listeners"))
    };
    (get("SOUNDLINE_TEST_KAFKA_SSL"), get("SOUNDLINE_TEST_KAFKA_SASL_SSL"), get("SOUNDLINE_TEST_KAFKA_CA"))
}

async fn three_frames_through(relay: &InProcess, topic: &str, what: &str) {
    relay.wait_ready().await;
    let mut r = Recorder::start(&relay.ws("/ws/record"), &recording("CAR-T", "seg-t")).await;
    for seq in 0..3 {
        r.send_frame(seq, 1_764_000_000_000 + i64::from(seq) * 200, &samples("seg-t", seq, 3200)).await;
    }
    assert_eq!(r.acks(3).await.len(), 3, "{what}: frames acked");
    r.close().await;
    assert_eq!(read_all(&*client().await, topic, 6).await.len(), 3, "{what}: frames in Kafka");
}

#[tokio::test]
async fn relay_produces_over_tls_and_sasl_over_tls() {
    let (ssl, sasl_ssl, ca) = tls_env();
    let topic = random_topic("ssl");
    let relay = InProcess::start(config(&[
        ("SOUNDLINE_KAFKA_BROKERS", &ssl),
        ("SOUNDLINE_TOPIC", &topic),
        ("SOUNDLINE_KAFKA_SECURITY_PROTOCOL", "SSL"),
        ("SOUNDLINE_KAFKA_CA_FILE", &ca),
    ]))
    .await;
    three_frames_through(&relay, &topic, "SSL").await;
    relay.stop().await;

    let (_, user, password) = kafka_sasl();
    let topic = random_topic("sasl-ssl");
    let relay = InProcess::start(config(&[
        ("SOUNDLINE_KAFKA_BROKERS", &sasl_ssl),
        ("SOUNDLINE_TOPIC", &topic),
        ("SOUNDLINE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ("SOUNDLINE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
        ("SOUNDLINE_KAFKA_USERNAME", &user),
        ("SOUNDLINE_KAFKA_PASSWORD", &password),
        ("SOUNDLINE_KAFKA_CA_FILE", &ca),
    ]))
    .await;
    three_frames_through(&relay, &topic, "SASL_SSL").await;
    relay.stop().await;
}

#[tokio::test]
async fn a_broker_certificate_from_an_unknown_ca_is_refused() {
    let (ssl, _, _) = tls_env();
    // No CA file: the Mozilla roots, which did not sign the test broker's certificate.
    let relay = InProcess::start(config(&[
        ("SOUNDLINE_KAFKA_BROKERS", &ssl),
        ("SOUNDLINE_TOPIC", &random_topic("ssl-bad")),
        ("SOUNDLINE_KAFKA_SECURITY_PROTOCOL", "SSL"),
    ]))
    .await;
    let last = readyz_once_it_says(relay.addr, "cannot reach Kafka").await;
    assert_eq!(last.0, 503);
    assert!(last.1.contains("cannot reach Kafka") && last.1.contains("certificate"), "{}", last.1);
    relay.stop().await;
}

#[tokio::test]
async fn relay_compresses_batches_with_each_configured_codec() {
    for codec in ["gzip", "lz4", "snappy", "zstd"] {
        let topic = random_topic(&format!("codec-{codec}"));
        let relay = InProcess::start(config(&[("SOUNDLINE_TOPIC", &topic), ("SOUNDLINE_COMPRESSION", codec)])).await;
        three_frames_through(&relay, &topic, codec).await;
        relay.stop().await;
    }
}

/// The default compression (zstd) as downstream consumers meet it: Kafka's own Java consumer, the reference
/// client, reads the relay's batches back as the envelopes they hold.
#[tokio::test]
async fn kafkas_own_consumer_reads_the_relays_default_zstd_batches() {
    let classpath = std::env::var("SOUNDLINE_KAFKA_CLASSPATH")
        .expect("SOUNDLINE_KAFKA_CLASSPATH is not set: make test exports the Kafka jars' classpath (scripts/kafka.sh classpath)");
    let topic = random_topic("codec-default");
    let relay = InProcess::start(config(&[("SOUNDLINE_TOPIC", &topic)])).await;
    assert_eq!(config(&[]).kafka.compression, soundline_relay::config::Compression::Zstd, "zstd is the default");
    three_frames_through(&relay, &topic, "default codec").await;
    relay.stop().await;
    let in_kafka = read_all(&*client().await, &topic, 6).await;
    let output = Command::new("java")
        .args(["-cp", &classpath, "org.apache.kafka.tools.consumer.ConsoleConsumer"])
        .args(["--bootstrap-server", &soundline_tests::kafka_bootstrap(), "--topic", &topic])
        .args(["--from-beginning", "--max-messages", "3", "--timeout-ms", "20000"])
        .output()
        .expect("run Kafka's ConsoleConsumer (java)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut printed: Vec<String> = String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect();
    let mut expected: Vec<String> = in_kafka
        .iter()
        .map(|(_, _, r)| String::from_utf8(r.value.clone().unwrap_or_default()).expect("utf-8 envelope"))
        .collect();
    printed.sort();
    expected.sort();
    assert_eq!(printed, expected, "the Java consumer prints the envelopes rskafka reads");
    assert!(printed.iter().all(|v| v.contains("\"sysTag\":\"AICP_SOUND\"")));
}

#[test]
fn a_wrong_setting_is_one_line_and_exit_code_2() {
    let out = Command::new(soundline_tests::relay::relay_bin())
        .arg("serve")
        .env("SOUNDLINE_KAFKA_BROKERS", "127.0.0.1:9")
        .env("SOUNDLINE_COMPRESSION", "brotli")
        .output()
        .expect("run soundline-relay");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "soundline-relay: SOUNDLINE_COMPRESSION: expected none, gzip, lz4, snappy or zstd, got \"brotli\"\n"
    );
    let out = Command::new(soundline_tests::relay::relay_bin())
        .args(["serve", "--config", "/nonexistent/relay.json"])
        .env_remove("SOUNDLINE_KAFKA_BROKERS")
        .output()
        .expect("run soundline-relay");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("soundline-relay: config file /nonexistent/relay.json: cannot read it:")
            && err.lines().count() == 1,
        "{err}"
    );
}

/// `worker_threads`: the binary runs two runtime threads by default, whatever the machine's cores, the number
/// configured otherwise, and one per core for 0; frames go through each into Kafka.
#[tokio::test]
async fn the_binary_runs_the_worker_threads_configured_and_two_by_default() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    for (setting, expected) in [(None, 2), (Some("1"), 1), (Some("3"), 3), (Some("0"), cores)] {
        let topic = random_topic("workers");
        let mut env = vec![("SOUNDLINE_TOPIC", topic.as_str())];
        if let Some(n) = setting {
            env.push(("SOUNDLINE_WORKER_THREADS", n));
        }
        let relay = Child::spawn(&env).await;
        wait_ready(relay.addr).await;
        assert_eq!(
            metric(relay.addr, "soundline_runtime_worker_threads").await,
            Some(expected),
            "worker_threads {setting:?}"
        );
        let car = format!("CAR-W{expected}");
        let mut r = Recorder::start(&format!("ws://{}/ws/record", relay.addr), &recording(&car, "seg-w")).await;
        for seq in 0..3 {
            r.send_frame(seq, 1_764_000_000_000 + i64::from(seq) * 200, &samples("seg-w", seq, 3200)).await;
        }
        assert_eq!(r.acks(3).await.len(), 3, "worker_threads {setting:?}: frames acked");
        r.close().await;
        let records = read_all(&*client().await, &topic, 6).await;
        assert_eq!(records.len(), 3, "worker_threads {setting:?}: frames in Kafka");
    }
}
