//! Offline operation against a fake controller over real HTTP (DESIGN §4,
//! §5, §7): writes queued while the controller is gone and answered 202,
//! the cache taking them at once, replay with failures (500, 400, slow),
//! the registration remap, the queue admin API, a cold start with the
//! controller down, and acknowledged writes surviving SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::controller::{Dialect, FakeController};
use common::{AgentBuilder, admin_token, curl, get_json, mode, wait_until};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

fn status(agent: &common::Agent) -> Value {
    get_json(&agent.url("/api/v1/status"))
}

/// A minimal HTTP/1.1 client (one request per connection) so that the
/// crash test can write as fast as the agent answers; an I/O error means
/// the write was not acknowledged.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn call(agent: &common::Agent, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let token = admin_token(agent);
    let (status, text) =
        http(agent.http, method, path, Some(&token), body.as_ref()).expect("agent answers");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

fn set_state(agent: &common::Agent, mac: &str, state: &str, comment: &str) -> (u16, Value) {
    call(
        agent,
        "PATCH",
        &format!("/api/v1/nodes/{mac}/state"),
        Some(json!({"state": state, "comment": comment})),
    )
}

fn boot(agent: &common::Agent, mac: &str) -> String {
    let (status, _, body) = curl(&[&agent.url(&format!("/api/v1/boot?mac={mac}&arch=x86_64"))]);
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body).into_owned()
}

/// Every item in the agent's queue (all pages, by cursor: items that
/// replay removes meanwhile do not make the listing skip others).
fn queue_items(agent: &common::Agent) -> Vec<Value> {
    let mut items = Vec::new();
    let mut path = "/api/v1/queue?limit=1000".to_string();
    loop {
        let (status, page) = call(agent, "GET", &path, None);
        assert_eq!(status, 200, "{page}");
        items.extend(page["data"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/queue?limit=1000&cursor={next}"),
            None => return items,
        }
    }
}

fn queue_stats(agent: &common::Agent) -> Value {
    let (status, stats) = call(agent, "GET", "/api/v1/queue/stats", None);
    assert_eq!(status, 200, "{stats}");
    stats
}

fn drained(agent: &common::Agent) -> bool {
    let stats = queue_stats(agent);
    stats["pending"] == 0 && stats["in_flight"] == 0
}

/// An agent linked to `controller`, online with its nodes synced.
fn synced_agent(controller: &FakeController, macs: &[&str]) -> common::Agent {
    synced_agent_with(controller, macs, "")
}

/// [`synced_agent`] with more configuration.
fn synced_agent_with(controller: &FakeController, macs: &[&str], extra: &str) -> common::Agent {
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&common::quick_link_config(controller))
        .config(extra)
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    wait_until(LONG, "nodes synced", || {
        macs.iter().all(|mac| {
            let (status, _) = call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None);
            status == 200
        })
    });
    agent
}

fn offline_writes_are_queued_then_replayed_through_500_400_slow_and_a_remap(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    let (a, b, c) = (
        "52:54:00:00:40:01",
        "52:54:00:00:40:02",
        "52:54:00:00:40:03",
    );
    // Every change below is one PureBoot's state machine allows.
    controller.set_node(a, "installed", None);
    controller.set_node(b, "active", None);
    let agent = synced_agent(&controller, &[a, b]);

    // Online, a state change goes straight to the controller.
    let (code, answer) = set_state(&agent, a, "active", "online change");
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["status"], "sent");
    assert_eq!(controller.node(a).expect("a")["state"], "active");

    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");

    // An offline answer is kept for its banner's second: booting twice
    // before the change must not let the change wait for that second.
    for _ in 0..2 {
        let script = boot(&agent, a);
        assert!(
            script.contains(&format!("mac={a} state=active action=local source=offline")),
            "{script}"
        );
    }
    // Offline: 202 queued, and the cache shows the change at once.
    let (code, answer) = set_state(&agent, a, "reprovision", "offline a");
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["status"], "queued");
    assert_eq!(answer["offline"], true);
    assert!(answer["queue_id"].as_u64().is_some(), "{answer}");
    let (_, node) = call(&agent, "GET", &format!("/api/v1/nodes/{a}"), None);
    assert_eq!(node["data"]["state"], "reprovision");
    // ... and the next (offline) boot sees it: reprovision offline is a
    // local boot, never a reinstall from stale state.
    let script = boot(&agent, a);
    assert!(
        script.contains(&format!(
            "mac={a} state=reprovision action=local source=offline"
        )),
        "{script}"
    );
    let (code, _) = set_state(&agent, b, "reprovision", "offline b");
    assert_eq!(code, 202);
    // An unknown MAC offline: cached under a local id, registration queued.
    let script = boot(&agent, c);
    assert!(
        script.contains(&format!(
            "mac={c} state=discovered action=local source=offline"
        )),
        "{script}"
    );
    let (_, node_c) = call(&agent, "GET", &format!("/api/v1/nodes/{c}"), None);
    let local_id = node_c["data"]["id"].as_str().expect("id").to_string();
    assert!(local_id.starts_with("local-"), "{node_c}");
    let (code, answer) = set_state(&agent, c, "pending", "offline c");
    assert_eq!(code, 202, "{answer}");
    // An installer report, offline.
    let (code, answer) = call(
        &agent,
        "POST",
        "/api/v1/report",
        Some(json!({"mac_address": b, "event": "install_progress", "message": "50%"})),
    );
    assert_eq!(code, 202, "{answer}");

    let items = queue_items(&agent);
    let kinds: Vec<(&str, &str)> = items
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap_or(""),
                i["node"].as_str().unwrap_or(""),
            )
        })
        .collect();
    // Registration first, then state updates in order, then events.
    assert_eq!(kinds[0], ("registration", c), "{kinds:?}");
    assert_eq!(
        &kinds[1..4],
        &[
            ("state_update", a),
            ("state_update", b),
            ("state_update", c)
        ]
    );
    assert!(kinds[4..].iter().all(|(k, _)| *k == "event"), "{kinds:?}");
    assert_eq!(status(&agent)["queue"]["pending"], items.len());

    // The controller comes back: a's change fails twice with 500, b's is
    // refused with 400, c's registration is slow.
    controller.inject(
        "PATCH",
        &format!("node-{a}/state"),
        None,
        500,
        Duration::ZERO,
        2,
    );
    controller.inject(
        "PATCH",
        &format!("node-{b}/state"),
        None,
        400,
        Duration::ZERO,
        1,
    );
    controller.inject(
        "POST",
        "/api/v1/nodes",
        None,
        0,
        Duration::from_millis(800),
        1,
    );
    controller.up();
    wait_until(LONG, "queue replayed", || drained(&agent));

    assert_eq!(controller.node(a).expect("a")["state"], "reprovision");
    assert_eq!(
        controller.node(b).expect("b")["state"],
        "active",
        "400 left b alone"
    );
    let at_c = controller.node(c).expect("c registered");
    assert_eq!(
        at_c["state"], "pending",
        "c's change followed its registration"
    );
    // The change for c went to the controller's id, not the local one.
    let id_at_c = at_c["id"].as_str().expect("id").to_string();
    let c_patches = controller.calls_to("PATCH", &format!("/api/v1/nodes/{id_at_c}/state"));
    assert_eq!(c_patches.len(), 1);
    assert!(
        controller
            .calls_to("PATCH", &format!("/api/v1/nodes/{local_id}"))
            .is_empty()
    );
    let (_, node_c) = call(&agent, "GET", &format!("/api/v1/nodes/{c}"), None);
    assert_eq!(node_c["data"]["id"], id_at_c, "cache remapped");

    // Exactly once per idempotency key, the retried 500s included.
    let applied = controller.applied();
    let a_changes: Vec<_> = applied
        .iter()
        .filter(|w| w.op == "set_state" && w.mac == a && w.body["comment"] == "offline a")
        .collect();
    assert_eq!(a_changes.len(), 1);
    let a_attempts = controller.calls_to("PATCH", &format!("/api/v1/nodes/node-{a}/state"));
    let keys: BTreeSet<_> = a_attempts
        .iter()
        .filter(|call| call.body["comment"] == "offline a")
        .map(|call| call.idempotency_key.clone().expect("key sent"))
        .collect();
    assert_eq!(keys.len(), 1, "every attempt carries the same key");
    // Boot events arrived for the offline boots.
    let boot_events: BTreeSet<_> = applied
        .iter()
        .filter(|w| w.op == "report" && w.body["event"] == "boot_started")
        .map(|w| w.mac.clone())
        .collect();
    assert!(
        boot_events.contains(a) && boot_events.contains(c),
        "{boot_events:?}"
    );

    // b's item failed with the controller's answer kept.
    let stats = queue_stats(&agent);
    assert_eq!(stats["failed"], 1, "{stats}");
    let (_, failed) = call(&agent, "GET", "/api/v1/queue?status=failed", None);
    let item = &failed["data"][0];
    assert_eq!(item["node"], b);
    assert!(
        item["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("injected 400"),
        "{item}"
    );
    // The heartbeat carries the counts.
    wait_until(LONG, "heartbeat with the failed item", || {
        controller
            .calls_to("POST", "/api/v1/agents/heartbeat")
            .last()
            .is_some_and(|hb| {
                hb.body["failed_sync_items"] == 1 && hb.body["pending_sync_items"] == 0
            })
    });
    // An operator retries it: now it goes through.
    let id = item["id"].as_u64().expect("id");
    let (code, _) = call(&agent, "POST", &format!("/api/v1/queue/{id}/retry"), None);
    assert_eq!(code, 200);
    wait_until(LONG, "retried item delivered", || {
        queue_stats(&agent)["total"] == 0
    });
    assert_eq!(controller.node(b).expect("b")["state"], "reprovision");
    assert_eq!(status(&agent)["queue"]["failed"], 0);
}

fn queue_admin_api_refuses_bad_input_and_needs_the_token(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    // About the queue, not PureBoot's state machine: the same state is
    // written over and over.
    controller.allow_any_transition();
    let mac = "52:54:00:00:41:01";
    controller.set_node(mac, "active", None);
    let agent = synced_agent(&controller, &[mac]);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    let (code, answer) = set_state(&agent, mac, "installed", "x");
    assert_eq!(code, 202, "{answer}");

    for (method, path) in [
        ("GET", "/api/v1/queue"),
        ("GET", "/api/v1/queue/stats"),
        ("POST", "/api/v1/queue/1/retry"),
        ("DELETE", "/api/v1/queue/1"),
        ("POST", "/api/v1/queue/clear-failed"),
        ("PATCH", "/api/v1/nodes/52:54:00:00:41:01/state"),
    ] {
        let (code, _) = http(
            agent.http,
            method,
            path,
            None,
            Some(&json!({"state": "active"})),
        )
        .expect("answer");
        assert_eq!(code, 401, "{method} {path} without a token");
    }
    let bad = [
        ("GET", "/api/v1/queue?status=lost", None, 400),
        ("GET", "/api/v1/queue?limit=0", None, 400),
        ("GET", "/api/v1/queue?offset=-1", None, 400),
        ("POST", "/api/v1/queue/abc/retry", None, 400),
        ("POST", "/api/v1/queue/999999/retry", None, 404),
        ("DELETE", "/api/v1/queue/999999", None, 404),
        (
            "PATCH",
            "/api/v1/nodes/not-a-mac/state",
            Some(json!({"state": "active"})),
            400,
        ),
        (
            "PATCH",
            "/api/v1/nodes/52:54:00:00:41:99/state",
            Some(json!({"state": "active"})),
            404,
        ),
        (
            "PATCH",
            "/api/v1/nodes/52:54:00:00:41:01/state",
            Some(json!({"state": "exploded"})),
            400,
        ),
        (
            "PATCH",
            "/api/v1/nodes/52:54:00:00:41:01/state",
            Some(json!({"stat": "active"})),
            400,
        ),
        (
            "PATCH",
            "/api/v1/nodes/52:54:00:00:41:01/state",
            Some(json!("not an object")),
            400,
        ),
    ];
    for (method, path, body, expected) in bad {
        let (code, answer) = call(&agent, method, path, body);
        assert_eq!(code, expected, "{method} {path}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    // Reports: bad MAC, unknown event, not JSON, too large. Nothing queued.
    let before = queue_stats(&agent)["total"].clone();
    for body in [
        json!({"mac_address": "zz", "event": "install_complete"}),
        json!({"mac_address": mac, "event": "exploded"}),
        json!({"mac_address": mac}),
    ] {
        let (code, answer) =
            http(agent.http, "POST", "/api/v1/report", None, Some(&body)).expect("answer");
        assert_eq!(code, 400, "{body}: {answer}");
    }
    let huge =
        json!({"mac_address": mac, "event": "install_progress", "message": "x".repeat(100_000)});
    let (code, _) = http(agent.http, "POST", "/api/v1/report", None, Some(&huge)).expect("answer");
    assert_eq!(code, 413);
    assert_eq!(queue_stats(&agent)["total"], before);

    // Paging and the status filter.
    for n in 0..5 {
        set_state(&agent, mac, "active", &format!("page {n}"));
    }
    let (_, page) = call(
        &agent,
        "GET",
        "/api/v1/queue?status=pending&offset=2&limit=2",
        None,
    );
    assert_eq!(page["data"].as_array().map(Vec::len), Some(2), "{page}");
    assert_eq!(page["total"], 6);
    assert_eq!(page["data"][0]["payload"]["change"]["comment"], "page 1");
    // Delete one.
    let id = page["data"][0]["id"].as_u64().expect("id");
    let (code, _) = call(&agent, "DELETE", &format!("/api/v1/queue/{id}"), None);
    assert_eq!(code, 200);
    assert_eq!(queue_stats(&agent)["total"], 5);
    let (code, cleared) = call(&agent, "POST", "/api/v1/queue/clear-failed", None);
    assert_eq!((code, cleared["cleared"].as_u64()), (200, Some(0)));
}

fn cold_start_with_the_controller_down_queues_and_replays_on_arrival(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    controller.down();
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&common::quick_link_config(&controller))
        .config("[offline]\ndefault_action = \"discovery\"\n")
        .start();
    let mac = "52:54:00:00:42:01";
    assert_eq!(mode(&agent), "offline");
    let script = boot(&agent, mac);
    assert!(
        script.contains(&format!(
            "mac={mac} state=discovered action=discovery source=offline"
        )),
        "{script}"
    );
    assert!(
        script.contains("*** siteboot OFFLINE: central unreachable since "),
        "{script}"
    );
    wait_until(LONG, "registration and boot event queued", || {
        queue_stats(&agent)["pending"] == 2
    });
    assert_eq!(status(&agent)["queue"]["pending"], 2);
    controller.up();
    wait_until(LONG, "online", || mode(&agent) == "online");
    wait_until(LONG, "queue replayed", || queue_stats(&agent)["total"] == 0);
    assert!(controller.node(mac).is_some(), "registration arrived");
    let applied = controller.applied();
    assert!(
        applied.iter().any(|w| w.op == "report"
            && w.mac == mac
            && w.body["event_metadata"]["source"] == "offline"),
        "boot event arrived: {applied:?}"
    );
    let (_, node) = call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None);
    assert_eq!(
        node["data"]["id"],
        controller.node(mac).expect("at the controller")["id"]
    );
}

/// A tiny deterministic generator for kill moments (the seed is printed).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn acknowledged_writes_survive_sigkill_and_reach_the_controller_once(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    // This is about durability, not PureBoot's state machine: the writers
    // set the same states over and over.
    controller.allow_any_transition();
    // A §6 controller checks every change's base version: the writers'
    // changes to one node, queued one behind the other, must each build
    // on the one before (no 409 against the agent's own changes).
    controller.check_versions();
    // A §6 controller honours idempotency keys, so every write lands
    // exactly once. PureBoot's central ignores them: a write whose answer
    // a SIGKILL cut off is sent again and applied again, so there the
    // promise is "at least once" (the agent cannot do better alone).
    let most = match dialect {
        Dialect::Design => 1,
        Dialect::PureBoot => usize::MAX,
    };
    let macs: Vec<String> = (0..8).map(|n| format!("52:54:00:00:43:{n:02x}")).collect();
    for mac in &macs {
        controller.set_node(mac, "active", None);
    }
    let mac_refs: Vec<&str> = macs.iter().map(String::as_str).collect();
    let mut agent = synced_agent(&controller, &mac_refs);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    println!("kill-moment seed {seed}");
    let mut random = XorShift(seed);
    // comment → the agent's answer (200 sent, or 202 with a queue id).
    let mut acknowledged: BTreeMap<String, Value> = BTreeMap::new();
    for round in 0..20 {
        // Even rounds: controller gone, writes queue up. Odd rounds: it is
        // back, so replay runs while new writes arrive and the kill lands.
        if round % 2 == 0 {
            controller.down();
        } else {
            controller.up_if_down();
        }
        let (writer, acks) = spawn_writer(&agent, &macs, format!("r{round}"));
        // The kill lands at a random moment once writes are flowing (how
        // soon the first is acknowledged depends on the machine's disk).
        wait_until(LONG, "a first acknowledged write", || {
            acks.load(std::sync::atomic::Ordering::SeqCst) > 0
        });
        let delay = random.next() % 600;
        std::thread::sleep(Duration::from_millis(delay));
        agent = agent.kill_and_restart();
        let acked = writer.join().expect("writer thread");
        assert!(
            !acked.is_empty(),
            "round {round}: no write was acknowledged"
        );
        for (comment, code, answer) in acked {
            if code == 202 {
                assert!(answer["queue_id"].as_u64().is_some(), "{answer}");
            }
            acknowledged.insert(comment, answer);
        }
        // Queue first, then the controller: an item that leaves the queue
        // in between was delivered before it was acked.
        let all_items = queue_items(&agent);
        let queued: BTreeSet<String> = all_items
            .iter()
            .filter_map(|i| {
                i["payload"]["change"]["comment"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        let delivered = delivered_counts(&controller);
        for comment in acknowledged.keys() {
            let at_controller = delivered.get(comment).copied().unwrap_or(0);
            assert!(
                queued.contains(comment) || (1..=most).contains(&at_controller),
                "round {round}: acknowledged write {comment} is neither queued nor delivered: \
                 answer {}, {} items queued",
                acknowledged[comment],
                all_items.len()
            );
            assert!(
                at_controller <= most,
                "{comment} applied {at_controller} times"
            );
        }
    }
    controller.up_if_down();
    wait_until(LONG, "online", || mode(&agent) == "online");
    let drained_in_time = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        queue_stats(&agent)["total"] == 0
    });
    assert!(
        drained_in_time,
        "queue not drained: {:?}",
        queue_items(&agent)
            .iter()
            .map(|i| format!(
                "{} {} {} {}",
                i["id"], i["status"], i["node"], i["last_error"]
            ))
            .take(5)
            .collect::<Vec<_>>()
    );
    let delivered = delivered_counts(&controller);
    for comment in acknowledged.keys() {
        let times = delivered.get(comment).copied().unwrap_or(0);
        assert!(
            (1..=most).contains(&times),
            "{comment} reached the controller {times} times"
        );
    }
    let repeated = acknowledged
        .keys()
        .filter(|c| delivered.get(*c).copied().unwrap_or(0) > 1)
        .count();
    println!(
        "{} acknowledged writes over 20 SIGKILL rounds, all delivered ({repeated} more than once; {dialect:?})",
        acknowledged.len()
    );
}

/// A writer thread; joined, it gives each acknowledged write as (comment,
/// status, answer).
type Writer = std::thread::JoinHandle<Vec<(String, u16, Value)>>;

/// Writes state changes to `macs` in turn, back to back, until the agent
/// stops answering; returns each acknowledged write as (comment, status,
/// answer), and a live count of the acknowledged ones. Comments are
/// `<prefix>-w<n>`.
fn spawn_writer(
    agent: &common::Agent,
    macs: &[String],
    prefix: String,
) -> (Writer, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let token = admin_token(agent);
    let addr = agent.http;
    let macs = macs.to_vec();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    let handle = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for n in 0.. {
            let mac = &macs[n % macs.len()];
            let comment = format!("{prefix}-w{n}");
            let state = if n % 2 == 0 { "installed" } else { "active" };
            let body = json!({"state": state, "comment": comment});
            match http(
                addr,
                "PATCH",
                &format!("/api/v1/nodes/{mac}/state"),
                Some(&token),
                Some(&body),
            ) {
                Ok((code @ (200 | 202), text)) => {
                    let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    acked.push((comment, code, answer));
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Ok((code, text)) => panic!("write refused {code}: {text}"),
                Err(_) => return acked, // the agent has stopped listening
            }
        }
        acked
    });
    (handle, count)
}

/// comment → how many times the controller applied a write carrying it.
fn delivered_counts(controller: &FakeController) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for write in controller.applied() {
        if write.op == "set_state"
            && let Some(comment) = write.body["comment"].as_str()
        {
            *counts.entry(comment.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

fn cli_json(out: std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "siteboot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

fn queue_cli_works_through_the_running_agent_and_directly_when_stopped(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    // About the queue, not PureBoot's state machine: the same state is
    // written over and over.
    controller.allow_any_transition();
    let mac = "52:54:00:00:44:01";
    controller.set_node(mac, "active", None);
    let agent = synced_agent(&controller, &[mac]);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    for n in 0..3 {
        let (code, _) = set_state(&agent, mac, "installed", &format!("cli {n}"));
        assert_eq!(code, 202);
    }
    // Through the agent (it holds the database).
    let url = agent.url("");
    let stats = cli_json(agent.cli(&["queue", "stats", "--url", &url]));
    assert_eq!(stats["pending"], 3, "{stats}");
    let listed = cli_json(agent.cli(&["queue", "list", "--status", "pending", "--url", &url]));
    let first = listed["data"][0]["id"].as_u64().expect("id");
    assert_eq!(listed["data"][0]["payload"]["change"]["comment"], "cli 0");
    let deleted = cli_json(agent.cli(&["queue", "delete", &first.to_string(), "--url", &url]));
    assert_eq!(deleted["deleted"], first);
    // One admin service: the command line answers what the API answers,
    // through the agent and on the stopped database alike.
    let by_cli = cli_json(agent.cli(&["queue", "list", "--url", &url]));
    let (code, by_api) = call(&agent, "GET", "/api/v1/queue?offset=0&limit=100", None);
    assert_eq!(code, 200, "{by_api}");
    assert_eq!(by_cli, by_api);
    let ids = |listing: &Value| -> Vec<Value> {
        let items = listing["data"].as_array().expect("data").iter();
        items.map(|i| i["id"].clone()).collect()
    };
    let out = agent.cli(&["queue", "retry", "999999", "--url", &url]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = agent.cli(&["queue", "list", "--status", "lost"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown queue status"));

    // Stopped: the same commands open the database directly.
    let stopped = agent.stop();
    let stats = cli_json(stopped.cli(&["queue", "stats"]));
    assert_eq!(stats["pending"], 2, "{stats}");
    let on_disk = cli_json(stopped.cli(&["queue", "list"]));
    assert_eq!(ids(&on_disk), ids(&by_api));
    assert_eq!(on_disk["total"], by_api["total"], "{on_disk}");
    let cleared = cli_json(stopped.cli(&["queue", "clear-failed"]));
    assert_eq!(cleared["cleared"], 0);
    let out = stopped.cli(&["queue", "delete", "999999"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no queue item 999999"));
    // Restarted with the controller back, the two items are delivered.
    controller.up();
    let agent = stopped.start();
    wait_until(LONG, "queue drained", || queue_stats(&agent)["total"] == 0);
    let delivered = delivered_counts(&controller);
    assert_eq!(delivered.get("cli 0"), None, "deleted item never sent");
    assert_eq!(delivered.get("cli 1"), Some(&1));
    assert_eq!(delivered.get("cli 2"), Some(&1));
}

fn last_known_replays_only_what_is_safe_offline(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    let mut local_workflows = String::new();
    for (id, safe) in [("debian", false), ("rescue", true)] {
        local_workflows.push_str(&controller.offer_workflow(json!({
            "id": id, "name": id, "method": "kernel", "kernel": format!("{id}/vmlinuz"),
            "initrd": [], "cmdline": "console=ttyS0", "offline_safe": safe
        })));
    }
    let (looked_at, destructive, safe, never) = (
        "52:54:00:00:45:01",
        "52:54:00:00:45:02",
        "52:54:00:00:45:03",
        "52:54:00:00:45:04",
    );
    // The offline_safe workflow's kernel is prefetched into the content
    // cache: an offline install whose files are not cached is not started
    // (DESIGN §12).
    controller.add_file("rescue/vmlinuz", b"rescue kernel");
    controller.set_node(looked_at, "discovered", None);
    controller.set_node(destructive, "pending", Some("debian"));
    controller.set_node(safe, "pending", Some("rescue"));
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .env("SITEBOOT_OFFLINE_DEFAULT_ACTION", "last_known")
        .config(&common::quick_link_config(&controller))
        .config(&local_workflows)
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    let online: Vec<String> = [looked_at, destructive, safe]
        .iter()
        .map(|mac| boot(&agent, mac))
        .collect();
    assert!(
        online[0].contains("action=discovery source=live"),
        "{}",
        online[0]
    );
    assert!(
        online[1].contains("action=install source=live"),
        "{}",
        online[1]
    );
    assert!(
        online[2].contains("action=install source=live"),
        "{}",
        online[2]
    );
    // The controller puts the two back to discovered; the agent syncs.
    controller.set_node(destructive, "discovered", None);
    controller.set_node(safe, "discovered", None);
    let (code, _) = call(&agent, "POST", "/api/v1/sync?full=true", None);
    assert_eq!(code, 200);
    // The recorder writes in batches: wait until all three are on disk,
    // then go offline.
    wait_until(LONG, "the online scripts recorded", || {
        [
            (looked_at, "discovery"),
            (destructive, "install"),
            (safe, "install"),
        ]
        .iter()
        .all(|(mac, action)| {
            let (_, node) = call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None);
            node["last_served"]["action"] == *action
        })
    });
    wait_until(LONG, "the offline_safe kernel cached", || {
        let (_, cache) = call(&agent, "GET", "/api/v1/cache", None);
        cache.to_string().contains("rescue/vmlinuz")
    });
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");

    let replay = boot(&agent, looked_at);
    assert!(
        replay.contains(&format!(
            "mac={looked_at} state=discovered action=last_known source=offline"
        )),
        "{replay}"
    );
    assert!(replay.contains("*** siteboot OFFLINE: central unreachable since "));
    assert!(
        replay.contains("siteboot: replaying the script served at "),
        "{replay}"
    );
    // A destructive script whose workflow is not offline_safe: local boot.
    let refused = boot(&agent, destructive);
    assert!(
        refused.contains(&format!(
            "mac={destructive} state=discovered action=local source=offline"
        )),
        "{refused}"
    );
    assert!(!refused.contains("debian/vmlinuz"), "{refused}");
    // An offline_safe workflow's install is replayed.
    let replayed = boot(&agent, safe);
    assert!(
        replayed.contains("action=last_known source=offline"),
        "{replayed}"
    );
    assert!(replayed.contains("rescue/vmlinuz"), "{replayed}");
    // A MAC never served: local boot.
    let unseen = boot(&agent, never);
    assert!(
        unseen.contains(&format!(
            "mac={never} state=discovered action=local source=offline"
        )),
        "{unseen}"
    );
}

fn offline_templates_are_operator_overridable(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    controller.down();
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&common::quick_link_config(&controller))
        .template(
            "_offline_banner.ipxe.j2",
            "echo *** siteboot OFFLINE: central unreachable since {{ offline.since }} ***\n\
             echo call the NOC: site {{ site_id }} has been cut off for {{ offline.duration }}\n",
        )
        .start();
    let script = boot(&agent, "52:54:00:00:46:01");
    assert!(script.contains("source=offline"), "{script}");
    assert!(
        script.contains("echo call the NOC: site fra1 has been cut off for "),
        "{script}"
    );
}

fn a_repeated_boot_outcome_is_recorded_once(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    let mac = "52:54:00:00:47:01";
    controller.set_node(mac, "active", None);
    let agent = synced_agent(&controller, &[mac]);
    let boot_events = || {
        controller
            .applied()
            .into_iter()
            .filter(|w| w.op == "report" && w.mac == mac && w.body["event"] == "boot_started")
            .map(|w| {
                w.body["event_metadata"]["source"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    for _ in 0..3 {
        assert!(boot(&agent, mac).contains("action=local source=live"));
    }
    wait_until(LONG, "the boot event", || !boot_events().is_empty());
    // A different outcome (offline now) is new information.
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    for _ in 0..3 {
        assert!(boot(&agent, mac).contains("action=local source=offline"));
    }
    controller.up();
    wait_until(LONG, "replayed", || {
        mode(&agent) == "online" && queue_stats(&agent)["total"] == 0
    });
    assert_eq!(boot_events(), ["live", "offline"]);
}

fn sigterm_during_writes_and_replay_exits_cleanly_and_loses_nothing(dialect: Dialect) {
    use common::controller::Mode;
    let controller = FakeController::start_as(dialect);
    // About the queue, not PureBoot's state machine: the same state is
    // written over and over.
    controller.allow_any_transition();
    controller.check_versions();
    let macs: Vec<String> = (0..8).map(|n| format!("52:54:00:00:46:{n:02x}")).collect();
    for mac in &macs {
        controller.set_node(mac, "active", None);
    }
    let mac_refs: Vec<&str> = macs.iter().map(String::as_str).collect();
    let agent = synced_agent(&controller, &mac_refs);
    // Writes pile up while the controller is gone ...
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    let mut acknowledged = BTreeSet::new();
    for (n, mac) in macs.iter().cycle().take(40).enumerate() {
        let comment = format!("queued-{n}");
        let (code, answer) = set_state(&agent, mac, "installed", &comment);
        assert_eq!(code, 202, "{answer}");
        acknowledged.insert(comment);
    }
    // ... then it comes back slowly, so replay has items in flight, and a
    // writer keeps writing while SIGTERM arrives.
    controller.set_mode(Mode::Slow(Duration::from_millis(150)));
    controller.up();
    let (writer, _) = spawn_writer(&agent, &macs, "live".into());
    wait_until(LONG, "replay under way", || {
        !delivered_counts(&controller).is_empty()
    });
    let (exit, stopped) = agent.terminate();
    assert!(exit.success(), "SIGTERM must end the agent with 0: {exit}");
    stopped.assert_every_task_joined();
    acknowledged.extend(
        writer
            .join()
            .expect("writer thread")
            .into_iter()
            .map(|(comment, _, _)| comment),
    );

    // Nothing was left in flight: the next start has nothing to recover.
    controller.set_mode(Mode::Healthy);
    let agent = stopped.start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    let log = agent.log_lines().join("\n");
    assert!(
        !log.contains("in flight at the last stop"),
        "items were left in flight at SIGTERM:\n{log}"
    );
    wait_until(LONG, "queue drained", || drained(&agent));
    let delivered = delivered_counts(&controller);
    for comment in &acknowledged {
        assert_eq!(
            delivered.get(comment).copied(),
            Some(1),
            "acknowledged write {comment} must reach the controller exactly once"
        );
    }
}

fn a_queued_installer_report_moves_the_cache_only_along_the_installers_path(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    let (active, pending) = ("52:54:00:00:47:01", "52:54:00:00:47:02");
    controller.set_node(active, "active", None);
    controller.set_node(pending, "pending", None);
    let agent = synced_agent(&controller, &[active, pending]);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    let report = |mac: &str, event: &str| {
        let body = json!({"mac_address": mac, "event": event});
        http(agent.http, "POST", "/api/v1/report", None, Some(&body)).expect("answer")
    };
    let cached_state = |mac: &str| {
        let (_, node) = call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None);
        node["data"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // Queued for the controller to judge, but the cache (and so the next
    // boot) does not take a state the installer could not have caused.
    let (code, text) = report(active, "install_failed");
    assert_eq!(code, 202, "{text}");
    assert_eq!(cached_state(active), "active");
    let (code, text) = report(pending, "install_started");
    assert_eq!(code, 202, "{text}");
    assert_eq!(cached_state(pending), "installing");
}

fn a_hanging_controller_does_not_hold_an_operators_write(dialect: Dialect) {
    use common::controller::Mode;
    // DESIGN §10 / issue 9: the controller answers, but only after 3 s; the
    // write is queued after central.write_deadline (1 s by default) under
    // the key of its direct attempt, and applied once.
    let controller = FakeController::start_as(dialect);
    let mac = "52:54:00:00:48:01";
    controller.set_node(mac, "active", None);
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(
            &common::quick_link_config(&controller)
                .replace("request_timeout = \"2s\"", "request_timeout = \"10s\""),
        )
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    wait_until(LONG, "node synced", || {
        call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None).0 == 200
    });
    controller.set_mode(Mode::Slow(Duration::from_secs(3)));
    let (code, answer) = set_state(&agent, mac, "reprovision", "slow-write");
    assert_eq!(code, 202, "queued after the write deadline: {answer}");
    assert_eq!(answer["offline"], false, "{answer}");
    controller.set_mode(Mode::Healthy);
    wait_until(LONG, "queue drained", || drained(&agent));
    wait_until(LONG, "the write applied", || {
        delivered_counts(&controller).get("slow-write").copied() == Some(1)
    });
    // The abandoned direct attempt and the replay share one key: once.
    assert_eq!(delivered_counts(&controller).get("slow-write"), Some(&1));
}

fn nodes_cannot_crowd_operators_out_of_the_queue(dialect: Dialect) {
    // DESIGN §7 "Admission" / issue 9 item 2: with the controller gone, a
    // flood of boots of random MACs and of forged installer reports used
    // to fill the whole queue, and the operator's write got 503.
    let controller = FakeController::start_as(dialect);
    let operated = "52:54:00:00:49:01";
    controller.set_node(operated, "active", None);
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&common::quick_link_config(&controller).replace(
            "[queue]\n",
            "[queue]\nmax_items = 300\nnode_items_per_minute = 5\n",
        ))
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    wait_until(LONG, "node synced", || {
        call(&agent, "GET", &format!("/api/v1/nodes/{operated}"), None).0 == 200
    });
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    let report = |mac: &str, event: &str| {
        let body = json!({"mac_address": mac, "event": event});
        http(agent.http, "POST", "/api/v1/report", None, Some(&body)).expect("answer")
    };

    // One MAC past its rate: refused with the reason, not queued.
    let chatty = "52:54:00:00:49:02";
    let answers: Vec<(u16, String)> = (0..10)
        .map(|_| report(chatty, "install_progress"))
        .collect();
    assert!(
        answers[..5].iter().all(|(code, _)| *code == 202),
        "{answers:?}"
    );
    for (code, text) in &answers[5..] {
        assert_eq!(*code, 503, "{text}");
        assert!(text.contains("node_items_per_minute"), "{text}");
    }

    // 400 boots of new MACs and 400 forged reports: their share (a tenth,
    // 30 items) fills; the excess is shed.
    let random_mac = |n: u32| {
        format!(
            "52:54:01:{:02x}:{:02x}:{:02x}",
            n >> 16,
            (n >> 8) & 0xff,
            n & 0xff
        )
    };
    for n in 0..400 {
        let path = format!("/api/v1/boot?mac={}&arch=x86_64", random_mac(n));
        let (code, _) = http(agent.http, "GET", &path, None, None).expect("boot answered");
        assert_eq!(code, 200);
    }
    let mut refused = 0;
    for n in 400..800 {
        let (code, text) = report(&random_mac(n), "install_started");
        match code {
            202 => {}
            503 => {
                assert!(text.contains("share"), "{text}");
                refused += 1;
            }
            other => panic!("report answered {other}: {text}"),
        }
    }
    assert!(refused > 300, "forged reports refused: {refused}");

    // The operator's write still finds room.
    let (code, answer) = set_state(&agent, operated, "reprovision", "operator-write");
    assert_eq!(code, 202, "{answer}");
    let stats = queue_stats(&agent);
    assert!(stats["node_items"].as_u64().unwrap() <= 30, "{stats}");
    assert!(stats["shed_node_items"].as_u64().unwrap() >= 700, "{stats}");
    // Shedding is logged once per interval, not once per item.
    let shed_lines = agent
        .log_lines()
        .iter()
        .filter(|l| l.contains("shed"))
        .count();
    assert!(
        (1..=10).contains(&shed_lines),
        "{shed_lines} log lines about shedding"
    );

    // Back online, the operator's change reaches the controller.
    controller.up();
    wait_until(LONG, "the write applied", || {
        delivered_counts(&controller).get("operator-write").copied() == Some(1)
    });
}

fn a_full_disk_refuses_writes_with_503_and_they_resume_once_there_is_room(dialect: Dialect) {
    // DESIGN §10 "Storage" / issue 9 item 3: after one ENOSPC every write
    // answered 500 "Previous I/O error" until a restart, while /health
    // said ok.
    let controller = FakeController::start_as(dialect);
    // About the queue, not PureBoot's state machine: the same state is
    // written over and over.
    controller.allow_any_transition();
    let mac = "52:54:00:00:4a:01";
    controller.set_node(mac, "active", None);
    let builder = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&common::quick_link_config(&controller));
    let disk = common::SmallDisk::mount(&builder.path().join("data"), "8m");
    let agent = builder.start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    wait_until(LONG, "node synced", || {
        call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None).0 == 200
    });
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    let health = || curl(&[&agent.url("/health")]).0;
    assert_eq!(health(), 200);

    let filler = disk.fill_leaving(256 * 1024);
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for n in 0..20_000 {
        let comment = format!("full-{n}");
        let (code, answer) = set_state(&agent, mac, "installed", &comment);
        match code {
            202 => acknowledged.push(comment),
            503 => {
                refused = Some(answer);
                break;
            }
            other => panic!("write {n} answered {other}: {answer}"),
        }
    }
    let refused = refused.expect("the full disk refused a write");
    assert!(refused.to_string().contains("cannot"), "{refused}");
    // Still refused, with 503, and /health says so.
    let (code, answer) = set_state(&agent, mac, "installed", "while-full");
    assert_eq!(code, 503, "{answer}");
    assert_eq!(health(), 503);
    // Boots are still answered from the cache.
    assert!(boot(&agent, mac).starts_with("#!ipxe"));

    // Room again: writes resume without a restart.
    std::fs::remove_file(filler).expect("remove filler");
    wait_until(LONG, "/health 200 again", || health() == 200);
    let (code, answer) = set_state(&agent, mac, "installed", "after-room");
    assert_eq!(code, 202, "{answer}");
    acknowledged.push("after-room".into());

    // Nothing acknowledged was lost: all of it reaches the controller.
    controller.up();
    wait_until(LONG, "queue drained", || drained(&agent));
    let delivered = delivered_counts(&controller);
    for comment in &acknowledged {
        assert_eq!(delivered.get(comment), Some(&1), "{comment}");
    }
    assert!(!delivered.contains_key("while-full"));
    println!(
        "{} writes acknowledged before the disk was full",
        acknowledged.len() - 1
    );
    drop(agent);
    drop(disk);
}

/// Every test runs against both controllers: DESIGN §6 to the letter, and
/// PureBoot's central as it really answers.
macro_rules! against_both_controllers {
    ($($name:ident),* $(,)?) => {
        mod design {
            use super::Dialect;
            $( #[test] fn $name() { super::$name(Dialect::Design) } )*
        }
        mod pureboot {
            use super::Dialect;
            $( #[test] fn $name() { super::$name(Dialect::PureBoot) } )*
        }
    };
}

against_both_controllers!(
    a_replayed_registration_the_controller_already_has_is_adopted,
    offline_writes_are_queued_then_replayed_through_500_400_slow_and_a_remap,
    queue_admin_api_refuses_bad_input_and_needs_the_token,
    cold_start_with_the_controller_down_queues_and_replays_on_arrival,
    acknowledged_writes_survive_sigkill_and_reach_the_controller_once,
    queue_cli_works_through_the_running_agent_and_directly_when_stopped,
    last_known_replays_only_what_is_safe_offline,
    offline_templates_are_operator_overridable,
    a_repeated_boot_outcome_is_recorded_once,
    sigterm_during_writes_and_replay_exits_cleanly_and_loses_nothing,
    a_queued_installer_report_moves_the_cache_only_along_the_installers_path,
    a_hanging_controller_does_not_hold_an_operators_write,
    nodes_cannot_crowd_operators_out_of_the_queue,
    a_full_disk_refuses_writes_with_503_and_they_resume_once_there_is_room,
);

fn a_replayed_registration_the_controller_already_has_is_adopted(dialect: Dialect) {
    // Issue 10: the controller learnt the MAC while the agent was cut off
    // (an operator added it, or the first attempt landed but its answer
    // was lost): the replayed POST /api/v1/nodes gets 409. The agent
    // adopts the existing node (looked up by MAC, ids remapped) instead
    // of retrying for ever, and the node's later items follow.
    let controller = FakeController::start_as(dialect);
    let agent = synced_agent(&controller, &[]);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    let mac = "52:54:00:00:4c:01";
    boot(&agent, mac);
    let (code, answer) = set_state(&agent, mac, "pending", "after-adoption");
    assert_eq!(code, 202, "{answer}");
    controller.set_node(mac, "discovered", None);
    let existing_id = controller.node(mac).expect("node")["id"].clone();
    controller.up();
    wait_until(LONG, "queue drained", || queue_stats(&agent)["total"] == 0);
    let registrations = controller.calls_to("POST", "/api/v1/nodes");
    assert_eq!(registrations.len(), 1, "one attempt, answered 409, no loop");
    assert_eq!(registrations[0].status, 409);
    let (_, node) = call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None);
    assert_eq!(node["data"]["id"], existing_id, "cache remapped: {node}");
    assert_eq!(controller.node(mac).expect("node")["state"], "pending");
    assert_eq!(
        delivered_counts(&controller).get("after-adoption"),
        Some(&1)
    );
}

/// DESIGN §8, detection at replay (issue 11, first part): a state change
/// queued offline whose node the controller changed meanwhile is answered
/// 409; one for a node the controller deleted, 404. Each becomes a durable
/// conflict record in the commit that parks its item, the node's later
/// items wait behind it, and the count reaches status and heartbeat.
/// (§6 controller only: a controller without versions needs the check
/// before sending, not built yet.)
#[test]
fn replay_records_conflicts_durably_and_holds_the_nodes_later_items() {
    let controller = FakeController::start();
    controller.check_versions();
    let (changed, deleted) = ("52:54:00:00:4d:01", "52:54:00:00:4d:02");
    controller.set_node(changed, "active", None);
    controller.set_node(deleted, "active", None);
    let agent = synced_agent_with(&controller, &[changed, deleted], MANUAL);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    let (code, _) = set_state(&agent, changed, "reprovision", "site-change");
    assert_eq!(code, 202);
    let (code, _) = set_state(&agent, changed, "pending", "site-later");
    assert_eq!(code, 202);
    let (code, _) = set_state(&agent, deleted, "reprovision", "site-deleted");
    assert_eq!(code, 202);
    // Meanwhile, at the controller: one node changed, one deleted.
    controller.set_node(changed, "retired", None);
    controller.remove_node(deleted);
    controller.up();
    wait_until(LONG, "two conflicts open", || {
        status(&agent)["conflicts_pending"] == 2
    });
    let (code, list) = call(&agent, "GET", "/api/v1/conflicts?status=open", None);
    assert_eq!(code, 200, "{list}");
    let open = list["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(open.len(), 2, "{list}");
    let of = |mac: &str| {
        open.iter()
            .find(|c| c["mac"] == mac)
            .cloned()
            .unwrap_or_else(|| panic!("no conflict for {mac}: {list}"))
    };
    let mismatch = of(changed);
    assert_eq!(mismatch["kind"], "state_mismatch");
    assert_eq!(mismatch["status"], "open");
    assert_eq!(mismatch["local"]["state"], "reprovision");
    assert_eq!(mismatch["local"]["origin"], "operator");
    assert_eq!(mismatch["central"]["state"], "retired");
    assert_eq!(mismatch["central"]["version"], 2);
    let missing = of(deleted);
    assert_eq!(missing["kind"], "missing_central");
    assert!(missing["central"].is_null(), "{missing}");
    // The later change waits behind the conflict, and so does a new one.
    let (code, answer) = set_state(&agent, changed, "installed", "site-newest");
    assert_eq!(code, 202, "queued behind the conflict, not sent: {answer}");
    let delivered = delivered_counts(&controller);
    for comment in ["site-change", "site-later", "site-deleted", "site-newest"] {
        assert!(!delivered.contains_key(comment), "{comment} was sent");
    }
    let stats = queue_stats(&agent);
    assert_eq!(stats["conflict"], 2, "{stats}");
    // The record survives a restart, and is in the sync log.
    let id = mismatch["id"].as_u64().expect("id");
    let agent = agent.kill_and_restart();
    let (code, record) = call(&agent, "GET", &format!("/api/v1/conflicts/{id}"), None);
    assert_eq!(code, 200, "{record}");
    assert_eq!(record["data"]["kind"], "state_mismatch");
    let token = admin_token(&agent);
    let (_, _, log) = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &agent.url("/api/v1/sync/log?limit=100"),
    ]);
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("conflict_detected"), "{log}");
    wait_until(LONG, "heartbeat counts them", || {
        controller
            .calls_to("POST", "/api/v1/agents/heartbeat")
            .last()
            .is_some_and(|hb| hb.body["conflicts_pending"] == 2)
    });
    let (code, _) = call(&agent, "GET", "/api/v1/conflicts/999", None);
    assert_eq!(code, 404);
    let (code, _) = call(&agent, "GET", "/api/v1/conflicts?status=maybe", None);
    assert_eq!(code, 400);

    // The command line: through the running agent ...
    let url = agent.url("");
    let listed = cli_json(agent.cli(&["conflicts", "list", "--status", "open", "--url", &url]));
    assert_eq!(listed["open"], 2, "{listed}");
    let settled = cli_json(agent.cli(&[
        "conflicts",
        "resolve",
        &id.to_string(),
        "--resolution",
        "keep_central",
        "--comment",
        "from the cli",
        "--url",
        &url,
    ]));
    assert_eq!(settled["data"]["resolution"], "keep_central", "{settled}");
    // ... and on the database when it is stopped.
    let stopped = agent.stop();
    let shown = cli_json(stopped.cli(&["conflicts", "show", &id.to_string()]));
    assert_eq!(shown["data"]["comment"], "from the cli", "{shown}");
    let out = stopped.cli(&["conflicts", "resolve", "1", "--resolution", "merge"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs the running agent"));
    let policy =
        cli_json(stopped.cli(&["conflicts", "policy", "--set", "missing_local=central_wins"]));
    assert_eq!(policy["data"]["missing_local"], "central_wins", "{policy}");
    let agent = stopped.start();
    let (_, policy) = call(&agent, "GET", "/api/v1/conflicts/policy", None);
    assert_eq!(policy["data"]["missing_local"], "central_wins", "{policy}");
}

/// Every kind of conflict left to an operator.
const MANUAL: &str = "[conflicts]\nstate_mismatch = \"manual\"\nmissing_central = \"manual\"\nmissing_local = \"manual\"\n";

fn resolve(agent: &common::Agent, id: &Value, resolution: &str) -> (u16, Value) {
    call(
        agent,
        "POST",
        &format!("/api/v1/conflicts/{id}/resolve"),
        Some(json!({"resolution": resolution, "comment": "by the test"})),
    )
}

/// The open conflict of `mac`, once there is one.
fn open_conflict(agent: &common::Agent, mac: &str) -> Value {
    let mut found = Value::Null;
    wait_until(LONG, "a conflict open", || {
        let (_, list) = call(agent, "GET", "/api/v1/conflicts?status=open", None);
        found = list["data"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["mac"] == mac).cloned())
            .unwrap_or(Value::Null);
        !found.is_null()
    });
    found
}

/// DESIGN §8, an operator's resolutions (issue 11): queued changes meet
/// a controller that changed or deleted their nodes meanwhile.
/// keep_central drops a change and the cache takes the controller's
/// state; the node's next change then conflicts too, and keep_local sends
/// it with force; the change after it builds on that one and goes through
/// by itself. On another node, merge rebases the change onto the
/// controller's version. A node deleted at the controller: keep_central
/// drops its change and marks it missing.
#[test]
fn an_operator_settles_conflicts_with_keep_central_keep_local_and_merge() {
    let controller = FakeController::start();
    controller.check_versions();
    let (mac, merged, gone) = (
        "52:54:00:00:4e:01",
        "52:54:00:00:4e:03",
        "52:54:00:00:4e:02",
    );
    for node in [mac, merged, gone] {
        controller.set_node(node, "active", None);
    }
    let agent = synced_agent_with(&controller, &[mac, merged, gone], MANUAL);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    for (state, comment) in [
        ("reprovision", "first"),
        ("pending", "second"),
        ("installing", "third"),
    ] {
        assert_eq!(set_state(&agent, mac, state, comment).0, 202);
    }
    assert_eq!(set_state(&agent, merged, "reprovision", "to-merge").0, 202);
    assert_eq!(set_state(&agent, gone, "reprovision", "orphan").0, 202);
    controller.set_node(mac, "retired", None);
    controller.set_node(merged, "installed", None);
    controller.remove_node(gone);
    controller.up();

    let first = open_conflict(&agent, mac);
    assert_eq!(first["local"]["state"], "reprovision");
    let (code, settled) = resolve(&agent, &first["id"], "keep_central");
    assert_eq!(code, 200, "{settled}");
    assert_eq!(settled["data"]["status"], "resolved");
    assert_eq!(settled["data"]["resolution"], "keep_central");
    assert_eq!(settled["data"]["resolved_by"], "operator");
    assert_eq!(settled["data"]["comment"], "by the test");
    let (code, again) = resolve(&agent, &first["id"], "keep_local");
    assert_eq!(code, 409, "resolved once: {again}");

    let second = open_conflict(&agent, mac);
    assert_eq!(second["local"]["state"], "pending", "{second}");
    let (code, settled) = resolve(&agent, &second["id"], "keep_local");
    assert_eq!(code, 200, "{settled}");
    wait_until(
        LONG,
        "the forced change and the one after it applied",
        || {
            let delivered = delivered_counts(&controller);
            delivered.get("second") == Some(&1) && delivered.get("third") == Some(&1)
        },
    );
    assert_eq!(controller.node(mac).expect("node")["state"], "installing");
    assert!(!delivered_counts(&controller).contains_key("first"));

    let to_merge = open_conflict(&agent, merged);
    assert_eq!(to_merge["central"]["state"], "installed", "{to_merge}");
    let (code, answer) = resolve(&agent, &to_merge["id"], "nonsense");
    assert_eq!(code, 400, "{answer}");
    let (code, settled) = resolve(&agent, &to_merge["id"], "merge");
    assert_eq!(code, 200, "{settled}");
    wait_until(LONG, "the merged change applied", || {
        delivered_counts(&controller).get("to-merge") == Some(&1)
    });
    assert_eq!(
        controller.node(merged).expect("node")["state"],
        "reprovision"
    );

    let orphan = open_conflict(&agent, gone);
    assert_eq!(orphan["kind"], "missing_central");
    let (code, answer) = resolve(&agent, &orphan["id"], "merge");
    assert_eq!(code, 400, "merge is for state mismatches: {answer}");
    let (code, settled) = resolve(&agent, &orphan["id"], "keep_central");
    assert_eq!(code, 200, "{settled}");
    let (_, node) = call(&agent, "GET", &format!("/api/v1/nodes/{gone}"), None);
    assert!(node["data"]["missing_central_since"].is_string(), "{node}");

    wait_until(LONG, "queue drained", || queue_stats(&agent)["total"] == 0);
    assert_eq!(status(&agent)["conflicts_pending"], 0);
    let (_, resolved) = call(&agent, "GET", "/api/v1/conflicts?status=resolved", None);
    assert_eq!(
        resolved["data"].as_array().map(Vec::len),
        Some(4),
        "{resolved}"
    );
}

/// DESIGN §8 policies (issue 11): by default (`auto`) an operator's change
/// at the site yields to the controller's; `PUT /api/v1/conflicts/policy`
/// changes it at run time, is stored, outlasts a restart, and
/// `siteboot check-config` says it wins over the config.
#[test]
fn conflict_policies_settle_what_they_find_and_are_kept_across_restarts() {
    let controller = FakeController::start();
    controller.check_versions();
    let (yields, wins) = ("52:54:00:00:4f:01", "52:54:00:00:4f:02");
    controller.set_node(yields, "active", None);
    controller.set_node(wins, "active", None);
    let agent = synced_agent(&controller, &[yields, wins]);

    // auto: the operator's change yields.
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    assert_eq!(set_state(&agent, yields, "reprovision", "yielding").0, 202);
    controller.set_node(yields, "retired", None);
    controller.up();
    wait_until(LONG, "settled by policy", || {
        let (_, list) = call(&agent, "GET", "/api/v1/conflicts?status=resolved", None);
        list["data"].as_array().is_some_and(|l| !l.is_empty())
    });
    let (_, list) = call(&agent, "GET", "/api/v1/conflicts?status=resolved", None);
    let settled = &list["data"][0];
    assert_eq!(settled["resolution"], "keep_central", "{settled}");
    assert_eq!(settled["resolved_by"], "policy", "{settled}");
    assert!(!delivered_counts(&controller).contains_key("yielding"));
    let (_, node) = call(&agent, "GET", &format!("/api/v1/nodes/{yields}"), None);
    assert_eq!(
        node["data"]["state"], "retired",
        "the cache took the controller's"
    );

    // At run time: the site wins.
    let (code, answer) = call(
        &agent,
        "PUT",
        "/api/v1/conflicts/policy",
        Some(json!({"missing_central": "auto"})),
    );
    assert_eq!(code, 400, "{answer}");
    let (code, answer) = call(
        &agent,
        "PUT",
        "/api/v1/conflicts/policy",
        Some(json!({"state_mismatch": "local_wins"})),
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["data"]["state_mismatch"], "local_wins");
    assert_eq!(answer["data"]["missing_central"], "manual");
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    assert_eq!(set_state(&agent, wins, "reprovision", "winning").0, 202);
    controller.set_node(wins, "installed", None);
    controller.up();
    wait_until(LONG, "the site's change forced through", || {
        delivered_counts(&controller).get("winning") == Some(&1)
    });
    assert_eq!(controller.node(wins).expect("node")["state"], "reprovision");
    assert_eq!(status(&agent)["conflicts_pending"], 0);

    // Stored: it outlasts a restart, and check-config says it wins.
    let stopped = agent.stop();
    let out = stopped.cli(&["check-config"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("wins over this config") && text.contains("state_mismatch=local_wins"),
        "{text}"
    );
    let agent = stopped.start();
    let (code, policy) = call(&agent, "GET", "/api/v1/conflicts/policy", None);
    assert_eq!(code, 200);
    assert_eq!(policy["data"]["state_mismatch"], "local_wins", "{policy}");
}

/// DESIGN §8 boot rule (issue 11): while a node has an open conflict, an
/// install the controller's record asks for is held back — local boot with
/// the CONFLICT banner naming the conflict; once settled with
/// keep_central, the node installs.
#[test]
fn a_node_with_an_open_conflict_boots_its_disk_with_the_conflict_banner() {
    let controller = FakeController::start();
    controller.check_versions();
    controller.add_workflow(json!({"id": "debian", "name": "Debian", "method": "kernel",
        "kernel": "debian/vmlinuz", "initrd": ["debian/initrd.gz"]}));
    let mac = "52:54:00:00:50:01";
    controller.set_node(mac, "active", None);
    let agent = synced_agent_with(&controller, &[mac], MANUAL);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    assert_eq!(set_state(&agent, mac, "retired", "site-retires").0, 202);
    controller.set_node(mac, "reprovision", Some("debian"));
    controller.up();
    let conflict = open_conflict(&agent, mac);
    let id = conflict["id"].as_u64().expect("id");
    let script = boot(&agent, mac);
    assert!(
        script.contains(&format!("*** siteboot CONFLICT {id}:")),
        "{script}"
    );
    assert!(script.contains("action=local"), "{script}");
    assert!(
        !script.contains("kernel http"),
        "nothing destructive: {script}"
    );

    let (code, settled) = resolve(&agent, &conflict["id"], "keep_central");
    assert_eq!(code, 200, "{settled}");
    let script = boot(&agent, mac);
    assert!(script.contains("action=install"), "{script}");
    assert!(!script.contains("CONFLICT"), "{script}");
}

/// Issue 11: SIGKILL while conflicts are found and settled by policy.
/// Each conflict's record commits with its item's status, and each
/// settlement with the item's removal: after any kill, no record is lost,
/// no item is both settled and still queued, and the policy is applied
/// after the restart to what was found but not yet settled.
#[test]
fn sigkill_while_conflicts_are_found_and_settled_loses_no_record() {
    let controller = FakeController::start();
    controller.check_versions();
    let macs: Vec<String> = (0..24).map(|n| format!("52:54:00:00:51:{n:02x}")).collect();
    for mac in &macs {
        controller.set_node(mac, "active", None);
    }
    let refs: Vec<&str> = macs.iter().map(String::as_str).collect();
    let mut agent = synced_agent(&controller, &refs);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    for mac in &macs {
        assert_eq!(
            set_state(&agent, mac, "reprovision", &format!("site-{mac}")).0,
            202
        );
        controller.set_node(mac, "retired", None);
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    println!("kill-moment seed {seed}");
    let mut random = XorShift(seed);
    // Slow answers spread the finding and settling over a second or two,
    // so that the kills land in the middle of it.
    controller.set_mode(common::controller::Mode::Slow(Duration::from_millis(40)));
    controller.up();
    for round in 0..3 {
        // Kill once conflicts are being found (the first is in the log).
        wait_until(LONG, "a conflict found", || {
            let (_, log) = call(&agent, "GET", "/api/v1/sync/log?limit=1000", None);
            log.to_string().contains("conflict_")
        });
        std::thread::sleep(Duration::from_millis(random.next() % 300));
        let before = (
            queue_stats(&agent)["total"].clone(),
            status(&agent)["conflicts_pending"].clone(),
        );
        println!(
            "round {round}: killed with {} items queued, {} conflicts open",
            before.0, before.1
        );
        agent = agent.kill_and_restart();
    }
    controller.set_mode(common::controller::Mode::Healthy);
    wait_until(LONG, "everything settled", || {
        queue_stats(&agent)["total"] == 0 && status(&agent)["conflicts_pending"] == 0
    });
    let mut records = Vec::new();
    let mut offset = 0;
    loop {
        let (_, page) = call(
            &agent,
            "GET",
            &format!("/api/v1/conflicts?status=resolved&offset={offset}&limit=1000"),
            None,
        );
        let data = page["data"].as_array().cloned().unwrap_or_default();
        if data.is_empty() {
            break;
        }
        offset += data.len();
        records.extend(data);
    }
    let per_node: BTreeMap<String, usize> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r["mac"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
        m
    });
    for mac in &macs {
        assert_eq!(per_node.get(mac), Some(&1), "{mac}: {per_node:?}");
    }
    for record in &records {
        assert_eq!(record["resolution"], "keep_central", "{record}");
        assert_eq!(record["resolved_by"], "policy", "{record}");
    }
    let delivered = delivered_counts(&controller);
    assert!(
        macs.iter()
            .all(|mac| !delivered.contains_key(&format!("site-{mac}"))),
        "an operator's change that yielded was still sent: {delivered:?}"
    );
    for mac in &macs {
        assert_eq!(controller.node(mac).expect("node")["state"], "retired");
        let (_, node) = call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None);
        assert_eq!(
            node["data"]["state"], "retired",
            "the cache took the controller's"
        );
    }
}

/// DESIGN §8 for a controller without versions (issue 11, PureBoot's
/// central): before sending a queued state change the agent compares the
/// node's change time there with the one the change was made against. A
/// node changed at the controller meanwhile is a state mismatch found
/// before sending; the agent's own queued changes in a row are not.
#[test]
fn a_version_less_controller_gets_its_conflicts_found_before_sending() {
    let controller = FakeController::pureboot();
    let (changed, chained) = ("52:54:00:00:52:01", "52:54:00:00:52:02");
    controller.set_node(changed, "active", None);
    controller.set_node(chained, "active", None);
    let agent = synced_agent_with(&controller, &[changed, chained], MANUAL);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    assert_eq!(
        set_state(&agent, changed, "reprovision", "stale-here").0,
        202
    );
    assert_eq!(set_state(&agent, chained, "reprovision", "chain-1").0, 202);
    assert_eq!(set_state(&agent, chained, "pending", "chain-2").0, 202);
    controller.set_node(changed, "installed", None);
    controller.up();

    let conflict = open_conflict(&agent, changed);
    assert_eq!(conflict["kind"], "state_mismatch", "{conflict}");
    assert_eq!(conflict["central"]["state"], "installed", "{conflict}");
    assert!(conflict["central"]["version"].is_null(), "{conflict}");
    wait_until(LONG, "the chained changes applied", || {
        let delivered = delivered_counts(&controller);
        delivered.get("chain-1") == Some(&1) && delivered.get("chain-2") == Some(&1)
    });
    assert_eq!(controller.node(chained).expect("node")["state"], "pending");
    assert!(
        !delivered_counts(&controller).contains_key("stale-here"),
        "not sent"
    );
    assert_eq!(status(&agent)["conflicts_pending"], 1);

    // merge: the change now builds on the controller's record, and goes.
    let (code, settled) = resolve(&agent, &conflict["id"], "merge");
    assert_eq!(code, 200, "{settled}");
    wait_until(LONG, "the merged change applied", || {
        delivered_counts(&controller).get("stale-here") == Some(&1)
    });
    assert_eq!(
        controller.node(changed).expect("node")["state"],
        "reprovision"
    );
    wait_until(LONG, "queue drained", || queue_stats(&agent)["total"] == 0);
}

/// The conflicts' tests that run against both controllers.
macro_rules! against_both_controllers_conflicts {
    ($($name:ident),* $(,)?) => {
        mod conflicts_design {
            use super::Dialect;
            $( #[test] fn $name() { super::$name(Dialect::Design) } )*
        }
        mod conflicts_pureboot {
            use super::Dialect;
            $( #[test] fn $name() { super::$name(Dialect::PureBoot) } )*
        }
    };
}

against_both_controllers_conflicts!(
    every_kind_of_conflict_is_settled_by_every_policy,
    a_node_a_full_sync_no_longer_lists_is_confirmed_missing_then_registered_again,
    a_node_registered_offline_that_the_controller_already_had_in_another_state_conflicts,
    an_installer_report_observed_offline_conflicts_and_wins_under_auto,
);

/// The conflict about `mac` in the given status, if any.
fn conflict_of(agent: &common::Agent, mac: &str, status: &str) -> Option<Value> {
    let (code, list) = call(
        agent,
        "GET",
        &format!("/api/v1/conflicts?status={status}&limit=1000"),
        None,
    );
    assert_eq!(code, 200, "{list}");
    list["data"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["mac"] == mac).cloned())
}

fn sync_log(agent: &common::Agent) -> String {
    let (code, log) = call(agent, "GET", "/api/v1/sync/log?limit=1000", None);
    assert_eq!(code, 200, "{log}");
    log.to_string()
}

/// A controller whose every state change is checked against its base:
/// versions for the §6 fake; the PureBoot fake has none (the agent looks
/// before sending).
fn conflict_controller(dialect: Dialect) -> FakeController {
    let controller = FakeController::start_as(dialect);
    if dialect == Dialect::Design {
        controller.check_versions();
    }
    controller
}

/// DESIGN §8, issue 11: each kind of conflict under each of its policies,
/// set at run time. Per round, three nodes meet a controller that moved
/// on while the site was cut off: one changed there (`state_mismatch`),
/// one deleted there (`missing_central`, a 404 on replay), one first seen
/// here whose registration the controller refuses for good (a 422:
/// `missing_local`). The end state at the controller and in the cache,
/// the record, the counts and the sync log are checked for each.
fn every_kind_of_conflict_is_settled_by_every_policy(dialect: Dialect) {
    let controller = conflict_controller(dialect);
    let rounds = [
        ("central_wins", "central_wins", "central_wins"),
        ("local_wins", "local_wins", "local_wins"),
        ("manual", "manual", "manual"),
        ("auto", "manual", "manual"),
    ];
    let mac = |round: usize, n: u8| format!("52:54:00:00:6{round}:0{n}");
    let mut known = Vec::new();
    for round in 0..rounds.len() {
        for n in [1, 2] {
            controller.set_node(&mac(round, n), "active", None);
            known.push(mac(round, n));
        }
    }
    let refs: Vec<&str> = known.iter().map(String::as_str).collect();
    let agent = synced_agent(&controller, &refs);
    let mut open_before = 0;
    for (round, (state_mismatch, missing_central, missing_local)) in rounds.iter().enumerate() {
        let (changed, deleted, refused) = (mac(round, 1), mac(round, 2), mac(round, 3));
        let (code, answer) = call(
            &agent,
            "PUT",
            "/api/v1/conflicts/policy",
            Some(json!({"state_mismatch": state_mismatch,
                        "missing_central": missing_central,
                        "missing_local": missing_local})),
        );
        assert_eq!(code, 200, "{answer}");
        controller.down();
        wait_until(LONG, "offline", || mode(&agent) == "offline");
        let (sm_comment, mc_comment) = (format!("sm-{round}"), format!("mc-{round}"));
        assert_eq!(
            set_state(&agent, &changed, "reprovision", &sm_comment).0,
            202
        );
        assert_eq!(
            set_state(&agent, &deleted, "reprovision", &mc_comment).0,
            202
        );
        boot(&agent, &refused);
        controller.set_node(&changed, "installed", None);
        controller.remove_node(&deleted);
        controller.inject(
            "POST",
            "/api/v1/nodes",
            Some(&refused),
            422,
            Duration::ZERO,
            1,
        );
        controller.up();
        let expect_open = [*state_mismatch, *missing_central, *missing_local]
            .iter()
            .filter(|p| **p == "manual")
            .count();
        let expected = |policy: &str| {
            if policy == "manual" {
                "open"
            } else {
                "resolved"
            }
        };
        wait_until(LONG, "every conflict found, and settled or parked", || {
            [
                (&changed, *state_mismatch),
                (&deleted, *missing_central),
                (&refused, *missing_local),
            ]
            .iter()
            .all(|(mac, policy)| conflict_of(&agent, mac, expected(policy)).is_some())
        });
        if *state_mismatch == "local_wins" {
            wait_until(LONG, "the site's changes and registration applied", || {
                let delivered = delivered_counts(&controller);
                delivered.contains_key(&sm_comment)
                    && delivered.contains_key(&mc_comment)
                    && controller.node(&refused).is_some()
            });
        }
        wait_until(LONG, "nothing in flight", || {
            queue_stats(&agent)["in_flight"] == 0
        });
        let log = sync_log(&agent);
        let delivered = delivered_counts(&controller);
        let cached = |mac: &str| call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None);

        // state_mismatch
        let policy = *state_mismatch;
        let record = conflict_of(&agent, &changed, expected(policy))
            .unwrap_or_else(|| panic!("round {round}: no state_mismatch record"));
        assert_eq!(record["kind"], "state_mismatch", "{record}");
        assert_eq!(record["local"]["state"], "reprovision", "{record}");
        assert_eq!(record["local"]["origin"], "operator", "{record}");
        assert_eq!(record["central"]["state"], "installed", "{record}");
        let (_, node) = cached(&changed);
        let there = controller.node(&changed).expect("node")["state"].clone();
        match policy {
            // auto: an operator's change at the site yields.
            "central_wins" | "auto" => {
                assert_eq!(record["resolution"], "keep_central", "{record}");
                assert_eq!(record["resolved_by"], "policy", "{record}");
                assert_eq!(there, "installed");
                assert_eq!(node["data"]["state"], "installed", "{node}");
                assert!(!delivered.contains_key(&sm_comment));
            }
            "local_wins" => {
                assert_eq!(record["resolution"], "keep_local", "{record}");
                assert_eq!(there, "reprovision");
                assert_eq!(node["data"]["state"], "reprovision", "{node}");
                assert_eq!(delivered.get(&sm_comment), Some(&1));
            }
            _ => {
                assert_eq!(record["status"], "open", "{record}");
                assert_eq!(there, "installed");
                assert_eq!(
                    node["data"]["state"], "reprovision",
                    "the site's change: {node}"
                );
                assert!(!delivered.contains_key(&sm_comment));
            }
        }

        // missing_central
        let policy = *missing_central;
        let record = conflict_of(&agent, &deleted, expected(policy))
            .unwrap_or_else(|| panic!("round {round}: no missing_central record"));
        assert_eq!(record["kind"], "missing_central", "{record}");
        assert!(record["central"].is_null(), "{record}");
        let (_, node) = cached(&deleted);
        match policy {
            "central_wins" => {
                assert_eq!(record["resolution"], "keep_central", "{record}");
                assert!(controller.node(&deleted).is_none());
                assert!(node["data"]["missing_central_since"].is_string(), "{node}");
            }
            "local_wins" => {
                assert_eq!(record["resolution"], "keep_local", "{record}");
                let there = controller.node(&deleted).expect("registered again");
                assert_eq!(there["state"], "reprovision", "{there}");
                assert_eq!(node["data"]["id"], there["id"], "cache remapped: {node}");
                assert!(node["data"]["missing_central_since"].is_null(), "{node}");
                assert_eq!(delivered.get(&mc_comment), Some(&1));
            }
            _ => {
                assert!(controller.node(&deleted).is_none());
                assert!(!delivered.contains_key(&mc_comment));
            }
        }

        // missing_local
        let policy = *missing_local;
        let record = conflict_of(&agent, &refused, expected(policy))
            .unwrap_or_else(|| panic!("round {round}: no missing_local record"));
        assert_eq!(record["kind"], "missing_local", "{record}");
        assert!(
            record["local"]["state"].is_null(),
            "a registration: {record}"
        );
        assert_eq!(record["local"]["origin"], "observed", "{record}");
        let (code, node) = cached(&refused);
        match policy {
            "central_wins" => {
                assert_eq!(record["resolution"], "keep_central", "{record}");
                assert!(controller.node(&refused).is_none());
                assert_eq!(code, 404, "a refused node is forgotten: {node}");
            }
            "local_wins" => {
                assert_eq!(record["resolution"], "keep_local", "{record}");
                let there = controller.node(&refused).expect("registered");
                assert_eq!(node["data"]["id"], there["id"], "{node}");
            }
            _ => {
                assert!(controller.node(&refused).is_none());
                assert_eq!(code, 200);
                assert!(
                    node["data"]["id"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("local-")),
                    "{node}"
                );
            }
        }

        // Every one is in the sync log: found, and settled unless manual.
        for mac in [&changed, &deleted, &refused] {
            assert!(
                log.contains(&format!("for {mac}: local")),
                "round {round}: {mac} not logged as found: {log}"
            );
        }
        for (mac, policy) in [
            (&changed, *state_mismatch),
            (&deleted, *missing_central),
            (&refused, *missing_local),
        ] {
            let entry = format!("for {mac}: keep_");
            assert_eq!(
                log.contains(&entry),
                policy != "manual",
                "round {round}: {mac} under {policy}: {log}"
            );
        }
        open_before += expect_open;
        assert_eq!(
            queue_stats(&agent)["conflict"],
            open_before,
            "round {round}"
        );
        assert_eq!(
            status(&agent)["conflicts_pending"],
            open_before,
            "round {round}"
        );
    }
    wait_until(LONG, "the heartbeat counts the open ones", || {
        controller
            .calls_to("POST", "/api/v1/agents/heartbeat")
            .last()
            .is_some_and(|hb| hb.body["conflicts_pending"] == open_before)
    });
}

/// DESIGN §8, `missing_central` found at sync (issue 11): a change the
/// controller could not take yet (500s, retried later) is held while the
/// node is deleted there. A full sync that no longer lists it is not
/// taken on trust: a node left out of the listing but found by MAC is no
/// conflict; one the lookup confirms gone is, on the held change. The
/// operator's keep_local registers it again and the change follows.
fn a_node_a_full_sync_no_longer_lists_is_confirmed_missing_then_registered_again(dialect: Dialect) {
    let controller = conflict_controller(dialect);
    let (gone, hidden) = ("52:54:00:00:64:01", "52:54:00:00:64:02");
    controller.set_node(gone, "active", None);
    controller.set_node(hidden, "active", None);
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&common::quick_link_config(&controller))
        .config(MANUAL)
        // A change the controller failed stays held for the test.
        .env("SITEBOOT_QUEUE_RETRY_BASE", "1h")
        .env("SITEBOOT_QUEUE_RETRY_MAX", "2h")
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    wait_until(LONG, "nodes synced", || {
        [gone, hidden]
            .iter()
            .all(|mac| call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None).0 == 200)
    });
    for mac in [gone, hidden] {
        // The direct attempt and the first replay: 500.
        controller.inject(
            "PATCH",
            "/state",
            Some(&format!("held-{mac}")),
            500,
            Duration::ZERO,
            2,
        );
        let (code, answer) = set_state(&agent, mac, "reprovision", &format!("held-{mac}"));
        assert_eq!(code, 202, "{answer}");
    }
    wait_until(LONG, "both changes tried and held", || {
        let items = queue_items(&agent);
        items.len() == 2
            && items
                .iter()
                .all(|i| i["status"] == "pending" && i["attempts"].as_u64() >= Some(1))
    });
    controller.remove_node(gone);
    controller.unlist(hidden, true);
    let (code, answer) = call(&agent, "POST", "/api/v1/sync?full=true", None);
    assert!(code == 200 || code == 202, "{code} {answer}");
    let conflict = open_conflict(&agent, gone);
    assert_eq!(conflict["kind"], "missing_central", "{conflict}");
    assert!(conflict["central"].is_null(), "{conflict}");
    assert_eq!(conflict["local"]["state"], "reprovision", "{conflict}");
    assert!(sync_log(&agent).contains(&format!("missing_central for {gone}")));
    // The node only left out of the listing is found by MAC: no conflict.
    assert!(conflict_of(&agent, hidden, "open").is_none());
    assert_eq!(status(&agent)["conflicts_pending"], 1);
    let stats = queue_stats(&agent);
    assert_eq!(stats["conflict"], 1, "{stats}");
    assert_eq!(stats["pending"], 1, "{stats}");

    let (code, settled) = resolve(&agent, &conflict["id"], "keep_local");
    assert_eq!(code, 200, "{settled}");
    wait_until(LONG, "registered again and the change applied", || {
        delivered_counts(&controller).get(&format!("held-{gone}")) == Some(&1)
    });
    let there = controller.node(gone).expect("registered again");
    assert_eq!(there["state"], "reprovision", "{there}");
    let (_, node) = call(&agent, "GET", &format!("/api/v1/nodes/{gone}"), None);
    assert_eq!(node["data"]["id"], there["id"], "{node}");
    assert!(node["data"]["missing_central_since"].is_null(), "{node}");
    assert_eq!(controller.calls_to("POST", "/api/v1/nodes").len(), 1);
    assert_eq!(status(&agent)["conflicts_pending"], 0);
}

/// DESIGN §8: a node first seen here while the controller was gone, and
/// changed here, that the controller already had (its registration is
/// answered 409): the agent adopts the controller's node. If it is still
/// as the site saw it (`discovered`) the change goes through; if it had
/// moved on, the change is a state mismatch, settled by its policy.
fn a_node_registered_offline_that_the_controller_already_had_in_another_state_conflicts(
    dialect: Dialect,
) {
    let controller = conflict_controller(dialect);
    let agent = synced_agent_with(&controller, &[], MANUAL);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    let (fresh, moved) = ("52:54:00:00:65:01", "52:54:00:00:65:02");
    for mac in [fresh, moved] {
        boot(&agent, mac);
        let (code, answer) = set_state(&agent, mac, "pending", &format!("site-{mac}"));
        assert_eq!(code, 202, "{answer}");
    }
    controller.set_node(fresh, "discovered", None);
    controller.set_node(moved, "active", None);
    controller.up();
    let conflict = open_conflict(&agent, moved);
    assert_eq!(conflict["kind"], "state_mismatch", "{conflict}");
    assert_eq!(conflict["local"]["state"], "pending", "{conflict}");
    assert_eq!(conflict["central"]["state"], "active", "{conflict}");
    wait_until(LONG, "the change on the fresh node applied", || {
        delivered_counts(&controller).get(&format!("site-{fresh}")) == Some(&1)
    });
    assert_eq!(controller.node(fresh).expect("node")["state"], "pending");
    assert_eq!(controller.node(moved).expect("node")["state"], "active");
    assert!(!delivered_counts(&controller).contains_key(&format!("site-{moved}")));
    let (_, node) = call(&agent, "GET", &format!("/api/v1/nodes/{moved}"), None);
    assert_eq!(
        node["data"]["id"],
        controller.node(moved).expect("node")["id"],
        "adopted: {node}"
    );
    let (code, settled) = resolve(&agent, &conflict["id"], "keep_central");
    assert_eq!(code, 200, "{settled}");
    let (_, node) = call(&agent, "GET", &format!("/api/v1/nodes/{moved}"), None);
    assert_eq!(node["data"]["state"], "active", "{node}");
    wait_until(LONG, "queue drained", || queue_stats(&agent)["total"] == 0);
}

/// DESIGN §8 `merge` (issue 11): the change is rebased onto the
/// controller's version as the operator resolves; when the controller's
/// record moves on again before the change lands, that is a new
/// conflict, not an overwrite. (The §6 controller, whose 409 finds it;
/// the version-less path is the same check as any other change's.)
#[test]
fn a_merge_that_meets_a_second_change_at_the_controller_is_a_new_conflict() {
    let controller = conflict_controller(Dialect::Design);
    let mac = "52:54:00:00:66:01";
    controller.set_node(mac, "active", None);
    let agent = synced_agent_with(&controller, &[mac], MANUAL);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    assert_eq!(set_state(&agent, mac, "reprovision", "merge-me").0, 202);
    controller.set_node(mac, "installed", None);
    controller.up();
    let first = open_conflict(&agent, mac);
    // The merged change reaches the controller only after this pause,
    // long after the second change below is made there.
    controller.inject(
        "PATCH",
        "/state",
        Some("merge-me"),
        0,
        Duration::from_secs(5),
        1,
    );
    let (code, settled) = resolve(&agent, &first["id"], "merge");
    assert_eq!(code, 200, "{settled}");
    controller.set_node(mac, "retired", None);
    wait_until(LONG, "a second conflict", || {
        conflict_of(&agent, mac, "open").is_some_and(|c| c["id"] != first["id"])
    });
    let second = conflict_of(&agent, mac, "open").expect("open");
    assert_eq!(second["central"]["state"], "retired", "{second}");
    assert_eq!(second["local"]["state"], "reprovision", "{second}");
    assert_eq!(controller.node(mac).expect("node")["state"], "retired");
    assert!(!delivered_counts(&controller).contains_key("merge-me"));
    let (_, first) = call(
        &agent,
        "GET",
        &format!("/api/v1/conflicts/{}", first["id"]),
        None,
    );
    assert_eq!(first["data"]["resolution"], "merge", "{first}");
}

/// Issue 19 item 2 (DESIGN §6): a different request is a new request.
/// Under `local_wins`, the forced resend of a change that got a 409 goes
/// out under a new key, so a controller that replays a key's first answer
/// does not send the 409 back (which looped: a new conflict per replay),
/// and one that follows the IETF draft does not refuse it with 422. A
/// merge (new base_version) gets a new key too. The conflict is recorded
/// once and the change lands once.
fn a_changed_request_goes_out_under_a_new_key(store: common::controller::KeyStore) {
    let controller = FakeController::start();
    controller.check_versions();
    controller.set_key_store(store);
    let (forced, merged) = ("52:54:00:00:5a:01", "52:54:00:00:5a:02");
    controller.set_node(forced, "active", None);
    controller.set_node(merged, "active", None);
    let agent = synced_agent_with(
        &controller,
        &[forced, merged],
        "[conflicts]\nstate_mismatch = \"manual\"\n",
    );
    assert_eq!(
        call(
            &agent,
            "PUT",
            "/api/v1/conflicts/policy",
            Some(json!({"state_mismatch": "local_wins"}))
        )
        .0,
        200
    );
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    assert_eq!(set_state(&agent, forced, "reprovision", "forced").0, 202);
    controller.set_node(forced, "installed", None);
    controller.up();
    wait_until(LONG, "the forced change applied", || {
        delivered_counts(&controller).get("forced") == Some(&1)
    });
    assert_eq!(
        controller.node(forced).expect("node")["state"],
        "reprovision"
    );
    let patches = controller.calls_to("PATCH", "/api/v1/nodes/");
    let keys: BTreeSet<_> = patches
        .iter()
        .filter(|c| c.body["comment"] == "forced")
        .filter_map(|c| c.idempotency_key.clone())
        .collect();
    assert!(
        keys.len() >= 2,
        "the forced resend has its own key: {patches:?}"
    );
    let (_, all) = call(&agent, "GET", "/api/v1/conflicts", None);
    let records = all["data"]
        .as_array()
        .map(|list| list.iter().filter(|c| c["mac"] == forced).count());
    assert_eq!(records, Some(1), "one conflict, settled once: {all}");
    // Sent once more nothing changes: no loop of resends.
    let sent = controller.calls_to("PATCH", "/api/v1/nodes/").len();
    wait_until(LONG, "queue drained", || drained(&agent));
    assert_eq!(controller.calls_to("PATCH", "/api/v1/nodes/").len(), sent);

    // A merge: the change rebased onto the controller's version.
    assert_eq!(
        call(
            &agent,
            "PUT",
            "/api/v1/conflicts/policy",
            Some(json!({"state_mismatch": "manual"}))
        )
        .0,
        200
    );
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    assert_eq!(set_state(&agent, merged, "reprovision", "merged").0, 202);
    controller.set_node(merged, "installed", None);
    controller.up();
    let open = open_conflict(&agent, merged);
    let (code, settled) = resolve(&agent, &open["id"], "merge");
    assert_eq!(code, 200, "{settled}");
    wait_until(LONG, "the merged change applied", || {
        delivered_counts(&controller).get("merged") == Some(&1)
    });
    let mut keys = controller
        .calls_to("PATCH", "/api/v1/nodes/")
        .into_iter()
        .filter(|c| c.body["comment"] == "merged")
        .map(|c| (c.idempotency_key, c.status));
    let (first_key, first_status) = keys.next().expect("the first attempt");
    assert_eq!(first_status, 409);
    assert!(
        keys.all(|(key, _)| key != first_key),
        "merge under a new key"
    );
}

#[test]
fn a_changed_request_goes_out_under_a_new_key_to_a_replaying_controller() {
    a_changed_request_goes_out_under_a_new_key(common::controller::KeyStore::Replay);
}

#[test]
fn a_changed_request_goes_out_under_a_new_key_to_an_ietf_controller() {
    a_changed_request_goes_out_under_a_new_key(common::controller::KeyStore::Ietf);
}

/// The case idempotency keys exist for: the controller applies a change,
/// then its answer is lost (held past `central.request_timeout`). The
/// resend keeps its key, so the change is applied once and the agent takes
/// the first answer.
#[test]
fn a_write_whose_answer_was_lost_is_resent_under_its_key_and_applied_once() {
    let controller = FakeController::start();
    controller.set_key_store(common::controller::KeyStore::Ietf);
    let mac = "52:54:00:00:5a:03";
    controller.set_node(mac, "active", None);
    let agent = synced_agent(&controller, &[mac]);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    assert_eq!(set_state(&agent, mac, "reprovision", "lost answer").0, 202);
    controller.set_mode(common::controller::Mode::ApplyThenStall(
        Duration::from_secs(3),
    ));
    controller.up();
    wait_until(LONG, "sent twice", || {
        controller
            .calls_to("PATCH", "/api/v1/nodes/")
            .iter()
            .filter(|c| c.body["comment"] == "lost answer")
            .count()
            >= 2
    });
    controller.set_mode(common::controller::Mode::Healthy);
    wait_until(LONG, "queue drained", || drained(&agent));
    let attempts: Vec<_> = controller
        .calls_to("PATCH", "/api/v1/nodes/")
        .into_iter()
        .filter(|c| c.body["comment"] == "lost answer")
        .collect();
    let keys: BTreeSet<_> = attempts.iter().map(|c| c.idempotency_key.clone()).collect();
    assert_eq!(keys.len(), 1, "one request, one key: {attempts:?}");
    assert_eq!(delivered_counts(&controller).get("lost answer"), Some(&1));
    assert_eq!(queue_stats(&agent)["failed"], 0);
}

/// Issue 19 item 3 (DESIGN §8): a state change observed at the site has a
/// base like an operator's. An installer's `install_complete`, queued
/// while the controller was gone, meets a controller that moved the node
/// to `reprovision` meanwhile: a `state_mismatch` conflict (origin
/// observed) that `auto` settles for the site: the report is delivered and
/// the node set to `installed` with force. A node the controller retired
/// meanwhile stays retired (a report never moves a retired node).
fn an_installer_report_observed_offline_conflicts_and_wins_under_auto(dialect: Dialect) {
    let controller = conflict_controller(dialect);
    let (moved, retired) = ("52:54:00:00:5b:01", "52:54:00:00:5b:02");
    controller.set_node(moved, "installing", None);
    controller.set_node(retired, "installing", None);
    let agent = synced_agent(&controller, &[moved, retired]);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    for mac in [moved, retired] {
        let body = json!({"mac_address": mac, "event": "install_complete"});
        let (code, text) =
            http(agent.http, "POST", "/api/v1/report", None, Some(&body)).expect("answer");
        assert_eq!(code, 202, "{text}");
    }
    controller.set_node(moved, "reprovision", None);
    controller.set_node(retired, "retired", None);
    controller.up();
    wait_until(LONG, "both settled", || {
        conflict_of(&agent, moved, "resolved").is_some()
            && conflict_of(&agent, retired, "resolved").is_some()
    });
    let won = conflict_of(&agent, moved, "resolved").expect("record");
    assert_eq!(won["kind"], "state_mismatch", "{won}");
    assert_eq!(won["local"]["origin"], "observed", "{won}");
    assert_eq!(won["local"]["state"], "installed", "{won}");
    assert_eq!(won["central"]["state"], "reprovision", "{won}");
    assert_eq!(won["resolution"], "keep_local", "{won}");
    assert_eq!(won["resolved_by"], "policy", "{won}");
    let kept = conflict_of(&agent, retired, "resolved").expect("record");
    assert_eq!(kept["resolution"], "keep_central", "{kept}");
    wait_until(LONG, "queue drained", || queue_stats(&agent)["total"] == 0);
    assert_eq!(controller.node(moved).expect("node")["state"], "installed");
    assert_eq!(controller.node(retired).expect("node")["state"], "retired");
    let reports = controller
        .applied()
        .into_iter()
        .filter(|w| w.op == "report" && w.mac == moved)
        .count();
    assert_eq!(reports, 1, "the install record reached the controller once");
    let (status, report) = call(&agent, "POST", "/api/v1/sync?full=true", None);
    assert_eq!(status, 200, "{report}");
    let (_, node) = call(&agent, "GET", &format!("/api/v1/nodes/{moved}"), None);
    assert_eq!(node["data"]["state"], "installed", "{node}");
    assert!(boot(&agent, retired).contains("action=retired"));
}

/// Issue 19 item 4 (DESIGN §8): a conflict is resolved once. Two
/// operators send `keep_central` and `keep_local` at the same moment: one
/// gets 200, the other 409; the record, the sync log and what reached the
/// controller all tell the same single resolution.
#[test]
fn two_resolutions_at_once_settle_a_conflict_once() {
    let controller = FakeController::start();
    controller.check_versions();
    let macs = [
        "52:54:00:00:5c:01",
        "52:54:00:00:5c:02",
        "52:54:00:00:5c:03",
    ];
    for mac in macs {
        controller.set_node(mac, "active", None);
    }
    let agent = synced_agent_with(&controller, &macs, MANUAL);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    for mac in macs {
        assert_eq!(set_state(&agent, mac, "reprovision", mac).0, 202);
        controller.set_node(mac, "installed", None);
    }
    controller.up();
    for mac in macs {
        let conflict = open_conflict(&agent, mac);
        let id = conflict["id"].clone();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = ["keep_central", "keep_local"]
            .into_iter()
            .map(|resolution| {
                let (barrier, id, addr, token) =
                    (barrier.clone(), id.clone(), agent.http, admin_token(&agent));
                std::thread::spawn(move || {
                    barrier.wait();
                    let body = json!({"resolution": resolution});
                    let (code, _) = http(
                        addr,
                        "POST",
                        &format!("/api/v1/conflicts/{id}/resolve"),
                        Some(&token),
                        Some(&body),
                    )
                    .expect("answer");
                    (resolution, code)
                })
            })
            .collect();
        let codes: Vec<(&str, u16)> = racers
            .into_iter()
            .map(|r| r.join().expect("thread"))
            .collect();
        let winners: Vec<&str> = codes
            .iter()
            .filter(|(_, code)| *code == 200)
            .map(|(r, _)| *r)
            .collect();
        assert_eq!(winners.len(), 1, "{mac}: {codes:?}");
        assert!(codes.iter().any(|(_, code)| *code == 409), "{codes:?}");
        let record = conflict_of(&agent, mac, "resolved").expect("resolved");
        assert_eq!(record["resolution"], winners[0], "{record}");
        let log = sync_log(&agent);
        let resolutions = log.matches(&format!("conflict {id} ")).count();
        assert_eq!(resolutions, 2, "detected and resolved once: {log}");
    }
    wait_until(LONG, "queue drained", || queue_stats(&agent)["total"] == 0);
    for mac in macs {
        let record = conflict_of(&agent, mac, "resolved").expect("resolved");
        let delivered = delivered_counts(&controller).get(mac).copied();
        match record["resolution"].as_str() {
            Some("keep_local") => assert_eq!(delivered, Some(1), "{mac}"),
            _ => assert_eq!(
                delivered, None,
                "{mac}: no forced resend after keep_central"
            ),
        }
    }
}

/// Issue 19 item 5 (DESIGN §10): one conflict record that does not decode
/// is quarantined at start like any other record. Every conflict endpoint
/// answers; the record no longer counts as open; the queue item it parked
/// is failed with the reason (for an operator to retry or delete), and the
/// node's later change is no longer held behind it.
#[test]
fn an_unreadable_conflict_record_is_quarantined_and_releases_its_node() {
    let controller = FakeController::start();
    controller.check_versions();
    let mac = "52:54:00:00:5d:01";
    controller.set_node(mac, "active", None);
    let agent = synced_agent_with(&controller, &[mac], MANUAL);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    assert_eq!(set_state(&agent, mac, "reprovision", "parked").0, 202);
    assert_eq!(set_state(&agent, mac, "pending", "held").0, 202);
    controller.set_node(mac, "installed", None);
    controller.up();
    open_conflict(&agent, mac);
    let (_, stopped) = agent.terminate();

    // A byte of the record's JSON becomes a control character: the
    // database stays sound, the record does not decode. `detected_at` is
    // written by conflict records alone.
    common::corrupt_records(
        &stopped.path().join("data").join("siteboot.redb"),
        b"detected_at",
        2,
    );

    let agent = stopped.start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    agent.wait_for_log("conflict record unreadable");
    let (code, list) = call(&agent, "GET", "/api/v1/conflicts", None);
    assert_eq!(code, 200, "{list}");
    assert!(
        list["data"]
            .as_array()
            .is_some_and(|all| all.iter().all(|c| c["id"] != 1)),
        "{list}"
    );
    let (code, one) = call(&agent, "GET", "/api/v1/conflicts/1", None);
    assert_eq!(code, 404, "{one}");
    let (code, answer) = resolve(&agent, &json!(1), "keep_local");
    assert_eq!(code, 404, "{answer}");
    let status = status(&agent);
    assert!(
        status["quarantined_records"].as_u64() >= Some(1),
        "{status}"
    );
    // The later change is sent now (built on the same old version, it
    // meets the controller's change and becomes a conflict of its own).
    wait_until(LONG, "the later change sent", || {
        controller
            .calls_to("PATCH", "/api/v1/nodes/")
            .iter()
            .any(|c| c.body["comment"] == "held")
    });
    let failed: Vec<Value> = queue_items(&agent)
        .into_iter()
        .filter(|item| item["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("quarantined")),
        "{failed:?}"
    );
}

/// Issue 19 item 14 (DESIGN §7): a node's queued item is bounded in
/// bytes, not only in number. Offline, a report with 45 KB of message,
/// metadata and extra fields, and a boot with 60 KB of facts, are queued
/// (202 / the boot answered) cut to fit: the event and the MAC kept.
#[test]
fn what_a_node_may_make_the_queue_hold_is_bounded_in_bytes() {
    let controller = FakeController::start();
    let known = "52:54:00:00:5e:01";
    controller.set_node(known, "installing", None);
    let agent = synced_agent(&controller, &[known]);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    let big = "x".repeat(15_000);
    let body = json!({"mac_address": known, "event": "install_complete",
        "message": big, "event_metadata": {"log": big}, "extra_field": big});
    let (code, text) =
        http(agent.http, "POST", "/api/v1/report", None, Some(&body)).expect("answer");
    assert_eq!(code, 202, "{text}");
    let stranger = "52:54:00:00:5e:02";
    let facts = "f".repeat(20_000);
    let (status, _, _) = curl(&[&agent.url(&format!(
        "/api/v1/boot?mac={stranger}&arch=x86_64&serial={facts}&manufacturer={facts}&product={facts}"
    ))]);
    assert_eq!(status, 200);
    // The report and the stranger's registration (its boot event is
    // queued in the background: it may or may not be there yet).
    let items = queue_items(&agent);
    assert!(
        items
            .iter()
            .any(|i| i["kind"] == "registration" && i["node"] == stranger),
        "the registration is queued"
    );
    for item in &items {
        let bytes = item["payload"].to_string().len();
        assert!(
            bytes <= 8 * 1024,
            "node item {} carries {bytes} bytes",
            item["id"]
        );
    }
    let report = items
        .iter()
        .find(|i| i["node"] == known)
        .expect("the report");
    assert_eq!(report["payload"]["report"]["event"], "install_complete");
    controller.up();
    wait_until(LONG, "queue drained", || queue_stats(&agent)["total"] == 0);
    assert!(
        controller
            .applied()
            .iter()
            .any(|w| w.op == "report" && w.mac == known && w.body["event"] == "install_complete"),
        "the cut report reached the controller"
    );
}

/// DESIGN §4 last-known scripts, issue 19's untested promise: the
/// recorder writes in batches, and SIGTERM writes what it holds. Boots
/// answered just before the signal are there after the restart.
#[test]
fn sigterm_writes_the_last_served_scripts() {
    let controller = FakeController::start();
    let macs: Vec<String> = (0..20).map(|n| format!("52:54:00:00:5f:{n:02x}")).collect();
    for mac in &macs {
        controller.set_node(mac, "active", None);
    }
    let refs: Vec<&str> = macs.iter().map(String::as_str).collect();
    let agent = synced_agent_with(
        &controller,
        &refs,
        "[offline]\ndefault_action = \"last_known\"\n",
    );
    for mac in &macs {
        assert!(boot(&agent, mac).contains("action=local source=live"));
    }
    let (status, stopped) = agent.terminate();
    assert!(status.success(), "{status:?}");
    stopped.assert_every_task_joined();
    controller.down();
    let agent = stopped.start();
    for mac in &macs {
        let (code, node) = call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None);
        assert_eq!(code, 200, "{node}");
        assert_eq!(node["last_served"]["action"], "local", "{mac}: {node}");
    }
}

/// Issue 19, PureBoot's clock: its `updated_at` moves on every write (an
/// edit of the hostname, an installer's report) while `state_changed_at`
/// stays null until the state first changes. A node renamed at the
/// controller while an operator's change to it waits in the queue has not
/// changed state: the change is sent, not taken for a state mismatch. And a failed install stays `installing` at PureBoot
/// until its third failure: the site's report is delivered, no conflict
/// is opened, and the cache takes the controller's state.
#[test]
fn pureboot_updated_at_moving_on_every_write_is_not_a_state_change() {
    let controller = FakeController::pureboot();
    let (fresh, failing) = ("52:54:00:00:5e:01", "52:54:00:00:5e:02");
    controller.set_node(fresh, "discovered", None);
    controller.set_node(failing, "installing", None);
    let agent = synced_agent_with(&controller, &[fresh, failing], MANUAL);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    for (mac, event) in [(fresh, "heartbeat"), (failing, "install_failed")] {
        let body = json!({"mac_address": mac, "event": event, "message": "disk error"});
        let (code, text) =
            http(agent.http, "POST", "/api/v1/report", None, Some(&body)).expect("answer");
        assert_eq!(code, 202, "{text}");
    }
    assert_eq!(set_state(&agent, fresh, "pending", "op-1").0, 202);
    controller.edit_hostname(fresh, "renamed-at-the-controller");
    controller.up();
    wait_until(LONG, "queue drained", || queue_stats(&agent)["total"] == 0);
    assert_eq!(delivered_counts(&controller).get("op-1"), Some(&1), "sent");
    assert_eq!(controller.node(fresh).expect("node")["state"], "pending");
    for mac in [fresh, failing] {
        for status in ["open", "resolved"] {
            assert!(
                conflict_of(&agent, mac, status).is_none(),
                "no conflict for {mac}: {:?}",
                conflict_of(&agent, mac, status)
            );
        }
    }
    // PureBoot retries the install: the node is still installing there.
    assert_eq!(
        controller.node(failing).expect("node")["state"],
        "installing"
    );
    let (status, report) = call(&agent, "POST", "/api/v1/sync?full=true", None);
    assert_eq!(status, 200, "{report}");
    let (_, node) = call(&agent, "GET", &format!("/api/v1/nodes/{failing}"), None);
    assert_eq!(node["data"]["state"], "installing", "{node}");
}
