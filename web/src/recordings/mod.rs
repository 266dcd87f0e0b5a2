//! Recordings, not frames: what reached Kafka, grouped by segment, as the technician thinks of it. Pure: no
//! browser API, tested natively.
//!
//! Where it sits: the last hop back. The feed socket (`crate::recordings::subscription`) subscribes without PCM and hands each record
//! here; a recording's row shows its car, start, length, frames, missing frames (sequence gaps), where it is in
//! Kafka and its state. Its audio is fetched only when it is played or downloaded (a bounded read of its offsets,
//! `fetch.rs`), then assembled here by sequence number ([`wav`]) with silence where frames are missing.
//!
//! ```text
//!  feed record (segmentId, seq, partition, offset, duration) ─► Recordings::add ─► rows (newest first)
//!  Play / Download ─► fetch [first, last] of its partition ─► assemble by seq ─► player / WAV file
//! ```

pub mod fetch;
pub mod spectrogram;
pub mod subscription;
pub mod view;
pub mod wav;

use std::collections::BTreeMap;

/// A recording whose newest frame is younger than this is still being recorded.
pub const LIVE_MS: f64 = 3_000.0;
/// Recordings kept in the list (the oldest go first).
pub const MAX_RECORDINGS: usize = 100;

/// One frame of a recording, as the list knows it (no audio).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    /// Sequence number in the segment.
    pub seq: u32,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// The device's capture time of its first sample, ms since the epoch.
    pub capture_ms: i64,
    /// Its length in ms.
    pub duration_ms: u32,
}

/// What a recording's row says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Frames are still arriving.
    Recording,
    /// Every frame from the first to the last is there.
    Complete,
    /// This many frames between the first and the last are not in Kafka.
    Missing(u32),
}

/// One recording (segment) as it reached Kafka. Its memory does not grow with its length: frames are kept as
/// runs of consecutive sequence numbers, so an hour of one car's frames is one run, and only holes add more.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    /// Its segment.
    pub segment_id: String,
    /// Its car.
    pub car_id: String,
    /// Runs of consecutive frames: first seq -> (last seq, their audio in ms).
    runs: BTreeMap<u32, (u32, u64)>,
    /// Frames per length in ms (the most common is the recording's frame length).
    lengths: BTreeMap<u32, u64>,
    /// Its first frame's capture time (the lowest seq seen).
    first: Option<(u32, i64)>,
    /// Its partition, and the lowest and highest offset of its frames there.
    kafka: Option<(i32, i64, i64)>,
    /// Analysis results that name this recording, newest last (their text, as shown; the last few).
    pub results: Vec<String>,
    /// When its newest frame arrived (the page's clock, ms).
    pub seen_ms: f64,
}

/// Results kept per recording.
pub const MAX_RESULTS: usize = 5;

impl Recording {
    fn new(segment_id: &str, car_id: &str, now_ms: f64) -> Self {
        Self {
            segment_id: segment_id.to_owned(),
            car_id: car_id.to_owned(),
            runs: BTreeMap::new(),
            lengths: BTreeMap::new(),
            first: None,
            kafka: None,
            results: Vec::new(),
            seen_ms: now_ms,
        }
    }

    /// Whether frame `seq` is here.
    pub fn has(&self, seq: u32) -> bool {
        self.runs.range(..=seq).next_back().is_some_and(|(_, &(last, _))| seq <= last)
    }

    /// Adds a frame; a frame already here (produced twice) changes nothing. Returns whether it was new.
    fn add(&mut self, f: FrameRef) -> bool {
        if self.has(f.seq) {
            return false;
        }
        let ms = u64::from(f.duration_ms);
        // Joins the run ending just before it, and the run starting just after it.
        let before = self.runs.range(..f.seq).next_back().filter(|(_, (last, _))| last + 1 == f.seq).map(|(&k, _)| k);
        let after = f.seq.checked_add(1).and_then(|n| self.runs.remove(&n).map(|run| (n, run)));
        let (start, mut last, mut total) = match before {
            Some(k) => {
                let (l, t) = self.runs[&k];
                (k, l, t)
            }
            None => (f.seq, f.seq, 0),
        };
        last = last.max(f.seq);
        total += ms;
        if let Some((_, (l, t))) = after {
            last = l;
            total += t;
        }
        self.runs.insert(start, (last, total));
        *self.lengths.entry(f.duration_ms).or_default() += 1;
        if self.first.is_none_or(|(seq, _)| f.seq < seq) {
            self.first = Some((f.seq, f.capture_ms));
        }
        self.kafka = match self.kafka {
            None => Some((f.partition, f.offset, f.offset)),
            Some((p, lo, hi)) if p == f.partition => Some((p, lo.min(f.offset), hi.max(f.offset))),
            keep => keep,
        };
        true
    }

    /// When it started: the capture time of its first frame.
    pub fn start_ms(&self) -> i64 {
        self.first.map_or(0, |(_, ms)| ms)
    }

    /// Audio in Kafka, ms.
    pub fn duration_ms(&self) -> u64 {
        self.runs.values().map(|(_, ms)| ms).sum()
    }

    /// Frames in Kafka.
    pub fn frames(&self) -> u64 {
        self.runs.iter().map(|(first, (last, _))| u64::from(last - first) + 1).sum()
    }

    /// Sequence numbers missing between 0 and the last frame, as inclusive ranges.
    pub fn missing_ranges(&self) -> Vec<(u32, u32)> {
        let mut next = 0u32;
        let mut holes = Vec::new();
        for (&first, &(last, _)) in &self.runs {
            if first > next {
                holes.push((next, first - 1));
            }
            next = last.saturating_add(1);
        }
        holes
    }

    /// How many frames are missing between 0 and the last frame.
    pub fn missing(&self) -> u64 {
        self.missing_ranges().iter().map(|(a, b)| u64::from(b - a) + 1).sum()
    }

    /// Where it is in Kafka: its partition and first and last offset (a car's records share one partition).
    pub fn kafka(&self) -> Option<(i32, i64, i64)> {
        self.kafka
    }

    /// The length of its full frames, ms (the most common; what a missing frame is assumed to have been).
    pub fn frame_ms(&self) -> u32 {
        self.lengths.iter().max_by_key(|&(&ms, &n)| (n, ms)).map_or(200, |(&ms, _)| ms)
    }

    /// Its state at `now_ms` (the page's clock). While frames still arrive, a gap may be a resend on its way:
    /// the row says recording until they stop.
    pub fn state(&self, now_ms: f64) -> State {
        if now_ms - self.seen_ms < LIVE_MS {
            return State::Recording;
        }
        match self.missing() {
            0 => State::Complete,
            n => State::Missing(n.min(u64::from(u32::MAX)) as u32),
        }
    }
}

/// Results kept for recordings not (yet) listed: a result can arrive before its recording's frames.
pub const MAX_UNMATCHED: usize = 200;

/// The recordings the page lists.
#[derive(Debug, Default)]
pub struct Recordings {
    by_segment: BTreeMap<String, Recording>,
    /// Results whose recording is not listed (yet), oldest first: `(segment, text)`.
    unmatched: std::collections::VecDeque<(String, String)>,
}

impl Recordings {
    /// A frame of `segment_id` by `car_id` reached Kafka (seen by the page at `now_ms`).
    pub fn add(&mut self, segment_id: &str, car_id: &str, frame: FrameRef, now_ms: f64) {
        if !self.by_segment.contains_key(segment_id) {
            let mut r = Recording::new(segment_id, car_id, now_ms);
            // Results that came before the recording's first frame.
            let (mine, rest): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.unmatched).into_iter().partition(|(s, _)| s == segment_id);
            self.unmatched = rest.into();
            r.results = mine.into_iter().map(|(_, text)| text).collect();
            let skip = r.results.len().saturating_sub(MAX_RESULTS);
            r.results.drain(..skip);
            self.by_segment.insert(segment_id.to_owned(), r);
        }
        let Some(r) = self.by_segment.get_mut(segment_id) else { return };
        if r.add(frame) {
            r.seen_ms = now_ms;
        }
        while self.by_segment.len() > MAX_RECORDINGS {
            let oldest = self.by_segment.values().min_by_key(|r| r.start_ms()).map(|r| r.segment_id.clone());
            if let Some(k) = oldest {
                self.by_segment.remove(&k);
            }
        }
    }

    /// An analysis result naming `segment_id`: shown on that recording; kept for it (the last
    /// [`MAX_UNMATCHED`] such) if its frames have not arrived yet. Returns whether the recording is listed.
    pub fn add_result(&mut self, segment_id: &str, text: String) -> bool {
        match self.by_segment.get_mut(segment_id) {
            Some(r) => {
                r.results.push(text);
                if r.results.len() > MAX_RESULTS {
                    r.results.remove(0);
                }
                true
            }
            None => {
                self.unmatched.push_back((segment_id.to_owned(), text));
                if self.unmatched.len() > MAX_UNMATCHED {
                    self.unmatched.pop_front();
                }
                false
            }
        }
    }

    /// A recording by its segment.
    pub fn get(&self, segment_id: &str) -> Option<&Recording> {
        self.by_segment.get(segment_id)
    }

    /// Every recording, newest first.
    pub fn newest_first(&self) -> Vec<&Recording> {
        let mut v: Vec<&Recording> = self.by_segment.values().collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.start_ms()));
        v
    }

    /// Recordings grouped by car (the supervisor view), cars in name order, each newest first.
    pub fn by_car(&self) -> BTreeMap<&str, Vec<&Recording>> {
        let mut cars: BTreeMap<&str, Vec<&Recording>> = BTreeMap::new();
        for r in self.newest_first() {
            cars.entry(r.car_id.as_str()).or_default().push(r);
        }
        cars
    }

    /// Forgets everything (a new subscription starts over).
    pub fn clear(&mut self) {
        self.by_segment.clear();
        self.unmatched.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u32, offset: i64) -> FrameRef {
        FrameRef { seq, partition: 2, offset, capture_ms: 1_000 + i64::from(seq) * 200, duration_ms: 200 }
    }

    #[test]
    fn frames_become_one_recording_with_its_length_place_and_state() {
        let mut all = Recordings::default();
        for (i, seq) in [0, 1, 2, 3, 4, 2].into_iter().enumerate() {
            all.add("seg-1", "CAR-1", frame(seq, 10 + i as i64 * 3), 100.0 * i as f64);
        }
        let r = all.get("seg-1").expect("listed");
        assert_eq!((r.frames(), r.duration_ms(), r.start_ms()), (5, 1_000, 1_000), "a duplicate counts once");
        assert_eq!(r.kafka(), Some((2, 10, 22)));
        assert_eq!(r.state(600.0), State::Recording);
        assert_eq!(r.state(600.0 + LIVE_MS), State::Complete);
        assert_eq!(r.missing(), 0);
        assert_eq!(r.runs.len(), 1, "one run of five frames");
    }

    #[test]
    fn a_sequence_hole_is_counted_once_frames_stop_arriving() {
        let mut all = Recordings::default();
        for seq in [0, 1, 3, 4] {
            all.add("seg-2", "CAR-1", frame(seq, i64::from(seq)), 0.0);
        }
        let r = all.get("seg-2").expect("listed");
        assert_eq!(r.missing_ranges(), [(2, 2)]);
        assert_eq!(r.state(10.0), State::Recording, "a gap may still be filled by a resend");
        assert_eq!(r.state(LIVE_MS + 1.0), State::Missing(1));
        assert_eq!(r.duration_ms(), 800);
    }

    #[test]
    fn frames_out_of_order_join_into_runs_and_an_hour_is_one_run() {
        let mut all = Recordings::default();
        for seq in [5, 3, 4, 0, 2, 1] {
            all.add("s", "C", frame(seq, i64::from(seq)), 0.0);
        }
        let r = all.get("s").expect("listed");
        assert_eq!((r.runs.len(), r.frames(), r.missing(), r.start_ms()), (1, 6, 0, 1_000));
        for seq in 6..18_000 {
            all.add("s", "C", frame(seq, i64::from(seq)), 0.0);
        }
        let r = all.get("s").expect("listed");
        assert_eq!((r.runs.len(), r.frames(), r.duration_ms()), (1, 18_000, 3_600_000), "an hour of frames: one run");
        assert_eq!(r.kafka(), Some((2, 0, 17_999)));
        all.add("s", "C", frame(18_005, 20_000), 0.0);
        assert_eq!(all.get("s").map(Recording::missing_ranges), Some(vec![(18_000, 18_004)]));
    }

    #[test]
    fn newest_first_grouped_by_car_and_bounded() {
        let mut all = Recordings::default();
        for i in 0..(MAX_RECORDINGS + 5) {
            let f = FrameRef { capture_ms: i as i64 * 10_000, ..frame(0, i as i64) };
            all.add(&format!("seg-{i:03}"), if i % 2 == 0 { "CAR-A" } else { "CAR-B" }, f, 0.0);
        }
        let rows = all.newest_first();
        assert_eq!(rows.len(), MAX_RECORDINGS);
        assert_eq!(rows[0].segment_id, format!("seg-{:03}", MAX_RECORDINGS + 4));
        assert!(all.get("seg-004").is_none() && all.get("seg-005").is_some(), "the oldest went first");
        let cars = all.by_car();
        assert_eq!(cars.keys().copied().collect::<Vec<_>>(), ["CAR-A", "CAR-B"]);
        assert!(all.add_result("seg-010", "bearing ok".into()) && !all.add_result("later", "early result".into()));
        all.add("later", "CAR-A", FrameRef { capture_ms: i64::MAX / 2, ..frame(0, 0) }, 0.0);
        let early = all.get("later").map(|r| r.results.clone());
        assert_eq!(early, Some(vec!["early result".to_owned()]), "a result that came before its frames");
    }
}
