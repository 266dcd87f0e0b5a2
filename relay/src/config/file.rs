//! The JSON config file: the existing uploader's format, kept as operators have it, plus a `relay` object.
//!
//! ```json
//! {"isDebug": false, "version": "2.3.1",
//!  "kafka": {"urls": [{"host": "kafka-1", "port": 9092}], "weight_topic": "aicp_sound", "uname": "..",
//!            "upassword": "..", "communication_protocol": "1.0", "security_protocol": "SASL_PLAINTEXT",
//!            "sasl_mechanism": "PLAIN"},
//!  "relay": {"listen": "0.0.0.0:8080", "linger_ms": 5}}
//! ```
//!
//! The uploader's keys map to the settings in [`LEGACY`]; every other setting is `relay.<key>` (the field names of
//! [`super::settings::Settings`] and [`super::settings::Secrets`]). Other top-level and `kafka` keys are the
//! uploader's own (`version`) and are ignored; an unknown key in `relay` is an error, since it can only be a typo.
//! Each value is checked where it is used, so that an error names its key ([`super::ConfigError`]).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{ConfigError, err};

/// The uploader's keys: (setting, key in the file).
pub const LEGACY: [(&str, &str); 8] = [
    ("debug", "isDebug"),
    ("brokers", "kafka.urls"),
    ("topic", "kafka.weight_topic"),
    ("username", "kafka.uname"),
    ("password", "kafka.upassword"),
    ("ver", "kafka.communication_protocol"),
    ("security_protocol", "kafka.security_protocol"),
    ("sasl_mechanism", "kafka.sasl_mechanism"),
];

/// Where the file holds `key`.
pub fn key_of(key: &str) -> String {
    LEGACY.iter().find(|(k, _)| *k == key).map_or_else(|| format!("relay.{key}"), |(_, file)| (*file).to_owned())
}

/// The file, as the uploader writes it.
#[derive(Debug, Default, Deserialize)]
pub struct UploaderFile {
    /// Debug logging.
    #[serde(rename = "isDebug")]
    pub is_debug: Option<Value>,
    /// The uploader's Kafka section.
    pub kafka: Option<KafkaSection>,
    /// The relay's own settings, by key.
    pub relay: Option<Map<String, Value>>,
}

/// `kafka` in the uploader's file.
#[derive(Debug, Default, Deserialize)]
pub struct KafkaSection {
    /// `[{"host": .., "port": ..}]`.
    pub urls: Option<Value>,
    /// The topic.
    pub weight_topic: Option<Value>,
    /// SASL user name.
    pub uname: Option<Value>,
    /// SASL password.
    pub upassword: Option<Value>,
    /// The envelope's `ver`.
    pub communication_protocol: Option<Value>,
    /// PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL.
    pub security_protocol: Option<Value>,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    pub sasl_mechanism: Option<Value>,
}

impl UploaderFile {
    /// Parses the file's text.
    ///
    /// # Errors
    ///
    /// Not JSON, not an object, or a section of the wrong JSON type.
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| err(format!("config file {path}"), format!("not valid JSON: {e}")))?;
        if !root.is_object() {
            return Err(err(format!("config file {path}"), "must be a JSON object"));
        }
        for section in ["kafka", "relay"] {
            if root.get(section).is_some_and(|v| !v.is_object() && !v.is_null()) {
                return Err(err(format!("config file {path}: key {section}"), "must be an object"));
            }
        }
        serde_json::from_value(root).map_err(|e| err(format!("config file {path}"), e.to_string()))
    }

    /// Every setting the file gives, as (setting key, origin, text), with the uploader's broker list written as
    /// `host:port,...`.
    ///
    /// # Errors
    ///
    /// A value of the wrong JSON type, or an unknown key in `relay`.
    pub fn values(self, path: &str, known: &[&str]) -> Result<Vec<(String, String, String)>, ConfigError> {
        let origin = |file_key: &str| format!("config file {path}: key {file_key}");
        let kafka = self.kafka.unwrap_or_default();
        let legacy = [
            ("debug", self.is_debug),
            ("brokers", kafka.urls),
            ("topic", kafka.weight_topic),
            ("username", kafka.uname),
            ("password", kafka.upassword),
            ("ver", kafka.communication_protocol),
            ("security_protocol", kafka.security_protocol),
            ("sasl_mechanism", kafka.sasl_mechanism),
        ];
        let mut out = Vec::new();
        for (key, value) in legacy {
            let Some(value) = value else { continue };
            let origin = origin(&key_of(key));
            let text = if key == "brokers" { urls_to_text(&origin, &value)? } else { scalar_text(&origin, &value)? };
            if let Some(text) = text {
                out.push((key.to_owned(), origin, text));
            }
        }
        for (key, value) in self.relay.unwrap_or_default() {
            let origin = origin(&format!("relay.{key}"));
            if !known.contains(&key.as_str()) || LEGACY.iter().any(|(k, _)| *k == key) {
                return Err(err(origin, "is not a relay setting (see the README's configuration table)"));
            }
            if let Some(text) = scalar_text(&origin, &value)? {
                out.push((key, origin, text));
            }
        }
        Ok(out)
    }
}

fn scalar_text(origin: &str, value: &Value) -> Result<Option<String>, ConfigError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Array(_) | Value::Object(_) => Err(err(origin, "expected a string, number or boolean")),
    }
}

fn urls_to_text(origin: &str, value: &Value) -> Result<Option<String>, ConfigError> {
    let Some(items) = value.as_array() else {
        return Err(err(origin, "expected a list like [{\"host\":\"kafka-1\",\"port\":9092}]"));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let host = item.get("host").and_then(Value::as_str).filter(|h| !h.is_empty());
        let port = item.get("port").and_then(|p| p.as_u64().or_else(|| p.as_str().and_then(|s| s.parse().ok())));
        match (host, port) {
            (Some(h), Some(p)) if (1..=65_535).contains(&p) => out.push(format!("{h}:{p}")),
            _ => return Err(err(format!("{origin}[{i}]"), "expected {\"host\": \"name\", \"port\": 1-65535}")),
        }
    }
    if out.is_empty() {
        return Err(err(origin, "lists no broker"));
    }
    Ok(Some(out.join(",")))
}
