//! The admin operations inside the running agent: what its HTTP API
//! answers.

use std::sync::Arc;

use serde_json::json;

use super::error::AdminError;
use super::request::{Evict, Request};
use super::rows::{changed_policies, conflict_page, conflict_record, evicted, queue_page};
use super::service::{AdminService, Answer};
use crate::boot::BootService;
use crate::content::ContentCache;
use crate::outbox::Outbox;
use crate::outbox::resolve::ResolvedBy;
use crate::store::nodes::NodeCache;

pub struct LiveAdmin {
    pub outbox: Arc<Outbox>,
    /// Present when a controller is configured.
    pub cache: Option<Arc<ContentCache>>,
    /// The workflows and nodes a prefetch without paths reads.
    pub boot: Arc<BootService>,
    pub nodes: NodeCache,
}

impl LiveAdmin {
    fn cache(&self) -> Result<&Arc<ContentCache>, AdminError> {
        self.cache.as_ref().ok_or_else(|| {
            AdminError::NotFound(
                "no content cache: it keeps a controller's files, and no controller is configured"
                    .into(),
            )
        })
    }

    async fn queue(&self, request: Request) -> Result<Answer, AdminError> {
        let queue = self.outbox.queue();
        let body = match request {
            Request::QueueList {
                status,
                page,
                cursor,
            } => {
                queue
                    .call(move |q| queue_page(q, status, page, cursor))
                    .await?
            }
            Request::QueueStats => serde_json::to_value(self.outbox.stats().await?)
                .map_err(|e| AdminError::Internal(e.to_string()))?,
            Request::QueueRetry(id) => {
                let item = queue.call(move |q| q.retry(id)).await?;
                // Replay picks it up now, not at its next round.
                self.outbox.wake_handle().notify_one();
                json!({ "data": item })
            }
            Request::QueueDelete(id) => {
                queue.call(move |q| q.delete(id)).await?;
                json!({ "deleted": id })
            }
            Request::QueueClearFailed => {
                json!({ "cleared": queue.call(|q| q.clear_failed()).await? })
            }
            other => return self.conflicts(other).await,
        };
        Ok(Answer::done(body))
    }

    async fn conflicts(&self, request: Request) -> Result<Answer, AdminError> {
        let queue = self.outbox.queue();
        let body = match request {
            Request::ConflictList { status, page } => {
                queue
                    .call(move |q| conflict_page(q.store(), status, page))
                    .await?
            }
            Request::ConflictShow(id) => {
                let store = queue.store().clone();
                store.call(move |s| Ok(conflict_record(s, id))).await??
            }
            Request::ConflictResolve {
                id,
                resolution,
                comment,
            } => {
                let record = self
                    .outbox
                    .resolve(id, resolution, comment, ResolvedBy::Operator)
                    .await?;
                json!({ "data": record })
            }
            Request::PolicyShow => json!({ "data": self.outbox.policies() }),
            Request::PolicySet(changes) => {
                let policies = changed_policies(self.outbox.policies(), &changes)?;
                if !changes.is_empty() {
                    self.outbox.set_policies(policies).await?;
                }
                json!({ "data": policies })
            }
            Request::SyncPause(paused) => {
                let changed = self.outbox.set_sync_paused(paused).await?;
                json!({ "paused": paused, "changed": changed })
            }
            Request::ConnectivityCheck => self.connectivity_check().await,
            other => return self.content(other).await,
        };
        Ok(Answer::done(body))
    }

    /// `POST /api/v1/connectivity/check` (DESIGN §15): the controller's
    /// health asked now, outside the probe's period; the answer counts
    /// toward the mode like any call.
    async fn connectivity_check(&self) -> serde_json::Value {
        let port = self.outbox.port();
        if !port.mode().has_controller() {
            return json!({ "reachable": false, "mode": port.mode().as_str(),
                           "error": "no controller configured (standalone)" });
        }
        let started = std::time::Instant::now();
        let result = port.health().await;
        let took_ms = started.elapsed().as_millis() as u64;
        let mode = port.mode();
        match result {
            Ok(()) => json!({ "reachable": true, "mode": mode.as_str(), "took_ms": took_ms }),
            Err(e) => json!({ "reachable": false, "mode": mode.as_str(), "took_ms": took_ms,
                              "error": e.to_string() }),
        }
    }

    async fn content(&self, request: Request) -> Result<Answer, AdminError> {
        let cache = self.cache()?;
        Ok(match request {
            Request::CacheList => {
                let entries = cache.list();
                Answer::done(json!({ "data": entries, "total": entries.len() }))
            }
            Request::CacheStats => {
                let stats = cache.stats();
                let hit_rate = stats.hit_rate();
                let mut body =
                    serde_json::to_value(stats).map_err(|e| AdminError::Internal(e.to_string()))?;
                body["hit_rate"] = json!(hit_rate);
                Answer::done(json!({ "data": body }))
            }
            Request::CacheEvict(Evict::AllUnpinned) => evicted(cache.clear_unpinned().await?),
            Request::CacheEvict(Evict::Paths(paths)) => {
                cache.remove(&paths).await?;
                evicted(paths)
            }
            Request::CachePrefetch(paths) => self.prefetch(cache.clone(), paths).await,
            other => {
                return Err(AdminError::Internal(format!(
                    "{other:?} reached the content cache's operations"
                )));
            }
        })
    }

    /// Fetches in the background; answers at once with what it will fetch.
    async fn prefetch(&self, cache: Arc<ContentCache>, paths: Vec<String>) -> Answer {
        let explicit = !paths.is_empty();
        let wanted: Vec<(String, bool)> = if explicit {
            paths.into_iter().map(|p| (p, false)).collect()
        } else {
            let workflows = self.boot.all_workflows().await;
            cache.wanted(&workflows, &self.nodes.all())
        };
        let listed: Vec<&String> = wanted.iter().map(|(p, _)| p).collect();
        let body = json!({ "prefetching": listed });
        if explicit {
            crate::tasks::spawn_until_shutdown(async move { cache.fetch_paced(wanted).await });
        } else {
            crate::tasks::spawn_until_shutdown(async move { cache.prefetch(wanted).await });
        }
        Answer {
            body,
            accepted: true,
        }
    }
}

impl AdminService for LiveAdmin {
    async fn call(&self, request: Request) -> Result<Answer, AdminError> {
        self.queue(request).await
    }
}
