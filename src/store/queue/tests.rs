#[test]
fn a_changed_request_takes_the_next_key_in_its_line() {
    assert_eq!(super::next_key("q1-7"), "q1-7.1");
    assert_eq!(super::next_key("q1-7.1"), "q1-7.2");
    assert_eq!(super::next_key("q1-d3f.9"), "q1-d3f.10");
    assert_eq!(super::next_key(".5"), ".5.1");
}

use super::*;
use std::time::Duration;

fn queue(max: u64) -> (tempfile::TempDir, Queue) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, Queue::open(store, Limits::unshared(max)).unwrap())
}

fn item(kind: Kind, node: &str, n: u32) -> NewItem {
    NewItem {
        kind,
        origin: Origin::Operator,
        node: node.into(),
        payload: serde_json::json!({ "n": n }),
        key: None,
        local_state: None,
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::days(20000)
}

fn depth(q: &Queue, status: &str, kind: &str) -> u64 {
    let stats = q.stats().unwrap();
    stats
        .by_kind
        .get(status)
        .and_then(|d| d.get(kind))
        .copied()
        .unwrap_or(0)
}

#[test]
fn depths_by_status_and_kind_follow_every_move_and_survive_a_recount() {
    let (dir, q) = queue(100);
    let ids = q
        .enqueue_many(
            vec![
                item(Kind::Registration, "a", 1),
                item(Kind::StateUpdate, "b", 2),
                item(Kind::Event, "c", 3),
                item(Kind::Event, "d", 4),
            ],
            now(),
        )
        .unwrap()
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(depth(&q, "pending", "registration"), 1);
    assert_eq!(depth(&q, "pending", "event"), 2);
    let taken = q.take_batch(10, now()).unwrap();
    assert_eq!(taken.len(), 4);
    assert_eq!(depth(&q, "in_flight", "event"), 2);
    assert_eq!(depth(&q, "pending", "event"), 0);
    q.ack(ids[0]).unwrap();
    q.fail(ids[1], "refused", None).unwrap();
    q.fail(ids[2], "unreachable", Some(now())).unwrap();
    assert_eq!(depth(&q, "in_flight", "registration"), 0);
    assert_eq!(depth(&q, "failed", "state_update"), 1);
    assert_eq!(depth(&q, "pending", "event"), 1);
    assert_eq!(depth(&q, "in_flight", "event"), 1);
    let stats = q.stats().unwrap();
    let summed: u64 = stats.by_kind.values().flat_map(|d| d.values()).sum();
    assert_eq!(summed, stats.total);

    // A database from before the depths by kind: its marker and kind
    // counters are gone; opening it counts them afresh (the item in
    // flight at the "crash" is pending again).
    drop(q);
    let store = Store::open(dir.path()).unwrap();
    {
        let txn = store.begin_write().unwrap();
        {
            let mut counters = txn.redb().open_table(QUEUE_COUNTERS).unwrap();
            counters
                .retain(|name, _| !name.contains('/') && name != KINDS_COUNTED)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let q = Queue::open(store, Limits::unshared(100)).unwrap();
    assert_eq!(depth(&q, "failed", "state_update"), 1);
    assert_eq!(depth(&q, "pending", "event"), 2);
    assert_eq!(q.stats().unwrap().pending, 2);
}

#[test]
fn priorities_then_fifo_and_one_item_per_node_at_a_time() {
    let (_d, q) = queue(100);
    let ids = q
        .enqueue_many(
            vec![
                item(Kind::Event, "a", 1),
                item(Kind::StateUpdate, "a", 2),
                item(Kind::Registration, "b", 3),
                item(Kind::StateUpdate, "b", 4),
                item(Kind::Event, "c", 5),
            ],
            now(),
        )
        .unwrap();
    assert!(ids.iter().all(Result::is_ok));
    let peeked = q.peek(10, now()).unwrap();
    let batch = q.take_batch(10, now()).unwrap();
    assert_eq!(
        peeked.len(),
        batch.len(),
        "peek shows what take_batch takes"
    );
    assert!(peeked.iter().zip(&batch).all(|(p, b)| p.id == b.id));
    assert!(
        q.peek(10, now()).unwrap().is_empty(),
        "the rest waits behind the items in flight"
    );
    let order: Vec<(Kind, &str)> = batch.iter().map(|i| (i.kind, i.node.as_str())).collect();
    // b's registration first; a's state update; c's event. b's state
    // update and a's event wait for their node's earlier item.
    assert_eq!(
        order,
        [
            (Kind::Registration, "b"),
            (Kind::StateUpdate, "a"),
            (Kind::Event, "c")
        ]
    );
    for i in &batch {
        q.ack(i.id).unwrap();
    }
    let next: Vec<u32> = q
        .take_batch(10, now())
        .unwrap()
        .iter()
        .map(|i| i.payload["n"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(next, [4, 1]);
}

#[test]
fn failures_back_off_then_fail_for_good() {
    let (_d, q) = queue(100);
    let id = q
        .enqueue_many(vec![item(Kind::StateUpdate, "a", 1)], now())
        .unwrap()[0]
        .as_ref()
        .copied()
        .unwrap();
    q.take_batch(1, now()).unwrap();
    let later = now() + time::Duration::seconds(30);
    q.fail(id, "503", Some(later)).unwrap();
    assert!(q.take_batch(1, now()).unwrap().is_empty(), "backing off");
    assert_eq!(q.take_batch(1, later).unwrap()[0].attempts, 2);
    let item = q.fail(id, "400 invalid transition", None).unwrap().unwrap();
    assert_eq!(item.status, Status::Failed);
    assert_eq!(item.last_error.as_deref(), Some("400 invalid transition"));
    assert_eq!(q.stats().unwrap().failed, 1);
    q.retry(id).unwrap();
    assert_eq!(q.stats().unwrap().pending, 1);
    q.take_batch(1, now()).unwrap();
    q.fail(id, "400", None).unwrap();
    assert_eq!(q.clear_failed().unwrap(), 1);
    assert_eq!(q.stats().unwrap(), Stats::default());
}

#[test]
fn a_full_queue_drops_the_oldest_event_never_a_state_change() {
    let (_d, q) = queue(3);
    q.enqueue_many(
        vec![
            item(Kind::Event, "a", 1),
            item(Kind::Event, "a", 2),
            item(Kind::StateUpdate, "b", 3),
        ],
        now(),
    )
    .unwrap();
    let r = q
        .enqueue_many(vec![item(Kind::StateUpdate, "c", 4)], now())
        .unwrap();
    assert!(r[0].is_ok());
    let kept: Vec<u64> = q
        .list(None, 0, 10)
        .unwrap()
        .iter()
        .map(|i| i.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, [3, 4, 2], "event 1 dropped");
    q.enqueue_many(vec![item(Kind::Registration, "d", 5)], now())
        .unwrap();
    // Now no event is left to drop: a state change is refused, not lost silently.
    let r = q
        .enqueue_many(vec![item(Kind::StateUpdate, "e", 6)], now())
        .unwrap();
    assert!(matches!(r[0], Err(QueueError::Full(3))), "{:?}", r[0]);
    let stats = q.stats().unwrap();
    assert_eq!((stats.total, stats.dropped_events), (3, 2));
}

fn from_node(kind: Kind, node: &str, n: u32) -> NewItem {
    NewItem {
        origin: Origin::Node,
        ..item(kind, node, n)
    }
}

#[test]
fn node_items_keep_to_their_share_and_operators_still_find_room() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_items: 10,
        max_node_items: 3,
    };
    let q = Queue::open(Store::open(dir.path()).unwrap(), limits).unwrap();
    // Nodes try to fill the whole queue with registrations and reports.
    let flood: Vec<NewItem> = (0..10)
        .map(|n| from_node(Kind::Registration, &format!("m{n}"), n))
        .chain((10..20).map(|n| from_node(Kind::StateUpdate, &format!("m{n}"), n)))
        .collect();
    let results = q.enqueue_many(flood, now()).unwrap();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
    assert!(
        results[3..]
            .iter()
            .all(|r| matches!(r, Err(QueueError::Shed(_)))),
        "{results:?}"
    );
    // Operators have the other seven places.
    let operator: Vec<NewItem> = (0..7).map(|n| item(Kind::StateUpdate, "op", n)).collect();
    let results = q.enqueue_many(operator, now()).unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let stats = q.stats().unwrap();
    assert_eq!((stats.total, stats.node_items), (10, 3));
    // An item that leaves gives its place back to its own kind.
    let first = q.list(None, 0, 1).unwrap().remove(0);
    assert_eq!(first.origin, Origin::Node);
    q.ack(first.id).unwrap();
    assert_eq!(q.stats().unwrap().node_items, 2);
    let r = q
        .enqueue_many(vec![from_node(Kind::StateUpdate, "m99", 99)], now())
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
}

#[test]
fn a_node_event_makes_room_in_the_share_by_dropping_the_oldest_event() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_items: 100,
        max_node_items: 2,
    };
    let q = Queue::open(Store::open(dir.path()).unwrap(), limits).unwrap();
    for n in 0..5 {
        let r = q
            .enqueue_many(vec![from_node(Kind::Event, "m", n)], now())
            .unwrap();
        assert!(r[0].is_ok());
    }
    let kept: Vec<u64> = q
        .list(None, 0, 10)
        .unwrap()
        .iter()
        .map(|i| i.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, [3, 4]);
    let stats = q.stats().unwrap();
    assert_eq!((stats.node_items, stats.dropped_events), (2, 3));
}

#[test]
fn one_registration_per_mac_until_it_is_sent() {
    let (_d, q) = queue(100);
    let r = q
        .enqueue_many(
            vec![
                from_node(Kind::Registration, "m", 1),
                from_node(Kind::Registration, "m", 2),
                from_node(Kind::Registration, "n", 3),
            ],
            now(),
        )
        .unwrap();
    assert!(r[0].is_ok() && r[2].is_ok());
    assert!(matches!(&r[1], Err(QueueError::Shed(why)) if why.contains("already queued")));
    let id = *r[0].as_ref().unwrap();
    q.ack(id).unwrap();
    let r = q
        .enqueue_many(vec![from_node(Kind::Registration, "m", 4)], now())
        .unwrap();
    assert!(r[0].is_ok(), "sent: a new one may be queued: {r:?}");
}

#[test]
fn paging_by_cursor_skips_nothing_while_items_leave() {
    let (_d, q) = queue(100);
    let items = (0..6)
        .map(|n| item(Kind::StateUpdate, &format!("m{n}"), n))
        .chain([item(Kind::Registration, "r", 6)])
        .collect();
    q.enqueue_many(items, now()).unwrap();
    let (page, cursor) = q.list_after(None, None, 3).unwrap();
    let n = |items: &[Item]| -> Vec<u64> {
        items
            .iter()
            .map(|i| i.payload["n"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(n(&page), [6, 0, 1], "send order: the registration first");
    // Two items of the first page leave (replay took them).
    q.ack(page[0].id).unwrap();
    q.ack(page[1].id).unwrap();
    let cursor = cursor.unwrap().to_string().parse::<Cursor>().unwrap();
    let (page, cursor) = q.list_after(None, Some(cursor), 3).unwrap();
    assert_eq!(n(&page), [2, 3, 4]);
    let (page, _) = q.list_after(None, cursor, 3).unwrap();
    assert_eq!(n(&page), [5]);
    for bad in ["", "1", "-1", "1-", "x-1", "1-2-3", "300-1", "1-+2"] {
        assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
    }
}

#[test]
fn an_unreadable_item_is_quarantined_and_the_queue_counted_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let bad_id = {
        let q = Queue::open(Store::open(dir.path()).unwrap(), Limits::unshared(10)).unwrap();
        let ids = q
            .enqueue_many(
                vec![
                    item(Kind::StateUpdate, "m", 1),
                    from_node(Kind::Registration, "n", 2),
                    item(Kind::StateUpdate, "m", 3),
                ],
                now(),
            )
            .unwrap();
        let bad_id = *ids[1].as_ref().unwrap();
        let txn = q.store().begin_write().unwrap();
        txn.redb()
            .open_table(QUEUE)
            .unwrap()
            .insert(
                (Kind::Registration.priority(), bad_id),
                b"garbage".as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
        bad_id
    };
    let store = Store::open(dir.path()).unwrap();
    let q = Queue::open(store.clone(), Limits::unshared(10)).unwrap();
    let stats = q.stats().unwrap();
    assert_eq!(
        (stats.total, stats.pending, stats.node_items),
        (2, 2, 0),
        "counted from what remains"
    );
    assert!(!q.has_active("n").unwrap());
    assert!(q.has_active("m").unwrap());
    let quarantined = store.quarantined().unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].table, "queue");
    assert_eq!(quarantined[0].key, format!("0-{bad_id}"));
    // The sequence goes on: no id is reused.
    let r = q
        .enqueue_many(vec![item(Kind::Event, "m", 4)], now())
        .unwrap();
    assert!(*r[0].as_ref().unwrap() > bad_id);
}

#[test]
fn in_flight_items_are_pending_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(Store::open(dir.path()).unwrap(), Limits::unshared(10)).unwrap();
        q.enqueue_many(
            vec![item(Kind::Event, "a", 1), item(Kind::Event, "b", 2)],
            now(),
        )
        .unwrap();
        assert_eq!(q.take_batch(10, now()).unwrap().len(), 2);
        assert_eq!(q.stats().unwrap().in_flight, 2);
    }
    let q = Queue::open(Store::open(dir.path()).unwrap(), Limits::unshared(10)).unwrap();
    let stats = q.stats().unwrap();
    assert_eq!((stats.pending, stats.in_flight), (2, 0));
    assert_eq!(q.take_batch(10, now()).unwrap().len(), 2);
}

#[test]
fn backoff_grows_with_jitter_and_is_capped() {
    let base = Duration::from_secs(1);
    let max = Duration::from_secs(300);
    for attempts in 1..=12 {
        let full = base.saturating_mul(1 << (attempts - 1)).min(max);
        for random in [0u64, 7, u64::MAX] {
            let d = backoff(attempts, base, max, random);
            assert!(d >= full / 2 && d <= full, "{attempts}: {d:?}");
        }
    }
    assert_eq!(backoff(40, base, max, 0), Duration::from_secs(150));
}

#[test]
fn node_tracking_follows_every_status_change() {
    let (_d, q) = queue(100);
    q.enqueue_many(
        vec![item(Kind::Event, "a", 1), item(Kind::StateUpdate, "b", 2)],
        now(),
    )
    .unwrap();
    assert!(q.has_active("a").unwrap() && q.has_active("b").unwrap());
    assert!(!q.has_active("c").unwrap());
    let changed = q.nodes_with_changes().unwrap();
    assert_eq!(
        changed.into_iter().collect::<Vec<_>>(),
        ["b"],
        "events do not count"
    );
    let batch = q.take_batch(10, now()).unwrap();
    assert!(q.has_active("a").unwrap(), "in flight still counts");
    let later = now() + time::Duration::seconds(5);
    q.settle(vec![
        (
            batch[0].id,
            Outcome::Failed {
                error: "400".into(),
            },
        ),
        (batch[1].id, Outcome::Ack),
    ])
    .unwrap();
    assert!(!q.has_active("a").unwrap() && !q.has_active("b").unwrap());
    assert!(q.nodes_with_changes().unwrap().is_empty());
    // An operator's retry makes it count again.
    let failed = q.list(Some(Status::Failed), 0, 10).unwrap();
    q.retry(failed[0].id).unwrap();
    assert!(q.has_active(&failed[0].node).unwrap());
    let batch = q.take_batch(10, now()).unwrap();
    q.settle(vec![(
        batch[0].id,
        Outcome::RetryAt {
            error: "503".into(),
            at: later,
        },
    )])
    .unwrap();
    assert!(
        q.has_active(&failed[0].node).unwrap(),
        "backing off still counts"
    );
    q.delete(batch[0].id).unwrap();
    assert!(!q.has_active(&failed[0].node).unwrap());
    assert_eq!(q.stats().unwrap(), Stats::default());
}

#[test]
fn unsent_items_keep_their_attempt_count_and_keys_are_stable() {
    let (_d, q) = queue(100);
    let mut keyed = item(Kind::StateUpdate, "a", 1);
    keyed.key = Some("direct-key".into());
    q.enqueue_many(vec![keyed, item(Kind::StateUpdate, "b", 2)], now())
        .unwrap();
    let batch = q.take_batch(10, now()).unwrap();
    assert_eq!(batch[0].key, "direct-key");
    assert!(batch[1].key.ends_with(&format!("-{}", batch[1].id)));
    let after = q
        .settle(
            batch
                .iter()
                .map(|i| {
                    (
                        i.id,
                        Outcome::Unsent {
                            error: "refused".into(),
                        },
                    )
                })
                .collect(),
        )
        .unwrap();
    for item in after.into_iter().flatten() {
        assert_eq!((item.status, item.attempts), (Status::Pending, 0));
    }
    let again = q.take_batch(10, now()).unwrap();
    assert_eq!(again[1].key, batch[1].key, "same key on every attempt");
}

#[test]
fn rewriting_payloads_touches_only_that_node_and_rekeys_what_changed() {
    let (_d, q) = queue(100);
    let with_id = |node: &str, id: &str| NewItem {
        kind: Kind::StateUpdate,
        origin: Origin::Operator,
        node: node.into(),
        payload: serde_json::json!({ "node_id": id, "state": "active" }),
        key: None,
        local_state: None,
    };
    q.enqueue_many(
        vec![
            with_id("a", "local-1"),
            with_id("a", "local-1"),
            with_id("b", "local-1"),
            with_id("a", "other"),
        ],
        now(),
    )
    .unwrap();
    let keys_before: Vec<String> = q
        .list(None, 0, 10)
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    let changed = q
        .rewrite_payloads("a", |payload| {
            (payload["node_id"] == "local-1").then(|| {
                let mut payload = payload.clone();
                payload["node_id"] = "node-7".into();
                payload
            })
        })
        .unwrap();
    assert_eq!(changed, 2);
    let after = q.list(None, 0, 10).unwrap();
    let ids: Vec<&str> = after
        .iter()
        .map(|i| i.payload["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["node-7", "node-7", "local-1", "other"]);
    // A different request is a new request: the rewritten items' keys
    // moved on, the others kept theirs.
    let same: Vec<bool> = after
        .iter()
        .zip(&keys_before)
        .map(|(item, before)| item.key == *before)
        .collect();
    assert_eq!(same, [false, false, true, true]);
}

#[test]
fn clear_failed_removes_failed_items_and_counts_them() {
    let (_d, q) = queue(100);
    q.enqueue_many(
        vec![item(Kind::Event, "a", 1), item(Kind::Event, "b", 2)],
        now(),
    )
    .unwrap();
    for i in q.take_batch(10, now()).unwrap() {
        q.fail(i.id, "400", None).unwrap();
    }
    assert_eq!(q.clear_failed().unwrap(), 2);
    assert!(matches!(q.retry(1), Err(QueueError::NotFound(1))));
    assert_eq!(q.stats().unwrap(), Stats::default());
}

#[test]
fn a_local_state_commits_with_its_item_and_not_without_it() {
    let (_d, q) = queue(1);
    let mac: crate::model::mac::Mac = "52:54:00:00:00:07".parse().unwrap();
    q.store()
        .put_node(&crate::model::node::Node::new_local(
            mac,
            crate::model::node::NodeState::Active,
            now(),
        ))
        .unwrap();
    let change = |n: u32| NewItem {
        local_state: Some(crate::model::node::NodeState::Reprovision),
        ..item(Kind::StateUpdate, "52:54:00:00:00:07", n)
    };
    let (results, nodes) = q.enqueue_batch(vec![change(1)], now()).unwrap();
    assert!(results[0].is_ok());
    assert_eq!(nodes[0].state, crate::model::node::NodeState::Reprovision);
    assert_eq!(
        q.store().get_node(mac).unwrap().unwrap().state,
        crate::model::node::NodeState::Reprovision
    );
    // Full, nothing to drop: refused, and the cache is not touched.
    let mut refused = change(2);
    refused.local_state = Some(crate::model::node::NodeState::Retired);
    let (results, nodes) = q.enqueue_batch(vec![refused], now()).unwrap();
    assert!(matches!(results[0], Err(QueueError::Full(1))));
    assert!(nodes.is_empty());
    assert_eq!(
        q.store().get_node(mac).unwrap().unwrap().state,
        crate::model::node::NodeState::Reprovision
    );
}
