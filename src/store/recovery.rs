//! After an I/O error (a full disk) the store reports itself unwritable
//! and reopens the database in the background until a write commits
//! (DESIGN §10): no restart needed.

use super::*;

impl Store {
    /// The open database. Callers keep the `Arc` for as long as their
    /// transaction lives, so that a reopen waits for them.
    pub(super) fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.shared
            .db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Reopening)
    }

    /// Runs a whole write (begin to commit); an I/O error marks the store
    /// unwritable and starts the reopening, a commit after one marks it
    /// writable again.
    pub(super) fn noted<T>(
        &self,
        work: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = work();
        self.note(&result);
        result
    }

    pub(super) fn note<T>(&self, result: &Result<T, StoreError>) {
        // After the write (its commit is visible), never before it.
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        match result {
            Err(e) if e.is_io() => self.start_recovery(e),
            // A write committed: the disk takes writes (again).
            Ok(_) if !self.shared.writable.swap(true, Ordering::SeqCst) => {
                tracing::info!(path = %self.path.display(), "the database takes writes again");
            }
            _ => {}
        }
    }

    pub(super) fn start_recovery(&self, error: &StoreError) {
        if self.shared.writable.swap(false, Ordering::SeqCst) {
            tracing::error!(path = %self.path.display(), %error,
                "the database cannot write; writes are refused (503) until it can again");
        }
        if self.shared.recovering.swap(true, Ordering::SeqCst) {
            return;
        }
        let store = self.clone();
        let spawned = std::thread::Builder::new()
            .name("store-recovery".into())
            .spawn(move || store.recover());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the database recovery");
            self.shared.recovering.store(false, Ordering::SeqCst);
        }
    }

    /// Closes and reopens the database until a probe write commits. Calls
    /// meanwhile get [`StoreError::Reopening`] while it is closed.
    fn recover(&self) {
        let mut attempts = 0u64;
        loop {
            std::thread::sleep(RECOVERY_PAUSE);
            attempts += 1;
            let old = self
                .shared
                .db
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(old) = old {
                // Transactions under way hold the database: wait for them
                // to end (none lasts long) so that it can be closed.
                let mut old = old;
                loop {
                    match Arc::try_unwrap(old) {
                        Ok(db) => {
                            drop(db);
                            break;
                        }
                        Err(still_shared) => {
                            old = still_shared;
                            std::thread::sleep(std::time::Duration::from_millis(5));
                        }
                    }
                }
            }
            let db = match Database::create(&self.path) {
                Ok(db) => Arc::new(db),
                Err(e) => {
                    if attempts.is_power_of_two() {
                        tracing::warn!(path = %self.path.display(), error = %e, attempts,
                            "the database cannot be reopened yet");
                    }
                    continue;
                }
            };
            let probe = (|| -> Result<(), StoreError> {
                let txn = db.begin_write()?;
                {
                    let mut meta = txn.open_table(META)?;
                    let now = OffsetDateTime::now_utc().unix_timestamp().to_string();
                    meta.insert(WRITE_PROBE_KEY, now.as_str())?;
                }
                txn.commit()?;
                Ok(())
            })();
            // Back in place either way: reads work while the disk is full.
            *self.shared.db.write().unwrap_or_else(|e| e.into_inner()) = Some(db);
            match probe {
                Ok(()) => {
                    self.shared.recovering.store(false, Ordering::SeqCst);
                    self.shared.writable.store(true, Ordering::SeqCst);
                    tracing::info!(path = %self.path.display(), attempts,
                        "the database was reopened and takes writes again");
                    return;
                }
                Err(e) => {
                    if attempts.is_power_of_two() {
                        tracing::warn!(path = %self.path.display(), error = %e, attempts,
                            "the database still cannot write");
                    }
                }
            }
        }
    }
}
