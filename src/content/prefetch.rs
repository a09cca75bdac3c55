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

impl ContentCache {
    /// What to fetch ahead after a sync, under the site policy in force
    /// (DESIGN §12, §15): (path, pinned), each path once.
    pub fn wanted(
        &self,
        workflows: &[crate::model::node::Workflow],
        nodes: &[Arc<crate::model::node::Node>],
    ) -> Vec<(String, bool)> {
        wanted_files(&self.site_policy.current(), workflows, nodes)
    }

    /// DESIGN §15 retention: unpinned files unused for the retention the
    /// site policy sets (none: kept until room is needed) are evicted, as
    /// of `now` (injected, so a test need not wait days). The count.
    pub async fn expire_unused(&self, now: OffsetDateTime) -> usize {
        let Some(retention) = self.site_policy.current().cache_retention.value else {
            return 0;
        };
        let Ok(retention) = time::Duration::try_from(retention) else {
            return 0;
        };
        let cutoff = now - retention;
        let victims: Vec<Entry> = {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            entries
                .values()
                .filter(|e| !e.pinned && e.last_used < cutoff)
                .cloned()
                .collect()
        };
        if victims.is_empty() {
            return 0;
        }
        let paths: Vec<String> = victims.iter().map(|e| e.path.clone()).collect();
        if let Err(e) = self.forget(&paths).await {
            tracing::warn!(error = %e, "expired files not removed; kept");
            return 0;
        }
        self.counters
            .evictions
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
        for entry in &victims {
            tracing::info!(path = %entry.path, bytes = entry.size, last_used = %entry.last_used,
                "evicted from the content cache: unused longer than the retention");
        }
        victims.len()
    }
}

/// The prefetch list under `policy` (DESIGN §12, §15):
/// * the files of every `offline_safe` workflow, pinned, under every
///   policy, so that the site can install offline what it was told it
///   may; only a `minimal` pinned by the local key drops them too (the
///   site's operator then wants nothing fetched ahead, and says so);
/// * `assigned`: the files of workflows assigned to `pending` or
///   `reprovision` nodes; `mirror`: every file of every workflow;
///   `pattern`: every file whose path matches one of the patterns
///   (shell-style, as PureBoot's agent matches them: `*` crosses `/`);
///   `minimal`: nothing more.
pub fn wanted_files(
    policy: &crate::model::policy::SitePolicy,
    workflows: &[crate::model::node::Workflow],
    nodes: &[Arc<crate::model::node::Node>],
) -> Vec<(String, bool)> {
    use crate::model::node::NodeState;
    use crate::model::policy::{CachePolicy, Origin};
    let chosen = policy.cache_policy.value;
    let mut wanted: std::collections::BTreeMap<String, bool> = Default::default();
    let pinned_minimal =
        chosen == CachePolicy::Minimal && policy.cache_policy.origin == Origin::Config;
    if !pinned_minimal {
        for workflow in workflows.iter().filter(|w| w.offline_safe) {
            for file in workflow.files() {
                wanted.insert(file.to_string(), true);
            }
        }
    }
    let mut add = |file: &str| {
        wanted.entry(file.to_string()).or_insert(false);
    };
    match chosen {
        CachePolicy::Minimal => {}
        CachePolicy::Assigned => {
            let by_id: HashMap<&str, &crate::model::node::Workflow> =
                workflows.iter().map(|w| (w.id.as_str(), w)).collect();
            for node in nodes {
                if !matches!(node.state, NodeState::Pending | NodeState::Reprovision) {
                    continue;
                }
                let Some(workflow) = node.workflow_id.as_deref().and_then(|id| by_id.get(id))
                else {
                    continue;
                };
                workflow.files().into_iter().for_each(&mut add);
            }
        }
        CachePolicy::Mirror => workflows.iter().flat_map(|w| w.files()).for_each(&mut add),
        CachePolicy::Pattern => {
            let patterns = patterns(&policy.cache_patterns.value);
            workflows
                .iter()
                .flat_map(|w| w.files())
                .filter(|path| patterns.is_match(path))
                .for_each(&mut add);
        }
    }
    wanted.into_iter().collect()
}

/// The `pattern` policy's patterns; one that is not a valid pattern is
/// logged and matches nothing.
fn patterns(texts: &[String]) -> globset::GlobSet {
    let mut set = globset::GlobSetBuilder::new();
    for text in texts {
        match globset::Glob::new(text) {
            Ok(glob) => {
                set.add(glob);
            }
            Err(e) => tracing::warn!(pattern = %crate::logsafe::shown(text), error = %e,
                "cache pattern not understood; it matches nothing"),
        }
    }
    set.build().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cache patterns not usable; nothing matches");
        globset::GlobSet::empty()
    })
}
