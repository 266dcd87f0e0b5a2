//! One consumed record as the feed sends it: classified in one borrowed pass over its value, its messages written
//! on first demand.
//!
//! Where it sits: between the partition readers (`kafka/consumer.rs`) and the subscribers (`subscriber.rs`). The
//! hub classifies each record once ([`Published::new`]): serde_json reads the value's top-level object as its
//! keys and their values as [`RawValue`]s, borrowed from the record (no tree is built, the base64 PCM is neither
//! copied nor decoded), which checks that it is JSON and gives the envelope's car and segment. Each message is
//! then serialized from those borrowed parts when the first subscriber that wants it takes it, and shared by the
//! rest: `{"type":"record",...,"value":…}` with the value's fields as Kafka holds them, or, for `"pcm": false`
//! subscribers, the same without `originData.base64`. A hub whose subscribers all list recordings without PCM
//! never writes the 40 KB form.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rskafka::record::Record;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// How the feed tells what a consumed value is.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// The `sysTag` that marks an envelope: the relay's own (`sys_tag`, `SOUNDLINE_SYS_TAG`), which its
    /// recordings carry, not the built-in default.
    pub sys_tag: Arc<str>,
    /// A value that is not JSON: skipped (`feed_malformed = skip`) rather than sent as opaque bytes.
    pub skip_malformed: bool,
}

impl Classifier {
    /// As the relay is configured.
    pub fn of(config: &crate::config::Config) -> Self {
        Self { sys_tag: Arc::from(config.stamp.sys_tag.as_str()), skip_malformed: config.feed.skip_malformed }
    }
}

/// A JSON object's entries, in order, each value as it is in the text.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some((key, value)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

impl Entries<'_> {
    fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The string at `key`, if it is one (borrowed unless it has escapes).
    fn text(&self, key: &str) -> Option<Cow<'_, str>> {
        self.get(key).and_then(|v| serde_json::from_str::<Cow<'_, str>>(v.get()).ok())
    }
}

/// Writes entries as an object; `origin_without_pcm` replaces `originData` (its entries less `base64`).
struct Object<'e, 'a> {
    entries: &'e Entries<'a>,
    origin_without_pcm: Option<&'e Entries<'a>>,
}

impl Serialize for Object<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.0.len()))?;
        for (key, value) in &self.entries.0 {
            match self.origin_without_pcm {
                Some(origin) if key == "originData" => {
                    let kept = Entries(origin.0.iter().filter(|(k, _)| k != "base64").cloned().collect());
                    map.serialize_entry(key, &Object { entries: &kept, origin_without_pcm: None })?;
                }
                _ => map.serialize_entry(key, value)?,
            }
        }
        map.end()
    }
}

/// What a record's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An AICP_SOUND envelope: an object with the relay's `sysTag`, `deviceInfo.carID`, `segmentId` and an
    /// `originData` object.
    Envelope,
    /// Any other JSON.
    Json,
    /// Not JSON: delivered as base64.
    Opaque,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Envelope => "envelope",
            Self::Json => "json",
            Self::Opaque => "opaque",
        }
    }
}

/// A message's value.
#[derive(Serialize)]
#[serde(untagged)]
enum Value<'e, 'a> {
    /// JSON as it is in the record.
    Raw(&'a RawValue),
    /// An envelope's entries, `originData` without `base64`.
    Object(Object<'e, 'a>),
    /// Bytes that are not JSON.
    Base64(String),
}

/// The message's fields besides the value, as `FeedServerMessage::Record` writes them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Head<'a, V> {
    #[serde(rename = "type")]
    message: &'static str,
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segment_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u32>,
    kind: &'static str,
    value: V,
}

/// A consumed record, classified, with its feed messages written on demand.
pub struct Published {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// `deviceInfo.carID`, when the value is an envelope.
    pub car_id: Option<String>,
    /// `segmentId`, when the value is an envelope.
    pub segment_id: Option<String>,
    kind: Kind,
    topic: Arc<str>,
    timestamp_ms: i64,
    key: Option<String>,
    /// The `segmentId` and `seq` headers, when they are what the relay writes.
    header_segment: Option<String>,
    header_seq: Option<u32>,
    /// The value as consumed (moved out of the record, not copied).
    value: Vec<u8>,
    with_pcm: OnceLock<Utf8Bytes>,
    without_pcm: OnceLock<Utf8Bytes>,
}

impl Published {
    /// Classifies `record`, or `None` when its value is neither an envelope nor JSON and the relay is configured
    /// to skip such records.
    pub fn new(topic: &Arc<str>, partition: i32, offset: i64, record: Record, how: &Classifier) -> Option<Self> {
        let value = record.value.unwrap_or_default();
        let (kind, car_id, segment_id) = match serde_json::from_slice::<Entries<'_>>(&value) {
            Ok(entries) => {
                let car = entries
                    .get("deviceInfo")
                    .and_then(|d| serde_json::from_str::<Entries<'_>>(d.get()).ok())
                    .and_then(|d| d.text("carID").map(Cow::into_owned));
                let segment = entries.text("segmentId").map(Cow::into_owned);
                let origin = entries.get("originData").is_some_and(|o| o.get().starts_with('{'));
                let tagged = entries.text("sysTag").is_some_and(|t| *t == *how.sys_tag);
                match (tagged && origin, car, segment) {
                    (true, Some(car), Some(segment)) => (Kind::Envelope, Some(car), Some(segment)),
                    _ => (Kind::Json, None, None),
                }
            }
            // An array, a string, a number...: JSON still, if serde_json takes it whole.
            Err(_) if serde_json::from_slice::<&RawValue>(&value).is_ok() => (Kind::Json, None, None),
            Err(_) if how.skip_malformed => return None,
            Err(_) => (Kind::Opaque, None, None),
        };
        Some(Self {
            partition,
            offset,
            car_id,
            segment_id,
            kind,
            topic: Arc::clone(topic),
            timestamp_ms: record.timestamp.timestamp_millis(),
            key: record.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
            // Headers are untrusted like the rest of the record: taken only when they are what the relay writes.
            header_segment: record.headers.get("segmentId").and_then(|v| String::from_utf8(v.clone()).ok()),
            header_seq: record.headers.get("seq").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()),
            value,
            with_pcm: OnceLock::new(),
            without_pcm: OnceLock::new(),
        })
    }

    /// `envelope`, `json` or `opaque`.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The message for a subscriber that wants envelopes with their PCM (`pcm`) or without; written by the first
    /// subscriber that asks, shared with the others.
    pub fn text(&self, pcm: bool) -> &Utf8Bytes {
        if pcm || self.kind != Kind::Envelope {
            self.with_pcm.get_or_init(|| self.write(false))
        } else {
            self.without_pcm.get_or_init(|| self.write(true))
        }
    }

    /// Whether a subscriber with these filters wants this record. Filters match envelopes only; a car's are
    /// those keyed by its carID (as the relay produces them: the key chose the partition a car's subscriber
    /// reads) or not keyed at all.
    pub fn matches(&self, car_id: Option<&str>, segment_id: Option<&str>) -> bool {
        car_id.is_none_or(|c| self.car_id.as_deref() == Some(c) && self.key.as_deref().is_none_or(|k| k == c))
            && segment_id.is_none_or(|s| self.segment_id.as_deref() == Some(s))
    }

    fn head<V>(&self, value: V) -> Head<'_, V> {
        Head {
            message: "record",
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.as_deref(),
            segment_id: self.header_segment.as_deref(),
            seq: self.header_seq,
            kind: self.kind.as_str(),
            value,
        }
    }

    fn write(&self, leave_out_pcm: bool) -> Utf8Bytes {
        let mut out = Vec::with_capacity(if leave_out_pcm { 512 } else { self.value.len() + 256 });
        // The value parsed when the record was classified: parsing it again cannot fail, and writing JSON into
        // memory cannot either. Should either ever happen, the value goes out as opaque base64 rather than lost.
        let written = match self.kind {
            Kind::Opaque => serde_json::to_writer(&mut out, &self.head(Value::Base64(BASE64.encode(&self.value)))),
            // As Kafka has it, byte for byte.
            Kind::Json | Kind::Envelope if !leave_out_pcm => match serde_json::from_slice::<&RawValue>(&self.value) {
                Ok(raw) => serde_json::to_writer(&mut out, &self.head(Value::Raw(raw))),
                Err(e) => Err(e),
            },
            Kind::Json | Kind::Envelope => match serde_json::from_slice::<Entries<'_>>(&self.value) {
                Ok(entries) => {
                    let origin =
                        entries.get("originData").and_then(|o| serde_json::from_str::<Entries<'_>>(o.get()).ok());
                    let object = Object { entries: &entries, origin_without_pcm: origin.as_ref() };
                    serde_json::to_writer(&mut out, &self.head(Value::Object(object)))
                }
                Err(e) => Err(e),
            },
        };
        if written.is_err() {
            out.clear();
            let _ = serde_json::to_writer(&mut out, &self.head(Value::Base64(BASE64.encode(&self.value))));
        }
        // serde_json writes UTF-8.
        Utf8Bytes::from(String::from_utf8(out).unwrap_or_default())
    }
}
