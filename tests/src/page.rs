//! What the end-to-end browser tests share: the repository (for `dist/` and the Node drivers in `tests/e2e/`),
//! the fake microphone's WAV, and the audio check of what reached Kafka.

use std::path::{Path, PathBuf};

use soundline_shared::envelope::Envelope;

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
    crate::read_all(&*crate::client().await, topic, 1)
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
