//! Recordings, not frames, end to end in a real headless Chromium against the real relay and Kafka: the page
//! lists what reached Kafka as one row per recording (length, frames, missing frames, where it is in Kafka),
//! without PCM on the wire; opening a recording fetches exactly its audio; its WAV equals the PCM in Kafka byte
//! for byte (silence where a frame is missing); its spectrogram shows the recorded tones; it plays and seeks; the
//! page speaks Chinese and English (screenshots of both go to docs/). Driven by `tests/e2e/recordings.mjs`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use soundline_shared::envelope::Envelope;
use soundline_tests::page::{records_of_car, repo, write_tones};
use soundline_tests::random_topic;
use soundline_tests::recorder::{Recorder, recording, samples};
use soundline_tests::relay::{InProcess, config};

/// The two tones the fake microphone plays for the spectrogram check (whole periods in 2 s, both under 8 kHz).
const TONES_HZ: [f64; 2] = [1_000.0, 3_500.0];

struct Page {
    dir: PathBuf,
    topic: String,
    relay: InProcess,
}

impl Page {
    async fn start(name: &str) -> Self {
        Self::start_with(name, &[]).await
    }

    /// As [`Page::start`], with more relay settings.
    async fn start_with(name: &str, extra: &[(&str, &str)]) -> Self {
        let dir = repo().join("target").join("e2e-artifacts");
        std::fs::create_dir_all(&dir).expect("artifact dir");
        write_tones(&dir.join("tones-1k-3k5-48k.wav"), &TONES_HZ);
        let dist = repo().join("dist");
        assert!(dist.join("index.html").is_file(), "no dist/: run `trunk build --release` first (make test does)");
        let topic = random_topic(&format!("e2e-recordings-{name}"));
        let base = [
            ("SOUNDLINE_TOPIC", topic.as_str()),
            ("SOUNDLINE_PARTITIONS", "1"),
            ("SOUNDLINE_STATIC_DIR", dist.to_str().expect("utf-8 path")),
        ];
        let relay = InProcess::start(config(&[&base[..], extra].concat())).await;
        relay.wait_ready().await;
        Self { dir, topic, relay }
    }

    async fn run(&self, scenario: &str, car: &str, name: &str) -> serde_json::Value {
        self.run_with(scenario, car, name, &[]).await
    }

    /// As [`Page::run`], with more settings for the script.
    async fn run_with(&self, scenario: &str, car: &str, name: &str, extra: &[(&str, &str)]) -> serde_json::Value {
        let docs = repo().join("docs").join("screenshots");
        std::fs::create_dir_all(&docs).expect("docs/screenshots");
        let out = tokio::process::Command::new("node")
            .arg(repo().join("tests/e2e/recordings.mjs"))
            .env("SCENARIO", scenario)
            .env("PAGE_URL", format!("http://{}/", self.relay.addr))
            .env("WAV", self.dir.join("tones-1k-3k5-48k.wav"))
            .env("CAR_ID", car)
            .env("RECORD_MS", "5000")
            .env("DOWNLOAD", self.download(name))
            .env("SCREENSHOT_ZH", docs.join("recordings-zh-CN.png"))
            .env("SCREENSHOT_EN", docs.join("recordings-en.png"))
            .envs(extra.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(180), out)
            .await
            .expect("the browser run ends in 3 min")
            .expect("node");
        // `output()` collects stderr too: pass it on, so that a failure names its cause.
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the browser run failed (its stderr is above)");
        let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_owned();
        serde_json::from_str(&last).unwrap_or_else(|e| panic!("no report ({e}): {last}"))
    }

    fn download(&self, name: &str) -> PathBuf {
        self.dir.join(format!("recording-{name}.wav"))
    }
}

/// The samples of a 16 kHz mono 16-bit WAV file.
fn wav_samples(path: &PathBuf) -> Vec<i16> {
    let wav = std::fs::read(path).expect("the downloaded WAV");
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(u32::from_le_bytes(wav[24..28].try_into().expect("4 bytes")), 16_000, "16 kHz");
    assert_eq!(u16::from_le_bytes(wav[22..24].try_into().expect("2 bytes")), 1, "mono");
    assert_eq!(u16::from_le_bytes(wav[34..36].try_into().expect("2 bytes")), 16, "16-bit");
    wav[44..].chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

fn no_console_errors(report: &serde_json::Value) {
    let errors = report["consoleErrors"].as_array().cloned().unwrap_or_default();
    assert!(errors.is_empty(), "the page logged errors: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_is_one_row_its_wav_is_what_kafka_holds_and_its_spectrogram_shows_its_tones() {
    let page = Page::start("tones").await;
    let car = format!("CAR-rec-{}", std::process::id());
    let report = page.run("record", &car, "tones").await;
    no_console_errors(&report);
    assert_eq!(report["lang"], "zh-CN", "a zh-CN browser gets the Chinese page: {report}");

    let kafka = records_of_car(&page.topic, &car).await;
    let mut frames: Vec<_> = kafka.iter().map(|(seq, _, e)| (*seq, e.origin.samples())).collect();
    frames.sort_by_key(|(seq, _)| *seq);
    frames.dedup_by_key(|(seq, _)| *seq);
    let kafka_ms = frames.iter().map(|(_, s)| s.len()).sum::<usize>() as f64 / 16.0;

    // One row, as long as what Kafka holds, nothing missing.
    let rows = report["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "one row for the recording: {rows:?}");
    let row = &rows[0];
    assert_eq!(row["state"], "complete", "{row}");
    let row_ms = row["durationMs"].as_f64().unwrap_or_default();
    assert!((row_ms - kafka_ms).abs() <= 100.0, "the row says {row_ms} ms, Kafka holds {kafka_ms} ms");
    // As long as the page recorded: 5 s between the clicks, and until the stop click landed (on a loaded machine
    // that takes a few hundred ms more); 300 ms either way for the start and the last frame.
    let (at_least, at_most) = (
        report["recorded"]["atLeastMs"].as_f64().unwrap_or(0.0),
        report["recorded"]["atMostMs"].as_f64().unwrap_or(0.0),
    );
    // (setTimeout and Date.now() each round to the millisecond: a 5 s sleep can measure 4999 ms.)
    assert!(at_least >= 4_990.0, "the script waited 5 s between the clicks: {}", report["recorded"]);
    assert!(
        (at_least - 300.0..=at_most + 300.0).contains(&row_ms),
        "a recording of {at_least}..{at_most} ms between the clicks: the row says {row_ms} ms"
    );
    assert!(row["text"].as_str().unwrap_or_default().contains("完整"), "the row says complete in Chinese: {row}");

    // The list came without PCM; opening the recording fetched exactly it, once.
    let frames_n = frames.len() as u64;
    let list_bytes = report["listSocketBytes"].as_u64().unwrap_or(u64::MAX);
    // A record without PCM is about 600 bytes; with it, about 8.9 KB.
    assert!(
        (frames_n * 300..frames_n * 1_200).contains(&list_bytes),
        "the list's sockets got {list_bytes} bytes for {frames_n} frames: every record, none with PCM"
    );
    let sockets = report["feedSockets"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        sockets.len() as u64,
        report["feedSocketsBefore"].as_u64().unwrap_or_default() + 1,
        "one fetch: {sockets:?}"
    );
    let fetch_bytes = sockets.last().and_then(|s| s["bytes"].as_u64()).unwrap_or_default();
    assert!(fetch_bytes > frames_n * 8_000, "the fetch carried the PCM: {fetch_bytes} bytes for {frames_n} frames");
    eprintln!("recordings: {frames_n} frames, list socket {list_bytes} bytes, fetch {fetch_bytes} bytes");

    // The WAV is the PCM in Kafka, concatenated by sequence number, byte for byte.
    let wav = wav_samples(&page.download("tones"));
    let concatenated: Vec<i16> = frames.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    assert_eq!(wav.len(), concatenated.len(), "the WAV's length");
    assert!(wav == concatenated, "the WAV's samples equal Kafka's PCM");
    let name = report["fileName"].as_str().unwrap_or_default();
    assert!(name.starts_with(&car) && name.ends_with(".wav") && !name.contains("missing"), "{name}");

    // The spectrogram drawn on the canvas: its two brightest rows are the two tones.
    let mut peaks: Vec<f64> = report["spectrogram"]["peaksHz"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.as_f64())
        .collect();
    peaks.sort_by(f64::total_cmp);
    assert_eq!(peaks.len(), 2, "{report}");
    for (got, want) in peaks.iter().zip(TONES_HZ) {
        assert!((got - want).abs() <= 31.25, "a spectrogram peak at {got} Hz, a tone at {want} Hz");
    }

    // It plays the whole recording, and seeks.
    let playback = &report["playback"];
    let during = playback["during"].as_f64().unwrap_or_default();
    assert!((800.0..=2_500.0).contains(&during), "1.5 s into playback the position says {during} ms: {playback}");
    let after_seek = playback["afterSeek"].as_f64().unwrap_or_default();
    assert!((3_000.0..=4_200.0).contains(&after_seek), "after a seek to 3 s: {after_seek} ms");
    assert!((playback["max"].as_f64().unwrap_or_default() - kafka_ms).abs() <= 1.0, "the slider spans the recording");
    assert_eq!(playback["titles"]["zh"], "已进入 Kafka 的录音");
    assert_eq!(playback["titles"]["en"], "Recordings in Kafka");
    assert_eq!(playback["titles"]["htmlLang"], "en");
    page.relay.stop().await;
}

/// A recording written with a sequence hole (by a test client: frames 0, 1, then 3, 4 on a second connection):
/// the page says "1 frame missing", and its WAV has 200 ms of silence where frame 2 would be. An analysis result
/// for it, on the relay's results topic, shows on its row. The list of this earlier recording comes without PCM.
/// The relay stamps its own `sysTag` (`SOUNDLINE_SYS_TAG`, not the built-in `AICP_SOUND`): the feed knows its
/// envelopes by that tag, so the page lists and plays them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_with_a_hole_says_one_frame_missing_and_its_wav_has_silence_there() {
    const SYS_TAG: &str = "RAIL_AUDIO";
    let results = random_topic("e2e-results");
    soundline_tests::create_topic(&*soundline_tests::client().await, &results, 1).await;
    let page = Page::start_with("hole", &[("SOUNDLINE_FEED_TOPICS", &results), ("SOUNDLINE_SYS_TAG", SYS_TAG)]).await;
    let car = format!("CAR-hole-{}", std::process::id());
    let rec = recording(&car, &format!("seg-hole-{}", std::process::id()));
    let url = format!("ws://{}/ws/record", page.relay.addr);
    let audio = |seq| samples(&rec.segment_id, seq, 3_200);
    let now = soundline_tests::now_ms();
    for seqs in [[0u32, 1], [3, 4]] {
        let mut r = Recorder::start(&url, &rec).await;
        for seq in seqs {
            r.send_frame(seq, now + i64::from(seq) * 200, &audio(seq)).await;
        }
        assert_eq!(r.acks(2).await.len(), 2);
        r.close().await;
    }
    // The analysis pipeline's verdict, as any Kafka producer writes it.
    let verdict =
        serde_json::json!({"carID": car, "segmentId": rec.segment_id, "verdict": "bearing 3 worn", "score": 0.93});
    let client = soundline_tests::client().await;
    let pc = client
        .partition_client(&results, 0, rskafka::client::partition::UnknownTopicHandling::Retry)
        .await
        .expect("partition client");
    let record = rskafka::record::Record {
        key: Some(car.as_bytes().to_vec()),
        value: Some(verdict.to_string().into_bytes()),
        headers: Default::default(),
        timestamp: chrono::TimeZone::timestamp_millis_opt(&chrono::Utc, soundline_tests::now_ms())
            .single()
            .expect("now"),
    };
    pc.produce(vec![record], rskafka::client::partition::Compression::NoCompression).await.expect("produce the result");
    let stored = soundline_tests::read_all(&client, &page.topic, 1).await;
    let tagged = stored
        .iter()
        .filter(|(_, _, r)| Envelope::parse_tagged(r.value.as_deref().unwrap_or_default(), SYS_TAG).is_ok())
        .count();
    assert_eq!((stored.len(), tagged), (4, 4), "the four frames in Kafka, each an envelope tagged {SYS_TAG}");
    // The supervisor view is read once the list holds the recording's 800 ms of audio (its four frames arrive as
    // four feed records, one render each).
    let report = page.run_with("existing", &car, "hole", &[("EXISTING_AUDIO_MS", "800")]).await;
    no_console_errors(&report);
    let row = &report["rows"][0];
    assert_eq!(row["state"], "missing", "{report}");
    assert!(row["text"].as_str().unwrap_or_default().contains("缺少 1 帧"), "the row says 1 frame missing: {row}");
    assert!(row["text"].as_str().unwrap_or_default().contains("bearing 3 worn"), "the result shows on its row: {row}");
    let list_bytes = report["listSocketBytes"].as_u64().unwrap_or(u64::MAX);
    assert!(
        list_bytes < 4 * 1_200 + 2_000,
        "the earlier recording's 4 frames were listed in {list_bytes} bytes: no PCM"
    );
    assert!(report["detail"].as_str().unwrap_or_default().contains("0.2"), "the detail says how much: {report}");
    let name = report["fileName"].as_str().unwrap_or_default();
    assert!(name.contains("1-frames-missing"), "the file name says so: {name}");
    // Before the car was entered: every device's recordings, grouped by car, the recording under its car.
    let supervisor = report["supervisor"].as_array().cloned().unwrap_or_default();
    let group = supervisor.iter().position(|li| li["group"] == true && li["text"] == car.as_str());
    let group = group.unwrap_or_else(|| panic!("a group for {car} in the supervisor view: {supervisor:?}"));
    let under = supervisor[group + 1]["text"].as_str().unwrap_or_default();
    assert!(under.contains(&car) && under.contains("4 帧"), "its recording (4 frames) under it: {supervisor:?}");
    let wav = wav_samples(&page.download("hole"));
    let expected: Vec<i16> = [audio(0), audio(1), vec![0; 3_200], audio(3), audio(4)].into_iter().flatten().collect();
    assert!(
        wav == expected,
        "frames 0, 1, 200 ms of silence, 3, 4 ({} samples, expected {})",
        wav.len(),
        expected.len()
    );
    page.relay.stop().await;
}

/// An hour of one car's frames (18 000, in 120 recordings of 30 s: more than the list keeps) arriving live, faster
/// than real time: the page's memory (JS heap after a GC, and the WebAssembly memory) stays within 10 % from a
/// quarter of the way in to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_of_live_records_leaves_page_memory_flat() {
    let page = Page::start("memory").await;
    let car = format!("CAR-mem-{}", std::process::id());
    let done = page.dir.join(format!("memory-{}.done", std::process::id()));
    let _ = std::fs::remove_file(&done);
    let mut child = tokio::process::Command::new("node")
        .arg(repo().join("tests/e2e/recordings.mjs"))
        .env("SCENARIO", "memory")
        .env("PAGE_URL", format!("http://{}/", page.relay.addr))
        .env("WAV", page.dir.join("tones-1k-3k5-48k.wav"))
        .env("CAR_ID", &car)
        .env("DONE_FILE", &done)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().expect("stdout")));
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await.expect("subscribed in time");
    assert_eq!(first.expect("read").as_deref(), Some("{\"phase\":\"subscribed\"}"));

    // 120 recordings x 150 frames of 200 ms, through the relay, as fast as it acks.
    let url = page.relay.ws("/ws/record");
    let now = soundline_tests::now_ms();
    let pcm = samples("memory", 0, 3_200);
    for s in 0..120u32 {
        let rec = recording(&car, &format!("seg-mem-{s:03}"));
        let mut r = Recorder::start(&url, &rec).await;
        for seq in 0..150u32 {
            r.send_frame(seq, now + i64::from(s * 150 + seq) * 200, &pcm).await;
        }
        assert_eq!(r.acks(150).await.len(), 150);
        r.close().await;
    }
    std::fs::write(&done, b"").expect("done file");
    let mut last = String::new();
    while let Ok(Some(line)) =
        tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await.expect("report in time")
    {
        last = line;
    }
    assert!(child.wait().await.expect("node").success(), "the browser run failed (its stderr is above)");
    let _ = std::fs::remove_file(&done);
    let report: serde_json::Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("no report ({e}): {last}"));
    no_console_errors(&report);
    let samples = report["samples"].as_array().cloned().unwrap_or_default();
    let records = |s: &serde_json::Value| s["records"].as_u64().unwrap_or_default();
    let total = samples.last().map(records).unwrap_or_default();
    assert!(total >= 18_000, "the page received every record: {total}");
    let end = samples.last().expect("samples");
    assert_eq!(end["rows"], 100, "the list keeps the newest 100 recordings");
    let quarter = samples.iter().find(|s| records(s) >= total / 4).expect("a sample a quarter of the way in");
    for what in ["heap", "wasm"] {
        let (at_quarter, at_end) = (quarter[what].as_f64().unwrap_or_default(), end[what].as_f64().unwrap_or_default());
        assert!(
            at_end <= at_quarter * 1.10,
            "{what} grew from {at_quarter} to {at_end} bytes ({:+.1} %) over the last three quarters",
            (at_end / at_quarter - 1.0) * 100.0
        );
    }
    eprintln!(
        "memory: {total} records; JS heap {} -> {} bytes, wasm {} -> {} bytes (a quarter in -> end); {} samples",
        quarter["heap"],
        end["heap"],
        quarter["wasm"],
        end["wasm"],
        samples.len()
    );
    page.relay.stop().await;
}
