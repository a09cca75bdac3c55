//! Room in the cache: least-recently-used eviction above `cache.max_bytes`,
//! and the room a fill reserves for its announced length before it writes
//! (DESIGN §12).

use super::*;

impl ContentCache {
    /// Evicts unpinned files, least recently used first, until the cache
    /// is within `cache.max_bytes`.
    pub(super) async fn evict_over_limit(&self) {
        // Room set aside for fills under way counts as taken.
        let limit = self
            .max_bytes()
            .saturating_sub(self.reserved.load(Ordering::Acquire));
        let victims: Vec<Entry> = {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            let mut total: u64 = entries.values().map(|e| e.size).sum();
            if total <= limit {
                return;
            }
            let mut unpinned: Vec<&Entry> = entries.values().filter(|e| !e.pinned).collect();
            unpinned.sort_by_key(|e| e.last_used);
            let mut victims = Vec::new();
            for entry in unpinned {
                if total <= limit {
                    break;
                }
                total -= entry.size;
                victims.push(entry.clone());
            }
            if total > limit {
                tracing::warn!(
                    bytes = total,
                    max = self.max_bytes(),
                    "content cache over its size with pinned files alone"
                );
            }
            victims
        };
        if victims.is_empty() {
            return;
        }
        let paths: Vec<String> = victims.iter().map(|e| e.path.clone()).collect();
        if let Err(e) = self.forget(&paths).await {
            tracing::warn!(error = %e, "eviction not written; files kept");
            return;
        }
        self.counters
            .evictions
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
        for entry in victims {
            tracing::info!(path = %entry.path, bytes = entry.size, "evicted from the content cache");
        }
    }

    /// Sets aside `bytes` for a fill (DESIGN §12), evicting unpinned files
    /// least recently used to make room; an error starting with
    /// [`UNCACHEABLE`] when the file cannot fit beside the pinned files and
    /// the other fills' room, or the disk would be left without the
    /// store's reserve.
    pub(super) async fn reserve(&self, bytes: u64) -> Result<Reservation, String> {
        let max = self.max_bytes();
        {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            let pinned: u64 = entries.values().filter(|e| e.pinned).map(|e| e.size).sum();
            // Checked and taken at once: two fills never both get the
            // last of the room.
            let taken = self
                .reserved
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                    (pinned.saturating_add(r).saturating_add(bytes) <= max).then_some(r + bytes)
                });
            if let Err(reserved) = taken {
                return Err(format!(
                    "{UNCACHEABLE}: {bytes} bytes do not fit under cache.max_bytes = {max} \
                     ({pinned} pinned, {reserved} set aside for fills under way)"
                ));
            }
        }
        let room = Reservation {
            reserved: self.reserved.clone(),
            bytes,
        };
        self.evict_over_limit().await;
        if let Some(available) = crate::store::disk::available_bytes(&self.files) {
            let cached_beyond_limit = {
                let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
                let cached: u64 = entries.values().map(|e| e.size).sum();
                cached.saturating_sub(max.saturating_sub(self.reserved.load(Ordering::Acquire)))
            };
            if available < bytes.saturating_add(STORE_RESERVE) + cached_beyond_limit {
                return Err(format!(
                    "{UNCACHEABLE}: {bytes} bytes would leave the disk under the {STORE_RESERVE} \
                     bytes kept for the store's writes ({available} available)"
                ));
            }
        }
        Ok(room)
    }

    /// What an unannounced fill may still take: under `cache.max_bytes`,
    /// and on the disk beside the store's reserve.
    pub(super) fn room_left(&self) -> u64 {
        let under_limit = {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            let cached: u64 = entries.values().map(|e| e.size).sum();
            self.max_bytes()
                .saturating_sub(cached)
                .saturating_sub(self.reserved.load(Ordering::Acquire))
        };
        let on_disk = crate::store::disk::available_bytes(&self.files)
            .map_or(u64::MAX, |free| free.saturating_sub(STORE_RESERVE));
        under_limit.min(on_disk)
    }
}
