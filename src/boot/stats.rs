//! Boot counters for the heartbeat, status and live view: nodes seen in
//! the last hour, boots in progress, boots answered, and the latest ones.

use crate::model::mac::MacMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::model::boot::Source;
use crate::model::decision::Action;
use crate::model::mac::Mac;

const SEEN_WINDOW: Duration = Duration::from_secs(3600);

/// How many of the latest boots are kept for the operator's view.
pub const LATEST_BOOTS: usize = 50;

/// One boot answered, for the operator's view (DESIGN §11).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootSeen {
    pub mac: Mac,
    pub state: Option<&'static str>,
    pub action: &'static str,
    pub source: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
}

/// `siteboot_boots_total`'s series, each looked up by its labels once: a
/// boot is then counted through an array index, not a hash of two strings.
#[derive(Default)]
pub struct BootCounters {
    /// By `Action as usize`, then `Source as usize`.
    series: [[OnceLock<prometheus::IntCounter>; 4]; 5],
}

impl BootCounters {
    pub fn count(&self, action: Action, source: Source, seconds: f64) {
        let metrics = crate::metrics::metrics();
        let resolve = || metrics.boot_counter(action.as_str(), source.as_str());
        match self
            .series
            .get(action as usize)
            .and_then(|row| row.get(source as usize))
        {
            Some(kept) => kept.get_or_init(resolve).inc(),
            // A variant added without growing the table: still counted.
            None => resolve().inc(),
        }
        metrics.boot_answer_seconds(seconds);
    }
}

#[derive(Default)]
pub struct BootStats {
    total: AtomicU64,
    active: AtomicU64,
    seen: Mutex<SeenWindow>,
    latest: Mutex<std::collections::VecDeque<BootSeen>>,
}

/// A MAC's time is moved on at most this often: the hour's count is
/// exact to a minute, and a node booting in a loop costs one lookup.
const SEEN_GRAIN: Duration = Duration::from_secs(60);
/// Times kept at most; past it the oldest go first (the count may then
/// be low by the MACs they were the last sight of): a flood of MACs
/// costs bounded memory.
const SEEN_MAX: usize = 1 << 18;

/// Distinct MACs seen within [`SEEN_WINDOW`], counted without a scan: the
/// map holds each MAC's latest time, the queue the times in order (a
/// MAC's older entries are skipped when they reach the front).
#[derive(Default)]
struct SeenWindow {
    last: MacMap<Instant>,
    order: std::collections::VecDeque<(Instant, Mac)>,
}

impl SeenWindow {
    fn saw(&mut self, mac: Mac, now: Instant) {
        match self.last.get(&mac) {
            Some(at) if now.saturating_duration_since(*at) < SEEN_GRAIN => return,
            _ => {}
        }
        self.last.insert(mac, now);
        self.order.push_back((now, mac));
        while self.order.len() > SEEN_MAX {
            self.pop_front();
        }
        self.expire(now);
    }

    fn pop_front(&mut self) {
        if let Some((at, mac)) = self.order.pop_front()
            && self.last.get(&mac) == Some(&at)
        {
            self.last.remove(&mac);
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= SEEN_WINDOW)
        {
            self.pop_front();
        }
    }

    fn count(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.last.len() as u64
    }
}

/// Decrements the active-boot gauge when the boot ends, however it ends.
pub struct ActiveBoot<'a>(&'a BootStats);

impl Drop for ActiveBoot<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BootStats {
    pub fn begin(&self, mac: Mac) -> ActiveBoot<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .saw(mac, Instant::now());
        ActiveBoot(self)
    }

    pub fn answered(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps `boot` among the latest (the oldest leaves past the bound).
    pub fn remember(&self, boot: BootSeen) {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if latest.len() >= LATEST_BOOTS {
            latest.pop_back();
        }
        latest.push_front(boot);
    }

    /// Boots answered since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The latest boots, newest first.
    pub fn latest(&self) -> Vec<BootSeen> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The source and time of the latest boot answered, if any.
    pub fn latest_source(&self) -> Option<(&'static str, time::OffsetDateTime)> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .front()
            .map(|b| (b.source, b.at))
    }

    pub fn active_boots(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Distinct MACs that asked for a script in the last hour.
    pub fn nodes_seen_last_hour(&self) -> u64 {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .count(Instant::now())
    }
}

/// How often boots are sent to event clients, as one `boots` event.
pub const BOOTS_EVERY: Duration = Duration::from_millis(250);

/// DESIGN §11 live view: every [`BOOTS_EVERY`], while a client of
/// `/api/v1/events` is connected and boots happened, one `boots` event
/// with how many and the latest of them (up to [`LATEST_BOOTS`]). A
/// thousand boots a second cost the clients four events, not a thousand.
pub async fn publish_boots(
    stats: std::sync::Arc<BootStats>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut sent = stats.total();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(BOOTS_EVERY) => {}
        }
        let total = stats.total();
        if total == sent {
            continue;
        }
        let new = total - sent;
        sent = total;
        if !crate::events::listening() {
            continue;
        }
        let latest: Vec<BootSeen> = stats
            .latest()
            .into_iter()
            .take(usize::try_from(new).unwrap_or(LATEST_BOOTS))
            .collect();
        crate::events::publish(
            "boots",
            serde_json::json!({ "count": new, "latest": latest }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters() {
        let stats = BootStats::default();
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        {
            let _a = stats.begin(mac);
            let _b = stats.begin(mac);
            assert_eq!(stats.active_boots(), 2);
            stats.answered();
            stats.answered();
        }
        assert_eq!(stats.active_boots(), 0);
        assert_eq!(stats.nodes_seen_last_hour(), 1);
        assert_eq!(stats.total(), 2);
    }

    #[test]
    fn the_hours_count_follows_the_window_and_stays_bounded() {
        let mut window = SeenWindow::default();
        let start = Instant::now();
        let mac = |n: u32| -> Mac {
            format!(
                "52:54:00:{:02x}:{:02x}:{:02x}",
                n >> 16,
                (n >> 8) & 0xff,
                n & 0xff
            )
            .parse()
            .unwrap()
        };
        let at = |secs: u64| start + Duration::from_secs(secs);
        window.saw(mac(1), at(0));
        window.saw(mac(2), at(10));
        // Seen again within the grain: nothing moves.
        window.saw(mac(1), at(30));
        assert_eq!(window.order.len(), 2);
        // Seen again later: its time moves on; its old entry is skipped.
        window.saw(mac(1), at(1800));
        assert_eq!(window.count(at(1800)), 2);
        // An hour after mac 2, only mac 1 (seen at 1800) is left.
        assert_eq!(window.count(at(3610)), 1);
        assert_eq!(window.count(at(5400)), 0);
        // A flood of distinct MACs: bounded.
        for n in 0..(SEEN_MAX as u32 + 1000) {
            window.saw(mac(n + 10), at(6000));
        }
        assert_eq!(window.order.len(), SEEN_MAX);
        assert_eq!(window.count(at(6000)), SEEN_MAX as u64);
    }
}
