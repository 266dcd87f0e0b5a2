//! One backoff for every retry loop on both sides of the wire: the page reconnecting to the relay, the feed
//! reconnecting, the relay's producer and consumer retrying Kafka. Exponential from a first delay to a cap, each
//! delay scaled by a random factor in [0.5, 1) ("equal jitter"), so that many clients cut off together do not come
//! back in lockstep. Pure: the caller brings the random number (`Math.random()` in the browser, [`jitter`] in
//! the relay).

use std::time::Duration;

/// Retry delays: `first`, doubling, up to `max`, each with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// The relay's retries of Kafka (connecting, producing, fetching): 100 ms doubling to 5 s.
    pub const KAFKA: Self = Self::new(Duration::from_millis(100), Duration::from_secs(5));
    /// A recorder reconnecting to the relay: 0.5 s doubling to 30 s.
    pub const RECORDER: Self = Self::new(Duration::from_millis(500), Duration::from_secs(30));
    /// A feed subscriber reconnecting: 1 s doubling to 30 s.
    pub const FEED: Self = Self::new(Duration::from_secs(1), Duration::from_secs(30));

    /// Delays from `first`, doubling, to `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max, attempt: 0 }
    }

    /// The delay before the next attempt, given a uniform random number in [0, 1).
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let base = self.first.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(0.5 + random.clamp(0.0, 1.0) / 2.0)
    }

    /// An attempt succeeded: start from the first delay next time.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A number in [0, 1) that differs from call to call and from process to process, for jitter where no random
/// number generator is at hand (the relay). Not for anything that needs unpredictability.
#[cfg(not(target_arch = "wasm32"))]
pub fn jitter() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    // splitmix64 of the clock and a counter.
    let mut z = nanos ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed) ^ u64::from(std::process::id());
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_cap_with_jitter_that_halves_at_most() {
        let mut b = Backoff::RECORDER;
        let ms: Vec<u128> = (0..10).map(|_| b.next_delay(0.999_999).as_millis()).collect();
        assert_eq!(ms[..4], [499, 999, 1999, 3999]);
        assert_eq!(ms[9], 29_999);
        let mut b = Backoff::KAFKA;
        assert_eq!(b.next_delay(0.0), Duration::from_millis(50), "jitter halves at most");
        for _ in 0..40 {
            assert!(b.next_delay(0.999) <= Duration::from_secs(5), "never past the cap");
        }
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(50));
    }

    #[test]
    fn jitter_is_in_range_and_varies() {
        let xs: Vec<f64> = (0..1000).map(|_| jitter()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }
}
