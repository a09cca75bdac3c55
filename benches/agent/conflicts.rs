//! The bench's the conflicts part: replay with conflicts, and listing many records.

use super::*;

/// Issue 11's figures: replay of 10,000 queued state changes (one per
/// node) to a §6 controller that checks versions, with no conflicts, then
/// with every tenth node changed at the controller meanwhile (a 409:
/// recorded and parked under `manual`; recorded and settled under `auto`,
/// where the operator's change yields); and `GET /api/v1/conflicts` at
/// 100,000 records.
pub(crate) fn conflicts_benchmark(dir: &Path) {
    const ITEMS: usize = 10_000;
    let runs = [
        ("no conflicts", 0, "manual"),
        ("10% conflicts, manual (recorded, parked)", 10, "manual"),
        ("10% conflicts, auto (recorded, settled)", 10, "auto"),
    ];
    // Interleaved repeats, the median of each: one run's figure moves by
    // a fifth from run to run on this machine.
    const REPEATS: usize = 3;
    let mut times = vec![Vec::new(); runs.len()];
    for repeat in 0..REPEATS {
        for (n, (_, every, policy)) in runs.iter().enumerate() {
            let case = dir.join(format!("conflicts-replay-{n}-{repeat}"));
            times[n].push(replay_with_conflicts(&case, ITEMS, *every, policy));
        }
    }
    let results: Vec<(&str, Duration)> = runs
        .iter()
        .zip(times)
        .map(|((name, _, _), mut took)| {
            took.sort();
            (*name, took[REPEATS / 2])
        })
        .collect();
    println!(
        "Replay of {ITEMS} queued state changes (batch_size 50) to a local §6 fake controller checking versions, median of {REPEATS} interleaved runs"
    );
    println!(
        "{:<44} {:>10} {:>12} {:>14}",
        "", "s", "items/s", "per item, ×"
    );
    let base = results[0].1.as_secs_f64() / ITEMS as f64;
    for (name, took) in &results {
        let per_item = took.as_secs_f64() / ITEMS as f64;
        println!(
            "{name:<44} {:>10.2} {:>12.0} {:>14.2}",
            took.as_secs_f64(),
            ITEMS as f64 / took.as_secs_f64(),
            per_item / base
        );
    }
    println!("(target: conflicts cost no more than 2× per item)\n");

    for (open, label) in [
        (1_000, "100,000 records, 1,000 open"),
        (100_000, "100,000 records, all open"),
    ] {
        conflicts_listing(
            &dir.join(format!("conflicts-list-{open}")),
            100_000,
            open,
            label,
        );
    }
}

/// One replay run: `items` nodes with one queued change each; every
/// `every`th node (0: none) changed at the controller meanwhile. Time from
/// the controller's socket opening to: nothing pending, and the expected
/// conflicts open (manual) or settled (auto).
pub(crate) fn replay_with_conflicts(
    dir: &Path,
    items: usize,
    every: usize,
    policy: &str,
) -> Duration {
    use siteboot::store::queue::{Kind, Limits, NewItem, Origin, Queue};
    std::fs::create_dir_all(dir).expect("mkdir");
    let macs: Vec<Mac> = fleet(0x04, items as u32);
    let controller = controller::FakeController::start();
    controller.check_versions();
    for mac in &macs {
        controller.set_node(&mac.to_string(), "active", None);
    }
    {
        let store = Store::open(&dir.join("data")).expect("store");
        let queue = Queue::open(store, Limits::unshared(1_000_000)).expect("queue");
        let items: Vec<NewItem> = macs
            .iter()
            .map(|mac| {
                let node = mac.to_string();
                NewItem {
                    kind: Kind::StateUpdate,
                    origin: Origin::Operator,
                    payload: serde_json::json!({"op": "set_state", "node_id": format!("node-{node}"),
                        "change": {"state": "installed", "comment": "conflict bench", "base_version": 1}}),
                    node,
                    key: None,
                    local_state: None,
                }
            })
            .collect();
        let results = queue
            .enqueue_many(items, time::OffsetDateTime::now_utc())
            .expect("enqueue");
        assert!(results.iter().all(Result::is_ok));
    }
    let mut conflicting = 0;
    if every > 0 {
        for mac in macs.iter().step_by(every) {
            controller.set_node(&mac.to_string(), "retired", None);
            conflicting += 1;
        }
    }
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
        ("SITEBOOT_CONFLICTS_STATE_MISMATCH", policy.to_string()),
    ];
    let (_agent, http, _) = start_agent_with(dir, &dir.join("boot-assets"), &env);
    let status = || agent_status(http);
    let expected_open = if policy == "manual" { conflicting } else { 0 };
    controller.up();
    let started = Instant::now();
    loop {
        let done = status().is_some_and(|s| {
            s["queue"]["pending"] == 0
                && s["queue"]["in_flight"] == 0
                && s["conflicts_pending"] == expected_open
        });
        if done {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "replay stalled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    let applied = controller
        .applied()
        .iter()
        .filter(|w| w.op == "set_state")
        .count();
    assert_eq!(
        applied,
        items - conflicting,
        "every change without a conflict applied, no other"
    );
    took
}

/// `GET /api/v1/conflicts` latency with `records` conflict records in the
/// store, `open` of them open: 300 requests on one keep-alive connection.
pub(crate) fn conflicts_listing(dir: &Path, records: u32, open: u32, label: &str) {
    use siteboot::store::conflicts::{self, ChangeOrigin, Found, Kind, LocalSide};
    std::fs::create_dir_all(dir).expect("mkdir");
    {
        let store = Store::open(&dir.join("data")).expect("store");
        let now = time::OffsetDateTime::now_utc();
        for chunk in 0..records / 10_000 {
            let txn = store.begin_write().expect("txn");
            for i in chunk * 10_000..(chunk + 1) * 10_000 {
                let mac = Mac::new([0x52, 0x54, 0x05, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
                let found = Found {
                    kind: Kind::StateMismatch,
                    mac: mac.to_string(),
                    node_id: format!("node-{mac}"),
                    local: LocalSide {
                        state: Some(NodeState::Reprovision),
                        origin: ChangeOrigin::Operator,
                        changed_at: now,
                        queue_id: u64::from(i) + 1,
                    },
                    central: None,
                    error: "409".into(),
                };
                let record = conflicts::open(&txn, found, now)
                    .expect("open")
                    .expect("one per MAC");
                if i >= open {
                    conflicts::close(&txn, record.id, "keep_central", "policy", None, now)
                        .expect("close");
                }
            }
            txn.commit().expect("commit");
        }
    }
    let (_agent, http, _) = start_agent_with(dir, &dir.join("boot-assets"), &[]);
    let token = admin_token_in(dir);
    println!("GET /api/v1/conflicts, {label} (300 requests, one keep-alive connection)");
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "", "p50 ms", "p99 ms", "max ms"
    );
    for path in [
        "/api/v1/conflicts?status=open&limit=100",
        "/api/v1/conflicts?status=resolved&limit=100",
        "/api/v1/conflicts?limit=100",
    ] {
        let mut times = timed_gets(http, path, &token, 300);
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:<44} {:>10.2} {:>10.2} {:>10.2}",
            path.trim_start_matches("/api/v1/conflicts"),
            ms(times[times.len() / 2]),
            ms(times[times.len() * 99 / 100]),
            ms(times[times.len() - 1])
        );
    }
    println!("(target: status=open&limit=100 under 10 ms)\n");
}

/// `n` GETs of `path` on one keep-alive connection, each timed from the
/// request's write to its whole answer read (checked to be a 200).
pub(crate) fn timed_gets(http: SocketAddr, path: &str, token: &str, n: usize) -> Vec<Duration> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(http).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {token}\r\n\r\n");
    let mut times = Vec::with_capacity(n);
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..n {
        let started = Instant::now();
        stream.write_all(request.as_bytes()).expect("write");
        let mut filled = 0;
        let (head_end, length) = loop {
            let got = stream.read(&mut buf[filled..]).expect("read");
            assert!(got > 0, "the agent closed the connection");
            filled += got;
            if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "{head}");
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .expect("content-length");
                break (end + 4, length);
            }
        };
        while filled < head_end + length {
            let got = stream.read(&mut buf[filled..]).expect("read");
            assert!(got > 0, "the agent closed the connection");
            filled += got;
        }
        times.push(started.elapsed());
    }
    times
}
