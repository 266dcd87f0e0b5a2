//! Measuring audio: how much of a sine at a known frequency a signal holds, and what is left over.
//!
//! Used by the resampler's quality tests and by the end-to-end test that checks what a browser recording put into
//! Kafka; kept here so both measure the same way. [`speechlike`] is the test signal of the resampler's
//! benchmarks (native and WebAssembly), so both time the same work.

/// A least-squares fit of `a·sin(ωn) + b·cos(ωn)` to a signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SineFit {
    /// Amplitude of the fitted sine (`sqrt(a² + b²)`).
    pub amplitude: f64,
    /// RMS of the signal minus the fitted sine: everything else (noise, distortion, other tones).
    pub residual_rms: f64,
}

/// Fits a sine at `freq_hz` to `samples` taken at `rate_hz`.
pub fn sine_fit(samples: &[f64], freq_hz: f64, rate_hz: f64) -> SineFit {
    let w = 2.0 * std::f64::consts::PI * freq_hz / rate_hz;
    let (mut ss, mut cc, mut sc, mut ys, mut yc) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, y) in samples.iter().enumerate() {
        let (s, c) = (w * i as f64).sin_cos();
        ss += s * s;
        cc += c * c;
        sc += s * c;
        ys += y * s;
        yc += y * c;
    }
    let det = ss * cc - sc * sc;
    if samples.is_empty() || det == 0.0 {
        return SineFit { amplitude: 0.0, residual_rms: 0.0 };
    }
    let (a, b) = ((ys * cc - yc * sc) / det, (yc * ss - ys * sc) / det);
    let residual = samples
        .iter()
        .enumerate()
        .map(|(i, y)| {
            let (s, c) = (w * i as f64).sin_cos();
            (y - a * s - b * c).powi(2)
        })
        .sum::<f64>()
        / samples.len() as f64;
    SineFit { amplitude: (a * a + b * b).sqrt(), residual_rms: residual.sqrt() }
}

/// `samples` samples at `rate` Hz of something like speech: a 140 Hz voice with 8 harmonics, a 4 Hz syllable
/// envelope, and a little white noise (deterministic).
#[must_use]
pub fn speechlike(rate: u32, samples: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let tau = 2.0 * std::f64::consts::PI;
    (0..samples)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let voice: f64 = (1..=8).map(|k| (tau * 140.0 * f64::from(k) * t).sin() / f64::from(k)).sum();
            let envelope = 0.55 + 0.45 * (tau * 4.0 * t).sin();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            (0.3 * envelope * voice + 0.01 * noise) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pure_tone_fits_exactly_and_another_tone_is_residual() {
        let x: Vec<f64> = (0..16_000)
            .map(|i| 0.25 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 16_000.0 + 0.3).sin())
            .collect();
        let fit = sine_fit(&x, 1000.0, 16_000.0);
        assert!((fit.amplitude - 0.25).abs() < 1e-9 && fit.residual_rms < 1e-9, "{fit:?}");
        assert!(sine_fit(&x, 3000.0, 16_000.0).amplitude < 1e-9);
    }
}
