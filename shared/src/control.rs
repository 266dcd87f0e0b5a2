//! The JSON control messages of the recorder protocol and the error codes with their WebSocket close codes.
//!
//! Audio travels as binary [`crate::frame`]s; everything else is a WebSocket text message holding one JSON
//! object with a `type` field. The recorder speaks first:
//!
//! ```text
//! recorder                                   relay
//!   │ ── text  {"type":"hello",...} ─────────► │  validate protocol, format, metadata
//!   │ ◄──────── text {"type":"ready",...} ──── │
//!   │ ── binary frame seq=n ─────────────────► │  envelope ─► Kafka
//!   │ ◄──────── text {"type":"ack","seq":n,"partition":p,"offset":o}
//!   │ ◄──────── text {"type":"status",...}     │  when Kafka is slow or away, and when it is back
//!   │ ◄──────── text {"type":"error",...}      │  then a close frame with the code's close code
//! ```
//!
//! `docs/protocol.md` documents every message and code; the tables there are checked against
//! [`ErrorCode::ALL`] by a test, so the two cannot drift apart.

use serde::{Deserialize, Serialize};

use crate::recording::{Recording, RecordingError};
use crate::{BITS_PER_SAMPLE, CHANNELS, PROTOCOL_VERSION, SAMPLE_RATE_HZ};

/// The sample format a recorder promises to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleFormat {
    /// Sample rate in Hz. Must be 16000.
    pub hz: u32,
    /// Bits per sample. Must be 16.
    pub bits: u32,
    /// Channels. Must be 1.
    pub channels: u32,
}

impl SampleFormat {
    /// The only format Soundline carries: 16 kHz, 16-bit, mono.
    pub const SOUNDLINE: Self = Self { hz: SAMPLE_RATE_HZ, bits: BITS_PER_SAMPLE, channels: CHANNELS };
}

/// The recorder's first message: who is recording what, in which format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version; must be [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Device, location, segment and notes, copied into every envelope.
    #[serde(flatten)]
    pub recording: Recording,
    /// The sample format of the frames to follow.
    pub format: SampleFormat,
    /// Sent when the recording reconnects: where its last acked frame landed. The relay then finds in Kafka the
    /// frames of this segment stored after it (another relay produced them but its ack was lost) and acks them
    /// instead of producing them again, and keeps the recording on that partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
}

impl Hello {
    /// A hello for this protocol version and the Soundline sample format.
    pub fn new(recording: Recording) -> Self {
        Self { protocol: PROTOCOL_VERSION, recording, format: SampleFormat::SOUNDLINE, resume: None }
    }
}

/// Where a recording's last acked frame landed in Kafka, as its ack said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The ack's partition (0 or more).
    pub partition: i32,
    /// The ack's offset (0 or more).
    pub offset: i64,
}

/// Messages a client sends as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Starts a recording connection.
    Hello(Hello),
}

/// How the relay's path to Kafka is doing, as told to recorders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Frames are reaching Kafka.
    Ok,
    /// Kafka is not answering; the relay holds frames (unacked) and retries with backoff.
    KafkaUnavailable,
    /// The relay's memory budget is full: it has stopped reading this connection until Kafka catches up.
    /// Keep frames in the resend buffer; nothing is dropped.
    Backpressure,
}

/// Messages the relay sends to a recorder as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The hello was accepted; frames may follow.
    Ready {
        /// Protocol version the relay speaks.
        protocol: u32,
        /// Kafka topic the frames go to.
        topic: String,
        /// Largest accepted frame, in samples.
        #[serde(rename = "maxFrameSamples")]
        max_frame_samples: u32,
    },
    /// Kafka has the frame `seq`, at `partition`/`offset`.
    Ack {
        /// The frame's sequence number.
        seq: u32,
        /// Kafka partition.
        partition: i32,
        /// Kafka offset of the record.
        offset: i64,
    },
    /// The relay's link to Kafka changed state.
    Status {
        /// The new state.
        state: LinkState,
        /// Bytes of this connection's frames the relay holds, not yet in Kafka.
        #[serde(rename = "heldBytes")]
        held_bytes: u64,
        /// Human-readable detail.
        message: String,
    },
    /// Something is wrong; a close frame with `code.close_code()` follows.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable message naming the problem.
        message: String,
    },
}

/// Machine-readable error codes, each with the WebSocket close code the relay closes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The hello names a protocol version the relay does not speak.
    UnsupportedProtocol,
    /// A binary frame arrived before the hello.
    HelloRequired,
    /// The hello is not valid JSON, lacks a field, or breaks a metadata limit.
    BadHello,
    /// The hello's sample format is not 16 kHz / 16-bit / mono.
    UnsupportedFormat,
    /// A binary message is not a valid audio frame.
    BadFrame,
    /// A frame carries more samples than the relay accepts in one frame.
    FrameTooLarge,
    /// A frame's sequence number is not the previous one plus one.
    SequenceOutOfOrder,
    /// A text message arrived where only binary frames are expected, or a text message is not a known message.
    UnexpectedText,
    /// The envelope built from a frame exceeds the Kafka broker's maximum message size.
    RecordTooLarge,
    /// A text message is not valid UTF-8.
    InvalidUtf8,
    /// A WebSocket message exceeds the relay's size limit.
    MessageTooBig,
    /// The feed's first message is not a valid subscribe.
    BadSubscribe,
    /// The subscription names a topic that is not on the relay's feed allowlist.
    TopicNotAllowed,
    /// A feed subscriber did not read for longer than the relay's send timeout.
    TooSlow,
    /// The subscribed topic does not exist (yet) on the brokers.
    UnknownTopic,
    /// Authentication is required and the connection brought no valid token (missing, unknown, expired).
    Unauthorized,
    /// The connection sent nothing (not even a pong) for longer than the relay's idle timeout, or no hello or
    /// subscribe in time.
    IdleTimeout,
    /// The relay is shutting down; reconnect (to another replica) and resend unacked frames.
    ShuttingDown,
    /// The relay failed in a way that is not the client's fault.
    Internal,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [Self; 19] = [
        Self::UnsupportedProtocol,
        Self::HelloRequired,
        Self::BadHello,
        Self::UnsupportedFormat,
        Self::BadFrame,
        Self::FrameTooLarge,
        Self::SequenceOutOfOrder,
        Self::UnexpectedText,
        Self::RecordTooLarge,
        Self::InvalidUtf8,
        Self::MessageTooBig,
        Self::BadSubscribe,
        Self::TopicNotAllowed,
        Self::TooSlow,
        Self::UnknownTopic,
        Self::Unauthorized,
        Self::IdleTimeout,
        Self::ShuttingDown,
        Self::Internal,
    ];

    /// The WebSocket close code that follows this error.
    pub const fn close_code(self) -> u16 {
        match self {
            Self::UnsupportedProtocol => 4001,
            Self::HelloRequired => 4002,
            Self::BadHello => 4003,
            Self::UnsupportedFormat => 4004,
            Self::BadFrame => 4005,
            Self::FrameTooLarge => 4006,
            Self::SequenceOutOfOrder => 4007,
            Self::UnexpectedText => 4008,
            Self::RecordTooLarge => 4009,
            Self::InvalidUtf8 => 1007,
            Self::MessageTooBig => 1009,
            Self::BadSubscribe => 4010,
            Self::TopicNotAllowed => 4011,
            Self::TooSlow => 4012,
            Self::UnknownTopic => 4013,
            Self::Unauthorized => 4014,
            Self::IdleTimeout => 4015,
            Self::ShuttingDown => 1001,
            Self::Internal => 1011,
        }
    }

    /// The code as it appears in JSON, e.g. `bad_frame`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UnsupportedProtocol => "unsupported_protocol",
            Self::HelloRequired => "hello_required",
            Self::BadHello => "bad_hello",
            Self::UnsupportedFormat => "unsupported_format",
            Self::BadFrame => "bad_frame",
            Self::FrameTooLarge => "frame_too_large",
            Self::SequenceOutOfOrder => "sequence_out_of_order",
            Self::UnexpectedText => "unexpected_text",
            Self::RecordTooLarge => "record_too_large",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::MessageTooBig => "message_too_big",
            Self::BadSubscribe => "bad_subscribe",
            Self::TopicNotAllowed => "topic_not_allowed",
            Self::TooSlow => "too_slow",
            Self::UnknownTopic => "unknown_topic",
            Self::Unauthorized => "unauthorized",
            Self::IdleTimeout => "idle_timeout",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal",
        }
    }

    /// Whether a recorder should reconnect and resend after this error (the fault is not in what it sent).
    pub const fn retryable(self) -> bool {
        matches!(self, Self::ShuttingDown | Self::Internal | Self::TooSlow | Self::UnknownTopic | Self::IdleTimeout)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What can be wrong with a control message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// JSON, but not a known message or missing a field.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// The hello's protocol version is not spoken here.
    #[error("protocol version {got} is not supported; this relay speaks version {PROTOCOL_VERSION}")]
    UnsupportedProtocol {
        /// The version the client asked for.
        got: u64,
    },
    /// The hello's format is not 16 kHz / 16-bit / mono.
    #[error(
        "sample format {}/{}/{} (Hz/bits/channels) is not supported; send {SAMPLE_RATE_HZ}/{BITS_PER_SAMPLE}/{CHANNELS}",
        .0.hz, .0.bits, .0.channels
    )]
    UnsupportedFormat(SampleFormat),
    /// The recording metadata breaks a limit.
    #[error("{0}")]
    Recording(#[from] RecordingError),
}

impl ControlError {
    /// The error code a relay answers this with, when it comes in place of a hello.
    pub fn hello_code(&self) -> ErrorCode {
        match self {
            Self::UnsupportedProtocol { .. } => ErrorCode::UnsupportedProtocol,
            Self::UnsupportedFormat(_) => ErrorCode::UnsupportedFormat,
            Self::NotJson(_) | Self::Invalid(_) | Self::Recording(_) => ErrorCode::BadHello,
        }
    }
}

impl ClientMessage {
    /// Parses and validates a client's text message.
    ///
    /// The protocol version is checked before the shape, so a client of a future version learns that the
    /// version is the problem rather than a field it does not know.
    ///
    /// # Errors
    ///
    /// A [`ControlError`]; [`ControlError::hello_code`] gives the code to answer with.
    pub fn parse(text: &str) -> Result<Self, ControlError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ControlError::NotJson(e.to_string()))?;
        if !value.is_object() {
            return Err(ControlError::NotJson("expected an object with a \"type\" field".into()));
        }
        if value.get("type").and_then(|t| t.as_str()) == Some("hello") {
            match value.get("protocol").map(|p| p.as_u64()) {
                Some(Some(v)) if v != u64::from(PROTOCOL_VERSION) => {
                    return Err(ControlError::UnsupportedProtocol { got: v });
                }
                Some(None) => return Err(ControlError::Invalid("`protocol` must be a non-negative integer".into())),
                _ => {}
            }
        }
        let msg: Self = serde_json::from_value(value).map_err(|e| ControlError::Invalid(e.to_string()))?;
        match &msg {
            Self::Hello(hello) => {
                if hello.format != SampleFormat::SOUNDLINE {
                    return Err(ControlError::UnsupportedFormat(hello.format));
                }
                hello.recording.validate()?;
                if let Some(r) = hello.resume
                    && (r.partition < 0 || r.offset < 0)
                {
                    return Err(ControlError::Invalid(format!(
                        "`resume` names partition {} offset {}: both must be 0 or more, as an ack said",
                        r.partition, r.offset
                    )));
                }
            }
        }
        Ok(msg)
    }

    /// The message as JSON text.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

impl ServerMessage {
    /// Parses a relay's text message (used by recorders and tests).
    ///
    /// # Errors
    ///
    /// [`ControlError::NotJson`] or [`ControlError::Invalid`].
    pub fn parse(text: &str) -> Result<Self, ControlError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ControlError::NotJson(e.to_string()))?;
        serde_json::from_value(value).map_err(|e| ControlError::Invalid(e.to_string()))
    }

    /// The message as JSON text.
    pub fn to_json(&self) -> String {
        to_json(self)
    }

    /// An error message for `code`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error { code, message: message.into() }
    }
}

fn to_json<T: Serialize>(msg: &T) -> String {
    match serde_json::to_string(msg) {
        Ok(s) => s,
        // Only maps with non-string keys fail to serialize, and these messages have none.
        Err(e) => unreachable!("serializing a control message failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{DeviceInfo, LocationInfo};

    fn recording() -> Recording {
        Recording {
            device: DeviceInfo { car_id: "CAR-042".into(), rail_type: 2 },
            location: LocationInfo { unit_id: "U7".into(), sty: "track 3".into() },
            segment_id: "seg-2024-11-25-001".into(),
            inspection_info: "left bogie, wheel 3".into(),
        }
    }

    #[test]
    fn hello_json_carries_the_envelope_names_in_order() {
        let json = ClientMessage::Hello(Hello::new(recording())).to_json();
        assert_eq!(
            json,
            r#"{"type":"hello","protocol":1,"deviceInfo":{"carID":"CAR-042","railType":2},"locationInfo":{"unitId":"U7","sty":"track 3"},"segmentId":"seg-2024-11-25-001","inspectionInfo":"left bogie, wheel 3","format":{"hz":16000,"bits":16,"channels":1}}"#
        );
        assert_eq!(ClientMessage::parse(&json), Ok(ClientMessage::Hello(Hello::new(recording()))));
    }

    #[test]
    fn future_protocol_is_reported_as_a_version_problem() {
        let err = ClientMessage::parse(r#"{"type":"hello","protocol":2,"whatever":true}"#).unwrap_err();
        assert_eq!(err, ControlError::UnsupportedProtocol { got: 2 });
        assert_eq!(err.hello_code(), ErrorCode::UnsupportedProtocol);
    }

    #[test]
    fn wrong_format_is_unsupported_format() {
        let mut hello = Hello::new(recording());
        hello.format.hz = 48_000;
        let err = ClientMessage::parse(&ClientMessage::Hello(hello).to_json()).unwrap_err();
        assert_eq!(err.hello_code(), ErrorCode::UnsupportedFormat);
        assert!(err.to_string().contains("48000/16/1"), "{err}");
    }

    #[test]
    fn malformed_hellos_are_bad_hello() {
        for text in [
            "",
            "{",
            "null",
            "[]",
            r#"{"type":"helo"}"#,
            r#"{"type":"hello","protocol":1}"#,
            r#"{"type":"hello","protocol":"1"}"#,
        ] {
            let err = ClientMessage::parse(text).unwrap_err();
            assert_eq!(err.hello_code(), ErrorCode::BadHello, "{text:?} gave {err}");
        }
    }

    /// The doc's hello with the field at `path` removed (or set to `null`).
    fn hello_without(path: &[&str], null: bool) -> String {
        let mut v: serde_json::Value =
            serde_json::from_str(&ClientMessage::Hello(Hello::new(recording())).to_json()).expect("json");
        let (last, parents) = path.split_last().expect("a path");
        let mut obj = &mut v;
        for p in parents {
            obj = &mut obj[*p];
        }
        let map = obj.as_object_mut().expect("an object");
        if null {
            map.insert((*last).to_owned(), serde_json::Value::Null);
        } else {
            map.remove(*last);
        }
        v.to_string()
    }

    #[test]
    fn a_hello_needs_only_car_and_segment_the_rest_takes_the_envelope_defaults() {
        type Defaulted = fn(&mut Recording);
        let cases: [(&[&str], Defaulted); 5] = [
            (&["deviceInfo", "railType"], |r| r.device.rail_type = 0),
            (&["locationInfo"], |r| r.location = LocationInfo::default()),
            (&["locationInfo", "unitId"], |r| r.location.unit_id.clear()),
            (&["locationInfo", "sty"], |r| r.location.sty.clear()),
            (&["inspectionInfo"], |r| r.inspection_info.clear()),
        ];
        for (path, expect) in cases {
            let mut expected = recording();
            expect(&mut expected);
            for null in [false, true] {
                let text = hello_without(path, null);
                match ClientMessage::parse(&text) {
                    Ok(ClientMessage::Hello(h)) => assert_eq!(h.recording, expected, "{text}"),
                    Err(e) => panic!("{path:?} left out (null: {null}) was refused: {e}"),
                }
            }
        }
        for (path, field) in [
            (&["deviceInfo", "carID"][..], "carID"),
            (&["segmentId"][..], "segmentId"),
            (&["protocol"][..], "protocol"),
        ] {
            let err = ClientMessage::parse(&hello_without(path, false)).unwrap_err();
            assert_eq!(err.hello_code(), ErrorCode::BadHello, "{path:?}");
            assert!(err.to_string().contains(&format!("missing field `{field}`")), "{err}");
        }
    }

    #[test]
    fn a_format_with_extra_keys_is_the_format_and_rail_type_is_any_i64() {
        let base = ClientMessage::Hello(Hello::new(recording())).to_json();
        let extra = base.replace(r#""channels":1}"#, r#""channels":1,"codec":"pcm"}"#);
        assert!(matches!(ClientMessage::parse(&extra), Ok(ClientMessage::Hello(_))), "{extra}");
        for (rail, ok) in [
            ("-9223372036854775808", true),
            ("9223372036854775807", true),
            ("9223372036854775808", false),
            ("1.5", false),
            (r#""1""#, false),
        ] {
            let text = base.replace(r#""railType":2"#, &format!(r#""railType":{rail}"#));
            assert_eq!(ClientMessage::parse(&text).is_ok(), ok, "railType {rail}");
        }
    }

    #[test]
    fn oversized_metadata_is_bad_hello() {
        let mut hello = Hello::new(recording());
        hello.recording.device.car_id = "c".repeat(1 << 20);
        let err = ClientMessage::parse(&ClientMessage::Hello(hello).to_json()).unwrap_err();
        assert_eq!(err.hello_code(), ErrorCode::BadHello);
        assert_eq!(err.to_string(), "deviceInfo.carID is 1048576 bytes long; at most 256 bytes are accepted");
    }

    #[test]
    fn server_messages_round_trip() {
        let msgs = [
            ServerMessage::Ready { protocol: 1, topic: "sound".into(), max_frame_samples: 32_000 },
            ServerMessage::Ack { seq: 3, partition: 2, offset: 1234 },
            ServerMessage::Status {
                state: LinkState::KafkaUnavailable,
                held_bytes: 64_000,
                message: "retrying".into(),
            },
            ServerMessage::error(ErrorCode::SequenceOutOfOrder, "expected seq 4, got 6"),
        ];
        for m in msgs {
            assert_eq!(ServerMessage::parse(&m.to_json()), Ok(m));
        }
        assert_eq!(
            ServerMessage::Ack { seq: 3, partition: 2, offset: 1234 }.to_json(),
            r#"{"type":"ack","seq":3,"partition":2,"offset":1234}"#
        );
    }

    #[test]
    fn codes_serialize_as_their_names_and_close_codes_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_string(&code).ok(), Some(format!("\"{}\"", code.as_str())));
            assert!(seen.insert(code.close_code()), "close code {} used twice", code.close_code());
        }
    }
}
