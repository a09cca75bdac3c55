//! Node sync (DESIGN §6): the site's nodes and workflows from the
//! controller into the cache — full (every node; unlisted ones are marked)
//! or incremental from the last cursor.

use serde::Serialize;
use time::OffsetDateTime;

use crate::boot::lookup::LookupError;
use crate::central::port::ControllerPort;
use crate::status::META_LAST_SYNC;
use crate::store::nodes::NodeCache;

pub use crate::boot::changes::META_CURSOR;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SyncReport {
    pub full: bool,
    pub received: usize,
    pub changed: usize,
    pub marked_missing: usize,
    pub workflows: usize,
    pub errors: Vec<String>,
    pub cursor: Option<String>,
    /// A full sync's: controller nodes it no longer listed that have
    /// changes queued here (to be confirmed by MAC: DESIGN §8
    /// `missing_central`).
    #[serde(skip)]
    pub unlisted_with_changes: Vec<crate::model::mac::Mac>,
}

/// Whether an incremental sync can run: the controller gave a cursor.
pub async fn has_cursor(nodes: &NodeCache) -> bool {
    nodes
        .store()
        .call(|s| s.get_meta(META_CURSOR))
        .await
        .ok()
        .flatten()
        .is_some()
}

/// Nodes with queued changes that a complete listing no longer has (and
/// that the controller had: nodes first seen here were never its own).
fn unlisted_with_changes(
    nodes: &NodeCache,
    received: &[crate::model::node::Node],
    protected: &std::collections::HashSet<crate::model::mac::Mac>,
) -> Vec<crate::model::mac::Mac> {
    let listed: std::collections::HashSet<_> = received.iter().map(|n| n.mac).collect();
    let mut unlisted: Vec<_> = protected
        .iter()
        .filter(|mac| !listed.contains(mac))
        .filter(|mac| {
            nodes
                .get(**mac)
                .is_some_and(|n| !n.id.starts_with("local-"))
        })
        .copied()
        .collect();
    unlisted.sort();
    unlisted
}

/// Runs one sync (a full one when there is no cursor). Per-node errors are recorded in the report and the sync
/// log, not fatal; a controller that cannot be reached, or answers garbage
/// for the page as a whole, fails the sync and changes nothing.
pub async fn run(
    port: &ControllerPort,
    nodes: &NodeCache,
    full: bool,
    protected: &std::collections::HashSet<crate::model::mac::Mac>,
) -> Result<SyncReport, LookupError> {
    let store = nodes.store().clone();
    // Held through the call: no round applies a page meanwhile, and this
    // one's ticket is the newest when it is applied.
    let mut order = nodes.lock_feed().await;
    let ticket = nodes.take_feed_ticket();
    let cursor = if full {
        None
    } else {
        store.call(|s| s.get_meta(META_CURSOR)).await?
    };
    // No cursor to go on (a controller that gives none, like PureBoot's
    // central, or none received yet): only a full sync can tell.
    let full = full || cursor.is_none();
    let page = port.site_nodes(cursor.as_deref()).await?;
    // Always admitted (the lock was held since the ticket): recorded, so
    // that a round whose call started before this one's is not applied
    // after it.
    order.admit(ticket);
    let crate::central::api::ParsedPage {
        workflows,
        nodes: received,
        errors,
    } = page.parse();
    let workflow_count = workflows.len();
    if !workflows.is_empty() {
        let stored = store.call(|s| s.list_workflows()).await?;
        let changed = crate::boot::changes::changed_workflows(workflows, &stored);
        if !changed.is_empty() {
            store.call(move |s| s.put_workflows(&changed)).await?;
            // Scripts rendered with the old ones are not handed out again.
            nodes.workflows_written();
        }
    }
    let count = received.len();
    // A full sync whose page had bad entries cannot tell "missing" from
    // "unreadable", so it marks nothing.
    let complete = full && errors.is_empty();
    let unlisted_with_changes = if complete {
        unlisted_with_changes(nodes, &received, protected)
    } else {
        Vec::new()
    };
    let (changed, marked) = nodes.apply_sync(received, complete, protected).await?;
    let now = OffsetDateTime::now_utc();
    let stamp = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let new_cursor = page.cursor.clone();
    let kind = if full {
        "full_sync"
    } else {
        "incremental_sync"
    };
    let detail = format!(
        "{count} nodes received, {changed} changed, {marked} marked missing, {workflow_count} workflows, {} errors",
        errors.len()
    );
    let error_lines = errors.clone();
    store
        .call(move |s| {
            let mut meta = vec![(META_LAST_SYNC, stamp.as_str())];
            match new_cursor.as_deref() {
                Some(cursor) => meta.push((META_CURSOR, cursor)),
                // A full sync without a cursor: incremental syncs stop
                // until the controller gives one (DESIGN §6).
                None if full => s.remove_meta(META_CURSOR)?,
                None => {}
            }
            s.put_meta(&meta)?;
            for line in &error_lines {
                s.append_sync_log("node_error", line, now)?;
            }
            s.append_sync_log(kind, &detail, now)
        })
        .await?;
    tracing::info!(
        full,
        received = count,
        changed,
        marked,
        errors = errors.len(),
        "node sync done"
    );
    // The live view refreshes its nodes and "last sync" on this.
    crate::events::publish(
        "sync",
        serde_json::json!({"full": full, "received": count, "changed": changed}),
    );
    Ok(SyncReport {
        full,
        received: count,
        changed,
        marked_missing: marked,
        workflows: workflow_count,
        errors,
        cursor: page.cursor,
        unlisted_with_changes,
    })
}
