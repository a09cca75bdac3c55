//! Whether the central controller is reachable, decided from probes and from
//! the outcome of every real controller call (DESIGN §2: offline after
//! `failure_threshold` consecutive failures, online after
//! `recovery_threshold` consecutive successes).
//!
//! The state is published through a `tokio::sync::watch` channel, so each
//! listener sees every transition once; transitions are logged once, not
//! per probe.

use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub online: bool,
    pub last_online_at: Option<OffsetDateTime>,
    /// When the current outage began (None while online).
    pub offline_since: Option<OffsetDateTime>,
    /// Length of the last outage that ended.
    pub last_outage: Option<Duration>,
    /// Number of transitions so far (0: still the initial state).
    pub transitions: u64,
}

impl LinkState {
    pub fn offline_duration(&self, now: OffsetDateTime) -> Option<Duration> {
        self.offline_since
            .map(|since| (now - since).try_into().unwrap_or(Duration::ZERO))
    }
}

struct Counters {
    consecutive_failures: u32,
    consecutive_successes: u32,
}

pub struct Monitor {
    failure_threshold: u32,
    recovery_threshold: u32,
    counters: Mutex<Counters>,
    state: watch::Sender<LinkState>,
}

/// A transition, for the caller's sync log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    WentOnline,
    WentOffline,
}

impl Monitor {
    /// Starts offline: nothing is known about the controller until the
    /// first probe or call succeeds.
    pub fn new(failure_threshold: u32, recovery_threshold: u32, now: OffsetDateTime) -> Monitor {
        let (state, _) = watch::channel(LinkState {
            online: false,
            last_online_at: None,
            offline_since: Some(now),
            last_outage: None,
            transitions: 0,
        });
        Monitor {
            failure_threshold: failure_threshold.max(1),
            recovery_threshold: recovery_threshold.max(1),
            counters: Mutex::new(Counters {
                consecutive_failures: 0,
                consecutive_successes: 0,
            }),
            state,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }

    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    #[cfg(test)]
    pub fn is_online(&self) -> bool {
        self.state.borrow().online
    }

    /// Records the outcome of a probe or controller call. Only
    /// unreachability counts as failure; a controller that answers with an
    /// error is up.
    pub fn record(&self, reachable: bool, now: OffsetDateTime) -> Option<Transition> {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let online = self.state.borrow().online;
        if reachable {
            counters.consecutive_failures = 0;
            counters.consecutive_successes = counters.consecutive_successes.saturating_add(1);
            // The very first success after start also counts as recovery:
            // there is no outage to be sure about yet.
            let first = self.state.borrow().transitions == 0;
            if !online && (first || counters.consecutive_successes >= self.recovery_threshold) {
                self.state.send_modify(|s| {
                    s.last_outage = s.offline_duration(now).filter(|_| s.transitions > 0);
                    s.online = true;
                    s.offline_since = None;
                    s.last_online_at = Some(now);
                    s.transitions += 1;
                });
                tracing::info!("central controller reachable: online");
                return Some(Transition::WentOnline);
            }
            if online {
                self.state.send_if_modified(|s| {
                    s.last_online_at = Some(now);
                    false
                });
            }
        } else {
            counters.consecutive_successes = 0;
            counters.consecutive_failures = counters.consecutive_failures.saturating_add(1);
            if online && counters.consecutive_failures >= self.failure_threshold {
                self.state.send_modify(|s| {
                    s.online = false;
                    s.offline_since = Some(now);
                    s.transitions += 1;
                });
                tracing::warn!(
                    failures = counters.consecutive_failures,
                    "central controller unreachable: offline"
                );
                return Some(Transition::WentOffline);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s)
    }

    #[test]
    fn thresholds_and_single_notification_per_transition() {
        let m = Monitor::new(3, 2, t(0));
        let mut rx = m.subscribe();
        assert!(!m.is_online());
        assert_eq!(m.record(true, t(1)), Some(Transition::WentOnline));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert_eq!(m.record(false, t(2)), None);
        assert_eq!(m.record(false, t(3)), None);
        assert!(
            !rx.has_changed().unwrap(),
            "no notification before the threshold"
        );
        assert_eq!(m.record(false, t(4)), Some(Transition::WentOffline));
        assert_eq!(m.record(false, t(5)), None);
        assert_eq!(m.state().offline_since, Some(t(4)));
        assert_eq!(m.record(true, t(10)), None, "recovery needs 2 successes");
        assert_eq!(m.record(true, t(11)), Some(Transition::WentOnline));
        let s = m.state();
        assert!(s.online);
        assert_eq!(s.last_outage, Some(Duration::from_secs(7)));
        assert_eq!(s.transitions, 3);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let m = Monitor::new(2, 1, t(0));
        m.record(true, t(0));
        m.record(false, t(1));
        m.record(true, t(2));
        assert_eq!(m.record(false, t(3)), None);
        assert!(m.is_online());
    }
}
