//! The bench's the queue part: enqueue and replay rates.

use super::*;

/// Acknowledged (durably committed) enqueues per second, one writer and
/// 16 concurrent ones through the group-commit writer, next to the raw
/// rate of single-item redb commits on the same disk.
pub(crate) fn queue_benchmark(dir: &Path) {
    use siteboot::store::queue::{Kind, Limits, NewItem, Origin, Queue, writer::QueueWriter};
    const ITEMS: usize = 2000;
    let item = |n: usize| NewItem {
        kind: Kind::StateUpdate,
        origin: Origin::Operator,
        node: format!("52:54:00:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff),
        payload: serde_json::json!({"state": "active", "n": n}),
        key: None,
        local_state: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let raw_dir = dir.join("queue-raw");
    let raw = {
        let store = Store::open(&raw_dir).expect("store");
        let started = Instant::now();
        for n in 0..ITEMS {
            let node = Node::new_local(
                Mac::new([0x52, 0x54, 0, 9, (n >> 8) as u8, n as u8]),
                NodeState::Active,
                time::OffsetDateTime::now_utc(),
            );
            store.put_node(&node).expect("commit");
        }
        ITEMS as f64 / started.elapsed().as_secs_f64()
    };
    let mut rates = Vec::new();
    for (case, writers) in [("single", 1usize), ("concurrent", 16)] {
        let queue = Queue::open(
            Store::open(&dir.join(format!("queue-{case}"))).expect("store"),
            Limits::unshared(1_000_000),
        )
        .expect("queue");
        let rate = runtime.block_on(async {
            let writer = QueueWriter::start(queue);
            let started = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..writers {
                let writer = writer.clone();
                tasks.push(tokio::spawn(async move {
                    for n in (w..ITEMS).step_by(writers) {
                        writer.enqueue(item(n)).await.expect("enqueue");
                    }
                }));
            }
            for task in tasks {
                task.await.expect("writer task");
            }
            ITEMS as f64 / started.elapsed().as_secs_f64()
        });
        rates.push(rate);
    }
    print_rates(
        &format!("Durable queue, {ITEMS} acknowledged enqueues (each committed before its answer)"),
        "items/s",
        &[
            ("raw redb, one item per durable commit", raw),
            ("queue, 1 client", rates[0]),
            ("queue, 16 concurrent clients (group commit)", rates[1]),
        ],
    );
    println!(
        "concurrent / single: {:.1}x (target >= 5x)\n",
        rates[1] / rates[0]
    );
    api_enqueue_benchmark(dir, &runtime, raw);
    replay_benchmark(dir, raw);
}

/// Acknowledged offline writes through the agent's API (`PATCH
/// /api/v1/nodes/{mac}/state` answered 202): each is the queue commit plus
/// the cache update. One client, then 16 concurrent keep-alive clients.
pub(crate) fn api_enqueue_benchmark(dir: &Path, runtime: &tokio::runtime::Runtime, raw: f64) {
    const WRITES: usize = 2000;
    let case_dir = dir.join("queue-api");
    std::fs::create_dir_all(&case_dir).expect("mkdir");
    let macs: Vec<Mac> = (0..256u32)
        .map(|i| Mac::new([0x52, 0x54, 0x02, 0, (i >> 8) as u8, i as u8]))
        .collect();
    populate(&case_dir, &macs, &[NodeState::Active]);
    // A controller URL nobody listens on: the agent is offline throughout.
    let dead = format!("http://127.0.0.1:{}", free_tcp_port());
    let env = [
        ("SITEBOOT_CENTRAL_URL", dead),
        ("SITEBOOT_SITE_ID", "bench".to_string()),
    ];
    let (_agent, http, _) = start_agent_with(&case_dir, &case_dir.join("boot-assets"), &env);
    let token = admin_token_in(&case_dir);
    let mut rates = Vec::new();
    for clients in [1usize, 16] {
        let macs = macs.clone();
        let token = token.clone();
        let rate = runtime.block_on(async move {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for c in 0..clients {
                let macs = macs.clone();
                let token = token.clone();
                tasks.push(tokio::spawn(async move {
                    let mut stream = tokio::net::TcpStream::connect(http).await.expect("connect");
                    stream.set_nodelay(true).expect("nodelay");
                    let mut buf = vec![0u8; 16 * 1024];
                    for n in (c..WRITES).step_by(clients) {
                        let body = format!("{{\"state\":\"installed\",\"comment\":\"b{n}\"}}");
                        let request = format!(
                            "PATCH /api/v1/nodes/{}/state HTTP/1.1\r\nHost: {http}\r\n\
                             Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\n\r\n{body}",
                            macs[n % macs.len()],
                            body.len()
                        );
                        stream.write_all(request.as_bytes()).await.expect("write");
                        read_status(&mut stream, &mut buf, "http/1.1 202").await;
                    }
                }));
            }
            for task in tasks {
                task.await.expect("client");
            }
            WRITES as f64 / started.elapsed().as_secs_f64()
        });
        rates.push(rate);
    }
    print_rates(
        &format!("Offline state changes through the API, {WRITES} acknowledged 202s"),
        "writes/s",
        &[
            ("raw redb, one item per durable commit", raw),
            ("PATCH …/state, 1 client", rates[0]),
            ("PATCH …/state, 16 concurrent clients", rates[1]),
        ],
    );
    println!("concurrent / single: {:.1}x\n", rates[1] / rates[0]);
}

/// 10,000 queued items (2,000 nodes × one state change and four boot
/// events) replayed to the fake controller once it comes back: time from
/// the controller's socket opening to an empty queue.
pub(crate) fn replay_benchmark(dir: &Path, raw: f64) {
    use siteboot::store::queue::{Kind, Limits, NewItem, Origin, Queue};
    const NODES_WITH_ITEMS: usize = 2000;
    const PER_NODE: usize = 5;
    let case_dir = dir.join("queue-replay");
    std::fs::create_dir_all(&case_dir).expect("mkdir");
    let macs: Vec<Mac> = (0..NODES_WITH_ITEMS as u32)
        .map(|i| Mac::new([0x52, 0x54, 0x03, 0, (i >> 8) as u8, i as u8]))
        .collect();
    let controller = controller::FakeController::start();
    // installing → installed is a transition the fake's state machine
    // takes (active → installed is refused, as a real controller does).
    for mac in &macs {
        controller.set_node(&mac.to_string(), "installing", None);
    }
    {
        let store = Store::open(&case_dir.join("data")).expect("store");
        let queue = Queue::open(store, Limits::unshared(1_000_000)).expect("queue");
        let mut items = Vec::new();
        for round in 0..PER_NODE {
            for mac in &macs {
                let node = mac.to_string();
                items.push(if round == 0 {
                    NewItem {
                        kind: Kind::StateUpdate,
                        origin: Origin::Operator,
                        payload: serde_json::json!({"op": "set_state", "node_id": format!("node-{node}"),
                            "change": {"state": "installed", "comment": "replay bench"}}),
                        node,
                        key: None,
                        local_state: None,
                    }
                } else {
                    NewItem {
                        kind: Kind::Event,
                        origin: Origin::Operator,
                        payload: serde_json::json!({"op": "report", "report": {
                            "mac_address": node, "event": "boot_started", "message": format!("boot {round}")}}),
                        node,
                        key: None,
                        local_state: None,
                    }
                });
            }
        }
        let results = queue
            .enqueue_many(items, time::OffsetDateTime::now_utc())
            .expect("enqueue");
        assert!(results.iter().all(Result::is_ok));
    }
    let total = NODES_WITH_ITEMS * PER_NODE;
    controller.down();
    let env = [
        ("SITEBOOT_CENTRAL_URL", controller.url()),
        (
            "SITEBOOT_CENTRAL_TOKEN_FILE",
            controller.token_file().display().to_string(),
        ),
        ("SITEBOOT_SITE_ID", "bench".to_string()),
        ("SITEBOOT_CENTRAL_CHECK_INTERVAL", "100ms".to_string()),
        ("SITEBOOT_CENTRAL_SYNC_INTERVAL", "1h".to_string()),
    ];
    let (_agent, http, _) = start_agent_with(&case_dir, &case_dir.join("boot-assets"), &env);
    let pending = || -> Option<u64> {
        let status = agent_status(http)?;
        Some(status["queue"]["pending"].as_u64()? + status["queue"]["in_flight"].as_u64()?)
    };
    assert_eq!(
        pending(),
        Some(total as u64),
        "items queued before the controller appears"
    );
    controller.up();
    let started = Instant::now();
    while pending() != Some(0) {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "replay stalled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    let delivered = controller.applied().len();
    println!("Replay of {total} queued items (batch_size 50) to a local fake controller");
    println!("{:<44} {:>12}", "", "items/s");
    println!(
        "{:<44} {:>12.0}",
        "raw redb, one item per durable commit", raw
    );
    println!(
        "{:<44} {:>12.0}   ({:.2} s for {total}, target < 10 s; {delivered} applied at the controller)\n",
        "replay, controller up → queue empty",
        total as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
}
