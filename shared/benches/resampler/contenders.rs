//! The resamplers the benchmark compares, behind one streaming interface (ours: any block size in, every output
//! sample that can be computed out), and the quality measurement that shows rubato is configured at least as
//! well as ours, measured the way the resampler's own tests measure (shared/src/dsp/resampler.rs: a 1 s tone of
//! amplitude 0.5, 400 output samples cut at each end, `sine_fit` for gains, RMS ratio for stopband leakage).

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Async, Fft, FixedAsync, FixedSync, SincInterpolationParameters, SincInterpolationType, WindowFunction};
use soundline_shared::dsp::measure::sine_fit;
use soundline_shared::dsp::resampler::{OUT_RATE_HZ, Resampler};

/// rubato's windowed-sinc interpolator, as configured for one contender.
#[derive(Debug, Clone, Copy)]
pub struct SincConfig {
    pub sinc_len: usize,
    pub window: WindowFunction,
    /// Relative to the output's Nyquist frequency (8 kHz); `None`: rubato's automatic choice.
    pub f_cutoff: Option<f32>,
    pub oversampling: usize,
    pub interpolation: SincInterpolationType,
}

/// rubato's sinc resampler set up to match ours (cut-off 7.5 kHz, flat to 6.5 kHz, stopband from 8.5 kHz): a
/// Blackman-Harris window over 184 input samples at 48 kHz, 176 at 44.1 kHz (the same length in time, rounded up to
/// rubato's multiple of 8). Of the filters tried (Blackman-Harris, Blackman-Harris², Blackman², 144-384 taps,
/// cut-off 0.8875-0.95 of 8 kHz or rubato's automatic one), the shortest whose measured stopband (8.5-15 kHz) is
/// at least as deep as ours with the passband within ±0.001 dB to 6.5 kHz: 176 taps at 48 kHz leak -91.5 dB at
/// 8.5 kHz, and rubato's automatic cut-off (~7.6 kHz) takes 256 taps at 48 kHz. `Nearest` with 160 phases: every
/// output position of these fixed ratios falls exactly on one of them (16 000 / gcd(44 100, 16 000) = 160; at
/// 48 kHz only phase 0 is used), so each output sample is one dot product, as in ours.
pub fn sinc_nearest(in_rate: u32) -> SincConfig {
    SincConfig {
        sinc_len: (184 * in_rate as usize).div_ceil(48_000).next_multiple_of(8),
        window: WindowFunction::BlackmanHarris,
        f_cutoff: Some(0.9375),
        oversampling: 160,
        interpolation: SincInterpolationType::Nearest,
    }
}

/// The same filter with rubato's general (any-ratio) evaluation: cubic interpolation between 128 phases (rubato's
/// default), four dot products per output sample. This is what an arbitrary rate (47 999 Hz) would take.
pub fn sinc_cubic(in_rate: u32) -> SincConfig {
    SincConfig { oversampling: 128, interpolation: SincInterpolationType::Cubic, ..sinc_nearest(in_rate) }
}

/// rubato's synchronous FFT resampler: input frames per FFT. rubato rounds it to a multiple of
/// in_rate / gcd(in_rate, 16 000) and derives the filter (Blackman-Harris², cut-off) from it. These are the
/// fastest sizes that meet our passband and stopband (measured; 768 = 2^8·3, 1764 = 2^2·3^2·7^2): rubato's
/// default for a 1024 chunk (1026 = 2·3^3·19, 1323 = 3^3·7^2) runs at half the speed at 48 kHz, and 384 at
/// 48 kHz is 2 dB down at 7 kHz and 0.0011 dB down in the passband.
pub fn fft_chunk(in_rate: u32) -> usize {
    match in_rate {
        48_000 => 768,
        44_100 => 1764,
        _ => 1024,
    }
}
pub const FFT_WINDOW: WindowFunction = WindowFunction::BlackmanHarris2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ours,
    RubatoSincNearest,
    RubatoSincCubic,
    RubatoFft,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Ours, Kind::RubatoSincNearest, Kind::RubatoSincCubic, Kind::RubatoFft];

    /// The name criterion reports (and the directory its results land in).
    pub fn id(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::RubatoSincNearest => "rubato-sinc-nearest",
            Kind::RubatoSincCubic => "rubato-sinc-cubic",
            Kind::RubatoFft => "rubato-fft",
        }
    }

    /// How it is configured at `in_rate`, for the printed report.
    pub fn describe(self, in_rate: u32) -> String {
        let sinc = |c: SincConfig| {
            format!(
                "rubato 5.1 Async::new_sinc(sinc_len {}, {:?}, f_cutoff {}, oversampling {}, {:?}), f32, FixedAsync::Input",
                c.sinc_len,
                c.window,
                c.f_cutoff.map_or("auto".to_string(), |f| format!("{f} (= {} Hz)", f * 8000.0)),
                c.oversampling,
                c.interpolation
            )
        };
        match self {
            Kind::Ours => "soundline_shared::dsp::resampler::Resampler (Kaiser β 9.5, cut-off 7.5 kHz ± 1 kHz)".into(),
            Kind::RubatoSincNearest => sinc(sinc_nearest(in_rate)),
            Kind::RubatoSincCubic => sinc(sinc_cubic(in_rate)),
            Kind::RubatoFft => format!(
                "rubato 5.1 Fft::new_custom(chunk {}, sub_chunks 1, {FFT_WINDOW:?}), f32, FixedSync::Input",
                fft_chunk(in_rate)
            ),
        }
    }
}

/// A resampler to 16 kHz that takes blocks of any size, like ours.
pub enum Contender {
    Ours(Box<Resampler>),
    Rubato(RubatoStream),
}

impl Contender {
    /// `block` is the size the input will arrive in: rubato's sinc resampler is given it as its (fixed) chunk size,
    /// the best case for it. The FFT resampler always works on [`fft_chunk`], whatever the block.
    pub fn new(kind: Kind, in_rate: u32, block: usize) -> Self {
        match kind {
            Kind::Ours => Contender::Ours(Box::new(Resampler::new(in_rate).expect("supported rate"))),
            Kind::RubatoSincNearest => Self::rubato_sinc(sinc_nearest(in_rate), in_rate, block),
            Kind::RubatoSincCubic => Self::rubato_sinc(sinc_cubic(in_rate), in_rate, block),
            Kind::RubatoFft => Self::rubato_fft(fft_chunk(in_rate), FFT_WINDOW, in_rate),
        }
    }

    pub fn rubato_sinc(c: SincConfig, in_rate: u32, block: usize) -> Self {
        let ratio = f64::from(OUT_RATE_HZ) / f64::from(in_rate);
        let mut p = SincInterpolationParameters::new(c.sinc_len, c.window)
            .oversampling_factor(c.oversampling)
            .interpolation(c.interpolation);
        p.f_cutoff = c.f_cutoff;
        let r = Async::<f32>::new_sinc(ratio, 1.0, &p, block, 1, FixedAsync::Input).expect("valid sinc setup");
        Contender::Rubato(RubatoStream::new(Box::new(r)))
    }

    pub fn rubato_fft(chunk: usize, window: WindowFunction, in_rate: u32) -> Self {
        let r = Fft::<f32>::new_custom(in_rate as usize, OUT_RATE_HZ as usize, chunk, 1, 1, window, FixedSync::Input)
            .expect("valid fft setup");
        Contender::Rubato(RubatoStream::new(Box::new(r)))
    }

    /// Feeds `input`, appends the output that can now be computed.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        match self {
            Contender::Ours(r) => r.process(input, out),
            Contender::Rubato(r) => r.process(input, out),
        }
    }
}

/// rubato behind our interface: whole chunks straight from the caller's slice, a partial one kept until it fills.
pub struct RubatoStream {
    inner: Box<dyn rubato::Resampler<f32>>,
    pending: Vec<f32>,
    out_buf: Vec<f32>,
}

impl RubatoStream {
    fn new(inner: Box<dyn rubato::Resampler<f32>>) -> Self {
        let out_buf = vec![0.0; inner.output_frames_max()];
        Self { pending: Vec::with_capacity(inner.input_frames_max()), inner, out_buf }
    }

    /// Output samples of delay before the first input sample's (rubato's own figure).
    pub fn output_delay(&self) -> usize {
        self.inner.output_delay()
    }

    fn process(&mut self, mut input: &[f32], out: &mut Vec<f32>) {
        let chunk = self.inner.input_frames_next();
        if !self.pending.is_empty() {
            let take = (chunk - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.pending.len() < chunk {
                return;
            }
            let pending = std::mem::take(&mut self.pending);
            self.run(&pending, out);
            self.pending = pending;
            self.pending.clear();
        }
        let mut chunks = input.chunks_exact(chunk);
        for c in &mut chunks {
            self.run(c, out);
        }
        self.pending.extend_from_slice(chunks.remainder());
    }

    fn run(&mut self, chunk: &[f32], out: &mut Vec<f32>) {
        let input = InterleavedSlice::new(chunk, 1, chunk.len()).expect("input adapter");
        let frames = self.out_buf.len();
        let mut output = InterleavedSlice::new_mut(&mut self.out_buf[..], 1, frames).expect("output adapter");
        let (_, written) = self.inner.process_into_buffer(&input, &mut output, None).expect("rubato process");
        out.extend_from_slice(&self.out_buf[..written]);
    }
}

// ---- quality, measured as shared/src/dsp/resampler.rs's tests do ----

fn tone(freq_hz: f64, rate_hz: u32, seconds: f64, amplitude: f64) -> Vec<f32> {
    let n = (f64::from(rate_hz) * seconds) as usize;
    (0..n)
        .map(|i| (amplitude * (2.0 * std::f64::consts::PI * freq_hz * i as f64 / f64::from(rate_hz)).sin()) as f32)
        .collect()
}

/// The whole input resampled in 128-sample blocks, aligned to it (rubato's delay cut off) and as long as ours.
pub fn resample_all(mut c: Contender, rate: u32, input: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    let want = (input.len() as u64 * u64::from(OUT_RATE_HZ)).div_ceil(u64::from(rate)) as usize;
    match &mut c {
        Contender::Ours(r) => {
            for block in input.chunks(128) {
                r.process(block, &mut out);
            }
            r.flush(&mut out);
            out
        }
        Contender::Rubato(r) => {
            for block in input.chunks(128) {
                r.process(block, &mut out);
            }
            let delay = r.output_delay();
            let silence = [0.0f32; 128];
            while out.len() < delay + want {
                r.process(&silence, &mut out);
            }
            out.drain(..delay);
            out.truncate(want);
            out
        }
    }
}

fn steady(out: &[f32]) -> &[f32] {
    &out[400..out.len() - 400]
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

fn fit(signal: &[f32], freq_hz: f64) -> (f64, f64) {
    let x: Vec<f64> = signal.iter().map(|v| f64::from(*v)).collect();
    let f = sine_fit(&x, freq_hz, f64::from(OUT_RATE_HZ));
    (f.amplitude, f.residual_rms)
}

/// What one resampler does to tones, at one input rate.
#[derive(Debug, Clone, Copy)]
pub struct Quality {
    /// Lowest and highest gain (dB) of tones from 50 Hz to 6.5 kHz.
    pub passband_min_db: f64,
    pub passband_max_db: f64,
    /// Loudest leak (dB relative to the input, RMS) of tones from 8.5 to 15 kHz, and its frequency.
    pub stopband_worst_db: f64,
    pub stopband_worst_hz: f64,
    /// Gain at 7 kHz (between our passband and stopband), for information.
    pub gain_7k_db: f64,
    /// THD+N of a 1 kHz tone, dB.
    pub thd_n_db: f64,
}

/// The test tones: the resampler tests' own, plus every 250 Hz across each band.
pub fn passband_tones() -> Vec<f64> {
    let mut f = vec![50.0, 100.0, 440.0, 1_000.0, 2_500.0, 4_000.0, 5_500.0, 6_000.0, 6_500.0];
    f.extend((1..=26).map(|k| f64::from(k) * 250.0));
    f
}

pub fn stopband_tones() -> Vec<f64> {
    (85..=150).map(|k| f64::from(k) * 100.0).collect()
}

pub fn measure(kind: Kind, rate: u32) -> Quality {
    measure_with(&|| Contender::new(kind, rate, 128), rate)
}

/// As [`measure`], for any resampler `make` builds (fed 128-sample blocks).
pub fn measure_with(make: &dyn Fn() -> Contender, rate: u32) -> Quality {
    let gain = |freq: f64| {
        let out = resample_all(make(), rate, &tone(freq, rate, 1.0, 0.5));
        20.0 * (fit(steady(&out), freq).0 / 0.5).log10()
    };
    let gains: Vec<f64> = passband_tones().into_iter().map(gain).collect();
    let (mut worst_db, mut worst_hz) = (f64::NEG_INFINITY, 0.0);
    for freq in stopband_tones() {
        let input = tone(freq, rate, 1.0, 0.5);
        let out = resample_all(make(), rate, &input);
        let level_db = 20.0 * (rms(steady(&out)) / rms(&input)).log10();
        if level_db > worst_db {
            (worst_db, worst_hz) = (level_db, freq);
        }
    }
    let out = resample_all(make(), rate, &tone(1_000.0, rate, 1.0, 0.5));
    let (amplitude, residual) = fit(steady(&out), 1_000.0);
    Quality {
        passband_min_db: gains.iter().copied().fold(f64::INFINITY, f64::min),
        passband_max_db: gains.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        stopband_worst_db: worst_db,
        stopband_worst_hz: worst_hz,
        gain_7k_db: gain(7_000.0),
        thd_n_db: 20.0 * (residual / (amplitude / std::f64::consts::SQRT_2)).log10(),
    }
}
