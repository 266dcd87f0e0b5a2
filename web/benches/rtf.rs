//! The resampler's real-time factor as WebAssembly in headless Chromium: seconds of audio resampled to 16 kHz per
//! second of wall time, fed as the AudioWorklet feeds it (128-sample blocks), timed with `performance.now()`.
//!
//! A bench target, so `cargo test` (and `make test`) never builds or runs it. scripts/bench-resampler.sh runs it
//! as a test, optimised like the shipped module (the release profile: opt-level "s" for this crate, 3 for
//! soundline-shared, thin LTO):
//!
//! ```sh
//! CHROMEDRIVER="$(command -v chromedriver)" cargo test -p soundline-web --target wasm32-unknown-unknown \
//!   --release --bench rtf -- --nocapture
//! ```
//!
//! It prints the speed and asserts nothing about it (only that the output has the right length).
//!
//! The profile matters more than one would think: through thin LTO, this crate's opt-level "s" also applies to the
//! resampler's code. Seen 2026-11-25 on this project's 2-core machine: ~830x real time for the release build,
//! ~1 250x with `--config 'profile.release.package.soundline-web.opt-level=3'` or with LTO off, and ~1 050x for
//! the debug build (soundline-shared at opt-level 3 there, no LTO). `+simd128` changes nothing: the dot product
//! stays scalar f32 in the module.
#![cfg(target_arch = "wasm32")]

use soundline_shared::dsp::resampler::{OUT_RATE_HZ, Resampler};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

/// Audio per timed run.
const SECONDS: usize = 60;
/// Timed runs per rate.
const RUNS: usize = 5;
/// Untimed runs of 10 s of audio per rate first: at least this many, and for at least this long.
const MIN_WARM_UP_RUNS: usize = 4;
const WARM_UP_MS: f64 = 2_000.0;
/// The AudioWorklet's render quantum.
const BLOCK: usize = 128;

/// Resamples all of `input` in 128-sample blocks, flushes, and returns the milliseconds it took.
fn time_one(rate: u32, input: &[f32], out: &mut Vec<f32>) -> f64 {
    let mut r = Resampler::new(rate).expect("supported rate");
    out.clear();
    let start = performance_now();
    for block in input.chunks(BLOCK) {
        r.process(block, out);
    }
    r.flush(out);
    let ms = performance_now() - start;
    let expected = (input.len() as u64 * u64::from(OUT_RATE_HZ)).div_ceil(u64::from(rate));
    assert_eq!(out.len() as u64, expected, "{rate} Hz: output length");
    ms
}

#[wasm_bindgen_test]
fn resampler_real_time_factor() {
    console_log!(
        "wasm resampler, {BLOCK}-sample blocks, {SECONDS} s of audio per run, best and median of {RUNS} runs ({})",
        if cfg!(debug_assertions) { "debug build" } else { "release build" }
    );
    let rates = [48_000u32, 44_100];
    let inputs: Vec<Vec<f32>> = rates
        .iter()
        .map(|&rate| {
            soundline_shared::dsp::measure::speechlike(rate, rate as usize)
                .into_iter()
                .cycle()
                .take(rate as usize * SECONDS)
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(OUT_RATE_HZ as usize * SECONDS + 1);
    // Warm-up, untimed: the engine starts in its baseline compiler and swaps in optimised code for a function only
    // on its next call, once a background thread has compiled it (on a busy machine, late: without this the
    // first 60 s runs took 1.5-2.5x as long as the later ones).
    let warm_up_start = performance_now();
    let mut warm_ups = 0;
    while warm_ups < MIN_WARM_UP_RUNS || performance_now() - warm_up_start < WARM_UP_MS {
        for (&rate, input) in rates.iter().zip(&inputs) {
            time_one(rate, &input[..rate as usize * 10], &mut out);
        }
        warm_ups += 1;
    }
    for (&rate, input) in rates.iter().zip(&inputs) {
        let runs: Vec<f64> = (0..RUNS).map(|_| time_one(rate, input, &mut out)).collect();
        let mut ms = runs.clone();
        ms.sort_by(f64::total_cmp);
        let rtf = |ms: f64| SECONDS as f64 * 1000.0 / ms;
        console_log!(
            "wasm resampler {rate}->16000: {SECONDS} s of audio in {:.1} ms = {:.0} x real time (median {:.1} ms = {:.0} x; runs in order {} ms)",
            ms[0],
            rtf(ms[0]),
            ms[RUNS / 2],
            rtf(ms[RUNS / 2]),
            runs.iter().map(|m| format!("{m:.1}")).collect::<Vec<_>>().join(" / ")
        );
    }
}
