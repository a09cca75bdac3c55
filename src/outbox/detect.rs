//! Finding conflicts (DESIGN §8) outside a failed send: both sides of one
//! described from its queue item, its entry in the log, and the nodes a
//! full sync no longer lists while changes for them are queued.

use time::OffsetDateTime;

use super::Outbox;
use crate::central::ops::Operation;
use crate::model::mac::Mac;
use crate::model::node::Node;
use crate::store::conflicts::{self, CentralSide, Conflict, Found, Kind, LocalSide};
use crate::store::queue::Item;

/// The controller's side of a conflict, from its record.
pub fn central_side(node: &Node) -> CentralSide {
    CentralSide {
        state: node.state,
        version: node.versioned.then_some(node.version),
        updated_at: node.updated_at,
    }
}

/// A conflict of `kind` about `item`'s change, with the controller's
/// record as it is now (None: it has none).
pub fn found_for(item: &Item, kind: Kind, central: Option<CentralSide>, error: String) -> Found {
    let operation = Operation::from_payload(&item.payload).ok();
    let state = match &operation {
        Some(Operation::SetState { change, .. }) => Some(change.state),
        Some(Operation::Report { report, .. }) => report.implied_state(),
        _ => None,
    };
    let node_id = operation
        .as_ref()
        .and_then(|op| op.node_id().map(str::to_string))
        .unwrap_or_default();
    Found {
        kind,
        mac: item.node.clone(),
        node_id,
        local: LocalSide {
            state,
            origin: item.origin.into(),
            changed_at: item.created_at,
            queue_id: item.id,
        },
        central,
        error,
    }
}

impl Outbox {
    /// A conflict just opened: counted for the boot rule, logged, entered
    /// in the sync log, then settled by its kind's policy.
    pub(super) async fn opened(&self, conflict: &Conflict) {
        self.note_conflict_opened(conflict);
        log_detected(conflict);
        self.settle_by_policy(conflict).await;
    }

    /// DESIGN §8, `missing_central` found at sync: a full sync no longer
    /// lists these nodes, for which changes are queued. A listing may be
    /// partial or wrong, so each is looked up by MAC; only a node the
    /// controller confirms it does not have becomes a conflict, on its
    /// first queued state change (parked in the same commit as the
    /// record). Returns how many conflicts were opened.
    pub async fn confirm_missing(&self, macs: Vec<Mac>) -> usize {
        let mut opened = 0;
        for mac in macs {
            match self.port().node_by_mac(mac).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    tracing::info!(%mac, "a full sync did not list a node the controller still has; not a conflict");
                    continue;
                }
                Err(e) => {
                    tracing::info!(%mac, error = %e, "a node missing from a full sync could not be confirmed; checked again at the next one");
                    continue;
                }
            }
            let now = OffsetDateTime::now_utc();
            let name = mac.to_string();
            let parked = self
                .queue()
                .call(move |q| {
                    q.park_first_change(
                        &name,
                        "the controller no longer has this node (not listed by a full sync, and not found by MAC)".into(),
                        move |txn, item| {
                            let found = found_for(
                                item,
                                Kind::MissingCentral,
                                None,
                                "not listed by a full sync; a lookup by MAC found nothing".into(),
                            );
                            conflicts::open(txn, found, now)
                        },
                    )
                })
                .await;
            match parked {
                Ok(Some(Some(conflict))) => {
                    opened += 1;
                    self.opened(&conflict).await;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%mac, error = %e, "missing node's conflict not recorded"),
            }
        }
        opened
    }
}

/// A conflict found (its sync-log entry committed with its record).
pub(super) fn log_detected(conflict: &Conflict) {
    tracing::warn!(id = conflict.id, kind = conflict.kind.as_str(), mac = %conflict.mac,
        "conflict detected; the node's queued changes wait for it");
}
