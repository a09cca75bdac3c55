//! Settling a conflict (DESIGN §8), by an operator or by policy: the
//! queue item, the conflict record and the cached node change in one
//! commit.
//!
//! * `keep_central`: the local change is dropped and the controller's
//!   record taken into the cache (a node the controller no longer has is
//!   marked missing, not dropped; a node first seen here that the
//!   controller refused is forgotten, so its next boot registers afresh).
//! * `keep_local`: the change is sent again with `force: true` (an offline
//!   registration the controller refused is tried again; a node the
//!   controller no longer has is registered again first).
//! * `merge` (state mismatch only): the change is rebased onto the
//!   controller's current version and sent again; a further change there
//!   makes a new conflict.

use time::OffsetDateTime;

use super::Outbox;
use crate::central::CentralError;
use crate::central::api::NewNode;
use crate::central::ops::Operation;
use crate::model::mac::Mac;
use crate::model::node::Node;
use crate::store::conflicts::{self, Conflict, Kind};
use crate::store::queue::{Kind as ItemKind, NewItem, Origin, QueueError, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    KeepLocal,
    KeepCentral,
    Merge,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::KeepLocal => "keep_local",
            Resolution::KeepCentral => "keep_central",
            Resolution::Merge => "merge",
        }
    }
}

impl std::str::FromStr for Resolution {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "keep_local" => Ok(Resolution::KeepLocal),
            "keep_central" => Ok(Resolution::KeepCentral),
            "merge" => Ok(Resolution::Merge),
            other => Err(format!(
                "unknown resolution {other:?}; valid: keep_local, keep_central, merge"
            )),
        }
    }
}

/// Who settled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedBy {
    Operator,
    Policy,
}

impl ResolvedBy {
    fn as_str(self) -> &'static str {
        match self {
            ResolvedBy::Operator => "operator",
            ResolvedBy::Policy => "policy",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no conflict {0}")]
    NotFound(u64),
    #[error("conflict {0} is resolved already")]
    AlreadyResolved(u64),
    #[error("{0}")]
    NotApplicable(String),
    #[error("the controller's record is needed and could not be read: {0}")]
    Central(CentralError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What a resolution does to the conflict's queue item.
enum ItemChange {
    Drop,
    ResendForced,
    Rebase(u64),
    /// Version-less: the change now builds on the controller's record as
    /// of this change time.
    RebaseTime(OffsetDateTime, crate::model::node::NodeState),
    Retry,
    /// The node is registered again by this operation (queued in the same
    /// commit), then the change resent with force.
    ReRegister(Box<Operation>),
}

impl Outbox {
    /// Settles open conflict `id` with `resolution`.
    pub async fn resolve(
        &self,
        id: u64,
        resolution: Resolution,
        comment: Option<String>,
        by: ResolvedBy,
    ) -> Result<Conflict, ResolveError> {
        let conflict = self
            .queue()
            .call(move |q| conflicts::get(q.store(), id))
            .await?
            .ok_or(ResolveError::NotFound(id))?;
        if conflict.status != conflicts::Status::Open {
            return Err(ResolveError::AlreadyResolved(id));
        }
        let mac: Mac = conflict
            .mac
            .parse()
            .map_err(|e| ResolveError::NotApplicable(format!("conflict {id}: {e}")))?;
        let (change, node) = self.plan(&conflict, mac, resolution).await?;
        let queue_id = conflict.local.queue_id;
        let now = OffsetDateTime::now_utc();
        let resolution_name = resolution.as_str();
        let queue = self.queue().clone();
        let nodes = self.nodes().clone();
        let mac_name = conflict.mac.clone();
        let resolved = tokio::task::spawn_blocking(move || {
            nodes.write_blocking(|| {
                let (change, register) = match change {
                    ItemChange::ReRegister(operation) => {
                        (ItemChange::ResendForced, Some(operation))
                    }
                    other => (other, None),
                };
                let apply = move |item: &mut crate::store::queue::Item| -> Option<Status> {
                    apply_change(item, change)
                };
                let stored = node.clone();
                let inserter = queue.clone();
                let outcome = queue.update_with(queue_id, apply, move |txn| {
                    if let Some(node) = &stored {
                        txn.put_node(node).map_err(QueueError::Store)?;
                    }
                    if let Some(operation) = register {
                        let new = NewItem {
                            kind: ItemKind::Registration,
                            origin: Origin::Operator,
                            node: mac_name,
                            payload: operation.to_payload(),
                            key: None,
                            local_state: None,
                        };
                        inserter.insert_in(txn, new, now)?;
                    }
                    conflicts::close(txn, id, resolution_name, by.as_str(), comment, now)
                });
                let (_, record) = match outcome {
                    Ok(done) => done,
                    // The item is gone (deleted by an operator): the
                    // conflict is settled all the same.
                    Err(QueueError::NotFound(_)) => {
                        let txn = queue.store().begin_write()?;
                        let record =
                            conflicts::close(&txn, id, resolution_name, by.as_str(), None, now)?;
                        txn.commit()?;
                        (None, record)
                    }
                    Err(e) => return Err(e),
                };
                Ok((record, node.into_iter().collect()))
            })
        })
        .await
        .map_err(|e| QueueError::Store(crate::store::StoreError::Task(e.to_string())))?
        .map_err(|e| match e {
            QueueError::Settled(id) => ResolveError::AlreadyResolved(id),
            other => other.into(),
        })?;
        if resolved.kind == Kind::MissingLocal && resolution == Resolution::KeepCentral {
            self.forget_refused_local(mac).await;
        }
        self.note_conflict_closed(&resolved.mac);
        self.wake_handle().notify_one();
        tracing::info!(
            id,
            resolution = resolution_name,
            by = by.as_str(),
            "conflict resolved"
        );
        Ok(resolved)
    }

    /// The controller refused a node first seen here for good, and the
    /// operator agreed: the cache forgets it, so that its next boot asks
    /// the controller afresh instead of booting a record the controller
    /// never had.
    async fn forget_refused_local(&self, mac: Mac) {
        if self
            .nodes()
            .get(mac)
            .is_some_and(|n| n.id.starts_with("local-"))
            && let Err(e) = self.nodes().remove(mac).await
        {
            tracing::warn!(%mac, error = %e, "refused local node not forgotten");
        }
    }

    /// What `resolution` does to the item, and the node the cache takes.
    async fn plan(
        &self,
        conflict: &Conflict,
        mac: Mac,
        resolution: Resolution,
    ) -> Result<(ItemChange, Option<Node>), ResolveError> {
        let central = || async {
            self.port()
                .node_by_mac(mac)
                .await
                .map_err(ResolveError::Central)
        };
        let cached = self.nodes().get(mac).map(|n| (*n).clone());
        Ok(match (conflict.kind, resolution) {
            (Kind::StateMismatch, Resolution::KeepCentral) => {
                let node = central().await?.map(|mut node| {
                    node.cached_at = Some(OffsetDateTime::now_utc());
                    node
                });
                (ItemChange::Drop, node)
            }
            (Kind::StateMismatch, Resolution::KeepLocal) => (ItemChange::ResendForced, None),
            (Kind::StateMismatch, Resolution::Merge) => {
                let Some(now_there) = central().await? else {
                    return Err(ResolveError::NotApplicable(
                        "the controller no longer has the node: nothing to merge onto".into(),
                    ));
                };
                if !now_there.versioned {
                    // No version: it builds on the record's change time.
                    (
                        ItemChange::RebaseTime(super::changed_at(&now_there), now_there.state),
                        None,
                    )
                } else {
                    let node = cached.map(|mut n| {
                        n.version = now_there.version;
                        n.updated_at = now_there.updated_at;
                        n
                    });
                    (ItemChange::Rebase(now_there.version), node)
                }
            }
            (Kind::MissingCentral, Resolution::KeepCentral) => {
                let node = cached.map(|mut n| {
                    n.missing_central_since = Some(OffsetDateTime::now_utc());
                    n
                });
                (ItemChange::Drop, node)
            }
            (Kind::MissingCentral, Resolution::KeepLocal) => {
                // Registered again (queued ahead of the change: registrations
                // go first), then the change sent with force; the accepted
                // registration remaps the old id to the new one.
                let request = NewNode {
                    mac_address: mac.to_string(),
                    arch: cached
                        .as_ref()
                        .and_then(|n| n.arch.as_deref())
                        .map(crate::model::client::Cpu::from_name)
                        .and_then(crate::central::api::wire_arch),
                    boot_mode: None,
                    vendor: None,
                    model: None,
                    serial_number: None,
                    system_uuid: None,
                    site_id: self.port().site_id().to_string(),
                };
                let register = Operation::Register {
                    node_id: conflict.node_id.clone(),
                    request,
                };
                (ItemChange::ReRegister(Box::new(register)), None)
            }
            (Kind::MissingLocal, Resolution::KeepCentral) => (ItemChange::Drop, None),
            (Kind::MissingLocal, Resolution::KeepLocal) => (ItemChange::Retry, None),
            (_, Resolution::Merge) => {
                return Err(ResolveError::NotApplicable(
                    "merge applies to state_mismatch conflicts only".into(),
                ));
            }
        })
    }
}

fn apply_change(item: &mut crate::store::queue::Item, change: ItemChange) -> Option<Status> {
    if let ItemChange::Drop = change {
        return None;
    }
    if let Ok(Operation::Report {
        report,
        observed: Some(mut observed),
    }) = Operation::from_payload(&item.payload)
    {
        match change {
            ItemChange::ResendForced => observed.force = true,
            ItemChange::Rebase(version) => observed.base_version = Some(version),
            ItemChange::RebaseTime(at, state) => {
                observed.base_changed_at = Some(at);
                observed.base_state = Some(state);
            }
            ItemChange::Retry | ItemChange::Drop | ItemChange::ReRegister(_) => {}
        }
        item.payload = Operation::Report {
            report,
            observed: Some(observed),
        }
        .to_payload();
    }
    if let Ok(Operation::SetState {
        node_id,
        change: mut state_change,
        mut base_changed_at,
        mut base_state,
    }) = Operation::from_payload(&item.payload)
    {
        match change {
            ItemChange::ResendForced => state_change.force = Some(true),
            ItemChange::Rebase(version) => state_change.base_version = Some(version),
            ItemChange::RebaseTime(at, state) => {
                base_changed_at = Some(at);
                base_state = Some(state);
            }
            ItemChange::Retry | ItemChange::Drop | ItemChange::ReRegister(_) => {}
        }
        item.payload = Operation::SetState {
            node_id,
            change: state_change,
            base_changed_at,
            base_state,
        }
        .to_payload();
    }
    item.not_before = None;
    item.last_error = None;
    Some(Status::Pending)
}

impl Outbox {
    pub(super) fn note_conflict_opened(&self, conflict: &Conflict) {
        self.note_conflict(&conflict.mac, Some(conflict.id));
    }

    fn note_conflict_closed(&self, mac: &str) {
        self.note_conflict(mac, None);
    }

    /// Applies the policies to open conflicts they have not been tried on
    /// since start: those found just before a crash, or left open under a
    /// policy since changed. Runs at the start of each replay round.
    pub async fn settle_open_by_policy(&self) {
        let open = self
            .open_conflicts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .copied()
            .collect::<Vec<u64>>();
        for id in open {
            let first_try = self
                .policy_tried
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id);
            if !first_try {
                continue;
            }
            match self
                .queue()
                .call(move |q| conflicts::get(q.store(), id))
                .await
            {
                Ok(Some(conflict)) if conflict.status == conflicts::Status::Open => {
                    self.settle_by_policy(&conflict).await
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(id, error = %e, "open conflict unreadable"),
            }
        }
    }

    /// Settles a conflict just found by its kind's policy (DESIGN §8);
    /// `manual` leaves it open for an operator, and so does a policy that
    /// cannot be applied (it is logged).
    pub async fn settle_by_policy(&self, conflict: &Conflict) {
        use crate::config::Policy;
        self.policy_tried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(conflict.id);
        let policies = self.policies();
        let policy = match conflict.kind {
            Kind::StateMismatch => policies.state_mismatch,
            Kind::MissingCentral => policies.missing_central,
            Kind::MissingLocal => policies.missing_local,
        };
        let resolution = match policy {
            Policy::Manual => return,
            Policy::CentralWins => Resolution::KeepCentral,
            Policy::LocalWins => Resolution::KeepLocal,
            // What the node observed (an installer's report) stands; an
            // operator's change at the site yields to the controller's.
            // A node retired at the controller stays retired: a report
            // never changes a retired node (DESIGN §10).
            Policy::LastWrite => match last_write(conflict) {
                Some(resolution) => resolution,
                None => return,
            },
            Policy::Auto => match conflict.local.origin {
                conflicts::ChangeOrigin::Observed
                    if conflict
                        .central
                        .as_ref()
                        .is_some_and(|c| c.state == crate::model::node::NodeState::Retired) =>
                {
                    Resolution::KeepCentral
                }
                conflicts::ChangeOrigin::Observed => Resolution::KeepLocal,
                conflicts::ChangeOrigin::Operator => Resolution::KeepCentral,
            },
        };
        if let Err(e) = self
            .resolve(conflict.id, resolution, None, ResolvedBy::Policy)
            .await
        {
            tracing::warn!(id = conflict.id, policy = policy.as_str(), error = %e,
                "conflict policy could not be applied; left open for an operator");
        }
    }
}

/// DESIGN §15 `last_write`: the later of the two changes wins, the site's
/// by its `changed_at`, the controller's by its record's `updated_at`
/// (both kept in the record); a tie goes to the controller. Without the
/// controller's record there is nothing to compare: left for an operator
/// (None). A node retired at the controller stays retired before a
/// report (DESIGN §10), whatever the times.
pub(crate) fn last_write(conflict: &Conflict) -> Option<Resolution> {
    let central = conflict.central.as_ref()?;
    let retired = central.state == crate::model::node::NodeState::Retired;
    if retired && conflict.local.origin == conflicts::ChangeOrigin::Observed {
        return Some(Resolution::KeepCentral);
    }
    Some(if conflict.local.changed_at > central.updated_at {
        Resolution::KeepLocal
    } else {
        Resolution::KeepCentral
    })
}

#[cfg(test)]
mod last_write_tests {
    use super::*;
    use crate::model::node::NodeState;
    use conflicts::{CentralSide, ChangeOrigin, LocalSide, Status};

    fn conflict(
        local_at: i64,
        central_at: i64,
        origin: ChangeOrigin,
        central: NodeState,
    ) -> Conflict {
        let at = |s: i64| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s);
        Conflict {
            id: 1,
            kind: Kind::StateMismatch,
            mac: "52:54:00:00:00:01".into(),
            node_id: "n1".into(),
            local: LocalSide {
                state: Some(NodeState::Active),
                origin,
                changed_at: at(local_at),
                queue_id: 1,
            },
            central: Some(CentralSide {
                state: central,
                version: None,
                updated_at: at(central_at),
            }),
            detected_at: at(local_at.max(central_at)),
            status: Status::Open,
            resolution: None,
            resolved_by: None,
            resolved_at: None,
            comment: None,
            error: "409".into(),
        }
    }

    #[test]
    fn the_later_change_wins_either_way_and_a_tie_goes_to_the_controller() {
        let op = ChangeOrigin::Operator;
        let r = NodeState::Reprovision;
        assert_eq!(
            last_write(&conflict(20, 10, op, r)),
            Some(Resolution::KeepLocal)
        );
        assert_eq!(
            last_write(&conflict(10, 20, op, r)),
            Some(Resolution::KeepCentral)
        );
        assert_eq!(
            last_write(&conflict(10, 10, op, r)),
            Some(Resolution::KeepCentral)
        );
        // With versions or without, the times decide; without the
        // controller's record there is nothing to compare.
        let mut versioned = conflict(20, 10, op, r);
        if let Some(c) = versioned.central.as_mut() {
            c.version = Some(7);
        }
        assert_eq!(last_write(&versioned), Some(Resolution::KeepLocal));
        let mut gone = conflict(20, 10, op, r);
        gone.central = None;
        assert_eq!(last_write(&gone), None);
        // A report never revives a node retired at the controller.
        let retired = conflict(20, 10, ChangeOrigin::Observed, NodeState::Retired);
        assert_eq!(last_write(&retired), Some(Resolution::KeepCentral));
    }
}
