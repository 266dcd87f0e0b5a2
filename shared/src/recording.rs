//! The recording's metadata: which car, where, which segment, what the technician noted.
//!
//! The technician types it into the page, the page sends it once in the hello ([`crate::control`]), and the relay
//! copies it into every envelope ([`crate::envelope`]) of that recording. The JSON names are the envelope's own
//! (`deviceInfo.carID`, `locationInfo.unitId`, ...) so that one struct serves both and nothing is renamed in between.
//!
//! Only `deviceInfo.carID` and `segmentId` are required in a hello: the other fields may be left out (or `null`),
//! as the old uploader sent them empty, and take the values the envelope then carries: `railType` 0, empty
//! strings for `unitId`, `sty` and `inspectionInfo`.

use serde::{Deserialize, Deserializer, Serialize};

/// Longest accepted identifier (carID, unitId, sty, segmentId), in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 256;
/// Longest accepted free text (inspectionInfo), in bytes of UTF-8.
pub const MAX_NOTES_BYTES: usize = 4096;

/// `deviceInfo` of the envelope: the rail car (device) being inspected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Car identifier; also the Kafka record key, so one car's records share a partition.
    #[serde(rename = "carID")]
    pub car_id: String,
    /// Rail type code, as the existing tool sends it (an integer, 0 by default).
    #[serde(rename = "railType", default, deserialize_with = "absent_or_null")]
    pub rail_type: i64,
}

/// `locationInfo` of the envelope: where the recording was made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationInfo {
    /// Inspection unit (depot, workshop) identifier.
    #[serde(rename = "unitId", default, deserialize_with = "absent_or_null")]
    pub unit_id: String,
    /// Station / track position label.
    #[serde(default, deserialize_with = "absent_or_null")]
    pub sty: String,
}

/// Everything about a recording that is the same for all of its frames.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recording {
    /// The car being inspected.
    #[serde(rename = "deviceInfo")]
    pub device: DeviceInfo,
    /// Where.
    #[serde(rename = "locationInfo", default, deserialize_with = "absent_or_null")]
    pub location: LocationInfo,
    /// The segment this recording belongs to; sequence numbers count per segment.
    #[serde(rename = "segmentId")]
    pub segment_id: String,
    /// The technician's notes.
    #[serde(rename = "inspectionInfo", default, deserialize_with = "absent_or_null")]
    pub inspection_info: String,
}

/// An optional field: `null` counts as absent (with `#[serde(default)]`): the type's default.
fn absent_or_null<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// Whether `c` may not stand in an identifier (carID, segmentId, unitId, sty): a control character (Unicode
/// category Cc: U+0000–U+001F, U+007F–U+009F, tab included) or a line or paragraph separator (U+2028, U+2029),
/// anything that would break a log line or a downstream tool's record.
pub fn refused_in_identifier(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Whether `c` may not stand in the notes (inspectionInfo): a control character other than tab, line feed and
/// carriage return (so notes may hold lines, typed on any system, and tabs).
pub fn refused_in_notes(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// A metadata field that breaks a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordingError {
    /// A field is longer than its limit.
    #[error("{field} is {len} bytes long; at most {max} bytes are accepted")]
    TooLong {
        /// JSON path of the field, e.g. `deviceInfo.carID`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field that must identify something is empty.
    #[error("{field} is empty; it must name the {what}")]
    Empty {
        /// JSON path of the field.
        field: &'static str,
        /// What it identifies, for the message.
        what: &'static str,
    },
    /// A field holds a control character (newline, NUL, ...), which would corrupt logs and downstream tools.
    #[error("{field} contains a control character; use printable text")]
    ControlCharacter {
        /// JSON path of the field.
        field: &'static str,
    },
}

impl Recording {
    /// Checks the limits a relay enforces on metadata from a client: identifiers are non-empty where they key
    /// something (carID, segmentId), at most [`MAX_ID_BYTES`], without control characters; notes at most
    /// [`MAX_NOTES_BYTES`] (lines and tabs allowed there); see [`refused_in_identifier`] and [`refused_in_notes`].
    ///
    /// # Errors
    ///
    /// The first field that breaks a rule, as a [`RecordingError`] naming it.
    pub fn validate(&self) -> Result<(), RecordingError> {
        check_id("deviceInfo.carID", &self.device.car_id, Some("rail car"))?;
        check_id("segmentId", &self.segment_id, Some("recording segment"))?;
        check_id("locationInfo.unitId", &self.location.unit_id, None)?;
        check_id("locationInfo.sty", &self.location.sty, None)?;
        let notes = &self.inspection_info;
        if notes.len() > MAX_NOTES_BYTES {
            return Err(RecordingError::TooLong { field: "inspectionInfo", len: notes.len(), max: MAX_NOTES_BYTES });
        }
        if notes.chars().any(refused_in_notes) {
            return Err(RecordingError::ControlCharacter { field: "inspectionInfo" });
        }
        Ok(())
    }
}

fn check_id(field: &'static str, value: &str, required: Option<&'static str>) -> Result<(), RecordingError> {
    if let Some(what) = required
        && value.is_empty()
    {
        return Err(RecordingError::Empty { field, what });
    }
    if value.len() > MAX_ID_BYTES {
        return Err(RecordingError::TooLong { field, len: value.len(), max: MAX_ID_BYTES });
    }
    if value.chars().any(refused_in_identifier) {
        return Err(RecordingError::ControlCharacter { field });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Recording {
        Recording {
            device: DeviceInfo { car_id: "CAR-1".into(), rail_type: 2 },
            location: LocationInfo { unit_id: "U1".into(), sty: "north".into() },
            segment_id: "seg-1".into(),
            inspection_info: "wheel 3\nflat spot".into(),
        }
    }

    #[test]
    fn valid_metadata_passes() {
        assert_eq!(sample().validate(), Ok(()));
    }

    #[test]
    fn empty_car_id_is_named() {
        let mut r = sample();
        r.device.car_id.clear();
        assert_eq!(r.validate(), Err(RecordingError::Empty { field: "deviceInfo.carID", what: "rail car" }));
    }

    #[test]
    fn megabyte_notes_are_refused_with_their_length() {
        let mut r = sample();
        r.inspection_info = "x".repeat(1 << 20);
        assert_eq!(
            r.validate(),
            Err(RecordingError::TooLong { field: "inspectionInfo", len: 1 << 20, max: MAX_NOTES_BYTES })
        );
    }

    #[test]
    fn what_counts_as_a_control_character_where() {
        for (c, in_id, in_notes) in [
            ('\t', true, false),
            ('\n', true, false),
            ('\r', true, false),
            ('\0', true, true),
            ('\u{7f}', true, true),
            ('\u{85}', true, true),
            ('\u{2028}', true, false),
            ('\u{2029}', true, false),
            (' ', false, false),
            ('车', false, false),
        ] {
            assert_eq!(refused_in_identifier(c), in_id, "{c:?} in an identifier");
            assert_eq!(refused_in_notes(c), in_notes, "{c:?} in the notes");
        }
        let mut r = sample();
        r.device.car_id = "CAR\u{2028}1".into();
        assert_eq!(r.validate(), Err(RecordingError::ControlCharacter { field: "deviceInfo.carID" }));
        r = sample();
        r.inspection_info = "line 1\r\nline 2\tend\u{2028}".into();
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn newline_in_identifier_is_refused() {
        let mut r = sample();
        r.location.sty = "a\nb".into();
        assert_eq!(r.validate(), Err(RecordingError::ControlCharacter { field: "locationInfo.sty" }));
    }
}
