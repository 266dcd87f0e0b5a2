//! Keeps `docs/protocol.md` true: every error code with its close code, the worked frame example and the
//! golden envelope appear there exactly as the code produces them.

use soundline_shared::control::ErrorCode;
use soundline_shared::frame;

const DOC: &str = include_str!("../../docs/protocol.md");

#[test]
fn error_table_lists_every_code_with_its_close_code() {
    for code in ErrorCode::ALL {
        let row = format!("| `{}` | {} |", code.as_str(), code.close_code());
        assert!(DOC.contains(&row), "docs/protocol.md lacks the row starting {row:?}");
    }
}

#[test]
fn worked_example_bytes_are_what_encode_writes() {
    let hex: String =
        frame::encode_to_vec(7, 1_732_530_000_000, &[1, -1, 256]).iter().map(|b| format!("{b:02x}")).collect();
    assert!(DOC.contains(&format!("`{hex}`")), "docs/protocol.md's worked example is not {hex}");
}

#[test]
fn documented_envelope_base64_matches_the_golden_file() {
    let golden = include_str!("golden/envelope.json");
    let v: serde_json::Value = serde_json::from_str(golden).expect("golden is JSON");
    let b64 = v["originData"]["base64"].as_str().expect("base64 field");
    assert!(DOC.contains(b64));
}
