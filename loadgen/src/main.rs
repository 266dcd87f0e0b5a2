//! `soundline-loadgen`: drives a running relay over the real protocol and measures what it promises.
//!
//! N recorders stream 16 kHz frames (in real time, or as fast as acks allow with `--max-rate`), M subscribers read
//! `/ws/feed`. It reports frames/s and MB/s acked, ack latency (frame sent -> ack) and fan-out latency (frame sent
//! -> seen by a subscriber) percentiles, over the run and per 10 s of it (`ack_ms_by_10s`, `fanout_ms_by_10s`),
//! loss (frames sent vs acked vs found in Kafka afterwards, which must be 0; a frame acked at an offset Kafka's
//! retention has deleted since counts as expired, not lost), and, when given the relay's pid, its CPU time (and
//! the kernel's share of it), peak RSS, page faults and context switches per frame, and the load generator's own
//! CPU (`load_generator`). Human summary on stdout, `--json` for machines.
//!
//! ```text
//! soundline-loadgen --relay 127.0.0.1:8080 --kafka 127.0.0.1:9092 --topic aicp-sound \
//!     --recorders 200 --subscribers 20 --duration-s 30 --frame-ms 200 [--max-rate] [--relay-pid PID] [--json]
//! soundline-loadgen ... --max-rate --for-s 30 --window 16    # as many frames as acks allow, for 30 s
//! soundline-loadgen ... --max-rate --frames 3000 --window 16 # exactly 3000 frames per recorder (equal work)
//! soundline-loadgen --relay 127.0.0.1:28081 --no-kafka ...    # against soundline-floor (src/floor.rs)
//! ```
//!
//! The report says how long the run took (`seconds`), how many frames went (`frames_sent`, `frames_acked`) and
//! the size of each envelope (`record_bytes`), so another producer can be given exactly the same work.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use rskafka::client::ClientBuilder;
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use soundline_shared::control::{ClientMessage, Hello, ServerMessage};
use soundline_shared::feed::{FeedClientMessage, FeedServerMessage, Subscribe};
use soundline_shared::frame;
use soundline_shared::recording::{DeviceInfo, LocationInfo, Recording};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug, Clone)]
#[command(about = "Load generator for the Soundline relay")]
struct Args {
    /// The relay, host:port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    relay: String,
    /// Kafka bootstrap (for the loss check afterwards).
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka: String,
    /// The relay's topic.
    #[arg(long, default_value = "aicp-sound")]
    topic: String,
    /// Concurrent recorders.
    #[arg(long, default_value_t = 10)]
    recorders: usize,
    /// Concurrent feed subscribers.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    /// How long each recorder streams.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Seconds over which the recorders start.
    #[arg(long, default_value_t = 2.0)]
    ramp_s: f64,
    /// Frame length.
    #[arg(long, default_value_t = 200)]
    frame_ms: u32,
    /// Send as fast as acks allow (a window of unacked frames per recorder) instead of in real time.
    #[arg(long)]
    max_rate: bool,
    /// Unacked frames per recorder in --max-rate mode.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// --max-rate: frames each recorder sends (instead of `--duration-s` worth of audio): equal work to compare
    /// with another producer.
    #[arg(long, conflicts_with = "for_s", requires = "max_rate")]
    frames: Option<u32>,
    /// --max-rate: each recorder sends for this many seconds of wall-clock time, as many frames as acks allow.
    #[arg(long, requires = "max_rate")]
    for_s: Option<f64>,
    /// The relay's pid, to report its CPU time and peak RSS (Linux /proc).
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Subscribers take every record of the topic; by default each watches one recorder's car (as a technician's
    /// page would), so fan-out is measured without multiplying the feed traffic by the number of recorders.
    #[arg(long)]
    subscribe_all: bool,
    /// Idle connections (hello, then nothing but pongs) opened before the recorders start, to measure what an
    /// idle connection costs the relay; they stay open until the end.
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Seconds from the first recorder until the relay's memory counts as warmed up (default: the ramp plus a
    /// quarter of the run, at most 30 s); RSS growth is measured after it.
    #[arg(long)]
    warmup_s: Option<f64>,
    /// After the run, play recorder 0's recording back as the page does: a bounded read of its offsets
    /// (`until`, with PCM); reports what it cost (records in the range, frames and bytes delivered, time).
    #[arg(long)]
    playback: bool,
    /// What the recorders send: `repeat` (one fixed frame, again and again: cheap to make, compresses far better
    /// than sound) or `noise` (a stand-in for field audio, for measuring compression: low-passed noise around
    /// -26 dBFS with a tone, new for every frame; about 13 bits of entropy per sample, so harder to compress than
    /// field audio with quiet stretches).
    #[arg(long, value_enum, default_value_t = Signal::Repeat)]
    signal: Signal,
    /// The server under test keeps nothing (`soundline-floor`): no loss check against Kafka; a frame sent and not
    /// acked counts as lost.
    #[arg(long, conflicts_with_all = ["subscribers", "playback"])]
    no_kafka: bool,
    /// One JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
}

/// The recorders' audio ([`Args::signal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Signal {
    Repeat,
    Noise,
}

/// Low-passed noise plus a 440 Hz tone, continuous across frames; seeded per recorder (xorshift64*).
struct Noise {
    state: u64,
    low: f64,
    n: u64,
}

impl Noise {
    fn new(seed: u64) -> Self {
        Self { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, low: 0.0, n: 0 }
    }

    fn fill(&mut self, out: &mut [i16]) {
        for s in out {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let white = (self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            // One pole at ~2.5 kHz: the broadband hum of a rail yard more than white hiss.
            self.low += 0.6 * (white * 9000.0 - self.low);
            let tone = 1500.0 * (self.n as f64 * 2.0 * std::f64::consts::PI * 440.0 / 16_000.0).sin();
            self.n += 1;
            *s = (self.low + tone).round().clamp(-32768.0, 32767.0) as i16;
        }
    }
}

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    acked: AtomicU64,
    pcm_bytes_acked: AtomicU64,
    fanout_seen: AtomicU64,
    errors: AtomicU64,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One latency sample: (seconds since the run started, milliseconds).
type Sample = (f64, f64);

/// When the run started (the first recorder's ramp), for [`Sample`]s.
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn since_start() -> f64 {
    STARTED.get().map_or(0.0, |s| s.elapsed().as_secs_f64())
}

/// The samples in windows of `width` seconds by when they were taken: where in a run a latency tail sits (the
/// ramp, the broker's warm-up, or all along).
fn by_window(samples: &[Sample], width: f64) -> serde_json::Value {
    let mut windows: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for &(at, ms) in samples {
        windows.entry((at / width).max(0.0) as u64).or_default().push(ms);
    }
    windows
        .into_iter()
        .map(|(w, mut ms)| {
            ms.sort_by(f64::total_cmp);
            serde_json::json!({"from_s": w as f64 * width, "samples": ms.len(), "p50": percentile(&ms, 0.5),
                "p99": percentile(&ms, 0.99), "max": ms.last().copied().unwrap_or(f64::NAN)})
        })
        .collect()
}

/// What /proc/PID says of a process: its CPU time, memory, page faults and context switches.
struct ProcStats {
    /// utime + stime, seconds.
    cpu_s: f64,
    /// stime alone: the kernel's share (system calls, TCP, scheduling), seconds.
    system_s: f64,
    /// VmHWM and VmRSS, bytes.
    peak_rss: u64,
    rss: u64,
    /// Minor page faults: pages the kernel mapped (and zeroed, for fresh memory) on first touch, such as an
    /// allocator's memory given back to the kernel and then used again.
    minor_faults: u64,
    /// Context switches of all its threads, voluntary (a thread parked: waiting for work or I/O) and not.
    context_switches: u64,
}

fn proc_stats(pid: u32) -> Option<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // proc(5): after the command's ")", field 3 (state) is index 0: minflt is field 10, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu_s = (field(14)? + field(15)?) as f64 / ticks;
    let system_s = field(15)? as f64 / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    // Per thread: a thread that ended meanwhile takes its count with it (the relay's runtime threads live on).
    let context_switches = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum();
    Some(ProcStats {
        cpu_s,
        system_s,
        peak_rss: kb("VmHWM:")?,
        rss: kb("VmRSS:")?,
        minor_faults: field(10)?,
        context_switches,
    })
}

/// The relay's resident set, in bytes.
fn rss(pid: Option<u32>) -> Option<u64> {
    pid.and_then(proc_stats).map(|s| s.rss)
}

/// How much a recorder's connection reads at a time: it receives only acks (under 100 bytes each) and pings.
/// tungstenite zero-fills the room it reads into before every read, its default room being 128 KiB: at 2000
/// recorders that zero-filling was a third of this process's CPU (perf, 2026-12-03), CPU the relay under test
/// shares the machine with.
const RECORDER_READ: usize = 4 * 1024;
/// A feed subscriber's reads: one record message (an envelope of 200 ms, ~9 KB) in one read, as the relay reads
/// a frame.
const FEED_READ: usize = 16 * 1024;

fn reads_of(bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(bytes)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/ws/record` (without Nagle's delay) and sends the hello of car `car`, segment `segment`.
async fn open_recording(
    relay: &str,
    car: String,
    segment: String,
) -> anyhow::Result<(futures_util::stream::SplitSink<Ws, Message>, futures_util::stream::SplitStream<Ws>)> {
    let url = format!("ws://{relay}/ws/record");
    let (ws, _) = tokio_tungstenite::connect_async_with_config(&url, Some(reads_of(RECORDER_READ)), true)
        .await
        .with_context(|| format!("connect {url}"))?;
    let (mut tx, rx) = ws.split();
    let recording = Recording {
        device: DeviceInfo { car_id: car, rail_type: 0 },
        location: LocationInfo { unit_id: "loadgen".into(), sty: String::new() },
        segment_id: segment,
        inspection_info: String::new(),
    };
    tx.send(Message::Text(ClientMessage::Hello(Hello::new(recording)).to_json().into())).await?;
    Ok((tx, rx))
}

/// A connection that says hello and then only answers the relay's pings, until `stop`.
async fn idle(i: usize, run: Arc<str>, relay: String, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let (mut tx, mut rx) = open_recording(&relay, format!("IDLE-{run}-{i}"), format!("idle-{run}-{i}")).await?;
    while !stop.load(Relaxed) {
        // Reading answers pings (tungstenite queues the pong); flushing sends it.
        if let Ok(Some(Err(e))) = tokio::time::timeout(Duration::from_millis(500), rx.next()).await {
            bail!("idle connection {i}: {e}");
        }
        tx.flush().await?;
    }
    let _ = tx.close().await;
    Ok(())
}

/// Where the relay said one recorder's frames landed: its partition (one per car) and each seq's offset (-1:
/// not acked).
struct Landed {
    recorder: usize,
    partition: i32,
    offsets: Vec<i64>,
}

async fn recorder(
    i: usize,
    run: Arc<str>,
    args: Args,
    totals: Arc<Totals>,
    latencies: Arc<Mutex<Vec<Sample>>>,
    landed: Arc<Mutex<Vec<Landed>>>,
) -> anyhow::Result<()> {
    let (mut tx, mut rx) = open_recording(&args.relay, format!("LOAD-{run}-{i}"), format!("{run}-{i}")).await?;
    match rx.next().await {
        Some(Ok(Message::Text(t))) if matches!(ServerMessage::parse(&t), Ok(ServerMessage::Ready { .. })) => {}
        other => bail!("recorder {i}: expected ready, got {other:?}"),
    }
    let samples_per_frame = (16 * args.frame_ms) as usize;
    let mut pcm: Vec<i16> = (0..samples_per_frame).map(|n| ((n * 7919 + i * 31) % 20_000) as i16 - 10_000).collect();
    let mut noise = (args.signal == Signal::Noise).then(|| Noise::new(i as u64 + 1));
    // How many frames: a fixed count, or as many as fit in `--for-s` (known once the sender stops).
    let planned = match (args.frames, args.for_s) {
        (Some(n), _) => n,
        (None, Some(_)) => u32::MAX,
        (None, None) => ((args.duration_s * 1000.0) / f64::from(args.frame_ms)).ceil() as u32,
    };
    let total = Arc::new(std::sync::atomic::AtomicU32::new(planned));
    let sender_done = Arc::new(tokio::sync::Notify::new());
    let sent_at: Arc<std::sync::Mutex<HashMap<u32, Instant>>> = Arc::default();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(if args.max_rate { args.window } else { usize::MAX >> 4 }));

    let reader = {
        let (sent_at, totals, latencies, in_flight) =
            (Arc::clone(&sent_at), Arc::clone(&totals), Arc::clone(&latencies), Arc::clone(&in_flight));
        let (landed, total, sender_done) = (Arc::clone(&landed), Arc::clone(&total), Arc::clone(&sender_done));
        tokio::spawn(async move {
            let mut local = Vec::new();
            let mut acked = 0;
            let mut at = Landed { recorder: i, partition: -1, offsets: Vec::new() };
            while acked < total.load(Relaxed) {
                let msg = tokio::select! {
                    msg = rx.next() => msg,
                    // The sender stopped (the count is final now): check again whether every ack is in.
                    () = sender_done.notified() => continue,
                };
                let Some(Ok(msg)) = msg else { break };
                let Message::Text(t) = msg else { continue };
                match ServerMessage::parse(&t) {
                    Ok(ServerMessage::Ack { seq, partition, offset }) => {
                        acked += 1;
                        at.partition = partition;
                        let seq_index = seq as usize;
                        if at.offsets.len() <= seq_index {
                            at.offsets.resize(seq_index + 1, -1);
                        }
                        at.offsets[seq_index] = offset;
                        totals.acked.fetch_add(1, Relaxed);
                        totals.pcm_bytes_acked.fetch_add(samples_per_frame as u64 * 2, Relaxed);
                        if let Some(t0) = sent_at.lock().ok().and_then(|mut m| m.remove(&seq)) {
                            local.push((since_start(), t0.elapsed().as_secs_f64() * 1000.0));
                        }
                        in_flight.add_permits(1);
                    }
                    Ok(ServerMessage::Error { .. }) => {
                        totals.errors.fetch_add(1, Relaxed);
                        break;
                    }
                    _ => {}
                }
            }
            latencies.lock().await.extend(local);
            landed.lock().await.push(at);
        })
    };
    let start = Instant::now();
    let deadline = args.for_s.map(|s| start + Duration::from_secs_f64(s));
    let mut seq = 0;
    while seq < planned && deadline.is_none_or(|d| Instant::now() < d) {
        if args.max_rate {
            in_flight.acquire().await?.forget();
        } else {
            let due = start + Duration::from_millis(u64::from(seq) * u64::from(args.frame_ms));
            tokio::time::sleep_until(due.into()).await;
        }
        // A buffer of its own per frame: the message owns it, so it goes to the socket without a copy.
        let mut buf = Vec::with_capacity(frame::HEADER_LEN + samples_per_frame * 2);
        if let Some(noise) = &mut noise {
            noise.fill(&mut pcm);
        }
        // The capture timestamp is the send time, so subscribers can measure fan-out latency from the envelope.
        frame::encode(seq, now_ms(), &pcm, &mut buf);
        if let Ok(mut m) = sent_at.lock() {
            m.insert(seq, Instant::now());
        }
        tx.send(Message::Binary(buf.into())).await?;
        totals.sent.fetch_add(1, Relaxed);
        seq += 1;
    }
    total.store(seq, Relaxed);
    sender_done.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(60), reader).await;
    let _ = tx.send(Message::Close(None)).await;
    Ok(())
}

/// Bytes of one envelope as the relay builds it for this load generator's frames (the size a Kafka producer
/// must send for equal work).
fn envelope_bytes(frame_ms: u32) -> usize {
    let recording = Recording {
        device: DeviceInfo { car_id: "LOAD-18c3f0a1b2d-0".into(), rail_type: 0 },
        location: LocationInfo { unit_id: "loadgen".into(), sty: String::new() },
        segment_id: "18c3f0a1b2d-0".into(),
        inspection_info: String::new(),
    };
    let pcm = vec![0u8; 32 * frame_ms as usize];
    let mut out = Vec::new();
    let stamp = soundline_shared::envelope::Stamp { ver: "1.0".into(), ..Default::default() };
    soundline_shared::envelope::write_json(
        "6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f3a21",
        &stamp,
        &recording,
        now_ms(),
        &pcm,
        &mut out,
    );
    out.len()
}

/// A bounded read of one recording (segment `segment` at `partition`, offsets `first..=last`), as the page's
/// Listen does: (frames delivered, bytes received, seconds).
async fn playback(
    relay: &str,
    segment: &str,
    partition: i32,
    first: i64,
    last: i64,
) -> anyhow::Result<(u64, u64, f64)> {
    let url = format!("ws://{relay}/ws/feed");
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, Some(reads_of(FEED_READ)), true)
        .await
        .with_context(|| format!("connect {url}"))?;
    let sub = Subscribe {
        from: soundline_shared::feed::From::Offsets(BTreeMap::from([(partition, first)])),
        until: Some(BTreeMap::from([(partition, last + 1)])),
        ..Subscribe::live(None, Some(segment.to_owned()))
    };
    let started = Instant::now();
    ws.send(Message::Text(FeedClientMessage::Subscribe(sub).to_json().into())).await?;
    let (mut frames, mut bytes) = (0u64, 0u64);
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(60), ws.next()).await.context("playback stalled")? {
        let Message::Text(t) = msg? else { continue };
        bytes += t.len() as u64;
        match FeedServerMessage::parse(&t) {
            Ok(FeedServerMessage::Record(_)) => frames += 1,
            Ok(FeedServerMessage::End) => break,
            _ => {}
        }
    }
    Ok((frames, bytes, started.elapsed().as_secs_f64()))
}

async fn subscriber(
    j: usize,
    args: Args,
    run: Arc<str>,
    totals: Arc<Totals>,
    fanout: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let url = format!("ws://{}/ws/feed", args.relay);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, Some(reads_of(FEED_READ)), true)
        .await
        .with_context(|| format!("connect {url}"))?;
    let car_id = (!args.subscribe_all).then(|| format!("LOAD-{run}-{}", j % args.recorders.max(1)));
    let sub = Subscribe::live(car_id, None);
    ws.send(Message::Text(FeedClientMessage::Subscribe(sub).to_json().into())).await?;
    let prefix = format!("LOAD-{run}-");
    let mut local = Vec::new();
    while !stop.load(Relaxed) {
        let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_millis(500), ws.next()).await else {
            continue;
        };
        if let Ok(FeedServerMessage::Record(r)) = FeedServerMessage::parse(&t)
            && r.key.as_deref().is_some_and(|k| k.starts_with(&prefix))
            && let Some(ts) = r.value["collectTimestamp"].as_i64()
        {
            local.push((since_start(), (now_ms() - ts) as f64));
            totals.fanout_seen.fetch_add(1, Relaxed);
        }
    }
    fanout.lock().await.extend(local);
    Ok(())
}

/// The loss check: (frames of this run found in Kafka, frames acked at offsets Kafka has since deleted).
///
/// A long soak writes more than a test broker keeps (`scripts/kafka.sh` caps each partition at ~1 GiB), so the
/// oldest records are gone by the end. A frame missing from Kafka whose ack named an offset below its partition's
/// log start was stored and then deleted by retention; any other missing frame is lost.
async fn check_kafka(args: &Args, run: &str, landed: &[Landed]) -> anyhow::Result<(u64, u64)> {
    let client =
        ClientBuilder::new(vec![args.kafka.clone()]).build().await.context("connect to Kafka for the loss check")?;
    let topics = client.list_topics().await?;
    let partitions =
        topics.iter().find(|t| t.name == args.topic).map(|t| t.partitions.len() as i32).context("topic not found")?;
    let prefix = format!("LOAD-{run}-");
    let mut seen: BTreeMap<usize, std::collections::BTreeSet<u32>> = BTreeMap::new();
    let mut log_start = Vec::new();
    for p in 0..partitions {
        let pc = client.partition_client(args.topic.clone(), p, UnknownTopicHandling::Retry).await?;
        let end = pc.get_offset(OffsetAt::Latest).await?;
        let mut offset = pc.get_offset(OffsetAt::Earliest).await?;
        while offset < end {
            let (records, _) = match pc.fetch_records(offset, 1..16_000_000, 1_000).await {
                Ok(fetched) => fetched,
                // Retention deleted the segment while we read: go on from the new log start.
                Err(rskafka::client::error::Error::ServerError {
                    protocol_error: rskafka::client::error::ProtocolError::OffsetOutOfRange,
                    ..
                }) => {
                    offset = pc.get_offset(OffsetAt::Earliest).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if records.is_empty() {
                break;
            }
            for r in records {
                offset = r.offset + 1;
                let key = std::str::from_utf8(r.record.key.as_deref().unwrap_or_default()).unwrap_or_default();
                let seq = r.record.headers.get("seq").and_then(|s| std::str::from_utf8(s).ok()?.parse().ok());
                if let (Some(i), Some(seq)) = (key.strip_prefix(&prefix).and_then(|i| i.parse().ok()), seq) {
                    seen.entry(i).or_default().insert(seq);
                }
            }
        }
        // Read after the scan: the log start only moves forward, so this covers whatever retention deleted
        // while we read.
        log_start.push(pc.get_offset(OffsetAt::Earliest).await?);
    }
    let found = seen.values().map(|s| s.len() as u64).sum();
    let mut expired = 0;
    for l in landed {
        let Some(&start) = usize::try_from(l.partition).ok().and_then(|p| log_start.get(p)) else { continue };
        let kept = seen.get(&l.recorder);
        expired += (0..l.offsets.len())
            .filter(|&seq| (0..start).contains(&l.offsets[seq]) && !kept.is_some_and(|k| k.contains(&(seq as u32))))
            .count() as u64;
    }
    Ok((found, expired))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run: Arc<str> = Arc::from(format!("{:x}", now_ms()));
    let totals = Arc::new(Totals::default());
    let (acks, fanout) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let landed = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // What an idle connection costs: RSS before and after opening `--idle` of them.
    let rss_before_idle = rss(args.relay_pid);
    let mut idlers = Vec::new();
    for i in 0..args.idle {
        idlers.push(tokio::spawn(idle(i, Arc::clone(&run), args.relay.clone(), Arc::clone(&stop))));
    }
    if args.idle > 0 {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let rss_idle = rss(args.relay_pid);
    let before = args.relay_pid.and_then(proc_stats);
    let own_before = proc_stats(std::process::id());
    let mut subs = Vec::new();
    for j in 0..args.subscribers {
        subs.push(tokio::spawn(subscriber(
            j,
            args.clone(),
            Arc::clone(&run),
            Arc::clone(&totals),
            Arc::clone(&fanout),
            Arc::clone(&stop),
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let _ = STARTED.set(started);
    // The relay's RSS once a second, to tell growth from warm-up.
    let rss_samples = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
    let sampler = {
        let (samples, stop, pid) = (Arc::clone(&rss_samples), Arc::clone(&stop), args.relay_pid);
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                if let Some(r) = rss(pid) {
                    samples.lock().await.push((started.elapsed().as_secs_f64(), r));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let mut recs = Vec::new();
    for i in 0..args.recorders {
        let delay = Duration::from_secs_f64(args.ramp_s * i as f64 / args.recorders.max(1) as f64);
        let (run, args, totals, acks) = (Arc::clone(&run), args.clone(), Arc::clone(&totals), Arc::clone(&acks));
        let landed = Arc::clone(&landed);
        recs.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            recorder(i, run, args, totals, acks, landed).await
        }));
    }
    let mut failed = 0;
    for r in recs {
        if !matches!(r.await, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Relaxed);
    for s in subs {
        let _ = s.await;
    }
    let _ = sampler.await;
    for i in idlers {
        if !matches!(i.await, Ok(Ok(()))) {
            totals.errors.fetch_add(1, Relaxed);
        }
    }
    // Warm-up: the ramp plus a quarter of the run (at most 30 s); growth is measured after it.
    let warm = args.warmup_s.unwrap_or(args.ramp_s + (args.duration_s / 4.0).min(30.0));
    let samples = rss_samples.lock().await.clone();
    let after_warm: Vec<(f64, u64)> = samples.iter().copied().filter(|(t, _)| *t >= warm).collect();
    let at_warm = after_warm.first().map(|s| s.1);
    let max_after = after_warm.iter().map(|s| s.1).max();
    // Flat or growing: the mean of the 30 s after warm-up against the mean of the last 30 s (overlapping when
    // the run after warm-up is shorter than a minute).
    let mean = |w: &[(f64, u64)]| (!w.is_empty()).then(|| w.iter().map(|s| s.1 as f64).sum::<f64>() / w.len() as f64);
    let first_30s = mean(&after_warm[..after_warm.len().min(30)]);
    let last_30s = mean(&after_warm[after_warm.len().saturating_sub(30)..]);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let memory = serde_json::json!({
        "idle_connections": args.idle,
        "kib_per_idle_connection": match (rss_before_idle, rss_idle) {
            (Some(a), Some(b)) if args.idle > 0 => Some((b as f64 - a as f64) / 1024.0 / args.idle as f64),
            _ => None,
        },
        "kib_per_streaming_recorder": match (rss_idle, at_warm) {
            (Some(a), Some(b)) if args.recorders > 0 => Some((b as f64 - a as f64) / 1024.0 / args.recorders as f64),
            _ => None,
        },
        "rss_mib_after_warmup": at_warm.map(mib),
        "rss_mib_max_after_warmup": max_after.map(mib),
        "rss_mib_end": samples.last().map(|s| mib(s.1)),
        "rss_mib_every_10s": samples.iter().step_by(10).map(|s| (mib(s.1) * 10.0).round() / 10.0).collect::<Vec<_>>(),
        "growth_after_warmup_pct": match (first_30s, last_30s) {
            (Some(a), Some(b)) => Some((b - a) * 100.0 / a),
            _ => None,
        },
    });
    let after = args.relay_pid.and_then(proc_stats);
    let own_after = proc_stats(std::process::id());
    // `--no-kafka`: nothing to read back (`None`); a frame counts as kept once acked.
    let (found, expired) = if args.no_kafka {
        (None, 0)
    } else {
        let (found, expired) = check_kafka(&args, &run, &landed.lock().await).await?;
        (Some(found), expired)
    };
    // Where the frames went, and the partition of recorder 0 (the car the subscribers watch first).
    let mut acked_per_partition: BTreeMap<i32, usize> = BTreeMap::new();
    let mut partition_of_recorder_0 = None;
    for l in landed.lock().await.iter() {
        *acked_per_partition.entry(l.partition).or_default() += l.offsets.iter().filter(|o| **o >= 0).count();
        if l.recorder == 0 {
            partition_of_recorder_0 = Some(l.partition);
        }
    }

    let played = match landed.lock().await.iter().find(|l| l.recorder == 0) {
        Some(l) if args.playback => {
            let offsets: Vec<i64> = l.offsets.iter().copied().filter(|o| *o >= 0).collect();
            let (first, last) =
                (offsets.iter().min().copied().unwrap_or(0), offsets.iter().max().copied().unwrap_or(-1));
            let (frames, bytes, seconds) = playback(&args.relay, &format!("{run}-0"), l.partition, first, last).await?;
            serde_json::json!({"partition": l.partition, "first": first, "last": last, "span_records": last - first + 1,
                               "frames": frames, "recording_frames": offsets.len(), "bytes": bytes, "seconds": seconds})
        }
        _ => serde_json::Value::Null,
    };

    let (ack_samples, fan_samples) =
        (std::mem::take(&mut *acks.lock().await), std::mem::take(&mut *fanout.lock().await));
    let sorted_ms = |samples: &[Sample]| {
        let mut ms: Vec<f64> = samples.iter().map(|s| s.1).collect();
        ms.sort_by(f64::total_cmp);
        ms
    };
    let (acks, fan) = (sorted_ms(&ack_samples), sorted_ms(&fan_samples));
    let (sent, acked) = (totals.sent.load(Relaxed), totals.acked.load(Relaxed));
    let lost = sent.saturating_sub(found.unwrap_or(acked) + expired);
    let mb = totals.pcm_bytes_acked.load(Relaxed) as f64 / 1e6;
    let report = serde_json::json!({
        "recorders": args.recorders, "subscribers": args.subscribers, "frame_ms": args.frame_ms,
        "subscribers_watch": if args.subscribe_all { "every record" } else { "one car each" },
        "mode": if args.max_rate { "max-rate" } else { "real-time" },
        "seconds": elapsed, "record_bytes": envelope_bytes(args.frame_ms),
        "frames_sent": sent, "frames_acked": acked, "frames_in_kafka": found,
        "frames_expired_by_retention": expired, "acked_per_partition": acked_per_partition,
        "partition_of_recorder_0": partition_of_recorder_0, "lost": lost, "recorders_failed": failed, "errors": totals.errors.load(Relaxed),
        "frames_per_s": acked as f64 / elapsed, "pcm_mb_per_s": mb / elapsed,
        "ack_ms": {"p50": percentile(&acks, 0.5), "p95": percentile(&acks, 0.95), "p99": percentile(&acks, 0.99), "max": acks.last().copied().unwrap_or(f64::NAN)},
        "fanout_ms": {"seen": totals.fanout_seen.load(Relaxed), "p50": percentile(&fan, 0.5), "p99": percentile(&fan, 0.99)},
        "ack_ms_by_10s": by_window(&ack_samples, 10.0), "fanout_ms_by_10s": by_window(&fan_samples, 10.0),
        "memory": memory,
        "playback": played,
        "relay": match (before, after) {
            (Some(b), Some(a)) => serde_json::json!({"cpu_s": a.cpu_s - b.cpu_s, "cpu_share": (a.cpu_s - b.cpu_s) / elapsed,
                "peak_rss_mb": a.peak_rss as f64 / 1e6, "rss_mb": a.rss as f64 / 1e6,
                "system_share": (a.system_s - b.system_s) / elapsed,
                "minor_faults_per_frame": a.minor_faults.saturating_sub(b.minor_faults) as f64 / acked.max(1) as f64,
                "context_switches_per_frame": a.context_switches.saturating_sub(b.context_switches) as f64 / acked.max(1) as f64}),
            _ => serde_json::Value::Null,
        },
        // This process's own CPU over the same span: on a machine it shares with the relay and the broker, the
        // instrument's load is part of what the relay's latency is measured under.
        "load_generator": match (own_before, own_after) {
            (Some(b), Some(a)) => serde_json::json!({"cpu_share": (a.cpu_s - b.cpu_s) / elapsed}),
            _ => serde_json::Value::Null,
        },
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{} recorders ({}), {} subscribers, {:.1} s: {acked}/{sent} frames acked, {} in Kafka \
             ({expired} more acked and since deleted by retention), lost {}\n\
             throughput {:.0} frames/s, {:.2} MB/s of PCM\n\
             ack latency ms: p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}\n\
             fan-out latency ms: p50 {:.0}  p99 {:.0} ({} deliveries)\n\
             relay: {}\n\
             memory: {}",
            args.recorders,
            report["mode"].as_str().unwrap_or_default(),
            args.subscribers,
            elapsed,
            found.map_or_else(|| "none read back".to_owned(), |f| f.to_string()),
            lost,
            acked as f64 / elapsed,
            mb / elapsed,
            percentile(&acks, 0.5),
            percentile(&acks, 0.95),
            percentile(&acks, 0.99),
            acks.last().copied().unwrap_or(f64::NAN),
            percentile(&fan, 0.5),
            percentile(&fan, 0.99),
            totals.fanout_seen.load(Relaxed),
            report["relay"],
            report["memory"]
        );
    }
    if lost > 0 || failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
