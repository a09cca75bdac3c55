//! Sends the durable queue to the controller (DESIGN §7): on the
//! offline→online transition, when an item is queued while online, when a
//! backed-off item is due, and every `period`. Items go in batches of
//! `queue.batch_size` (one per node at a time, so a node's order holds),
//! each with its `Idempotency-Key`:
//!
//! - success: acked (a registration first remaps `local-<uuid>` to the
//!   controller's id in the cache and in the node's later items);
//! - unreachable: the item is pending again, its attempt not counted, and
//!   the round stops until the next trigger;
//! - 5xx, garbage, 401/403/408/429: backoff with jitter between
//!   `queue.retry_base` and `queue.retry_max`, `failed` after
//!   `queue.max_retries` attempts;
//! - another 4xx: `failed` with the controller's answer kept; a 409 on a
//!   state change is a `conflict` (DESIGN §8).

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::Outbox;
use super::detect::{central_side, found_for};
use crate::central::ops::{Base, Operation};
use crate::central::{CentralError, retryable_status};
use crate::model::mac::Mac;
use crate::model::node::Node;
use crate::store::conflicts::{self, Found};
use crate::store::queue::{Item, Outcome, QueueError, backoff};

#[derive(Debug, Clone)]
pub struct ReplaySettings {
    pub batch_size: usize,
    pub max_retries: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Flush attempt period even without a trigger.
    pub period: Duration,
}

/// Wall-clock time that advances with tokio's clock (so a paused test
/// clock drives backoff), anchored once at start.
#[derive(Clone, Copy)]
pub struct Clock {
    wall: OffsetDateTime,
    mono: tokio::time::Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            wall: OffsetDateTime::now_utc(),
            mono: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> OffsetDateTime {
        self.wall + self.mono.elapsed()
    }

    fn instant_at(&self, at: OffsetDateTime) -> tokio::time::Instant {
        let offset: Duration = (at - self.wall).try_into().unwrap_or(Duration::ZERO);
        self.mono + offset
    }
}

/// How a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundEnd {
    /// Nothing is sendable now.
    Drained,
    /// The controller could not be reached.
    Unreachable,
}

/// Runs until `shutdown` is cancelled (spawn it). Standalone there is
/// nothing to replay, and it returns at once.
pub async fn run(
    outbox: Arc<Outbox>,
    settings: ReplaySettings,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let clock = Clock::start();
    let wake = outbox.wake_handle();
    let Some(mut link_state) = outbox.port().subscribe() else {
        return;
    };
    let mut paused = outbox.pause().subscribe();
    loop {
        // Paused by an operator (DESIGN §15): nothing goes until resumed.
        let online = outbox.port().mode() == crate::model::mode::Mode::Online
            && !*paused.borrow_and_update();
        let mut deadline = tokio::time::Instant::now() + settings.period;
        if online {
            match replay_round(&outbox, &settings, clock, &shutdown).await {
                Ok(RoundEnd::Drained) => {}
                Ok(RoundEnd::Unreachable) => {
                    tracing::info!("controller unreachable; replay waits for it");
                }
                Err(e) => tracing::error!(error = %e, "queue replay failed"),
            }
            // Only while online: the scan is O(queue), and offline nothing
            // is sent anyway.
            let next_retry = outbox
                .queue()
                .call(|q| q.next_retry_at())
                .await
                .ok()
                .flatten();
            if let Some(at) = next_retry {
                deadline = deadline.min(clock.instant_at(at));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            // Offline, new items wait for the transition.
            _ = wake.notified(), if online => {
                // A burst of writes becomes one round.
                tokio::time::sleep(WAKE_COALESCE).await;
            }
            changed = link_state.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            changed = paused.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// How long a wake-up waits for more writes before a round starts.
const WAKE_COALESCE: Duration = Duration::from_millis(10);

/// Sends batches until nothing is sendable, the controller is gone, or
/// `shutdown` is cancelled (checked between batches: a batch taken is
/// always settled, so no item is left in flight).
pub async fn replay_round(
    outbox: &Outbox,
    settings: &ReplaySettings,
    clock: Clock,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<RoundEnd, QueueError> {
    outbox.settle_open_by_policy().await;
    loop {
        if shutdown.is_cancelled() {
            return Ok(RoundEnd::Drained);
        }
        let now = clock.now();
        let limit = settings.batch_size.max(1);
        let batch = outbox
            .queue()
            .call(move |q| q.take_batch(limit, now))
            .await?;
        if batch.is_empty() {
            return Ok(RoundEnd::Drained);
        }
        let sends = batch.iter().map(|item| send(outbox, item));
        let results = futures_util::future::join_all(sends).await;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut found = Vec::new();
        let mut chains = Vec::new();
        let mut unreachable = false;
        for (item, result) in batch.iter().zip(results) {
            let outcome = match result {
                Ok(sent) => {
                    match sent {
                        // Before the ack: a crash in between resends the
                        // registration (same key), never loses the remap.
                        Sent::Registered(node) => remap(outbox, item, *node).await?,
                        Sent::Moved(Some((from, to))) => chains.push((item.node.clone(), from, to)),
                        Sent::Moved(None) | Sent::Done => {}
                    }
                    Outcome::Ack
                }
                Err(e) => {
                    if let Some(kind) = conflict_kind(item, &e) {
                        found.push((item, kind, error_text(&e)));
                    }
                    judge(item, e, settings, clock.now())
                }
            };
            if matches!(outcome, Outcome::Unsent { .. }) {
                unreachable = true;
            }
            if outcome == Outcome::Ack {
                crate::metrics::metrics().link.replayed.inc();
            }
            log_outcome(item, &outcome);
            outcomes.push((item.id, outcome));
        }
        // Both sides of each conflict, the controller's looked up for all
        // of them at once.
        let found = futures_util::future::join_all(
            found
                .into_iter()
                .map(|(item, kind, error)| describe_conflict(outbox, item, kind, error)),
        )
        .await;
        let now = clock.now();
        let (_, opened) = outbox
            .queue()
            .call(move |q| {
                // The conflicts' records commit with their items' status.
                q.settle_with(outcomes, move |txn| {
                    for (node, from, to) in &chains {
                        crate::store::queue::Queue::record_chain(txn, node, *from, *to)?;
                    }
                    let mut opened = Vec::new();
                    for conflict in found {
                        if let Some(record) = conflicts::open(txn, conflict, now)? {
                            opened.push(record);
                        }
                    }
                    Ok(opened)
                })
            })
            .await?;
        // Settled by policy side by side: the controller's records are
        // looked up at once, the commits follow one another.
        futures_util::future::join_all(opened.iter().map(|conflict| outbox.opened(conflict))).await;
        crate::events::publish("queue", serde_json::json!({"settled": batch.len()}));
        if unreachable {
            return Ok(RoundEnd::Unreachable);
        }
    }
}

fn log_outcome(item: &Item, outcome: &Outcome) {
    match outcome {
        Outcome::Ack => tracing::debug!(id = item.id, node = %item.node, "queue item delivered"),
        Outcome::RetryAt { error, at } => {
            tracing::warn!(id = item.id, node = %item.node, attempts = item.attempts, %error, retry_at = %at, "queue item will be retried")
        }
        Outcome::Unsent { error } => {
            tracing::debug!(id = item.id, node = %item.node, %error, "queue item not sent")
        }
        Outcome::Failed { error } => {
            tracing::error!(id = item.id, node = %item.node, %error, "queue item failed for good")
        }
        Outcome::Conflict { error } => {
            tracing::warn!(id = item.id, node = %item.node, %error, "queue item conflicts with the controller")
        }
    }
}

/// Why a send did not succeed.
#[derive(Debug)]
enum SendError {
    Central(CentralError),
    /// The item cannot be sent as it is (retried: something may fix it,
    /// such as the node's registration being accepted).
    NotReady(String),
    /// The stored payload is unreadable: never sendable.
    Malformed(String),
    /// A version-less controller's record changed after the change was
    /// made here: a state mismatch, found before sending.
    Stale(String),
}

/// A time as nanoseconds since 1970, for the per-node chain (which holds
/// versions, or for a version-less controller, change times).
fn nanos(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos()).unwrap_or(0)
}

fn from_nanos(at: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(at)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// What a send that succeeded brings back.
enum Sent {
    /// Nothing to do beyond the ack.
    Done,
    /// A registration: the controller's node.
    Registered(Box<Node>),
    /// A state change: the controller's version it moved, from → to.
    Moved(Option<(u64, u64)>),
}

/// Sends one item.
async fn send(outbox: &Outbox, item: &Item) -> Result<Sent, SendError> {
    let operation = Operation::from_payload(&item.payload).map_err(SendError::Malformed)?;
    let mac = item
        .node
        .parse::<Mac>()
        .map_err(|e| SendError::Malformed(format!("item node {:?}: {e}", item.node)))?;
    match operation {
        Operation::Register { .. } => match outbox
            .port()
            .send(mac, &operation, &item.key)
            .await
            .map_err(SendError::Central)?
        {
            Some(node) => Ok(Sent::Registered(Box::new(node))),
            None => Ok(Sent::Done),
        },
        Operation::SetState {
            node_id,
            change,
            base_changed_at,
            base_state,
        } => {
            let base = StateBase {
                changed_at: base_changed_at,
                state: base_state,
            };
            send_state_change(outbox, item, mac, node_id, change, base).await
        }
        Operation::Report {
            ref report,
            ref observed,
        } => {
            if let (Some(observed), Some(wanted)) = (observed, report.implied_state()) {
                return send_observed(outbox, item, mac, &operation, observed, wanted).await;
            }
            outbox
                .port()
                .send(mac, &operation, &item.key)
                .await
                .map(|_| Sent::Done)
                .map_err(SendError::Central)
        }
    }
}

/// What a queued state change was made against, for a controller without
/// versions: the node's change time and state then.
struct StateBase {
    changed_at: Option<OffsetDateTime>,
    state: Option<crate::model::node::NodeState>,
}

/// A state change: rebased onto this agent's own acknowledged changes,
/// looked at before sending for a controller without versions, sent under
/// the key of exactly this request.
async fn send_state_change(
    outbox: &Outbox,
    item: &Item,
    mac: Mac,
    node_id: String,
    mut change: crate::central::api::StateChange,
    base: StateBase,
) -> Result<Sent, SendError> {
    let StateBase {
        changed_at: base_changed_at,
        state: mut base_state,
    } = base;
    // Made here after the node's previous change, on top of it:
    // it builds on the version (or, version-less, the change time)
    // that change produced.
    let mut base_time = base_changed_at.map(nanos);
    if change.base_version.is_some() || base_time.is_some() {
        let name = item.node.clone();
        let chain = outbox
            .queue()
            .call(move |q| q.chain(&name))
            .await
            .map_err(|e| SendError::NotReady(e.to_string()))?;
        if let Some((first, latest)) = chain {
            if change
                .base_version
                .is_some_and(|b| (first..latest).contains(&b))
            {
                change.base_version = Some(latest);
            }
            if base_time.is_some_and(|b| (first..latest).contains(&b)) {
                // On top of this agent's own change: the state
                // that change left is not known here.
                base_time = Some(latest);
                base_state = None;
            }
        }
    }
    // A controller without versions cannot answer 409: the agent
    // looks before sending (DESIGN §8). A forced change skips it.
    // A node found already in the wanted state is not a conflict:
    // maybe this very change, applied by an attempt whose answer
    // was lost, maybe another change to the same state that got
    // there first. Such a controller keeps no idempotency keys, so
    // the agent cannot tell: it sends the change (at least once; a
    // controller that refuses the repeat as an invalid transition
    // is read as having it, see `HttpController::set_state`), so an
    // acknowledged change is never taken as made without being sent.
    if let Some(base) = base_time
        && change.force != Some(true)
        && let Some(now_there) = outbox
            .port()
            .node_by_mac(mac)
            .await
            .map_err(SendError::Central)?
        && crate::central::ops::moved_past(from_nanos(base), base_state, &now_there)
        && now_there.state != change.state
    {
        return Err(SendError::Stale(format!(
            "the node changed at the controller ({} since {}) after this change was made here",
            now_there.state.as_str(),
            super::changed_at(&now_there)
        )));
    }
    let base = change.base_version;
    let operation = Operation::SetState {
        node_id: current_node_id(outbox, mac, &node_id)?,
        change,
        base_changed_at,
        base_state,
    };
    let key = key_for(outbox, item, &operation).await?;
    let answer = outbox
        .port()
        .send(mac, &operation, &key)
        .await
        .map_err(SendError::Central)?;
    let moved = match (&answer, base, base_time) {
        (Some(node), Some(from), _) if node.versioned && node.version != from => {
            Some((from, node.version))
        }
        (Some(node), None, Some(from))
            if !node.versioned && nanos(super::changed_at(node)) != from =>
        {
            Some((from, nanos(super::changed_at(node))))
        }
        _ => None,
    };
    if let Some(node) = answer {
        take_response(outbox, node).await;
    }
    Ok(Sent::Moved(moved))
}

/// A report that moves the node, observed at the site (DESIGN §8): before
/// it is sent, the controller's record is compared with the one the site
/// saw. A record that moved on to a state the installer's event cannot
/// follow (an operator sent the node to `reprovision` meanwhile) is a
/// state mismatch, like an operator change's 409. Settled for the site
/// (`force`), the report is sent, then its state set with `force` under a
/// key of its own.
async fn send_observed(
    outbox: &Outbox,
    item: &Item,
    mac: Mac,
    operation: &Operation,
    observed: &crate::central::ops::Observed,
    wanted: crate::model::node::NodeState,
) -> Result<Sent, SendError> {
    let now_there = outbox
        .port()
        .node_by_mac(mac)
        .await
        .map_err(SendError::Central)?;
    if !observed.force
        && let Some(node) = &now_there
        && observed.moved(node)
        && node.state != wanted
        && !node.state.installer_may_move_to(wanted)
    {
        return Err(SendError::Stale(format!(
            "the node changed at the controller ({} since this was observed); the site observed {}",
            node.state.as_str(),
            wanted.as_str()
        )));
    }
    outbox
        .port()
        .send(mac, operation, &item.key)
        .await
        .map_err(SendError::Central)?;
    if observed.force
        && let Some(node) = now_there
        && node.state != wanted
    {
        let forced = Operation::SetState {
            node_id: node.id.clone(),
            change: crate::central::api::StateChange {
                state: wanted,
                comment: Some(format!(
                    "observed at the site (queue item {}), settled for the site",
                    item.id
                )),
                force: Some(true),
                base_version: None,
            },
            base_changed_at: None,
            base_state: None,
        };
        let answer = outbox
            .port()
            .send(mac, &forced, &format!("{}.state", item.key))
            .await
            .map_err(SendError::Central)?;
        if let Some(node) = answer {
            take_response(outbox, node).await;
        }
    }
    Ok(Sent::Done)
}

/// The idempotency key for sending `operation` as item `item`: the item's
/// own when that is what it holds; else the request is stored first (the
/// queue gives it the next key), so that a different request never goes
/// out under a key the controller has seen with another body, and a
/// retry of this one after a timeout keeps its key (DESIGN §6).
async fn key_for(outbox: &Outbox, item: &Item, operation: &Operation) -> Result<String, SendError> {
    let payload = operation.to_payload();
    if payload == item.payload {
        return Ok(item.key.clone());
    }
    let id = item.id;
    let stored = outbox
        .queue()
        .call(move |q| q.store_request(id, payload))
        .await
        .map_err(|e| SendError::NotReady(e.to_string()))?;
    stored
        .map(|item| item.key)
        .ok_or_else(|| SendError::NotReady(format!("queue item {id} is gone")))
}

/// The controller id to address: the payload's, unless it is still local
/// and the cache has learned the controller's id since (by a sync).
fn current_node_id(outbox: &Outbox, mac: Mac, stored: &str) -> Result<String, SendError> {
    if !stored.starts_with("local-") {
        return Ok(stored.to_string());
    }
    let cached = outbox
        .nodes()
        .get(mac)
        .map(|node| node.id.clone())
        .filter(|id| !id.starts_with("local-"));
    cached.ok_or_else(|| {
        SendError::NotReady(format!(
            "node {stored} is not registered at the controller yet"
        ))
    })
}

/// A state change's answer updates the cache, unless the cache already
/// shows a later local change (its own item will bring the cache back in
/// line when it is sent).
async fn take_response(outbox: &Outbox, node: Node) {
    let Some(cached) = outbox.nodes().get(node.mac) else {
        return;
    };
    let result = if cached.state == node.state {
        outbox.nodes().upsert_central(node).await.map(|_| ())
    } else {
        // A later local change is still queued: the cache keeps its state,
        // but takes the controller's version, so that changes made here
        // from now on build on it (DESIGN §8).
        outbox
            .nodes()
            .update(node.mac, move |n| {
                n.version = node.version;
                n.versioned = node.versioned;
                n.updated_at = node.updated_at;
                n.state_changed_at = node.state_changed_at;
            })
            .await
            .map(|_| ())
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "controller's answer not cached");
    }
}

/// What the node's later changes, made here against a node first seen
/// here, build on once its registration is accepted. A record in the
/// state they were made against (`discovered`: a new node, or one the
/// controller knew but had not moved on) is their base. A record that
/// already moved on (the controller had the MAC, answered 409, and the
/// agent adopted its node: DESIGN §8) is not: they are based before it,
/// so that each is found to be a state mismatch, which its policy
/// settles, instead of overwriting the controller's state unseen.
fn registered_base(central: &Node) -> Base {
    let fresh = central.state == crate::model::node::NodeState::Discovered;
    match (central.versioned, fresh) {
        (true, true) => Base::Version(central.version),
        (false, true) => Base::ChangedAt(super::changed_at(central), Some(central.state)),
        // No version is 0, and no change time is before 1970.
        (true, false) => Base::Version(0),
        (false, false) => Base::ChangedAt(OffsetDateTime::UNIX_EPOCH, None),
    }
}

/// After a registration is accepted: the node's local id becomes the
/// controller's, in its later queue items and in the cache.
async fn remap(outbox: &Outbox, item: &Item, central: Node) -> Result<(), QueueError> {
    let local_id = Operation::from_payload(&item.payload)
        .ok()
        .and_then(|op| op.node_id().map(str::to_string))
        .unwrap_or_default();
    let node = item.node.clone();
    let to = central.id.clone();
    let from = local_id.clone();
    let base = registered_base(&central);
    let changed = outbox
        .queue()
        .call(move |q| {
            // An unreadable payload is left as it is: replay fails it with
            // the reason.
            q.rewrite_payloads(&node, |payload| {
                let mut operation = Operation::from_payload(payload).ok()?;
                operation
                    .remap(&from, &to, Some(base))
                    .then(|| operation.to_payload())
            })
        })
        .await?;
    let cached = outbox.nodes().get(central.mac);
    let result = match cached {
        // Local changes made since are queued behind the registration:
        // keep the cached state, take the controller's identity.
        Some(cached) if cached.id == local_id && changed > 0 => {
            let mut merged = (*cached).clone();
            merged.id = central.id.clone();
            merged.version = central.version;
            merged.versioned = central.versioned;
            merged.updated_at = central.updated_at;
            merged.state_changed_at = central.state_changed_at;
            merged.cached_at = Some(OffsetDateTime::now_utc());
            // Registered again after the controller lost it (keep_local).
            merged.missing_central_since = None;
            outbox.nodes().put(merged).await.map(|_| ())
        }
        _ => outbox
            .nodes()
            .upsert_central(central.clone())
            .await
            .map(|_| ()),
    };
    if let Err(e) = result {
        tracing::warn!(mac = %central.mac, error = %e, "remapped node not cached");
    }
    tracing::info!(mac = %central.mac, from = %local_id, to = %central.id, later_items = changed,
        "queued registration accepted; local id remapped");
    Ok(())
}

/// The kind of conflict (DESIGN §8) a failed send is, if it is one: a
/// state change the controller answers 409 (its record moved on) or 404
/// (it no longer has the node); an offline registration it refuses for
/// good (a 409 there is adopted by the client, never seen here).
fn conflict_kind(item: &Item, error: &SendError) -> Option<conflicts::Kind> {
    if let SendError::Stale(_) = error {
        return Some(conflicts::Kind::StateMismatch);
    }
    let SendError::Central(CentralError::Rejected { status, .. }) = error else {
        return None;
    };
    match (Operation::from_payload(&item.payload).ok()?, *status) {
        (Operation::SetState { .. }, 409) => Some(conflicts::Kind::StateMismatch),
        (Operation::SetState { .. }, 404) => Some(conflicts::Kind::MissingCentral),
        (Operation::Register { .. }, status)
            if (400..500).contains(&status) && !retryable_status(status) =>
        {
            Some(conflicts::Kind::MissingLocal)
        }
        _ => None,
    }
}

/// Both sides of a conflict: the local change from the item, the
/// controller's record as it is now (looked up by MAC; None if it has
/// none or cannot be asked).
async fn describe_conflict(
    outbox: &Outbox,
    item: &Item,
    kind: conflicts::Kind,
    error: String,
) -> Found {
    let central = match item.node.parse::<Mac>() {
        Ok(mac) if kind != conflicts::Kind::MissingLocal => {
            match outbox.port().node_by_mac(mac).await {
                Ok(Some(node)) => Some(central_side(&node)),
                _ => None,
            }
        }
        _ => None,
    };
    found_for(item, kind, central, error)
}

fn error_text(error: &SendError) -> String {
    match error {
        SendError::Central(e) => e.to_string(),
        SendError::NotReady(e) | SendError::Malformed(e) | SendError::Stale(e) => e.clone(),
    }
}

/// The outcome of a failed send.
fn judge(item: &Item, error: SendError, settings: &ReplaySettings, now: OffsetDateTime) -> Outcome {
    let retry = |error: String| {
        if item.attempts >= settings.max_retries {
            Outcome::Failed {
                error: format!("{error} (gave up after {} attempts)", item.attempts),
            }
        } else {
            let random = uuid::Uuid::new_v4().as_u64_pair().0;
            let wait = backoff(
                item.attempts,
                settings.retry_base,
                settings.retry_max,
                random,
            );
            Outcome::RetryAt {
                error,
                at: now + wait,
            }
        }
    };
    match error {
        SendError::Central(CentralError::Unreachable(e)) => Outcome::Unsent { error: e },
        ref central @ SendError::Central(ref e @ CentralError::Rejected { status, .. }) => {
            let text = e.to_string();
            if conflict_kind(item, central).is_some() {
                Outcome::Conflict { error: text }
            } else if (400..500).contains(&status) && !retryable_status(status) {
                Outcome::Failed { error: text }
            } else {
                retry(text)
            }
        }
        SendError::Central(
            e @ (CentralError::Garbage(_)
            | CentralError::Local(_)
            | CentralError::LocalUnwritable(_)),
        ) => retry(e.to_string()),
        SendError::NotReady(e) => retry(e),
        SendError::Malformed(e) => Outcome::Failed { error: e },
        SendError::Stale(e) => Outcome::Conflict { error: e },
    }
}

#[cfg(test)]
mod tests;
