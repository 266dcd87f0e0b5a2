//! Fuzzes the `AICP_SOUND` envelope parser, `soundline_shared::envelope::Envelope::parse` / `parse_tagged`,
//! and the feed's record classifier `soundline_shared::feed::FeedValue::classify`.
//!
//! Where they sit in the audio path:
//!
//! ```text
//! microphone -> browser -> WebSocket frame -> relay -> envelope -> Kafka -> [feed]
//!                                                                  ^^^^^^^^^^^^^^^
//! ```
//!
//! The relay builds envelopes itself, but it (feed) and the `tail` command parse whatever a Kafka topic holds:
//! records from other producers, older uploaders, or anyone with write access. Checked for every input:
//!
//! - neither `parse`, `parse_tagged` nor `classify` panics;
//! - `parse(b)` is `parse_tagged(b, "AICP_SOUND")`; an accepted envelope is refused under another tag;
//! - on `Ok`: the PCM is whole samples (`sample_count() * 2` bytes, `samples()` that long), `to_json()`
//!   parses again, `Ok` and equal, and serialising that gives the same bytes (the output is canonical);
//! - `classify` under the default tag says `Envelope` exactly when `parse` accepts (with the same envelope),
//!   `Json` only for bytes serde_json accepts, and `Opaque` keeps the bytes unchanged; under another tag an
//!   accepted envelope is not an `Envelope`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use soundline_shared::envelope::{DEFAULT_SYS_TAG, Envelope, EnvelopeError};
use soundline_shared::feed::FeedValue;

fuzz_target!(|bytes: &[u8]| {
    let parsed = Envelope::parse(bytes);
    assert_eq!(Envelope::parse_tagged(bytes, DEFAULT_SYS_TAG), parsed);

    let class = FeedValue::classify(bytes, DEFAULT_SYS_TAG);
    match (&parsed, &class) {
        (Ok(env), FeedValue::Envelope(c)) => assert_eq!(env, c.as_ref()),
        (Ok(_), other) => panic!("a valid envelope was classified as {}", other.kind()),
        (Err(_), FeedValue::Envelope(_)) => panic!("an invalid envelope was classified as an envelope"),
        (Err(_), FeedValue::Json(_)) => {
            assert!(serde_json::from_slice::<serde_json::Value>(bytes).is_ok(), "non-JSON classified as JSON");
        }
        (Err(_), FeedValue::Opaque(b)) => assert_eq!(b.as_slice(), bytes),
    }

    let Ok(env) = parsed else { return };
    assert!(
        matches!(
            Envelope::parse_tagged(bytes, "AICP_IMAGE"),
            Err(EnvelopeError::WrongSysTag { ref found, .. }) if found == DEFAULT_SYS_TAG
        ),
        "an AICP_SOUND envelope was accepted as AICP_IMAGE"
    );
    assert!(
        !matches!(FeedValue::classify(bytes, "AICP_IMAGE"), FeedValue::Envelope(_)),
        "an AICP_SOUND envelope was classified as an envelope by a relay tagged AICP_IMAGE"
    );

    let n = env.origin.sample_count();
    assert_eq!(env.origin.pcm_le.len(), n * 2, "odd PCM accepted");
    assert_eq!(env.origin.samples().len(), n);

    let json = env.to_json();
    let again = Envelope::parse(&json)
        .unwrap_or_else(|e| panic!("re-serialised envelope does not parse: {e}\n{}", String::from_utf8_lossy(&json)));
    assert_eq!(again, env, "envelope did not round-trip");
    assert_eq!(again.to_json(), json, "serialising is not canonical");
});
