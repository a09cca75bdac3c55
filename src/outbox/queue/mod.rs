//! The durable queue of changes for the controller (DESIGN §7): redb
//! tables, ordered so that registrations go before state updates before
//! events and each node's items keep their order, bounded with a drop
//! policy that only ever drops events. Every enqueue is committed durably
//! before it is acknowledged; [`writer`] groups concurrent enqueues into
//! one commit.

pub mod writer;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::central::ops::Operation;
use crate::store::{Store, StoreError};

/// (priority, sequence) → item. Key order is send order.
const QUEUE: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("queue");
/// id (= sequence) → priority, to find an item by id.
const QUEUE_IDS: TableDefinition<u64, u8> = TableDefinition::new("queue_ids");
/// Counters: next sequence, items per status, events dropped.
const QUEUE_COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("queue_counters");
/// Node → number of its items still to send (pending or in flight). Kept
/// in the same transactions as the items, so it never drifts: a write for
/// a node listed here must queue behind its items, not overtake them.
const QUEUE_NODES: TableDefinition<&str, u64> = TableDefinition::new("queue_nodes");
/// Node → `first:latest`: the state changes acked here in a row moved the
/// controller's version from `first` to `latest`, each from the previous
/// one's result (a foreign change in between would have been a 409). The
/// node's later changes were made here on top of ours, so one based on
/// any version in `first..latest` is sent based on `latest` (else each
/// would be a 409 against our own change).
const QUEUE_CHAIN: TableDefinition<&str, &str> = TableDefinition::new("queue_chain");
/// This database's queue instance id, the prefix of idempotency keys, so
/// that a recreated database never reuses a key the controller has seen.
const META_INSTANCE: &str = "queue_instance";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Registration,
    StateUpdate,
    Event,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Registration => "registration",
            Kind::StateUpdate => "state_update",
            Kind::Event => "event",
        }
    }

    fn priority(self) -> u8 {
        match self {
            Kind::Registration => 0,
            Kind::StateUpdate => 1,
            Kind::Event => 2,
        }
    }
}

/// Who caused an item (DESIGN §7 "Admission"): an operator's write (the
/// admin token) or a node's unauthenticated traffic (a registration at
/// boot, an installer report, a boot event). Node items have their own
/// bounded share of the queue, so they can never crowd out operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Items written before origins were recorded count as operator
    /// items: they are never shed retroactively.
    #[default]
    Operator,
    Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    InFlight,
    Failed,
    Conflict,
}

impl Status {
    fn counter(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InFlight => "in_flight",
            Status::Failed => "failed",
            Status::Conflict => "conflict",
        }
    }

    /// Still to be sent (counts in [`QUEUE_NODES`]). An item parked by a
    /// conflict counts: the node's later items and writes wait behind it
    /// until the conflict is resolved (DESIGN §8).
    fn is_active(self) -> bool {
        matches!(self, Status::Pending | Status::InFlight | Status::Conflict)
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Status::Pending),
            "in_flight" => Ok(Status::InFlight),
            "failed" => Ok(Status::Failed),
            "conflict" => Ok(Status::Conflict),
            other => Err(format!(
                "unknown queue status {other:?}; valid: pending, in_flight, failed, conflict"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: u64,
    pub kind: Kind,
    #[serde(default)]
    pub origin: Origin,
    /// The node's MAC.
    pub node: String,
    pub payload: serde_json::Value,
    /// Sent as `Idempotency-Key` with every attempt.
    #[serde(default)]
    pub key: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub attempts: u32,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_attempt_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    pub status: Status,
    /// Not sent again before this (backoff).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
}

#[derive(Debug, Clone)]
pub struct NewItem {
    pub kind: Kind,
    pub origin: Origin,
    pub node: String,
    pub payload: serde_json::Value,
    /// The idempotency key a direct attempt already used, so that a replay
    /// of a write the controller may have applied is recognised; None: the
    /// queue's own `<instance>-<id>`.
    pub key: Option<String>,
    /// A state for the cached node (`node`'s MAC), written in the same
    /// commit as the item: the cache and the queue never disagree, even
    /// after a crash.
    pub local_state: Option<crate::model::node::NodeState>,
}

/// The most one item caused by a node may carry (payload JSON): a 4 KiB
/// report or a registration's cut facts, with the envelope around them.
pub const NODE_ITEM_MAX_BYTES: usize = 8 * 1024;

/// DESIGN §6: a different request is a new request. When a change to an
/// item alters what will be sent (a resolution adds `force` or a new
/// `base_version`, a remap points it at another node id), the item gets
/// the next key in its line, `<key>.<n>`; a controller that remembers the
/// old key would otherwise replay that key's first answer (the 409 again)
/// or refuse the new body under it (422). A resend of the same body keeps
/// its key, which is what makes a retry after a timeout safe.
fn rekey_if_changed(item: &mut Item, sent_payload: &serde_json::Value) {
    if item.payload != *sent_payload {
        item.key = next_key(&item.key);
    }
}

/// `k` → `k.1`, `k.1` → `k.2`: the keys of one item's successive requests.
pub fn next_key(key: &str) -> String {
    if let Some((base, n)) = key.rsplit_once('.')
        && !base.is_empty()
        && let Ok(n) = n.parse::<u32>()
    {
        return format!("{base}.{}", n.saturating_add(1));
    }
    format!("{key}.1")
}

/// A place in send order (an item's priority and id), for paging that
/// holds while the queue changes: written `<priority>-<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(u8, u64);

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = s.split_once('-').and_then(|(p, id)| {
            let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
            (digits(p) && digits(id)).then(|| Some(Cursor(p.parse().ok()?, id.parse().ok()?)))?
        });
        parsed.ok_or_else(|| format!("cursor must be the `next` of a previous page, not {s:?}"))
    }
}

/// An item with its table key (priority, id).
type KeyedItem = ((u8, u64), Item);

/// One item's enqueue: its id, or why it was refused.
pub type Enqueued = Result<u64, QueueError>;

/// A change to one item: its new status, or None to remove it.
type Change = Box<dyn FnOnce(&mut Item) -> Option<Status> + Send>;
/// An item's status before a change, and the item after it (None: gone).
type Updated = (Option<Status>, Option<Item>);

/// How one send of a batch ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The controller took it: the item leaves the queue.
    Ack,
    /// Try again from `at` (a 5xx or garbage answer).
    RetryAt { error: String, at: OffsetDateTime },
    /// Never reached the controller: pending again, the attempt not counted.
    Unsent { error: String },
    /// Final: `failed` with the controller's error kept.
    Failed { error: String },
    /// Final: `conflict` (DESIGN §8).
    Conflict { error: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub pending: u64,
    pub in_flight: u64,
    pub failed: u64,
    pub conflict: u64,
    pub total: u64,
    pub dropped_events: u64,
    /// Items caused by nodes (unauthenticated), of `total`.
    pub node_items: u64,
    /// Node items refused since the agent started: their share was full,
    /// their MAC over its rate, or a registration already queued.
    pub shed_node_items: u64,
    /// Depth by status, then kind (only the non-empty ones).
    pub by_kind: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "the queue is full ({0} items) and holds no event that could make room; \
         the change was not accepted"
    )]
    Full(u64),
    /// A node's item not admitted (DESIGN §7 "Admission").
    #[error("{0}; the change was not accepted")]
    Shed(String),
    #[error("no queue item {0}")]
    NotFound(u64),
    /// A conflict settled by someone else first: its check and its
    /// settlement commit together, so only one resolution lands.
    #[error("conflict {0} is already resolved")]
    Settled(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(super) fn db_err(e: impl Into<redb::Error>) -> QueueError {
    QueueError::Store(StoreError::Db(e.into()))
}

fn decode(bytes: &[u8]) -> Result<Item, QueueError> {
    serde_json::from_slice(bytes).map_err(|source| {
        QueueError::Store(StoreError::Corrupt {
            key: "queue item".into(),
            source,
        })
    })
}

fn encode(item: &Item) -> Vec<u8> {
    serde_json::to_vec(item).unwrap_or_default()
}

/// How many items the queue holds at most.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_items: u64,
    /// Of `max_items`, items of [`Origin::Node`] at most.
    pub max_node_items: u64,
}

impl Limits {
    pub fn from_config(config: &crate::config::QueueConfig) -> Limits {
        Limits {
            max_items: config.max_items,
            max_node_items: config.max_node_items,
        }
    }

    /// Node items may fill the whole queue (tests and benchmarks of other
    /// things than admission).
    pub fn unshared(max_items: u64) -> Limits {
        Limits {
            max_items,
            max_node_items: max_items,
        }
    }

    /// `max_items` with the default node share, a tenth.
    pub fn with_default_share(max_items: u64) -> Limits {
        Limits {
            max_items,
            max_node_items: (max_items / 10).max(1),
        }
    }
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

/// Moves an item of `kind` between statuses in the counters: the status
/// total and the status-and-kind depth (`pending/registration`, DESIGN §11
/// "queue depth by status and kind"). `None` is outside the queue.
fn count_status(
    counters: &mut Counters<'_>,
    kind: Kind,
    from: Option<Status>,
    to: Option<Status>,
) -> Result<(), QueueError> {
    if from == to {
        return Ok(());
    }
    for (status, delta) in [(from, -1), (to, 1)] {
        if let Some(status) = status {
            bump(counters, status.counter(), delta)?;
            bump(counters, &kind_key(status, kind), delta)?;
        }
    }
    Ok(())
}

/// Gives a stored item a new status: writes it and moves it in the
/// counters.
fn restatus(
    queue: &mut Items<'_>,
    counters: &mut Counters<'_>,
    key: (u8, u64),
    item: &mut Item,
    to: Status,
) -> Result<(), QueueError> {
    let from = item.status;
    item.status = to;
    queue.insert(key, encode(item).as_slice()).map_err(db_err)?;
    count_status(counters, item.kind, Some(from), Some(to))
}

fn kind_key(status: Status, kind: Kind) -> String {
    format!("{}/{}", status.counter(), kind.as_str())
}

/// Set once the counters hold depths by kind; a database written before
/// them is counted afresh at open.
const KINDS_COUNTED: &str = "kinds_counted";

fn bump(counters: &mut Counters<'_>, name: &str, delta: i64) -> Result<(), QueueError> {
    let current = counters
        .get(name)
        .map_err(db_err)?
        .map(|v| v.value())
        .unwrap_or(0);
    let next = (current as i64 + delta).max(0) as u64;
    if next == 0 {
        counters.remove(name).map_err(db_err)?;
    } else {
        counters.insert(name, next).map_err(db_err)?;
    }
    Ok(())
}

/// The [`QUEUE_NODES`] key counting a node's registrations and state
/// changes only (the plain MAC counts all its items).
fn changes_key(node: &str) -> String {
    format!("{node}/changes")
}

/// The [`QUEUE_NODES`] key counting a node's registrations still to send
/// (at most one is admitted).
fn registration_key(node: &str) -> String {
    format!("{node}/registration")
}

/// Keeps the `total` and `node_items` counters in step with an item
/// entering (+1) or leaving (-1) the queue.
fn count_item(counters: &mut Counters<'_>, item: &Item, delta: i64) -> Result<(), QueueError> {
    bump(counters, "total", delta)?;
    if item.origin == Origin::Node {
        bump(counters, "node_items", delta)?;
    }
    Ok(())
}

fn counter(counters: &Counters<'_>, name: &str) -> Result<u64, QueueError> {
    Ok(counters
        .get(name)
        .map_err(db_err)?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// Keeps [`QUEUE_NODES`] in step with a status change of one item.
fn track_node(
    nodes: &mut Counters<'_>,
    item: &Item,
    before: Option<Status>,
    after: Option<Status>,
) -> Result<(), QueueError> {
    let was = before.is_some_and(Status::is_active);
    let is = after.is_some_and(Status::is_active);
    let delta = match (was, is) {
        (false, true) => 1,
        (true, false) => -1,
        _ => return Ok(()),
    };
    bump(nodes, &item.node, delta)?;
    if item.kind != Kind::Event {
        bump(nodes, &changes_key(&item.node), delta)?;
    }
    if item.kind == Kind::Registration {
        bump(nodes, &registration_key(&item.node), delta)?;
    }
    Ok(())
}

impl Queue {
    /// Opens the queue tables; items left `in_flight` by a crash are
    /// `pending` again.
    pub fn open(store: Store, limits: Limits) -> Result<Queue, QueueError> {
        let instance = match store.get_meta(META_INSTANCE)? {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                store.put_meta(&[(META_INSTANCE, &id)])?;
                id
            }
        };
        let queue = Queue {
            store,
            limits,
            instance,
        };
        queue.quarantine_unreadable()?;
        queue.count_kinds_once()?;
        queue.recover_in_flight()?;
        Ok(queue)
    }

    /// Counts the queue afresh if its counters predate the depths by kind.
    fn count_kinds_once(&self) -> Result<(), QueueError> {
        let txn = self.store.begin_write()?;
        let counted = {
            let counters = txn.open_table(QUEUE_COUNTERS).map_err(db_err)?;
            counter(&counters, KINDS_COUNTED)? > 0
        };
        if counted {
            txn.abort()?;
        } else {
            recount(&txn)?;
            txn.commit()?;
        }
        Ok(())
    }

    /// Moves queue items that cannot be read into the store's quarantine
    /// (DESIGN §10: one bad record never stops the agent), then counts the
    /// queue afresh from the items that remain, in the same commit.
    fn quarantine_unreadable(&self) -> Result<usize, QueueError> {
        let txn = self.store.begin_write()?;
        let mut quarantined = Vec::new();
        {
            let mut queue = txn.open_table(QUEUE).map_err(db_err)?;
            let mut ids = txn.open_table(QUEUE_IDS).map_err(db_err)?;
            let mut bad = Vec::new();
            for entry in queue.iter().map_err(db_err)? {
                let (key, value) = entry.map_err(db_err)?;
                if let Err(e) = serde_json::from_slice::<Item>(value.value()) {
                    bad.push((key.value(), value.value().to_vec(), e.to_string()));
                }
            }
            for (key, raw, reason) in bad {
                let name = format!("{}-{}", key.0, key.1);
                Store::quarantine_in(&txn, "queue", &name, &raw, &reason)?;
                queue.remove(key).map_err(db_err)?;
                ids.remove(key.1).map_err(db_err)?;
                quarantined.push((name, reason));
            }
        }
        if quarantined.is_empty() {
            txn.abort()?;
            return Ok(0);
        }
        recount(&txn)?;
        txn.commit()?;
        for (key, reason) in &quarantined {
            tracing::error!(%key, %reason,
                "queue item unreadable; moved to the quarantine (GET /api/v1/status counts it)");
        }
        Ok(quarantined.len())
    }

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

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A fresh idempotency key of this queue's instance (for direct sends
    /// that may end up queued).
    pub fn direct_key(&self) -> String {
        format!("{}-d{}", self.instance, uuid::Uuid::new_v4().simple())
    }

    fn recover_in_flight(&self) -> Result<usize, QueueError> {
        let txn = self.store.begin_write()?;
        let mut recovered = 0;
        {
            let mut queue = txn.open_table(QUEUE).map_err(db_err)?;
            txn.open_table(QUEUE_IDS).map_err(db_err)?;
            txn.open_table(QUEUE_NODES).map_err(db_err)?;
            let mut counters = txn.open_table(QUEUE_COUNTERS).map_err(db_err)?;
            let mut stale = Vec::new();
            for entry in queue.iter().map_err(db_err)? {
                let (key, value) = entry.map_err(db_err)?;
                let item = decode(value.value())?;
                if item.status == Status::InFlight {
                    stale.push((key.value(), item));
                }
            }
            for (key, mut item) in stale {
                restatus(&mut queue, &mut counters, key, &mut item, Status::Pending)?;
                recovered += 1;
            }
        }
        txn.commit()?;
        if recovered > 0 {
            tracing::info!(
                recovered,
                "queue items in flight at the last stop are pending again"
            );
        }
        Ok(recovered)
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
            let mut queue = txn.open_table(QUEUE).map_err(db_err)?;
            let mut ids = txn.open_table(QUEUE_IDS).map_err(db_err)?;
            let mut counters = txn.open_table(QUEUE_COUNTERS).map_err(db_err)?;
            let mut nodes = txn.open_table(QUEUE_NODES).map_err(db_err)?;
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
        let mut queue = txn.open_table(QUEUE).map_err(db_err)?;
        let mut ids = txn.open_table(QUEUE_IDS).map_err(db_err)?;
        let mut counters = txn.open_table(QUEUE_COUNTERS).map_err(db_err)?;
        let mut nodes = txn.open_table(QUEUE_NODES).map_err(db_err)?;
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
            let mut queue = txn.open_table(QUEUE).map_err(db_err)?;
            let mut counters = txn.open_table(QUEUE_COUNTERS).map_err(db_err)?;
            let mut nodes = txn.open_table(QUEUE_NODES).map_err(db_err)?;
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
        let queue = match txn.open_table(QUEUE) {
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
            let mut queue = txn.open_table(QUEUE).map_err(db_err)?;
            let mut counters = txn.open_table(QUEUE_COUNTERS).map_err(db_err)?;
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
        let queue = match txn.open_table(QUEUE) {
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
            let mut queue = txn.open_table(QUEUE).map_err(db_err)?;
            let mut ids = txn.open_table(QUEUE_IDS).map_err(db_err)?;
            let mut counters = txn.open_table(QUEUE_COUNTERS).map_err(db_err)?;
            let mut nodes = txn.open_table(QUEUE_NODES).map_err(db_err)?;
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
            let queue = txn.open_table(QUEUE).map_err(db_err)?;
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

    /// Notes in `txn` (the commit that acks the change) that `node`'s
    /// change moved the controller's version `from` → `to`, extending the
    /// node's chain when it continues it.
    pub fn record_chain(
        txn: &crate::store::StoreWrite,
        node: &str,
        from: u64,
        to: u64,
    ) -> Result<(), QueueError> {
        let mut table = txn.open_table(QUEUE_CHAIN).map_err(db_err)?;
        let first = table
            .get(node)
            .map_err(db_err)?
            .and_then(|v| parse_chain(v.value()))
            .filter(|(_, latest)| *latest == from)
            .map_or(from, |(first, _)| first);
        table
            .insert(node, format!("{first}:{to}").as_str())
            .map_err(db_err)?;
        Ok(())
    }

    /// The versions `node`'s acked changes moved through, `first..latest`.
    pub fn chain(&self, node: &str) -> Result<Option<(u64, u64)>, QueueError> {
        let txn = self.store.begin_read()?;
        let table = match txn.open_table(QUEUE_CHAIN) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        let chain = table
            .get(node)
            .map_err(db_err)?
            .and_then(|v| parse_chain(v.value()));
        Ok(chain)
    }

    /// Points `node`'s later operations from a local id at the controller's
    /// (after its registration was accepted; see [`Operation::remap`]).
    /// Returns how many items changed.
    pub fn remap(
        &self,
        node: &str,
        from: &str,
        to: &str,
        base: Option<crate::central::ops::Base>,
    ) -> Result<usize, QueueError> {
        self.rewrite(node, |operation| operation.remap(from, to, base))
    }

    /// Applies `change` to each of `node`'s queued operations in one
    /// commit; returns how many it changed.
    fn rewrite(
        &self,
        node: &str,
        mut change: impl FnMut(&mut Operation) -> bool,
    ) -> Result<usize, QueueError> {
        let txn = self.store.begin_write()?;
        let mut changed = 0;
        {
            let mut queue = txn.open_table(QUEUE).map_err(db_err)?;
            let mut rewrites = Vec::new();
            for entry in queue.iter().map_err(db_err)? {
                let (key, value) = entry.map_err(db_err)?;
                let mut item = decode(value.value())?;
                if item.node != node {
                    continue;
                }
                // An unreadable payload is left as it is: replay fails it
                // with the reason.
                if let Ok(mut operation) = Operation::from_payload(&item.payload)
                    && change(&mut operation)
                {
                    let sent_payload = std::mem::replace(&mut item.payload, operation.to_payload());
                    rekey_if_changed(&mut item, &sent_payload);
                    rewrites.push((key.value(), item));
                }
            }
            for (key, item) in rewrites {
                queue
                    .insert(key, encode(&item).as_slice())
                    .map_err(db_err)?;
                changed += 1;
            }
        }
        txn.commit()?;
        Ok(changed)
    }

    /// Does `node` have items still to send?
    pub fn has_active(&self, node: &str) -> Result<bool, QueueError> {
        let txn = self.store.begin_read()?;
        match txn.open_table(QUEUE_NODES) {
            Ok(table) => Ok(table.get(node).map_err(db_err)?.is_some()),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(db_err(e)),
        }
    }

    /// Every node with registrations or state changes still to send: its
    /// cached record holds local changes the controller has not seen.
    pub fn nodes_with_changes(&self) -> Result<std::collections::HashSet<String>, QueueError> {
        let txn = self.store.begin_read()?;
        let table = match txn.open_table(QUEUE_NODES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Default::default()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = std::collections::HashSet::new();
        for entry in table.iter().map_err(db_err)? {
            let (key, _) = entry.map_err(db_err)?;
            if let Some(node) = key.value().strip_suffix("/changes") {
                out.insert(node.to_string());
            }
        }
        Ok(out)
    }

    /// Up to `limit` items in send order after `cursor` (from the start
    /// if None), optionally of one status, and the cursor of the last one
    /// returned. Unlike an offset, a cursor does not skip items when items
    /// ahead of it leave the queue between two pages (replay runs on).
    pub fn list_after(
        &self,
        status: Option<Status>,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<(Vec<Item>, Option<Cursor>), QueueError> {
        let txn = self.store.begin_read()?;
        let queue = match txn.open_table(QUEUE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), None)),
            Err(e) => return Err(db_err(e)),
        };
        let start = match cursor {
            None => (0, 0),
            Some(Cursor(priority, id)) if id == u64::MAX => (priority.saturating_add(1), 0),
            Some(Cursor(priority, id)) => (priority, id + 1),
        };
        let mut out = Vec::new();
        let mut last = None;
        for entry in queue.range(start..).map_err(db_err)? {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry.map_err(db_err)?;
            let item = decode(value.value())?;
            let (priority, id) = key.value();
            last = Some(Cursor(priority, id));
            if status.is_none_or(|s| s == item.status) {
                out.push(item);
            }
        }
        Ok((out, last))
    }

    /// Items in send order, optionally of one status.
    pub fn list(
        &self,
        status: Option<Status>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Item>, QueueError> {
        let txn = self.store.begin_read()?;
        let queue = match txn.open_table(QUEUE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        let mut skipped = 0;
        for entry in queue.iter().map_err(db_err)? {
            let (_, value) = entry.map_err(db_err)?;
            let item = decode(value.value())?;
            if status.is_some_and(|s| s != item.status) {
                continue;
            }
            if skipped < offset {
                skipped += 1;
                continue;
            }
            if out.len() >= limit {
                break;
            }
            out.push(item);
        }
        Ok(out)
    }

    pub fn stats(&self) -> Result<Stats, QueueError> {
        let txn = self.store.begin_read()?;
        let counters = match txn.open_table(QUEUE_COUNTERS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Stats::default()),
            Err(e) => return Err(db_err(e)),
        };
        let get = |name: &str| -> Result<u64, QueueError> {
            Ok(counters
                .get(name)
                .map_err(db_err)?
                .map(|v| v.value())
                .unwrap_or(0))
        };
        Ok(Stats {
            pending: get("pending")?,
            in_flight: get("in_flight")?,
            failed: get("failed")?,
            conflict: get("conflict")?,
            total: get("total")?,
            dropped_events: get("dropped_events")?,
            node_items: get("node_items")?,
            shed_node_items: 0,
            by_kind: by_kind(&counters)?,
        })
    }
}

fn by_kind(
    counters: &redb::ReadOnlyTable<&str, u64>,
) -> Result<std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>, QueueError>
{
    let mut depths = std::collections::BTreeMap::new();
    for status in [
        Status::Pending,
        Status::InFlight,
        Status::Failed,
        Status::Conflict,
    ] {
        for kind in [Kind::Registration, Kind::StateUpdate, Kind::Event] {
            let items = counter_ro(counters, &kind_key(status, kind))?;
            if items > 0 {
                depths
                    .entry(status.counter().to_string())
                    .or_insert_with(std::collections::BTreeMap::new)
                    .insert(kind.as_str().to_string(), items);
            }
        }
    }
    Ok(depths)
}

fn counter_ro(counters: &redb::ReadOnlyTable<&str, u64>, name: &str) -> Result<u64, QueueError> {
    Ok(counters
        .get(name)
        .map_err(db_err)?
        .map(|v| v.value())
        .unwrap_or(0))
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

fn parse_chain(text: &str) -> Option<(u64, u64)> {
    let (first, latest) = text.split_once(':')?;
    Some((first.parse().ok()?, latest.parse().ok()?))
}

/// Counts the queue afresh from its items: the status counters, `total`,
/// `node_items` and [`QUEUE_NODES`] (after items were removed without
/// being read, so their counts are unknown). The id sequence and the count
/// of dropped events are kept.
fn recount(txn: &crate::store::StoreWrite) -> Result<(), QueueError> {
    let queue = txn.open_table(QUEUE).map_err(db_err)?;
    let mut counters = txn.open_table(QUEUE_COUNTERS).map_err(db_err)?;
    let mut nodes = txn.open_table(QUEUE_NODES).map_err(db_err)?;
    let keep = ["next_id", "dropped_events"];
    counters
        .retain(|name, _| keep.contains(&name))
        .map_err(db_err)?;
    // The kinds are counted from here on (a database from before them
    // comes through here once, at open).
    counters.insert(KINDS_COUNTED, 1).map_err(db_err)?;
    nodes.retain(|_, _| false).map_err(db_err)?;
    for entry in queue.iter().map_err(db_err)? {
        let (_, value) = entry.map_err(db_err)?;
        let item = decode(value.value())?;
        count_status(&mut counters, item.kind, None, Some(item.status))?;
        count_item(&mut counters, &item, 1)?;
        track_node(&mut nodes, &item, None, Some(item.status))?;
    }
    Ok(())
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
mod tests {
    #[test]
    fn a_changed_request_takes_the_next_key_in_its_line() {
        assert_eq!(super::next_key("q1-7"), "q1-7.1");
        assert_eq!(super::next_key("q1-7.1"), "q1-7.2");
        assert_eq!(super::next_key("q1-d3f.9"), "q1-d3f.10");
        assert_eq!(super::next_key(".5"), ".5.1");
    }

    use super::*;
    use std::time::Duration;

    fn queue(max: u64) -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, Queue::open(store, Limits::unshared(max)).unwrap())
    }

    fn item(kind: Kind, node: &str, n: u32) -> NewItem {
        NewItem {
            kind,
            origin: Origin::Operator,
            node: node.into(),
            payload: serde_json::json!({ "n": n }),
            key: None,
            local_state: None,
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(20000)
    }

    fn depth(q: &Queue, status: &str, kind: &str) -> u64 {
        let stats = q.stats().unwrap();
        stats
            .by_kind
            .get(status)
            .and_then(|d| d.get(kind))
            .copied()
            .unwrap_or(0)
    }

    #[test]
    fn depths_by_status_and_kind_follow_every_move_and_survive_a_recount() {
        let (dir, q) = queue(100);
        let ids = q
            .enqueue_many(
                vec![
                    item(Kind::Registration, "a", 1),
                    item(Kind::StateUpdate, "b", 2),
                    item(Kind::Event, "c", 3),
                    item(Kind::Event, "d", 4),
                ],
                now(),
            )
            .unwrap()
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(depth(&q, "pending", "registration"), 1);
        assert_eq!(depth(&q, "pending", "event"), 2);
        let taken = q.take_batch(10, now()).unwrap();
        assert_eq!(taken.len(), 4);
        assert_eq!(depth(&q, "in_flight", "event"), 2);
        assert_eq!(depth(&q, "pending", "event"), 0);
        q.ack(ids[0]).unwrap();
        q.fail(ids[1], "refused", None).unwrap();
        q.fail(ids[2], "unreachable", Some(now())).unwrap();
        assert_eq!(depth(&q, "in_flight", "registration"), 0);
        assert_eq!(depth(&q, "failed", "state_update"), 1);
        assert_eq!(depth(&q, "pending", "event"), 1);
        assert_eq!(depth(&q, "in_flight", "event"), 1);
        let stats = q.stats().unwrap();
        let summed: u64 = stats.by_kind.values().flat_map(|d| d.values()).sum();
        assert_eq!(summed, stats.total);

        // A database from before the depths by kind: its marker and kind
        // counters are gone; opening it counts them afresh (the item in
        // flight at the "crash" is pending again).
        drop(q);
        let store = Store::open(dir.path()).unwrap();
        {
            let txn = store.begin_write().unwrap();
            {
                let mut counters = txn.open_table(QUEUE_COUNTERS).unwrap();
                counters
                    .retain(|name, _| !name.contains('/') && name != KINDS_COUNTED)
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let q = Queue::open(store, Limits::unshared(100)).unwrap();
        assert_eq!(depth(&q, "failed", "state_update"), 1);
        assert_eq!(depth(&q, "pending", "event"), 2);
        assert_eq!(q.stats().unwrap().pending, 2);
    }

    #[test]
    fn priorities_then_fifo_and_one_item_per_node_at_a_time() {
        let (_d, q) = queue(100);
        let ids = q
            .enqueue_many(
                vec![
                    item(Kind::Event, "a", 1),
                    item(Kind::StateUpdate, "a", 2),
                    item(Kind::Registration, "b", 3),
                    item(Kind::StateUpdate, "b", 4),
                    item(Kind::Event, "c", 5),
                ],
                now(),
            )
            .unwrap();
        assert!(ids.iter().all(Result::is_ok));
        let peeked = q.peek(10, now()).unwrap();
        let batch = q.take_batch(10, now()).unwrap();
        assert_eq!(
            peeked.len(),
            batch.len(),
            "peek shows what take_batch takes"
        );
        assert!(peeked.iter().zip(&batch).all(|(p, b)| p.id == b.id));
        assert!(
            q.peek(10, now()).unwrap().is_empty(),
            "the rest waits behind the items in flight"
        );
        let order: Vec<(Kind, &str)> = batch.iter().map(|i| (i.kind, i.node.as_str())).collect();
        // b's registration first; a's state update; c's event. b's state
        // update and a's event wait for their node's earlier item.
        assert_eq!(
            order,
            [
                (Kind::Registration, "b"),
                (Kind::StateUpdate, "a"),
                (Kind::Event, "c")
            ]
        );
        for i in &batch {
            q.ack(i.id).unwrap();
        }
        let next: Vec<u32> = q
            .take_batch(10, now())
            .unwrap()
            .iter()
            .map(|i| i.payload["n"].as_u64().unwrap() as u32)
            .collect();
        assert_eq!(next, [4, 1]);
    }

    #[test]
    fn failures_back_off_then_fail_for_good() {
        let (_d, q) = queue(100);
        let id = q
            .enqueue_many(vec![item(Kind::StateUpdate, "a", 1)], now())
            .unwrap()[0]
            .as_ref()
            .copied()
            .unwrap();
        q.take_batch(1, now()).unwrap();
        let later = now() + time::Duration::seconds(30);
        q.fail(id, "503", Some(later)).unwrap();
        assert!(q.take_batch(1, now()).unwrap().is_empty(), "backing off");
        assert_eq!(q.take_batch(1, later).unwrap()[0].attempts, 2);
        let item = q.fail(id, "400 invalid transition", None).unwrap().unwrap();
        assert_eq!(item.status, Status::Failed);
        assert_eq!(item.last_error.as_deref(), Some("400 invalid transition"));
        assert_eq!(q.stats().unwrap().failed, 1);
        q.retry(id).unwrap();
        assert_eq!(q.stats().unwrap().pending, 1);
        q.take_batch(1, now()).unwrap();
        q.fail(id, "400", None).unwrap();
        assert_eq!(q.clear_failed().unwrap(), 1);
        assert_eq!(q.stats().unwrap(), Stats::default());
    }

    #[test]
    fn a_full_queue_drops_the_oldest_event_never_a_state_change() {
        let (_d, q) = queue(3);
        q.enqueue_many(
            vec![
                item(Kind::Event, "a", 1),
                item(Kind::Event, "a", 2),
                item(Kind::StateUpdate, "b", 3),
            ],
            now(),
        )
        .unwrap();
        let r = q
            .enqueue_many(vec![item(Kind::StateUpdate, "c", 4)], now())
            .unwrap();
        assert!(r[0].is_ok());
        let kept: Vec<u64> = q
            .list(None, 0, 10)
            .unwrap()
            .iter()
            .map(|i| i.payload["n"].as_u64().unwrap())
            .collect();
        assert_eq!(kept, [3, 4, 2], "event 1 dropped");
        q.enqueue_many(vec![item(Kind::Registration, "d", 5)], now())
            .unwrap();
        // Now no event is left to drop: a state change is refused, not lost silently.
        let r = q
            .enqueue_many(vec![item(Kind::StateUpdate, "e", 6)], now())
            .unwrap();
        assert!(matches!(r[0], Err(QueueError::Full(3))), "{:?}", r[0]);
        let stats = q.stats().unwrap();
        assert_eq!((stats.total, stats.dropped_events), (3, 2));
    }

    fn from_node(kind: Kind, node: &str, n: u32) -> NewItem {
        NewItem {
            origin: Origin::Node,
            ..item(kind, node, n)
        }
    }

    #[test]
    fn node_items_keep_to_their_share_and_operators_still_find_room() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_items: 10,
            max_node_items: 3,
        };
        let q = Queue::open(Store::open(dir.path()).unwrap(), limits).unwrap();
        // Nodes try to fill the whole queue with registrations and reports.
        let flood: Vec<NewItem> = (0..10)
            .map(|n| from_node(Kind::Registration, &format!("m{n}"), n))
            .chain((10..20).map(|n| from_node(Kind::StateUpdate, &format!("m{n}"), n)))
            .collect();
        let results = q.enqueue_many(flood, now()).unwrap();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
        assert!(
            results[3..]
                .iter()
                .all(|r| matches!(r, Err(QueueError::Shed(_)))),
            "{results:?}"
        );
        // Operators have the other seven places.
        let operator: Vec<NewItem> = (0..7).map(|n| item(Kind::StateUpdate, "op", n)).collect();
        let results = q.enqueue_many(operator, now()).unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let stats = q.stats().unwrap();
        assert_eq!((stats.total, stats.node_items), (10, 3));
        // An item that leaves gives its place back to its own kind.
        let first = q.list(None, 0, 1).unwrap().remove(0);
        assert_eq!(first.origin, Origin::Node);
        q.ack(first.id).unwrap();
        assert_eq!(q.stats().unwrap().node_items, 2);
        let r = q
            .enqueue_many(vec![from_node(Kind::StateUpdate, "m99", 99)], now())
            .unwrap();
        assert!(r[0].is_ok(), "{r:?}");
    }

    #[test]
    fn a_node_event_makes_room_in_the_share_by_dropping_the_oldest_event() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_items: 100,
            max_node_items: 2,
        };
        let q = Queue::open(Store::open(dir.path()).unwrap(), limits).unwrap();
        for n in 0..5 {
            let r = q
                .enqueue_many(vec![from_node(Kind::Event, "m", n)], now())
                .unwrap();
            assert!(r[0].is_ok());
        }
        let kept: Vec<u64> = q
            .list(None, 0, 10)
            .unwrap()
            .iter()
            .map(|i| i.payload["n"].as_u64().unwrap())
            .collect();
        assert_eq!(kept, [3, 4]);
        let stats = q.stats().unwrap();
        assert_eq!((stats.node_items, stats.dropped_events), (2, 3));
    }

    #[test]
    fn one_registration_per_mac_until_it_is_sent() {
        let (_d, q) = queue(100);
        let r = q
            .enqueue_many(
                vec![
                    from_node(Kind::Registration, "m", 1),
                    from_node(Kind::Registration, "m", 2),
                    from_node(Kind::Registration, "n", 3),
                ],
                now(),
            )
            .unwrap();
        assert!(r[0].is_ok() && r[2].is_ok());
        assert!(matches!(&r[1], Err(QueueError::Shed(why)) if why.contains("already queued")));
        let id = *r[0].as_ref().unwrap();
        q.ack(id).unwrap();
        let r = q
            .enqueue_many(vec![from_node(Kind::Registration, "m", 4)], now())
            .unwrap();
        assert!(r[0].is_ok(), "sent: a new one may be queued: {r:?}");
    }

    #[test]
    fn paging_by_cursor_skips_nothing_while_items_leave() {
        let (_d, q) = queue(100);
        let items = (0..6)
            .map(|n| item(Kind::StateUpdate, &format!("m{n}"), n))
            .chain([item(Kind::Registration, "r", 6)])
            .collect();
        q.enqueue_many(items, now()).unwrap();
        let (page, cursor) = q.list_after(None, None, 3).unwrap();
        let n = |items: &[Item]| -> Vec<u64> {
            items
                .iter()
                .map(|i| i.payload["n"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(n(&page), [6, 0, 1], "send order: the registration first");
        // Two items of the first page leave (replay took them).
        q.ack(page[0].id).unwrap();
        q.ack(page[1].id).unwrap();
        let cursor = cursor.unwrap().to_string().parse::<Cursor>().unwrap();
        let (page, cursor) = q.list_after(None, Some(cursor), 3).unwrap();
        assert_eq!(n(&page), [2, 3, 4]);
        let (page, _) = q.list_after(None, cursor, 3).unwrap();
        assert_eq!(n(&page), [5]);
        for bad in ["", "1", "-1", "1-", "x-1", "1-2-3", "300-1", "1-+2"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_unreadable_item_is_quarantined_and_the_queue_counted_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let bad_id = {
            let q = Queue::open(Store::open(dir.path()).unwrap(), Limits::unshared(10)).unwrap();
            let ids = q
                .enqueue_many(
                    vec![
                        item(Kind::StateUpdate, "m", 1),
                        from_node(Kind::Registration, "n", 2),
                        item(Kind::StateUpdate, "m", 3),
                    ],
                    now(),
                )
                .unwrap();
            let bad_id = *ids[1].as_ref().unwrap();
            let txn = q.store().begin_write().unwrap();
            txn.open_table(QUEUE)
                .unwrap()
                .insert(
                    (Kind::Registration.priority(), bad_id),
                    b"garbage".as_slice(),
                )
                .unwrap();
            txn.commit().unwrap();
            bad_id
        };
        let store = Store::open(dir.path()).unwrap();
        let q = Queue::open(store.clone(), Limits::unshared(10)).unwrap();
        let stats = q.stats().unwrap();
        assert_eq!(
            (stats.total, stats.pending, stats.node_items),
            (2, 2, 0),
            "counted from what remains"
        );
        assert!(!q.has_active("n").unwrap());
        assert!(q.has_active("m").unwrap());
        let quarantined = store.quarantined().unwrap();
        assert_eq!(quarantined.len(), 1);
        assert_eq!(quarantined[0].table, "queue");
        assert_eq!(quarantined[0].key, format!("0-{bad_id}"));
        // The sequence goes on: no id is reused.
        let r = q
            .enqueue_many(vec![item(Kind::Event, "m", 4)], now())
            .unwrap();
        assert!(*r[0].as_ref().unwrap() > bad_id);
    }

    #[test]
    fn in_flight_items_are_pending_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(Store::open(dir.path()).unwrap(), Limits::unshared(10)).unwrap();
            q.enqueue_many(
                vec![item(Kind::Event, "a", 1), item(Kind::Event, "b", 2)],
                now(),
            )
            .unwrap();
            assert_eq!(q.take_batch(10, now()).unwrap().len(), 2);
            assert_eq!(q.stats().unwrap().in_flight, 2);
        }
        let q = Queue::open(Store::open(dir.path()).unwrap(), Limits::unshared(10)).unwrap();
        let stats = q.stats().unwrap();
        assert_eq!((stats.pending, stats.in_flight), (2, 0));
        assert_eq!(q.take_batch(10, now()).unwrap().len(), 2);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(300);
        for attempts in 1..=12 {
            let full = base.saturating_mul(1 << (attempts - 1)).min(max);
            for random in [0u64, 7, u64::MAX] {
                let d = backoff(attempts, base, max, random);
                assert!(d >= full / 2 && d <= full, "{attempts}: {d:?}");
            }
        }
        assert_eq!(backoff(40, base, max, 0), Duration::from_secs(150));
    }

    #[test]
    fn node_tracking_follows_every_status_change() {
        let (_d, q) = queue(100);
        q.enqueue_many(
            vec![item(Kind::Event, "a", 1), item(Kind::StateUpdate, "b", 2)],
            now(),
        )
        .unwrap();
        assert!(q.has_active("a").unwrap() && q.has_active("b").unwrap());
        assert!(!q.has_active("c").unwrap());
        let changed = q.nodes_with_changes().unwrap();
        assert_eq!(
            changed.into_iter().collect::<Vec<_>>(),
            ["b"],
            "events do not count"
        );
        let batch = q.take_batch(10, now()).unwrap();
        assert!(q.has_active("a").unwrap(), "in flight still counts");
        let later = now() + time::Duration::seconds(5);
        q.settle(vec![
            (
                batch[0].id,
                Outcome::Failed {
                    error: "400".into(),
                },
            ),
            (batch[1].id, Outcome::Ack),
        ])
        .unwrap();
        assert!(!q.has_active("a").unwrap() && !q.has_active("b").unwrap());
        assert!(q.nodes_with_changes().unwrap().is_empty());
        // An operator's retry makes it count again.
        let failed = q.list(Some(Status::Failed), 0, 10).unwrap();
        q.retry(failed[0].id).unwrap();
        assert!(q.has_active(&failed[0].node).unwrap());
        let batch = q.take_batch(10, now()).unwrap();
        q.settle(vec![(
            batch[0].id,
            Outcome::RetryAt {
                error: "503".into(),
                at: later,
            },
        )])
        .unwrap();
        assert!(
            q.has_active(&failed[0].node).unwrap(),
            "backing off still counts"
        );
        q.delete(batch[0].id).unwrap();
        assert!(!q.has_active(&failed[0].node).unwrap());
        assert_eq!(q.stats().unwrap(), Stats::default());
    }

    #[test]
    fn unsent_items_keep_their_attempt_count_and_keys_are_stable() {
        let (_d, q) = queue(100);
        let mut keyed = item(Kind::StateUpdate, "a", 1);
        keyed.key = Some("direct-key".into());
        q.enqueue_many(vec![keyed, item(Kind::StateUpdate, "b", 2)], now())
            .unwrap();
        let batch = q.take_batch(10, now()).unwrap();
        assert_eq!(batch[0].key, "direct-key");
        assert!(batch[1].key.ends_with(&format!("-{}", batch[1].id)));
        let after = q
            .settle(
                batch
                    .iter()
                    .map(|i| {
                        (
                            i.id,
                            Outcome::Unsent {
                                error: "refused".into(),
                            },
                        )
                    })
                    .collect(),
            )
            .unwrap();
        for item in after.into_iter().flatten() {
            assert_eq!((item.status, item.attempts), (Status::Pending, 0));
        }
        let again = q.take_batch(10, now()).unwrap();
        assert_eq!(again[1].key, batch[1].key, "same key on every attempt");
    }

    #[test]
    fn remap_rewrites_only_that_nodes_local_id() {
        let (_d, q) = queue(100);
        let with_id = |node: &str, id: &str| NewItem {
            kind: Kind::StateUpdate,
            origin: Origin::Operator,
            node: node.into(),
            payload: Operation::SetState {
                node_id: id.into(),
                change: crate::central::api::StateChange {
                    state: crate::model::node::NodeState::Active,
                    comment: None,
                    force: None,
                    base_version: None,
                },
                base_changed_at: None,
                base_state: None,
            }
            .to_payload(),
            key: None,
            local_state: None,
        };
        q.enqueue_many(
            vec![
                with_id("a", "local-1"),
                with_id("a", "local-1"),
                with_id("b", "local-1"),
                with_id("a", "other"),
            ],
            now(),
        )
        .unwrap();
        assert_eq!(q.remap("a", "local-1", "node-7", None).unwrap(), 2);
        let ids: Vec<String> = q
            .list(None, 0, 10)
            .unwrap()
            .iter()
            .map(|i| i.payload["node_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["node-7", "node-7", "local-1", "other"]);
    }

    #[test]
    fn clear_failed_removes_failed_items_and_counts_them() {
        let (_d, q) = queue(100);
        q.enqueue_many(
            vec![item(Kind::Event, "a", 1), item(Kind::Event, "b", 2)],
            now(),
        )
        .unwrap();
        for i in q.take_batch(10, now()).unwrap() {
            q.fail(i.id, "400", None).unwrap();
        }
        assert_eq!(q.clear_failed().unwrap(), 2);
        assert!(matches!(q.retry(1), Err(QueueError::NotFound(1))));
        assert_eq!(q.stats().unwrap(), Stats::default());
    }

    #[test]
    fn a_local_state_commits_with_its_item_and_not_without_it() {
        let (_d, q) = queue(1);
        let mac: crate::model::mac::Mac = "52:54:00:00:00:07".parse().unwrap();
        q.store()
            .put_node(&crate::model::node::Node::new_local(
                mac,
                crate::model::node::NodeState::Active,
                now(),
            ))
            .unwrap();
        let change = |n: u32| NewItem {
            local_state: Some(crate::model::node::NodeState::Reprovision),
            ..item(Kind::StateUpdate, "52:54:00:00:00:07", n)
        };
        let (results, nodes) = q.enqueue_batch(vec![change(1)], now()).unwrap();
        assert!(results[0].is_ok());
        assert_eq!(nodes[0].state, crate::model::node::NodeState::Reprovision);
        assert_eq!(
            q.store().get_node(mac).unwrap().unwrap().state,
            crate::model::node::NodeState::Reprovision
        );
        // Full, nothing to drop: refused, and the cache is not touched.
        let mut refused = change(2);
        refused.local_state = Some(crate::model::node::NodeState::Retired);
        let (results, nodes) = q.enqueue_batch(vec![refused], now()).unwrap();
        assert!(matches!(results[0], Err(QueueError::Full(1))));
        assert!(nodes.is_empty());
        assert_eq!(
            q.store().get_node(mac).unwrap().unwrap().state,
            crate::model::node::NodeState::Reprovision
        );
    }
}
