//! One status snapshot of the agent, gathered in one place and shown three
//! ways: `GET /api/v1/status`, the heartbeat to the controller, and (later)
//! `/metrics`. A number that appears in more than one of them is the same
//! number.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::boot::stats::BootStats;
use crate::central::monitor::LinkState;
use crate::central::port::ControllerPort;
use crate::model::mode::Mode;
use crate::outbox::Outbox;
use crate::store::Store;
use crate::store::nodes::NodeCache;
use crate::store::queue::Stats as QueueStats;

/// The meta key of the last finished sync's time (RFC 3339).
pub const META_LAST_SYNC: &str = "last_sync_at";

/// How long one boot answered from the cache keeps the indicator yellow
/// (a live answer turns it green at once).
pub const CACHED_ANSWER_WINDOW: time::Duration = time::Duration::minutes(10);

/// Where the snapshot's numbers come from.
pub struct StatusSource {
    pub site_id: String,
    pub data_dir: PathBuf,
    pub started: Instant,
    pub port: Arc<ControllerPort>,
    pub nodes: NodeCache,
    pub store: Store,
    pub outbox: Arc<Outbox>,
    pub boots: Arc<BootStats>,
    /// The content cache, when a controller is configured.
    pub cache: Option<Arc<crate::content::ContentCache>>,
    /// Whether ProxyDHCP answers (DESIGN §13).
    pub proxy_dhcp: bool,
    /// The last disk reads, kept while the store has not been written.
    pub reads: ReadsMemo,
}

/// How long a disk-usage figure is kept when nothing else moved: files
/// outside the store (the content cache, logs) fill the disk too.
const DISK_USAGE_FOR: Duration = Duration::from_secs(1);

/// The snapshot's disk reads as of a store generation. A status request
/// that finds the store unwritten since reads nothing from the disk: its
/// cost does not grow with the queue, the conflicts or the fleet, and an
/// open status page polled by many browsers costs no disk I/O.
#[derive(Default)]
pub struct ReadsMemo {
    last: std::sync::Mutex<Option<(u64, Instant, DiskReads)>>,
}

impl ReadsMemo {
    fn current(&self, generation: u64) -> Option<DiskReads> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(g, at, _)| *g == generation && at.elapsed() < DISK_USAGE_FOR)
            .map(|(_, _, reads)| reads.clone())
    }

    fn keep(&self, generation: u64, reads: &DiskReads) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((generation, Instant::now(), reads.clone()));
    }
}

/// ProxyDHCP's requests so far (the counts `/metrics` has): answered by
/// client class, and the ones not answered by reason.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DhcpCounts {
    pub answered: std::collections::BTreeMap<String, u64>,
    pub not_answered: std::collections::BTreeMap<String, u64>,
}

impl DhcpCounts {
    fn from_metrics() -> DhcpCounts {
        let mut counts = DhcpCounts::default();
        for (_, class, result, count) in crate::metrics::metrics().dhcp_counts() {
            let (map, key) = if result == "answered" {
                (&mut counts.answered, class)
            } else {
                (&mut counts.not_answered, result)
            };
            *map.entry(key).or_default() += count;
        }
        counts
    }
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub site_id: String,
    pub taken_at: OffsetDateTime,
    pub mode: Mode,
    /// None standalone.
    pub link: Option<LinkState>,
    pub last_sync_at: Option<String>,
    pub nodes_cached: usize,
    pub queue: QueueStats,
    /// Open conflicts (DESIGN §8).
    pub conflicts_pending: u64,
    pub nodes_seen_last_hour: u64,
    pub active_boots: u64,
    /// The content cache's: requests served from a complete file, of all
    /// (0..1; 0 before any, and without a cache).
    pub cache_hit_rate: f64,
    pub cache: Option<crate::content::CacheStats>,
    /// None when ProxyDHCP is off.
    pub dhcp: Option<DhcpCounts>,
    pub disk_usage_percent: f64,
    /// False while the store cannot write (DESIGN §10 "Storage").
    pub store_writable: bool,
    /// Records found unreadable at start and moved aside.
    pub quarantined_records: u64,
    /// Online, but the latest boot (within [`CACHED_ANSWER_WINDOW`]) was
    /// answered from the cache: the controller is reachable yet gave no
    /// usable answer for it (an error, garbage, its deadline).
    pub answering_from_cache: bool,
    /// The site policy in force, each value with its origin (DESIGN §15).
    pub policy: serde_json::Value,
    /// Replay and syncs held by an operator.
    pub sync_paused: bool,
    pub uptime: Duration,
}

/// What a snapshot reads from the disk.
#[derive(Default, Clone)]
struct DiskReads {
    last_sync_at: Option<String>,
    queue: QueueStats,
    conflicts_pending: u64,
    quarantined_records: u64,
    disk: f64,
}

impl StatusSource {
    /// Every read that touches the disk, in one trip to a blocking thread:
    /// five trips (one each) cost more than the reads themselves under
    /// load (issue 24's profile of the status).
    async fn read_disk(&self) -> DiskReads {
        let (store, queue, data_dir) = (
            self.store.clone(),
            self.outbox.queue().clone(),
            self.data_dir.clone(),
        );
        tokio::task::spawn_blocking(move || DiskReads {
            last_sync_at: store.get_meta(META_LAST_SYNC).ok().flatten(),
            queue: queue.stats().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "queue counts unavailable");
                Default::default()
            }),
            conflicts_pending: crate::store::conflicts::open_count(queue.store()).unwrap_or_else(
                |e| {
                    tracing::warn!(error = %e, "conflict count unavailable");
                    0
                },
            ),
            quarantined_records: store.quarantined_count().unwrap_or(0),
            disk: disk_usage_percent(&data_dir).unwrap_or(0.0),
        })
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "status reads failed");
            DiskReads::default()
        })
    }

    pub async fn snapshot(&self) -> Snapshot {
        // The generation is taken before reading: a write that lands
        // during the reads moves it, and the next snapshot reads again.
        let generation = self.store.generation();
        let reads = match self.reads.current(generation) {
            Some(reads) => reads,
            None => {
                let reads = self.read_disk().await;
                self.reads.keep(generation, &reads);
                reads
            }
        };
        let DiskReads {
            last_sync_at,
            queue,
            conflicts_pending,
            quarantined_records,
            disk,
        } = reads;
        let queue = self.outbox.with_shed(queue);
        let cache = self.cache.as_ref().map(|c| c.stats());
        let now = OffsetDateTime::now_utc();
        Snapshot {
            site_id: self.site_id.clone(),
            taken_at: now,
            mode: self.port.mode(),
            link: self.port.link_state(),
            last_sync_at,
            nodes_cached: self.nodes.len(),
            queue,
            conflicts_pending,
            nodes_seen_last_hour: self.boots.nodes_seen_last_hour(),
            active_boots: self.boots.active_boots(),
            cache_hit_rate: cache.as_ref().map_or(0.0, |c| c.hit_rate()),
            cache,
            dhcp: self.proxy_dhcp.then(DhcpCounts::from_metrics),
            disk_usage_percent: disk,
            store_writable: self.store.writable(),
            quarantined_records,
            answering_from_cache: self.boots.latest_source().is_some_and(|(source, at)| {
                source == crate::model::boot::Source::Cache.as_str()
                    && now - at < CACHED_ANSWER_WINDOW
            }),
            policy: crate::policy::status_json(&self.outbox.site_policy().current()),
            sync_paused: self.outbox.pause().is_paused(),
            uptime: self.started.elapsed(),
        }
    }
}

fn stamp(t: Option<OffsetDateTime>) -> Option<String> {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
}

impl Snapshot {
    /// `GET /api/v1/status` (DESIGN §5).
    pub fn to_json(&self) -> serde_json::Value {
        let link = self.link.as_ref();
        serde_json::json!({
            "site_id": self.site_id,
            "mode": self.mode.as_str(),
            "indicator": self.indicator(),
            "online": self.mode == Mode::Online,
            "last_online_at": stamp(link.and_then(|l| l.last_online_at)),
            "offline_since": stamp(link.and_then(|l| l.offline_since)),
            "offline_duration_s": link
                .and_then(|l| l.offline_duration(self.taken_at))
                .map(|d| d.as_secs())
                .unwrap_or(0),
            "last_sync_at": self.last_sync_at,
            "nodes_cached": self.nodes_cached,
            "queue": {
                "pending": self.queue.pending,
                "in_flight": self.queue.in_flight,
                "failed": self.queue.failed,
                "conflict": self.queue.conflict,
                "dropped_events": self.queue.dropped_events,
                "node_items": self.queue.node_items,
                "shed_node_items": self.queue.shed_node_items,
            },
            "store_writable": self.store_writable,
            "quarantined_records": self.quarantined_records,
            "conflicts_pending": self.conflicts_pending,
            "cache": self.cache,
            "dhcp": self.dhcp,
            "policy": self.policy,
            "sync_paused": self.sync_paused,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.uptime.as_secs(),
        })
    }

    /// DESIGN §11's mode at a glance: green online, yellow online but
    /// answering from the cache, red offline, grey standalone.
    pub fn indicator(&self) -> &'static str {
        match self.mode {
            Mode::Standalone => "grey",
            Mode::Offline { .. } => "red",
            Mode::Online if self.answering_from_cache => "yellow",
            Mode::Online => "green",
        }
    }

    /// Items still to send, and items that need an operator.
    pub fn pending_sync_items(&self) -> u64 {
        self.queue.pending + self.queue.in_flight
    }

    pub fn failed_sync_items(&self) -> u64 {
        self.queue.failed + self.queue.conflict
    }

    pub fn last_outage(&self) -> Option<Duration> {
        self.link.as_ref().and_then(|l| l.last_outage)
    }
}

/// Percentage of the filesystem holding `path` that is in use.
pub fn disk_usage_percent(path: &std::path::Path) -> Option<f64> {
    crate::store::disk::usage_percent(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_kept_only_for_the_generation_they_were_taken_at() {
        let memo = ReadsMemo::default();
        assert!(memo.current(7).is_none());
        let reads = DiskReads {
            conflicts_pending: 3,
            ..DiskReads::default()
        };
        memo.keep(7, &reads);
        assert_eq!(memo.current(7).map(|r| r.conflicts_pending), Some(3));
        assert!(memo.current(8).is_none(), "a write since: read again");
    }

    #[test]
    fn disk_usage_is_a_percentage() {
        let pct = disk_usage_percent(std::path::Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&pct));
    }
}
