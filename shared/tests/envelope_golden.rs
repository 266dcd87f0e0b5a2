//! Pins the envelope's exact bytes: field names, nesting and order as downstream consumers read them.
//!
//! If this test fails, the JSON that lands in Kafka changed. That breaks every downstream consumer: change the
//! golden file only together with them.

use soundline_shared::envelope::{Envelope, Stamp};
use soundline_shared::recording::{DeviceInfo, LocationInfo, Recording};

const GOLDEN: &str = include_str!("golden/envelope.json");

fn golden_envelope() -> Envelope {
    let recording = Recording {
        device: DeviceInfo { car_id: "CAR-042".into(), rail_type: 0 },
        location: LocationInfo { unit_id: "U7".into(), sty: "track 3".into() },
        segment_id: "seg-2024-11-25-001".into(),
        inspection_info: "left bogie, wheel 3".into(),
    };
    let stamp = Stamp { ver: "1.0".into(), ..Stamp::default() };
    let uuid = uuid::Uuid::parse_str("6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f3a21").expect("literal uuid");
    // 8 samples = 0.5 ms, which rounds to a duration of 1 ms.
    Envelope::from_samples(uuid, &stamp, &recording, 1_732_530_000_000, &[0, 1, -1, 256, -256, 32767, -32768, 12345])
}

#[test]
fn built_envelope_serializes_byte_for_byte_as_the_golden_file() {
    let json = String::from_utf8(golden_envelope().to_json()).expect("utf-8");
    assert_eq!(json, GOLDEN.trim_end());
}

#[test]
fn golden_file_parses_back_to_the_same_envelope() {
    assert_eq!(Envelope::parse(GOLDEN.as_bytes()), Ok(golden_envelope()));
}

#[test]
fn golden_file_has_the_seed_nesting() {
    let v: serde_json::Value = serde_json::from_str(GOLDEN).expect("golden is JSON");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    };
    let mut top = keys(&v);
    top.sort();
    assert_eq!(
        top,
        [
            "collectTimestamp",
            "deviceInfo",
            "inspectionInfo",
            "locationInfo",
            "originData",
            "segmentId",
            "sysTag",
            "sysType",
            "uuid",
            "ver"
        ]
    );
    assert_eq!(v["sysTag"], "AICP_SOUND");
    assert_eq!(v["sysType"], 3);
    assert_eq!(v["deviceInfo"]["carID"], "CAR-042");
    assert_eq!(v["deviceInfo"]["railType"], 0);
    assert_eq!(v["locationInfo"]["unitId"], "U7");
    assert_eq!(v["locationInfo"]["sty"], "track 3");
    assert_eq!(v["originData"]["hz"], 16000);
    assert_eq!(v["originData"]["bits"], 16);
    assert_eq!(v["originData"]["size"], 16);
    assert_eq!(v["originData"]["duration"], 1);
}
