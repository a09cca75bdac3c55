//! Confirming cached records with one call for many boots: the
//! controller's change feed (`GET /api/v1/sites/{site}/nodes?since=CURSOR`,
//! DESIGN §6) lists every node changed since the cache was last brought up
//! to date, so a call to it that *starts after a boot arrived* tells that
//! boot whether its cached record is still the controller's, as surely as
//! a lookup of its MAC would (docs/design.md §4, "one feed call for many
//! boots").
//!
//! Boots that arrive while a call is under way wait for the next one,
//! which starts when the current one ends (or beside it, once it has
//! been out for [`OVERLAP_AFTER`]): in a boot storm one call answers
//! every boot that arrived during the one before, instead of one lookup
//! per boot. Only a controller that gives a cursor has a feed
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
    /// The ticket of the call (see [`FeedOrder`]): it started after every
    /// boot that saw a lower last ticket.
    ticket: u64,
    outcome: Outcome,
}

#[derive(Default)]
struct Rounds {
    /// Rounds under way (at most [`MAX_OVERLAP`]).
    running: usize,
    /// Rounds under way that have not taken their ticket yet: a boot
    /// arriving now is answered by them.
    starting: usize,
    /// A boot arrived that no round under way answers and waits for the
    /// next, started when one of them ends.
    wanted: bool,
    /// The ticket of the newest call under way, and whether it has been
    /// out longer than [`OVERLAP_AFTER`] (a boot may then start a second).
    newest_call: u64,
    newest_overdue: bool,
}

/// Feed calls under way at once, at most. A boot arriving while one call
/// has been out for longer than [`OVERLAP_AFTER`] starts a second rather
/// than waiting for the first to end (which a boot storm would pay for
/// with half a round trip per boot); a third waits, so a storm costs the
/// controller at most two calls per round trip.
pub const MAX_OVERLAP: usize = 2;

/// How long a call is out before a boot may start a second one beside
/// it. A controller on the LAN answers sooner, and a second call would
/// only double the calls (measured: with the controller on the same
/// machine, overlapping calls cost 6 % more agent CPU per boot and 4 %
/// of the rate); across a WAN (tens of milliseconds) it saves boots up to
/// half a round trip.
pub const OVERLAP_AFTER: Duration = Duration::from_millis(5);

/// "No cursor was stored at this store generation": until the store is
/// written again, there is no feed to ask.
const CURSOR_UNKNOWN: u64 = u64::MAX;

pub struct ChangeFeed {
    port: Arc<ControllerPort>,
    outbox: Arc<Outbox>,
    nodes: NodeCache,
    rounds: Mutex<Rounds>,
    /// The latest round published: the one with the highest ticket.
    finished: watch::Sender<Round>,
    cursorless_at: AtomicU64,
    /// [`OVERLAP_AFTER`] (tests set their own).
    overlap_after: Duration,
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

/// How a round's call ended.
enum Called {
    /// Its outcome is published.
    Published,
    /// A call that started later was applied first: this older page was
    /// not applied (and nothing published).
    Superseded(u64),
}

impl ChangeFeed {
    pub fn new(port: Arc<ControllerPort>, outbox: Arc<Outbox>, nodes: NodeCache) -> ChangeFeed {
        let (finished, _) = watch::channel(Round {
            ticket: 0,
            outcome: Outcome::NoCursor,
        });
        ChangeFeed {
            port,
            outbox,
            nodes,
            rounds: Mutex::new(Rounds::default()),
            finished,
            cursorless_at: AtomicU64::new(CURSOR_UNKNOWN),
            overlap_after: OVERLAP_AFTER,
            kept: Mutex::new(None),
        }
    }

    /// The same with a second call allowed after `overlap_after`.
    #[cfg(test)]
    fn with_overlap_after(mut self, overlap_after: Duration) -> ChangeFeed {
        self.overlap_after = overlap_after;
        self
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
            tokio::time::timeout(deadline, finished.wait_for(|r| r.ticket >= needed)).await;
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

    /// The lowest ticket of a round that answers a boot arriving now (any
    /// call whose ticket is higher than the last one given started after
    /// now); makes sure such a round comes.
    fn start_or_join(self: &Arc<Self>) -> u64 {
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        let needed = self.nodes.last_feed_ticket() + 1;
        if rounds.starting > 0 {
            // Its ticket is taken under this lock, after now.
        } else if rounds.running == 0 || (rounds.running < MAX_OVERLAP && rounds.newest_overdue) {
            rounds.running += 1;
            rounds.starting += 1;
            let feed = self.clone();
            crate::tasks::spawn_until_shutdown(async move { feed.run_rounds().await });
        } else {
            rounds.wanted = true;
        }
        needed
    }

    /// The call with `ticket` has been out for [`OVERLAP_AFTER`]: if it is
    /// the newest, boots may start a second beside it, and one starts now
    /// for the boots already waiting for the next.
    fn overdue(self: &Arc<Self>, ticket: u64) {
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        if rounds.newest_call != ticket {
            return;
        }
        rounds.newest_overdue = true;
        if rounds.wanted && rounds.starting > 0 {
            // A round about to take its ticket answers them.
            rounds.wanted = false;
        } else if rounds.wanted && rounds.running < MAX_OVERLAP {
            rounds.wanted = false;
            rounds.running += 1;
            rounds.starting += 1;
            let feed = self.clone();
            crate::tasks::spawn_until_shutdown(async move { feed.run_rounds().await });
        }
    }

    /// Runs a round, then another while boots wait for one.
    async fn run_rounds(self: Arc<Self>) {
        let mut running = Running {
            feed: &self,
            ticketed: false,
            done: false,
        };
        loop {
            self.round(&mut running).await;
            let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
            if !rounds.wanted {
                rounds.running -= 1;
                running.done = true;
                return;
            }
            rounds.wanted = false;
            rounds.starting += 1;
            running.ticketed = false;
        }
    }

    /// One round: a call to the feed, applied to the cache like an
    /// incremental sync, its outcome published; called again if a call
    /// that started later was applied first and published nothing that
    /// answers this one's boots (a sync's).
    async fn round(self: &Arc<Self>, running: &mut Running<'_>) {
        while let Called::Superseded(ticket) = self.call(running).await {
            if self.finished.borrow().ticket >= ticket {
                return;
            }
        }
    }

    /// Publishes a round's outcome unless one with a higher ticket was.
    fn publish(&self, ticket: u64, outcome: Outcome) {
        self.finished.send_if_modified(|latest| {
            if ticket > latest.ticket {
                *latest = Round { ticket, outcome };
                true
            } else {
                false
            }
        });
    }

    /// Takes a ticket and reads the cursor under the feed lock, calls the
    /// feed outside it (so that a second round can call meanwhile), and
    /// applies the page under it again.
    async fn call(self: &Arc<Self>, running: &mut Running<'_>) -> Called {
        let store = self.nodes.store().clone();
        let (ticket, generation, kept, cursor) = {
            let _order = self.nodes.lock_feed().await;
            let ticket = {
                let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
                if !running.ticketed {
                    rounds.starting -= 1;
                    running.ticketed = true;
                }
                let ticket = self.nodes.take_feed_ticket();
                rounds.newest_call = ticket;
                rounds.newest_overdue = false;
                ticket
            };
            let generation = store.generation();
            let kept = self.kept_at(generation);
            let cursor = match &kept {
                Some(kept) => kept.cursor.clone(),
                None => match store.call(|s| s.get_meta(META_CURSOR)).await {
                    Ok(Some(cursor)) => cursor,
                    Ok(None) => {
                        self.cursorless_at.store(generation, Ordering::SeqCst);
                        self.publish(ticket, Outcome::NoCursor);
                        return Called::Published;
                    }
                    Err(e) => {
                        self.publish(ticket, Outcome::Failed(e.into()));
                        return Called::Published;
                    }
                },
            };
            (ticket, generation, kept, cursor)
        };
        let answer = {
            let call = self.port.site_nodes(Some(&cursor));
            tokio::pin!(call);
            tokio::select! {
                biased;
                answer = &mut call => answer,
                () = tokio::time::sleep(self.overlap_after) => {
                    self.overdue(ticket);
                    call.await
                }
            }
        };
        let page = match answer {
            Ok(page) => page,
            Err(e) => {
                self.publish(ticket, Outcome::Failed(e.into()));
                return Called::Published;
            }
        };
        let mut order = self.nodes.lock_feed().await;
        if !order.admit(ticket) {
            return Called::Superseded(ticket);
        }
        let outcome = self.apply(page, cursor, generation, kept).await;
        // Published before the lock is let go: rounds publish in the
        // order they were applied.
        self.publish(ticket, outcome);
        drop(order);
        Called::Published
    }

    /// A page applied to the cache like an incremental sync's, and the
    /// new cursor stored; `generation` and `kept` as of the cursor's read.
    async fn apply(
        &self,
        page: crate::central::api::NodePage,
        cursor: String,
        generation: u64,
        kept: Option<KeptReads>,
    ) -> Outcome {
        let store = self.nodes.store().clone();
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
            let workflows_changed = !workflows.is_empty();
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
            if workflows_changed {
                // Scripts rendered with the old ones are not handed out again.
                self.nodes.workflows_written();
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
    /// This round took its ticket (it no longer counts as starting).
    ticketed: bool,
    done: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut rounds = self.feed.rounds.lock().unwrap_or_else(|e| e.into_inner());
        rounds.running = rounds.running.saturating_sub(1);
        if !self.ticketed {
            rounds.starting = rounds.starting.saturating_sub(1);
        }
        rounds.wanted = false;
        drop(rounds);
        // A ticket above every boot's that waits now answers them all.
        let ticket = self.feed.nodes.take_feed_ticket();
        self.feed.publish(
            ticket,
            Outcome::Failed(LookupError::Local(
                "the change feed call was cut short".into(),
            )),
        );
    }
}

/// The page's workflows that differ from the stored ones.
pub fn changed_workflows(listed: Vec<Workflow>, stored: &[Workflow]) -> Vec<Workflow> {
    listed.into_iter().filter(|w| !stored.contains(w)).collect()
}

#[cfg(test)]
mod tests;
