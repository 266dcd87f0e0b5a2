//! Fuzzes the JSON control-message parsers: `soundline_shared::control::{ClientMessage, ServerMessage}::parse`
//! and `soundline_shared::feed::{FeedClientMessage, FeedServerMessage}::parse`.
//!
//! Where they sit in the audio path:
//!
//! ```text
//! microphone -> browser -> WebSocket frame -> relay -> envelope -> Kafka -> feed
//!                   \___ hello / ready / ack / status / error ___/           |
//!                         (text messages on the same socket)      subscribe / subscribed / record / lagged
//! ```
//!
//! `ClientMessage::parse` reads the recorder's hello and `FeedClientMessage::parse` a feed subscriber's
//! subscribe: both take text from anyone who can open a WebSocket to the relay. `ServerMessage::parse` and
//! `FeedServerMessage::parse` run in the browser and tools on what the relay sends. Checked for every input
//! (as text when it is UTF-8, else its lossy UTF-8 decoding, so both paths are exercised):
//!
//! - no parser panics;
//! - an accepted hello is valid (format 16 kHz/16-bit/mono, metadata within limits), and its `to_json()`
//!   parses back equal;
//! - accepted relay messages and subscribes serialise and parse back equal; an accepted feed relay message
//!   serialises and parses back (equal, except a `record`'s free-form JSON `value`, whose floats serde_json
//!   only round-trips to the last bit with its `float_roundtrip` feature).
#![no_main]

use libfuzzer_sys::fuzz_target;
use soundline_shared::control::{ClientMessage, SampleFormat, ServerMessage};
use soundline_shared::feed::{FeedClientMessage, FeedServerMessage};

fuzz_target!(|bytes: &[u8]| {
    match std::str::from_utf8(bytes) {
        Ok(text) => check_text(text),
        Err(_) => check_text(&String::from_utf8_lossy(bytes)),
    }
});

fn check_text(text: &str) {
    if let Ok(msg) = ClientMessage::parse(text) {
        let ClientMessage::Hello(hello) = &msg;
        assert_eq!(hello.protocol, soundline_shared::PROTOCOL_VERSION);
        assert_eq!(hello.format, SampleFormat::SOUNDLINE);
        assert_eq!(hello.recording.validate(), Ok(()));
        let json = msg.to_json();
        assert_eq!(ClientMessage::parse(&json).as_ref(), Ok(&msg), "hello did not round-trip through {json}");
    }

    if let Ok(msg) = ServerMessage::parse(text) {
        let json = msg.to_json();
        assert_eq!(ServerMessage::parse(&json).as_ref(), Ok(&msg), "relay message did not round-trip through {json}");
    }

    if let Ok(msg) = FeedClientMessage::parse(text) {
        let json = msg.to_json();
        assert!(!json.is_empty(), "an accepted subscribe does not serialise");
        assert_eq!(FeedClientMessage::parse(&json).as_ref(), Ok(&msg), "subscribe did not round-trip through {json}");
    }

    if let Ok(msg) = FeedServerMessage::parse(text) {
        let json = serde_json::to_string(&msg).expect("an accepted feed message serialises");
        let again = FeedServerMessage::parse(&json).unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
        match (&msg, &again) {
            (FeedServerMessage::Record(a), FeedServerMessage::Record(b)) => {
                assert_eq!(
                    (&a.topic, a.partition, a.offset, a.timestamp_ms, &a.key, &a.kind),
                    (&b.topic, b.partition, b.offset, b.timestamp_ms, &b.key, &b.kind)
                );
            }
            _ => assert_eq!(again, msg, "feed message did not round-trip through {json}"),
        }
    }
}
