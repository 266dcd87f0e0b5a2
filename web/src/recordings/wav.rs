//! A recording as a WAV file (16 kHz mono 16-bit PCM), assembled from what came back from Kafka by sequence
//! number, with silence of a frame's length where a frame is missing. Pure, tested natively.

use std::collections::BTreeMap;

/// The recording's samples in sequence order, from seq 0 to the last one: each missing frame is
/// `frame_samples` zeros. Returns the samples and the missing sequence numbers.
pub fn assemble(frames: &BTreeMap<u32, Vec<i16>>, frame_samples: usize) -> (Vec<i16>, Vec<u32>) {
    let Some(&last) = frames.keys().next_back() else { return (Vec::new(), Vec::new()) };
    let mut out = Vec::with_capacity((last as usize + 1) * frame_samples);
    let mut missing = Vec::new();
    for seq in 0..=last {
        match frames.get(&seq) {
            Some(samples) => out.extend_from_slice(samples),
            None => {
                missing.push(seq);
                out.resize(out.len() + frame_samples, 0);
            }
        }
    }
    (out, missing)
}

/// A WAV file of 16 kHz mono 16-bit `samples`.
pub fn encode(samples: &[i16]) -> Vec<u8> {
    let rate = soundline_shared::SAMPLE_RATE_HZ;
    let data_len = (samples.len() * 2) as u32;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes()); // bytes per second
    wav.extend_from_slice(&2u16.to_le_bytes()); // bytes per sample frame
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        wav.extend_from_slice(&s.to_le_bytes());
    }
    wav
}

/// The downloaded file's name: car, start time (UTC, from the device's clock) and, when frames are missing, how
/// many, so the file says it is incomplete wherever it is copied to.
pub fn file_name(car_id: &str, start_iso: &str, missing: usize) -> String {
    let safe: String =
        car_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    let stamp: String = start_iso.chars().filter(|c| c.is_ascii_digit() || *c == 'T').take(15).collect();
    match missing {
        0 => format!("{safe}-{stamp}.wav"),
        n => format!("{safe}-{stamp}-{n}-frames-missing.wav"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_joined_by_seq_with_silence_for_a_missing_one() {
        let frames = BTreeMap::from([(0, vec![1i16; 4]), (2, vec![3; 4]), (1, vec![2; 4]), (4, vec![5; 2])]);
        let (samples, missing) = assemble(&frames, 4);
        assert_eq!(missing, [3]);
        assert_eq!(samples, [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 0, 0, 0, 0, 5, 5]);
    }

    #[test]
    fn the_wav_header_says_16_khz_mono_16_bit_and_the_data_follows() {
        let wav = encode(&[0x0102, -2]);
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 16_000);
        assert_eq!(u16::from_le_bytes(wav[22..24].try_into().unwrap()), 1);
        assert_eq!(u16::from_le_bytes(wav[34..36].try_into().unwrap()), 16);
        assert_eq!(u32::from_le_bytes(wav[40..44].try_into().unwrap()), 4);
        assert_eq!(&wav[44..], [0x02, 0x01, 0xfe, 0xff]);
    }

    #[test]
    fn the_file_name_says_what_is_missing() {
        assert_eq!(file_name("CAR 7/x", "2026-12-01T11:21:37.000Z", 0), "CAR_7_x-20261201T112137.wav");
        assert_eq!(file_name("C", "2026-12-01T11:21:37.000Z", 2), "C-20261201T112137-2-frames-missing.wav");
    }
}
