//! The uplink's memory: frames sent but not yet acked, and when to try the relay again.
//!
//! Where it sits: `pipeline` produces frames; the socket glue (`uplink/socket.rs`, browser only) encodes and sends
//! each one, keeps it here until the relay acks it with its Kafka offset, and after a dropped connection
//! reconnects (backoff with jitter, from [`Backoff`]) and resends everything still here with its original
//! sequence number, while recording goes on. This part is pure and tested natively.
//!
//! The buffer is bounded in bytes (by default 15 minutes of audio). When it is full the oldest unacked frame is
//! dropped and reported ([`Overflow`]), so the page can say loudly what was lost; recording never stops.

use std::collections::VecDeque;

pub mod socket;

/// Bytes of 16 kHz 16-bit mono audio per minute, plus frame headers at 200 ms frames.
pub const BYTES_PER_MINUTE: usize = 16_000 * 2 * 60 + 300 * soundline_shared::frame::HEADER_LEN;
/// Default resend buffer: 15 minutes of audio.
pub const DEFAULT_MAX_BYTES: usize = 15 * BYTES_PER_MINUTE;

struct Unacked {
    seq: u32,
    duration_ms: u32,
    encoded: Vec<u8>,
}

/// A frame dropped from a full buffer, never acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    /// Its sequence number.
    pub seq: u32,
    /// Its length in ms.
    pub duration_ms: u32,
}

/// Frames sent (or waiting to be sent) and not yet acked, oldest first.
pub struct ResendBuffer {
    frames: VecDeque<Unacked>,
    bytes: usize,
    max_bytes: usize,
    dropped_frames: u64,
    dropped_ms: u64,
}

impl ResendBuffer {
    /// An empty buffer holding at most `max_bytes` of encoded frames.
    pub fn new(max_bytes: usize) -> Self {
        Self { frames: VecDeque::new(), bytes: 0, max_bytes, dropped_frames: 0, dropped_ms: 0 }
    }

    /// Keeps an encoded frame until [`ResendBuffer::ack`]; returns what had to be dropped to make room.
    pub fn push(&mut self, seq: u32, duration_ms: u32, encoded: Vec<u8>) -> Vec<Overflow> {
        let mut dropped = Vec::new();
        self.bytes += encoded.len();
        self.frames.push_back(Unacked { seq, duration_ms, encoded });
        while self.bytes > self.max_bytes && self.frames.len() > 1 {
            if let Some(old) = self.frames.pop_front() {
                self.bytes -= old.encoded.len();
                self.dropped_frames += 1;
                self.dropped_ms += u64::from(old.duration_ms);
                dropped.push(Overflow { seq: old.seq, duration_ms: old.duration_ms });
            }
        }
        dropped
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

    /// Frames and ms dropped because the buffer was full, since the start.
    pub fn dropped(&self) -> (u64, u64) {
        (self.dropped_frames, self.dropped_ms)
    }
}

/// Exponential backoff with jitter for reconnecting: 0.5 s doubling to 30 s, each delay scaled by a random
/// factor in [0.5, 1) so that many recorders cut off together do not come back in lockstep.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The delay before the next attempt, given a uniform random number in [0, 1).
    pub fn next_delay_ms(&mut self, random: f64) -> u32 {
        let base = (500u64 << self.attempt.min(10)).min(30_000) as f64;
        self.attempt += 1;
        (base * (0.5 + random.clamp(0.0, 1.0) / 2.0)) as u32
    }

    /// A connection succeeded: start from the shortest delay next time.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acked_frames_leave_and_unacked_ones_resend_in_order() {
        let mut b = ResendBuffer::new(1 << 20);
        for seq in 0..5 {
            assert!(b.push(seq, 200, vec![seq as u8; 10]).is_empty());
        }
        assert!(b.ack(0) && b.ack(1) && !b.ack(1));
        assert_eq!(b.unacked().map(|(s, _)| s).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(b.pending_ms(), 600);
        assert!(b.ack(3));
        assert_eq!(b.unacked().map(|(s, e)| (s, e[0])).collect::<Vec<_>>(), [(2, 2), (4, 4)]);
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_says_so() {
        let mut b = ResendBuffer::new(25);
        assert!(b.push(0, 200, vec![0; 10]).is_empty());
        assert!(b.push(1, 200, vec![0; 10]).is_empty());
        assert_eq!(b.push(2, 200, vec![0; 10]), [Overflow { seq: 0, duration_ms: 200 }]);
        assert_eq!(b.dropped(), (1, 200));
        assert_eq!(b.unacked().map(|(s, _)| s).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn the_default_buffer_holds_at_least_ten_minutes_of_200_ms_frames() {
        let mut b = ResendBuffer::new(DEFAULT_MAX_BYTES);
        let frame = vec![0u8; soundline_shared::frame::HEADER_LEN + 3200 * 2];
        for seq in 0..(10 * 60 * 5) {
            assert!(b.push(seq, 200, frame.clone()).is_empty(), "dropped at frame {seq}");
        }
        assert_eq!(b.pending_ms(), 600_000);
    }

    #[test]
    fn backoff_doubles_to_thirty_seconds_with_jitter() {
        let mut b = Backoff::default();
        let delays: Vec<u32> = (0..10).map(|_| b.next_delay_ms(0.999_999)).collect();
        assert_eq!(delays[..4], [499, 999, 1999, 3999]);
        assert_eq!(delays[9], 29_999);
        let mut b = Backoff::default();
        assert_eq!(b.next_delay_ms(0.0), 250, "jitter halves at most");
        b.reset();
        assert_eq!(b.next_delay_ms(0.0), 250);
    }
}
