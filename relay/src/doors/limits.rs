//! What one client or one connection may take: connections per client address, messages and bytes per second,
//! silence, and the keepalive pings that tell a silent client from a gone one.
//!
//! [`Clients`] is checked in [`crate::http`] before a WebSocket is upgraded (over the limit: HTTP 429).
//! [`Throttle`] and [`Keepalive`] run inside each connection's reader ([`crate::ingest`], [`crate::fanout::subscriber`]): a
//! connection that sends faster than its rates is not cut off but read more slowly, so TCP pushes back on the
//! sender and a legitimate recorder catching up after an outage loses nothing; each slowdown is counted in
//! `soundline_throttled_total`. A connection that sends nothing, not even the pong to the relay's pings, for
//! `idle_timeout_s` is closed with `idle_timeout` (4015).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use tokio::time::Instant;

use crate::config::Limits;
use crate::metrics::{Metrics, Throttled};

/// The address a connection counts against: the TCP peer, or the last address of the configured header (what
/// the ingress in front of the relay saw) when there is one. IPv6 addresses count by their /64 (what one
/// subscriber usually holds), so a client cannot take a new share per address.
pub fn client_address(limits: &Limits, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
    let address = limits
        .client_ip_header
        .as_deref()
        .and_then(|name| headers.get_all(name).iter().next_back())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or_else(|| peer.ip());
    per_subscriber(address)
}

/// The address a client counts as: IPv4 as is, IPv6 by its /64.
pub fn per_subscriber(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// Open WebSocket connections per client address.
#[derive(Debug, Default)]
pub struct Clients {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of a client; dropping it frees the slot.
#[derive(Debug)]
pub struct ClientSlot {
    clients: Arc<Clients>,
    address: IpAddr,
}

impl Clients {
    /// Takes a slot for `address` unless it already holds `max`.
    pub fn try_acquire(self: &Arc<Self>, address: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(address).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot { clients: Arc::clone(self), address })
    }

    /// Connections `address` holds now.
    pub fn open(&self, address: IpAddr) -> usize {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&address).copied().unwrap_or(0)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// A token bucket that holds at most one second's worth and may go into debt: charging more than it holds
/// returns how long to wait until the debt is paid, so that the rate holds on average.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    per_s: f64,
    level: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket of `per_s` per second.
    pub fn new(per_s: f64, now: Instant) -> Self {
        Self { per_s, level: per_s, last: now }
    }

    /// Takes `amount` at `now`; returns how long to wait before going on (zero: at once).
    pub fn charge(&mut self, amount: f64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.level = (self.level + elapsed * self.per_s).min(self.per_s) - amount;
        Duration::from_secs_f64((-self.level / self.per_s).max(0.0))
    }
}

/// Two token buckets, messages and bytes.
#[derive(Debug)]
pub struct Throttle {
    messages: Bucket,
    bytes: Bucket,
}

impl Throttle {
    /// Full buckets at the configured rates.
    pub fn new(limits: &Limits) -> Self {
        let now = Instant::now();
        Self {
            messages: Bucket::new(f64::from(limits.messages_per_s), now),
            bytes: Bucket::new(limits.bytes_per_s as f64, now),
        }
    }

    /// How long to pause before reading on, after a message of `len` bytes arrived at `now`.
    pub fn charge(&mut self, len: usize, now: Instant) -> Option<(Duration, Throttled)> {
        let wait_messages = self.messages.charge(1.0, now);
        let wait_bytes = self.bytes.charge(len as f64, now);
        if wait_messages.is_zero() && wait_bytes.is_zero() {
            return None;
        }
        let which = if wait_messages >= wait_bytes { Throttled::Messages } else { Throttled::Bytes };
        Some((wait_messages.max(wait_bytes), which))
    }

    /// Charges a message and pauses (counted) when the connection is over a rate.
    pub async fn admit(&mut self, len: usize, metrics: &Metrics) {
        if let Some((pause, which)) = self.charge(len, Instant::now()) {
            metrics.throttled(which);
            tokio::time::sleep(pause).await;
        }
    }
}

/// The relay's side of keepalive: when to ping, and when silence has lasted too long.
#[derive(Debug)]
pub struct Keepalive {
    /// Ticks every `ping_interval_s`.
    pub ping: tokio::time::Interval,
    next_ping: Instant,
}

impl Keepalive {
    /// From the configured intervals.
    pub fn new(limits: &Limits) -> Self {
        let mut ping = tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { ping, next_ping: Instant::now() + limits.ping_interval }
    }

    /// Whether a ping is due now (for loops busy with something else than waiting).
    pub fn ping_due(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next_ping {
            return false;
        }
        self.next_ping = now + self.ping.period();
        self.ping.reset();
        true
    }
}

/// Counts a keepalive ping sent.
pub fn count_ping(metrics: &Metrics) {
    metrics.pings_sent_total.inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(messages_per_s: u32, bytes_per_s: u64) -> Limits {
        Limits {
            connections_per_client: 2,
            client_ip_header: Some("x-forwarded-for".into()),
            messages_per_s,
            bytes_per_s,
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(20),
            max_header_bytes: 16 * 1024,
        }
    }

    #[test]
    fn a_client_holds_at_most_its_share_and_gets_it_back() {
        let clients = Arc::new(Clients::default());
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let a = clients.try_acquire(ip, 2).expect("first");
        let _b = clients.try_acquire(ip, 2).expect("second");
        assert!(clients.try_acquire(ip, 2).is_none());
        assert!(clients.try_acquire("10.0.0.8".parse().unwrap(), 2).is_some(), "other clients are not affected");
        drop(a);
        assert_eq!(clients.open(ip), 1);
        assert!(clients.try_acquire(ip, 2).is_some());
    }

    #[test]
    fn the_ingress_header_names_the_client_when_configured() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(client_address(&limits(1, 65_536), &h, peer), peer.ip());
        h.insert("x-forwarded-for", "203.0.113.9, 198.51.100.4".parse().unwrap());
        assert_eq!(client_address(&limits(1, 65_536), &h, peer), "198.51.100.4".parse::<IpAddr>().unwrap());
        h.insert("x-forwarded-for", "not an address".parse().unwrap());
        assert_eq!(client_address(&limits(1, 65_536), &h, peer), peer.ip());
        h.insert("x-forwarded-for", "2001:db8:1:2:aaaa::1".parse().unwrap());
        assert_eq!(client_address(&limits(1, 65_536), &h, peer), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_bucket_lets_a_second_through_then_makes_each_charge_wait_its_share() {
        let start = Instant::now();
        let mut b = Bucket::new(1000.0, start);
        assert_eq!(b.charge(1000.0, start), Duration::ZERO, "one second's worth at once");
        // Two callers sharing it, each charging half a second's worth: the debt queues them one after the other.
        assert_eq!(b.charge(500.0, start), Duration::from_millis(500));
        assert_eq!(b.charge(500.0, start), Duration::from_millis(1000));
        // Time pays the debt back; it never saves more than a second.
        assert_eq!(b.charge(0.0, start + Duration::from_millis(1000)), Duration::ZERO);
        assert_eq!(b.charge(1500.0, start + Duration::from_secs(60)), Duration::from_millis(500));
    }

    #[test]
    fn a_second_of_burst_then_the_rate() {
        let mut t = Throttle::new(&limits(10, 1_000_000));
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(t.charge(10, start), None);
        }
        let (pause, which) = t.charge(10, start).expect("over the message rate");
        assert_eq!(which, Throttled::Messages);
        assert!((pause.as_secs_f64() - 0.1).abs() < 1e-6, "{pause:?}");
        // After waiting the pause, the next message passes again at the rate.
        assert!(t.charge(10, start + Duration::from_millis(300)).is_none());
    }

    #[test]
    fn bytes_are_limited_separately() {
        let mut t = Throttle::new(&limits(1000, 100_000));
        let start = Instant::now();
        assert!(t.charge(64_000, start).is_none());
        let (pause, which) = t.charge(64_000, start).expect("over the byte rate");
        assert_eq!(which, Throttled::Bytes);
        assert!((pause.as_secs_f64() - 0.28).abs() < 1e-6, "{pause:?}");
    }
}
