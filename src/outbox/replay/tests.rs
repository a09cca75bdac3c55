use super::*;
use crate::central::api::{
    Heartbeat, HeartbeatReply, NewNode, NodePage, NodeReport, Registration, RegistrationReply,
    StateChange,
};
use crate::central::monitor::Monitor;
use crate::central::port::ControllerPort;
use crate::central::{BoxFuture, Controller, FileAnswer, FileRequest};
use crate::store::Store;
use crate::store::nodes::NodeCache;
use crate::store::queue::{Kind, Limits, NewItem, Origin, Queue, Status};
use std::collections::VecDeque;
use std::sync::Mutex;

/// Answers reports from a script; records when each call came (on
/// tokio's clock, which these tests pause).
#[derive(Default)]
struct ScriptedController {
    answers: Mutex<VecDeque<Result<(), CentralError>>>,
    calls: Mutex<Vec<(String, tokio::time::Instant)>>,
}

fn unused<T: Send + 'static>() -> BoxFuture<'static, Result<T, CentralError>> {
    Box::pin(async { Err(CentralError::Garbage("not scripted".into())) })
}

impl Controller for ScriptedController {
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
        _: Option<&str>,
    ) -> BoxFuture<'_, Result<NodePage, CentralError>> {
        unused()
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
    fn report(&self, report: &NodeReport, _: &str) -> BoxFuture<'_, Result<(), CentralError>> {
        self.calls
            .lock()
            .unwrap()
            .push((report.mac_address.clone(), tokio::time::Instant::now()));
        let answer = self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()));
        Box::pin(async move { answer })
    }
    fn fetch_file(
        &self,
        _: &str,
        _: FileRequest,
    ) -> BoxFuture<'_, Result<FileAnswer, CentralError>> {
        unused()
    }
}

fn server_error() -> Result<(), CentralError> {
    Err(CentralError::Rejected {
        status: 503,
        body: "busy".into(),
    })
}

struct Setup {
    _dir: tempfile::TempDir,
    controller: Arc<ScriptedController>,
    outbox: Arc<Outbox>,
    port: Arc<ControllerPort>,
}

fn setup(answers: Vec<Result<(), CentralError>>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let queue = Queue::open(store.clone(), Limits::unshared(1000)).unwrap();
    let controller = Arc::new(ScriptedController::default());
    *controller.answers.lock().unwrap() = answers.into();
    let monitor = Monitor::new(1, 1, OffsetDateTime::now_utc());
    monitor.record(true, OffsetDateTime::now_utc());
    let port = Arc::new(ControllerPort::remote(
        controller.clone(),
        monitor,
        "t".into(),
        Box::new(|_| {}),
    ));
    let nodes = NodeCache::load(store).unwrap();
    let outbox = Arc::new(Outbox::new(
        queue,
        nodes,
        port.clone(),
        Duration::from_secs(1),
        1000,
        Default::default(),
    ));
    Setup {
        _dir: dir,
        controller,
        outbox,
        port,
    }
}

fn report_item(mac: &str) -> NewItem {
    NewItem {
        kind: Kind::Event,
        origin: Origin::Operator,
        node: mac.into(),
        payload: Operation::Report {
            report: serde_json::from_value(serde_json::json!({
                "mac_address": mac, "event": "boot_started"}))
            .unwrap(),
            observed: None,
        }
        .to_payload(),
        key: None,
        local_state: None,
    }
}

fn settings(max_retries: u32) -> ReplaySettings {
    ReplaySettings {
        batch_size: 10,
        max_retries,
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(60),
        period: Duration::from_secs(3600),
    }
}

async fn wait_calls(controller: &ScriptedController, n: usize) {
    for _ in 0..100_000 {
        if controller.calls.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {n} calls");
}

#[tokio::test(start_paused = true)]
async fn server_errors_back_off_exponentially_with_jitter_then_deliver() {
    let s = setup(vec![server_error(), server_error(), server_error(), Ok(())]);
    s.outbox
        .queue()
        .enqueue_many(
            vec![report_item("52:54:00:00:00:01")],
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    tokio::spawn(run(s.outbox.clone(), settings(10), Default::default()));
    wait_calls(&s.controller, 4).await;
    let times: Vec<_> = s
        .controller
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.1)
        .collect();
    // Attempt n waits between half and all of base × 2^(n-1); the
    // tolerance covers this test's own 10 ms polling timer.
    for (n, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let full = Duration::from_secs(1 << n);
        assert!(
            gap >= full / 2 && gap <= full + Duration::from_millis(20),
            "retry {n}: waited {gap:?}, expected {:?}..={full:?}",
            full / 2
        );
    }
    for _ in 0..100 {
        if s.outbox.queue().stats().unwrap().total == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("delivered item not acked: {:?}", s.outbox.queue().stats());
}

#[tokio::test(start_paused = true)]
async fn refusals_fail_at_once_and_errors_fail_after_max_retries() {
    let s = setup(vec![
        Err(CentralError::Rejected {
            status: 422,
            body: "bad report".into(),
        }),
        server_error(),
        server_error(),
        server_error(),
    ]);
    let queue = s.outbox.queue().clone();
    queue
        .enqueue_many(
            vec![report_item("52:54:00:00:00:01")],
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    queue
        .enqueue_many(
            vec![report_item("52:54:00:00:00:02")],
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    tokio::spawn(run(s.outbox.clone(), settings(3), Default::default()));
    wait_calls(&s.controller, 4).await;
    for _ in 0..1000 {
        if queue.stats().unwrap().failed == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failed = queue.list(Some(Status::Failed), 0, 10).unwrap();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("422: bad report")
    );
    assert_eq!(failed[0].attempts, 1);
    assert!(
        failed[1]
            .last_error
            .as_deref()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{:?}",
        failed[1]
    );
    assert_eq!(s.controller.calls.lock().unwrap().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn unreachable_stops_the_round_without_counting_an_attempt() {
    let s = setup(vec![Err(CentralError::Unreachable("refused".into()))]);
    let queue = s.outbox.queue().clone();
    queue
        .enqueue_many(
            vec![report_item("52:54:00:00:00:01")],
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    let end = replay_round(&s.outbox, &settings(3), Clock::start(), &Default::default())
        .await
        .unwrap();
    assert_eq!(end, RoundEnd::Unreachable);
    let items = queue.list(None, 0, 10).unwrap();
    assert_eq!(items[0].status, Status::Pending);
    assert_eq!(items[0].attempts, 0);
    assert!(s.port.mode().is_offline(), "the failure counted as a probe");
    // Next round (the scripted answers are used up: success).
    s.port.health().await.unwrap();
    let end = replay_round(&s.outbox, &settings(3), Clock::start(), &Default::default())
        .await
        .unwrap();
    assert_eq!(end, RoundEnd::Drained);
    assert_eq!(queue.stats().unwrap().total, 0);
}

const OP_SET_STATE: &str = "set_state";
const OP_REPORT: &str = "report";

#[test]
fn every_kind_of_failure_is_judged_as_the_rules_say() {
    let now = OffsetDateTime::UNIX_EPOCH;
    let payload = |op: &str| match op {
        OP_SET_STATE => Operation::SetState {
            node_id: "n1".into(),
            change: StateChange {
                state: crate::model::node::NodeState::Active,
                comment: None,
                force: None,
                base_version: Some(1),
            },
            base_changed_at: None,
            base_state: None,
        }
        .to_payload(),
        _ => report_item("52:54:00:00:00:01").payload,
    };
    let item = |op: &str, attempts: u32| Item {
        id: 1,
        kind: Kind::StateUpdate,
        origin: Origin::Operator,
        node: "52:54:00:00:00:01".into(),
        payload: payload(op),
        key: "k".into(),
        created_at: now,
        attempts,
        last_attempt_at: None,
        last_error: None,
        status: Status::InFlight,
        not_before: None,
    };
    let rejected = |status: u16| {
        SendError::Central(CentralError::Rejected {
            status,
            body: "no".into(),
        })
    };
    let s = settings(3);
    let judged = |op: &str, attempts: u32, e: SendError| judge(&item(op, attempts), e, &s, now);
    assert!(matches!(
        judged(OP_SET_STATE, 1, rejected(409)),
        Outcome::Conflict { .. }
    ));
    assert!(matches!(
        judged(OP_REPORT, 1, rejected(409)),
        Outcome::Failed { .. }
    ));
    assert!(matches!(
        judged(OP_SET_STATE, 1, rejected(400)),
        Outcome::Failed { .. }
    ));
    for status in [401, 403, 408, 429, 500, 503] {
        assert!(
            matches!(
                judged(OP_SET_STATE, 1, rejected(status)),
                Outcome::RetryAt { .. }
            ),
            "{status}"
        );
    }
    let garbage = || SendError::Central(CentralError::Garbage("<html>".into()));
    match judged(OP_REPORT, 2, garbage()) {
        Outcome::RetryAt { at, .. } => {
            assert!(at >= now + Duration::from_secs(1) && at <= now + Duration::from_secs(2))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        judged(OP_REPORT, 3, garbage()),
        Outcome::Failed { .. }
    ));
    assert!(matches!(
        judged(
            OP_REPORT,
            1,
            SendError::Central(CentralError::Unreachable("x".into()))
        ),
        Outcome::Unsent { .. }
    ));
    assert!(matches!(
        judged(OP_REPORT, 1, SendError::Malformed("x".into())),
        Outcome::Failed { .. }
    ));
    assert!(matches!(
        judged(OP_SET_STATE, 1, SendError::NotReady("x".into())),
        Outcome::RetryAt { .. }
    ));
}
