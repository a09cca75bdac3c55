//! The cache over an index that is not the store's: the seam a test, or a
//! second agent sharing one cache, uses.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use super::*;
use crate::central::port::ControllerPort;
use crate::store::Store;
use crate::store::nodes::NodeCache;

/// An index in memory.
#[derive(Default)]
struct MemoryIndex(Mutex<BTreeMap<String, Entry>>);

impl ContentIndex for MemoryIndex {
    fn load_entries(&self) -> Result<(Vec<Entry>, Vec<String>), StoreError> {
        Ok((
            self.0.lock().unwrap().values().cloned().collect(),
            Vec::new(),
        ))
    }

    fn put_entries(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let mut rows = self.0.lock().unwrap();
        for entry in entries {
            rows.insert(entry.path.clone(), entry.clone());
        }
        Ok(())
    }

    fn remove_entries(&self, paths: &[String]) -> Result<(), StoreError> {
        let mut rows = self.0.lock().unwrap();
        for path in paths {
            rows.remove(path);
        }
        Ok(())
    }
}

fn entry(path: &str, file: &str, size: u64, pinned: bool) -> Entry {
    let at = OffsetDateTime::UNIX_EPOCH;
    Entry {
        path: path.into(),
        file: file.into(),
        size,
        sha256: String::new(),
        verified: false,
        etag: None,
        fetched_at: at,
        validated_at: at,
        last_used: at,
        pinned,
    }
}

fn settings() -> CacheConfig {
    CacheConfig {
        max_bytes: 1 << 30,
        prefetch_rate: 1 << 20,
        revalidate_interval: Duration::from_secs(3600),
        max_fills: 4,
        misses_per_client: 60,
        negative_ttl: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn the_cache_keeps_its_index_behind_the_trait() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data")).unwrap();
    let port = Arc::new(ControllerPort::standalone(
        NodeCache::load(store).unwrap(),
        "site".into(),
        16,
    ));
    let cache_dir = dir.path().join("content");
    std::fs::create_dir_all(cache_dir.join("files")).unwrap();
    std::fs::write(cache_dir.join("files").join("a"), b"1234").unwrap();
    std::fs::write(cache_dir.join("files").join("b"), b"12").unwrap();
    std::fs::write(cache_dir.join("files").join("stray"), b"x").unwrap();
    let index = Arc::new(MemoryIndex::default());
    index
        .put_entries(&[
            entry("debian/linux", "a", 4, false),
            entry("debian/initrd.gz", "b", 2, true),
            // Its file is missing: dropped at open, from this index too.
            entry("debian/gone", "c", 9, false),
        ])
        .unwrap();

    let cache = ContentCache::open(&cache_dir, index.clone(), port, settings()).unwrap();
    let listed: Vec<String> = cache.list().into_iter().map(|e| e.path).collect();
    assert_eq!(listed, ["debian/initrd.gz", "debian/linux"]);
    assert!(!cache_dir.join("files").join("stray").exists());
    assert_eq!(index.0.lock().unwrap().len(), 2);

    // A pinned path refuses the whole removal: nothing goes.
    let both = ["debian/linux".to_string(), "debian/initrd.gz".to_string()];
    assert!(matches!(
        cache.remove(&both).await,
        Err(CacheError::Pinned(p)) if p == "debian/initrd.gz"
    ));
    assert_eq!(index.0.lock().unwrap().len(), 2);
    assert!(cache_dir.join("files").join("a").exists());

    // An eviction reaches the index it was given.
    assert_eq!(cache.clear_unpinned().await.unwrap(), ["debian/linux"]);
    let left: Vec<String> = index.0.lock().unwrap().keys().cloned().collect();
    assert_eq!(left, ["debian/initrd.gz"]);
    assert!(!cache_dir.join("files").join("a").exists());
}

#[test]
fn a_stopped_agents_eviction_uses_the_same_index() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("files")).unwrap();
    std::fs::write(dir.path().join("files").join("a"), b"1").unwrap();
    let index = MemoryIndex::default();
    index
        .put_entries(&[entry("x", "a", 1, false), entry("y", "b", 1, true)])
        .unwrap();
    assert!(matches!(
        evict_stored(&index, dir.path(), Some(vec!["y".into()])),
        Err(CacheError::Pinned(_))
    ));
    assert_eq!(evict_stored(&index, dir.path(), None).unwrap(), ["x"]);
    assert_eq!(stored_entries(&index).unwrap().len(), 1);
    assert!(!dir.path().join("files").join("a").exists());
}

/// The CI failure of 2026-12-03 (`a_changed_file_replaces_the_cached_one…`
/// saw a 500): a hit named a path, and the revalidation that replaced the
/// file removed the old copy before the request opened it. A hit is now
/// the open file: removing the entry and its file afterwards, as a
/// replacement or an eviction does, leaves this client its bytes.
#[tokio::test]
async fn a_hit_keeps_its_bytes_when_the_file_is_replaced_or_evicted_after() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data")).unwrap();
    let port = Arc::new(ControllerPort::standalone(
        NodeCache::load(store).unwrap(),
        "site".into(),
        16,
    ));
    let cache_dir = dir.path().join("content");
    std::fs::create_dir_all(cache_dir.join("files")).unwrap();
    std::fs::write(cache_dir.join("files").join("a"), b"first").unwrap();
    let index = Arc::new(MemoryIndex::default());
    index
        .put_entries(&[entry("debian/linux", "a", 5, false)])
        .unwrap();
    let cache = Arc::new(ContentCache::open(&cache_dir, index, port, settings()).unwrap());

    let Ok(Lookup::Hit { mut file, .. }) = cache.lookup_for("debian/linux", None) else {
        panic!("a hit");
    };
    let after = cache.open_cached("debian/linux");
    assert!(after.is_some());
    assert_eq!(
        cache.clear_unpinned().await.unwrap(),
        ["debian/linux"],
        "evicted"
    );
    assert!(!cache_dir.join("files").join("a").exists());
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes, b"first");
    let mut bytes = Vec::new();
    after.unwrap().read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes, b"first");
    assert!(cache.open_cached("debian/linux").is_none());
}

/// DESIGN §15 retention, with the time given (no waiting days): an
/// unpinned file unused past the retention goes, a recent one and a
/// pinned old one stay; without a retention nothing goes. And the
/// controller's size bounds the cache only below `cache.max_bytes`.
#[tokio::test]
async fn retention_evicts_unused_unpinned_files_as_of_the_time_given() {
    use crate::model::policy::{ControllerPolicy, LocalPins, SitePolicy};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data")).unwrap();
    let port = Arc::new(ControllerPort::standalone(
        NodeCache::load(store.clone()).unwrap(),
        "site".into(),
        16,
    ));
    let cache_dir = dir.path().join("content");
    std::fs::create_dir_all(cache_dir.join("files")).unwrap();
    for file in ["old", "new", "kept"] {
        std::fs::write(cache_dir.join("files").join(file), b"12").unwrap();
    }
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(100);
    let used = |path: &str, file: &str, days_ago: i64, pinned: bool| Entry {
        last_used: now - time::Duration::days(days_ago),
        ..entry(path, file, 2, pinned)
    };
    let index = Arc::new(MemoryIndex::default());
    index
        .put_entries(&[
            used("old", "old", 8, false),
            used("new", "new", 6, false),
            used("kept", "kept", 30, true),
        ])
        .unwrap();
    let policy = Arc::new(crate::policy::PolicyCell::with(
        SitePolicy::defaults(),
        LocalPins::default(),
    ));
    let cache = ContentCache::open(&cache_dir, index.clone(), port, settings())
        .unwrap()
        .with_site_policy(policy.clone());
    assert_eq!(cache.expire_unused(now).await, 0, "no retention: kept");

    let said = ControllerPolicy {
        cache_retention: Some(Duration::from_secs(7 * 86_400)),
        cache_max_bytes: Some(1 << 20),
        ..ControllerPolicy::default()
    };
    policy.take(&store, &said, "registration").await;
    assert_eq!(cache.expire_unused(now).await, 1);
    let left: Vec<String> = index.0.lock().unwrap().keys().cloned().collect();
    assert_eq!(left, ["kept", "new"]);
    assert!(!cache_dir.join("files").join("old").exists());
    assert_eq!(cache.stats().evictions, 1);
    // 1 MiB from the controller, under the local 1 GiB.
    assert_eq!(cache.max_bytes(), 1 << 20);
    let larger = ControllerPolicy {
        cache_max_bytes: Some(1 << 40),
        ..ControllerPolicy::default()
    };
    policy.take(&store, &larger, "site record").await;
    assert_eq!(cache.max_bytes(), 1 << 30, "never above cache.max_bytes");
}
