//! The binary audio frame: one WebSocket binary message from recorder to relay.
//!
//! This file only turns bytes into frames and back; who owns the socket is the relay's `ingest` and the
//! browser's `uplink`. Layout (all integers little-endian), documented with a worked example in
//! `docs/protocol.md`:
//!
//! ```text
//! offset size field
//!  0      2   magic          "SL" (0x53 0x4C)
//!  2      1   kind           0x01 = audio
//!  3      1   flags          0 (reserved; anything else is refused)
//!  4      4   seq            u32, per segment: 0, 1, 2, ...
//!  8      8   capture_ts_ms  i64, ms since the Unix epoch of the first sample (>= 0)
//! 16      4   sample_count   u32, number of samples that follow (>= 1)
//! 20  2*n     pcm            i16 samples, 16 kHz mono
//! ```
//!
//! The PCM is already in the byte order the envelope's base64 wants, so the relay never converts a sample.
//! `sample_count` repeats what the message length says, on purpose: a client that writes its header wrong is
//! caught by the mismatch instead of producing shifted audio.

/// Bytes before the PCM.
pub const HEADER_LEN: usize = 20;
/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"SL";
/// `kind` of an audio frame.
pub const KIND_AUDIO: u8 = 0x01;

/// What can be wrong with a binary message that should be an audio frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the header, or than the header plus the samples it announces.
    #[error("frame is incomplete: {have} bytes, at least {need} needed")]
    Incomplete {
        /// Bytes received.
        have: usize,
        /// Bytes the header (or its sample count) requires.
        need: usize,
    },
    /// The message does not start with `SL`.
    #[error("frame does not start with the magic bytes \"SL\" (found {0:02x?})")]
    BadMagic([u8; 2]),
    /// The kind byte is not audio.
    #[error("unknown frame kind 0x{0:02x}; only 0x01 (audio) exists")]
    UnknownKind(u8),
    /// Reserved flag bits are set.
    #[error("reserved flags 0x{0:02x} are set; they must be 0")]
    ReservedFlags(u8),
    /// The capture timestamp is before the epoch.
    #[error("capture timestamp {0} ms is negative")]
    NegativeTimestamp(i64),
    /// The frame carries no samples.
    #[error("frame carries no samples")]
    Empty,
    /// The frame carries more samples than the relay accepts in one frame.
    #[error("frame carries {count} samples; at most {max} are accepted in one frame")]
    TooManySamples {
        /// Samples announced.
        count: u32,
        /// The limit.
        max: u32,
    },
    /// Bytes follow the announced samples.
    #[error("{extra} bytes follow the {count} announced samples")]
    TrailingBytes {
        /// Samples announced.
        count: u32,
        /// Extra bytes.
        extra: usize,
    },
}

/// A decoded audio frame, borrowing its PCM from the message it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFrame<'a> {
    /// Sequence number within the segment.
    pub seq: u32,
    /// ms since the epoch of the first sample.
    pub capture_ts_ms: i64,
    /// The samples as little-endian bytes (even length, at least 2).
    pub pcm_le: &'a [u8],
}

impl<'a> AudioFrame<'a> {
    /// Decodes one binary message, refusing frames of more than `max_samples` samples.
    ///
    /// # Errors
    ///
    /// A [`FrameError`] saying which part of the frame is wrong. Never panics, whatever `bytes` holds.
    pub fn decode(bytes: &'a [u8], max_samples: u32) -> Result<Self, FrameError> {
        let Some((header, pcm_le)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(FrameError::Incomplete { have: bytes.len(), need: HEADER_LEN });
        };
        let [m0, m1, kind, flags, s0, s1, s2, s3, t0, t1, t2, t3, t4, t5, t6, t7, c0, c1, c2, c3] = *header;
        if [m0, m1] != MAGIC {
            return Err(FrameError::BadMagic([m0, m1]));
        }
        if kind != KIND_AUDIO {
            return Err(FrameError::UnknownKind(kind));
        }
        if flags != 0 {
            return Err(FrameError::ReservedFlags(flags));
        }
        let seq = u32::from_le_bytes([s0, s1, s2, s3]);
        let capture_ts_ms = i64::from_le_bytes([t0, t1, t2, t3, t4, t5, t6, t7]);
        if capture_ts_ms < 0 {
            return Err(FrameError::NegativeTimestamp(capture_ts_ms));
        }
        let count = u32::from_le_bytes([c0, c1, c2, c3]);
        if count == 0 {
            return Err(FrameError::Empty);
        }
        if count > max_samples {
            return Err(FrameError::TooManySamples { count, max: max_samples });
        }
        let want = count as usize * 2;
        if pcm_le.len() < want {
            return Err(FrameError::Incomplete { have: bytes.len(), need: HEADER_LEN + want });
        }
        if pcm_le.len() > want {
            return Err(FrameError::TrailingBytes { count, extra: pcm_le.len() - want });
        }
        Ok(Self { seq, capture_ts_ms, pcm_le })
    }

    /// Number of samples.
    pub fn sample_count(&self) -> usize {
        self.pcm_le.len() / 2
    }

    /// The samples.
    pub fn samples(&self) -> impl ExactSizeIterator<Item = i16> + '_ {
        self.pcm_le.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]))
    }
}

/// Appends one encoded audio frame to `out` (which the caller may reuse between frames).
pub fn encode(seq: u32, capture_ts_ms: i64, samples: &[i16], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + samples.len() * 2);
    out.extend_from_slice(&MAGIC);
    out.push(KIND_AUDIO);
    out.push(0);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&capture_ts_ms.to_le_bytes());
    // A frame longer than u32::MAX samples would be 74 hours of audio; saturating keeps this total, and
    // `decode` would then report the mismatch.
    out.extend_from_slice(&u32::try_from(samples.len()).unwrap_or(u32::MAX).to_le_bytes());
    // Sized once, then filled: a loop of two-byte pushes checks the capacity per sample and does not vectorize.
    let pcm_at = out.len();
    out.resize(pcm_at + samples.len() * 2, 0);
    for (le, s) in out[pcm_at..].chunks_exact_mut(2).zip(samples) {
        le.copy_from_slice(&s.to_le_bytes());
    }
}

/// One encoded audio frame in a new buffer.
pub fn encode_to_vec(seq: u32, capture_ts_ms: i64, samples: &[i16]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(seq, capture_ts_ms, samples, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = 32_000;

    #[test]
    fn worked_example_from_the_protocol_doc() {
        // docs/protocol.md: seq 7, 2024-11-25T10:20:00Z, samples [1, -1, 256].
        let bytes = encode_to_vec(7, 1_732_530_000_000, &[1, -1, 256]);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "534c01000700000080d0d56293010000030000000100ffff0001");
        let frame = AudioFrame::decode(&bytes, MAX).expect("valid");
        assert_eq!(frame.seq, 7);
        assert_eq!(frame.capture_ts_ms, 1_732_530_000_000);
        assert_eq!(frame.samples().collect::<Vec<_>>(), [1, -1, 256]);
    }

    #[test]
    fn short_messages_are_incomplete() {
        assert_eq!(AudioFrame::decode(b"", MAX), Err(FrameError::Incomplete { have: 0, need: HEADER_LEN }));
        let mut bytes = encode_to_vec(0, 0, &[1, 2, 3]);
        bytes.pop();
        assert_eq!(AudioFrame::decode(&bytes, MAX), Err(FrameError::Incomplete { have: 25, need: 26 }));
    }

    #[test]
    fn each_header_field_is_checked() {
        let good = encode_to_vec(1, 5, &[9]);
        let with = |i: usize, b: u8| {
            let mut v = good.clone();
            v[i] = b;
            AudioFrame::decode(&v, MAX).map(|_| ())
        };
        assert_eq!(with(0, b'X'), Err(FrameError::BadMagic([b'X', b'L'])));
        assert_eq!(with(2, 2), Err(FrameError::UnknownKind(2)));
        assert_eq!(with(3, 0x80), Err(FrameError::ReservedFlags(0x80)));
        assert!(matches!(with(15, 0xff), Err(FrameError::NegativeTimestamp(_))));
        assert_eq!(AudioFrame::decode(&encode_to_vec(1, 5, &[]), MAX), Err(FrameError::Empty));
    }

    #[test]
    fn huge_announced_lengths_are_refused_before_reading() {
        let mut bytes = encode_to_vec(0, 0, &[1]);
        bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(AudioFrame::decode(&bytes, MAX), Err(FrameError::TooManySamples { count: u32::MAX, max: MAX }));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode_to_vec(0, 0, &[1]);
        bytes.push(0);
        assert_eq!(AudioFrame::decode(&bytes, MAX), Err(FrameError::TrailingBytes { count: 1, extra: 1 }));
    }
}
