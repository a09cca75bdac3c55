//! Confirming cached records with one call for many boots: the
//! controller's change feed (`GET /api/v1/sites/{site}/nodes?since=CURSOR`,
//! DESIGN §6) lists every node changed since the cache was last brought up
//! to date, so a call to it that *starts after a boot arrived* tells that
//! boot whether its cached record is still the controller's, as surely as
//! a lookup of its MAC would (docs/design.md §4, "one feed call for many
//! boots").
//!
//! Boots that arrive while a call is under way wait for the next one,
//! which starts when the current one ends: in a boot storm one call
//! answers every boot that arrived during the one before, instead of one
//! lookup per boot. Only a controller that gives a cursor has a feed
//! (PureBoot's central does not: its boots keep their lookups by MAC).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::boot::lookup::LookupError;
use crate::central::CentralError;
use crate::central::port::ControllerPort;
use crate::model::mac::Mac;
use crate::model::node::Workflow;
use crate::outbox::Outbox;
use crate::store::nodes::NodeCache;

/// The store's meta key of the change feed's cursor (written by syncs too).
pub const META_CURSOR: &str = "sync_cursor";

/// What a boot learnt from the change feed.
#[derive(Debug, Clone)]
pub enum Confirmation {
    /// The cache holds the controller's current record of this node: the
    /// boot answers from it as `live`.
    Confirmed,
    /// No feed to ask (no cursor, sync paused), or this node has local
    /// changes queued (its cached record is the agent's): the boot asks
    /// for its MAC.
    Unavailable,
    /// The call failed.
    Failed(LookupError),
    /// The boot's deadline passed first; the call goes on and still
    /// updates the cache.
    Late,
}

/// The outcome of one call to the feed.
#[derive(Debug, Clone)]
enum Outcome {
    /// Applied; these MACs have local changes queued for the controller:
    /// their cached records are the agent's, not the controller's, and
    /// their boots ask for their MACs (as before the feed).
    Applied(Arc<HashSet<Mac>>),
    NoCursor,
    Failed(LookupError),
}

#[derive(Debug, Clone)]
struct Round {
    number: u64,
    outcome: Outcome,
}

#[derive(Default)]
struct Rounds {
    /// Number of the last round started.
    started: u64,
    running: bool,
    /// A boot arrived during the running round and waits for the next.
    wanted: bool,
}

/// "No cursor was stored at this store generation": until the store is
/// written again, there is no feed to ask.
const CURSOR_UNKNOWN: u64 = u64::MAX;

pub struct ChangeFeed {
    port: Arc<ControllerPort>,
    outbox: Arc<Outbox>,
    nodes: NodeCache,
    rounds: Mutex<Rounds>,
    finished: watch::Sender<Round>,
    cursorless_at: AtomicU64,
    /// The round's two store reads as of the last round that wrote
    /// nothing (see [`KeptReads`]).
    kept: Mutex<Option<KeptReads>>,
}

/// A round's store reads (the cursor, the MACs with changes queued) and
/// the store generation taken before them. While the generation has not
/// moved, nothing was written since and a new read would return the
/// same: the rounds of a boot storm, when nothing changes, are one call
/// to the controller each, without two hops to the blocking pool.
#[derive(Clone)]
struct KeptReads {
    generation: u64,
    cursor: String,
    queued: Arc<HashSet<Mac>>,
}

impl ChangeFeed {
    pub fn new(port: Arc<ControllerPort>, outbox: Arc<Outbox>, nodes: NodeCache) -> ChangeFeed {
        let (finished, _) = watch::channel(Round {
            number: 0,
            outcome: Outcome::NoCursor,
        });
        ChangeFeed {
            port,
            outbox,
            nodes,
            rounds: Mutex::new(Rounds::default()),
            finished,
            cursorless_at: AtomicU64::new(CURSOR_UNKNOWN),
            kept: Mutex::new(None),
        }
    }

    /// Waits (at most `deadline`) for a call to the feed that started
    /// after now, and says whether `mac`'s cached record is confirmed.
    pub async fn confirm(self: &Arc<Self>, mac: Mac, deadline: Duration) -> Confirmation {
        if self.outbox.pause().is_paused()
            || self.cursorless_at.load(Ordering::SeqCst) == self.nodes.store().generation()
        {
            return Confirmation::Unavailable;
        }
        // Subscribed before the round can end, so its end is not missed.
        let mut finished = self.finished.subscribe();
        let needed = self.start_or_join();
        let waited =
            tokio::time::timeout(deadline, finished.wait_for(|r| r.number >= needed)).await;
        let outcome = match waited {
            Ok(Ok(round)) => round.outcome.clone(),
            _ => return Confirmation::Late,
        };
        match outcome {
            Outcome::Applied(held) if held.contains(&mac) => Confirmation::Unavailable,
            Outcome::Applied(_) => Confirmation::Confirmed,
            Outcome::NoCursor => Confirmation::Unavailable,
            Outcome::Failed(e) => Confirmation::Failed(e),
        }
    }

    /// The number of the round that answers a boot arriving now: the next
    /// one to start (a running round started before the boot arrived).
    fn start_or_join(self: &Arc<Self>) -> u64 {
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        let needed = rounds.started + 1;
        if rounds.running {
            rounds.wanted = true;
        } else {
            rounds.running = true;
            rounds.started = needed;
            let feed = self.clone();
            crate::tasks::spawn_until_shutdown(async move { feed.run_rounds(needed).await });
        }
        needed
    }

    /// Runs round `number`, then the next while boots wait for one.
    async fn run_rounds(self: Arc<Self>, mut number: u64) {
        let mut running = Running {
            feed: &self,
            number,
            done: false,
        };
        loop {
            let outcome = self.round().await;
            self.finished.send_replace(Round { number, outcome });
            let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
            if !rounds.wanted {
                rounds.running = false;
                running.done = true;
                return;
            }
            rounds.wanted = false;
            rounds.started += 1;
            number = rounds.started;
            running.number = number;
        }
    }

    /// One call to the feed, applied to the cache like an incremental sync.
    async fn round(&self) -> Outcome {
        let _feed = self.nodes.lock_feed().await;
        let store = self.nodes.store().clone();
        let generation = store.generation();
        let kept = self.kept_at(generation);
        let cursor = match &kept {
            Some(kept) => kept.cursor.clone(),
            None => match store.call(|s| s.get_meta(META_CURSOR)).await {
                Ok(Some(cursor)) => cursor,
                Ok(None) => {
                    self.cursorless_at.store(generation, Ordering::SeqCst);
                    return Outcome::NoCursor;
                }
                Err(e) => return Outcome::Failed(e.into()),
            },
        };
        let page = match self.port.site_nodes(Some(&cursor)).await {
            Ok(page) => page,
            Err(e) => return Outcome::Failed(e.into()),
        };
        // A page without a cursor cannot say what it covered.
        let Some(new_cursor) = page.cursor.clone() else {
            return Outcome::Failed(LookupError::Central(CentralError::Garbage(
                "the change feed gave no cursor".into(),
            )));
        };
        let parsed = page.parse();
        for error in &parsed.errors {
            tracing::warn!(error = %error, "change feed entry unreadable");
        }
        // Read after the call, so that a change queued during it is
        // protected; kept with the cursor while nothing was written.
        let now = store.generation();
        let protected = match kept.filter(|kept| kept.generation == now) {
            Some(kept) => kept.queued,
            None => {
                let queued = match self.queued_changes().await {
                    Ok(macs) => Arc::new(macs),
                    Err(e) => return Outcome::Failed(e),
                };
                if now == generation {
                    self.keep(KeptReads {
                        generation,
                        cursor: cursor.clone(),
                        queued: queued.clone(),
                    });
                }
                queued
            }
        };
        if let Err(e) = self.nodes.apply_sync(parsed.nodes, false, &protected).await {
            return Outcome::Failed(e.into());
        }
        let workflows = if parsed.workflows.is_empty() {
            Vec::new()
        } else {
            match store.call(|s| s.list_workflows()).await {
                Ok(stored) => changed_workflows(parsed.workflows, &stored),
                Err(e) => return Outcome::Failed(e.into()),
            }
        };
        if !workflows.is_empty() || new_cursor != cursor {
            let written = store
                .call(move |s| {
                    if !workflows.is_empty() {
                        s.put_workflows(&workflows)?;
                    }
                    s.put_meta(&[(META_CURSOR, new_cursor.as_str())])
                })
                .await;
            if let Err(e) = written {
                return Outcome::Failed(e.into());
            }
        }
        // An unreadable entry may be any node's: the page confirms none.
        // (The cursor moved on, as in an incremental sync: the next call
        // does not read it again; the next full sync does.)
        if !parsed.errors.is_empty() {
            return Outcome::Failed(LookupError::Central(CentralError::Garbage(format!(
                "{} change feed entries unreadable",
                parsed.errors.len()
            ))));
        }
        Outcome::Applied(protected)
    }

    /// MACs with local changes queued for the controller.
    /// The kept reads, if taken at `generation`.
    fn kept_at(&self, generation: u64) -> Option<KeptReads> {
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|kept| kept.generation == generation)
    }

    fn keep(&self, reads: KeptReads) {
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(reads);
    }

    async fn queued_changes(&self) -> Result<HashSet<Mac>, LookupError> {
        let macs = self
            .outbox
            .queue()
            .call(|q| q.nodes_with_changes())
            .await
            .map_err(|e| LookupError::Local(e.to_string()))?;
        Ok(macs.iter().filter_map(|m| m.parse().ok()).collect())
    }
}

/// While rounds run: if they end any other way than by running out of
/// boots to answer (the task cancelled at shutdown, a panic), the boots
/// waiting are told the call failed and the next boot starts a new round,
/// rather than every later boot waiting for a round that never comes.
struct Running<'a> {
    feed: &'a ChangeFeed,
    number: u64,
    done: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut rounds = self.feed.rounds.lock().unwrap_or_else(|e| e.into_inner());
        rounds.running = false;
        rounds.wanted = false;
        drop(rounds);
        self.feed.finished.send_replace(Round {
            number: self.number,
            outcome: Outcome::Failed(LookupError::Local(
                "the change feed call was cut short".into(),
            )),
        });
    }
}

/// The page's workflows that differ from the stored ones.
fn changed_workflows(listed: Vec<Workflow>, stored: &[Workflow]) -> Vec<Workflow> {
    listed.into_iter().filter(|w| !stored.contains(w)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workflow(id: &str, cmdline: &str) -> Workflow {
        Workflow {
            id: id.into(),
            name: id.into(),
            method: crate::model::node::BootMethod::Kernel,
            kernel: "vmlinuz".into(),
            initrd: vec![],
            cmdline: cmdline.into(),
            url: None,
            offline_safe: false,
        }
    }

    #[test]
    fn only_new_or_changed_workflows_are_written() {
        let stored = vec![workflow("a", "quiet"), workflow("b", "quiet")];
        let listed = vec![
            workflow("a", "quiet"),
            workflow("b", "console=ttyS0"),
            workflow("c", ""),
        ];
        let ids: Vec<_> = changed_workflows(listed, &stored)
            .into_iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(ids, ["b", "c"]);
    }
}
