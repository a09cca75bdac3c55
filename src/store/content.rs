//! The content cache's index in redb: one entry per complete, verified
//! file (DESIGN §12). An entry is written only after its file was renamed
//! into place, and removed before its file is deleted, so an entry always
//! names a whole file.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::schema::CONTENT;
use crate::store::{Store, StoreError};

/// A file kept in the content cache (DESIGN §12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The controller's path (`GET /api/v1/files/{path}`).
    pub path: String,
    /// The file's name under `<data_dir>/content/files`.
    pub file: String,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes kept, lowercase hex (checked against the
    /// controller's `X-Checksum-SHA256` when it sent one).
    pub sha256: String,
    /// Did the controller send a checksum to check against?
    pub verified: bool,
    /// The controller's `ETag`, for revalidation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// When it was fetched.
    #[serde(with = "time::serde::rfc3339")]
    pub fetched_at: OffsetDateTime,
    /// When the controller last confirmed it (fetch or revalidation).
    #[serde(with = "time::serde::rfc3339")]
    pub validated_at: OffsetDateTime,
    /// Last served (kept in memory; written with the entry's next change).
    #[serde(with = "time::serde::rfc3339")]
    pub last_used: OffsetDateTime,
    /// Files of `offline_safe` workflows: never evicted.
    pub pinned: bool,
}

/// The rows the content cache needs: its index, and nothing else of the
/// store. [`Store`] keeps them in redb; a test, or later a second agent
/// sharing one cache, can put another implementation behind it.
pub trait ContentIndex: Send + Sync + 'static {
    /// Every entry; unreadable ones are returned apart (to be dropped).
    fn load_entries(&self) -> Result<(Vec<Entry>, Vec<String>), StoreError>;
    /// Writes entries, all or none.
    fn put_entries(&self, entries: &[Entry]) -> Result<(), StoreError>;
    /// Removes entries, all or none.
    fn remove_entries(&self, paths: &[String]) -> Result<(), StoreError>;
}

impl ContentIndex for Store {
    fn load_entries(&self) -> Result<(Vec<Entry>, Vec<String>), StoreError> {
        load(self)
    }

    fn put_entries(&self, entries: &[Entry]) -> Result<(), StoreError> {
        put(self, entries)
    }

    fn remove_entries(&self, paths: &[String]) -> Result<(), StoreError> {
        remove(self, paths)
    }
}

fn corrupt(path: &str, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: format!("content entry {path}"),
        source,
    }
}

/// Every entry; unreadable ones are returned apart (to be dropped).
fn load(store: &Store) -> Result<(Vec<Entry>, Vec<String>), StoreError> {
    let txn = store.begin_read()?;
    let table = match txn.redb().open_table(CONTENT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(redb::Error::from(e).into()),
    };
    let mut entries = Vec::new();
    let mut unreadable = Vec::new();
    for row in table.iter().map_err(redb::Error::from)? {
        let (key, value) = row.map_err(redb::Error::from)?;
        match serde_json::from_slice::<Entry>(value.value()) {
            Ok(entry) => entries.push(entry),
            Err(e) => {
                tracing::error!(error = %corrupt(key.value(), e), "content entry dropped");
                unreadable.push(key.value().to_string());
            }
        }
    }
    Ok((entries, unreadable))
}

/// Writes entries (one commit).
fn put(store: &Store, entries: &[Entry]) -> Result<(), StoreError> {
    let txn = store.begin_write()?;
    {
        let mut table = txn.redb().open_table(CONTENT).map_err(redb::Error::from)?;
        for entry in entries {
            let bytes = serde_json::to_vec(entry).map_err(|e| corrupt(&entry.path, e))?;
            table
                .insert(entry.path.as_str(), bytes.as_slice())
                .map_err(redb::Error::from)?;
        }
    }
    txn.commit()
}

/// Removes entries (one commit).
fn remove(store: &Store, paths: &[String]) -> Result<(), StoreError> {
    let txn = store.begin_write()?;
    {
        let mut table = txn.redb().open_table(CONTENT).map_err(redb::Error::from)?;
        for path in paths {
            table.remove(path.as_str()).map_err(redb::Error::from)?;
        }
    }
    txn.commit()
}
