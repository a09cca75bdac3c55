//! Conflicts (DESIGN §8): a change the agent holds that no longer fits the
//! controller. Each is a durable record in the agent's database, written
//! in the same commit as the queue change that finds it, so that a crash
//! never leaves a conflicting item without its record or the reverse.
//! At most one conflict per node is open at a time; while it is, the
//! node's queued item stays in status `conflict` and its later items wait
//! behind it.

use redb::{ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::queue::{Origin, QueueError, db_err};
use crate::model::node::NodeState;
use crate::store::schema::{
    CONFLICTS, CONFLICTS_META, CONFLICTS_OPEN, CONFLICTS_OPEN_IDS, CONFLICTS_RESOLVED_IDS,
};
use crate::store::{Store, StoreError, StoreWrite};

/// What kind of disagreement with the controller (DESIGN §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The controller's record moved on since the change was made.
    StateMismatch,
    /// The controller no longer has a node the agent holds changes for.
    MissingCentral,
    /// The controller refused for good a node registered offline.
    MissingLocal,
}

impl Kind {
    /// The kind's name in the API and the policy keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::StateMismatch => "state_mismatch",
            Kind::MissingCentral => "missing_central",
            Kind::MissingLocal => "missing_local",
        }
    }
}

/// Who made the local change: an operator at the site, or the node
/// itself (an installer's report: an observation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOrigin {
    /// An operator's change at the site.
    Operator,
    /// The node's own report (an installer): an observation.
    Observed,
}

impl From<Origin> for ChangeOrigin {
    fn from(origin: Origin) -> Self {
        match origin {
            Origin::Operator => ChangeOrigin::Operator,
            Origin::Node => ChangeOrigin::Observed,
        }
    }
}

/// The site's side of a conflict: the queued change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalSide {
    /// The state the change sets (None: a registration).
    pub state: Option<NodeState>,
    /// Who made it.
    pub origin: ChangeOrigin,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub changed_at: OffsetDateTime,
    /// The queue item that carries it.
    pub queue_id: u64,
}

/// The controller's side of a conflict: its record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CentralSide {
    /// The controller's state for the node.
    pub state: NodeState,
    /// None for a controller without versions.
    pub version: Option<u64>,
    /// When the controller's record last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Whether a conflict still waits for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not settled yet.
    Open,
    /// Settled (by an operator or a policy).
    Resolved,
}

/// A conflict the agent found while replaying its queue (DESIGN §8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// Its id, in the order found.
    pub id: u64,
    /// What kind it is.
    pub kind: Kind,
    /// The node's MAC.
    pub mac: String,
    /// The node's id at the controller (or its local id).
    pub node_id: String,
    /// The site's change.
    pub local: LocalSide,
    /// The controller's record when the conflict was found (None: it has
    /// none, or it could not be read).
    pub central: Option<CentralSide>,
    /// When it was found.
    #[serde(with = "time::serde::rfc3339")]
    pub detected_at: OffsetDateTime,
    /// Open or resolved.
    pub status: Status,
    /// How it was settled (`keep_local`, `keep_central`, …).
    #[serde(default)]
    pub resolution: Option<String>,
    /// Who settled it (an operator's name, or `policy`).
    #[serde(default)]
    pub resolved_by: Option<String>,
    /// When it was settled.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
    /// The operator's comment, if any.
    #[serde(default)]
    pub comment: Option<String>,
    /// What the controller said.
    pub error: String,
}

/// A conflict found, before it has an id.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// What kind it is.
    pub kind: Kind,
    /// The node's MAC.
    pub mac: String,
    /// The node's id at the controller (or its local id).
    pub node_id: String,
    /// The site's change.
    pub local: LocalSide,
    /// The controller's record, when it has one.
    pub central: Option<CentralSide>,
    /// What the controller said.
    pub error: String,
}

fn decode(bytes: &[u8]) -> Result<Conflict, QueueError> {
    serde_json::from_slice(bytes).map_err(|source| {
        QueueError::Store(StoreError::Corrupt {
            key: "conflict".into(),
            source,
        })
    })
}

fn encode(conflict: &Conflict) -> Vec<u8> {
    serde_json::to_vec(conflict).unwrap_or_default()
}

/// Records `found` as an open conflict in `txn` (the queue's commit that
/// parks its item), with its sync-log entry; returns the record. A node with an open conflict
/// already keeps that one: the new finding is added to the sync log by the
/// caller, not recorded twice.
pub fn open(
    txn: &StoreWrite,
    found: Found,
    now: OffsetDateTime,
) -> Result<Option<Conflict>, QueueError> {
    let mut open = txn.redb().open_table(CONFLICTS_OPEN).map_err(db_err)?;
    if open.get(found.mac.as_str()).map_err(db_err)?.is_some() {
        return Ok(None);
    }
    let mut meta = txn.redb().open_table(CONFLICTS_META).map_err(db_err)?;
    let id = meta
        .get("next_id")
        .map_err(db_err)?
        .map(|v| v.value())
        .unwrap_or(1);
    meta.insert("next_id", id + 1).map_err(db_err)?;
    let conflict = Conflict {
        id,
        kind: found.kind,
        mac: found.mac,
        node_id: found.node_id,
        local: found.local,
        central: found.central,
        detected_at: now,
        status: Status::Open,
        resolution: None,
        resolved_by: None,
        resolved_at: None,
        comment: None,
        error: found.error,
    };
    txn.redb()
        .open_table(CONFLICTS)
        .map_err(db_err)?
        .insert(id, encode(&conflict).as_slice())
        .map_err(db_err)?;
    open.insert(conflict.mac.as_str(), id).map_err(db_err)?;
    txn.redb()
        .open_table(CONFLICTS_OPEN_IDS)
        .map_err(db_err)?
        .insert(id, ())
        .map_err(db_err)?;
    if meta.get("indexed").map_err(db_err)?.is_none() && id == 1 {
        // The first record of a new database: its indexes are complete.
        meta.insert("indexed", 1).map_err(db_err)?;
    }
    let detail = format!(
        "conflict {} {} for {}: local {} ({:?}), controller {}",
        conflict.id,
        conflict.kind.as_str(),
        conflict.mac,
        conflict
            .local
            .state
            .map(|s| s.as_str())
            .unwrap_or("registration"),
        conflict.local.origin,
        conflict
            .central
            .as_ref()
            .map(|c| c.state.as_str())
            .unwrap_or("none"),
    );
    txn.append_sync_log("conflict_detected", &detail, now)?;
    Ok(Some(conflict))
}

/// Marks conflict `id` resolved in `txn` (the commit that applies the
/// resolution to its queue item), with its sync-log entry; returns the
/// record as resolved.
pub fn close(
    txn: &StoreWrite,
    id: u64,
    resolution: &str,
    resolved_by: &str,
    comment: Option<String>,
    now: OffsetDateTime,
) -> Result<Conflict, QueueError> {
    let mut records = txn.redb().open_table(CONFLICTS).map_err(db_err)?;
    let mut conflict = match records.get(id).map_err(db_err)? {
        Some(bytes) => decode(bytes.value())?,
        None => return Err(QueueError::NotFound(id)),
    };
    // Checked in the transaction that settles it (DESIGN §8: resolved
    // once): a second resolution racing this one aborts with all it did.
    if conflict.status != Status::Open {
        return Err(QueueError::Settled(id));
    }
    conflict.status = Status::Resolved;
    conflict.resolution = Some(resolution.to_string());
    conflict.resolved_by = Some(resolved_by.to_string());
    conflict.resolved_at = Some(now);
    conflict.comment = comment;
    records
        .insert(id, encode(&conflict).as_slice())
        .map_err(db_err)?;
    txn.redb()
        .open_table(CONFLICTS_OPEN)
        .map_err(db_err)?
        .remove(conflict.mac.as_str())
        .map_err(db_err)?;
    txn.redb()
        .open_table(CONFLICTS_OPEN_IDS)
        .map_err(db_err)?
        .remove(id)
        .map_err(db_err)?;
    txn.redb()
        .open_table(CONFLICTS_RESOLVED_IDS)
        .map_err(db_err)?
        .insert(id, ())
        .map_err(db_err)?;
    let detail = format!(
        "conflict {id} {} for {}: {resolution} by {resolved_by}",
        conflict.kind.as_str(),
        conflict.mac
    );
    txn.append_sync_log("conflict_resolved", &detail, now)?;
    Ok(conflict)
}

/// DESIGN §10: a conflict record that does not decode is moved to the
/// quarantine at start, with its index entries, in one commit; it no
/// longer counts as open. Returns the MACs whose open conflict it was (the
/// caller releases their parked queue items).
pub fn quarantine_unreadable(store: &Store) -> Result<Vec<String>, QueueError> {
    let bad: Vec<(u64, Vec<u8>, String)> = {
        let txn = store.begin_read()?;
        let records = match txn.redb().open_table(CONFLICTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut bad = Vec::new();
        for entry in records.iter().map_err(db_err)? {
            let (id, value) = entry.map_err(db_err)?;
            if let Err(e) = serde_json::from_slice::<Conflict>(value.value()) {
                bad.push((id.value(), value.value().to_vec(), e.to_string()));
            }
        }
        bad
    };
    if bad.is_empty() {
        return Ok(Vec::new());
    }
    let txn = store.begin_write()?;
    let mut macs = Vec::new();
    {
        let mut records = txn.redb().open_table(CONFLICTS).map_err(db_err)?;
        let mut open = txn.redb().open_table(CONFLICTS_OPEN).map_err(db_err)?;
        let mut open_ids = txn.redb().open_table(CONFLICTS_OPEN_IDS).map_err(db_err)?;
        let mut resolved_ids = txn
            .redb()
            .open_table(CONFLICTS_RESOLVED_IDS)
            .map_err(db_err)?;
        let ids: std::collections::HashSet<u64> = bad.iter().map(|(id, _, _)| *id).collect();
        for entry in open.iter().map_err(db_err)? {
            let (mac, id) = entry.map_err(db_err)?;
            if ids.contains(&id.value()) {
                macs.push(mac.value().to_string());
            }
        }
        for mac in &macs {
            open.remove(mac.as_str()).map_err(db_err)?;
        }
        for (id, raw, reason) in &bad {
            Store::quarantine_in(&txn, "conflicts", &id.to_string(), raw, reason)?;
            records.remove(*id).map_err(db_err)?;
            open_ids.remove(*id).map_err(db_err)?;
            resolved_ids.remove(*id).map_err(db_err)?;
            tracing::error!(id, %reason,
                "conflict record unreadable; moved to the quarantine (GET /api/v1/status counts it)");
        }
    }
    txn.commit()?;
    Ok(macs)
}

/// Builds the id indexes of a database written before they existed (a
/// no-op once built). Run at start, before anything lists conflicts.
pub fn index(store: &Store) -> Result<(), QueueError> {
    let txn = store.begin_write()?;
    {
        let mut meta = txn.redb().open_table(CONFLICTS_META).map_err(db_err)?;
        if meta.get("indexed").map_err(db_err)?.is_some() {
            drop(meta);
            txn.abort()?;
            return Ok(());
        }
        let records = txn.redb().open_table(CONFLICTS).map_err(db_err)?;
        let mut open = txn.redb().open_table(CONFLICTS_OPEN_IDS).map_err(db_err)?;
        let mut resolved = txn
            .redb()
            .open_table(CONFLICTS_RESOLVED_IDS)
            .map_err(db_err)?;
        for entry in records.iter().map_err(db_err)? {
            let (id, value) = entry.map_err(db_err)?;
            let id = id.value();
            match decode(value.value())?.status {
                Status::Open => open.insert(id, ()).map_err(db_err)?,
                Status::Resolved => resolved.insert(id, ()).map_err(db_err)?,
            };
        }
        meta.insert("indexed", 1).map_err(db_err)?;
    }
    txn.commit()?;
    Ok(())
}

/// Conflicts, newest first, optionally of one status.
pub fn list(
    store: &Store,
    status: Option<Status>,
    offset: usize,
    limit: usize,
) -> Result<Vec<Conflict>, QueueError> {
    let txn = store.begin_read()?;
    let indexed = match txn.redb().open_table(CONFLICTS_META) {
        Ok(meta) => meta.get("indexed").map_err(db_err)?.is_some(),
        Err(redb::TableError::TableDoesNotExist(_)) => false,
        Err(e) => return Err(db_err(e)),
    };
    if let (true, Some(status)) = (indexed, status) {
        let ids = match txn.redb().open_table(match status {
            Status::Open => CONFLICTS_OPEN_IDS,
            Status::Resolved => CONFLICTS_RESOLVED_IDS,
        }) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let records = txn.redb().open_table(CONFLICTS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in ids.iter().map_err(db_err)?.rev().skip(offset).take(limit) {
            let (id, _) = entry.map_err(db_err)?;
            let id = id.value();
            if let Some(bytes) = records.get(id).map_err(db_err)? {
                match decode(bytes.value()) {
                    Ok(conflict) => out.push(conflict),
                    // Quarantined at the next start; one bad record never
                    // hides the others.
                    Err(e) => tracing::warn!(id, error = %e, "conflict record unreadable; skipped"),
                }
            }
        }
        return Ok(out);
    }
    let records = match txn.redb().open_table(CONFLICTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(db_err(e)),
    };
    // An unreadable record is skipped (quarantined at the next start):
    // one bad record never hides the others.
    let readable = records
        .iter()
        .map_err(db_err)?
        .rev()
        .filter_map(|entry| match entry {
            Err(e) => Some(Err(db_err(e))),
            Ok((id, value)) => match decode(value.value()) {
                Ok(conflict) => Some(Ok(conflict)),
                Err(e) => {
                    tracing::warn!(id = id.value(), error = %e, "conflict record unreadable; skipped");
                    None
                }
            },
        });
    crate::store::page(
        readable,
        |conflict: &Conflict| status.is_none_or(|s| s == conflict.status),
        offset,
        limit,
    )
}

/// The conflict with this id, open or resolved.
pub fn get(store: &Store, id: u64) -> Result<Option<Conflict>, QueueError> {
    let txn = store.begin_read()?;
    let records = match txn.redb().open_table(CONFLICTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(db_err(e)),
    };
    match records.get(id).map_err(db_err)? {
        Some(bytes) => Ok(Some(decode(bytes.value())?)),
        None => Ok(None),
    }
}

/// The node's open conflict, if it has one.
pub fn open_for(store: &Store, mac: &str) -> Result<Option<u64>, QueueError> {
    let txn = store.begin_read()?;
    match txn.redb().open_table(CONFLICTS_OPEN) {
        Ok(t) => Ok(t.get(mac).map_err(db_err)?.map(|v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db_err(e)),
    }
}

/// How many conflicts are open.
pub fn open_count(store: &Store) -> Result<u64, QueueError> {
    let txn = store.begin_read()?;
    match txn.redb().open_table(CONFLICTS_OPEN) {
        Ok(t) => t.len().map_err(db_err),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(db_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(n: u32) -> Found {
        Found {
            kind: Kind::StateMismatch,
            mac: format!("52:54:00:00:00:{n:02x}"),
            node_id: format!("node-{n}"),
            local: LocalSide {
                state: Some(NodeState::Reprovision),
                origin: ChangeOrigin::Operator,
                changed_at: OffsetDateTime::UNIX_EPOCH,
                queue_id: u64::from(n),
            },
            central: None,
            error: "409".into(),
        }
    }

    fn ids(list: Vec<Conflict>) -> Vec<u64> {
        list.into_iter().map(|c| c.id).collect()
    }

    /// Opens ten, resolves the even ones.
    fn populate(store: &Store) {
        let now = OffsetDateTime::UNIX_EPOCH;
        let txn = store.begin_write().unwrap();
        for n in 1..=10 {
            let record = open(&txn, found(n), now).unwrap().unwrap();
            if n % 2 == 0 {
                close(&txn, record.id, "keep_central", "policy", None, now).unwrap();
            }
        }
        assert!(open(&txn, found(1), now).unwrap().is_none(), "one per node");
        txn.commit().unwrap();
    }

    fn pages(store: &Store) -> Vec<Vec<u64>> {
        vec![
            ids(list(store, Some(Status::Open), 0, 100).unwrap()),
            ids(list(store, Some(Status::Open), 1, 2).unwrap()),
            ids(list(store, Some(Status::Resolved), 0, 3).unwrap()),
            ids(list(store, None, 2, 3).unwrap()),
        ]
    }

    #[test]
    fn pages_are_newest_first_from_the_indexes_and_the_same_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        index(&store).unwrap();
        populate(&store);
        let expected = vec![
            vec![9, 7, 5, 3, 1],
            vec![7, 5],
            vec![10, 8, 6],
            vec![8, 7, 6],
        ];
        assert_eq!(pages(&store), expected);
        assert_eq!(open_count(&store).unwrap(), 5);

        // A database written before the indexes: the same pages, by scan,
        // then from the indexes built at start.
        let txn = store.begin_write().unwrap();
        txn.redb()
            .open_table(CONFLICTS_META)
            .unwrap()
            .remove("indexed")
            .unwrap();
        txn.redb()
            .open_table(CONFLICTS_OPEN_IDS)
            .unwrap()
            .retain(|_, _| false)
            .unwrap();
        txn.redb()
            .open_table(CONFLICTS_RESOLVED_IDS)
            .unwrap()
            .retain(|_, _| false)
            .unwrap();
        txn.commit().unwrap();
        assert_eq!(pages(&store), expected, "by scan");
        index(&store).unwrap();
        assert_eq!(pages(&store), expected, "from the rebuilt indexes");
    }
}
