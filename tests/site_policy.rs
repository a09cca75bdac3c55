//! The site policy from the controller (DESIGN §15), against both fakes
//! over real HTTP: the autonomy level enforced offline, taken at the next
//! registration or sync unless pinned, kept across a restart; the cache
//! policies' prefetch (controller downloads counted); `last_write`; the
//! operators' pause of the hand-over and the connectivity check.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use std::time::Duration;

use common::controller::{Dialect, FakeController};
use common::{AgentBuilder, admin_call, curl, get_json, mode, wait_until};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

fn start_agent(controller: &FakeController, extra: &str) -> common::Agent {
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&common::quick_link_config(controller))
        .config(extra)
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    agent
}

fn status(agent: &common::Agent) -> Value {
    get_json(&agent.url("/api/v1/status"))
}

fn policy_value(agent: &common::Agent, name: &str) -> (String, String) {
    let value = &status(agent)["policy"][name];
    (
        value["value"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| value["value"].to_string()),
        value["origin"].as_str().unwrap_or_default().to_string(),
    )
}

fn call(agent: &common::Agent, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    admin_call(agent, method, path, body.as_deref())
}

fn set_state(agent: &common::Agent, mac: &str, state: &str) -> (u16, Value) {
    call(
        agent,
        "PATCH",
        &format!("/api/v1/nodes/{mac}/state"),
        Some(json!({"state": state, "comment": "site operator"})),
    )
}

fn boot(agent: &common::Agent, mac: &str) -> String {
    let (status, _, body) = curl(&[&agent.url(&format!("/api/v1/boot?mac={mac}&arch=x86_64"))]);
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body).into_owned()
}

/// (kind, node) of every queued item.
fn queued(agent: &common::Agent) -> Vec<(String, String)> {
    let (status, page) = call(agent, "GET", "/api/v1/queue?limit=1000", None);
    assert_eq!(status, 200, "{page}");
    page["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap_or("").to_string(),
                i["node"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// One autonomy level offline, as DESIGN §15 says, set at the controller
/// (PureBoot: the site's column; §6: the registration answer and the site
/// record).
fn autonomy_offline(dialect: Dialect, level: &str) {
    let controller = FakeController::start_as(dialect);
    let (a, b, c, unknown) = (
        "52:54:00:00:b1:01",
        "52:54:00:00:b1:02",
        "52:54:00:00:b1:03",
        "52:54:00:00:b1:09",
    );
    for mac in [a, b, c] {
        controller.set_node(mac, "active", None);
    }
    controller.set_site_policy(json!({"autonomy_level": level}));
    let agent = start_agent(&controller, "");
    wait_until(LONG, "the level taken", || {
        policy_value(&agent, "autonomy") == (level.to_string(), "controller".to_string())
    });
    wait_until(LONG, "nodes synced", || {
        call(&agent, "GET", &format!("/api/v1/nodes/{c}"), None).0 == 200
    });
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");

    // A MAC first seen offline: its registration is queued at every level
    // (once, however often it boots); only readonly creates no node.
    for _ in 0..3 {
        let script = boot(&agent, unknown);
        assert!(script.contains("source=offline"), "{script}");
    }
    let (found, _) = call(&agent, "GET", &format!("/api/v1/nodes/{unknown}"), None);
    assert_eq!(
        found,
        if level == "readonly" { 404 } else { 200 },
        "{level}"
    );

    // Operator changes.
    let expected: [(&str, &str, u16); 3] = match level {
        "readonly" => [
            (a, "installed", 409),
            (b, "pending", 409),
            (c, "reprovision", 409),
        ],
        "limited" => [
            (a, "installed", 202),
            (b, "pending", 409),
            (c, "reprovision", 409),
        ],
        _ => [
            (a, "installed", 202),
            (b, "pending", 202),
            (c, "reprovision", 202),
        ],
    };
    for (mac, state, code) in expected {
        let (got, answer) = set_state(&agent, mac, state);
        assert_eq!(got, code, "{level}: {mac} to {state}: {answer}");
        if code == 409 {
            let error = answer["error"].as_str().unwrap_or_default();
            assert!(
                error.contains(&format!("autonomy level is {level}")),
                "{answer}"
            );
            assert_eq!(answer["refused_by"], "site_policy", "{answer}");
            // Refused: the cache keeps its state.
            let (_, node) = call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None);
            assert_eq!(node["data"]["state"], "active", "{node}");
        }
    }
    // An operator's new node.
    let (got, answer) = call(
        &agent,
        "POST",
        "/api/v1/nodes",
        Some(json!({"mac": "52:54:00:00:b1:0a"})),
    );
    assert_eq!(got, if level == "readonly" { 409 } else { 202 }, "{answer}");
    // An installer report is a fact: queued at every level.
    let (got, answer) = call(
        &agent,
        "POST",
        "/api/v1/report",
        Some(json!({"mac_address": a, "event": "install_progress", "message": "50%"})),
    );
    assert_eq!(got, 202, "{level}: {answer}");

    let items = queued(&agent);
    let count = |kind: &str| items.iter().filter(|(k, _)| k == kind).count();
    let registrations = items
        .iter()
        .filter(|(k, n)| k == "registration" && n == unknown)
        .count();
    // And the operator's new node: a registration, except at readonly.
    let added = items
        .iter()
        .filter(|(k, n)| k == "registration" && n == "52:54:00:00:b1:0a")
        .count();
    assert_eq!(
        added,
        usize::from(level != "readonly"),
        "{level}: {items:?}"
    );
    assert_eq!(registrations, 1, "{level}: {items:?}");
    let state_updates = match level {
        "readonly" => 0,
        "limited" => 1,
        _ => 3,
    };
    assert_eq!(count("state_update"), state_updates, "{level}: {items:?}");

    // Back: the registration the site held lands, and the node is cached
    // with the controller's record (at readonly too, though no node was
    // created here meanwhile).
    controller.up();
    wait_until(LONG, "registered at the controller", || {
        controller.node(unknown).is_some()
    });
    wait_until(LONG, "cached from the controller", || {
        let (code, node) = call(&agent, "GET", &format!("/api/v1/nodes/{unknown}"), None);
        code == 200
            && !node["data"]["id"]
                .as_str()
                .unwrap_or("local-")
                .starts_with("local-")
    });
    let reports = items.iter().filter(|(k, n)| k == "event" && n == a).count();
    assert_eq!(reports, 1, "{level}: {items:?}");
}

#[test]
fn pureboot_readonly_refuses_offline_operator_writes() {
    autonomy_offline(Dialect::PureBoot, "readonly");
}

#[test]
fn pureboot_limited_refuses_only_what_starts_an_install() {
    autonomy_offline(Dialect::PureBoot, "limited");
}

#[test]
fn pureboot_full_takes_every_offline_write() {
    autonomy_offline(Dialect::PureBoot, "full");
}

#[test]
fn design_readonly_refuses_offline_operator_writes() {
    autonomy_offline(Dialect::Design, "readonly");
}

#[test]
fn design_limited_refuses_only_what_starts_an_install() {
    autonomy_offline(Dialect::Design, "limited");
}

#[test]
fn design_full_takes_every_offline_write() {
    autonomy_offline(Dialect::Design, "full");
}

/// The level changed at the controller reaches the agent at the next full
/// sync (the site record) and at the next registration; a local pin
/// holds against it; the last value holds across a restart with the
/// controller gone.
fn level_follows_the_controller_unless_pinned(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    let node = "52:54:00:00:b2:01";
    controller.set_node(node, "active", None);
    controller.set_site_policy(json!({"autonomy_level": "full", "cache_policy": "assigned"}));
    let agent = start_agent(&controller, "");
    let pinned = start_agent(&controller, "[site]\nautonomy = \"full\"\n");
    for agent in [&agent, &pinned] {
        wait_until(LONG, "full taken", || {
            policy_value(agent, "autonomy").0 == "full"
        });
    }
    assert_eq!(policy_value(&pinned, "autonomy").1, "config");

    controller.set_site_policy(json!({"autonomy_level": "readonly"}));
    for agent in [&agent, &pinned] {
        let (code, report) = call(agent, "POST", "/api/v1/sync?full=true", None);
        assert_eq!(code, 200, "{report}");
    }
    assert_eq!(
        policy_value(&agent, "autonomy"),
        ("readonly".into(), "controller".into())
    );
    assert_eq!(
        policy_value(&pinned, "autonomy"),
        ("full".into(), "config".into())
    );
    agent.wait_for_log("site policy changed");
    let (_, log) = call(&agent, "GET", "/api/v1/sync/log", None);
    assert!(
        log.to_string().contains("autonomy=\\\"readonly\\\""),
        "{log}"
    );

    // A value the agent does not know: logged, and the last one stays.
    controller.set_site_policy(json!({"autonomy_level": "sovereign"}));
    let (code, _) = call(&agent, "POST", "/api/v1/sync?full=true", None);
    assert_eq!(code, 200);
    let line = agent.wait_for_log("not understood");
    assert!(line.contains("sovereign"), "{line}");
    assert_eq!(
        policy_value(&agent, "autonomy"),
        ("readonly".into(), "controller".into())
    );

    // At registration too: the controller forgets the agent, which
    // registers again and takes the answer's level.
    controller.set_site_policy(json!({"autonomy_level": "limited"}));
    let registrations = controller.calls_to("POST", "/api/v1/agents/register").len();
    controller.forget_agent(true);
    wait_until(LONG, "registered again", || {
        controller.calls_to("POST", "/api/v1/agents/register").len() > registrations
    });
    controller.forget_agent(false);
    wait_until(LONG, "limited taken", || {
        policy_value(&agent, "autonomy").0 == "limited"
    });

    // Gone, and restarted: the last level holds.
    controller.down();
    let agent = agent.kill_and_restart();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    assert_eq!(
        policy_value(&agent, "autonomy"),
        ("limited".into(), "controller".into())
    );
    let (code, answer) = set_state(&agent, node, "pending");
    assert_eq!(code, 409, "{answer}");
    // The pinned agent takes it.
    wait_until(LONG, "offline", || mode(&pinned) == "offline");
    let (code, answer) = set_state(&pinned, node, "pending");
    assert_eq!(code, 202, "{answer}");
}

#[test]
fn pureboot_level_follows_the_controller_unless_pinned() {
    level_follows_the_controller_unless_pinned(Dialect::PureBoot);
}

#[test]
fn design_level_follows_the_controller_unless_pinned() {
    level_follows_the_controller_unless_pinned(Dialect::Design);
}

/// DESIGN §15 cache policies on one fleet (§6 fake: it lists workflows):
/// which files are fetched ahead, counted at the controller.
fn prefetched_under(policy: Value, pin: &str) -> Vec<String> {
    let controller = FakeController::start();
    let part = common::pattern(64 << 10, 7);
    for id in ["debian", "ubuntu", "rocky", "alma", "safe"] {
        for file in ["vmlinuz", "initrd.gz"] {
            controller.add_file(&format!("{id}/{file}"), &part);
        }
        controller.add_workflow(json!({"id": id, "name": id, "method": "kernel",
            "kernel": format!("{id}/vmlinuz"), "initrd": [format!("{id}/initrd.gz")],
            "offline_safe": id == "safe"}));
    }
    controller.set_node("52:54:00:00:b3:01", "pending", Some("debian"));
    controller.set_node("52:54:00:00:b3:02", "active", Some("ubuntu"));
    controller.set_site_policy(policy);
    let agent = start_agent(&controller, pin);
    agent.wait_for_log("prefetch pass done");
    let mut fetched: Vec<String> = controller
        .calls_to("GET", "/api/v1/files/")
        .iter()
        .map(|c| c.path["/api/v1/files/".len()..].to_string())
        .collect();
    fetched.sort();
    fetched.dedup();
    fetched
}

fn files(ids: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = ids
        .iter()
        .flat_map(|id| [format!("{id}/initrd.gz"), format!("{id}/vmlinuz")])
        .collect();
    all.sort();
    all
}

#[test]
fn each_cache_policy_prefetches_what_it_says() {
    // minimal (PureBoot's default): nothing ahead but the offline_safe
    // workflow's files, kept so the site can install offline.
    assert_eq!(
        prefetched_under(json!({"cache_policy": "minimal"}), ""),
        files(&["safe"])
    );
    assert_eq!(
        prefetched_under(json!({"cache_policy": "assigned"}), ""),
        files(&["debian", "safe"])
    );
    assert_eq!(
        prefetched_under(json!({"cache_policy": "mirror"}), ""),
        files(&["alma", "debian", "rocky", "safe", "ubuntu"])
    );
    assert_eq!(
        prefetched_under(
            json!({"cache_policy": "pattern", "cache_patterns_json": "[\"r*/vmlinuz\", \"alma/*\"]"}),
            ""
        ),
        {
            let mut want = files(&["alma", "safe"]);
            want.push("rocky/vmlinuz".into());
            want.sort();
            want
        }
    );
    // The operator pins mirror here against the controller's minimal.
    assert_eq!(
        prefetched_under(
            json!({"cache_policy": "minimal"}),
            "[cache]\npolicy = \"mirror\"\n"
        ),
        files(&["alma", "debian", "rocky", "safe", "ubuntu"])
    );
}

/// `last_write` (DESIGN §15), set at the controller: an operator's
/// offline change made after the controller's last change wins; one made
/// before it yields. PureBoot: no versions (the times are compared before
/// sending); §6: the 409 to `base_version`.
fn last_write_settles_by_time(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    controller.check_versions();
    let (later_here, later_there) = ("52:54:00:00:b4:01", "52:54:00:00:b4:02");
    controller.set_node(later_here, "installed", None);
    controller.set_node(later_there, "installed", None);
    controller.set_site_policy(json!({"conflict_resolution": "last_write"}));
    let agent = start_agent(&controller, "");
    wait_until(LONG, "strategy taken", || {
        policy_value(&agent, "conflict_strategy").0 == "last_write"
    });
    wait_until(LONG, "nodes synced", || {
        call(&agent, "GET", &format!("/api/v1/nodes/{later_there}"), None).0 == 200
    });
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    for mac in [later_here, later_there] {
        let (code, answer) = set_state(&agent, mac, "active");
        assert_eq!(code, 202, "{answer}");
    }
    // Meanwhile at the controller: both move on; one of them at a time
    // after the site's change (the fake's clock is set for it).
    controller.set_node(later_here, "reprovision", None);
    controller.set_node_changed_in_future(later_there, "reprovision");
    controller.up();
    wait_until(LONG, "both settled", || {
        let (_, page) = call(&agent, "GET", "/api/v1/conflicts?status=resolved", None);
        page["data"].as_array().map(Vec::len) == Some(2)
    });
    let (_, page) = call(&agent, "GET", "/api/v1/conflicts?status=resolved", None);
    for conflict in page["data"].as_array().unwrap() {
        let expected = if conflict["mac"] == later_here {
            "keep_local"
        } else {
            "keep_central"
        };
        assert_eq!(conflict["resolution"], expected, "{conflict}");
        assert_eq!(conflict["resolved_by"], "policy", "{conflict}");
        // Both times kept.
        assert!(conflict["local"]["changed_at"].is_string(), "{conflict}");
        assert!(conflict["central"]["updated_at"].is_string(), "{conflict}");
    }
    wait_until(LONG, "the site's change landed", || {
        controller.node(later_here).expect("node")["state"] == "active"
    });
    assert_eq!(
        controller.node(later_there).expect("node")["state"],
        "reprovision"
    );
}

#[test]
fn pureboot_last_write_settles_by_time() {
    last_write_settles_by_time(Dialect::PureBoot);
}

#[test]
fn design_last_write_settles_by_time() {
    last_write_settles_by_time(Dialect::Design);
}

/// The operators hold the hand-over (DESIGN §15): paused, writes queue
/// even online, syncs are refused, boots go on; kept across a restart;
/// resumed, the queue drains. The connectivity check answers now.
#[test]
fn sync_pause_holds_the_queue_across_a_restart_until_resumed() {
    let controller = FakeController::pureboot();
    let node = "52:54:00:00:b5:01";
    controller.set_node(node, "installed", None);
    let agent = start_agent(&controller, "");
    wait_until(LONG, "synced", || {
        call(&agent, "GET", &format!("/api/v1/nodes/{node}"), None).0 == 200
    });
    let (code, answer) = call(&agent, "POST", "/api/v1/sync/pause", None);
    assert_eq!(
        (code, answer["paused"].clone()),
        (200, json!(true)),
        "{answer}"
    );
    assert_eq!(status(&agent)["sync_paused"], true);

    let (code, answer) = set_state(&agent, node, "active");
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["offline"], false, "{answer}");
    let (code, answer) = call(&agent, "POST", "/api/v1/sync?full=true", None);
    assert_eq!(code, 409, "{answer}");
    // Boots go on as online ones: the controller's record decides them
    // until the held change is handed over.
    let script = boot(&agent, node);
    assert!(script.contains("source=live"), "{script}");

    let (code, check) = call(&agent, "POST", "/api/v1/connectivity/check", None);
    assert_eq!(code, 200, "{check}");
    assert_eq!(check["reachable"], true, "{check}");

    let stopped = agent.stop();
    let agent = stopped.start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    assert_eq!(status(&agent)["sync_paused"], true);
    let out = agent.cli(&["status", "--url", &agent.url("")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sync: PAUSED"), "{text}");
    assert!(text.contains("policy: autonomy full (default)"), "{text}");
    assert_eq!(controller.node(node).expect("node")["state"], "installed");

    let out = agent.cli(&["sync", "resume", "--url", &agent.url("")]);
    assert!(out.status.success(), "{out:?}");
    wait_until(LONG, "the queue drained", || {
        controller.node(node).expect("node")["state"] == "active"
    });
    assert_eq!(status(&agent)["sync_paused"], false);

    controller.down();
    let out = agent.cli(&["sync", "check", "--url", &agent.url("")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"reachable\": false"), "{text} {out:?}");
}
