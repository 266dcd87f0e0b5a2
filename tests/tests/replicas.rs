//! Two relay processes on one broker, as behind a load balancer: recorders land on either, a recorder that
//! reconnects to the other one keeps its segment's order, and each replica's feed sees every record.

use std::collections::BTreeSet;

use soundline_relay::kafka::partitioner::partition_for_key;
use soundline_shared::feed::From;
use soundline_tests::recorder::{Recorder, recording, samples};
use soundline_tests::relay::{Child, wait_ready};
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
