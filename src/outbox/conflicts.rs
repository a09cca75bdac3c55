//! Conflicts (DESIGN §8): a change the agent holds that no longer fits the
//! controller. Each is a durable record in the agent's database, written
//! in the same commit as the queue change that finds it, so that a crash
//! never leaves a conflicting item without its record or the reverse.
//! At most one conflict per node is open at a time; while it is, the
//! node's queued item stays in status `conflict` and its later items wait
//! behind it.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::queue::{Origin, QueueError, db_err};
use crate::model::node::NodeState;
use crate::store::{Store, StoreError, StoreWrite};

/// id → record (JSON).
const CONFLICTS: TableDefinition<u64, &[u8]> = TableDefinition::new("conflicts");
/// MAC → id of the node's open conflict.
const OPEN: TableDefinition<&str, u64> = TableDefinition::new("conflicts_open");
/// `next_id`.
const META: TableDefinition<&str, u64> = TableDefinition::new("conflicts_meta");

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
    Operator,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalSide {
    /// The state the change sets (None: a registration).
    pub state: Option<NodeState>,
    pub origin: ChangeOrigin,
    #[serde(with = "time::serde::rfc3339")]
    pub changed_at: OffsetDateTime,
    pub queue_id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CentralSide {
    pub state: NodeState,
    /// None for a controller without versions.
    pub version: Option<u64>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Resolved,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub id: u64,
    pub kind: Kind,
    pub mac: String,
    pub node_id: String,
    pub local: LocalSide,
    /// The controller's record when the conflict was found (None: it has
    /// none, or it could not be read).
    pub central: Option<CentralSide>,
    #[serde(with = "time::serde::rfc3339")]
    pub detected_at: OffsetDateTime,
    pub status: Status,
    #[serde(default)]
    pub resolution: Option<String>,
    #[serde(default)]
    pub resolved_by: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub comment: Option<String>,
    /// What the controller said.
    pub error: String,
}

/// A conflict found, before it has an id.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub kind: Kind,
    pub mac: String,
    pub node_id: String,
    pub local: LocalSide,
    pub central: Option<CentralSide>,
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
/// parks its item); returns the record. A node with an open conflict
/// already keeps that one: the new finding is added to the sync log by the
/// caller, not recorded twice.
pub fn open(
    txn: &StoreWrite,
    found: Found,
    now: OffsetDateTime,
) -> Result<Option<Conflict>, QueueError> {
    let mut open = txn.open_table(OPEN).map_err(db_err)?;
    if open.get(found.mac.as_str()).map_err(db_err)?.is_some() {
        return Ok(None);
    }
    let mut meta = txn.open_table(META).map_err(db_err)?;
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
    txn.open_table(CONFLICTS)
        .map_err(db_err)?
        .insert(id, encode(&conflict).as_slice())
        .map_err(db_err)?;
    open.insert(conflict.mac.as_str(), id).map_err(db_err)?;
    Ok(Some(conflict))
}

/// Marks conflict `id` resolved in `txn` (the commit that applies the
/// resolution to its queue item); returns the record as resolved.
pub fn close(
    txn: &StoreWrite,
    id: u64,
    resolution: &str,
    resolved_by: &str,
    comment: Option<String>,
    now: OffsetDateTime,
) -> Result<Conflict, QueueError> {
    let mut records = txn.open_table(CONFLICTS).map_err(db_err)?;
    let mut conflict = match records.get(id).map_err(db_err)? {
        Some(bytes) => decode(bytes.value())?,
        None => return Err(QueueError::NotFound(id)),
    };
    conflict.status = Status::Resolved;
    conflict.resolution = Some(resolution.to_string());
    conflict.resolved_by = Some(resolved_by.to_string());
    conflict.resolved_at = Some(now);
    conflict.comment = comment;
    records
        .insert(id, encode(&conflict).as_slice())
        .map_err(db_err)?;
    txn.open_table(OPEN)
        .map_err(db_err)?
        .remove(conflict.mac.as_str())
        .map_err(db_err)?;
    Ok(conflict)
}

/// Conflicts, newest first, optionally of one status.
pub fn list(
    store: &Store,
    status: Option<Status>,
    offset: usize,
    limit: usize,
) -> Result<Vec<Conflict>, QueueError> {
    let txn = store.begin_read()?;
    if status == Some(Status::Open) {
        // The open ones are indexed: no scan of the resolved history.
        let open = match txn.open_table(OPEN) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let records = txn.open_table(CONFLICTS).map_err(db_err)?;
        let mut ids: Vec<u64> = open
            .iter()
            .map_err(db_err)?
            .map(|entry| entry.map(|(_, id)| id.value()).map_err(db_err))
            .collect::<Result<_, _>>()?;
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let mut out = Vec::new();
        for id in ids.into_iter().skip(offset).take(limit) {
            if let Some(bytes) = records.get(id).map_err(db_err)? {
                out.push(decode(bytes.value())?);
            }
        }
        return Ok(out);
    }
    let records = match txn.open_table(CONFLICTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(db_err(e)),
    };
    let mut out = Vec::new();
    let mut skipped = 0;
    for entry in records.iter().map_err(db_err)?.rev() {
        let (_, value) = entry.map_err(db_err)?;
        let conflict = decode(value.value())?;
        if status.is_some_and(|s| s != conflict.status) {
            continue;
        }
        if skipped < offset {
            skipped += 1;
            continue;
        }
        if out.len() >= limit {
            break;
        }
        out.push(conflict);
    }
    Ok(out)
}

pub fn get(store: &Store, id: u64) -> Result<Option<Conflict>, QueueError> {
    let txn = store.begin_read()?;
    let records = match txn.open_table(CONFLICTS) {
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
    match txn.open_table(OPEN) {
        Ok(t) => Ok(t.get(mac).map_err(db_err)?.map(|v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db_err(e)),
    }
}

/// How many conflicts are open.
pub fn open_count(store: &Store) -> Result<u64, QueueError> {
    let txn = store.begin_read()?;
    match txn.open_table(OPEN) {
        Ok(t) => t.len().map_err(db_err),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(db_err(e)),
    }
}
