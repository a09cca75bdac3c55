//! Every table of the agent's database, and the one list of migrations
//! that makes them. The store's modules (nodes, the queue, conflicts, the
//! content index) read and write these tables; nothing outside `store/`
//! names them or redb.

use redb::TableDefinition;

// The store's own tables.
pub(super) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
pub(super) const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
pub(super) const WORKFLOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("workflows");
pub(super) const LAST_SCRIPTS: TableDefinition<&str, &[u8]> = TableDefinition::new("last_scripts");
/// Sync and connectivity events, oldest first, by sequence number.
pub(super) const SYNC_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("sync_log");
/// Records found unreadable at start, moved aside: "<table>/<key>" → a
/// [`Quarantined`] (DESIGN §10: one bad record never stops the agent).
pub(super) const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");

// The durable queue (`queue/`).
/// (priority, sequence) → item. Key order is send order.
pub(super) const QUEUE: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("queue");
/// id (= sequence) → priority, to find an item by id.
pub(super) const QUEUE_IDS: TableDefinition<u64, u8> = TableDefinition::new("queue_ids");
/// Counters: next sequence, items per status, events dropped.
pub(super) const QUEUE_COUNTERS: TableDefinition<&str, u64> =
    TableDefinition::new("queue_counters");
/// Node → number of its items still to send (pending or in flight). Kept
/// in the same transactions as the items, so it never drifts: a write for
/// a node listed here must queue behind its items, not overtake them.
pub(super) const QUEUE_NODES: TableDefinition<&str, u64> = TableDefinition::new("queue_nodes");
/// Node → `first:latest`: the state changes acked here in a row moved the
/// controller's version from `first` to `latest`, each from the previous
/// one's result (a foreign change in between would have been a 409). The
/// node's later changes were made here on top of ours, so one based on
/// any version in `first..latest` is sent based on `latest` (else each
/// would be a 409 against our own change).
pub(super) const QUEUE_CHAIN: TableDefinition<&str, &str> = TableDefinition::new("queue_chain");

// Conflicts (`conflicts.rs`).
/// id → record (JSON).
pub(super) const CONFLICTS: TableDefinition<u64, &[u8]> = TableDefinition::new("conflicts");
/// MAC → id of the node's open conflict.
pub(super) const CONFLICTS_OPEN: TableDefinition<&str, u64> =
    TableDefinition::new("conflicts_open");
/// Ids of the open conflicts, and of the resolved ones: a page of either,
/// newest first, reads only its own entries (no scan of the history).
pub(super) const CONFLICTS_OPEN_IDS: TableDefinition<u64, ()> =
    TableDefinition::new("conflicts_open_ids");
pub(super) const CONFLICTS_RESOLVED_IDS: TableDefinition<u64, ()> =
    TableDefinition::new("conflicts_resolved_ids");
/// `next_id`, and `indexed` once [`CONFLICTS_OPEN_IDS`] and [`CONFLICTS_RESOLVED_IDS`] are
/// complete (databases written before they existed are indexed at start).
pub(super) const CONFLICTS_META: TableDefinition<&str, u64> =
    TableDefinition::new("conflicts_meta");

// The content cache's index (`content.rs`).
/// Controller path → entry (JSON).
pub(super) const CONTENT: TableDefinition<&str, &[u8]> = TableDefinition::new("content");

pub(super) const SCHEMA_KEY: &str = "schema_version";
/// The schema this build writes. Bump it and add a step to [`MIGRATIONS`]
/// whenever a table or record layout changes.
pub const SCHEMA_VERSION: u32 = 3;

type Migration = fn(&redb::WriteTransaction) -> Result<(), redb::Error>;

/// `MIGRATIONS[n]` takes a database from schema `n` to `n + 1`; schema 0 is a
/// new, empty file.
pub(super) const MIGRATIONS: &[Migration] =
    &[create_schema_v1, add_sync_log_v2, own_every_table_v3];

fn create_schema_v1(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(NODES)?;
    txn.open_table(WORKFLOWS)?;
    txn.open_table(LAST_SCRIPTS)?;
    Ok(())
}

/// v2: the controller link's sync log.
fn add_sync_log_v2(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(SYNC_LOG)?;
    Ok(())
}

/// v3: the queue's, the conflicts' and the content index's tables, which
/// their modules used to create on first use, are made here like every
/// other table. Their rows are unchanged: a database written before v3
/// keeps its queue, conflicts and index as they are.
fn own_every_table_v3(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(QUEUE)?;
    txn.open_table(QUEUE_IDS)?;
    txn.open_table(QUEUE_COUNTERS)?;
    txn.open_table(QUEUE_NODES)?;
    txn.open_table(QUEUE_CHAIN)?;
    txn.open_table(CONFLICTS)?;
    txn.open_table(CONFLICTS_OPEN)?;
    txn.open_table(CONFLICTS_OPEN_IDS)?;
    txn.open_table(CONFLICTS_RESOLVED_IDS)?;
    txn.open_table(CONFLICTS_META)?;
    txn.open_table(CONTENT)?;
    txn.open_table(QUARANTINE)?;
    Ok(())
}
