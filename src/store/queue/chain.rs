//! A node's acknowledged changes in a row (the versions they moved
//! through, so a later change builds on them), and the rewrites of a
//! node's queued operations (a local id remapped, a rebase).

use super::*;

impl Queue {
    /// Notes in `txn` (the commit that acks the change) that `node`'s
    /// change moved the controller's version `from` → `to`, extending the
    /// node's chain when it continues it.
    pub fn record_chain(
        txn: &crate::store::StoreWrite,
        node: &str,
        from: u64,
        to: u64,
    ) -> Result<(), QueueError> {
        let mut table = txn.redb().open_table(QUEUE_CHAIN).map_err(db_err)?;
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
        let table = match txn.redb().open_table(QUEUE_CHAIN) {
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

    /// Applies `change` to each of `node`'s queued payloads in one commit
    /// (a local id remapped once its registration was accepted, a rebase);
    /// `change` answers the new payload, or None to leave the item as it
    /// is. An item whose payload changes gets a new idempotency key: a
    /// different request is a new request. Returns how many items changed.
    pub fn rewrite_payloads(
        &self,
        node: &str,
        mut change: impl FnMut(&serde_json::Value) -> Option<serde_json::Value>,
    ) -> Result<usize, QueueError> {
        let txn = self.store.begin_write()?;
        let mut changed = 0;
        {
            let mut queue = txn.redb().open_table(QUEUE).map_err(db_err)?;
            let mut rewrites = Vec::new();
            for entry in queue.iter().map_err(db_err)? {
                let (key, value) = entry.map_err(db_err)?;
                let mut item = decode(value.value())?;
                if item.node != node {
                    continue;
                }
                if let Some(payload) = change(&item.payload) {
                    let sent_payload = std::mem::replace(&mut item.payload, payload);
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
}

fn parse_chain(text: &str) -> Option<(u64, u64)> {
    let (first, latest) = text.split_once(':')?;
    Some((first.parse().ok()?, latest.parse().ok()?))
}
