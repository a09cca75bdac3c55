//! What a running agent and a stopped one read and decide the same way:
//! pages of the queue and of conflicts, one conflict, policy changes, the
//! answer to an eviction.

use serde_json::{Value, json};

use super::error::AdminError;
use super::request::{Page, PolicyChange};
use super::service::Answer;
use crate::config::{ConflictPolicies, Policy};
use crate::store::Store;
use crate::store::conflicts;
use crate::store::queue::{Cursor, Queue, QueueError, Status};

/// A page of the queue, by cursor or offset, with the total of the
/// status asked for (the same rows for a running agent and a stopped one).
pub(super) fn queue_page(
    queue: &Queue,
    status: Option<Status>,
    page: Page,
    cursor: Option<Cursor>,
) -> Result<Value, QueueError> {
    let (items, last) = match cursor {
        Some(_) => queue.list_after(status, cursor, page.limit)?,
        None if page.offset == 0 => queue.list_after(status, None, page.limit)?,
        None => (queue.list(status, page.offset, page.limit)?, None),
    };
    let stats = queue.stats()?;
    // A full page may have more behind it: its last place is where the
    // next page starts.
    let next = last
        .filter(|_| items.len() == page.limit)
        .map(|c| c.to_string());
    let total = match status {
        None => stats.total,
        Some(Status::Pending) => stats.pending,
        Some(Status::InFlight) => stats.in_flight,
        Some(Status::Failed) => stats.failed,
        Some(Status::Conflict) => stats.conflict,
    };
    Ok(
        json!({"data": items, "offset": page.offset, "limit": page.limit,
        "total": total, "next": next}),
    )
}

/// A page of conflict records, newest first, with the open count.
pub(super) fn conflict_page(
    store: &Store,
    status: Option<conflicts::Status>,
    page: Page,
) -> Result<Value, QueueError> {
    let data = conflicts::list(store, status, page.offset, page.limit)?;
    let open = conflicts::open_count(store)?;
    Ok(json!({"data": data, "offset": page.offset, "limit": page.limit, "open": open}))
}

pub(super) fn conflict_record(store: &Store, id: u64) -> Result<Value, AdminError> {
    match conflicts::get(store, id)? {
        Some(conflict) => Ok(json!({ "data": conflict })),
        None => Err(AdminError::NotFound(format!("no conflict {id}"))),
    }
}

/// `current` with `changes` applied; `auto` applies to state mismatches
/// only (DESIGN §8).
pub(super) fn changed_policies(
    current: ConflictPolicies,
    changes: &[PolicyChange],
) -> Result<ConflictPolicies, AdminError> {
    let mut policies = current;
    for change in changes {
        let slot = match change.kind.as_str() {
            "state_mismatch" => &mut policies.state_mismatch,
            "missing_central" => &mut policies.missing_central,
            "missing_local" => &mut policies.missing_local,
            other => {
                return Err(AdminError::BadRequest(format!(
                    "unknown conflict kind {other:?}; valid: state_mismatch, missing_central, missing_local"
                )));
            }
        };
        let policy = change
            .policy
            .parse::<Policy>()
            .map_err(|e| AdminError::BadRequest(format!("{}: {e}", change.kind)))?;
        if !policy.fits_every_kind() && change.kind != "state_mismatch" {
            return Err(AdminError::BadRequest(format!(
                "{}: {} applies to state_mismatch only",
                change.kind,
                policy.as_str()
            )));
        }
        *slot = policy;
    }
    Ok(policies)
}

pub(super) fn evicted(paths: Vec<String>) -> Answer {
    Answer::done(json!({"removed": paths.len(), "paths": paths}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: &str, policy: &str) -> PolicyChange {
        PolicyChange {
            kind: kind.into(),
            policy: policy.into(),
        }
    }

    #[test]
    fn policy_changes_name_what_they_refuse() {
        let current = ConflictPolicies::default();
        let set = changed_policies(current, &[change("missing_local", "manual")]).unwrap();
        assert_eq!(set.missing_local, Policy::Manual);
        assert_eq!(set.state_mismatch, current.state_mismatch);
        let auto = changed_policies(current, &[change("missing_central", "auto")]);
        assert!(
            matches!(auto, Err(AdminError::BadRequest(m)) if m.contains("state_mismatch only"))
        );
        let kind = changed_policies(current, &[change("nonsense", "manual")]);
        assert!(
            matches!(kind, Err(AdminError::BadRequest(m)) if m.contains("unknown conflict kind"))
        );
        let policy = changed_policies(current, &[change("state_mismatch", "maybe")]);
        assert!(
            matches!(policy, Err(AdminError::BadRequest(m)) if m.starts_with("state_mismatch: "))
        );
    }
}
