//! From captured blocks to wire frames: resample to 16 kHz, convert to 16-bit with clipping counted, cut into
//! frames with sequence numbers and capture timestamps. Pure: no browser API, tested natively and in Chromium.
//!
//! Where it sits: `capture` hands this the AudioWorklet's float blocks at the device's own rate; the frames it
//! returns go to `uplink`, which sends them and keeps them until acked.
//!
//! Timestamps come from sample counts, not from the clock at each block: frame `k`'s first sample is
//! `start_ms + k * frame_ms` exactly, so frames tile time without gaps or jitter however blocks arrive. When the
//! browser stops capture for a while (an iOS interruption, a suspended AudioContext), [`Pipeline::gap`] marks the
//! hole: the frame in progress ends there, short, and the next frame's timestamp is later by the gap, so the
//! frames' capture timestamps show exactly where audio is missing and for how long.

use soundline_shared::SAMPLE_RATE_HZ;
use soundline_shared::dsp::resampler::{Resampler, UnsupportedRate};

/// One frame ready for the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Sequence number within the segment, from 0.
    pub seq: u32,
    /// ms since the epoch of the first sample.
    pub capture_ts_ms: i64,
    /// 16 kHz mono samples.
    pub samples: Vec<i16>,
}

/// The capture-to-frames pipeline of one recording.
#[derive(Debug)]
pub struct Pipeline {
    resampler: Resampler,
    frame_samples: usize,
    start_ms: f64,
    resampled: Vec<f32>,
    pending: Vec<i16>,
    next_seq: u32,
    /// 16 kHz samples already put into frames.
    framed_samples: u64,
    clipped: u64,
}

/// Float sample to 16-bit, and whether it had to be clipped.
pub fn to_i16(x: f32) -> (i16, bool) {
    let scaled = (x * 32768.0).round();
    if scaled > 32767.0 {
        (i16::MAX, true)
    } else if scaled < -32768.0 {
        (i16::MIN, true)
    } else {
        (scaled as i16, false)
    }
}

/// Peak level of a block in dBFS (-inf for silence), for the level meter.
pub fn peak_dbfs(block: &[f32]) -> f32 {
    let peak = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    20.0 * peak.log10()
}

impl Pipeline {
    /// A pipeline for audio captured at `in_rate_hz`, cutting `frame_ms` frames, the first sample taken at
    /// `start_ms` (ms since the epoch).
    ///
    /// # Errors
    ///
    /// The capture rate is outside 8–96 kHz.
    pub fn new(in_rate_hz: u32, frame_ms: u32, start_ms: f64) -> Result<Self, UnsupportedRate> {
        let frame_samples = (SAMPLE_RATE_HZ / 1000 * frame_ms.clamp(10, 2000)) as usize;
        Ok(Self {
            resampler: Resampler::new(in_rate_hz)?,
            frame_samples,
            start_ms,
            resampled: Vec::with_capacity(4096),
            pending: Vec::with_capacity(frame_samples),
            next_seq: 0,
            framed_samples: 0,
            clipped: 0,
        })
    }

    /// Samples clipped so far (beyond full scale before conversion).
    pub fn clipped(&self) -> u64 {
        self.clipped
    }

    /// Capture stopped for `gap_ms` (the browser paused it) after the samples fed so far: ends the frame in
    /// progress (short) and moves the time of every later sample by the gap.
    pub fn gap(&mut self, gap_ms: f64, out: &mut Vec<Frame>) {
        if !self.pending.is_empty() {
            self.emit(out);
        }
        self.start_ms += gap_ms.max(0.0);
    }

    /// Feeds one captured block; appends every frame it completes to `out`.
    pub fn push(&mut self, block: &[f32], out: &mut Vec<Frame>) {
        self.resampled.clear();
        self.resampler.process(block, &mut self.resampled);
        self.take_resampled(out);
    }

    /// Ends the recording: flushes the resampler and emits the last, possibly shorter, frame.
    pub fn finish(&mut self, out: &mut Vec<Frame>) {
        self.resampled.clear();
        self.resampler.flush(&mut self.resampled);
        self.take_resampled(out);
        if !self.pending.is_empty() {
            self.emit(out);
        }
    }

    fn take_resampled(&mut self, out: &mut Vec<Frame>) {
        for i in 0..self.resampled.len() {
            let (s, clipped) = to_i16(self.resampled[i]);
            self.clipped += u64::from(clipped);
            self.pending.push(s);
            if self.pending.len() == self.frame_samples {
                self.emit(out);
            }
        }
    }

    fn emit(&mut self, out: &mut Vec<Frame>) {
        let ts = self.start_ms + self.framed_samples as f64 * 1000.0 / f64::from(SAMPLE_RATE_HZ);
        self.framed_samples += self.pending.len() as u64;
        let samples = std::mem::replace(&mut self.pending, Vec::with_capacity(self.frame_samples));
        out.push(Frame { seq: self.next_seq, capture_ts_ms: ts.round() as i64, samples });
        self.next_seq += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_rounds_and_counts_clipping() {
        assert_eq!(to_i16(0.0), (0, false));
        assert_eq!(to_i16(0.5), (16384, false));
        assert_eq!(to_i16(-1.0), (-32768, false));
        assert_eq!(to_i16(1.0), (32767, true));
        assert_eq!(to_i16(1.7), (32767, true));
        assert_eq!(to_i16(-1.2), (-32768, true));
    }

    #[test]
    fn frames_tile_time_with_consecutive_seqs() {
        let mut p = Pipeline::new(48_000, 200, 1_764_000_000_000.0).expect("48 kHz");
        let mut frames = Vec::new();
        let block = vec![0.1f32; 128];
        // About 2.1 s of capture in worklet-sized blocks.
        let blocks: usize = 48_000 * 21 / 10 / 128;
        for _ in 0..blocks {
            p.push(&block, &mut frames);
        }
        p.finish(&mut frames);
        assert_eq!(frames.len(), 11, "ten 200 ms frames and a short last one");
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.seq, i as u32);
            assert_eq!(f.capture_ts_ms, 1_764_000_000_000 + i as i64 * 200);
        }
        assert!(frames[..10].iter().all(|f| f.samples.len() == 3200));
        let total: usize = frames.iter().map(|f| f.samples.len()).sum();
        assert_eq!(total, (blocks * 128).div_ceil(3), "every captured sample, at a third of the rate");
    }

    #[test]
    fn a_gap_ends_the_frame_and_shows_in_the_next_timestamp() {
        let mut p = Pipeline::new(16_000, 200, 1_000.0).expect("16 kHz");
        let mut frames = Vec::new();
        p.push(&vec![0.1f32; 4_800], &mut frames); // 300 ms: one frame, 100 ms pending (minus the filter delay)
        p.gap(5_200.0, &mut frames);
        p.push(&vec![0.1f32; 6_400], &mut frames);
        p.finish(&mut frames);
        let seqs: Vec<u32> = frames.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, (0..seqs.len() as u32).collect::<Vec<_>>(), "sequence numbers stay continuous");
        let short = &frames[1];
        assert!(short.samples.len() < 3_200, "the frame in progress ends at the gap");
        let after_gap = short.capture_ts_ms + (short.samples.len() / 16) as i64;
        assert_eq!(frames[2].capture_ts_ms - after_gap, 5_200, "the next frame starts 5.2 s later: {frames:?}");
    }

    #[test]
    fn loud_input_is_clipped_and_counted() {
        let mut p = Pipeline::new(16_000, 100, 0.0).expect("16 kHz");
        let mut frames = Vec::new();
        p.push(&vec![2.0f32; 4000], &mut frames);
        p.finish(&mut frames);
        assert!(p.clipped() > 3000, "{}", p.clipped());
        assert!(frames.iter().flat_map(|f| &f.samples).skip(200).take(3000).all(|s| *s == i16::MAX));
    }

    #[test]
    fn peak_level_is_in_dbfs() {
        assert!((peak_dbfs(&[0.5, -0.25]) - (-6.0206)).abs() < 1e-3);
        assert!(peak_dbfs(&[0.0; 4]).is_infinite());
    }
}
