use super::*;
use crate::model::node::NodeState;

fn mac(s: &str) -> Mac {
    s.parse().unwrap()
}

#[test]
fn nodes_round_trip_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let m = mac("52:54:00:00:00:01");
    {
        let store = Store::open(dir.path()).unwrap();
        let node = Node::new_local(m, NodeState::Active, OffsetDateTime::now_utc());
        store.put_node(&node).unwrap();
        assert_eq!(store.list_nodes().unwrap().len(), 1);
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let node = store.get_node(m).unwrap().unwrap();
    assert_eq!(node.state, NodeState::Active);
    let node = store
        .update_node(m, |n| n.state = NodeState::Retired)
        .unwrap();
    assert_eq!(node.state, NodeState::Retired);
    assert!(store.remove_node(m).unwrap());
    assert!(store.get_node(m).unwrap().is_none());
    assert!(matches!(
        store.update_node(m, |_| {}),
        Err(StoreError::NodeNotFound(_))
    ));
}

#[test]
fn an_unreadable_record_is_quarantined_at_open_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (mac("52:54:00:00:00:01"), mac("52:54:00:00:00:02"));
    {
        let store = Store::open(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        store
            .put_nodes(&[
                Node::new_local(good, NodeState::Active, now),
                Node::new_local(bad, NodeState::Active, now),
            ])
            .unwrap();
        let db = store.db().unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(NODES)
            .unwrap()
            .insert(bad.to_string().as_str(), b"{\"id\": \x01".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let nodes = store.list_nodes().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].mac, good);
    let quarantined = store.quarantined().unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].table, "nodes");
    assert_eq!(quarantined[0].key, bad.to_string());
    assert_eq!(quarantined[0].raw_hex, "7b226964223a2001");
    assert_eq!(store.quarantined_count().unwrap(), 1);
    // A second start finds nothing more to move.
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.quarantined_count().unwrap(), 1);
}

#[test]
fn second_open_of_the_same_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path())
        .err()
        .expect("second open must fail");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("in use by another siteboot process")
    );
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let txn = store.db().unwrap().begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(SCHEMA_KEY, "99")
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(dir.path()).err().expect("must refuse");
    assert!(
        matches!(err, StoreError::NewerSchema { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn corrupt_records_are_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let txn = store.db().unwrap().begin_write().unwrap();
    txn.open_table(NODES)
        .unwrap()
        .insert("52:54:00:00:00:02", b"{not json".as_slice())
        .unwrap();
    txn.commit().unwrap();
    let err = store.get_node(mac("52:54:00:00:00:02")).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn sync_log_is_bounded_and_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = OffsetDateTime::now_utc();
    for i in 0..(SYNC_LOG_KEEP + 5) {
        store
            .append_sync_log("full_sync", &format!("n{i}"), now)
            .unwrap();
    }
    let log = store.sync_log(3).unwrap();
    assert_eq!(log[0].detail, format!("n{}", SYNC_LOG_KEEP + 4));
    assert_eq!(log.len(), 3);
    assert_eq!(store.sync_log(10_000).unwrap().len() as u64, SYNC_LOG_KEEP);
    store.put_meta(&[("cursor", "c1")]).unwrap();
    assert_eq!(store.get_meta("cursor").unwrap().as_deref(), Some("c1"));
}

#[test]
fn schema_v1_files_are_migrated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let txn = store.db().unwrap().begin_write().unwrap();
        txn.delete_table(SYNC_LOG).unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(SCHEMA_KEY, "1")
            .unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    store
        .append_sync_log("online", "", OffsetDateTime::now_utc())
        .unwrap();
}

#[test]
fn last_scripts_are_batched() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = OffsetDateTime::now_utc();
    let batch: Vec<_> = (1..=3u8)
        .map(|i| {
            (
                Mac::new([0x52, 0x54, 0, 0, 0, i]),
                LastScript {
                    script: format!("#!ipxe\necho {i}\n"),
                    served_at: now,
                    action: "local".into(),
                    destructive: false,
                    workflow_id: None,
                },
            )
        })
        .collect();
    store.put_last_scripts(&batch).unwrap();
    let got = store
        .get_last_script(Mac::new([0x52, 0x54, 0, 0, 0, 2]))
        .unwrap()
        .unwrap();
    assert_eq!(got.script, "#!ipxe\necho 2\n");
}

#[test]
fn schema_v2_files_keep_their_queue_conflicts_and_index() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let txn = store.db().unwrap().begin_write().unwrap();
        txn.open_table(TableDefinition::<&str, &[u8]>::new("content"))
            .unwrap()
            .insert("kept", b"{}".as_slice())
            .unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(SCHEMA_KEY, "2")
            .unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), 3);
    let txn = store.db().unwrap().begin_read().unwrap();
    let names: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_string())
        .collect();
    for table in [
        "queue",
        "queue_ids",
        "conflicts",
        "conflicts_open",
        "content",
        "quarantine",
    ] {
        assert!(
            names.iter().any(|n| n == table),
            "{table} missing: {names:?}"
        );
    }
    let content = txn
        .open_table(TableDefinition::<&str, &[u8]>::new("content"))
        .unwrap();
    assert!(content.get("kept").unwrap().is_some());
}

#[test]
fn the_generation_moves_with_every_write_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let m = mac("52:54:00:00:00:01");
    let before = store.generation();
    let _ = store.get_meta("anything").unwrap();
    let _ = store.list_nodes().unwrap();
    assert_eq!(store.generation(), before, "reads leave it alone");
    store.put_meta(&[("k", "v")]).unwrap();
    let after_meta = store.generation();
    assert!(after_meta > before);
    store
        .put_node(&Node::new_local(
            m,
            NodeState::Active,
            OffsetDateTime::now_utc(),
        ))
        .unwrap();
    let after_node = store.generation();
    assert!(after_node > after_meta);
    // A transaction of a module with its own tables moves it at commit.
    let txn = store.begin_write().unwrap();
    txn.append_sync_log("test", "detail", OffsetDateTime::now_utc())
        .unwrap();
    assert_eq!(store.generation(), after_node, "not before the commit");
    txn.commit().unwrap();
    assert!(store.generation() > after_node);
    // Clones are one store.
    let clone = store.clone();
    clone.put_meta(&[("k", "w")]).unwrap();
    assert_eq!(store.generation(), clone.generation());
}
