//! The relay against a replicated Kafka: the three-node KRaft cluster `make test` starts (every node broker and
//! controller, topics replicated 3 times, `min.insync.replicas=2`), with real-time recorders that behave like the
//! page ([`soundline_tests::resilient`]: they record whatever happens, keep every frame until it is acked,
//! reconnect and resend). Each test breaks the cluster the way an operator meets it, then asserts from Kafka:
//! every (car, seq) present, a car's frames in one partition in seq order, every ack pointing at its record;
//! duplicates are counted and printed. Where a test says so, the real page records through the same relay in
//! headless Chromium, and its recording is checked in Kafka too (every frame, continuous seqs, the tone at its
//! level). Tests take turns ([`cluster::ONE_AT_A_TIME`]) and leave three healthy
//! nodes behind, also when they fail.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use soundline_relay::kafka::partitioner::partition_for_key;
use soundline_shared::control::LinkState;
use soundline_shared::feed::{From, Subscribe};
use soundline_tests::cluster::{self, Down, Vanished};
use soundline_tests::page::{PageRun, record_through, repo};
use soundline_tests::random_topic;
use soundline_tests::relay::{Child, http_get, relay_bin, wait_ready};
use soundline_tests::resilient::{Outcome, check, landed, outcomes, start_recorders};
use soundline_tests::subscriber::{Subscriber, subscription};
use tokio::io::AsyncBufReadExt;

const PARTITIONS: i32 = 6;
/// Kafka's own failover time after a node dies: it is fenced after `broker.session.timeout.ms` (9 s by default),
/// and its partitions get new leaders from their in-sync replicas. (Where a test can see the new leader appear,
/// it measures the failover instead.)
const KAFKA_FAILOVER: Duration = Duration::from_secs(9);

/// A relay (the real binary) on the cluster, topic created by the relay itself with the cluster's replication;
/// it serves the page too (`dist/`).
async fn relay(topic: &str) -> Child {
    let brokers = cluster::bootstrap();
    let dist = repo().join("dist");
    assert!(dist.join("index.html").is_file(), "no dist/: run `trunk build --release` first (make test does)");
    let relay = Child::spawn(&[
        ("SOUNDLINE_KAFKA_BROKERS", brokers.as_str()),
        ("SOUNDLINE_TOPIC", topic),
        ("SOUNDLINE_PARTITIONS", &PARTITIONS.to_string()),
        ("SOUNDLINE_STATIC_DIR", dist.to_str().expect("utf-8 path")),
    ])
    .await;
    wait_ready(relay.addr).await;
    relay
}

/// `/readyz` sampled every 250 ms for `watch`: (time since `from`, status, body) at every change.
fn watch_readyz(
    addr: SocketAddr,
    from: Instant,
    watch: Duration,
) -> tokio::task::JoinHandle<Vec<(Duration, u16, String)>> {
    tokio::spawn(async move {
        let mut changes: Vec<(Duration, u16, String)> = Vec::new();
        while from.elapsed() < watch {
            let (status, body) = http_get(addr, "/readyz").await.unwrap_or((0, String::new()));
            if changes.last().is_none_or(|(_, s, _)| *s != status) {
                changes.push((from.elapsed(), status, body.trim().to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        changes
    })
}

/// The cars `start_recorders(.., tag, n, ..)` records, and the partition each lands in.
fn partitions_of(tag: &str, n: usize) -> Vec<i32> {
    (0..n).map(|i| partition_for_key(format!("CAR-{tag}-{i}").as_bytes(), PARTITIONS)).collect()
}

fn longest_wait(outcomes: &[(String, Outcome)]) -> Duration {
    outcomes.iter().map(|(_, o)| o.longest_ack_wait).max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_without_a_reset_stalls_acks_no_longer_than_kafkas_failover_and_readyz_tells_the_truth() {
    let _turn = cluster::ONE_AT_A_TIME.lock().await;
    // Twelve scripted recorders and the real page in Chromium, all through one relay.
    let page = PageRun::on("cluster-cut", &cluster::bootstrap());
    let topic = page.topic.clone();
    let relay = relay(&topic).await;
    let (n, frames) = (12, 450); // 45 s of audio each
    let busiest = partitions_of("CUT", n)[0];
    let recorders = start_recorders(&format!("ws://{}/ws/record", relay.addr), "CUT", n, frames);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3 s into the page's recording, the leader of a busy partition vanishes for 25 s, far longer than Kafka needs
    // to move its partitions.
    let mut seen = None;
    record_through(&page, relay.addr, 3_000, 6_000, 30.0, || async {
        let victim = cluster::leader(&topic, busiest).expect("the busy partition has a leader");
        let cut_at = Instant::now();
        let readyz = watch_readyz(relay.addr, cut_at, Duration::from_secs(40));
        let cut = Vanished::node(victim);
        let moved = tokio::task::spawn_blocking({
            let topic = topic.clone();
            move || cluster::wait_leader_other_than(&topic, busiest, victim, Duration::from_secs(25))
        });
        tokio::time::sleep(Duration::from_secs(25)).await;
        drop(cut);
        seen = Some((victim, cut_at, readyz, moved.await.expect("leader watch")));
    })
    .await;
    let (victim, cut_at, readyz, moved) = seen.expect("the cut happened");

    let outcomes = outcomes(recorders).await;
    let changes = readyz.await.expect("readyz watch");
    let duplicates = check(&outcomes, frames, &landed(&cluster::bootstrap(), &topic, PARTITIONS).await);
    let stall = longest_wait(&outcomes);
    eprintln!(
        "cut off node {victim} for 25 s: new leader {moved:?}; longest ack wait {stall:?}; {duplicates} duplicates; \
         /readyz {changes:?}"
    );
    let (_, failover) = moved.expect("Kafka moved the partition off the vanished node");
    assert!(
        stall <= failover + Duration::from_secs(5),
        "the longest ack stall ({stall:?}) is Kafka's own failover (a new leader {failover:?} after the cut) + 5 s at \
         most, however long the node is away"
    );

    // /readyz: not ready within 5 s of the cut, and ready again only once the busy partition's acks flow.
    let (first, status, _) = changes.first().expect("readyz answered");
    assert_eq!(*status, 200, "ready before the cut: {changes:?}");
    let (away_at, _, why) = changes.iter().find(|(_, s, _)| *s != 200).expect("/readyz said not ready");
    assert!(*away_at <= *first + Duration::from_secs(5), "not ready within 5 s of the cut: {changes:?}");
    assert!(why.contains("Kafka") || why.contains("partition"), "/readyz says why: {why:?}");
    assert_eq!(changes.last().map(|c| c.1), Some(200), "ready again in the end: {changes:?}");
    let (back_at, _, _) = changes.iter().find(|(t, s, _)| *t > *away_at && *s == 200).expect("ready again");
    let car = &outcomes[0].1;
    let cut_at = tokio::time::Instant::from_std(cut_at);
    let resumed = car
        .ack_times
        .iter()
        .find(|t| t.duration_since(cut_at) > Duration::from_secs(3))
        .map(|t| t.duration_since(cut_at))
        .expect("the busy partition's acks resumed");
    assert!(
        *back_at + Duration::from_millis(500) >= resumed,
        "/readyz said ready at {back_at:?}, before the busy partition's acks resumed at {resumed:?}: {changes:?}"
    );
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_with_kill_9_and_brought_back_loses_nothing() {
    let _turn = cluster::ONE_AT_A_TIME.lock().await;
    let topic = random_topic("cluster-kill");
    let relay = relay(&topic).await;
    let (n, frames) = (12, 300);
    let busiest = partitions_of("KIL", n)[0];
    let recorders = start_recorders(&format!("ws://{}/ws/record", relay.addr), "KIL", n, frames);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let victim = cluster::leader(&topic, busiest).expect("a leader");
    cluster::node(victim, "kill");
    let down = Down(victim);
    tokio::time::sleep(Duration::from_secs(15)).await;
    drop(down); // started again
    let outcomes = outcomes(recorders).await;
    let duplicates = check(&outcomes, frames, &landed(&cluster::bootstrap(), &topic, PARTITIONS).await);
    let stall = longest_wait(&outcomes);
    eprintln!("kill -9 of node {victim} for 15 s: longest ack wait {stall:?}; {duplicates} duplicates");
    assert!(stall <= KAFKA_FAILOVER + Duration::from_secs(5), "longest ack stall {stall:?}");
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_broker_while_recording_loses_nothing() {
    let _turn = cluster::ONE_AT_A_TIME.lock().await;
    let topic = random_topic("cluster-roll");
    let relay = relay(&topic).await;
    let (n, frames) = (12, 700);
    let recorders = start_recorders(&format!("ws://{}/ws/record", relay.addr), "ROL", n, frames);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // As an operator rolls a cluster: one node at a time, SIGTERM (a controlled shutdown moves its leaderships
    // while it is still up), start it again, wait until nothing is under-replicated, then the next.
    for node in 1..=3u8 {
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || {
            cluster::node(node, "stop");
            let down = Down(node);
            std::thread::sleep(Duration::from_secs(3));
            drop(down);
            assert!(
                cluster::wait_fully_replicated(&topic, PARTITIONS, Duration::from_secs(60)),
                "node {node} back in sync within 60 s"
            );
        })
        .await
        .expect("restart step");
    }
    let outcomes = outcomes(recorders).await;
    let duplicates = check(&outcomes, frames, &landed(&cluster::bootstrap(), &topic, PARTITIONS).await);
    let stall = longest_wait(&outcomes);
    eprintln!("rolling restart of 3 nodes: longest ack wait {stall:?}; {duplicates} duplicates");
    assert!(
        stall <= Duration::from_secs(5),
        "a controlled shutdown moves leaders at once: longest ack stall {stall:?}"
    );
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_brokers_down_hold_every_frame_and_readyz_says_why_until_produces_succeed() {
    let _turn = cluster::ONE_AT_A_TIME.lock().await;
    let page = PageRun::on("cluster-two", &cluster::bootstrap());
    let topic = page.topic.clone();
    let relay = relay(&topic).await;
    let (n, frames) = (12, 420);
    let recorders = start_recorders(&format!("ws://{}/ws/record", relay.addr), "TWO", n, frames);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Fewer in-sync replicas than min.insync.replicas (and no controller quorum): Kafka can keep nothing, while
    // the page and the recorders record on.
    let mut seen = None;
    record_through(&page, relay.addr, 3_000, 6_000, 25.0, || async {
        let cut_at = Instant::now();
        let readyz = watch_readyz(relay.addr, cut_at, Duration::from_secs(45));
        cluster::node(2, "kill");
        cluster::node(3, "kill");
        let (two, three) = (Down(2), Down(3));
        tokio::time::sleep(Duration::from_secs(20)).await;
        tokio::task::spawn_blocking(move || drop((two, three))).await.expect("start the nodes again");
        seen = Some((cut_at, readyz));
    })
    .await;
    let (cut_at, readyz) = seen.expect("the outage happened");
    let outcomes = outcomes(recorders).await;
    let changes = readyz.await.expect("readyz watch");
    let duplicates = check(&outcomes, frames, &landed(&cluster::bootstrap(), &topic, PARTITIONS).await);
    eprintln!("two of three nodes down for 20 s: {duplicates} duplicates; /readyz {changes:?}");
    for (car, o) in &outcomes {
        assert!(
            o.statuses.iter().any(|s| matches!(s, LinkState::KafkaUnavailable | LinkState::Backpressure)),
            "{car} heard that Kafka is away: {:?}",
            o.statuses
        );
        assert!(o.errors.is_empty(), "{car}: the relay refused nothing it could keep: {:?}", o.errors);
    }
    let (away_at, _, why) = changes.iter().find(|(_, s, _)| *s != 200).expect("/readyz said not ready");
    assert!(*away_at <= Duration::from_secs(5), "not ready within 5 s: {changes:?}");
    assert!(why.starts_with("not ready: "), "/readyz says why: {why:?}");
    let (back_at, _, _) = changes.iter().find(|(t, s, _)| *t > *away_at && *s == 200).expect("ready again");
    let cut_at = tokio::time::Instant::from_std(cut_at);
    let resumed = outcomes
        .iter()
        .filter_map(|(_, o)| o.ack_times.iter().find(|t| t.duration_since(cut_at) > Duration::from_secs(3)))
        .map(|t| t.duration_since(cut_at))
        .min()
        .expect("acks resumed");
    assert!(*back_at >= Duration::from_secs(20), "not ready while the nodes were down: {changes:?}");
    assert!(
        *back_at + Duration::from_millis(500) >= resumed,
        "/readyz said ready at {back_at:?}, before acks resumed at {resumed:?}: {changes:?}"
    );
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_while_recording_keep_recordings_in_progress_in_place_and_the_feed_and_tail_follow() {
    let _turn = cluster::ONE_AT_A_TIME.lock().await;
    let topic = random_topic("cluster-grow");
    let relay = relay(&topic).await;
    let url = format!("ws://{}/ws/record", relay.addr);
    let mut feed = Subscriber::start(&format!("ws://{}/ws/feed", relay.addr), &subscription(None, From::Live)).await;
    // The feed is read while the recorders run, as a page reads it (a subscriber that stops reading is closed).
    let (fed_tx, mut fed_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move { while fed_tx.send(feed.records(1).await.remove(0).partition).is_ok() {} });
    let tail = tokio::process::Command::new(relay_bin())
        .args(["tail", "--from", "earliest", "--json"])
        .env("SOUNDLINE_KAFKA_BROKERS", cluster::bootstrap())
        .env("SOUNDLINE_TOPIC", &topic)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("soundline-relay tail");
    let (before, after) = ((6, 250), (6, 60));
    // A technician's page, open before the growth, watching a car whose next recording lands on a new partition.
    let watched = (0..after.0)
        .map(|i| format!("CAR-NEW-{i}"))
        .find(|car| partition_for_key(car.as_bytes(), 9) >= PARTITIONS)
        .expect("one of the new cars is placed on a new partition");
    let car_sub = Subscribe::live(Some(watched.clone()), None);
    let mut car_feed = Subscriber::start(&format!("ws://{}/ws/feed", relay.addr), &car_sub).await;
    let old = start_recorders(&url, "OLD", before.0, before.1);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let grown = 9;
    tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || cluster::add_partitions(&topic, grown)
    })
    .await
    .expect("kafka-topics");
    // The relay's probe notices within 2 s; recordings started after that are placed over 9 partitions.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let new = start_recorders(&url, "NEW", after.0, after.1);
    let (old, new) = (outcomes(old).await, outcomes(new).await);
    let in_kafka = landed(&cluster::bootstrap(), &topic, grown).await;
    let duplicates = check(&old, before.1, &in_kafka) + check(&new, after.1, &in_kafka);
    for (car, _) in &old {
        let p = partition_for_key(car.as_bytes(), PARTITIONS);
        assert!(
            in_kafka[car].values().flatten().all(|(q, _)| *q == p),
            "{car} kept partition {p} of 6 while the topic grew"
        );
    }
    for (car, _) in &new {
        let p = partition_for_key(car.as_bytes(), grown);
        assert!(
            in_kafka[car].values().flatten().all(|(q, _)| *q == p),
            "{car}, recorded after the growth: partition {p} of 9, as Kafka's Java client places it"
        );
    }
    let new_partitions: std::collections::BTreeSet<i32> =
        new.iter().map(|(car, _)| partition_for_key(car.as_bytes(), grown)).filter(|p| *p >= PARTITIONS).collect();
    assert!(!new_partitions.is_empty(), "the test's new cars use a new partition");

    // The feed and tail, both started before the growth, read the new partitions without a restart.
    let total: usize = in_kafka.values().map(|seqs| seqs.values().map(Vec::len).sum::<usize>()).sum();
    let mut fed = std::collections::BTreeSet::new();
    for n in 0..total {
        let partition = tokio::time::timeout(Duration::from_secs(60), fed_rx.recv()).await.expect("the feed in time");
        fed.insert(partition.unwrap_or_else(|| panic!("the feed stopped after {n} of {total} records")));
    }
    assert!(fed_rx.try_recv().is_err(), "the feed delivered every record in Kafka, and no more");
    reader.abort();
    assert!(new_partitions.is_subset(&fed), "the feed delivered records of new partitions {new_partitions:?}: {fed:?}");
    let mut lines = tokio::io::BufReader::new(tail.stdout.expect("tail's stdout")).lines();
    let mut tailed = std::collections::BTreeSet::new();
    for _ in 0..total {
        let line =
            tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.expect("tail printed in time");
        let line = line.expect("read").expect("a line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("tail --json");
        tailed.insert(v["partition"].as_i64().expect("partition") as i32);
    }
    assert!(new_partitions.is_subset(&tailed), "tail printed records of new partitions {new_partitions:?}: {tailed:?}");
    // The car's subscription, made under 6 partitions, delivered the car's recording on its partition of 9.
    let watched_at = partition_for_key(watched.as_bytes(), grown);
    let stored: usize = in_kafka[&watched].values().map(Vec::len).sum();
    let got = car_feed.records(stored).await;
    assert!(got.iter().all(|r| r.key.as_deref() == Some(watched.as_str()) && r.partition == watched_at), "{got:?}");
    assert!(got.windows(2).all(|w| w[0].offset < w[1].offset), "in offset order: {got:?}");
    let seqs: std::collections::BTreeSet<u32> = got.iter().filter_map(|r| r.seq).collect();
    assert_eq!(seqs, (0..after.1).collect(), "every frame of {watched}'s recording, as Kafka holds them");
    eprintln!(
        "grew 6 -> 9 while recording: {duplicates} duplicates; feed partitions {fed:?}; tail partitions {tailed:?}"
    );
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_partition_reassigned_to_other_brokers_while_recording_loses_nothing() {
    let _turn = cluster::ONE_AT_A_TIME.lock().await;
    let topic = random_topic("cluster-move");
    let relay = relay(&topic).await;
    let (n, frames) = (12, 350);
    let busiest = partitions_of("MOV", n)[0];
    let recorders = start_recorders(&format!("ws://{}/ws/record", relay.addr), "MOV", n, frames);
    tokio::time::sleep(Duration::from_secs(4)).await;
    // As an operator drains a broker: the partition's replicas move off its leader (`kafka-reassign-partitions`),
    // Kafka elects a new leader among them; then back onto all three.
    let leader = cluster::leader(&topic, busiest).expect("a leader");
    let others: Vec<u8> = (1..=3).filter(|n| *n != leader).collect();
    let moved = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || {
            let off = cluster::reassign(&topic, busiest, &others, Duration::from_secs(60));
            let new_leader = cluster::leader(&topic, busiest);
            let back = cluster::reassign(&topic, busiest, &[others[0], others[1], leader], Duration::from_secs(60));
            (off, new_leader, back)
        }
    })
    .await
    .expect("reassignment");
    let outcomes = outcomes(recorders).await;
    let duplicates = check(&outcomes, frames, &landed(&cluster::bootstrap(), &topic, PARTITIONS).await);
    let stall = longest_wait(&outcomes);
    eprintln!(
        "partition {busiest} moved off node {leader} and back: {moved:?}; longest ack wait {stall:?}; {duplicates} duplicates"
    );
    assert!(moved.0 && moved.2, "both reassignments completed: {moved:?}");
    assert!(moved.1.is_some_and(|l| l != leader), "the partition got a new leader: {moved:?}");
    assert!(
        stall <= Duration::from_secs(5),
        "a reassignment moves the leader while both are up: longest ack stall {stall:?}"
    );
    drop(relay);
}
