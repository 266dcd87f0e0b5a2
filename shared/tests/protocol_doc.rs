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

/// The first ```json block after `heading` in the doc.
fn json_after(heading: &str) -> &'static str {
    let at = DOC.find(heading).unwrap_or_else(|| panic!("docs/protocol.md has no {heading:?}"));
    let block = &DOC[at..];
    let start = block.find("```json").expect("a json block") + "```json".len();
    let len = block[start..].find("```").expect("the block's end");
    block[start..start + len].trim()
}

#[test]
fn the_hello_and_envelope_examples_describe_the_same_recording_as_the_golden_file() {
    use soundline_shared::control::ClientMessage;
    use soundline_shared::envelope::Envelope;
    let golden = include_str!("golden/envelope.json").trim_end();
    assert_eq!(json_after("## What lands in Kafka"), golden, "the envelope example is the golden file");
    let ClientMessage::Hello(hello) = ClientMessage::parse(json_after("## hello (recorder")).expect("the doc's hello");
    let envelope = Envelope::parse(golden.as_bytes()).expect("golden envelope");
    assert_eq!(hello.recording, envelope.recording, "the hello example makes the envelope example");
}

/// Each field of the hello table: left out of the doc's example, the hello is refused exactly when the table
/// says the field is required.
#[test]
fn the_hello_table_says_which_fields_are_required() {
    use soundline_shared::control::ClientMessage;
    let example: serde_json::Value = serde_json::from_str(json_after("## hello (recorder")).expect("json");
    let table = &DOC[DOC.find("| field | type | required | rule |").expect("the hello table")..];
    let mut checked = 0;
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let required = match cells[3] {
            "yes" => true,
            c if c.starts_with("no, default") => false,
            other => panic!("required column {other:?} in {row}"),
        };
        for field in cells[1].split(", ").map(|f| f.trim_matches('`')) {
            let mut hello = example.clone();
            let path: Vec<&str> = field.split('.').collect();
            let (last, parents) = path.split_last().expect("a path");
            let mut obj = &mut hello;
            for p in parents {
                obj = &mut obj[*p];
            }
            assert!(obj.as_object_mut().and_then(|o| o.remove(*last)).is_some(), "{field} is not in the example");
            let parsed = ClientMessage::parse(&hello.to_string());
            assert_eq!(parsed.is_err(), required, "{field}: the table says required = {required}, got {parsed:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 9, "every field of the hello was checked");
}

#[test]
fn the_documented_limits_and_control_characters_are_the_code_s() {
    use soundline_shared::recording::{MAX_ID_BYTES, MAX_NOTES_BYTES, refused_in_identifier, refused_in_notes};
    assert!(DOC.contains(&format!("| 1–{MAX_ID_BYTES} bytes, no control characters (below)")));
    assert!(DOC.contains(&format!("| 0–{MAX_NOTES_BYTES} bytes; tab, line feed and carriage return allowed")));
    assert!(DOC.contains(
        "category Cc (U+0000–U+001F, U+007F–U+009F, so tab too) and the line and paragraph separators U+2028 and U+2029"
    ));
    for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
        let cc = matches!(u32::from(c), 0..=0x1F | 0x7F..=0x9F);
        assert_eq!(refused_in_identifier(c), cc || matches!(c, '\u{2028}' | '\u{2029}'), "{c:?} in an identifier");
        assert_eq!(refused_in_notes(c), cc && !matches!(c, '\t' | '\n' | '\r'), "{c:?} in the notes");
    }
}

#[test]
fn the_documented_resume_hello_parses_with_its_position() {
    use soundline_shared::control::{ClientMessage, Resume};
    let at = DOC.find("**Resuming a recording.**").expect("the resume paragraph");
    let json = &DOC[at..];
    let json = &json[json.find("```json").expect("an example") + 7..];
    let json = json[..json.find("```").expect("its end")].trim();
    let ClientMessage::Hello(hello) = ClientMessage::parse(json).expect("the doc's resume hello");
    assert_eq!(hello.resume, Some(Resume { partition: 3, offset: 18_211 }));
    let negative = json.replace("\"offset\":18211", "\"offset\":-1");
    assert!(ClientMessage::parse(&negative).is_err(), "a negative offset is refused");
}
