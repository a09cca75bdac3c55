//! Fetching ahead: the files the workflows name, pinned for
//! `offline_safe` ones, fetched paced and a few at a time (DESIGN §12).

use super::*;

impl ContentCache {
    /// DESIGN §12 prefetch: `wanted` files (path, pinned) are fetched in
    /// the background, paced at `cache.prefetch_rate`, a few at a time;
    /// the pinned ones (of `offline_safe` workflows) are never evicted,
    /// and a file no longer wanted pinned is unpinned. Returns once the
    /// pass has ended; the counts of files fetched and failed.
    pub async fn prefetch(self: &Arc<Self>, wanted: Vec<(String, bool)>) -> (usize, usize) {
        let Ok(_one) = self.prefetching.try_lock() else {
            return (0, 0);
        };
        let pinned: std::collections::HashSet<String> = wanted
            .iter()
            .filter(|(_, pin)| *pin)
            .map(|(p, _)| p.clone())
            .collect();
        self.set_pins(&pinned, true).await;
        let counts = self.fetch_paced(wanted).await;
        // A file pinned while a client's fill of it ran was kept unpinned.
        self.set_pins(&pinned, false).await;
        counts
    }

    /// Pins exactly `pinned` (`exact`: and unpins the rest), in memory
    /// and in the index.
    async fn set_pins(&self, pinned: &std::collections::HashSet<String>, exact: bool) {
        let changed: Vec<Entry> = {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            entries
                .values_mut()
                .filter(|e| {
                    let want = pinned.contains(&e.path);
                    e.pinned != want && (exact || want)
                })
                .map(|e| {
                    e.pinned = !e.pinned;
                    e.clone()
                })
                .collect()
        };
        if !changed.is_empty()
            && let Err(e) = self.index_call(move |i| i.put_entries(&changed)).await
        {
            tracing::warn!(error = %e, "pins not written");
        }
    }

    /// Fetches what of `wanted` is not cached, in the background pace, a
    /// few at a time (pins as given, for files fetched now); the counts
    /// fetched and failed.
    pub async fn fetch_paced(self: &Arc<Self>, wanted: Vec<(String, bool)>) -> (usize, usize) {
        let missing: Vec<(String, bool)> = wanted
            .into_iter()
            .filter(|(path, _)| !self.has(path))
            .collect();
        let slots = Arc::new(tokio::sync::Semaphore::new(PREFETCH_FILLS));
        let mut running = Vec::new();
        for (path, pin) in missing {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let fill = {
                let mut fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
                // A file the controller said it does not have is not asked
                // for again at every sync (within `cache.negative_ttl`).
                if self.has(&path) || self.remembered_missing(&path) {
                    continue;
                }
                match fills.get(&path) {
                    Some(fill) => fill.clone(),
                    None => match self.start_fill(&path, pin, FillKind::Prefetch, &mut fills) {
                        Ok(fill) => fill,
                        Err(e) => {
                            tracing::warn!(%path, error = %e, "prefetch not started");
                            continue;
                        }
                    },
                }
            };
            running.push(crate::tasks::spawn_until_shutdown(async move {
                let done = fill.finished().await;
                drop(slot);
                matches!(done, Progress::Done { .. })
            }));
        }
        let mut fetched = 0;
        let mut failed = 0;
        for task in running {
            match task.await {
                Ok(Some(true)) => fetched += 1,
                _ => failed += 1,
            }
        }
        if fetched + failed > 0 {
            tracing::info!(fetched, failed, "prefetch pass done");
        }
        (fetched, failed)
    }
}
