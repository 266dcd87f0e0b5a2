//! The `AICP_SOUND` envelope: the JSON document that lands in Kafka, one per audio frame.
//!
//! The relay builds one from each frame it receives ([`Envelope::build`]); the browser's feed and the `tail`
//! command parse what they consume ([`Envelope::parse`]). Downstream consumers already read this exact shape,
//! written before by a Python uploader, so field names, nesting and order are pinned by a golden file
//! (`shared/tests/golden/envelope.json`):
//!
//! ```json
//! {"uuid":"…","ver":"…","sysType":3,"sysTag":"AICP_SOUND","collectTimestamp":1732530000000,
//!  "deviceInfo":{"carID":"…","railType":0},"locationInfo":{"unitId":"","sty":""},
//!  "segmentId":"","inspectionInfo":"",
//!  "originData":{"base64":"…","hz":16000,"bits":16,"size":6400,"duration":200}}
//! ```
//!
//! Field meanings:
//! - `uuid`: a UUID string, unique per frame (the relay makes a random v4 for each).
//! - `ver`: the configured protocol version string (`communication_protocol` in the relay's config file).
//! - `collectTimestamp`: milliseconds since the Unix epoch of the frame's **first** sample.
//! - `originData.base64`: standard, padded base64 of little-endian signed 16-bit mono PCM.
//! - `originData.size`: the PCM byte count (twice the number of samples).
//! - `originData.duration`: the frame's length in whole milliseconds, `round(samples * 1000 / hz)`. When
//!   parsing, any value within one millisecond of the exact length is accepted, so envelopes whose producer
//!   truncated instead of rounding still parse.
//!
//! Parsing is strict about what downstream code relies on and lenient about the rest: unknown extra fields are
//! ignored (forward compatibility), every known field must be present with its JSON type, and each way a
//! document can be wrong has its own [`EnvelopeError`] variant. Parsing never panics, whatever the bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::recording::{DeviceInfo, LocationInfo, Recording};
use crate::{BITS_PER_SAMPLE, SAMPLE_RATE_HZ};

/// The `sysTag` every Soundline envelope carries unless configured otherwise.
pub const DEFAULT_SYS_TAG: &str = "AICP_SOUND";
/// The `sysType` every Soundline envelope carries unless configured otherwise.
pub const DEFAULT_SYS_TYPE: i64 = 3;

/// Everything wrong that [`Envelope::parse`] can find, each with the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The bytes are not a JSON document.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// The document is JSON but not an object.
    #[error("the envelope must be a JSON object, found {found}")]
    NotAnObject {
        /// The JSON type found.
        found: &'static str,
    },
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong JSON type (or an integer out of range).
    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType {
        /// JSON path of the field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it was.
        found: String,
    },
    /// `sysTag` is not the expected tag.
    #[error("sysTag is {found:?}, expected {expected:?}")]
    WrongSysTag {
        /// The tag found.
        found: String,
        /// The tag expected.
        expected: String,
    },
    /// `originData.base64` is not valid standard padded base64.
    #[error("originData.base64 is not valid base64: {0}")]
    BadBase64(String),
    /// `originData.size` is not the decoded PCM's byte count, or the PCM has an odd byte count.
    #[error("originData.size says {declared} bytes but the PCM holds {actual} bytes")]
    SizeMismatch {
        /// The declared size.
        declared: u64,
        /// The decoded byte count.
        actual: u64,
    },
    /// The decoded PCM holds an odd number of bytes, which is not whole 16-bit samples.
    #[error("the PCM holds {0} bytes, which is not a whole number of 16-bit samples")]
    OddPcmLength(u64),
    /// `originData.duration` does not match the number of samples at `hz`.
    #[error(
        "originData.duration says {declared} ms but {samples} samples at {hz} Hz last {:.3} ms",
        *.samples as f64 * 1000.0 / *.hz as f64
    )]
    DurationMismatch {
        /// The declared duration in ms.
        declared: u64,
        /// The number of samples decoded.
        samples: u64,
        /// The sample rate.
        hz: u64,
    },
    /// `hz` or `bits` is not the format Soundline carries (16000 Hz, 16 bits).
    #[error(
        "unsupported audio format {hz} Hz / {bits} bits; only {SAMPLE_RATE_HZ} Hz / {BITS_PER_SAMPLE} bits is supported"
    )]
    UnsupportedFormat {
        /// The declared rate.
        hz: u64,
        /// The declared sample width.
        bits: u64,
    },
}

/// `originData` of the envelope, with the PCM held as raw little-endian bytes. Its `hz` and `bits` are always
/// [`SAMPLE_RATE_HZ`] and [`BITS_PER_SAMPLE`] (parsing refuses anything else), so they are not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginData {
    /// PCM, signed 16-bit little-endian mono at 16 kHz. Serialized as standard padded base64.
    pub pcm_le: Vec<u8>,
}

impl OriginData {
    /// Number of samples in the PCM.
    pub fn sample_count(&self) -> usize {
        self.pcm_le.len() / 2
    }

    /// The PCM as samples.
    pub fn samples(&self) -> Vec<i16> {
        self.pcm_le.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
    }

    /// `originData.duration`: whole milliseconds, rounded to nearest.
    pub fn duration_ms(&self) -> u64 {
        duration_ms(self.sample_count() as u64, u64::from(SAMPLE_RATE_HZ))
    }
}

/// Length in whole milliseconds (rounded to nearest) of `samples` samples at `hz`.
pub fn duration_ms(samples: u64, hz: u64) -> u64 {
    if hz == 0 {
        return 0;
    }
    (samples * 1000 + hz / 2) / hz
}

/// The identity a relay stamps on every envelope it builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// `ver`: the configured protocol version string.
    pub ver: String,
    /// `sysType`.
    pub sys_type: i64,
    /// `sysTag`.
    pub sys_tag: String,
}

impl Default for Stamp {
    fn default() -> Self {
        Self { ver: String::new(), sys_type: DEFAULT_SYS_TYPE, sys_tag: DEFAULT_SYS_TAG.to_owned() }
    }
}

/// One `AICP_SOUND` envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `uuid`: unique per frame.
    pub uuid: String,
    /// `ver`, `sysType`, `sysTag`.
    pub stamp: Stamp,
    /// `collectTimestamp`: ms since the epoch of the first sample.
    pub collect_timestamp_ms: i64,
    /// `deviceInfo`, `locationInfo`, `segmentId`, `inspectionInfo`.
    pub recording: Recording,
    /// `originData`.
    pub origin: OriginData,
}

impl Envelope {
    /// Builds the envelope for one frame of 16 kHz / 16-bit PCM.
    ///
    /// `pcm_le` is little-endian signed 16-bit mono, exactly as it arrives on the wire (see [`crate::frame`]),
    /// so the relay copies bytes and never converts samples.
    pub fn build(
        uuid: uuid::Uuid,
        stamp: &Stamp,
        recording: &Recording,
        collect_timestamp_ms: i64,
        pcm_le: &[u8],
    ) -> Self {
        Self {
            uuid: uuid.hyphenated().to_string(),
            stamp: stamp.clone(),
            collect_timestamp_ms,
            recording: recording.clone(),
            origin: OriginData { pcm_le: pcm_le.to_vec() },
        }
    }

    /// Builds the envelope from samples (convenience for tests and tools).
    pub fn from_samples(
        uuid: uuid::Uuid,
        stamp: &Stamp,
        recording: &Recording,
        collect_timestamp_ms: i64,
        samples: &[i16],
    ) -> Self {
        let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        Self::build(uuid, stamp, recording, collect_timestamp_ms, &pcm)
    }

    /// The envelope as the compact JSON bytes that go into Kafka.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_json(&mut out);
        out
    }

    /// Appends the JSON to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        write_json(&self.uuid, &self.stamp, &self.recording, self.collect_timestamp_ms, &self.origin.pcm_le, out);
    }

    /// The envelope's JSON without `originData.base64` (its `size` and `duration` still say how much PCM it
    /// carries): what a feed subscription with `"pcm": false` delivers.
    pub fn to_json_without_pcm(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_wire(
            &self.uuid,
            &self.stamp,
            &self.recording,
            self.collect_timestamp_ms,
            &self.origin.pcm_le,
            false,
            &mut out,
        );
        out
    }

    /// Parses an envelope whose `sysTag` must be [`DEFAULT_SYS_TAG`].
    ///
    /// # Errors
    ///
    /// See [`Envelope::parse_tagged`].
    pub fn parse(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Self::parse_tagged(bytes, DEFAULT_SYS_TAG)
    }

    /// Parses an envelope, requiring `sysTag == expected_sys_tag`.
    ///
    /// # Errors
    ///
    /// One [`EnvelopeError`] for the first problem found: not JSON, not an object, a missing or wrongly typed
    /// field, the wrong tag, bad base64, a `size` or `duration` that does not match the PCM, or a format other
    /// than 16 kHz / 16-bit.
    pub fn parse_tagged(bytes: &[u8], expected_sys_tag: &str) -> Result<Self, EnvelopeError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        let Value::Object(root) = value else {
            return Err(EnvelopeError::NotAnObject { found: type_name(&value) });
        };
        let sys_tag = string(&root, "sysTag", "sysTag")?;
        if sys_tag != expected_sys_tag {
            return Err(EnvelopeError::WrongSysTag { found: sys_tag, expected: expected_sys_tag.to_owned() });
        }
        let device = object(&root, "deviceInfo", "deviceInfo")?;
        let location = object(&root, "locationInfo", "locationInfo")?;
        let origin = object(&root, "originData", "originData")?;

        let hz = unsigned(origin, "hz", "originData.hz")?;
        let bits = unsigned(origin, "bits", "originData.bits")?;
        if hz != u64::from(SAMPLE_RATE_HZ) || bits != u64::from(BITS_PER_SAMPLE) {
            return Err(EnvelopeError::UnsupportedFormat { hz, bits });
        }
        let b64 = str_ref(origin, "base64", "originData.base64")?;
        let pcm_le = BASE64.decode(b64).map_err(|e| EnvelopeError::BadBase64(e.to_string()))?;
        let size = unsigned(origin, "size", "originData.size")?;
        let actual = pcm_le.len() as u64;
        if size != actual {
            return Err(EnvelopeError::SizeMismatch { declared: size, actual });
        }
        if !actual.is_multiple_of(2) {
            return Err(EnvelopeError::OddPcmLength(actual));
        }
        let duration = unsigned(origin, "duration", "originData.duration")?;
        let samples = actual / 2;
        // Accept any whole-ms value within 1 ms of the exact length (round, floor or ceil all pass).
        let exact_ms_x_hz = samples * 1000;
        if (duration * hz).abs_diff(exact_ms_x_hz) >= hz {
            return Err(EnvelopeError::DurationMismatch { declared: duration, samples, hz });
        }

        Ok(Self {
            uuid: string(&root, "uuid", "uuid")?,
            stamp: Stamp {
                ver: string(&root, "ver", "ver")?,
                sys_type: integer(&root, "sysType", "sysType")?,
                sys_tag,
            },
            collect_timestamp_ms: integer(&root, "collectTimestamp", "collectTimestamp")?,
            recording: Recording {
                device: DeviceInfo {
                    car_id: string(device, "carID", "deviceInfo.carID")?,
                    rail_type: integer(device, "railType", "deviceInfo.railType")?,
                },
                location: LocationInfo {
                    unit_id: string(location, "unitId", "locationInfo.unitId")?,
                    sty: string(location, "sty", "locationInfo.sty")?,
                },
                segment_id: string(&root, "segmentId", "segmentId")?,
                inspection_info: string(&root, "inspectionInfo", "inspectionInfo")?,
            },
            // hz and bits were checked equal to the supported constants above.
            origin: OriginData { pcm_le },
        })
    }
}

/// Appends the JSON of the envelope made of these parts to `out`, without building an [`Envelope`].
///
/// This is the relay's per-frame path: the metadata is borrowed from the connection and the PCM from the
/// WebSocket message, and the base64 is written straight into `out`. The PCM is 16 kHz / 16-bit little-endian.
pub fn write_json(
    uuid: &str,
    stamp: &Stamp,
    recording: &Recording,
    collect_timestamp_ms: i64,
    pcm_le: &[u8],
    out: &mut Vec<u8>,
) {
    write_wire(uuid, stamp, recording, collect_timestamp_ms, pcm_le, true, out);
}

fn write_wire(
    uuid: &str,
    stamp: &Stamp,
    recording: &Recording,
    collect_timestamp_ms: i64,
    pcm_le: &[u8],
    with_pcm: bool,
    out: &mut Vec<u8>,
) {
    out.reserve(if with_pcm { pcm_le.len() * 4 / 3 } else { 0 } + 512);
    let wire = Wire {
        uuid,
        ver: &stamp.ver,
        sys_type: stamp.sys_type,
        sys_tag: &stamp.sys_tag,
        collect_timestamp: collect_timestamp_ms,
        device_info: &recording.device,
        location_info: &recording.location,
        segment_id: &recording.segment_id,
        inspection_info: &recording.inspection_info,
        origin_data: WireOrigin {
            base64: with_pcm.then_some(Base64Pcm(pcm_le)),
            hz: SAMPLE_RATE_HZ,
            bits: BITS_PER_SAMPLE,
            size: pcm_le.len() as u64,
            duration: duration_ms(pcm_le.len() as u64 / 2, u64::from(SAMPLE_RATE_HZ)),
        },
    };
    // Writing into a Vec cannot fail, and every field is a plain string or number, which serde_json always
    // serializes: there is no error to report here.
    if let Err(e) = serde_json::to_writer(out, &wire) {
        unreachable!("serializing an envelope into memory failed: {e}");
    }
}

/// One recording's envelope, serialized once with everything its frames share: what [`write_json`] writes, with
/// only the uuid, the timestamp and the PCM (base64, size, duration) written per frame.
///
/// The relay's per-frame path: metadata strings are escaped once per recording instead of once per frame, and
/// a frame costs one base64 pass straight into the record and a few integers.
#[derive(Debug, Clone)]
pub struct EnvelopeTemplate {
    /// `,"ver":…,"collectTimestamp":` (after the uuid).
    after_uuid: Vec<u8>,
    /// `,"deviceInfo":…,"originData":{"base64":"` (after the timestamp).
    after_timestamp: Vec<u8>,
}

impl EnvelopeTemplate {
    /// The template of `recording`'s envelopes, stamped with `stamp`.
    pub fn new(stamp: &Stamp, recording: &Recording) -> Self {
        let after_uuid = format!(
            ",\"ver\":{},\"sysType\":{},\"sysTag\":{},\"collectTimestamp\":",
            json_text(&stamp.ver),
            stamp.sys_type,
            json_text(&stamp.sys_tag)
        );
        let after_timestamp = format!(
            ",\"deviceInfo\":{},\"locationInfo\":{},\"segmentId\":{},\"inspectionInfo\":{},\"originData\":{{\"base64\":\"",
            json_text(&recording.device),
            json_text(&recording.location),
            json_text(&recording.segment_id),
            json_text(&recording.inspection_info)
        );
        Self { after_uuid: after_uuid.into_bytes(), after_timestamp: after_timestamp.into_bytes() }
    }

    /// Appends the envelope of one frame to `out`: byte for byte what [`write_json`] writes for the same parts.
    pub fn write_json(&self, uuid: &str, collect_timestamp_ms: i64, pcm_le: &[u8], out: &mut Vec<u8>) {
        use std::io::Write as _;
        let b64_len = base64_simd::STANDARD.encoded_length(pcm_le.len());
        out.reserve(self.after_uuid.len() + self.after_timestamp.len() + uuid.len() + b64_len + 96);
        out.extend_from_slice(b"{\"uuid\":");
        // Straight into `out`: a string always serializes, and writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, uuid);
        out.extend_from_slice(&self.after_uuid);
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{collect_timestamp_ms}");
        out.extend_from_slice(&self.after_timestamp);
        // Into the room reserved above, without zero-filling it first. SIMD: a frame's one pass over its PCM is the
        // envelope's largest cost (BENCHMARKS.md).
        base64_simd::STANDARD.encode_append(pcm_le, out);
        let duration = duration_ms(pcm_le.len() as u64 / 2, u64::from(SAMPLE_RATE_HZ));
        let _ = write!(
            out,
            "\",\"hz\":{SAMPLE_RATE_HZ},\"bits\":{BITS_PER_SAMPLE},\"size\":{},\"duration\":{duration}}}}}",
            pcm_le.len()
        );
    }
}

/// JSON of a string or a metadata struct, as serde_json writes it inside [`write_json`].
fn json_text<T: Serialize + ?Sized>(v: &T) -> String {
    // Plain strings, numbers and structs of them: serde_json always serializes these.
    serde_json::to_string(v).unwrap_or_default()
}

/// The serialized shape, field order as downstream consumers see it.
#[derive(Serialize)]
struct Wire<'a> {
    uuid: &'a str,
    ver: &'a str,
    #[serde(rename = "sysType")]
    sys_type: i64,
    #[serde(rename = "sysTag")]
    sys_tag: &'a str,
    #[serde(rename = "collectTimestamp")]
    collect_timestamp: i64,
    #[serde(rename = "deviceInfo")]
    device_info: &'a DeviceInfo,
    #[serde(rename = "locationInfo")]
    location_info: &'a LocationInfo,
    #[serde(rename = "segmentId")]
    segment_id: &'a str,
    #[serde(rename = "inspectionInfo")]
    inspection_info: &'a str,
    #[serde(rename = "originData")]
    origin_data: WireOrigin<'a>,
}

#[derive(Serialize)]
struct WireOrigin<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    base64: Option<Base64Pcm<'a>>,
    hz: u32,
    bits: u32,
    size: u64,
    duration: u64,
}

/// Serializes PCM as base64 straight into the output, without an intermediate `String`.
struct Base64Pcm<'a>(&'a [u8]);

impl Serialize for Base64Pcm<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&base64::display::Base64Display::new(self.0, &BASE64))
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn field<'a>(obj: &'a Map<String, Value>, key: &str, path: &'static str) -> Result<&'a Value, EnvelopeError> {
    obj.get(key).ok_or(EnvelopeError::MissingField(path))
}

fn wrong(path: &'static str, expected: &'static str, found: &Value) -> EnvelopeError {
    let found = match found {
        Value::Number(n) => format!("the number {n}"),
        other => type_name(other).to_owned(),
    };
    EnvelopeError::WrongType { field: path, expected, found }
}

fn object<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &'static str,
) -> Result<&'a Map<String, Value>, EnvelopeError> {
    let v = field(obj, key, path)?;
    v.as_object().ok_or_else(|| wrong(path, "an object", v))
}

fn str_ref<'a>(obj: &'a Map<String, Value>, key: &str, path: &'static str) -> Result<&'a str, EnvelopeError> {
    let v = field(obj, key, path)?;
    v.as_str().ok_or_else(|| wrong(path, "a string", v))
}

fn string(obj: &Map<String, Value>, key: &str, path: &'static str) -> Result<String, EnvelopeError> {
    str_ref(obj, key, path).map(str::to_owned)
}

fn integer(obj: &Map<String, Value>, key: &str, path: &'static str) -> Result<i64, EnvelopeError> {
    let v = field(obj, key, path)?;
    v.as_i64().ok_or_else(|| wrong(path, "an integer", v))
}

fn unsigned(obj: &Map<String, Value>, key: &str, path: &'static str) -> Result<u64, EnvelopeError> {
    let v = field(obj, key, path)?;
    // Bound it so later arithmetic (duration * hz, samples * 1000) cannot overflow.
    v.as_u64().filter(|n| *n <= u64::from(u32::MAX)).ok_or_else(|| wrong(path, "a non-negative integer below 2^32", v))
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_pcm_is_the_envelope_less_its_base64() {
        let env = Envelope::from_samples(uuid::Uuid::nil(), &Stamp::default(), &Recording::default(), 7, &[1, -2, 3]);
        let full: serde_json::Value = serde_json::from_slice(&env.to_json()).expect("json");
        let light: serde_json::Value = serde_json::from_slice(&env.to_json_without_pcm()).expect("json");
        let mut expected = full.clone();
        expected["originData"].as_object_mut().expect("object").remove("base64");
        assert_eq!(light, expected);
        assert_eq!((light["originData"]["size"].as_u64(), light["originData"]["hz"].as_u64()), (Some(6), Some(16_000)));
    }

    #[test]
    fn a_template_writes_what_write_json_writes_byte_for_byte() {
        let stamp = Stamp { ver: "1.0 \"beta\"".into(), ..Stamp::default() };
        let mut recording = Recording::default();
        for (car, notes, samples) in [
            ("CAR-042", "left bogie, wheel 3", 3200usize),
            ("车厢-7 \"quoted\" \\ back", "line 1\r\nline 2\ttab \u{2028} é", 1),
            ("", "", 0),
            ("C", "\u{1f682}", 7),
        ] {
            recording.device.car_id = car.into();
            recording.device.rail_type = -3;
            recording.location.unit_id = "U7/\u{7f}".into();
            recording.segment_id = format!("seg {car}");
            recording.inspection_info = notes.into();
            let pcm: Vec<u8> = (0..samples * 2).map(|i| (i * 37 % 251) as u8).collect();
            let template = EnvelopeTemplate::new(&stamp, &recording);
            let (mut expected, mut got) = (Vec::new(), b"kept".to_vec());
            write_json("6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f3a21", &stamp, &recording, -17, &pcm, &mut expected);
            template.write_json("6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f3a21", -17, &pcm, &mut got);
            assert_eq!(String::from_utf8_lossy(&got[4..]), String::from_utf8_lossy(&expected), "{car:?}");
            assert_eq!(&got[..4], b"kept", "appends");
        }
    }

    #[test]
    fn a_templates_base64_is_the_standard_one_at_every_length_around_the_simd_blocks() {
        // The template encodes with SIMD in blocks; every length up to a few blocks, odd ones too, against the
        // `base64` crate's standard padded encoding.
        let template = EnvelopeTemplate::new(&Stamp::default(), &Recording::default());
        for len in 0..=300usize {
            let pcm: Vec<u8> = (0..len).map(|i| (i * 151 + len) as u8).collect();
            let mut out = Vec::new();
            template.write_json("u", 0, &pcm, &mut out);
            let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
            assert_eq!(v["originData"]["base64"].as_str(), Some(BASE64.encode(&pcm).as_str()), "{len} bytes");
        }
    }

    use super::*;

    fn envelope(samples: &[i16]) -> Envelope {
        Envelope::from_samples(
            uuid::Uuid::from_u128(0x1234),
            &Stamp { ver: "1.0".into(), ..Stamp::default() },
            &Recording { segment_id: "s".into(), ..Recording::default() },
            1_732_530_000_000,
            samples,
        )
    }

    fn mutate(f: impl FnOnce(&mut Map<String, Value>)) -> Result<Envelope, EnvelopeError> {
        let mut v: Value = serde_json::from_slice(&envelope(&[1, -2, 3, 4]).to_json()).expect("own output is JSON");
        f(v.as_object_mut().expect("object"));
        Envelope::parse(&serde_json::to_vec(&v).expect("serializable"))
    }

    fn origin(m: &mut Map<String, Value>) -> &mut Map<String, Value> {
        m.get_mut("originData").and_then(Value::as_object_mut).expect("originData")
    }

    #[test]
    fn duration_is_rounded_milliseconds() {
        assert_eq!(duration_ms(3200, 16_000), 200);
        assert_eq!(duration_ms(8, 16_000), 1); // 0.5 ms rounds up
        assert_eq!(duration_ms(7, 16_000), 0);
        assert_eq!(duration_ms(16_008, 16_000), 1001);
    }

    #[test]
    fn garbage_is_not_json() {
        assert!(matches!(Envelope::parse(b"\xff\x00{"), Err(EnvelopeError::NotJson(_))));
        assert_eq!(Envelope::parse(b"[1]"), Err(EnvelopeError::NotAnObject { found: "an array" }));
    }

    #[test]
    fn each_missing_field_is_named() {
        assert_eq!(mutate(|m| drop(m.remove("uuid"))), Err(EnvelopeError::MissingField("uuid")));
        assert_eq!(
            mutate(|m| drop(m.get_mut("deviceInfo").and_then(Value::as_object_mut).map(|d| d.remove("carID")))),
            Err(EnvelopeError::MissingField("deviceInfo.carID"))
        );
        assert_eq!(
            mutate(|m| drop(origin(m).remove("duration"))),
            Err(EnvelopeError::MissingField("originData.duration"))
        );
    }

    #[test]
    fn wrong_types_are_named() {
        assert_eq!(
            mutate(|m| drop(m.insert("collectTimestamp".into(), Value::from("yesterday")))),
            Err(EnvelopeError::WrongType {
                field: "collectTimestamp",
                expected: "an integer",
                found: "a string".into()
            })
        );
        assert_eq!(
            mutate(|m| drop(m.insert("sysType".into(), Value::from(3.5)))),
            Err(EnvelopeError::WrongType { field: "sysType", expected: "an integer", found: "the number 3.5".into() })
        );
        assert!(matches!(
            mutate(|m| drop(origin(m).insert("size".into(), Value::from(-8)))),
            Err(EnvelopeError::WrongType { field: "originData.size", .. })
        ));
    }

    #[test]
    fn wrong_sys_tag_is_refused() {
        assert_eq!(
            mutate(|m| drop(m.insert("sysTag".into(), Value::from("AICP_IMAGE")))),
            Err(EnvelopeError::WrongSysTag { found: "AICP_IMAGE".into(), expected: "AICP_SOUND".into() })
        );
    }

    #[test]
    fn bad_base64_is_refused() {
        assert!(matches!(
            mutate(|m| drop(origin(m).insert("base64".into(), Value::from("AQ!=")))),
            Err(EnvelopeError::BadBase64(_))
        ));
    }

    #[test]
    fn size_and_duration_must_match_the_pcm() {
        assert_eq!(
            mutate(|m| drop(origin(m).insert("size".into(), Value::from(9)))),
            Err(EnvelopeError::SizeMismatch { declared: 9, actual: 8 })
        );
        // 4 samples = 0.25 ms: 0 and 1 are within a millisecond, 2 is not.
        assert!(mutate(|m| drop(origin(m).insert("duration".into(), Value::from(1)))).is_ok());
        assert!(matches!(
            mutate(|m| drop(origin(m).insert("duration".into(), Value::from(2)))),
            Err(EnvelopeError::DurationMismatch { declared: 2, samples: 4, hz: 16_000, .. })
        ));
    }

    #[test]
    fn odd_pcm_is_refused() {
        let r = mutate(|m| {
            let o = origin(m);
            o.insert("base64".into(), Value::from(BASE64.encode([1u8, 2, 3])));
            o.insert("size".into(), Value::from(3));
        });
        assert_eq!(r, Err(EnvelopeError::OddPcmLength(3)));
    }

    #[test]
    fn other_formats_are_unsupported() {
        assert_eq!(
            mutate(|m| drop(origin(m).insert("hz".into(), Value::from(44_100)))),
            Err(EnvelopeError::UnsupportedFormat { hz: 44_100, bits: 16 })
        );
        assert_eq!(
            mutate(|m| drop(origin(m).insert("bits".into(), Value::from(24)))),
            Err(EnvelopeError::UnsupportedFormat { hz: 16_000, bits: 24 })
        );
    }

    #[test]
    fn unknown_extra_fields_are_ignored() {
        let parsed = mutate(|m| drop(m.insert("newDownstreamField".into(), Value::from(true)))).expect("parses");
        assert_eq!(parsed, envelope(&[1, -2, 3, 4]));
    }
}
