//! A recording's spectrogram and waveform, computed in Rust: 0 to 8 kHz on a linear axis, power in dB. Pure,
//! tested natively and in Chromium; `view.rs` draws them on a canvas.
//!
//! Short-time Fourier transform with `realfft` (a real-input front end to `rustfft`): 512-sample Hann windows
//! (32 ms, 31.25 Hz per bin) every 256 samples (16 ms); power normalised so that a full-scale sine reads 0 dB.

use realfft::RealFftPlanner;

/// Samples per window.
pub const WINDOW: usize = 512;
/// Samples between windows.
pub const HOP: usize = 256;
/// Frequency bins per column: 0 to 8 kHz inclusive.
pub const BINS: usize = WINDOW / 2 + 1;
/// Hz per bin at 16 kHz.
pub const HZ_PER_BIN: f64 = 16_000.0 / WINDOW as f64;
/// The floor of the dB scale.
pub const FLOOR_DB: f32 = -120.0;

/// Columns of power in dB, one per hop; `columns[t][bin]`, bin 0 = 0 Hz, bin `BINS - 1` = 8 kHz.
#[derive(Debug, Clone, PartialEq)]
pub struct Spectrogram {
    /// Power per column and bin, dB re a full-scale sine.
    pub columns: Vec<Vec<f32>>,
}

/// The transform, planned once: the FFT, the window and the buffers, reused for every column (the live
/// spectrogram calls it for every 200 ms frame).
pub struct Stft {
    fft: std::sync::Arc<dyn realfft::RealToComplex<f32>>,
    hann: Vec<f32>,
    /// A full-scale sine through the window: amplitude sum(w)/2 in its bin, squared.
    reference: f32,
    input: Vec<f32>,
    spectrum: Vec<realfft::num_complex::Complex<f32>>,
}

impl Default for Stft {
    fn default() -> Self {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(WINDOW);
        let hann: Vec<f32> =
            (0..WINDOW).map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / WINDOW as f32).cos()).collect();
        let reference = (hann.iter().sum::<f32>() / 2.0).powi(2);
        let (input, spectrum) = (fft.make_input_vec(), fft.make_output_vec());
        Self { fft, hann, reference, input, spectrum }
    }
}

impl Stft {
    /// The columns of 16 kHz `samples`: one per hop while a whole window fits.
    pub fn columns(&mut self, samples: &[i16]) -> Vec<Vec<f32>> {
        let mut columns = Vec::new();
        let mut start = 0;
        while start + WINDOW <= samples.len() {
            for (i, x) in self.input.iter_mut().enumerate() {
                *x = f32::from(samples[start + i]) / 32768.0 * self.hann[i];
            }
            if self.fft.process(&mut self.input, &mut self.spectrum).is_err() {
                break;
            }
            let reference = self.reference;
            columns.push(
                self.spectrum
                    .iter()
                    .map(|c| (10.0 * (c.norm_sqr() / reference).max(1e-30).log10()).max(FLOOR_DB))
                    .collect(),
            );
            start += HOP;
        }
        columns
    }
}

impl Spectrogram {
    /// The spectrogram of 16 kHz `samples`.
    pub fn of(samples: &[i16]) -> Self {
        Self { columns: Stft::default().columns(samples) }
    }

    /// The `n` strongest bins over the whole recording (by mean power), strongest first, as frequencies in Hz.
    pub fn strongest(&self, n: usize) -> Vec<f64> {
        if self.columns.is_empty() {
            return Vec::new();
        }
        let mean: Vec<f32> = (0..BINS)
            .map(|b| self.columns.iter().map(|c| 10f32.powf(c[b] / 10.0)).sum::<f32>() / self.columns.len() as f32)
            .collect();
        let mut peaks: Vec<usize> =
            (1..BINS - 1).filter(|&b| mean[b] >= mean[b - 1] && mean[b] >= mean[b + 1]).collect();
        peaks.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]));
        peaks.into_iter().take(n).map(|b| b as f64 * HZ_PER_BIN).collect()
    }
}

/// The waveform at `width` pixels: per column, the lowest and highest sample (as -1..1).
pub fn waveform(samples: &[i16], width: usize) -> Vec<(f32, f32)> {
    if samples.is_empty() || width == 0 {
        return Vec::new();
    }
    let per = samples.len().div_ceil(width);
    samples
        .chunks(per)
        .map(|c| {
            let (lo, hi) = c.iter().fold((i16::MAX, i16::MIN), |(lo, hi), &s| (lo.min(s), hi.max(s)));
            (f32::from(lo) / 32768.0, f32::from(hi) / 32768.0)
        })
        .collect()
}

/// An RGB colour for a power in dB (from [`FLOOR_DB`] to 0): dark blue, through purple and orange, to yellow.
pub fn colour(db: f32) -> [u8; 3] {
    let t = ((db - FLOOR_DB) / -FLOOR_DB).clamp(0.0, 1.0);
    let stops: [(f32, [f32; 3]); 5] = [
        (0.0, [0.0, 0.0, 20.0]),
        (0.35, [60.0, 15.0, 110.0]),
        (0.6, [180.0, 50.0, 100.0]),
        (0.8, [250.0, 140.0, 40.0]),
        (1.0, [255.0, 250.0, 180.0]),
    ];
    let i = stops.iter().rposition(|(at, _)| *at <= t).unwrap_or(0).min(stops.len() - 2);
    let ((a, ca), (b, cb)) = (stops[i], stops[i + 1]);
    let f = ((t - a) / (b - a)).clamp(0.0, 1.0);
    [0, 1, 2].map(|k| (ca[k] + (cb[k] - ca[k]) * f).round() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One second of two tones at 16 kHz.
    fn two_tones(f1: f64, f2: f64, amplitude: f64) -> Vec<i16> {
        (0..16_000)
            .map(|i| {
                let t = f64::from(i) / 16_000.0;
                let x = amplitude
                    * ((2.0 * std::f64::consts::PI * f1 * t).sin() + (2.0 * std::f64::consts::PI * f2 * t).sin());
                (x * 32767.0).round() as i16
            })
            .collect()
    }

    #[test]
    fn the_strongest_bins_are_the_two_tones_at_their_level() {
        let s = Spectrogram::of(&two_tones(1_000.0, 5_000.0, 0.25));
        assert_eq!(s.columns.len(), (16_000 - WINDOW) / HOP + 1);
        let mut strongest = s.strongest(2);
        strongest.sort_by(f64::total_cmp);
        assert_eq!(strongest, [1_000.0, 5_000.0]);
        let bin_1k = (1_000.0 / HZ_PER_BIN) as usize;
        let db = s.columns[10][bin_1k];
        assert!((db - 20.0 * 0.25f32.log10()).abs() < 0.5, "a 0.25 sine reads {db:.2} dB (expected -12.04)");
        assert!(s.columns[10][(3_000.0 / HZ_PER_BIN) as usize] < -90.0, "nothing at 3 kHz");
    }

    #[test]
    fn the_waveform_has_one_column_per_pixel_and_the_scale_runs_dark_to_bright() {
        let w = waveform(&[0, 16_384, -16_384, 0, 8_192, -8_192], 3);
        assert_eq!(w, [(0.0, 0.5), (-0.5, 0.0), (-0.25, 0.25)]);
        assert_eq!(colour(FLOOR_DB), [0, 0, 20]);
        assert_eq!(colour(0.0), [255, 250, 180]);
        let mid = colour(-60.0);
        assert!(mid.iter().map(|&c| u32::from(c)).sum::<u32>() > 100);
    }
}
