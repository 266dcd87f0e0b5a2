//! The live feed: what a consumed Kafka record's value is, and the `/ws/feed` messages that carry records from
//! the relay to subscribers (the browser's feed panel; any client that reads `docs/protocol.md`).
//!
//! ```text
//! subscriber                                                   relay
//!   │ ── text {"type":"subscribe","topic":..,"from":..,...} ──► │ allowlist, start positions
//!   │ ◄──────── text {"type":"subscribed","topic":..,"from":{"0":12,...}}
//!   │ ◄──────── text {"type":"record", ...}  (history first, then live; per partition in offset order)
//!   │ ◄──────── text {"type":"lagged","missed":n,"resumeFrom":{...}}   when it fell behind the live stream
//! ```
//!
//! A value is classified as an `AICP_SOUND` envelope, other JSON (analysis results), or opaque bytes.
//! Classifying never fails: a malformed record is shown as what it is, it never stops a reader.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::control::ControlError;
use crate::envelope::Envelope;

/// A record's value, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedValue {
    /// A valid envelope with the expected `sysTag` (`AICP_SOUND` unless the relay is configured otherwise).
    Envelope(Box<Envelope>),
    /// JSON that is not a valid envelope.
    Json(serde_json::Value),
    /// Anything else (not UTF-8 JSON), kept as bytes.
    Opaque(Vec<u8>),
}

impl FeedValue {
    /// Classifies `bytes`: an envelope tagged `sys_tag` (the relay's configured tag) first, then any JSON, else
    /// opaque.
    pub fn classify(bytes: &[u8], sys_tag: &str) -> Self {
        match Envelope::parse_tagged(bytes, sys_tag) {
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

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum From {
    /// Only records produced from now on (the default).
    Live,
    /// The oldest records Kafka keeps.
    Earliest,
    /// The first record at or after this time (ms since the epoch), per partition.
    TimestampMs(i64),
    /// The next offset to deliver, per partition (a resume: last received offset + 1). Partitions not named start
    /// live.
    Offsets(BTreeMap<i32, i64>),
}

/// A feed client's only message: what to receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscribe {
    /// Topic; `None`: the relay's audio topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Start position; default live.
    #[serde(default = "live", with = "from_json")]
    pub from: From,
    /// Only envelopes whose `deviceInfo.carID` is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub car_id: Option<String>,
    /// Only envelopes whose `segmentId` is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_id: Option<String>,
    /// Whether envelopes come with their PCM (`originData.base64`); `false`: without it, for lists that show
    /// what arrived and fetch the audio of one recording only when it is played.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub pcm: bool,
    /// A bounded read: per partition, the offset to stop before. Only the partitions named are read, from `from`
    /// up to these offsets (never past the live end); then the relay sends `end` and closes (1000). `None`: the
    /// history, then the live stream, until the subscriber leaves.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "until")]
    pub until: Option<BTreeMap<i32, i64>>,
}

impl Subscribe {
    /// A live subscription to the audio topic with these filters, envelopes with their PCM.
    pub fn live(car_id: Option<String>, segment_id: Option<String>) -> Self {
        Self { topic: None, from: From::Live, car_id, segment_id, pcm: true, until: None }
    }
}

fn live() -> From {
    From::Live
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_true(b: &bool) -> bool {
    *b
}

/// `until` on the wire: absent, or `{"PARTITION": OFFSET}` as [`partition_offsets`].
mod until {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(map: &Option<BTreeMap<i32, i64>>, s: S) -> Result<S::Ok, S::Error> {
        match map {
            Some(m) => super::partition_offsets::serialize(m, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<i32, i64>>, D::Error> {
        match Option::<BTreeMap<String, i64>>::deserialize(d)? {
            Some(raw) => super::partition_offsets::parse(raw).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// `from` on the wire: `"live"`, `"earliest"`, `{"timestampMs": N}` or `{"offsets": {"0": 12}}`.
mod from_json {
    use super::From;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Word(String),
        Timestamp {
            #[serde(rename = "timestampMs")]
            timestamp_ms: i64,
        },
        // String keys: JSON object keys are strings, and untagged enums cannot turn them into numbers.
        Offsets {
            offsets: std::collections::BTreeMap<String, i64>,
        },
    }

    pub fn serialize<S: Serializer>(from: &From, s: S) -> Result<S::Ok, S::Error> {
        match from {
            From::Live => Wire::Word("live".into()),
            From::Earliest => Wire::Word("earliest".into()),
            From::TimestampMs(ms) => Wire::Timestamp { timestamp_ms: *ms },
            From::Offsets(o) => Wire::Offsets { offsets: o.iter().map(|(p, o)| (p.to_string(), *o)).collect() },
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<From, D::Error> {
        match Wire::deserialize(d)? {
            Wire::Word(w) if w == "live" => Ok(From::Live),
            Wire::Word(w) if w == "earliest" => Ok(From::Earliest),
            Wire::Word(w) => Err(serde::de::Error::custom(format!(
                "from {w:?} is not \"live\", \"earliest\", {{\"timestampMs\": N}} or {{\"offsets\": {{\"PARTITION\": OFFSET}}}}"
            ))),
            Wire::Timestamp { timestamp_ms } => Ok(From::TimestampMs(timestamp_ms)),
            Wire::Offsets { offsets } => offsets
                .into_iter()
                .map(|(p, o)| match p.parse::<i32>() {
                    Ok(p) if p >= 0 && o >= 0 => Ok((p, o)),
                    _ => Err(serde::de::Error::custom(format!(
                        "offsets: {p:?}: {o} is not a partition number and an offset >= 0"
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(From::Offsets),
        }
    }
}

/// Per-partition offsets on the wire: a JSON object with partition numbers as string keys, `{"0": 12}`.
///
/// Written by hand because tagged enums buffer their fields, and buffered JSON keys stay strings.
mod partition_offsets {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(map: &BTreeMap<i32, i64>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(p, o)| (p.to_string(), o)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<i32, i64>, D::Error> {
        parse(BTreeMap::<String, i64>::deserialize(d)?).map_err(serde::de::Error::custom)
    }

    pub fn parse(raw: BTreeMap<String, i64>) -> Result<BTreeMap<i32, i64>, String> {
        raw.into_iter()
            .map(|(p, o)| match p.parse::<i32>() {
                Ok(p) if p >= 0 && o >= 0 => Ok((p, o)),
                _ => Err(format!("offsets: {p:?}: {o} is not a partition number and an offset >= 0")),
            })
            .collect()
    }
}

/// Feed client messages (text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeedClientMessage {
    /// The one message a feed client sends, first.
    Subscribe(Subscribe),
}

impl FeedClientMessage {
    /// Parses a feed client's text message.
    ///
    /// # Errors
    ///
    /// [`ControlError::NotJson`] or [`ControlError::Invalid`], naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, ControlError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ControlError::NotJson(e.to_string()))?;
        serde_json::from_value(value).map_err(|e| ControlError::Invalid(e.to_string()))
    }

    /// As JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Feed relay messages (text). Errors are [`crate::control::ServerMessage::Error`], then a close.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeedServerMessage {
    /// The subscription is accepted; `from` is the first offset that will be delivered, per partition.
    Subscribed {
        /// Topic.
        topic: String,
        /// Number of partitions.
        partitions: i32,
        /// First offset delivered, per partition.
        #[serde(with = "partition_offsets")]
        from: BTreeMap<i32, i64>,
        /// On a subscription to the audio topic: the other topics this relay's feed serves (its `feed_topics`,
        /// analysis results, say), so that a page can show their records beside the recordings.
        #[serde(default, rename = "feedTopics", skip_serializing_if = "Vec::is_empty")]
        feed_topics: Vec<String>,
    },
    /// One Kafka record.
    Record(FeedRecord),
    /// The subscriber fell behind the live stream and `missed` records were skipped; re-subscribe with
    /// `{"offsets": resumeFrom}` to read them.
    Lagged {
        /// Records skipped.
        missed: u64,
        /// Per partition, the first offset not delivered.
        #[serde(rename = "resumeFrom", with = "partition_offsets")]
        resume_from: BTreeMap<i32, i64>,
    },
    /// A bounded read (`until`) delivered everything it asked for; the relay closes the connection (1000).
    End,
}

/// One record as the feed delivers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp, ms.
    pub timestamp_ms: i64,
    /// Key as UTF-8 (lossy), if any.
    pub key: Option<String>,
    /// The `segmentId` record header (the relay writes it on every frame), when present and UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_id: Option<String>,
    /// The `seq` record header: the frame's sequence number in its segment, when present and a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    /// `envelope`, `json` or `opaque`.
    pub kind: String,
    /// The envelope or JSON document as it is in Kafka; for `opaque`, the bytes as standard base64.
    pub value: serde_json::Value,
}

impl FeedServerMessage {
    /// Parses a relay's feed message.
    ///
    /// # Errors
    ///
    /// [`ControlError::NotJson`] or [`ControlError::Invalid`].
    pub fn parse(text: &str) -> Result<Self, ControlError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ControlError::NotJson(e.to_string()))?;
        serde_json::from_value(value).map_err(|e| ControlError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{DEFAULT_SYS_TAG, Stamp};
    use crate::recording::Recording;

    #[test]
    fn values_are_classified_envelope_then_json_then_opaque() {
        let env = Envelope::from_samples(uuid::Uuid::nil(), &Stamp::default(), &Recording::default(), 5, &[1, 2]);
        let tag = DEFAULT_SYS_TAG;
        assert_eq!(FeedValue::classify(&env.to_json(), tag), FeedValue::Envelope(Box::new(env)));
        assert_eq!(FeedValue::classify(br#"{"score":0.9}"#, tag), FeedValue::Json(serde_json::json!({"score": 0.9})));
        assert_eq!(FeedValue::classify(b"\x00\xff garbage", tag).kind(), "opaque");
        // An envelope-shaped document with a broken field is still readable JSON.
        assert_eq!(FeedValue::classify(br#"{"sysTag":"AICP_SOUND"}"#, tag).kind(), "json");
    }

    #[test]
    fn an_envelope_is_one_with_the_relays_configured_tag() {
        let stamp = Stamp { sys_tag: "RAIL_AUDIO".into(), ..Stamp::default() };
        let env = Envelope::from_samples(uuid::Uuid::nil(), &stamp, &Recording::default(), 5, &[1, 2]);
        assert_eq!(FeedValue::classify(&env.to_json(), "RAIL_AUDIO"), FeedValue::Envelope(Box::new(env.clone())));
        assert_eq!(FeedValue::classify(&env.to_json(), DEFAULT_SYS_TAG).kind(), "json");
    }

    #[test]
    fn subscribe_defaults_to_live_on_the_audio_topic() {
        let msg = FeedClientMessage::parse(r#"{"type":"subscribe"}"#).expect("valid");
        assert_eq!(msg, FeedClientMessage::Subscribe(Subscribe::live(None, None)));
    }

    #[test]
    fn every_start_position_round_trips() {
        for (json, from) in [
            (r#""earliest""#, From::Earliest),
            (r#""live""#, From::Live),
            (r#"{"timestampMs":1764000000000}"#, From::TimestampMs(1_764_000_000_000)),
            (r#"{"offsets":{"0":12,"3":40}}"#, From::Offsets(BTreeMap::from([(0, 12), (3, 40)]))),
        ] {
            let text = format!(r#"{{"type":"subscribe","topic":"t","from":{json},"carId":"C"}}"#);
            let parsed = FeedClientMessage::parse(&text).expect("valid");
            let want =
                Subscribe { topic: Some("t".into()), from, car_id: Some("C".into()), ..Subscribe::live(None, None) };
            assert_eq!(parsed, FeedClientMessage::Subscribe(want.clone()));
            assert_eq!(FeedClientMessage::parse(&FeedClientMessage::Subscribe(want).to_json()), Ok(parsed));
        }
    }

    #[test]
    fn relay_messages_with_partition_maps_round_trip() {
        let msgs = [
            FeedServerMessage::Subscribed {
                topic: "t".into(),
                partitions: 2,
                from: BTreeMap::from([(0, 5), (1, 9)]),
                feed_topics: vec!["results".into()],
            },
            FeedServerMessage::Lagged { missed: 3, resume_from: BTreeMap::from([(1, 10)]) },
        ];
        for m in msgs {
            let text = serde_json::to_string(&m).expect("serializable");
            assert_eq!(FeedServerMessage::parse(&text), Ok(m), "{text}");
        }
    }

    #[test]
    fn a_bounded_read_without_pcm_round_trips_and_old_subscribes_keep_their_meaning() {
        let text = r#"{"type":"subscribe","from":{"offsets":{"2":120}},"until":{"2":421},"segmentId":"S","pcm":false}"#;
        let FeedClientMessage::Subscribe(sub) = FeedClientMessage::parse(text).expect("valid");
        assert_eq!((sub.pcm, sub.until.clone()), (false, Some(BTreeMap::from([(2, 421)]))));
        assert_eq!(
            FeedClientMessage::parse(&FeedClientMessage::Subscribe(sub.clone()).to_json()),
            Ok(FeedClientMessage::Subscribe(sub))
        );
        let FeedClientMessage::Subscribe(old) =
            FeedClientMessage::parse(r#"{"type":"subscribe","carId":"C"}"#).expect("valid");
        assert_eq!((old.pcm, old.until), (true, None), "PCM included, unbounded, as before");
        assert!(FeedClientMessage::parse(r#"{"type":"subscribe","until":{"x":1}}"#).is_err());
        assert_eq!(FeedServerMessage::parse(r#"{"type":"end"}"#), Ok(FeedServerMessage::End));
    }

    #[test]
    fn a_bad_start_position_is_named() {
        let err = FeedClientMessage::parse(r#"{"type":"subscribe","from":"yesterday"}"#).unwrap_err();
        assert!(matches!(err, ControlError::Invalid(_)), "{err}");
    }
}
