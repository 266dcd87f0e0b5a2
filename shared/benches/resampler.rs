//! `cargo bench -p soundline-shared --bench resampler`: our resampler beside rubato's, in the same run, on the same
//! signal, 48 and 44.1 kHz to 16 kHz, fed in 1 s blocks and in 128-sample blocks (the AudioWorklet's quantum).
//! Throughput is in input samples: criterion's "Melem/s" reads as input Msamples/s.
//!
//! First it measures every contender's passband, stopband and THD+N the way the resampler's own tests do (see
//! `resampler/contenders.rs`), prints the table, and refuses to go on if a rubato configuration's stopband is
//! shallower than ours or its passband less flat: the speeds below are for at least our quality.
//! `RESAMPLER_QUALITY_ONLY=1` stops after the table. The whole run takes about a minute and a half.

#[path = "resampler/contenders.rs"]
mod contenders;

use std::hint::black_box;
use std::time::Duration;

use contenders::{Contender, Kind, Quality, measure, passband_tones, stopband_tones};
use criterion::{Criterion, Throughput};
use soundline_shared::dsp::measure::speechlike;

const RATES: [u32; 2] = [48_000, 44_100];

/// rubato must be at least this flat in the passband, or as flat as ours if ours is less so (our design target).
const PASSBAND_TOLERANCE_DB: f64 = 0.001;

fn quality_report() {
    let (pass, stop) = (passband_tones(), stopband_tones());
    println!(
        "Quality: 1 s tones of amplitude 0.5 in 128-sample blocks, 400 output samples cut at each end (as in \
         shared/src/dsp/resampler.rs's tests);\n{} passband tones {}-{} Hz (gain by sine fit), {} stopband tones {}-{} Hz \
         (output RMS / input RMS).",
        pass.len(),
        pass.iter().copied().fold(f64::INFINITY, f64::min),
        pass.iter().copied().fold(0.0, f64::max),
        stop.len(),
        stop[0],
        stop[stop.len() - 1],
    );
    println!(
        "{:<7} {:<21} {:>22} {:>12} {:>28} {:>12}",
        "rate", "resampler", "passband gain, dB", "7 kHz, dB", "stopband worst, dB (at Hz)", "THD+N, dB"
    );
    let mut unfair = Vec::new();
    for rate in RATES {
        let ours = measure(Kind::Ours, rate);
        for kind in Kind::ALL {
            let q = if kind == Kind::Ours { ours } else { measure(kind, rate) };
            println!(
                "{rate:<7} {:<21} {:>+10.4} .. {:>+8.4} {:>+12.2} {:>19.1} ({:>5}) {:>12.1}",
                kind.id(),
                q.passband_min_db,
                q.passband_max_db,
                q.gain_7k_db,
                q.stopband_worst_db,
                q.stopband_worst_hz,
                q.thd_n_db
            );
            if kind != Kind::Ours && !at_least_as_good(&q, &ours) {
                unfair.push(format!("{rate} Hz {}", kind.id()));
            }
        }
    }
    println!("Configurations:");
    for rate in RATES {
        for kind in Kind::ALL {
            println!("  {rate} Hz {:<20} {}", kind.id(), kind.describe(rate));
        }
    }
    assert!(
        unfair.is_empty(),
        "rubato configured below our quality (stopband shallower or passband less flat), not a fair comparison: {}",
        unfair.join(", ")
    );
    println!();
}

fn at_least_as_good(q: &Quality, ours: &Quality) -> bool {
    let ripple = |q: &Quality| q.passband_min_db.abs().max(q.passband_max_db.abs());
    q.stopband_worst_db <= ours.stopband_worst_db && ripple(q) <= ripple(ours).max(PASSBAND_TOLERANCE_DB)
}

fn throughput(c: &mut Criterion) {
    for rate in RATES {
        let second = rate as usize;
        // 128-sample blocks: the whole blocks in a second (344 at 44.1 kHz), so each call gets a full quantum.
        for (label, block, samples) in [("1s-blocks", second, second), ("128-blocks", 128, second / 128 * 128)] {
            let signal = speechlike(rate, samples);
            let mut group = c.benchmark_group(format!("{rate}Hz-{label}"));
            group.throughput(Throughput::Elements(samples as u64));
            for kind in Kind::ALL {
                // One resampler per contender, kept across iterations: a stream in its steady state.
                let mut r = Contender::new(kind, rate, block);
                let mut out = Vec::with_capacity(samples);
                group.bench_function(kind.id(), |b| {
                    b.iter(|| {
                        out.clear();
                        for chunk in signal.chunks(block) {
                            r.process(black_box(chunk), &mut out);
                        }
                        black_box(out.len())
                    })
                });
            }
            group.finish();
        }
    }
}

fn main() {
    quality_report();
    if std::env::var_os("RESAMPLER_QUALITY_ONLY").is_some() {
        return;
    }
    let mut c = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    throughput(&mut c);
    c.final_summary();
}
