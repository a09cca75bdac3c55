//! The content cache (DESIGN §12): verified copies of the controller's
//! files under `<data_dir>/content`, so installs read kernels and initrds
//! at LAN speed and, for `offline_safe` workflows, without the controller.
//!
//! * `files/<uuid>`: complete, verified files, each named by an entry of
//!   the index (`store/content.rs`, in redb).
//! * `tmp/<uuid>`: fills under way. A fill is renamed into `files/` only
//!   when its length and checksum are right, and its entry is written
//!   after the rename: a crash leaves at most a temporary file or a file
//!   without an entry, both removed at the next start, never an entry
//!   naming a partial file.
//!
//! A miss starts one fill however many clients ask (`fill.rs`); each
//! client reads the bytes as they arrive. Above `cache.max_bytes` the
//! least recently used unpinned files are evicted.

mod download;
pub mod fill;
mod prefetch;
mod room;
#[cfg(test)]
mod tests;

use crate::central::CentralError;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::central::port::ControllerPort;
use crate::central::{FileAnswer, FileRequest, RemoteFile};
use crate::config::CacheConfig;
use crate::store::StoreError;
use crate::store::content::{ContentIndex, Entry};
use fill::{Fill, FillWriter, Progress};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("content cache directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start a fill of {path}: {source}")]
    Temp {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no cached file {0}")]
    NotCached(String),
    /// An entry whose file cannot be opened (removed behind the agent's
    /// back).
    #[error("cannot open the cached copy of {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is pinned (a file of an offline_safe workflow)")]
    Pinned(String),
    /// What nodes may make the agent fetch is bounded (DESIGN §12): too
    /// many fills at once, or too many misses from this client.
    #[error("busy: {0}; retry")]
    Busy(String),
}

/// What a request for a file finds.
pub enum Lookup {
    /// Complete: the file, opened while the entry was looked up (a
    /// revalidation or an eviction that removes it afterwards cannot take
    /// it from this client); `sha256` when the controller's checksum
    /// verified it.
    Hit {
        file: std::fs::File,
        sha256: Option<String>,
    },
    /// Being fetched (by this request or an earlier one).
    Filling(Arc<Fill>),
    /// The controller answered 404 for it within `cache.negative_ttl`.
    Missing,
}

/// Who a fill is for: a client's miss (bounded by `cache.max_fills`,
/// abandoned when no client waits any more), a revalidation, or a
/// background prefetch (paced, always finished).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FillKind {
    Client,
    Revalidation,
    Prefetch,
}

/// The reason a client's fill stopped when every client had gone.
const ABANDONED: &str = "abandoned: no client waits for it any more";

/// 404s remembered at most (the oldest expire first; past this, a miss is
/// simply not remembered).
const MISSING_REMEMBERED: usize = 4096;

/// `GET /api/v1/cache/stats`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub pinned: u64,
    pub pinned_bytes: u64,
    pub max_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    /// Fills started (each a controller download), and of those failed.
    pub fills: u64,
    pub fill_failures: u64,
    pub evictions: u64,
    pub filling: u64,
}

impl CacheStats {
    /// Requests served from a complete file, of all requests; 0 before any.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    fills: AtomicU64,
    fill_failures: AtomicU64,
    evictions: AtomicU64,
}

pub struct ContentCache {
    files: PathBuf,
    tmp: PathBuf,
    /// The index of what is kept (the store's table, behind its trait).
    index: Arc<dyn ContentIndex>,
    port: Arc<ControllerPort>,
    settings: CacheConfig,
    entries: RwLock<HashMap<String, Entry>>,
    /// Fills under way, by path. Changed only under this lock together
    /// with `entries`, so a request sees a path either filling or cached.
    fills: Mutex<HashMap<String, Arc<Fill>>>,
    counters: Counters,
    /// Paces background prefetches together at `cache.prefetch_rate`.
    pace: Pace,
    /// Paths being revalidated now.
    revalidating: Mutex<std::collections::HashSet<String>>,
    /// One prefetch pass at a time (a sync that ends while one runs
    /// leaves its list for the next pass).
    prefetching: tokio::sync::Mutex<()>,
    /// Paths the controller answered 404 for, and when (DESIGN §12).
    missing: Mutex<HashMap<String, std::time::Instant>>,
    /// Misses each client address may cause (`cache.misses_per_client`).
    client_misses: crate::ratelimit::KeyedRate<std::net::IpAddr>,
    /// Fills that client misses started and that have not ended.
    client_fills: Arc<std::sync::atomic::AtomicUsize>,
    /// Bytes set aside for fills under way (their announced lengths):
    /// counted with the cached files against `cache.max_bytes`.
    reserved: Arc<AtomicU64>,
    /// The site policy: what to fetch ahead, the controller's size and
    /// retention (DESIGN §15).
    site_policy: Arc<crate::policy::PolicyCell>,
}

/// Room on the data directory's filesystem the cache never takes: the
/// store's writes (the queue, the node cache) come first (DESIGN §12).
pub const STORE_RESERVE: u64 = 64 << 20;

/// The start of the reason a fill gives up on a file it must not keep
/// (larger than the room under `cache.max_bytes` or on the disk): such a
/// file is streamed through to its clients instead.
pub const UNCACHEABLE: &str = "cannot be kept in the content cache";

/// Room set aside for one fill; given back when the fill ends (by then a
/// kept file is counted among the entries).
struct Reservation {
    reserved: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reserved.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A shared byte pace: each caller reserves its bytes' share of time.
struct Pace {
    rate: u64,
    next_free: Mutex<tokio::time::Instant>,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        Pace {
            rate: rate.max(1),
            next_free: Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn take(&self, bytes: u64) {
        let wait = {
            let mut free = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let now = tokio::time::Instant::now();
            let start = (*free).max(now);
            *free = start + std::time::Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            start - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Prefetches run this many fills at once.
const PREFETCH_FILLS: usize = 2;

/// Bytes written to the temporary file at a time (readers see progress
/// at this grain, or sooner when the controller pauses).
const WRITE_BATCH: usize = 256 * 1024;
/// A broken controller stream is resumed this many times.
const RESUMES: u32 = 3;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn dir_error(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Dir {
        path: path.to_path_buf(),
        source,
    }
}

impl ContentCache {
    /// Runs `work` on the index off the async threads (redb blocks).
    async fn index_call<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn ContentIndex) -> Result<T, StoreError> + Send + 'static,
    {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || work(index.as_ref()))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Opens the cache under `dir`, after the start-up pass: leftover
    /// temporary files are removed, and so are files without an entry
    /// and entries without their whole file.
    pub fn open(
        dir: &Path,
        index: Arc<dyn ContentIndex>,
        port: Arc<ControllerPort>,
        settings: CacheConfig,
    ) -> Result<ContentCache, CacheError> {
        let files = dir.join("files");
        let tmp = dir.join("tmp");
        for path in [&files, &tmp] {
            std::fs::create_dir_all(path).map_err(dir_error(path))?;
        }
        let mut leftovers = 0;
        for entry in std::fs::read_dir(&tmp).map_err(dir_error(&tmp))? {
            let entry = entry.map_err(dir_error(&tmp))?;
            if std::fs::remove_file(entry.path()).is_ok() {
                leftovers += 1;
            }
        }
        let (entries, unreadable) = index.load_entries()?;
        let mut kept = HashMap::new();
        let mut dropped = unreadable;
        for entry in entries {
            let whole = std::fs::metadata(files.join(&entry.file))
                .is_ok_and(|m| m.is_file() && m.len() == entry.size);
            if whole {
                kept.insert(entry.path.clone(), entry);
            } else {
                tracing::warn!(path = %entry.path, "cached file missing or cut short; entry dropped");
                dropped.push(entry.path);
            }
        }
        if !dropped.is_empty() {
            index.remove_entries(&dropped)?;
        }
        let named: std::collections::HashSet<&str> =
            kept.values().map(|e| e.file.as_str()).collect();
        for entry in std::fs::read_dir(&files).map_err(dir_error(&files))? {
            let entry = entry.map_err(dir_error(&files))?;
            let name = entry.file_name();
            if !named.contains(name.to_string_lossy().as_ref())
                && std::fs::remove_file(entry.path()).is_ok()
            {
                leftovers += 1;
            }
        }
        if leftovers > 0 {
            tracing::info!(
                leftovers,
                "content cache: unfinished or unindexed files removed"
            );
        }
        Ok(ContentCache {
            files,
            tmp,
            index,
            port,
            entries: RwLock::new(kept),
            fills: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            pace: Pace::new(settings.prefetch_rate),
            revalidating: Mutex::new(std::collections::HashSet::new()),
            prefetching: tokio::sync::Mutex::new(()),
            missing: Mutex::new(HashMap::new()),
            client_misses: crate::ratelimit::KeyedRate::new(settings.misses_per_client),
            client_fills: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            reserved: Arc::new(AtomicU64::new(0)),
            settings,
            site_policy: Arc::new(crate::policy::PolicyCell::with(
                crate::model::policy::SitePolicy::defaults(),
                Default::default(),
            )),
        })
    }

    /// Follows the site policy in force (DESIGN §15) instead of the
    /// defaults.
    pub fn with_site_policy(mut self, policy: Arc<crate::policy::PolicyCell>) -> ContentCache {
        self.site_policy = policy;
        self
    }

    /// The cache's size bound: `cache.max_bytes`, or the controller's
    /// `cache_max_size_gb` where that is smaller (the site's disk was
    /// sized for the local key; the controller may ask for less, never
    /// more).
    pub fn max_bytes(&self) -> u64 {
        match self.site_policy.cache_max_bytes() {
            Some(limit) => limit.min(self.settings.max_bytes),
            None => self.settings.max_bytes,
        }
    }

    /// A complete copy of `path`, or the fill that brings it (started
    /// here if none is under way), for a request from `client`; `path` is
    /// a sanitised relative path. A miss is
    /// bounded (DESIGN §12) by the 404s remembered, the client's miss rate
    /// and the fills under way.
    pub fn lookup_for(
        self: &Arc<Self>,
        path: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<Lookup, CacheError> {
        let mut fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
        let hit = {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            entries.get_mut(path).map(|entry| {
                let at = now();
                entry.last_used = at;
                let due = at - entry.validated_at
                    >= time::Duration::try_from(self.settings.revalidate_interval)
                        .unwrap_or(time::Duration::MAX);
                // Opened under the lock: a replaced or evicted file is
                // removed only after its entry left the map.
                let opened = std::fs::File::open(self.files.join(&entry.file));
                let sha256 = entry.verified.then(|| entry.sha256.clone());
                (opened, sha256, due.then(|| entry.clone()))
            })
        };
        if let Some((opened, sha256, due)) = hit {
            let file = opened.map_err(|source| CacheError::Open {
                path: path.to_string(),
                source,
            })?;
            let hit = Lookup::Hit { file, sha256 };
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            crate::metrics::metrics().content_request("hit");
            if let Some(entry) = due {
                self.revalidate(entry, &mut fills);
            }
            return Ok(hit);
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        crate::metrics::metrics().content_request("miss");
        if let Some(fill) = fills.get(path) {
            // A client waits for it now: no longer paced as a prefetch.
            fill.make_urgent();
            return Ok(Lookup::Filling(fill.clone()));
        }
        if self.remembered_missing(path) {
            crate::metrics::metrics().content_request("negative");
            return Ok(Lookup::Missing);
        }
        if let Some(client) = client
            && !self.client_misses.admit(client)
        {
            crate::metrics::metrics().content_request("refused");
            return Err(CacheError::Busy(format!(
                "{client} made more than cache.misses_per_client = {} misses this minute",
                self.settings.misses_per_client
            )));
        }
        if self.client_fills.load(Ordering::Relaxed) >= self.settings.max_fills {
            crate::metrics::metrics().content_request("refused");
            return Err(CacheError::Busy(format!(
                "cache.max_fills = {} fills under way",
                self.settings.max_fills
            )));
        }
        let fill = self.start_fill(path, false, FillKind::Client, &mut fills)?;
        Ok(Lookup::Filling(fill))
    }

    /// Did the controller answer 404 for `path` within `negative_ttl`?
    fn remembered_missing(&self, path: &str) -> bool {
        let mut missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        match missing.get(path) {
            Some(at) if at.elapsed() < self.settings.negative_ttl => true,
            Some(_) => {
                missing.remove(path);
                false
            }
            None => false,
        }
    }

    fn remember_missing(&self, path: &str) {
        let mut missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        if missing.len() >= MISSING_REMEMBERED {
            let ttl = self.settings.negative_ttl;
            missing.retain(|_, at| at.elapsed() < ttl);
        }
        if missing.len() < MISSING_REMEMBERED {
            missing.insert(path.to_string(), std::time::Instant::now());
        }
    }

    /// The complete copy of `path`, opened, if cached (not counted as a
    /// hit: for the request whose miss just filled it). Opened under the
    /// lock, as a hit is.
    pub fn open_cached(&self, path: &str) -> Option<std::fs::File> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(path)?;
        std::fs::File::open(self.files.join(&entry.file)).ok()
    }

    /// DESIGN §12 revalidation, at most every `cache.revalidate_interval`
    /// and only online: the cached copy is served meanwhile; the
    /// controller is asked with the entry's validator (`If-None-Match`).
    /// Unchanged (304, or the same checksum): the entry is confirmed.
    /// Changed: a new fill replaces the entry once it is verified.
    fn revalidate(self: &Arc<Self>, entry: Entry, fills: &mut HashMap<String, Arc<Fill>>) {
        if self.port.mode() != crate::model::mode::Mode::Online || fills.contains_key(&entry.path) {
            return;
        }
        if !self
            .revalidating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(entry.path.clone())
        {
            return;
        }
        let cache = self.clone();
        crate::tasks::spawn_until_shutdown(async move {
            let path = entry.path.clone();
            let changed = cache.check_with_controller(&entry).await;
            match changed {
                Ok(false) => cache.confirm(&path).await,
                Ok(true) => {
                    tracing::info!(path, "file changed at the controller; fetching it again");
                    let mut fills = cache.fills.lock().unwrap_or_else(|e| e.into_inner());
                    if !fills.contains_key(&path)
                        && let Err(e) = cache.start_fill(
                            &path,
                            entry.pinned,
                            FillKind::Revalidation,
                            &mut fills,
                        )
                    {
                        tracing::warn!(path, error = %e, "changed file not fetched again");
                    }
                }
                Err(e) => {
                    tracing::info!(path, error = %e, "revalidation failed; the cached copy stays")
                }
            }
            cache
                .revalidating
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&path);
        });
    }

    /// Has the controller's copy changed from `entry`'s?
    async fn check_with_controller(&self, entry: &Entry) -> Result<bool, String> {
        let validator = entry
            .etag
            .clone()
            .unwrap_or_else(|| format!("\"sha256:{}\"", entry.sha256));
        let request = FileRequest {
            from: 0,
            if_none_match: Some(validator),
        };
        match self.port.fetch_file(&entry.path, request).await {
            Ok(FileAnswer::NotModified) => Ok(false),
            // Gone at the controller: what is cached stays (an operator
            // evicts it; a pinned install must not lose its file).
            Ok(FileAnswer::Missing) => Ok(false),
            Ok(FileAnswer::Body(remote)) => Ok(match (&remote.sha256, &remote.etag) {
                (Some(sum), _) => sum.trim_start_matches("sha256:") != entry.sha256,
                (None, Some(etag)) => Some(etag) != entry.etag.as_ref(),
                // Neither: only a different length tells.
                (None, None) => remote.total.is_some_and(|t| t != entry.size),
            }),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The controller confirmed the cached copy: noted in the entry.
    async fn confirm(&self, path: &str) {
        let updated = {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            entries.get_mut(path).map(|e| {
                e.validated_at = now();
                e.clone()
            })
        };
        if let Some(entry) = updated
            && let Err(e) = self.index_call(move |i| i.put_entries(&[entry])).await
        {
            tracing::warn!(path, error = %e, "revalidation not written");
        }
    }

    /// Is `path` cached complete?
    pub fn has(&self, path: &str) -> bool {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(path)
    }

    fn start_fill(
        self: &Arc<Self>,
        path: &str,
        pinned: bool,
        kind: FillKind,
        fills: &mut HashMap<String, Arc<Fill>>,
    ) -> Result<Arc<Fill>, CacheError> {
        let paced = kind == FillKind::Prefetch;
        let name = uuid::Uuid::new_v4().simple().to_string();
        let temp = self.tmp.join(&name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|source| CacheError::Temp {
                path: path.to_string(),
                source,
            })?;
        let (fill, writer) = Fill::new(path.to_string(), file);
        if !paced {
            fill.make_urgent();
        }
        fills.insert(path.to_string(), fill.clone());
        self.counters.fills.fetch_add(1, Ordering::Relaxed);
        let cache = self.clone();
        let handle = fill.clone();
        let path = path.to_string();
        let counted = (kind == FillKind::Client).then(|| {
            self.client_fills.fetch_add(1, Ordering::Relaxed);
            self.client_fills.clone()
        });
        // Its own task: a client that goes away does not stop it (but
        // when every client has gone, a client's fill is abandoned).
        crate::tasks::spawn_until_shutdown(async move {
            let abandonable = kind == FillKind::Client;
            let outcome = cache.run_fill(&path, &handle, &writer, abandonable).await;
            if let Some(counted) = counted {
                counted.fetch_sub(1, Ordering::Relaxed);
            }
            cache
                .finish_fill(&path, name, temp, pinned, outcome, writer)
                .await;
        });
        Ok(fill)
    }

    /// A file the cache cannot keep, straight from the controller to one
    /// client. Only a client whose fill was admitted (under
    /// `cache.max_fills` and its miss rate) and then found the file too
    /// large gets here, so this is bounded by those.
    pub async fn pass_through(&self, path: &str) -> Result<crate::central::RemoteFile, CacheError> {
        let request = FileRequest {
            from: 0,
            if_none_match: None,
        };
        crate::metrics::metrics().content_request("passed_through");
        let mut tries = 0;
        loop {
            match self.port.fetch_file(path, request.clone()).await {
                Ok(FileAnswer::Body(remote)) => return Ok(remote),
                Ok(_) => return Err(CacheError::NotCached(path.to_string())),
                Err(CentralError::Unreachable(_)) if tries < RESUMES => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => return Err(CacheError::Busy(format!("the controller: {e}"))),
            }
        }
    }

    /// Removes entries, then their files (an entry never names a missing
    /// file; a file left by a crash in between is removed at start).
    async fn forget(&self, paths: &[String]) -> Result<(), CacheError> {
        let removed: Vec<Entry> = {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            paths.iter().filter_map(|p| entries.remove(p)).collect()
        };
        let gone = paths.to_vec();
        if let Err(e) = self.index_call(move |i| i.remove_entries(&gone)).await {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            for entry in removed {
                entries.insert(entry.path.clone(), entry);
            }
            return Err(e.into());
        }
        for entry in removed {
            let _ = tokio::fs::remove_file(self.files.join(&entry.file)).await;
        }
        Ok(())
    }

    /// `DELETE /api/v1/cache/{path}`: one file (not a pinned one).
    pub async fn remove(&self, paths: &[String]) -> Result<(), CacheError> {
        // Every path is checked before any is removed: a pinned or
        // uncached one refuses the whole request, as on a stopped agent.
        {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            for path in paths {
                match entries.get(path) {
                    None => return Err(CacheError::NotCached(path.clone())),
                    Some(entry) if entry.pinned => return Err(CacheError::Pinned(path.clone())),
                    Some(_) => {}
                }
            }
        }
        self.forget(paths).await
    }

    /// `DELETE /api/v1/cache`: every unpinned file; the paths removed.
    pub async fn clear_unpinned(&self) -> Result<Vec<String>, CacheError> {
        let paths: Vec<String> = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|e| !e.pinned)
            .map(|e| e.path.clone())
            .collect();
        self.forget(&paths).await?;
        Ok(paths)
    }

    /// Every entry, by path.
    pub fn list(&self) -> Vec<Entry> {
        let mut all: Vec<Entry> = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.path.cmp(&b.path));
        all
    }

    pub fn stats(&self) -> CacheStats {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let c = &self.counters;
        CacheStats {
            entries: entries.len() as u64,
            bytes: entries.values().map(|e| e.size).sum(),
            pinned: entries.values().filter(|e| e.pinned).count() as u64,
            pinned_bytes: entries.values().filter(|e| e.pinned).map(|e| e.size).sum(),
            max_bytes: self.max_bytes(),
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            fills: c.fills.load(Ordering::Relaxed),
            fill_failures: c.fill_failures.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            filling: self.fills.lock().unwrap_or_else(|e| e.into_inner()).len() as u64,
        }
    }
}

/// With the agent stopped (the command line): the index's entries.
pub fn stored_entries(index: &dyn ContentIndex) -> Result<Vec<Entry>, CacheError> {
    let (mut entries, _) = index.load_entries()?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

/// With the agent stopped: removes `paths` (all unpinned ones if None)
/// from the index and `dir`; the paths removed.
pub fn evict_stored(
    index: &dyn ContentIndex,
    dir: &Path,
    paths: Option<Vec<String>>,
) -> Result<Vec<String>, CacheError> {
    let entries = stored_entries(index)?;
    let victims: Vec<Entry> = match paths {
        None => entries.into_iter().filter(|e| !e.pinned).collect(),
        Some(paths) => {
            let mut victims = Vec::new();
            for path in paths {
                match entries.iter().find(|e| e.path == path) {
                    None => return Err(CacheError::NotCached(path)),
                    Some(e) if e.pinned => return Err(CacheError::Pinned(path)),
                    Some(e) => victims.push(e.clone()),
                }
            }
            victims
        }
    };
    let gone: Vec<String> = victims.iter().map(|e| e.path.clone()).collect();
    index.remove_entries(&gone)?;
    for entry in &victims {
        let _ = std::fs::remove_file(dir.join("files").join(&entry.file));
    }
    Ok(gone)
}

/// The fill's outcome when the controller has no such file.
const MISSING: &str = "not at the controller";

/// A fill's result, once its length and checksum were checked.
struct Verified {
    size: u64,
    sha256: String,
    verified: bool,
    etag: Option<String>,
    /// Held until the entry is indexed.
    _room: Option<Reservation>,
}

/// Writes `buffer` at `at`; the new end.
async fn flush(file: &Arc<std::fs::File>, buffer: &mut Vec<u8>, at: u64) -> Result<u64, String> {
    if buffer.is_empty() {
        return Ok(at);
    }
    let bytes = std::mem::take(buffer);
    let len = bytes.len() as u64;
    let file = file.clone();
    let result = tokio::task::spawn_blocking(move || file.write_all_at(&bytes, at))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| format!("cannot write the cached file: {e}")));
    buffer.reserve(WRITE_BATCH);
    result.map(|()| at + len)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
