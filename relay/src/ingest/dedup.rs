//! Recognising frames the relay already produced, so a recorder's resend after a lost ack is acked again
//! (with the record's original partition and offset) instead of landing twice.
//!
//! A bounded window per relay process: the last `dedup_window_frames` frames produced, keyed by car, segment and
//! sequence number; the oldest are forgotten first. What it guarantees, precisely:
//! - always at-least-once: a frame is acked only once Kafka has it;
//! - no duplicate when a recorder resends to the same relay process within the window (the usual case: a dropped
//!   connection and a reconnect);
//! - a duplicate is possible when the resend reaches another replica, or this process restarted in between, or
//!   the resend arrives while the first copy is still being produced.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::kafka::producer::Delivery;

/// `carID`, `segmentId` (joined with a NUL, which neither may contain) and the sequence number.
type Key = (Arc<str>, u32);

/// The window. A std Mutex: held for one map operation per frame, never across an await.
pub struct Dedup {
    capacity: usize,
    inner: Mutex<(HashMap<Key, Delivery>, VecDeque<Key>)>,
}

impl Dedup {
    /// A window of the last `capacity` produced frames (0 turns it off).
    pub fn new(capacity: usize) -> Self {
        Self { capacity, inner: Mutex::new((HashMap::new(), VecDeque::new())) }
    }

    /// The key of a segment, shared by all its frames.
    pub fn segment_key(car_id: &str, segment_id: &str) -> Arc<str> {
        Arc::from(format!("{car_id}\0{segment_id}"))
    }

    /// Where frame `seq` of `segment` landed, if this process produced it recently.
    pub fn lookup(&self, segment: &Arc<str>, seq: u32) -> Option<Delivery> {
        let inner = self.inner.lock().ok()?;
        inner.0.get(&(Arc::clone(segment), seq)).copied()
    }

    /// Kafka stored frame `seq` of `segment` at `delivery`.
    pub fn remember(&self, segment: &Arc<str>, seq: u32, delivery: Delivery) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else { return };
        let (map, order) = &mut *inner;
        let key = (Arc::clone(segment), seq);
        if map.insert(key.clone(), delivery).is_none() {
            order.push_back(key);
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
        let seg = Dedup::segment_key("CAR", "s");
        let at = |offset| Delivery { partition: 1, offset };
        d.remember(&seg, 0, at(10));
        d.remember(&seg, 1, at(11));
        assert_eq!(d.lookup(&seg, 0), Some(at(10)));
        d.remember(&seg, 2, at(12));
        assert_eq!(d.lookup(&seg, 0), None, "the oldest left the window");
        assert_eq!(d.lookup(&seg, 2), Some(at(12)));
        assert_eq!(d.lookup(&Dedup::segment_key("CAR", "other"), 2), None);
    }
}
