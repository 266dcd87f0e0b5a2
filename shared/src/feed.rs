//! What a consumed Kafka record's value is, for everything that shows records to people (the relay's `tail`
//! command now, the browser's feed panel later): an `AICP_SOUND` envelope, other JSON (analysis results), or
//! opaque bytes. Classifying never fails: a malformed record is shown as what it is, it never stops a reader.

use crate::envelope::Envelope;

/// A record's value, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedValue {
    /// A valid `AICP_SOUND` envelope.
    Envelope(Box<Envelope>),
    /// JSON that is not a valid envelope.
    Json(serde_json::Value),
    /// Anything else (not UTF-8 JSON), kept as bytes.
    Opaque(Vec<u8>),
}

impl FeedValue {
    /// Classifies `bytes`: envelope first, then any JSON, else opaque.
    pub fn classify(bytes: &[u8]) -> Self {
        match Envelope::parse(bytes) {
            Ok(env) => Self::Envelope(Box::new(env)),
            Err(_) => match serde_json::from_slice(bytes) {
                Ok(json) => Self::Json(json),
                Err(_) => Self::Opaque(bytes.to_vec()),
            },
        }
    }

    /// `envelope`, `json` or `opaque`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Envelope(_) => "envelope",
            Self::Json(_) => "json",
            Self::Opaque(_) => "opaque",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Stamp;
    use crate::recording::Recording;

    #[test]
    fn values_are_classified_envelope_then_json_then_opaque() {
        let env = Envelope::from_samples(uuid::Uuid::nil(), &Stamp::default(), &Recording::default(), 5, &[1, 2]);
        assert_eq!(FeedValue::classify(&env.to_json()), FeedValue::Envelope(Box::new(env)));
        assert_eq!(FeedValue::classify(br#"{"score":0.9}"#), FeedValue::Json(serde_json::json!({"score": 0.9})));
        assert_eq!(FeedValue::classify(b"\x00\xff garbage").kind(), "opaque");
        // An envelope-shaped document with a broken field is still readable JSON.
        assert_eq!(FeedValue::classify(br#"{"sysTag":"AICP_SOUND"}"#).kind(), "json");
    }
}
