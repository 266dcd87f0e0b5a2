//! Recognising frames the relay already produced, so a recorder's resend after a lost ack is acked again
//! (with the record's original partition and offset) instead of landing twice.
//!
//! A bounded window per relay process: the last `dedup_window_frames` frames produced, keyed by car, segment and
//! sequence number; the oldest are forgotten first. What it guarantees, precisely:
//! - always at-least-once: a frame is acked only once Kafka has it;
//! - no duplicate when a recorder resends to the same relay process within the window (the usual case: a dropped
//!   connection and a reconnect);
//! - a duplicate is possible when the resend reaches another replica, or this process restarted in between, or
//!   the resend arrives while the first copy is still being produced; for the first two, a recorder that resumes
//!   (its hello names its last ack) has the frames already in Kafka found there and put in this window first
//!   ([`super::resume`]).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;

use crate::kafka::producer::Delivery;

/// A segment's key, made once per recording ([`Dedup::segment_key`]): two independent hashes of `carID` and
/// `segmentId` (joined with a NUL, which neither may contain) under the window's random keys. A frame costs no
/// hashing of strings, and the window's entries hold no pointer (no reference count to touch per frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentKey {
    hash: u64,
    /// Checked on every hit: two segments are taken for one only if both 64-bit keyed hashes agree (2^-128;
    /// without the window's keys, nobody can aim for it).
    check: u64,
}

impl SegmentKey {
    /// The map's key of frame `seq`: the segment's keyed hash with the sequence number mixed in (an odd
    /// multiplier, so distinct for every `seq` of one segment).
    fn slot(self, seq: u32) -> u64 {
        self.hash ^ u64::from(seq).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

/// A map keyed by [`SegmentKey::slot`], already a keyed hash: used as it is.
type Slots<V> = HashMap<u64, V, BuildHasherDefault<Premixed>>;

/// The hasher of [`Slots`]: the slot is the hash.
#[derive(Default)]
struct Premixed(u64);

impl Hasher for Premixed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in rather than lose it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Per slot: the segment, its frame's seq and where it landed; and the slots, oldest first.
type Window = (Slots<(SegmentKey, u32, Delivery)>, VecDeque<u64>);

/// The window. A std Mutex: held for one map operation per frame, never across an await.
pub struct Dedup {
    capacity: usize,
    keys: (RandomState, RandomState),
    inner: Mutex<Window>,
}

impl Dedup {
    /// A window of the last `capacity` produced frames (0 turns it off).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            keys: (RandomState::new(), RandomState::new()),
            inner: Mutex::new((Slots::default(), VecDeque::new())),
        }
    }

    /// The key of a segment, shared by all its frames.
    pub fn segment_key(&self, car_id: &str, segment_id: &str) -> SegmentKey {
        let text = format!("{car_id}\0{segment_id}");
        SegmentKey { hash: self.keys.0.hash_one(&text), check: self.keys.1.hash_one(&text) }
    }

    /// Where frame `seq` of `segment` landed, if this process produced it recently.
    pub fn lookup(&self, segment: SegmentKey, seq: u32) -> Option<Delivery> {
        let inner = self.inner.lock().ok()?;
        match inner.0.get(&segment.slot(seq)) {
            Some((s, n, delivery)) if *n == seq && *s == segment => Some(*delivery),
            _ => None,
        }
    }

    /// Kafka stored frame `seq` of `segment` at `delivery`.
    pub fn remember(&self, segment: SegmentKey, seq: u32, delivery: Delivery) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else { return };
        let (map, order) = &mut *inner;
        let slot = segment.slot(seq);
        // Two frames on one slot (another segment's, by a 2^-64 chance): the later one keeps it, the earlier is
        // forgotten early. Forgetting only risks a duplicate, never acking a frame Kafka does not have.
        if map.insert(slot, (segment, seq, delivery)).is_none() {
            order.push_back(slot);
        }
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_frames_are_found_until_they_leave_the_window() {
        let d = Dedup::new(2);
        let seg = d.segment_key("CAR", "s");
        let at = |offset| Delivery { partition: 1, offset };
        d.remember(seg, 0, at(10));
        d.remember(seg, 1, at(11));
        assert_eq!(d.lookup(seg, 0), Some(at(10)));
        d.remember(seg, 2, at(12));
        assert_eq!(d.lookup(seg, 0), None, "the oldest left the window");
        assert_eq!(d.lookup(seg, 2), Some(at(12)));
        assert_eq!(d.lookup(d.segment_key("CAR", "other"), 2), None);
        let again = d.segment_key("CAR", "s");
        assert_eq!(d.lookup(again, 2), Some(at(12)), "a reconnect's key (a new Arc) finds the same frames");
    }

    #[test]
    fn an_entry_on_the_same_slot_is_not_taken_for_another_segments_frame() {
        let d = Dedup::new(8);
        let a = d.segment_key("CAR", "a");
        // Another segment on a's slots (its first hash the same): what a collision of one hash would look like.
        let forged = SegmentKey { hash: a.hash, ..d.segment_key("CAR", "b") };
        d.remember(a, 3, Delivery { partition: 0, offset: 7 });
        assert_eq!(d.lookup(forged, 3), None);
        assert_eq!(d.lookup(a, 4), None);
        assert_eq!(d.lookup(a, 3), Some(Delivery { partition: 0, offset: 7 }));
    }
}
