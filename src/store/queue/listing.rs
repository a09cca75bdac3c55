//! Reading the queue for operators: pages by cursor, the counts, and which
//! nodes have items.

use super::*;

impl Queue {
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
        let queue = match txn.redb().open_table(QUEUE) {
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
        let queue = match txn.redb().open_table(QUEUE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let items = queue.iter().map_err(db_err)?.map(|entry| {
            let (_, value) = entry.map_err(db_err)?;
            decode(value.value())
        });
        crate::store::page(
            items,
            |item: &Item| status.is_none_or(|s| s == item.status),
            offset,
            limit,
        )
    }

    /// The counts by status, kind and origin.
    pub fn stats(&self) -> Result<Stats, QueueError> {
        let txn = self.store.begin_read()?;
        let counters = match txn.redb().open_table(QUEUE_COUNTERS) {
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

    /// Does `node` have items still to send?
    pub fn has_active(&self, node: &str) -> Result<bool, QueueError> {
        let txn = self.store.begin_read()?;
        match txn.redb().open_table(QUEUE_NODES) {
            Ok(table) => Ok(table.get(node).map_err(db_err)?.is_some()),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(db_err(e)),
        }
    }

    /// Every node with registrations or state changes still to send: its
    /// cached record holds local changes the controller has not seen.
    pub fn nodes_with_changes(&self) -> Result<std::collections::HashSet<String>, QueueError> {
        let txn = self.store.begin_read()?;
        let table = match txn.redb().open_table(QUEUE_NODES) {
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
