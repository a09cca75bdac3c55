//! Keeping unauthenticated peers from flooding the agent (DESIGN §7, §10):
//! a per-key log throttle (one line per key and interval, with the count
//! left out) and a per-key rate limit (a token bucket). Both remember a
//! bounded number of keys, so a flood of spoofed addresses or random MACs
//! cannot grow them without end.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One logged line per key per this long.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Keys remembered at most; past this, those that no longer matter are
/// forgotten.
const MAX_KEYS: usize = 4096;

pub struct LogThrottle<K> {
    interval: Duration,
    /// Key → (when it was last logged, lines left out since).
    keys: Mutex<HashMap<K, (Instant, u64)>>,
}

impl<K: Hash + Eq + Copy> LogThrottle<K> {
    pub fn new(interval: Duration) -> LogThrottle<K> {
        LogThrottle {
            interval,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Some(left out since the last logged one) if this line may be
    /// logged now; None if it is to be counted and left out.
    pub fn admit(&self, key: K) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    pub fn admit_at(&self, key: K, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.len() >= MAX_KEYS && !keys.contains_key(&key) {
            let interval = self.interval;
            keys.retain(|_, (at, _)| now.duration_since(*at) < interval);
        }
        match keys.get_mut(&key) {
            Some((at, left_out)) if now.duration_since(*at) < self.interval => {
                *left_out += 1;
                None
            }
            Some((at, left_out)) => {
                let count = *left_out;
                *at = now;
                *left_out = 0;
                Some(count)
            }
            None => {
                keys.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// At most `per_minute` admissions per key and minute, in bursts of up to
/// `per_minute` (a token bucket refilled continuously).
pub struct KeyedRate<K> {
    /// The burst: admissions a key may take at once.
    capacity: f64,
    /// Admissions a key gets back per second.
    refill_per_sec: f64,
    /// Key → (tokens left, when they were counted).
    keys: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq + Copy> KeyedRate<K> {
    pub fn new(per_minute: u32) -> KeyedRate<K> {
        KeyedRate {
            capacity: f64::from(per_minute),
            refill_per_sec: f64::from(per_minute) / 60.0,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// At most `per_second` admissions per key and second, in bursts of
    /// up to `per_second`.
    pub fn per_second(per_second: u32) -> KeyedRate<K> {
        KeyedRate {
            capacity: f64::from(per_second),
            refill_per_sec: f64::from(per_second),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one admission for `key`; false if its rate is used up.
    pub fn admit(&self, key: K) -> bool {
        self.admit_at(key, Instant::now())
    }

    pub fn admit_at(&self, key: K, now: Instant) -> bool {
        let (capacity, refill_per_sec) = (self.capacity, self.refill_per_sec);
        let refilled = |(tokens, at): (f64, Instant)| {
            (tokens + now.saturating_duration_since(at).as_secs_f64() * refill_per_sec)
                .min(capacity)
        };
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.len() >= MAX_KEYS && !keys.contains_key(&key) {
            // A key whose bucket is full again is no different from one
            // never seen: forgetting it changes nothing.
            keys.retain(|_, entry| refilled(*entry) < capacity);
            if keys.len() >= MAX_KEYS {
                // Every remembered key is still limited: a flood of
                // distinct keys. The newcomer is refused rather than one
                // of them forgotten early.
                return false;
            }
        }
        let tokens = keys.get(&key).map_or(capacity, |entry| refilled(*entry));
        if tokens < 1.0 {
            keys.insert(key, (tokens, now));
            return false;
        }
        keys.insert(key, (tokens - 1.0, now));
        true
    }
}

/// Lines logged overall per [`LOG_INTERVAL`] by a [`RefusalLog`].
pub const REFUSALS_LOGGED_PER_INTERVAL: u32 = 20;

/// The log throttle for refusals (DESIGN §10): per peer, then overall. A
/// per-peer throttle alone is defeated by spoofed source addresses (UDP)
/// or many clients; the overall budget bounds the log whatever they do.
pub struct RefusalLog<K> {
    per_peer: LogThrottle<K>,
    /// (window start, lines logged in it, lines left out since the last
    /// logged one).
    overall: Mutex<(Option<Instant>, u32, u64)>,
    per_interval: u32,
}

impl<K: Hash + Eq + Copy> RefusalLog<K> {
    pub fn new(interval: Duration, per_interval: u32) -> RefusalLog<K> {
        RefusalLog {
            per_peer: LogThrottle::new(interval),
            overall: Mutex::new((None, 0, 0)),
            per_interval,
        }
    }

    /// Some(lines left out overall since the last logged one) if a line
    /// about `peer` may be logged now.
    pub fn admit(&self, peer: K) -> Option<u64> {
        self.admit_at(peer, Instant::now())
    }

    pub fn admit_at(&self, peer: K, now: Instant) -> Option<u64> {
        let peer_ok = self.per_peer.admit_at(peer, now).is_some();
        let mut overall = self.overall.lock().unwrap_or_else(|e| e.into_inner());
        let (start, lines, left_out) = &mut *overall;
        if start.is_none_or(|at| now.duration_since(at) >= self.per_peer.interval) {
            *start = Some(now);
            *lines = 0;
        }
        if !peer_ok || *lines >= self.per_interval {
            *left_out += 1;
            return None;
        }
        *lines += 1;
        Some(std::mem::take(left_out))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn refusals_are_bounded_overall_whatever_the_peers() {
        let log = super::RefusalLog::<u32>::new(std::time::Duration::from_secs(10), 3);
        let now = std::time::Instant::now();
        // 1,000 spoofed peers at once: three lines, the rest counted.
        let logged = (0..1000)
            .filter(|p| log.admit_at(*p, now).is_some())
            .count();
        assert_eq!(logged, 3);
        // One peer again within the interval: left out by its own throttle.
        assert!(log.admit_at(0, now).is_none());
        let later = now + std::time::Duration::from_secs(11);
        assert_eq!(log.admit_at(5000, later), Some(998));
    }

    use super::*;
    use std::net::IpAddr;

    #[test]
    fn one_line_per_key_and_interval_with_the_count_left_out() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(throttle.admit_at(a, t0), Some(0));
        for _ in 0..500 {
            assert_eq!(throttle.admit_at(a, t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(throttle.admit_at(b, t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(
            throttle.admit_at(a, t0 + Duration::from_secs(11)),
            Some(500)
        );
        assert_eq!(throttle.admit_at(a, t0 + Duration::from_secs(12)), None);
    }

    #[test]
    fn a_burst_then_the_rate() {
        let rate = KeyedRate::new(6);
        let t0 = Instant::now();
        for _ in 0..6 {
            assert!(rate.admit_at(1u32, t0));
        }
        assert!(!rate.admit_at(1u32, t0));
        assert!(rate.admit_at(2u32, t0), "another key has its own bucket");
        // 6 per minute: one more every 10 s.
        assert!(!rate.admit_at(1u32, t0 + Duration::from_secs(9)));
        assert!(rate.admit_at(1u32, t0 + Duration::from_secs(11)));
        assert!(!rate.admit_at(1u32, t0 + Duration::from_secs(12)));
        assert!(rate.admit_at(1u32, t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn a_flood_of_keys_stays_bounded() {
        let rate = KeyedRate::new(1);
        let t0 = Instant::now();
        for key in 0..(MAX_KEYS as u32 * 2) {
            rate.admit_at(key, t0);
        }
        assert!(rate.keys.lock().unwrap().len() <= MAX_KEYS);
        // Once the buckets are full again, they are forgotten and new keys pass.
        assert!(rate.admit_at(u32::MAX, t0 + Duration::from_secs(120)));
    }
}
