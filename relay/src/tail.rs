//! `soundline-relay tail`: the command-line consumer, successor of the old consumer script.
//!
//! Reads the configured topic (same configuration as `serve`) from `--from earliest|latest|<ms>` and prints one
//! line per record, `topic:partition:offset: key=... value=...`, as the old script did. The value is summarised
//! (device, segment, time, duration, PCM bytes for an envelope); `--full` prints it whole, `--json` prints one JSON
//! object per record instead. `--car` and `--segment` filter envelopes. It stops after `--count N` records or on
//! Ctrl+C. Records of one partition print in offset order; partitions interleave as they arrive. Partitions the
//! topic gains while it runs are read too, from their beginning.

use std::io::Write;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{TimeZone, Utc};
use soundline_shared::feed::FeedValue;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::kafka::consumer::{Consumed, follow_topic, partitions};
use crate::kafka::{Cluster, KafkaError, Position};

/// How to print a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `topic:partition:offset: key=... value=<summary>`.
    Summary,
    /// `topic:partition:offset: key=... value=<the whole value>`.
    Full,
    /// One JSON object per line.
    Json,
}

/// What to read and print.
#[derive(Debug, Clone)]
pub struct Options {
    /// Topic (default: the configured audio topic).
    pub topic: String,
    /// Position position.
    pub start: Position,
    /// Only envelopes of this carID.
    pub car: Option<String>,
    /// Only envelopes of this segmentId.
    pub segment: Option<String>,
    /// Output format.
    pub format: Format,
    /// Stop after this many printed records.
    pub count: Option<u64>,
}

/// Parses `--from`: `earliest`, `latest`, or ms since the epoch.
pub fn parse_start(s: &str) -> Option<Position> {
    match s {
        "earliest" => Some(Position::Earliest),
        "latest" => Some(Position::Latest),
        ms => ms.parse().ok().filter(|v: &i64| *v >= 0).map(Position::TimestampMs),
    }
}

/// Whether the record passes the filters.
pub fn matches(value: &FeedValue, car: Option<&str>, segment: Option<&str>) -> bool {
    if car.is_none() && segment.is_none() {
        return true;
    }
    match value {
        FeedValue::Envelope(env) => {
            car.is_none_or(|c| env.recording.device.car_id == c)
                && segment.is_none_or(|s| env.recording.segment_id == s)
        }
        _ => false,
    }
}

fn rfc3339_ms(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map_or_else(|| format!("{ms}ms"), |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

/// The line (without newline) printed for `c` in `format`.
pub fn format_record(c: &Consumed, value: &FeedValue, format: Format) -> String {
    let key = c.record.key.as_deref().map(String::from_utf8_lossy);
    let raw = c.record.value.as_deref().unwrap_or_default();
    if format == Format::Json {
        let value_json = match value {
            FeedValue::Opaque(bytes) => serde_json::Value::String(BASE64.encode(bytes)),
            // Envelopes are printed as they are in Kafka, so tools downstream see the original document.
            FeedValue::Envelope(_) | FeedValue::Json(_) => {
                serde_json::from_slice(raw).unwrap_or(serde_json::Value::Null)
            }
        };
        let line = serde_json::json!({
            "topic": &*c.topic,
            "partition": c.partition,
            "offset": c.offset,
            "timestampMs": c.record.timestamp.timestamp_millis(),
            "key": key,
            "kind": value.kind(),
            "value": value_json,
        });
        return line.to_string();
    }
    let shown = match (format, value) {
        (Format::Full, FeedValue::Opaque(bytes)) => format!("base64:{}", BASE64.encode(bytes)),
        (Format::Full, _) => String::from_utf8_lossy(raw).into_owned(),
        (_, FeedValue::Envelope(env)) => format!(
            "car={} segment={} time={} duration={}ms bytes={}",
            env.recording.device.car_id,
            env.recording.segment_id,
            rfc3339_ms(env.collect_timestamp_ms),
            env.origin.duration_ms(),
            env.origin.pcm_le.len()
        ),
        (_, FeedValue::Json(json)) => {
            let text = json.to_string();
            match text.char_indices().nth(200) {
                Some((cut, _)) => format!("json {}…", &text[..cut]),
                None => format!("json {text}"),
            }
        }
        (_, FeedValue::Opaque(bytes)) => format!("opaque {} bytes", bytes.len()),
    };
    format!("{}:{}:{}: key={} value={shown}", c.topic, c.partition, c.offset, key.as_deref().unwrap_or("null"))
}

/// Prints records to `out` until `count` records were printed or `stop` completes; returns how many were printed.
///
/// # Errors
///
/// Kafka unreachable or the topic missing; a failed write to `out` ends the run quietly (a closed pipe).
pub async fn run(
    config: &Config,
    options: &Options,
    mut out: impl Write,
    stop: impl std::future::Future<Output = ()>,
) -> Result<u64, KafkaError> {
    let cluster = Cluster::connect(&config.kafka).await?;
    let n = partitions(&cluster, &options.topic).await?;
    let (tx, mut rx) = mpsc::channel(1024);
    follow_topic(cluster, &options.topic, n, options.start, tx);
    let mut printed = 0;
    tokio::pin!(stop);
    while options.count.is_none_or(|c| printed < c) {
        let consumed = tokio::select! {
            c = rx.recv() => match c { Some(c) => c, None => break },
            () = &mut stop => break,
        };
        let value = FeedValue::classify(consumed.record.value.as_deref().unwrap_or_default(), &config.stamp.sys_tag);
        if !matches(&value, options.car.as_deref(), options.segment.as_deref()) {
            continue;
        }
        if writeln!(out, "{}", format_record(&consumed, &value, options.format)).and_then(|()| out.flush()).is_err() {
            break;
        }
        printed += 1;
    }
    Ok(printed)
}
