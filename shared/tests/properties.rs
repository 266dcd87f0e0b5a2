//! Property tests: whatever the samples and metadata, what is built parses back unchanged, and no input
//! (bytes or text) makes a decoder panic.

use proptest::prelude::*;
use soundline_shared::control::{ClientMessage, ServerMessage};
use soundline_shared::envelope::{Envelope, Stamp};
use soundline_shared::frame::{self, AudioFrame};
use soundline_shared::recording::{DeviceInfo, LocationInfo, Recording};

fn recording() -> impl Strategy<Value = Recording> {
    (any::<String>(), any::<i64>(), any::<String>(), any::<String>(), any::<String>(), any::<String>()).prop_map(
        |(car_id, rail_type, unit_id, sty, segment_id, inspection_info)| Recording {
            device: DeviceInfo { car_id, rail_type },
            location: LocationInfo { unit_id, sty },
            segment_id,
            inspection_info,
        },
    )
}

proptest! {
    #[test]
    fn envelope_build_serialize_parse_gives_back_samples_and_metadata(
        samples in proptest::collection::vec(any::<i16>(), 1..4000),
        rec in recording(),
        ts in 0i64..=4_102_444_800_000,
        ver in any::<String>(),
        sys_type in any::<i64>(),
        id in any::<u128>(),
    ) {
        let stamp = Stamp { ver, sys_type, ..Stamp::default() };
        let built = Envelope::from_samples(uuid::Uuid::from_u128(id), &stamp, &rec, ts, &samples);
        let parsed = Envelope::parse(&built.to_json()).expect("own envelope parses");
        prop_assert_eq!(parsed.origin.samples(), samples);
        prop_assert_eq!(&parsed.recording, &rec);
        prop_assert_eq!(parsed.collect_timestamp_ms, ts);
        prop_assert_eq!(&parsed.stamp, &stamp);
        prop_assert_eq!(parsed, built);
    }

    #[test]
    fn frame_encode_decode_gives_back_the_frame(
        seq in any::<u32>(),
        ts in 0i64..=i64::MAX,
        samples in proptest::collection::vec(any::<i16>(), 1..4000),
    ) {
        let bytes = frame::encode_to_vec(seq, ts, &samples);
        let f = AudioFrame::decode(&bytes, 4000).expect("own frame decodes");
        prop_assert_eq!(f.seq, seq);
        prop_assert_eq!(f.capture_ts_ms, ts);
        prop_assert_eq!(f.samples().collect::<Vec<_>>(), samples);
    }

    #[test]
    fn frame_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = AudioFrame::decode(&bytes, 64);
    }

    #[test]
    fn truncated_frames_are_errors_not_panics(
        samples in proptest::collection::vec(any::<i16>(), 1..64),
        cut in 0usize..200,
    ) {
        let bytes = frame::encode_to_vec(1, 2, &samples);
        let cut = cut.min(bytes.len() - 1);
        prop_assert!(AudioFrame::decode(&bytes[..cut], 64).is_err());
    }

    #[test]
    fn envelope_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::parse(&bytes);
    }

    #[test]
    fn envelope_parser_never_panics_on_json_shaped_text(text in r#"\{("[a-zA-Z]{1,12}":(-?[0-9]{1,20}|"[A-Za-z0-9+/=]{0,12}"|\{\}|null|true),?){0,12}\}"#) {
        let _ = Envelope::parse(text.as_bytes());
    }

    #[test]
    fn control_parsers_never_panic(text in any::<String>()) {
        let _ = ClientMessage::parse(&text);
        let _ = ServerMessage::parse(&text);
    }
}
