//! What the end-to-end browser tests share: the repository (for `dist/` and the Node drivers in `tests/e2e/`),
//! the fake microphone's WAV, a page run in Chromium through a fault ([`PageRun`], [`record_through`]), and the
//! audio check of what reached Kafka.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use soundline_shared::envelope::Envelope;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The level of each of the WAV's two tones.
pub const TONE_AMPLITUDE: f64 = 0.3;

/// The repository root, without `..` (Chromium's fake-capture flag plays nothing from a path with `..` in it).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repository root")
}

/// Two seconds of 1 kHz + 10 kHz at 48 kHz (whole periods of both, so the fake microphone loops it seamlessly).
pub fn write_wav(path: &Path) {
    write_tones(path, &[1_000.0, 10_000.0]);
}

/// Two seconds of `freqs_hz` (each at [`TONE_AMPLITUDE`]) at 48 kHz; frequencies with a whole number of periods
/// in 2 s loop seamlessly.
pub fn write_tones(path: &Path, freqs_hz: &[f64]) {
    let rate = 48_000u32;
    let samples: Vec<i16> = (0..rate * 2)
        .map(|i| {
            let t = f64::from(i) / f64::from(rate);
            let x: f64 = freqs_hz.iter().map(|f| TONE_AMPLITUDE * (2.0 * std::f64::consts::PI * f * t).sin()).sum();
            (x * 32767.0).round() as i16
        })
        .collect();
    std::fs::write(path, wav_bytes(rate, &samples)).expect("write the test WAV");
}

/// A mono 16-bit PCM WAV file of `samples` at `rate`.
pub fn wav_bytes(rate: u32, samples: &[i16]) -> Vec<u8> {
    let data_len = samples.len() as u32 * 2;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        wav.extend_from_slice(&s.to_le_bytes());
    }
    wav
}

/// Amplitude of the `freq_hz` component of 16 kHz samples.
fn amplitude(x: &[f64], freq_hz: f64) -> f64 {
    soundline_shared::dsp::measure::sine_fit(x, freq_hz, 16_000.0).amplitude
}

/// Every record of `car` on partition 0 of `topic`: `(seq, offset, envelope)` in offset order, duplicates kept.
pub async fn records_of_car(topic: &str, car: &str) -> Vec<(u32, i64, Envelope)> {
    records_of_car_on(&crate::kafka_bootstrap(), topic, car).await
}

/// Every record of `car` in `topic` at `bootstrap` (every partition; a car's records share one):
/// `(seq, offset, envelope)` in offset order, duplicates kept.
pub async fn records_of_car_on(bootstrap: &str, topic: &str, car: &str) -> Vec<(u32, i64, Envelope)> {
    let brokers = bootstrap.split(',').map(str::to_owned).collect();
    let client = rskafka::client::ClientBuilder::new(brokers).build().await.expect("a client on the test brokers");
    let partitions = match client.list_topics().await.expect("topics").into_iter().find(|t| t.name == topic) {
        Some(t) => t.partitions.len() as i32,
        None => return Vec::new(),
    };
    crate::read_all(&client, topic, partitions)
        .await
        .into_iter()
        .filter(|(_, _, r)| r.key.as_deref() == Some(car.as_bytes()))
        .map(|(_, offset, r)| {
            let seq = String::from_utf8_lossy(r.headers.get("seq").map(Vec::as_slice).unwrap_or_default())
                .parse()
                .expect("seq header");
            (seq, offset, Envelope::parse(r.value.as_deref().unwrap_or_default()).expect("a valid envelope"))
        })
        .collect()
}

/// Checks that `frames` (in seq order) hold `expected_s` (± 0.3 s) of the WAV's 1 kHz tone at its level, with
/// the 10 kHz tone filtered out rather than aliased to 6 kHz.
pub fn check_audio(frames: &[(u32, Envelope)], expected_s: f64) {
    let pcm: Vec<f64> = frames.iter().flat_map(|(_, e)| e.origin.samples()).map(|s| f64::from(s) / 32768.0).collect();
    let seconds = pcm.len() as f64 / 16_000.0;
    assert!(
        (seconds - expected_s).abs() <= 0.3,
        "Kafka holds {seconds:.2} s of audio, expected {expected_s:.2} s ± 0.3"
    );
    // Measured in 100 ms windows over the steady middle (past the start of capture, before the end), and
    // summarised by the median: the fake microphone's loop point and a busy machine's audio thread can put a
    // click into a window, which says nothing about the pipeline.
    let windows: Vec<(f64, f64)> = pcm[8_000..pcm.len() - 4_000]
        .chunks_exact(1_600)
        .map(|w| {
            let one_khz = amplitude(w, 1_000.0);
            (20.0 * (one_khz / TONE_AMPLITUDE).log10(), 20.0 * (amplitude(w, 6_000.0) / one_khz).log10())
        })
        .collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let level_db = median(windows.iter().map(|w| w.0).collect());
    let alias_db = median(windows.iter().map(|w| w.1).collect());
    let worst_alias = windows.iter().map(|w| w.1).fold(f64::MIN, f64::max);
    assert!(level_db.abs() <= 1.0, "1 kHz arrives at {level_db:+.2} dB of its level in the WAV");
    assert!(alias_db <= -70.0, "the 10 kHz tone aliases to 6 kHz at {alias_db:.1} dB relative to 1 kHz");
    eprintln!(
        "e2e audio: {seconds:.2} s in {} windows, 1 kHz at {level_db:+.2} dB, 6 kHz alias at {alias_db:.1} dB (worst window {worst_alias:.1} dB)",
        windows.len()
    );
}

/// One page run in headless Chromium (`tests/e2e/record.mjs`): its car, topic and files, the relay's settings
/// for it, and the checks of what it reports and what Kafka holds.
pub struct PageRun {
    /// Where the run's files go (the WAV, screenshots, the resume file).
    pub dir: PathBuf,
    /// The run's name (in file names, the car and the topic).
    pub name: String,
    /// The car the page records as.
    pub car: String,
    /// The topic the relay produces to.
    pub topic: String,
    /// Where to read that topic back: the test broker, or the cluster.
    pub bootstrap: String,
}

impl PageRun {
    /// A run named `name` against the test broker.
    pub fn new(name: &str) -> Self {
        Self::on(name, &crate::kafka_bootstrap())
    }

    /// A run named `name` whose relay produces to the brokers at `bootstrap`.
    pub fn on(name: &str, bootstrap: &str) -> Self {
        let dir = repo().join("target").join("e2e-artifacts");
        std::fs::create_dir_all(&dir).expect("artifact dir");
        let wav = dir.join("tones-1k-10k-48k.wav");
        write_wav(&wav);
        Self {
            dir,
            name: name.to_owned(),
            car: format!("CAR-{name}-{}", std::process::id()),
            topic: crate::random_topic(&format!("e2e-{name}")),
            bootstrap: bootstrap.to_owned(),
        }
    }

    /// The relay's settings for this run, as `SOUNDLINE_*` pairs (for the in-process relay and the binary alike).
    pub fn relay_env(&self) -> Vec<(&'static str, String)> {
        let dist = repo().join("dist");
        assert!(dist.join("index.html").is_file(), "no dist/: run `trunk build --release` first (make test does)");
        vec![
            ("SOUNDLINE_TOPIC", self.topic.clone()),
            ("SOUNDLINE_PARTITIONS", "1".into()),
            ("SOUNDLINE_STATIC_DIR", dist.to_str().expect("utf-8 path").into()),
        ]
    }

    pub fn relay_config(&self, extra: &[(&str, &str)]) -> soundline_relay::config::Config {
        let env = self.relay_env();
        let base: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        crate::relay::config(&[&base[..], extra].concat())
    }

    /// Runs the page from `page` (the relay, or a proxy in front of it) in headless Chromium.
    pub fn node(&self, page: SocketAddr, record_ms: u32, extra: &[(&str, String)]) -> tokio::process::Child {
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(repo().join("tests/e2e/record.mjs"))
            .env("PAGE_URL", format!("http://{page}/"))
            .env("WAV", self.dir.join("tones-1k-10k-48k.wav"))
            .env("CAR_ID", &self.car)
            .env("RECORD_MS", record_ms.to_string())
            // The artifact: what the page looked like at the end (README's screenshot comes from here).
            .env("SCREENSHOT", self.dir.join(format!("recorder-{}.png", self.name)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.spawn().expect("run node tests/e2e/record.mjs (make test installs playwright-core)")
    }

    /// Checks the page's final report and returns, from Kafka, this recording's envelopes in seq order.
    pub async fn check_page_and_read_kafka(
        &self,
        report: &serde_json::Value,
        relay_was_down: bool,
    ) -> Vec<(u32, Envelope)> {
        assert_eq!(report["error"], "", "the page showed an error: {report}");
        // Chromium itself logs each failed WebSocket connection; while the relay or the network is down those are
        // expected.
        let errors: Vec<&str> = report["consoleErrors"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e.as_str()).collect())
            .unwrap_or_default();
        let unexpected: Vec<&&str> = errors
            .iter()
            .filter(|e| {
                !(relay_was_down
                    && (e.contains("WebSocket connection to")
                        || e.contains("closed before the connection is established")))
            })
            .collect();
        assert!(unexpected.is_empty(), "the page logged errors: {unexpected:?}");
        assert_eq!(report["sent"], report["acked"], "every frame sent was acked: {report}");
        assert!(report["link"].as_str().unwrap_or_default().contains("every frame is in Kafka"), "{report}");
        let rows = report["feedRows"].as_array().cloned().unwrap_or_default();
        assert!(
            rows.iter().any(|r| r.as_str().unwrap_or_default().contains(&self.car)),
            "the feed panel lists the recording: {report}"
        );

        let mut frames: Vec<(u32, Envelope)> = records_of_car_on(&self.bootstrap, &self.topic, &self.car)
            .await
            .into_iter()
            .map(|(seq, _, e)| (seq, e))
            .collect();
        frames.sort_by_key(|(seq, _)| *seq);
        frames.dedup_by_key(|(seq, _)| *seq); // at-least-once: a resend may land twice
        let seqs: Vec<u32> = frames.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (0..seqs.len() as u32).collect::<Vec<_>>(), "sequence numbers are continuous: none missing");
        assert_eq!(report["acked"].as_u64(), Some(frames.len() as u64), "Kafka holds what the page saw acked");
        frames
    }
}

/// The last line the page's driver printed: its report.
pub async fn report_of(child: tokio::process::Child) -> serde_json::Value {
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the browser run ends within 2 min")
        .expect("node");
    assert!(out.status.success(), "the browser run failed (its stderr is above)");
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_owned();
    serde_json::from_str(&last).unwrap_or_else(|e| panic!("the browser run printed no report ({e}): {last}"))
}

/// Starts the page recording through `page`, waits until it says it recorded `CUT_AT_MS`, runs `fault`, lets the
/// page record on, and checks that every frame it recorded, through the fault, is in Kafka.
pub async fn record_through<F, Fut>(
    run: &PageRun,
    page: SocketAddr,
    cut_at_ms: u32,
    record_ms: u32,
    min_seconds: f64,
    fault: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let resume = run.dir.join(format!("{}.resume", run.name));
    let _ = std::fs::remove_file(&resume);
    let mut child = run.node(
        page,
        record_ms,
        &[("CUT_AT_MS", cut_at_ms.to_string()), ("RESUME_FILE", resume.display().to_string())],
    );
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let cut =
        tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await.expect("the page started recording");
    assert_eq!(cut.expect("read").as_deref(), Some("{\"cut\":true}"));
    fault().await;
    std::fs::write(&resume, b"").expect("resume file");
    let mut rest = String::new();
    while let Ok(Some(line)) =
        tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await.expect("report in time")
    {
        rest = line;
    }
    assert!(child.wait().await.expect("node").success(), "the browser run failed (its stderr is above)");
    let report: serde_json::Value = serde_json::from_str(&rest).unwrap_or_else(|e| panic!("no report ({e}): {rest}"));
    let frames = run.check_page_and_read_kafka(&report, true).await;
    // The page recorded through the fault: as long as its own clock says.
    let elapsed = report["elapsed"].as_str().unwrap_or_default();
    let (m, s) = elapsed.split_once(':').unwrap_or_else(|| panic!("elapsed {elapsed:?}"));
    let page_seconds = m.parse::<f64>().unwrap_or_default() * 60.0 + s.parse::<f64>().unwrap_or_default();
    assert!(page_seconds > min_seconds, "the recording went on through the fault: {page_seconds} s");
    check_audio(&frames, page_seconds);
    let _ = std::fs::remove_file(&resume);
}
