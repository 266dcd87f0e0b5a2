//! A recording that comes back (a reconnect, often to another relay behind the load balancer) after some of its
//! frames were stored in Kafka without their acks reaching the recorder: those are found in Kafka and acked
//! again, not produced twice.
//!
//! The hello of a reconnecting recorder says where its last acked frame landed ([`Resume`]). Whatever of the
//! segment was stored after it sits on the same partition (a recording's frames share one, and the resumed route
//! stays there), so the relay reads that partition from there to its end, at most [`MAX_BYTES`] within
//! [`DEADLINE`] (the partition's traffic of the seconds since that ack, never the topic), and puts each of the
//! segment's frames it finds in the dedup window, where the resends that follow the `ready` find them.
//!
//! What remains possible (RELIABILITY.md): a frame that the old relay's request still carries and that Kafka
//! stores after this read (its window is that request's time in flight, at most `kafka_request_timeout_s`), and
//! frames stored beyond the read's limits.

use std::time::Duration;

use soundline_shared::control::Resume;

use crate::ingest::dedup::SegmentKey;
use crate::kafka::consumer::read_to_end;
use crate::kafka::producer::Delivery;
use crate::state::AppState;

/// Most record bytes one resume reads.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;
/// Longest one resume reads before the relay answers `ready` anyway.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// What a resume found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Found {
    /// Frames of the segment already in Kafka after the resume point (now in the dedup window).
    pub frames: usize,
    /// Whether the read reached the partition's end (else it stopped at a limit, and later frames may be
    /// produced twice).
    pub complete: bool,
}

/// Finds the frames of `car`'s `segment` stored on `resume.partition` after `resume.offset` and remembers them
/// under `key` in the dedup window.
///
/// # Errors
///
/// Kafka failed or was late; the recording goes on without (duplicates possible), so the caller only logs it.
pub async fn find_stored(
    state: &AppState,
    resume: Resume,
    car: &str,
    segment: &str,
    key: SegmentKey,
) -> Result<Found, String> {
    let cluster = state.fanout().cluster().await.map_err(|e| e.to_string())?;
    let mut part = cluster.partition(&state.config().kafka.topic, resume.partition);
    let mut found = Found::default();
    let read = read_to_end(&mut part, resume.offset.saturating_add(1), MAX_BYTES, |offset, record| {
        if record.key.as_deref() != Some(car.as_bytes())
            || record.headers.get("segmentId").map(Vec::as_slice) != Some(segment.as_bytes())
        {
            return;
        }
        let Some(seq) = record.headers.get("seq").and_then(|s| std::str::from_utf8(s).ok()?.parse::<u32>().ok()) else {
            return;
        };
        // The first copy wins: a resend acked again names the record the first relay stored.
        if state.dedup().lookup(key, seq).is_none() {
            state.dedup().remember(key, seq, Delivery { partition: resume.partition, offset });
            found.frames += 1;
        }
    });
    let outcome = tokio::time::timeout(DEADLINE, read).await;
    match outcome {
        Ok(Ok(complete)) => Ok(Found { complete, ..found }),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Ok(Found { complete: false, ..found }),
    }
}
