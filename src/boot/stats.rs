//! Boot counters for the heartbeat, status and live view: nodes seen in
//! the last hour, boots in progress, boots answered, and the latest ones.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::model::mac::Mac;

const SEEN_WINDOW: Duration = Duration::from_secs(3600);

/// How many of the latest boots are kept for the operator's view.
pub const LATEST_BOOTS: usize = 50;

/// One boot answered, for the operator's view (DESIGN §11).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootSeen {
    pub mac: String,
    pub state: Option<&'static str>,
    pub action: &'static str,
    pub source: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
}

#[derive(Default)]
pub struct BootStats {
    total: AtomicU64,
    active: AtomicU64,
    seen: Mutex<HashMap<Mac, Instant>>,
    latest: Mutex<std::collections::VecDeque<BootSeen>>,
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
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(mac, Instant::now());
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
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, at| at.elapsed() < SEEN_WINDOW);
        seen.len() as u64
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
}
