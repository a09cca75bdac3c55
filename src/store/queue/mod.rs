//! The durable queue of changes for the controller (DESIGN §7): redb
//! tables, ordered so that registrations go before state updates before
//! events and each node's items keep their order, bounded with a drop
//! policy that only ever drops events. Every enqueue is committed durably
//! before it is acknowledged; [`writer`] groups concurrent enqueues into
//! one commit.

mod chain;
mod counters;
mod item;
mod listing;
mod open;
pub mod writer;

use counters::*;
pub use item::*;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::schema::{QUEUE, QUEUE_CHAIN, QUEUE_COUNTERS, QUEUE_IDS, QUEUE_NODES};
use crate::store::{Store, StoreError};

/// This database's queue instance id, the prefix of idempotency keys, so
/// that a recreated database never reuses a key the controller has seen.
const META_INSTANCE: &str = "queue_instance";

/// An item with its table key (priority, id).
type KeyedItem = ((u8, u64), Item);

/// One item's enqueue: its id, or why it was refused.
pub type Enqueued = Result<u64, QueueError>;

/// A change to one item: its new status, or None to remove it.
type Change = Box<dyn FnOnce(&mut Item) -> Option<Status> + Send>;
/// An item's status before a change, and the item after it (None: gone).
type Updated = (Option<Status>, Option<Item>);

pub(super) fn db_err(e: impl Into<redb::Error>) -> QueueError {
    QueueError::Store(StoreError::Db(e.into()))
}

/// The queue's tables in the agent's store. All calls block.
#[derive(Clone)]
pub struct Queue {
    store: Store,
    limits: Limits,
    instance: String,
}

type Counters<'t> = redb::Table<'t, &'static str, u64>;
type Items<'t> = redb::Table<'t, (u8, u64), &'static [u8]>;

/// The queue's tables, open in one write transaction.
struct Tables<'a, 't> {
    queue: &'a mut Items<'t>,
    ids: &'a mut redb::Table<'t, u64, u8>,
    counters: &'a mut Counters<'t>,
    nodes: &'a mut Counters<'t>,
}

impl Queue {
    /// Runs blocking queue work on tokio's blocking pool (the one way async
    /// code reaches the queue).
    pub async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Queue) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let queue = self.clone();
        tokio::task::spawn_blocking(move || work(&queue))
            .await
            .map_err(|e| QueueError::Store(StoreError::Task(e.to_string())))?
    }

    /// The store the queue lives in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A fresh idempotency key of this queue's instance (for direct sends
    /// that may end up queued).
    pub fn direct_key(&self) -> String {
        format!("{}-d{}", self.instance, uuid::Uuid::new_v4().simple())
    }

    /// Appends items in one durable commit; each gets its id or an error.
    pub fn enqueue_many(
        &self,
        items: Vec<NewItem>,
        now: OffsetDateTime,
    ) -> Result<Vec<Result<u64, QueueError>>, QueueError> {
        self.enqueue_batch(items, now).map(|(results, _)| results)
    }

    /// [`Queue::enqueue_many`], also returning the cached nodes whose
    /// `local_state` was written in the same commit.
    pub fn enqueue_batch(
        &self,
        items: Vec<NewItem>,
        now: OffsetDateTime,
    ) -> Result<(Vec<Enqueued>, Vec<crate::model::node::Node>), QueueError> {
        let txn = self.store.begin_write()?;
        let mut results = Vec::with_capacity(items.len());
        let mut changed_nodes = Vec::new();
        {
            let mut queue = txn.redb().open_table(QUEUE).map_err(db_err)?;
            let mut ids = txn.redb().open_table(QUEUE_IDS).map_err(db_err)?;
            let mut counters = txn.redb().open_table(QUEUE_COUNTERS).map_err(db_err)?;
            let mut nodes = txn.redb().open_table(QUEUE_NODES).map_err(db_err)?;
            for new in items {
                if new.origin == Origin::Node
                    && let Err(shed) =
                        self.admit_node_item(&new, &mut queue, &mut ids, &mut counters, &mut nodes)
                {
                    results.push(Err(shed));
                    continue;
                }
                let total = counter(&counters, "total")?;
                if total >= self.limits.max_items
                    && !drop_oldest_event(&mut queue, &mut ids, &mut counters, &mut nodes)?
                {
                    results.push(Err(QueueError::Full(total)));
                    continue;
                }
                let local_state = new.local_state;
                let item = self.append(
                    Tables {
                        queue: &mut queue,
                        ids: &mut ids,
                        counters: &mut counters,
                        nodes: &mut nodes,
                    },
                    new,
                    now,
                )?;
                let seq = item.id;
                if let (Some(state), Ok(mac)) =
                    (local_state, item.node.parse::<crate::model::mac::Mac>())
                    && let Some(node) = txn.set_node_state(mac, state, now)?
                {
                    changed_nodes.push(node);
                }
                results.push(Ok(seq));
            }
        }
        txn.commit()?;
        Ok((results, changed_nodes))
    }

    /// Writes one new item (pending) with its counters; no admission or
    /// size check (the callers have made them).
    fn append(
        &self,
        t: Tables<'_, '_>,
        new: NewItem,
        now: OffsetDateTime,
    ) -> Result<Item, QueueError> {
        let seq = t
            .counters
            .get("next_id")
            .map_err(db_err)?
            .map(|v| v.value())
            .unwrap_or(1);
        t.counters.insert("next_id", seq + 1).map_err(db_err)?;
        let item = Item {
            id: seq,
            kind: new.kind,
            origin: new.origin,
            key: new
                .key
                .unwrap_or_else(|| format!("{}-{seq}", self.instance)),
            node: new.node,
            payload: new.payload,
            created_at: now,
            attempts: 0,
            last_attempt_at: None,
            last_error: None,
            status: Status::Pending,
            not_before: None,
        };
        t.queue
            .insert((new.kind.priority(), seq), encode(&item).as_slice())
            .map_err(db_err)?;
        t.ids.insert(seq, new.kind.priority()).map_err(db_err)?;
        count_status(t.counters, item.kind, None, Some(Status::Pending))?;
        count_item(t.counters, &item, 1)?;
        track_node(t.nodes, &item, None, Some(Status::Pending))?;
        Ok(item)
    }

    /// Adds an item inside a caller's transaction (a conflict resolution
    /// that registers a node again commits it with the settlement). It
    /// is not counted against the queue's limits: it replaces a change
    /// already admitted.
    pub fn insert_in(
        &self,
        txn: &crate::store::StoreWrite,
        new: NewItem,
        now: OffsetDateTime,
    ) -> Result<u64, QueueError> {
        let mut queue = txn.redb().open_table(QUEUE).map_err(db_err)?;
        let mut ids = txn.redb().open_table(QUEUE_IDS).map_err(db_err)?;
        let mut counters = txn.redb().open_table(QUEUE_COUNTERS).map_err(db_err)?;
        let mut nodes = txn.redb().open_table(QUEUE_NODES).map_err(db_err)?;
        let tables = Tables {
            queue: &mut queue,
            ids: &mut ids,
            counters: &mut counters,
            nodes: &mut nodes,
        };
        self.append(tables, new, now).map(|item| item.id)
    }

    /// Parks `node`'s first item in send order as a conflict, if it is a
    /// pending state change, with `also` (the conflict's record, given
    /// the item) in the same commit. None, and nothing written, when the
    /// node's first item is anything else (in flight: its send will tell;
    /// a conflict already; a registration).
    pub fn park_first_change<T>(
        &self,
        node: &str,
        error: String,
        also: impl FnOnce(&crate::store::StoreWrite, &Item) -> Result<T, QueueError>,
    ) -> Result<Option<T>, QueueError> {
        let txn = self.store.begin_write()?;
        let parked = {
            let mut queue = txn.redb().open_table(QUEUE).map_err(db_err)?;
            let mut counters = txn.redb().open_table(QUEUE_COUNTERS).map_err(db_err)?;
            let mut nodes = txn.redb().open_table(QUEUE_NODES).map_err(db_err)?;
            let mut first = None;
            for entry in queue.iter().map_err(db_err)? {
                let (key, value) = entry.map_err(db_err)?;
                let item = decode(value.value())?;
                if item.node == node && item.status != Status::Failed {
                    first = Some((key.value(), item));
                    break;
                }
            }
            match first {
                Some((key, mut item))
                    if item.status == Status::Pending && item.kind == Kind::StateUpdate =>
                {
                    item.not_before = None;
                    item.last_error = Some(error);
                    restatus(&mut queue, &mut counters, key, &mut item, Status::Conflict)?;
                    track_node(
                        &mut nodes,
                        &item,
                        Some(Status::Pending),
                        Some(Status::Conflict),
                    )?;
                    Some(item)
                }
                _ => None,
            }
        };
        let Some(item) = parked else {
            txn.abort()?;
            return Ok(None);
        };
        let extra = also(&txn, &item)?;
        txn.commit()?;
        Ok(Some(extra))
    }

    /// DESIGN §7 "Admission" for an item a node caused: at most one
    /// registration per MAC still to send, and no more node items than
    /// their share (an event is dropped to make room when there is one).
    fn admit_node_item(
        &self,
        new: &NewItem,
        queue: &mut Items<'_>,
        ids: &mut redb::Table<'_, u64, u8>,
        counters: &mut Counters<'_>,
        nodes: &mut Counters<'_>,
    ) -> Result<(), QueueError> {
        // The callers cut facts and reports to 4 KiB; this holds whatever
        // path a node's item came by (DESIGN §7: bounded in bytes, not
        // only in number).
        let bytes = serde_json::to_vec(&new.payload)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if bytes > NODE_ITEM_MAX_BYTES {
            return Err(QueueError::Shed(format!(
                "an item caused by a node may carry {NODE_ITEM_MAX_BYTES} bytes; this one has {bytes}"
            )));
        }
        if new.kind == Kind::Registration
            && nodes
                .get(registration_key(&new.node).as_str())
                .map_err(db_err)?
                .is_some()
        {
            return Err(QueueError::Shed(format!(
                "a registration of {} is already queued",
                new.node
            )));
        }
        let node_items = counter(counters, "node_items")?;
        if node_items >= self.limits.max_node_items
            && !drop_oldest_event(queue, ids, counters, nodes)?
        {
            return Err(QueueError::Shed(format!(
                "the queue's share for items caused by nodes is full ({node_items} of \
                 queue.max_node_items = {})",
                self.limits.max_node_items
            )));
        }
        Ok(())
    }

    /// The items [`Queue::take_batch`] would take now, without taking them.
    pub fn peek(&self, limit: usize, now: OffsetDateTime) -> Result<Vec<Item>, QueueError> {
        let txn = self.store.begin_read()?;
        let queue = match txn.redb().open_table(QUEUE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        Ok(sendable(&queue, limit, now)?
            .into_iter()
            .map(|(_, item)| item)
            .collect())
    }

    /// Takes up to `limit` items that may be sent now, in send order, and
    /// marks them in flight. An item waits while an earlier item of its
    /// node is still pending or in flight, so a node's order holds.
    pub fn take_batch(&self, limit: usize, now: OffsetDateTime) -> Result<Vec<Item>, QueueError> {
        let txn = self.store.begin_write()?;
        let mut taken = Vec::new();
        {
            let mut queue = txn.redb().open_table(QUEUE).map_err(db_err)?;
            let mut counters = txn.redb().open_table(QUEUE_COUNTERS).map_err(db_err)?;
            let chosen = sendable(&queue, limit, now)?;
            if chosen.is_empty() {
                // Nothing to mark: no commit (and no fsync) for an empty
                // round, which is how every replay round ends.
                drop((queue, counters));
                txn.abort()?;
                return Ok(Vec::new());
            }
            for (key, mut item) in chosen {
                item.attempts += 1;
                item.last_attempt_at = Some(now);
                restatus(&mut queue, &mut counters, key, &mut item, Status::InFlight)?;
                taken.push(item);
            }
        }
        txn.commit()?;
        Ok(taken)
    }

    /// When the next backed-off item becomes sendable, if any is waiting.
    pub fn next_retry_at(&self) -> Result<Option<OffsetDateTime>, QueueError> {
        let txn = self.store.begin_read()?;
        let queue = match txn.redb().open_table(QUEUE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        let mut earliest: Option<OffsetDateTime> = None;
        for entry in queue.iter().map_err(db_err)? {
            let (_, value) = entry.map_err(db_err)?;
            let item = decode(value.value())?;
            if item.status == Status::Pending
                && let Some(at) = item.not_before
            {
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
        }
        Ok(earliest)
    }

    /// Applies one change to each listed item in one commit. A change
    /// returning None removes the item. Returns the items as they are now
    /// (None: removed or missing).
    fn update_many(&self, changes: Vec<(u64, Change)>) -> Result<Vec<Updated>, QueueError> {
        self.update_many_with(changes, |_| Ok(()))
            .map(|(updated, ())| updated)
    }

    /// [`Queue::update_many`], with `also` run in the same transaction
    /// (records that must commit with the queue change, such as a
    /// conflict's).
    fn update_many_with<T>(
        &self,
        changes: Vec<(u64, Change)>,
        also: impl FnOnce(&crate::store::StoreWrite) -> Result<T, QueueError>,
    ) -> Result<(Vec<Updated>, T), QueueError> {
        let txn = self.store.begin_write()?;
        let mut results = Vec::with_capacity(changes.len());
        {
            let mut queue = txn.redb().open_table(QUEUE).map_err(db_err)?;
            let mut ids = txn.redb().open_table(QUEUE_IDS).map_err(db_err)?;
            let mut counters = txn.redb().open_table(QUEUE_COUNTERS).map_err(db_err)?;
            let mut nodes = txn.redb().open_table(QUEUE_NODES).map_err(db_err)?;
            for (id, change) in changes {
                let Some(priority) = ids.get(id).map_err(db_err)?.map(|v| v.value()) else {
                    results.push((None, None));
                    continue;
                };
                let key = (priority, id);
                let mut item = {
                    let Some(bytes) = queue.get(key).map_err(db_err)? else {
                        results.push((None, None));
                        continue;
                    };
                    decode(bytes.value())?
                };
                let before = item.status;
                let sent_payload = item.payload.clone();
                let outcome = change(&mut item);
                rekey_if_changed(&mut item, &sent_payload);
                match outcome {
                    None => {
                        queue.remove(key).map_err(db_err)?;
                        ids.remove(id).map_err(db_err)?;
                        count_status(&mut counters, item.kind, Some(before), None)?;
                        count_item(&mut counters, &item, -1)?;
                        track_node(&mut nodes, &item, Some(before), None)?;
                        results.push((Some(before), None));
                    }
                    Some(after) => {
                        // `change` may have set fields; the status is set here.
                        item.status = before;
                        restatus(&mut queue, &mut counters, key, &mut item, after)?;
                        track_node(&mut nodes, &item, Some(before), Some(after))?;
                        results.push((Some(before), Some(item)));
                    }
                }
            }
        }
        let extra = also(&txn)?;
        txn.commit()?;
        Ok((results, extra))
    }

    /// Changes one item (None: removes it) with `also` in the same commit;
    /// the item as it is now, and what `also` returned.
    pub fn update_with<T>(
        &self,
        id: u64,
        change: impl FnOnce(&mut Item) -> Option<Status> + Send + 'static,
        also: impl FnOnce(&crate::store::StoreWrite) -> Result<T, QueueError>,
    ) -> Result<(Option<Item>, T), QueueError> {
        let (mut updated, extra) = self.update_many_with(vec![(id, Box::new(change))], also)?;
        match updated.pop() {
            Some((Some(_), item)) => Ok((item, extra)),
            _ => Err(QueueError::NotFound(id)),
        }
    }

    fn update(
        &self,
        id: u64,
        change: impl FnOnce(&mut Item) -> Option<Status> + Send + 'static,
    ) -> Result<Option<Item>, QueueError> {
        match self.update_many(vec![(id, Box::new(change))])?.pop() {
            Some((Some(_), item)) => Ok(item),
            _ => Err(QueueError::NotFound(id)),
        }
    }

    /// Records how each send of a batch ended, in one commit.
    pub fn settle(&self, outcomes: Vec<(u64, Outcome)>) -> Result<Vec<Option<Item>>, QueueError> {
        self.settle_with(outcomes, |_| Ok(()))
            .map(|(items, ())| items)
    }

    /// [`Queue::settle`], with `also` in the same commit (the records of
    /// the conflicts the batch found).
    pub fn settle_with<T>(
        &self,
        outcomes: Vec<(u64, Outcome)>,
        also: impl FnOnce(&crate::store::StoreWrite) -> Result<T, QueueError>,
    ) -> Result<(Vec<Option<Item>>, T), QueueError> {
        let changes = outcomes
            .into_iter()
            .map(|(id, outcome)| {
                let change: Change = Box::new(move |item: &mut Item| match outcome {
                    Outcome::Ack => None,
                    Outcome::RetryAt { error, at } => {
                        item.last_error = Some(error);
                        item.not_before = Some(at);
                        Some(Status::Pending)
                    }
                    Outcome::Unsent { error } => {
                        item.last_error = Some(error);
                        item.attempts = item.attempts.saturating_sub(1);
                        Some(Status::Pending)
                    }
                    Outcome::Failed { error } => {
                        item.last_error = Some(error);
                        item.not_before = None;
                        Some(Status::Failed)
                    }
                    Outcome::Conflict { error } => {
                        item.last_error = Some(error);
                        item.not_before = None;
                        Some(Status::Conflict)
                    }
                });
                (id, change)
            })
            .collect();
        let (updated, extra) = self.update_many_with(changes, also)?;
        Ok((updated.into_iter().map(|(_, item)| item).collect(), extra))
    }

    /// The controller took the item: it leaves the queue.
    pub fn ack(&self, id: u64) -> Result<(), QueueError> {
        self.update(id, |_| None).map(|_| ())
    }

    /// A send failed. `retry_at` None: the failure is final (`failed`, the
    /// error kept); else pending again from then.
    pub fn fail(
        &self,
        id: u64,
        error: &str,
        retry_at: Option<OffsetDateTime>,
    ) -> Result<Option<Item>, QueueError> {
        let error = error.to_string();
        self.update(id, move |item| {
            item.last_error = Some(error);
            item.not_before = retry_at;
            Some(if retry_at.is_some() {
                Status::Pending
            } else {
                Status::Failed
            })
        })
    }

    /// Stores what is about to be sent for item `id` (a state change
    /// rebased on the node's chain, or addressed at the controller's id
    /// learnt since), status kept; the item as it is now, with the key
    /// that request goes under (a new one if the request changed).
    pub fn store_request(
        &self,
        id: u64,
        payload: serde_json::Value,
    ) -> Result<Option<Item>, QueueError> {
        self.update(id, move |item| {
            item.payload = payload;
            Some(item.status)
        })
    }

    /// `node`'s items parked as conflicts become `failed` with `error`
    /// (their conflict record is gone); returns how many.
    pub fn fail_parked(&self, node: &str, error: &str) -> Result<usize, QueueError> {
        let parked: Vec<u64> = {
            let txn = self.store.begin_read()?;
            let queue = txn.redb().open_table(QUEUE).map_err(db_err)?;
            let mut ids = Vec::new();
            for entry in queue.iter().map_err(db_err)? {
                let (_, value) = entry.map_err(db_err)?;
                let item = decode(value.value())?;
                if item.node == node && item.status == Status::Conflict {
                    ids.push(item.id);
                }
            }
            ids
        };
        let changes = parked
            .iter()
            .map(|id| {
                let error = error.to_string();
                let change: Change = Box::new(move |item: &mut Item| {
                    item.last_error = Some(error);
                    item.not_before = None;
                    Some(Status::Failed)
                });
                (*id, change)
            })
            .collect();
        Ok(self.update_many(changes)?.len())
    }

    /// An operator's retry: pending again now, attempts kept. An item in
    /// flight is left alone (its send is under way).
    pub fn retry(&self, id: u64) -> Result<Option<Item>, QueueError> {
        self.update(id, |item| {
            if item.status == Status::InFlight {
                return Some(Status::InFlight);
            }
            item.not_before = None;
            Some(Status::Pending)
        })
    }

    /// Deletes the item (an operator's decision).
    pub fn delete(&self, id: u64) -> Result<(), QueueError> {
        self.update(id, |_| None).map(|_| ())
    }

    /// Removes every failed item; returns how many.
    pub fn clear_failed(&self) -> Result<u64, QueueError> {
        let failed: Vec<u64> = self
            .list(Some(Status::Failed), 0, usize::MAX)?
            .into_iter()
            .map(|item| item.id)
            .collect();
        let changes = failed
            .iter()
            .map(|id| {
                let change: Change = Box::new(|item: &mut Item| {
                    // Retried meanwhile: keep it.
                    (item.status != Status::Failed).then_some(item.status)
                });
                (*id, change)
            })
            .collect();
        let removed = self
            .update_many(changes)?
            .into_iter()
            .filter(|(before, after)| before.is_some() && after.is_none())
            .count();
        Ok(removed as u64)
    }
}

/// Up to `limit` pending items due at `now`, in send order, at most one
/// per node and none behind an earlier pending or in-flight item of its
/// node.
fn sendable(
    queue: &impl ReadableTable<(u8, u64), &'static [u8]>,
    limit: usize,
    now: OffsetDateTime,
) -> Result<Vec<KeyedItem>, QueueError> {
    let mut blocked = std::collections::HashSet::new();
    let mut chosen = Vec::new();
    for entry in queue.iter().map_err(db_err)? {
        let (key, value) = entry.map_err(db_err)?;
        let item = decode(value.value())?;
        match item.status {
            Status::Pending
                if !blocked.contains(&item.node) && item.not_before.is_none_or(|t| t <= now) =>
            {
                blocked.insert(item.node.clone());
                chosen.push((key.value(), item));
                if chosen.len() >= limit {
                    break;
                }
            }
            // A conflict holds the node's later items until it is resolved.
            Status::Pending | Status::InFlight | Status::Conflict => {
                blocked.insert(item.node.clone());
            }
            Status::Failed => {}
        }
    }
    Ok(chosen)
}

/// Makes room by dropping the oldest event; false if there is none.
fn drop_oldest_event(
    queue: &mut Items<'_>,
    ids: &mut redb::Table<'_, u64, u8>,
    counters: &mut Counters<'_>,
    nodes: &mut Counters<'_>,
) -> Result<bool, QueueError> {
    let priority = Kind::Event.priority();
    let oldest = {
        let mut range = queue
            .range((priority, 0)..=(priority, u64::MAX))
            .map_err(db_err)?;
        match range.next() {
            Some(entry) => {
                let (key, value) = entry.map_err(db_err)?;
                Some((key.value(), decode(value.value())?))
            }
            None => None,
        }
    };
    let Some((key, item)) = oldest else {
        return Ok(false);
    };
    queue.remove(key).map_err(db_err)?;
    ids.remove(key.1).map_err(db_err)?;
    count_status(counters, item.kind, Some(item.status), None)?;
    count_item(counters, &item, -1)?;
    bump(counters, "dropped_events", 1)?;
    track_node(nodes, &item, Some(item.status), None)?;
    tracing::warn!(id = key.1, "queue full: oldest event dropped");
    Ok(true)
}

/// Exponential backoff with jitter: between half and all of
/// `base × 2^(attempts-1)`, capped at `max`.
pub fn backoff(
    attempts: u32,
    base: std::time::Duration,
    max: std::time::Duration,
    random: u64,
) -> std::time::Duration {
    let exponent = attempts.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exponent).min(max);
    let half = full / 2;
    let jitter_ms = half.as_millis() as u64;
    half + std::time::Duration::from_millis(if jitter_ms == 0 {
        0
    } else {
        random % (jitter_ms + 1)
    })
}

#[cfg(test)]
mod tests;
