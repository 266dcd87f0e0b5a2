//! Two relay processes on one broker, as behind a load balancer: recorders land on either, a recorder that
//! reconnects to the other one keeps its segment's order, and each replica's feed sees every record. Then behind
//! a real one (HAProxy, [`soundline_tests::balancer`]): a relay killed with `kill -9` while recording, and a
//! rolling restart of every relay (SIGTERM: drain, exit, start again), with recorders that reconnect and resend
//! as the page does; every frame in Kafka, in order, duplicates counted.

use std::collections::BTreeSet;

use soundline_relay::kafka::partitioner::partition_for_key;
use soundline_shared::control::ErrorCode;
use soundline_shared::feed::From;
use soundline_tests::balancer::Balancer;
use soundline_tests::broker::PrivateBroker;
use soundline_tests::recorder::{Recorder, recording, samples};
use soundline_tests::relay::{Child, metric, metric_until, wait_ready};
use soundline_tests::resilient::{check, landed, outcomes, start_recorders};
use soundline_tests::subscriber::{Subscriber, subscription};
use soundline_tests::{client, random_topic, read_all};

const TS: i64 = 1_764_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_load_keep_segment_order_and_both_feeds_see_everything() {
    let topic = random_topic("replicas");
    let env = [("SOUNDLINE_TOPIC", topic.as_str()), ("SOUNDLINE_PARTITIONS", "3")];
    // Two real processes, as in a Deployment with two pods.
    let (a, b) = (Child::spawn(&env).await, Child::spawn(&env).await);
    wait_ready(a.addr).await;
    wait_ready(b.addr).await;
    let ws = |addr: std::net::SocketAddr, path: &str| format!("ws://{addr}{path}");
    let mut feed_a = Subscriber::start(&ws(a.addr, "/ws/feed"), &subscription(None, From::Live)).await;
    let mut feed_b = Subscriber::start(&ws(b.addr, "/ws/feed"), &subscription(None, From::Live)).await;

    // Six recorders, spread over both replicas.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..6 {
        let url = ws(if i % 2 == 0 { a.addr } else { b.addr }, "/ws/record");
        tasks.spawn(async move {
            let seg = format!("seg-rep-{i}");
            let mut r = Recorder::start(&url, &recording(&format!("CAR-R{i}"), &seg)).await;
            for seq in 0..10 {
                r.send_frame(seq, TS + i64::from(seq) * 200, &samples(&seg, seq, 1600)).await;
            }
            assert_eq!(r.acks(10).await.len(), 10);
            r.close().await;
        });
    }
    // One recorder starts its segment on replica A and, after a reconnect, finishes it on replica B.
    let rec = recording("CAR-MOVER", "seg-mover");
    let mut first = Recorder::start(&ws(a.addr, "/ws/record"), &rec).await;
    for seq in 0..5 {
        first.send_frame(seq, TS + i64::from(seq) * 200, &samples("seg-mover", seq, 1600)).await;
    }
    let mut acks = first.acks(5).await;
    first.close().await;
    let mut second = Recorder::start(&ws(b.addr, "/ws/record"), &rec).await;
    for seq in 5..10 {
        second.send_frame(seq, TS + i64::from(seq) * 200, &samples("seg-mover", seq, 1600)).await;
    }
    acks.extend(second.acks(5).await);
    second.close().await;
    tasks.join_all().await;

    let partition = partition_for_key(b"CAR-MOVER", 3);
    assert!(acks.iter().all(|a| a.1 == partition), "both replicas put the car on the same partition");
    let offsets: Vec<i64> = acks.iter().map(|a| a.2).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "seq order is offset order across replicas: {offsets:?}");

    let in_kafka: BTreeSet<(i32, i64)> =
        read_all(&*client().await, &topic, 3).await.iter().map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(in_kafka.len(), 70);
    for (name, feed) in [("A", &mut feed_a), ("B", &mut feed_b)] {
        let got: BTreeSet<(i32, i64)> = feed.records(70).await.iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(got, in_kafka, "replica {name}'s feed sees every record, whichever replica produced it");
    }
}

/// SIGTERM, as Kubernetes stops a pod: the relay drains (acks what Kafka stored, closes recorders with
/// `shutting_down`) and exits 0.
async fn terminate(relay: &mut Child) {
    let pid = relay.child.id().expect("the relay runs");
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill -TERM");
    assert!(status.success(), "kill -TERM {pid}");
    let exit = tokio::time::timeout(std::time::Duration::from_secs(30), relay.child.wait())
        .await
        .expect("the relay exits within 30 s of SIGTERM")
        .expect("wait");
    assert!(exit.success(), "the relay exits 0 after draining: {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_behind_the_load_balancer_loses_nothing_and_its_recorders_move_to_the_other() {
    let topic = random_topic("lb-kill");
    let env = [("SOUNDLINE_TOPIC", topic.as_str()), ("SOUNDLINE_PARTITIONS", "6")];
    let (mut a, b) = (Child::spawn(&env).await, Child::spawn(&env).await);
    wait_ready(a.addr).await;
    wait_ready(b.addr).await;
    let lb = Balancer::start(&[a.addr, b.addr]).await;
    let frames = 250;
    let recorders = start_recorders(&lb.ws("/ws/record"), "LBK", 10, frames);
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    a.child.start_kill().expect("kill -9 relay a");
    let _ = a.child.wait().await;
    let outcomes = outcomes(recorders).await;
    let duplicates = check(&outcomes, frames, &landed(&soundline_tests::kafka_bootstrap(), &topic, 6).await);
    let moved = outcomes.iter().filter(|(_, o)| o.reconnects > 0).count();
    eprintln!(
        "relay kill -9 behind HAProxy: {moved} of 10 recorders moved to the other relay; {duplicates} duplicates"
    );
    assert!(moved >= 1, "the killed relay's recorders reconnected through the balancer");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_relay_behind_the_load_balancer_loses_nothing() {
    let topic = random_topic("lb-roll");
    let env = [("SOUNDLINE_TOPIC", topic.as_str()), ("SOUNDLINE_PARTITIONS", "6")];
    let mut relays = vec![Child::spawn(&env).await, Child::spawn(&env).await];
    for r in &relays {
        wait_ready(r.addr).await;
    }
    let lb = Balancer::start(&relays.iter().map(|r| r.addr).collect::<Vec<_>>()).await;
    let frames = 350;
    let recorders = start_recorders(&lb.ws("/ws/record"), "LBR", 10, frames);
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    for r in &mut relays {
        // One pod at a time: stop it (drain), start its successor at the same address, wait until the balancer
        // sends it traffic again (two passed checks, 1 s), then the next.
        let listen = r.addr.to_string();
        terminate(r).await;
        *r = Child::spawn(&[&env[..], &[("SOUNDLINE_LISTEN", listen.as_str())]].concat()).await;
        wait_ready(r.addr).await;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    }
    let outcomes = outcomes(recorders).await;
    let duplicates = check(&outcomes, frames, &landed(&soundline_tests::kafka_bootstrap(), &topic, 6).await);
    for (car, o) in &outcomes {
        assert!(
            o.errors.iter().all(|e| *e == ErrorCode::ShuttingDown),
            "{car}: the only error a rolling restart may show a recorder is shutting_down (it reconnects): {:?}",
            o.errors
        );
    }
    let moved: u32 = outcomes.iter().map(|(_, o)| o.reconnects).sum();
    eprintln!("rolling restart of 2 relays behind HAProxy: {moved} reconnects; {duplicates} duplicates");
    assert!(moved >= 1, "recorders were moved by the restart");
}

/// The case a relay's own dedup window cannot cover: a relay killed while its producer drains a backlog (Kafka
/// was away, and is back), so that Kafka has stored frames whose acks never left the dead relay. Its recorders
/// resume on the other relay with the position of their last ack; the other relay finds those frames in Kafka and
/// acks them instead of producing them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_while_draining_a_backlog_writes_no_duplicate_when_its_recorders_resume_on_another() {
    let broker = PrivateBroker::new("lb-drain", 0);
    broker.start();
    let bootstrap = broker.bootstrap();
    let topic = random_topic("lb-drain");
    let common = [("SOUNDLINE_KAFKA_BROKERS", bootstrap.as_str()), ("SOUNDLINE_TOPIC", topic.as_str())];
    // Small batches: the backlog drains in many requests, so the kill lands in the middle of it.
    let mut a = Child::spawn(&[&common[..], &[("SOUNDLINE_BATCH_MAX_BYTES", "65536")]].concat()).await;
    wait_ready(a.addr).await;
    // Every recorder on relay a: relay b joins the balancer only once they are all connected.
    let b_listen = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let lb = Balancer::start(&[a.addr, b_listen]).await;
    let frames = 300;
    let recorders = start_recorders(&lb.ws("/ws/record"), "DRN", 16, frames);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let listen = b_listen.to_string();
    let b = Child::spawn(&[&common[..], &[("SOUNDLINE_LISTEN", listen.as_str())]].concat()).await;
    wait_ready(b.addr).await;
    broker.kill9();
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    let held = metric(a.addr, "soundline_held_bytes").await.unwrap_or_default();
    broker.start();
    // Kill relay a as soon as Kafka has taken the first of its backlog.
    let produced = metric(a.addr, "soundline_records_produced_total").await.unwrap_or_default();
    let drained = metric_until(a.addr, "soundline_records_produced_total", std::time::Duration::from_secs(30), |v| {
        v.is_some_and(|n| n > produced)
    })
    .await;
    a.child.start_kill().expect("kill -9 relay a");
    let _ = a.child.wait().await;
    let outcomes = outcomes(recorders).await;
    drop(lb);
    let duplicates = check(&outcomes, frames, &landed(&bootstrap, &topic, 6).await);
    let resumed = metric(b.addr, "soundline_resumed_frames_total").await.unwrap_or_default();
    eprintln!(
        "relay a killed draining a backlog of {held} bytes (produced {produced} -> {drained:?}): relay b found \
         {resumed} frames already in Kafka; {duplicates} duplicates"
    );
    assert!(resumed > 0, "relay a died with frames stored but not acked (the case this test is about)");
    assert_eq!(duplicates, 0, "the resumed recordings wrote no frame twice");
}
