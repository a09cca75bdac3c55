//! The agent's local state in one redb file, and the only module that
//! knows it is redb: nodes keyed by MAC, workflows, the last script served
//! to each MAC, the sync log, the quarantine (here), the durable queue
//! ([`queue`]), conflict records ([`conflicts`]), the content cache's index
//! ([`content`]); every table and the migrations in [`schema`].
//!
//! All calls here block; async code goes through [`Store::call`], which runs
//! them on tokio's blocking pool so that disk I/O never stalls the runtime.

pub mod conflicts;
pub mod content;
pub mod disk;
pub mod nodes;
mod quarantine;
pub mod queue;
mod recovery;
pub mod rows;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::model::mac::Mac;
use crate::model::node::{Node, Workflow};
pub use schema::SCHEMA_VERSION;
use schema::*;

/// How many sync-log entries are kept.
const SYNC_LOG_KEEP: u64 = 1000;

/// A record moved out of its table because it could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    /// The table it was in.
    pub table: String,
    /// Its key.
    pub key: String,
    /// Why it could not be read.
    pub reason: String,
    /// When it was moved.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The stored bytes, hex-encoded, for whoever wants to look.
    pub raw_hex: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One sync-log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncLogEntry {
    /// Its place in the log.
    #[serde(default)]
    pub seq: u64,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `full_sync`, `incremental_sync`, `node_error`, `online`, `offline`,
    /// `registered`, `command` …
    pub kind: String,
    /// What happened, for people.
    pub detail: String,
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the database {path} is in use by another siteboot process (a running agent?); \
         stop it or use its HTTP API instead"
    )]
    /// Another process holds the database.
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The database file cannot be opened.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        source: redb::DatabaseError,
    },
    /// The data directory cannot be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    #[error(
        "database schema version {found} is newer than this siteboot supports ({supported}); \
         upgrade siteboot"
    )]
    /// The file was written by a newer siteboot.
    NewerSchema {
        /// The file's schema version.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// The schema record is not a version number.
    #[error("database schema record is unreadable: {0:?}")]
    BadSchemaRecord(String),
    /// redb failed.
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    /// A stored record does not decode.
    #[error("stored record for {key} is unreadable: {source}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// Why it does not decode.
        source: serde_json::Error,
    },
    /// No node has this MAC.
    #[error("no node with MAC {0}")]
    NodeNotFound(Mac),
    /// A blocking store task panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
    /// The database is being reopened after an I/O error.
    #[error("the database is being reopened after an I/O error; try again shortly")]
    Reopening,
    /// An I/O failure passed on to several callers (the group commit).
    #[error("the database cannot write: {0}")]
    Unwritable(String),
}

impl StoreError {
    /// The disk failed the store (full, or an I/O error), rather than the
    /// data or the caller: the write may succeed later, so it is refused
    /// with 503, not 500.
    pub fn is_io(&self) -> bool {
        matches!(
            self,
            StoreError::Reopening
                | StoreError::Unwritable(_)
                | StoreError::Db(redb::Error::Io(_) | redb::Error::PreviousIo)
        )
    }
}

macro_rules! redb_error_into_store_error {
    ($($ty:ty),*) => {
        $(impl From<$ty> for StoreError {
            fn from(e: $ty) -> Self {
                StoreError::Db(redb::Error::from(e))
            }
        })*
    };
}
redb_error_into_store_error!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A write transaction over the agent's database: the queue's, the
/// conflicts' and the store's own changes commit together in it. Only the
/// store's modules reach redb's transaction behind it; everyone else
/// changes rows through their typed methods.
pub struct StoreWrite {
    // Field order is drop order: the transaction ends before the database
    // handle it was begun on is released.
    txn: redb::WriteTransaction,
    store: Store,
    _db: Arc<Database>,
}

/// A read transaction, holding the database open while it lives.
pub struct StoreRead {
    txn: redb::ReadTransaction,
    _db: Arc<Database>,
}

impl StoreRead {
    /// redb's transaction, for the store's own table modules only.
    pub(in crate::store) fn redb(&self) -> &redb::ReadTransaction {
        &self.txn
    }
}

impl StoreWrite {
    /// redb's transaction, for the store's own table modules only.
    pub(in crate::store) fn redb(&self) -> &redb::WriteTransaction {
        &self.txn
    }
}

/// Appends one sync-log entry in `txn`, keeping the newest
/// [`SYNC_LOG_KEEP`].
fn append_sync_log(
    txn: &redb::WriteTransaction,
    kind: &str,
    detail: &str,
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(SYNC_LOG)?;
    let seq = table.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
    let entry = SyncLogEntry {
        seq,
        at,
        kind: kind.to_string(),
        detail: detail.to_string(),
    };
    table.insert(seq, encode(&entry).as_slice())?;
    if seq > SYNC_LOG_KEEP {
        let cutoff = seq - SYNC_LOG_KEEP;
        table.retain_in(..=cutoff, |_, _| false)?;
    }
    Ok(())
}

impl StoreWrite {
    /// Appends a sync-log entry in this transaction (an entry that must
    /// commit with what it reports, such as a conflict's detection).
    pub fn append_sync_log(
        &self,
        kind: &str,
        detail: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        append_sync_log(&self.txn, kind, detail, at)
    }

    /// Stores `node` (replacing the MAC's record) in this transaction.
    pub fn put_node(&self, node: &Node) -> Result<(), StoreError> {
        self.txn
            .open_table(NODES)?
            .insert(node.mac.to_string().as_str(), encode(node).as_slice())?;
        Ok(())
    }

    /// Sets a cached node's state in this transaction. A MAC not in the
    /// store is left alone: None.
    pub fn set_node_state(
        &self,
        mac: Mac,
        state: crate::model::node::NodeState,
        now: time::OffsetDateTime,
    ) -> Result<Option<Node>, StoreError> {
        let key = mac.to_string();
        let mut table = self.txn.open_table(NODES)?;
        let mut node = match table.get(key.as_str())? {
            Some(bytes) => decode::<Node>(&key, bytes.value())?,
            None => return Ok(None),
        };
        node.state = state;
        node.updated_at = now;
        table.insert(key.as_str(), encode(&node).as_slice())?;
        Ok(Some(node))
    }

    /// Makes every write of the transaction durable at once.
    pub fn commit(self) -> Result<(), StoreError> {
        let store = self.store.clone();
        let txn = self.txn;
        store.noted(|| Ok(txn.commit()?))
    }

    /// Drops every write of the transaction.
    pub fn abort(self) -> Result<(), StoreError> {
        Ok(self.txn.abort()?)
    }
}

/// What the agent served a MAC last, for `offline.default_action = last_known`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastScript {
    /// The script's text.
    pub script: String,
    /// When it was served.
    #[serde(with = "time::serde::rfc3339")]
    pub served_at: OffsetDateTime,
    /// The action it carried out (`install`, `local`, …).
    pub action: String,
    /// Would running it again wipe or reinstall something?
    pub destructive: bool,
    /// The workflow an install script runs.
    #[serde(default)]
    pub workflow_id: Option<String>,
}

/// The agent's database (redb): every table, and the one way to them.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    path: PathBuf,
}

/// The open database, and whether it can take writes. After an I/O error
/// (a full disk) redb refuses every later write until the database is
/// closed and opened again, so the store does that itself, in the
/// background, until a write succeeds (DESIGN §10 "Storage").
struct Shared {
    /// None while the database is being reopened.
    db: RwLock<Option<Arc<Database>>>,
    /// False from an I/O error until a write has succeeded again.
    writable: AtomicBool,
    /// A recovery thread is running.
    recovering: AtomicBool,
    /// Moves on every write (committed or not): what was read from the
    /// store at one generation is still true while it has not moved.
    generation: std::sync::atomic::AtomicU64,
}

/// Pause between attempts to make the database writable again.
const RECOVERY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);
const WRITE_PROBE_KEY: &str = "write_probe";

impl Store {
    /// Opens (creating if needed) `<data_dir>/siteboot.redb` and migrates it.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join("siteboot.redb");
        // A 0-byte file is what a crash during the very first write, or a
        // full disk, leaves; redb makes a new database of it. Say so: an
        // operator who had data there needs to know it is gone.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            tracing::warn!(path = %path.display(),
                "siteboot.redb was empty (0 bytes); a new, empty database is created in its place");
        }
        let db = Database::create(&path).map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.clone() },
            source => StoreError::Open {
                path: path.clone(),
                source,
            },
        })?;
        let store = Store {
            shared: Arc::new(Shared {
                db: RwLock::new(Some(Arc::new(db))),
                writable: AtomicBool::new(true),
                recovering: AtomicBool::new(false),
                generation: std::sync::atomic::AtomicU64::new(0),
            }),
            path,
        };
        store.migrate()?;
        store.quarantine_unreadable::<Node>(NODES)?;
        store.quarantine_unreadable::<Workflow>(WORKFLOWS)?;
        store.quarantine_unreadable::<LastScript>(LAST_SCRIPTS)?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A write transaction for a module with tables of its own.
    pub fn begin_write(&self) -> Result<StoreWrite, StoreError> {
        let begun = (|| -> Result<StoreWrite, StoreError> {
            let db = self.db()?;
            Ok(StoreWrite {
                txn: db.begin_write()?,
                store: self.clone(),
                _db: db,
            })
        })();
        // Only failures count here: a write is known to work once its
        // commit succeeds.
        if let Err(e) = &begun
            && e.is_io()
        {
            self.start_recovery(e);
        }
        begun
    }

    /// A read transaction for a module with tables of its own.
    pub fn begin_read(&self) -> Result<StoreRead, StoreError> {
        let db = self.db()?;
        Ok(StoreRead {
            txn: db.begin_read()?,
            _db: db,
        })
    }

    /// A number that moves after every write: a reader that took it
    /// before reading knows its reads are current while it stays the same
    /// (the status snapshot keeps its reads that way).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::SeqCst)
    }

    /// False while the store cannot write (a full disk, an I/O error) and
    /// until a write has succeeded again: `/health` answers 503.
    pub fn writable(&self) -> bool {
        self.shared.writable.load(Ordering::SeqCst)
    }

    fn migrate(&self) -> Result<(), StoreError> {
        self.noted(|| {
            let db = self.db()?;
            let txn = db.begin_write()?;
            let found = {
                let meta = txn.open_table(META)?;
                match meta.get(SCHEMA_KEY)? {
                    None => 0,
                    Some(v) => v
                        .value()
                        .parse::<u32>()
                        .map_err(|_| StoreError::BadSchemaRecord(v.value().to_string()))?,
                }
            };
            if found > SCHEMA_VERSION {
                return Err(StoreError::NewerSchema {
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            for step in &MIGRATIONS[found as usize..] {
                step(&txn)?;
            }
            if found != SCHEMA_VERSION {
                let mut meta = txn.open_table(META)?;
                meta.insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_str())?;
                tracing::info!(
                    from = found,
                    to = SCHEMA_VERSION,
                    "database schema migrated"
                );
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// The schema version the file is at.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let value = meta.get(SCHEMA_KEY)?;
        let text = value.map(|v| v.value().to_string()).unwrap_or_default();
        text.parse().map_err(|_| StoreError::BadSchemaRecord(text))
    }

    /// Runs blocking store work on tokio's blocking pool.
    pub async fn call<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The node with this MAC, if any.
    pub fn get_node(&self, mac: Mac) -> Result<Option<Node>, StoreError> {
        self.get_row(NODES, &mac.to_string())
    }

    /// The row under `key` of a table of JSON records, decoded.
    fn get_row<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(table)?;
        match table.get(key)? {
            None => Ok(None),
            Some(bytes) => decode(key, bytes.value()).map(Some),
        }
    }

    /// Writes the node, replacing the record under its MAC.
    pub fn put_node(&self, node: &Node) -> Result<(), StoreError> {
        self.put_nodes(std::slice::from_ref(node))
    }

    /// Writes several nodes in one durable commit.
    pub fn put_nodes(&self, nodes: &[Node]) -> Result<(), StoreError> {
        self.noted(|| {
            let db = self.db()?;
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(NODES)?;
                for node in nodes {
                    let bytes = encode(node);
                    table.insert(node.mac.to_string().as_str(), bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// Inserts `node` unless its MAC is already stored; returns the stored one.
    pub fn insert_node_if_absent(&self, node: &Node) -> Result<Node, StoreError> {
        self.insert_node_evicting(node, None)
    }

    /// Changes a node in one transaction; `change` sees the stored node.
    pub fn update_node(
        &self,
        mac: Mac,
        change: impl FnOnce(&mut Node),
    ) -> Result<Node, StoreError> {
        self.noted(|| {
            let db = self.db()?;
            let txn = db.begin_write()?;
            let key = mac.to_string();
            let node = {
                let mut table = txn.open_table(NODES)?;
                let mut node = match table.get(key.as_str())? {
                    Some(bytes) => decode::<Node>(&key, bytes.value())?,
                    None => return Err(StoreError::NodeNotFound(mac)),
                };
                change(&mut node);
                table.insert(key.as_str(), encode(&node).as_slice())?;
                node
            };
            txn.commit()?;
            Ok(node)
        })
    }

    /// Stores `node` unless its MAC is known (returning the stored one),
    /// removing `evict` (and its last script) in the same commit.
    pub fn insert_node_evicting(
        &self,
        node: &Node,
        evict: Option<Mac>,
    ) -> Result<Node, StoreError> {
        self.noted(|| {
            let db = self.db()?;
            let txn = db.begin_write()?;
            let key = node.mac.to_string();
            let stored = {
                let mut table = txn.open_table(NODES)?;
                let existing = match table.get(key.as_str())? {
                    Some(bytes) => Some(decode::<Node>(&key, bytes.value())?),
                    None => None,
                };
                match existing {
                    Some(existing) => existing,
                    None => {
                        if let Some(old) = evict {
                            table.remove(old.to_string().as_str())?;
                            let mut scripts = txn.open_table(LAST_SCRIPTS)?;
                            scripts.remove(old.to_string().as_str())?;
                        }
                        table.insert(key.as_str(), encode(node).as_slice())?;
                        node.clone()
                    }
                }
            };
            txn.commit()?;
            Ok(stored)
        })
    }

    /// Removes the node; false if there was none.
    pub fn remove_node(&self, mac: Mac) -> Result<bool, StoreError> {
        self.noted(|| {
            let db = self.db()?;
            let txn = db.begin_write()?;
            let removed = {
                let mut table = txn.open_table(NODES)?;
                let removed = table.remove(mac.to_string().as_str())?.is_some();
                let mut scripts = txn.open_table(LAST_SCRIPTS)?;
                scripts.remove(mac.to_string().as_str())?;
                removed
            };
            txn.commit()?;
            Ok(removed)
        })
    }

    /// Every node, in MAC order.
    pub fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(NODES)?;
        let mut nodes = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            nodes.push(decode(key.value(), value.value())?);
        }
        Ok(nodes)
    }

    /// Writes these workflows (the controller's or the config's).
    pub fn put_workflows(&self, workflows: &[Workflow]) -> Result<(), StoreError> {
        self.noted(|| {
            let db = self.db()?;
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(WORKFLOWS)?;
                for workflow in workflows {
                    table.insert(workflow.id.as_str(), encode(workflow).as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// Every workflow the controller listed at the last sync.
    pub fn list_workflows(&self) -> Result<Vec<Workflow>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = match txn.open_table(WORKFLOWS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(redb::Error::from(e).into()),
        };
        let mut out = Vec::new();
        for row in table.iter()? {
            let (key, value) = row?;
            out.push(decode(key.value(), value.value())?);
        }
        Ok(out)
    }

    /// The workflow with this id, if any.
    pub fn get_workflow(&self, id: &str) -> Result<Option<Workflow>, StoreError> {
        self.get_row(WORKFLOWS, id)
    }

    /// What the agent served this MAC last, if anything.
    pub fn get_last_script(&self, mac: Mac) -> Result<Option<LastScript>, StoreError> {
        self.get_row(LAST_SCRIPTS, &mac.to_string())
    }

    /// Records several last-served scripts in one commit (the boot path
    /// batches them so that a boot storm costs one fsync, not one per boot).
    pub fn put_last_scripts(&self, scripts: &[(Mac, LastScript)]) -> Result<(), StoreError> {
        self.noted(|| {
            let db = self.db()?;
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(LAST_SCRIPTS)?;
                for (mac, script) in scripts {
                    table.insert(mac.to_string().as_str(), encode(script).as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }
}

impl Store {
    /// A small named value of the agent's own (cursor, registration …).
    pub fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(META)?;
        Ok(table.get(key)?.map(|v| v.value().to_string()))
    }

    /// Removes a meta entry.
    pub fn remove_meta(&self, key: &str) -> Result<(), StoreError> {
        self.noted(|| {
            let db = self.db()?;
            let txn = db.begin_write()?;
            txn.open_table(META)?.remove(key)?;
            txn.commit()?;
            Ok(())
        })
    }

    /// Writes these meta entries in one transaction.
    pub fn put_meta(&self, entries: &[(&str, &str)]) -> Result<(), StoreError> {
        self.noted(|| {
            let db = self.db()?;
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(META)?;
                for (key, value) in entries {
                    table.insert(*key, *value)?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// Appends to the sync log, dropping the oldest entries past the bound.
    pub fn append_sync_log(
        &self,
        kind: &str,
        detail: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.noted(|| {
            let db = self.db()?;
            let txn = db.begin_write()?;
            append_sync_log(&txn, kind, detail, at)?;
            txn.commit()?;
            Ok(())
        })
    }

    /// The newest `limit` sync-log entries, newest first.
    pub fn sync_log(&self, limit: usize) -> Result<Vec<SyncLogEntry>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(SYNC_LOG)?;
        let mut out = Vec::new();
        for entry in table.iter()?.rev().take(limit) {
            let (key, value) = entry?;
            out.push(decode(&key.value().to_string(), value.value())?);
        }
        Ok(out)
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs to JSON cannot fail: no maps with
    // non-string keys, no custom serialisers that error.
    serde_json::to_vec(value).unwrap_or_default()
}

/// The rows `keep` accepts, from the `offset`-th of them, at most
/// `limit`: a page of a listing with a filter (the queue's, conflicts').
pub(crate) fn page<T, E>(
    rows: impl Iterator<Item = Result<T, E>>,
    keep: impl Fn(&T) -> bool,
    offset: usize,
    limit: usize,
) -> Result<Vec<T>, E> {
    let mut out = Vec::new();
    let mut skipped = 0;
    for row in rows {
        let row = row?;
        if !keep(&row) {
            continue;
        }
        if skipped < offset {
            skipped += 1;
            continue;
        }
        if out.len() >= limit {
            break;
        }
        out.push(row);
    }
    Ok(out)
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests;
