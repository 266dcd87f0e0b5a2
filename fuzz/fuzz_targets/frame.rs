//! Fuzzes the binary audio frame decoder, `soundline_shared::frame::AudioFrame::decode`.
//!
//! Where it sits in the audio path:
//!
//! ```text
//! microphone -> browser -> [WebSocket frame] -> relay -> envelope -> Kafka -> feed
//!                           ^^^^^^^^^^^^^^^^^
//! ```
//!
//! Every binary WebSocket message a recorder (or anyone who can reach the relay) sends goes through `decode`
//! before the relay trusts a single header field, so it must never panic and never accept a frame whose parts
//! disagree. Checked for every input:
//!
//! - `decode` does not panic, whatever the bytes and the sample limit;
//! - the limit only ever refuses frames with too many samples: decoding under 1, 160, 32 000 (the relay's
//!   default) and `u32::MAX` samples agrees with decoding under no practical limit;
//! - on `Ok`: at least one sample, `sample_count()` equals the number of items `samples()` yields and its
//!   `len()`, the message is exactly header + 2 bytes per sample, the timestamp is not negative, and
//!   re-encoding with `frame::encode_to_vec` gives back the same bytes, which decode to the same frame;
//! - on `Err(Incomplete)`: the bytes really are fewer than needed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use soundline_shared::frame::{self, AudioFrame, FrameError, HEADER_LEN};

/// Sample limits to decode under; the relay's default is 32 000 (2 s at 16 kHz).
const LIMITS: [u32; 4] = [1, 160, 32_000, u32::MAX];

fuzz_target!(|bytes: &[u8]| {
    let unlimited = AudioFrame::decode(bytes, u32::MAX);
    for limit in LIMITS {
        let limited = AudioFrame::decode(bytes, limit);
        match (&unlimited, &limited) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "the limit changed what was decoded"),
            (Ok(f), Err(FrameError::TooManySamples { count, max })) => {
                assert_eq!(*max, limit);
                assert_eq!(*count as usize, f.sample_count());
                assert!(*count > limit, "{count} samples refused under a limit of {limit}");
            }
            (Ok(f), Err(e)) => panic!("valid frame of {} samples refused under limit {limit}: {e}", f.sample_count()),
            (Err(_), Ok(_)) => panic!("frame refused without a limit but accepted under {limit}"),
            (Err(_), Err(_)) => {}
        }
    }

    match unlimited {
        Ok(f) => check_frame(bytes, &f),
        Err(FrameError::Incomplete { have, need }) => {
            assert_eq!(have, bytes.len());
            assert!(need > have, "Incomplete with {have} bytes of {need} needed");
        }
        Err(FrameError::TrailingBytes { count, extra }) => {
            assert!(extra > 0);
            assert_eq!(HEADER_LEN + count as usize * 2 + extra, bytes.len());
        }
        Err(_) => {}
    }
});

fn check_frame(bytes: &[u8], f: &AudioFrame<'_>) {
    let n = f.sample_count();
    assert!(n >= 1, "a decoded frame has no samples");
    assert!(f.capture_ts_ms >= 0, "negative timestamp {} accepted", f.capture_ts_ms);
    assert_eq!(f.pcm_le.len(), n * 2);
    assert_eq!(bytes.len(), HEADER_LEN + n * 2, "length does not match the header's sample count");
    assert_eq!(f.samples().len(), n);
    let samples: Vec<i16> = f.samples().collect();
    assert_eq!(samples.len(), n, "samples() yields a different number of items than sample_count()");
    for (s, b) in samples.iter().zip(f.pcm_le.chunks_exact(2)) {
        assert_eq!(s.to_le_bytes(), [b[0], b[1]]);
    }

    // Round trip: the decoded values encode to the very same bytes and decode back to the same frame.
    let again = frame::encode_to_vec(f.seq, f.capture_ts_ms, &samples);
    assert_eq!(again, bytes, "re-encoding a decoded frame gave different bytes");
    let g = AudioFrame::decode(&again, u32::MAX).expect("a re-encoded frame decodes");
    assert_eq!((g.seq, g.capture_ts_ms), (f.seq, f.capture_ts_ms));
    assert!(g.samples().eq(samples.iter().copied()), "re-encoded frame decodes to other samples");
}
