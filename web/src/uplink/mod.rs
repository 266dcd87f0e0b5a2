//! The uplink's memory: which frames of a recording are in flight, which wait in the outbox, and when to try the
//! relay again.
//!
//! Where it sits: the page saves each frame in the outbox ([`crate::outbox`], IndexedDB) and then hands it here;
//! the socket glue (`uplink/socket.rs`, browser only) sends what is in flight, keeps it until the relay acks it
//! with its Kafka offset, and after a dropped connection reconnects (backoff with jitter, from [`Backoff`]) and
//! resends everything in flight with its original sequence number, while recording goes on. This part is pure and
//! tested natively.
//!
//! Memory holds only a window of frames in flight (by default one minute of audio, [`WINDOW_BYTES`]). When the
//! relay is away longer, new frames stay only in the outbox ("spilled") and are read back from it, in order, as
//! acks make room: a long outage costs disk, not memory, and nothing is dropped.

use std::collections::VecDeque;

pub mod recover;
pub mod socket;

/// Bytes of 16 kHz 16-bit mono audio per minute, plus frame headers at 200 ms frames.
pub const BYTES_PER_MINUTE: usize = 16_000 * 2 * 60 + 300 * soundline_shared::frame::HEADER_LEN;
/// Frames in flight: one minute of audio.
pub const WINDOW_BYTES: usize = BYTES_PER_MINUTE;
/// Most frames read back from the outbox at once.
pub const LOAD_BATCH: u32 = 50;

struct Unacked {
    seq: u32,
    duration_ms: u32,
    encoded: Vec<u8>,
}

/// Frames in flight (sent, or waiting to be sent) and not yet acked, oldest first.
pub struct ResendBuffer {
    frames: VecDeque<Unacked>,
    bytes: usize,
    max_bytes: usize,
}

impl ResendBuffer {
    /// An empty buffer with room for `max_bytes` of encoded frames.
    pub fn new(max_bytes: usize) -> Self {
        Self { frames: VecDeque::new(), bytes: 0, max_bytes }
    }

    /// Keeps an encoded frame until [`ResendBuffer::ack`]. Never drops one: [`ResendBuffer::has_room`] says whether
    /// more should come.
    pub fn push(&mut self, seq: u32, duration_ms: u32, encoded: Vec<u8>) {
        self.bytes += encoded.len();
        self.frames.push_back(Unacked { seq, duration_ms, encoded });
    }

    /// Whether the buffer holds less than its size.
    pub fn has_room(&self) -> bool {
        self.bytes < self.max_bytes
    }

    /// Bytes free before the buffer is at its size.
    pub fn room_bytes(&self) -> usize {
        self.max_bytes.saturating_sub(self.bytes)
    }

    /// The relay acked `seq`: forget it. Returns whether it was here (a repeated ack is harmless).
    pub fn ack(&mut self, seq: u32) -> bool {
        // Acks arrive in frame order, so this is nearly always the front.
        match self.frames.iter().position(|f| f.seq == seq) {
            Some(i) => {
                if let Some(f) = self.frames.remove(i) {
                    self.bytes -= f.encoded.len();
                }
                true
            }
            None => false,
        }
    }

    /// The encoded frames to resend after a reconnect, oldest first.
    pub fn unacked(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.frames.iter().map(|f| (f.seq, f.encoded.as_slice()))
    }

    /// The newest frame's encoding.
    pub fn last(&self) -> Option<&[u8]> {
        self.frames.back().map(|f| f.encoded.as_slice())
    }

    /// Frames waiting for an ack.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether every frame was acked.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Audio waiting for an ack, in ms.
    pub fn pending_ms(&self) -> u64 {
        self.frames.iter().map(|f| u64::from(f.duration_ms)).sum()
    }
}

/// Where every frame of one recording is, from the moment it is saved until it is acked: in flight (memory,
/// [`ResendBuffer`]) or only in the outbox (`spilled`, read back later). Frames go to the relay in sequence order,
/// each connection's frames consecutive, as the protocol wants.
pub struct Flow {
    window: ResendBuffer,
    /// The first frame that is only in the outbox; every saved frame from it on is only there.
    spilled_from: Option<u32>,
    /// Frames saved but not yet acked: in the window or spilled.
    waiting: u64,
    /// Their audio, ms.
    waiting_ms: u64,
    /// Frames acked.
    acked: u64,
    /// No frame will be added: the recording stopped (or is an earlier page's, all in the outbox).
    finished: bool,
    /// Acked frames not yet deleted from the outbox.
    to_delete: Vec<u32>,
    /// Frames only in memory (they could not be saved) that wait behind spilled ones.
    tail: VecDeque<Unacked>,
}

impl Flow {
    /// A recording that is starting: nothing saved yet.
    pub fn new(window_bytes: usize) -> Self {
        Self {
            window: ResendBuffer::new(window_bytes),
            spilled_from: None,
            waiting: 0,
            waiting_ms: 0,
            acked: 0,
            finished: false,
            to_delete: Vec::new(),
            tail: VecDeque::new(),
        }
    }

    /// A recording an earlier page left in the outbox: `frames` frames (`duration_ms` of audio) from `first_seq`
    /// on, all read back from there.
    pub fn recovered(window_bytes: usize, first_seq: Option<u32>, frames: u32, duration_ms: u64) -> Self {
        let mut f = Self::new(window_bytes);
        f.spilled_from = first_seq;
        f.waiting = u64::from(frames);
        f.waiting_ms = duration_ms;
        f.finished = true;
        f
    }

    /// A frame is saved in the outbox: returns whether it is in flight now (to send at once if connected), or
    /// stays in the outbox until the window has room.
    pub fn saved(&mut self, seq: u32, duration_ms: u32, encoded: Vec<u8>) -> bool {
        self.waiting += 1;
        self.waiting_ms += u64::from(duration_ms);
        if !self.tail.is_empty() {
            // Behind frames that only memory holds: this one waits there too, to keep the order.
            self.tail.push_back(Unacked { seq, duration_ms, encoded });
            false
        } else if self.spilled_from.is_none() && self.window.has_room() {
            self.window.push(seq, duration_ms, encoded);
            true
        } else {
            self.spilled_from.get_or_insert(seq);
            false
        }
    }

    /// A frame that could not be saved (the outbox failed): kept in memory whatever the window holds, since
    /// memory is now its only copy; behind any frames still in the outbox. Returns whether to send it now.
    pub fn unsaved(&mut self, seq: u32, duration_ms: u32, encoded: Vec<u8>) -> bool {
        self.waiting += 1;
        self.waiting_ms += u64::from(duration_ms);
        if self.spilled_from.is_none() && self.tail.is_empty() {
            self.window.push(seq, duration_ms, encoded);
            true
        } else {
            self.tail.push_back(Unacked { seq, duration_ms, encoded });
            false
        }
    }

    /// What to read back from the outbox now: from which seq, how many frames at most.
    pub fn to_load(&self, frame_bytes: usize) -> Option<(u32, u32)> {
        let from = self.spilled_from?;
        let room = (self.window.room_bytes() / frame_bytes.max(1)) as u32;
        (room > 0).then_some((from, room.min(LOAD_BATCH)))
    }

    /// Frames read back from the outbox (asked for by [`Flow::to_load`], in order): they are in flight now.
    /// Returns their seqs (and those of memory-only frames that may follow now), to send in this order. `asked`
    /// is the `max` of [`Flow::to_load`]: fewer frames than that means the outbox holds no more.
    pub fn loaded(&mut self, frames: Vec<(u32, u32, Vec<u8>)>, asked: u32) -> Vec<u32> {
        let Some(from) = self.spilled_from else { return Vec::new() };
        let mut seqs = Vec::with_capacity(frames.len());
        let got = frames.len() as u32;
        for (seq, duration_ms, encoded) in frames {
            // Every frame in flight is older than `from`: anything below it is already there.
            if seq < from {
                continue;
            }
            self.window.push(seq, duration_ms, encoded);
            self.spilled_from = Some(seq + 1);
            seqs.push(seq);
        }
        // Fewer than asked: the outbox has nothing more; frames only memory holds come next.
        if got < asked {
            self.spilled_from = None;
            while let Some(f) = self.tail.pop_front() {
                seqs.push(f.seq);
                self.window.frames.push_back(f);
            }
            self.window.bytes = self.window.frames.iter().map(|f| f.encoded.len()).sum();
        }
        seqs
    }

    /// The relay acked `seq`. Returns whether it was in flight.
    pub fn ack(&mut self, seq: u32) -> bool {
        let Some(duration) = self.duration_in_window(seq) else { return false };
        self.window.ack(seq);
        self.waiting -= 1;
        self.waiting_ms = self.waiting_ms.saturating_sub(u64::from(duration));
        self.acked += 1;
        self.to_delete.push(seq);
        true
    }

    fn duration_in_window(&self, seq: u32) -> Option<u32> {
        self.window.frames.iter().find(|f| f.seq == seq).map(|f| f.duration_ms)
    }

    /// Acked frames to delete from the outbox (taken: the caller deletes them).
    pub fn take_deletes(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.to_delete)
    }

    /// No more frames will be saved.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Whether the recording is completely in Kafka.
    pub fn done(&self) -> bool {
        self.finished && self.window.is_empty() && self.spilled_from.is_none() && self.tail.is_empty()
    }

    /// The frames in flight, to resend after a reconnect, oldest first.
    pub fn in_flight(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.window.unacked()
    }

    /// An in-flight frame's encoding.
    pub fn encoded(&self, seq: u32) -> Option<&[u8]> {
        self.window.frames.iter().find(|f| f.seq == seq).map(|f| f.encoded.as_slice())
    }

    /// Frames acked so far.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Frames saved and not yet acked (in flight or in the outbox).
    pub fn waiting(&self) -> u64 {
        self.waiting
    }

    /// Their audio, ms.
    pub fn waiting_ms(&self) -> u64 {
        self.waiting_ms
    }

    /// Frames in memory (in flight, or unsaved and waiting).
    pub fn in_memory(&self) -> usize {
        self.window.len() + self.tail.len()
    }
}

/// Reconnecting to the relay: the shared backoff, 0.5 s doubling to 30 s with jitter.
pub use soundline_shared::backoff::Backoff;

/// The backoff a recorder reconnects with.
pub fn reconnect_backoff() -> Backoff {
    Backoff::RECORDER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acked_frames_leave_and_unacked_ones_resend_in_order() {
        let mut b = ResendBuffer::new(1 << 20);
        for seq in 0..5 {
            b.push(seq, 200, vec![seq as u8; 10]);
        }
        assert!(b.ack(0) && b.ack(1) && !b.ack(1));
        assert_eq!(b.unacked().map(|(s, _)| s).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(b.pending_ms(), 600);
        assert!(b.ack(3));
        assert_eq!(b.unacked().map(|(s, e)| (s, e[0])).collect::<Vec<_>>(), [(2, 2), (4, 4)]);
    }

    #[test]
    fn a_full_buffer_keeps_everything_and_says_it_has_no_room() {
        let mut b = ResendBuffer::new(25);
        b.push(0, 200, vec![0; 10]);
        b.push(1, 200, vec![0; 10]);
        assert!(b.has_room());
        b.push(2, 200, vec![0; 10]);
        assert!(!b.has_room());
        assert_eq!(b.unacked().map(|(s, _)| s).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn the_window_holds_a_minute_of_200_ms_frames() {
        let mut f = Flow::new(WINDOW_BYTES);
        let frame = vec![0u8; soundline_shared::frame::HEADER_LEN + 3200 * 2];
        for seq in 0..300 {
            assert!(f.saved(seq, 200, frame.clone()), "spilled at frame {seq}");
        }
        assert!(!f.saved(300, 200, frame.clone()), "the 301st frame waits in the outbox");
        assert_eq!((f.waiting(), f.waiting_ms(), f.in_memory()), (301, 60_200, 300));
    }

    /// The relay away longer than the window: frames spill to the outbox, are read back in order as acks make
    /// room, and the recording is done only when the last one is acked.
    #[test]
    fn spilled_frames_come_back_from_the_outbox_in_order() {
        let frame = |seq: u32| vec![seq as u8; 100];
        let mut f = Flow::new(300);
        let mut outbox = Vec::new();
        let mut sent = Vec::new();
        for seq in 0..10 {
            outbox.push(seq);
            if f.saved(seq, 200, frame(seq)) {
                sent.push(seq);
            }
        }
        assert_eq!(sent, [0, 1, 2], "three frames fill the window");
        f.finish();
        assert_eq!(f.to_load(100), None, "no room yet");
        let mut round = 0;
        while !f.done() {
            round += 1;
            assert!(round < 20, "the flow makes progress");
            // The relay acks the oldest in flight; the outbox deletes it.
            let oldest = f.in_flight().next().map(|(s, _)| s).expect("something in flight");
            assert!(f.ack(oldest));
            let deleted = f.take_deletes();
            outbox.retain(|s| !deleted.contains(s));
            if let Some((from, max)) = f.to_load(100) {
                let batch: Vec<(u32, u32, Vec<u8>)> =
                    outbox.iter().filter(|s| **s >= from).take(max as usize).map(|&s| (s, 200, frame(s))).collect();
                sent.extend(f.loaded(batch, max));
            }
        }
        assert_eq!(sent, (0..10).collect::<Vec<_>>(), "every frame sent once, in order");
        assert_eq!((f.acked(), f.waiting(), f.waiting_ms()), (10, 0, 0));
    }

    #[test]
    fn a_recovered_recording_is_read_back_from_its_first_frame() {
        let mut f = Flow::recovered(1 << 20, Some(7), 3, 600);
        assert!(!f.done());
        assert_eq!(f.to_load(100), Some((7, LOAD_BATCH)));
        let seqs = f.loaded(vec![(7, 200, vec![7]), (8, 200, vec![8]), (9, 200, vec![9])], LOAD_BATCH);
        assert_eq!(seqs, [7, 8, 9]);
        assert_eq!(f.to_load(100), None, "fewer than asked: the outbox is empty");
        for s in 7..10 {
            assert!(f.ack(s));
        }
        assert_eq!(f.take_deletes(), [7, 8, 9]);
        assert!(f.done());
        assert!(Flow::recovered(1 << 20, None, 0, 0).done(), "nothing left: done at once");
    }

    #[test]
    fn an_unsaved_frame_stays_in_memory_behind_the_spilled_ones() {
        let mut f = Flow::new(100);
        assert!(f.saved(0, 200, vec![0; 100]));
        assert!(!f.saved(1, 200, vec![1; 100]), "spilled");
        assert!(!f.unsaved(2, 200, vec![2; 100]), "waits behind frame 1");
        assert!(!f.saved(3, 200, vec![3; 100]), "and the frames after it wait with it, in memory");
        f.finish();
        assert_eq!(f.in_flight().map(|(s, _)| s).collect::<Vec<_>>(), [0], "only frame 0 is sent (and resent)");
        assert!(f.ack(0));
        assert_eq!(f.to_load(100), Some((1, 1)), "room for frame 1");
        assert_eq!(f.loaded(vec![(1, 200, vec![1; 100])], 1), [1]);
        assert!(f.ack(1));
        assert_eq!(f.to_load(100), Some((2, 1)));
        assert_eq!(f.loaded(Vec::new(), 1), [2, 3], "the outbox is empty: the memory-only frames follow, in order");
        assert!(f.ack(2) && f.ack(3));
        assert!(f.done());
        assert_eq!(f.take_deletes(), [0, 1, 2, 3]);
    }

    #[test]
    fn a_recorder_reconnects_after_half_a_second_doubling_to_thirty() {
        let mut b = reconnect_backoff();
        let delays: Vec<u128> = (0..10).map(|_| b.next_delay(0.999_999).as_millis()).collect();
        assert_eq!(delays[..4], [499, 999, 1999, 3999]);
        assert_eq!(delays[9], 29_999);
    }
}
