//! The change feed's rounds against a controller whose feed calls answer
//! only when the test says, in the order it says: overlapping calls, an
//! older page answered after a newer one, a round overtaken by a sync.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};

use super::{ChangeFeed, Confirmation, META_CURSOR, changed_workflows};
use crate::central::api::{
    Heartbeat, HeartbeatReply, NewNode, NodePage, NodeReport, Registration, RegistrationReply,
    StateChange,
};
use crate::central::monitor::Monitor;
use crate::central::port::ControllerPort;
use crate::central::{BoxFuture, CentralError, Controller, FileAnswer, FileRequest};
use crate::model::mac::Mac;
use crate::model::node::{Node, NodeState, Workflow};
use crate::outbox::Outbox;
use crate::store::Store;
use crate::store::nodes::NodeCache;
use crate::store::queue::{Limits, Queue};

/// A feed whose calls wait for their page: each call's `since` is
/// recorded and its answer is sent through [`FeedController::answer`].
struct FeedController {
    waiting: Mutex<Vec<Option<oneshot::Sender<NodePage>>>>,
    since: Mutex<Vec<Option<String>>>,
    calls: watch::Sender<usize>,
}

fn unused<T: Send + 'static>() -> BoxFuture<'static, Result<T, CentralError>> {
    Box::pin(async { Err(CentralError::Garbage("not in this test".into())) })
}

impl Controller for FeedController {
    fn health(&self) -> BoxFuture<'_, Result<(), CentralError>> {
        Box::pin(async { Ok(()) })
    }
    fn register(&self, _: &Registration) -> BoxFuture<'_, Result<RegistrationReply, CentralError>> {
        unused()
    }
    fn heartbeat(&self, _: &Heartbeat) -> BoxFuture<'_, Result<HeartbeatReply, CentralError>> {
        unused()
    }
    fn site_nodes(
        &self,
        _: &str,
        since: Option<&str>,
    ) -> BoxFuture<'_, Result<NodePage, CentralError>> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Some(tx));
        self.since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(since.map(str::to_string));
        self.calls.send_modify(|n| *n += 1);
        Box::pin(async move {
            rx.await
                .map_err(|_| CentralError::Unreachable("the test dropped the call".into()))
        })
    }
    fn node_by_mac(&self, _: Mac) -> BoxFuture<'_, Result<Option<Node>, CentralError>> {
        unused()
    }
    fn create_node(
        &self,
        _: &NewNode,
        _: Option<&str>,
    ) -> BoxFuture<'_, Result<Node, CentralError>> {
        unused()
    }
    fn set_state(
        &self,
        _: Mac,
        _: &str,
        _: &StateChange,
        _: &str,
    ) -> BoxFuture<'_, Result<Node, CentralError>> {
        unused()
    }
    fn report(&self, _: &NodeReport, _: &str) -> BoxFuture<'_, Result<(), CentralError>> {
        unused()
    }
    fn fetch_file(
        &self,
        _: &str,
        _: FileRequest,
    ) -> BoxFuture<'_, Result<FileAnswer, CentralError>> {
        unused()
    }
}

impl FeedController {
    /// Waits until `n` calls were made in all (a minute at most: a
    /// call that never comes fails the test rather than hanging it).
    async fn calls_reach(&self, n: usize) {
        let mut calls = self.calls.subscribe();
        let made = tokio::time::timeout(Duration::from_secs(60), calls.wait_for(|made| *made >= n))
            .await
            .map(|r| r.map(|made| *made));
        assert!(
            matches!(made, Ok(Ok(_))),
            "call {n} never came ({} made)",
            self.made()
        );
    }

    fn made(&self) -> usize {
        *self.calls.borrow()
    }

    /// Answers call `index` (from 0) with `x` in `state` and `cursor`.
    fn answer(&self, index: usize, state: &str, cursor: &str) {
        let page = NodePage {
            data: vec![serde_json::json!({
                "id": "node-x", "mac": X, "state": state,
                "updated_at": "2026-12-01T00:00:00Z", "version": 1
            })],
            workflows: Vec::new(),
            cursor: Some(cursor.to_string()),
        };
        let sender = self.waiting.lock().unwrap_or_else(|e| e.into_inner())[index]
            .take()
            .expect("a call not answered yet");
        let _ = sender.send(page);
    }

    fn since(&self, index: usize) -> Option<String> {
        self.since.lock().unwrap_or_else(|e| e.into_inner())[index].clone()
    }
}

const X: &str = "52:54:00:aa:00:01";

struct Setup {
    _dir: tempfile::TempDir,
    controller: Arc<FeedController>,
    port: Arc<ControllerPort>,
    nodes: NodeCache,
    feed: Arc<ChangeFeed>,
}

/// The cache holds the controller's node X (active) and cursor `c0`; a
/// second call may start beside one out for `overlap_after`.
fn setup(overlap_after: Duration) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let mac: Mac = X.parse().expect("mac");
    let mut node = Node::new_local(mac, NodeState::Active, OffsetDateTime::now_utc());
    node.id = "node-x".into();
    store.put_nodes(&[node]).expect("node");
    store.put_meta(&[(META_CURSOR, "c0")]).expect("cursor");
    let queue = Queue::open(store.clone(), Limits::unshared(1000)).expect("queue");
    let (calls, _) = watch::channel(0);
    let controller = Arc::new(FeedController {
        waiting: Mutex::new(Vec::new()),
        since: Mutex::new(Vec::new()),
        calls,
    });
    let monitor = Monitor::new(1, 1, OffsetDateTime::now_utc());
    monitor.record(true, OffsetDateTime::now_utc());
    let port = Arc::new(ControllerPort::remote(
        controller.clone(),
        monitor,
        "t".into(),
        Box::new(|_| {}),
    ));
    let nodes = NodeCache::load(store).expect("cache");
    let outbox = Arc::new(Outbox::new(
        queue,
        nodes.clone(),
        port.clone(),
        Duration::from_secs(1),
        1000,
        Default::default(),
    ));
    let feed = Arc::new(
        ChangeFeed::new(port.clone(), outbox, nodes.clone()).with_overlap_after(overlap_after),
    );
    Setup {
        _dir: dir,
        controller,
        port,
        nodes,
        feed,
    }
}

/// A boot of X asking for confirmation, in a task of its own.
fn boot(feed: &Arc<ChangeFeed>) -> tokio::task::JoinHandle<Confirmation> {
    let feed = feed.clone();
    let mac: Mac = X.parse().expect("mac");
    tokio::spawn(async move { feed.confirm(mac, Duration::from_secs(60)).await })
}

/// Waits until no round is under way (every answered call processed).
async fn rounds_done(feed: &ChangeFeed) {
    while feed
        .rounds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .running
        > 0
    {
        tokio::task::yield_now().await;
    }
}

fn state_of_x(nodes: &NodeCache) -> NodeState {
    nodes
        .get(X.parse().expect("mac"))
        .expect("X is cached")
        .state
}

async fn stored_cursor(nodes: &NodeCache) -> Option<String> {
    nodes
        .store()
        .call(|s| s.get_meta(META_CURSOR))
        .await
        .expect("meta")
}

/// A boot that arrives while a call is under way starts a second one
/// at once; the newer page, answered first, confirms both boots; the
/// older page, answered after it, is not applied; a third boot, which
/// arrived while two calls were under way, gets the next call, from the
/// newer cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_calls_apply_only_the_newest_page() {
    let s = setup(Duration::ZERO);
    let first = boot(&s.feed);
    s.controller.calls_reach(1).await;
    let second = boot(&s.feed);
    s.controller.calls_reach(2).await;
    let third = boot(&s.feed);

    s.controller.answer(1, "retired", "c2");
    assert!(matches!(first.await, Ok(Confirmation::Confirmed)));
    assert!(matches!(second.await, Ok(Confirmation::Confirmed)));
    assert_eq!(state_of_x(&s.nodes), NodeState::Retired);

    // The third boot's call starts when the second's ends.
    s.controller.calls_reach(3).await;
    assert_eq!(s.controller.since(2).as_deref(), Some("c2"));
    s.controller.answer(0, "active", "c1");
    s.controller.answer(2, "retired", "c2");
    assert!(matches!(third.await, Ok(Confirmation::Confirmed)));
    rounds_done(&s.feed).await;
    assert_eq!(
        state_of_x(&s.nodes),
        NodeState::Retired,
        "the older page was applied after the newer one"
    );
    assert_eq!(stored_cursor(&s.nodes).await.as_deref(), Some("c2"));
    assert_eq!(s.controller.made(), 3);
}

/// A round whose call a sync overtook (the sync started later and was
/// applied first) applies nothing and calls again: its boot is answered
/// by a call that started after it arrived and after the sync's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_overtaken_by_a_sync_calls_again() {
    let s = setup(Duration::ZERO);
    let waiting = boot(&s.feed);
    s.controller.calls_reach(1).await;
    let sync = {
        let (port, nodes) = (s.port.clone(), s.nodes.clone());
        tokio::spawn(async move {
            crate::link::sync::run(&port, &nodes, false, &HashSet::new())
                .await
                .map(|report| report.changed)
        })
    };
    s.controller.calls_reach(2).await;
    s.controller.answer(1, "retired", "s1");
    assert!(matches!(sync.await, Ok(Ok(1))));
    s.controller.answer(0, "active", "c1");
    s.controller.calls_reach(3).await;
    assert_eq!(s.controller.since(2).as_deref(), Some("s1"));
    assert_eq!(state_of_x(&s.nodes), NodeState::Retired);
    s.controller.answer(2, "retired", "s2");
    assert!(matches!(waiting.await, Ok(Confirmation::Confirmed)));
    assert_eq!(state_of_x(&s.nodes), NodeState::Retired);
    assert_eq!(stored_cursor(&s.nodes).await.as_deref(), Some("s2"));
}

fn workflow(id: &str, cmdline: &str) -> Workflow {
    Workflow {
        id: id.into(),
        name: id.into(),
        method: crate::model::node::BootMethod::Kernel,
        kernel: "vmlinuz".into(),
        initrd: vec![],
        cmdline: cmdline.into(),
        url: None,
        offline_safe: false,
    }
}

#[test]
fn only_new_or_changed_workflows_are_written() {
    let stored = vec![workflow("a", "quiet"), workflow("b", "quiet")];
    let listed = vec![
        workflow("a", "quiet"),
        workflow("b", "console=ttyS0"),
        workflow("c", ""),
    ];
    let ids: Vec<_> = changed_workflows(listed, &stored)
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(ids, ["b", "c"]);
}

/// A boot arriving while a call has been out for less than the overlap
/// threshold waits for the call after it, which starts when it ends (from
/// the cursor its page brought).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_during_a_young_call_waits_for_the_next() {
    let s = setup(Duration::from_secs(3600));
    let first = boot(&s.feed);
    s.controller.calls_reach(1).await;
    let second = boot(&s.feed);
    // The second boot has registered when the feed's rounds say so; until
    // then the first call is not answered.
    while !s
        .feed
        .rounds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .wanted
    {
        tokio::task::yield_now().await;
    }
    assert_eq!(s.controller.made(), 1, "a second call beside a young one");
    s.controller.answer(0, "active", "c1");
    assert!(matches!(first.await, Ok(Confirmation::Confirmed)));
    s.controller.calls_reach(2).await;
    assert_eq!(s.controller.since(1).as_deref(), Some("c1"));
    s.controller.answer(1, "active", "c1");
    assert!(matches!(second.await, Ok(Confirmation::Confirmed)));
    assert_eq!(s.controller.made(), 2);
}

/// When the call under way has been out past the threshold, the boots
/// already waiting for the next get a second call at once, beside it,
/// rather than when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_call_starts_a_second_for_the_boots_waiting() {
    let s = setup(Duration::from_secs(3600));
    let first = boot(&s.feed);
    s.controller.calls_reach(1).await;
    let second = boot(&s.feed);
    while !s
        .feed
        .rounds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .wanted
    {
        tokio::task::yield_now().await;
    }
    // What the call's timer does when the threshold passes.
    s.feed.overdue(s.nodes.last_feed_ticket());
    s.controller.calls_reach(2).await;
    assert_eq!(s.controller.since(1).as_deref(), Some("c0"));
    s.controller.answer(1, "retired", "c2");
    assert!(matches!(first.await, Ok(Confirmation::Confirmed)));
    assert!(matches!(second.await, Ok(Confirmation::Confirmed)));
    s.controller.answer(0, "active", "c1");
    rounds_done(&s.feed).await;
    assert_eq!(state_of_x(&s.nodes), NodeState::Retired);
    assert_eq!(s.controller.made(), 2);
}
