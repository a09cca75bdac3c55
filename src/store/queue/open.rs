//! Opening the queue: its tables, counters recounted once, unreadable
//! items quarantined, and items left in flight by a crash made pending
//! again.

use super::*;

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
            let counters = txn.redb().open_table(QUEUE_COUNTERS).map_err(db_err)?;
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
            let mut queue = txn.redb().open_table(QUEUE).map_err(db_err)?;
            let mut ids = txn.redb().open_table(QUEUE_IDS).map_err(db_err)?;
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

    fn recover_in_flight(&self) -> Result<usize, QueueError> {
        let txn = self.store.begin_write()?;
        let mut recovered = 0;
        {
            let mut queue = txn.redb().open_table(QUEUE).map_err(db_err)?;
            txn.redb().open_table(QUEUE_IDS).map_err(db_err)?;
            txn.redb().open_table(QUEUE_NODES).map_err(db_err)?;
            let mut counters = txn.redb().open_table(QUEUE_COUNTERS).map_err(db_err)?;
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
}
