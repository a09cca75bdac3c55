//! The admin operations on the database of a stopped agent (the command
//! line, while nothing else holds the file). What needs the running agent
//! (settling a conflict may ask the controller; a prefetch fetches from
//! it; the cache's hit counters live in the agent) is refused by name.

use serde_json::json;

use super::error::AdminError;
use super::request::{Evict, Request};
use super::rows::{changed_policies, conflict_page, conflict_record, evicted, queue_page};
use super::service::{AdminService, Answer};
use crate::config::Config;
use crate::store::Store;
use crate::store::queue::{Limits, Queue};

pub struct StoppedAdmin {
    queue: Queue,
    config: Config,
}

impl StoppedAdmin {
    /// Opens the queue on `store` as the agent would.
    pub fn open(store: Store, config: Config) -> Result<StoppedAdmin, AdminError> {
        let queue = Queue::open(store, Limits::from_config(&config.queue))?;
        Ok(StoppedAdmin { queue, config })
    }

    fn store(&self) -> &Store {
        self.queue.store()
    }

    fn answer(&self, request: Request) -> Result<Answer, AdminError> {
        let queue = &self.queue;
        let body = match request {
            Request::QueueList {
                status,
                page,
                cursor,
            } => queue_page(queue, status, page, cursor)?,
            Request::QueueStats => serde_json::to_value(queue.stats()?)
                .map_err(|e| AdminError::Internal(e.to_string()))?,
            Request::QueueRetry(id) => json!({ "data": queue.retry(id)? }),
            Request::QueueDelete(id) => {
                queue.delete(id)?;
                json!({ "deleted": id })
            }
            Request::QueueClearFailed => json!({ "cleared": queue.clear_failed()? }),
            Request::ConflictList { status, page } => conflict_page(self.store(), status, page)?,
            Request::ConflictShow(id) => conflict_record(self.store(), id)?,
            Request::ConflictResolve { .. } => {
                return Err(AdminError::NeedsAgent(
                    "settling a conflict needs the running agent (it may ask the controller); start it"
                        .into(),
                ));
            }
            Request::SyncPause(paused) => {
                // Read by the agent at its next start.
                let value = if paused { "paused" } else { "" };
                self.store()
                    .put_meta(&[(crate::outbox::pause::META_SYNC_PAUSED, value)])?;
                json!({ "paused": paused })
            }
            Request::ConnectivityCheck => {
                return Err(AdminError::NeedsAgent(
                    "a connectivity check is the running agent's probe; start it".into(),
                ));
            }
            Request::PolicyShow => self.policies(&[])?,
            Request::PolicySet(changes) => self.policies(&changes)?,
            Request::CacheList => {
                let entries = crate::content::stored_entries(self.store())?;
                json!({ "data": entries, "total": entries.len() })
            }
            Request::CacheStats => {
                let entries = crate::content::stored_entries(self.store())?;
                let pinned = entries.iter().filter(|e| e.pinned);
                json!({ "data": {
                    "entries": entries.len(),
                    "bytes": entries.iter().map(|e| e.size).sum::<u64>(),
                    "pinned": pinned.clone().count(),
                    "pinned_bytes": pinned.map(|e| e.size).sum::<u64>(),
                    "max_bytes": self.config.cache.max_bytes,
                }})
            }
            Request::CachePrefetch(_) => {
                return Err(AdminError::NeedsAgent(
                    "prefetching needs the running agent (it asks the controller)".into(),
                ));
            }
            Request::CacheEvict(evict) => {
                let dir = self.config.data_dir.join("content");
                let paths = match evict {
                    Evict::AllUnpinned => None,
                    Evict::Paths(paths) => Some(paths),
                };
                return Ok(evicted(crate::content::evict_stored(
                    self.store(),
                    &dir,
                    paths,
                )?));
            }
        };
        Ok(Answer::done(body))
    }

    /// The policies in force when the agent starts, after `changes`
    /// (stored, so the agent starts with them).
    fn policies(
        &self,
        changes: &[super::request::PolicyChange],
    ) -> Result<serde_json::Value, AdminError> {
        let current = crate::outbox::stored_policies(self.store(), self.config.conflicts)?;
        let policies = changed_policies(current, changes)?;
        if !changes.is_empty() {
            let text = serde_json::to_string(&policies)
                .map_err(|e| AdminError::Internal(e.to_string()))?;
            self.store()
                .put_meta(&[(crate::outbox::META_CONFLICT_POLICY, &text)])?;
        }
        Ok(json!({ "data": policies }))
    }
}

impl AdminService for StoppedAdmin {
    async fn call(&self, request: Request) -> Result<Answer, AdminError> {
        self.answer(request)
    }
}
