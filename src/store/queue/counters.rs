//! The queue's counters, kept in the same commit as every move of an item:
//! depth by status and kind, and per node its changes and registration.

use super::*;

/// Moves an item of `kind` between statuses in the counters: the status
/// total and the status-and-kind depth (`pending/registration`, DESIGN §11
/// "queue depth by status and kind"). `None` is outside the queue.
pub(super) fn count_status(
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
pub(super) fn restatus(
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

pub(super) fn kind_key(status: Status, kind: Kind) -> String {
    format!("{}/{}", status.counter(), kind.as_str())
}

/// Set once the counters hold depths by kind; a database written before
/// them is counted afresh at open.
pub(super) const KINDS_COUNTED: &str = "kinds_counted";

pub(super) fn bump(counters: &mut Counters<'_>, name: &str, delta: i64) -> Result<(), QueueError> {
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
pub(super) fn changes_key(node: &str) -> String {
    format!("{node}/changes")
}

/// The [`QUEUE_NODES`] key counting a node's registrations still to send
/// (at most one is admitted).
pub(super) fn registration_key(node: &str) -> String {
    format!("{node}/registration")
}

/// Keeps the `total` and `node_items` counters in step with an item
/// entering (+1) or leaving (-1) the queue.
pub(super) fn count_item(
    counters: &mut Counters<'_>,
    item: &Item,
    delta: i64,
) -> Result<(), QueueError> {
    bump(counters, "total", delta)?;
    if item.origin == Origin::Node {
        bump(counters, "node_items", delta)?;
    }
    Ok(())
}

pub(super) fn counter(counters: &Counters<'_>, name: &str) -> Result<u64, QueueError> {
    Ok(counters
        .get(name)
        .map_err(db_err)?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// Keeps [`QUEUE_NODES`] in step with a status change of one item.
pub(super) fn track_node(
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

pub(super) fn counter_ro(
    counters: &redb::ReadOnlyTable<&str, u64>,
    name: &str,
) -> Result<u64, QueueError> {
    Ok(counters
        .get(name)
        .map_err(db_err)?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// Counts the queue afresh from its items: the status counters, `total`,
/// `node_items` and [`QUEUE_NODES`] (after items were removed without
/// being read, so their counts are unknown). The id sequence and the count
/// of dropped events are kept.
pub(super) fn recount(txn: &crate::store::StoreWrite) -> Result<(), QueueError> {
    let queue = txn.redb().open_table(QUEUE).map_err(db_err)?;
    let mut counters = txn.redb().open_table(QUEUE_COUNTERS).map_err(db_err)?;
    let mut nodes = txn.redb().open_table(QUEUE_NODES).map_err(db_err)?;
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
