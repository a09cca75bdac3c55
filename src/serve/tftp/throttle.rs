//! Logging refusals without letting a peer flood the log: each peer's
//! refusals are logged at most once per interval, the next logged line
//! saying how many were left out (DESIGN §10). Names a peer chose are cut
//! to a readable length before they are logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One logged refusal per peer per this long.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Peers remembered at most; past this, those outside their interval are
/// forgotten (a spoofed flood of source addresses cannot grow it forever).
const MAX_PEERS: usize = 4096;

/// Characters of a peer-chosen name that reach the log.
const SHOWN_CHARS: usize = 128;

pub struct LogThrottle {
    interval: Duration,
    /// Peer → (when it was last logged, refusals left out since).
    peers: Mutex<HashMap<IpAddr, (Instant, u64)>>,
}

impl LogThrottle {
    pub fn new(interval: Duration) -> LogThrottle {
        LogThrottle {
            interval,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Some(left out since the last logged one) if this refusal may be
    /// logged now; None if it is to be counted and left out.
    pub fn admit(&self, peer: IpAddr) -> Option<u64> {
        self.admit_at(peer, Instant::now())
    }

    fn admit_at(&self, peer: IpAddr, now: Instant) -> Option<u64> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            let interval = self.interval;
            peers.retain(|_, (at, _)| now.duration_since(*at) < interval);
        }
        match peers.get_mut(&peer) {
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
                peers.insert(peer, (now, 0));
                Some(0)
            }
        }
    }
}

/// A peer-chosen string as it may appear in the log: control characters
/// escaped, at most [`SHOWN_CHARS`] characters, the cut marked.
pub fn shown(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(SHOWN_CHARS)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().count() > SHOWN_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_peer_and_interval_with_the_count_left_out() {
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
    fn names_are_cut_and_escaped() {
        assert_eq!(shown("pxelinux.0"), "pxelinux.0");
        assert_eq!(shown("a\nb"), "a\\nb");
        let long = "x".repeat(10_000);
        assert!(shown(&long).chars().count() <= SHOWN_CHARS + 1);
    }
}
