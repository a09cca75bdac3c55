//! Records that cannot be read any more (DESIGN §10): moved aside at
//! open, with what they held, and reported; never a reason to refuse to
//! start.

use super::*;

impl Store {
    /// Moves every record of `table` that does not decode as `T` into the
    /// quarantine, in one commit, and logs each; returns how many.
    pub(super) fn quarantine_unreadable<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<usize, StoreError> {
        let name = table.name().to_string();
        let bad: Vec<(String, Vec<u8>, String)> = {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let readable = match txn.open_table(table) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(e.into()),
            };
            let mut bad = Vec::new();
            for entry in readable.iter()? {
                let (key, value) = entry?;
                if let Err(e) = serde_json::from_slice::<T>(value.value()) {
                    bad.push((
                        key.value().to_string(),
                        value.value().to_vec(),
                        e.to_string(),
                    ));
                }
            }
            bad
        };
        if bad.is_empty() {
            return Ok(0);
        }
        let now = OffsetDateTime::now_utc();
        self.noted(|| {
            let db = self.db()?;
            let txn = db.begin_write()?;
            {
                let mut source = txn.open_table(table)?;
                let mut quarantine = txn.open_table(QUARANTINE)?;
                for (key, raw, reason) in &bad {
                    let record = Quarantined {
                        table: name.clone(),
                        key: key.clone(),
                        reason: reason.clone(),
                        at: now,
                        raw_hex: hex(raw),
                    };
                    quarantine
                        .insert(format!("{name}/{key}").as_str(), encode(&record).as_slice())?;
                    source.remove(key.as_str())?;
                }
            }
            txn.commit()?;
            Ok(())
        })?;
        for (key, _, reason) in &bad {
            tracing::error!(table = %name, %key, %reason,
                "stored record unreadable; moved to the quarantine (GET /api/v1/status counts it)");
        }
        Ok(bad.len())
    }

    /// Moves one raw record of another module's table (the queue) into the
    /// quarantine, in that module's transaction.
    pub fn quarantine_in(
        txn: &StoreWrite,
        table: &str,
        key: &str,
        raw: &[u8],
        reason: &str,
    ) -> Result<(), StoreError> {
        let record = Quarantined {
            table: table.to_string(),
            key: key.to_string(),
            reason: reason.to_string(),
            at: OffsetDateTime::now_utc(),
            raw_hex: hex(raw),
        };
        let mut quarantine = txn.redb().open_table(QUARANTINE)?;
        quarantine.insert(
            format!("{table}/{key}").as_str(),
            encode(&record).as_slice(),
        )?;
        Ok(())
    }

    /// Every quarantined record.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = match txn.open_table(QUARANTINE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push(decode(key.value(), value.value())?);
        }
        Ok(out)
    }

    /// How many records are quarantined.
    pub fn quarantined_count(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        match txn.open_table(QUARANTINE) {
            Ok(t) => Ok(t.len()?),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}
