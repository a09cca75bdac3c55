//! The agent against a fake controller over real HTTP: registration,
//! heartbeat, connectivity, sync, online boot decisions with the lookup
//! deadline and coalescing, garbage answers, heartbeat commands.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use std::time::Duration;

use common::controller::{Dialect, FakeController, Mode};
use common::{AgentBuilder, admin_token, curl, get_json, mode, wait_until};
use serde_json::json;

const LONG: Duration = Duration::from_secs(30);

fn central_config(controller: &FakeController) -> String {
    format!(
        "[central]\n{}check_interval = \"200ms\"\nrequest_timeout = \"1s\"\n\
         boot_lookup_deadline = \"300ms\"\nfailure_threshold = 2\nrecovery_threshold = 1\n\
         heartbeat_interval = \"1s\"\nsync_interval = \"60s\"\n",
        controller.central_toml()
    )
}

/// An agent for site fra1 linked to `controller`, once it is online.
fn online_agent(controller: &FakeController) -> common::Agent {
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&central_config(controller))
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    agent
}

fn boot(agent: &common::Agent, mac: &str) -> (String, String) {
    let (status, headers, body) =
        curl(&[&agent.url(&format!("/api/v1/boot?mac={mac}&arch=x86_64"))]);
    assert_eq!(status, 200);
    let source = headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-siteboot-source:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (String::from_utf8_lossy(&body).into_owned(), source)
}

fn registers_and_heartbeats_with_real_values(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    controller.set_node("52:54:00:00:20:01", "active", None);
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&central_config(&controller))
        .start();
    wait_until(LONG, "registration", || {
        !controller
            .calls_to("POST", "/api/v1/agents/register")
            .is_empty()
    });
    wait_until(LONG, "registration answered", || {
        controller.calls_to("POST", "/api/v1/agents/register")[0].status != 0
    });
    let registration = &controller.calls_to("POST", "/api/v1/agents/register")[0];
    assert_eq!(registration.status, 200, "{:?}", registration.body);
    assert_eq!(registration.body["site_id"], "fra1");
    assert_eq!(
        registration.body["agent_version"],
        env!("CARGO_PKG_VERSION")
    );
    wait_until(LONG, "online", || mode(&agent) == "online");
    let (body, source) = boot(&agent, "52:54:00:00:20:01");
    assert_eq!(source, "live");
    assert!(
        body.contains("siteboot: mac=52:54:00:00:20:01 state=active action=local source=live"),
        "{body}"
    );
    boot(&agent, "52:54:00:00:20:02");
    wait_until(LONG, "a heartbeat counting both nodes", || {
        controller
            .calls_to("POST", "/api/v1/agents/heartbeat")
            .iter()
            .any(|c| c.body["nodes_seen_last_hour"] == 2)
    });
    let beat = controller
        .calls_to("POST", "/api/v1/agents/heartbeat")
        .into_iter()
        .rfind(|c| c.body["nodes_seen_last_hour"] == 2)
        .expect("heartbeat");
    let b = &beat.body;
    assert_eq!(b["site_id"], "fra1");
    // PureBoot answers 422 to services that are not strings.
    assert_eq!(b["services"], json!({"tftp": "ok", "http": "ok"}), "{b}");
    wait_until(LONG, "a heartbeat answered", || {
        controller
            .calls_to("POST", "/api/v1/agents/heartbeat")
            .iter()
            .any(|c| c.status != 0)
    });
    assert!(
        controller
            .calls_to("POST", "/api/v1/agents/heartbeat")
            .iter()
            .all(|c| c.status == 200 || c.status == 0),
        "every heartbeat taken"
    );
    assert!(
        b["disk_usage_percent"]
            .as_f64()
            .is_some_and(|p| p > 0.0 && p <= 100.0),
        "{b}"
    );
    assert_eq!(b["active_boots"], 0);
    assert!(b["uptime_seconds"].as_u64().is_some(), "{b}");
    assert!(
        b["last_sync_at"]
            .as_str()
            .is_some_and(|s| s.starts_with("20")),
        "{b}"
    );
    assert!(b["cache_hit_rate"].as_f64().is_some(), "{b}");
    for field in [
        "pending_sync_items",
        "failed_sync_items",
        "conflicts_pending",
        "services",
        "timestamp",
    ] {
        assert!(!b[field].is_null(), "{field} missing: {b}");
    }
}

fn cold_start_with_the_controller_down_then_registration_when_it_appears(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    controller.down();
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&central_config(&controller))
        .start();
    assert_eq!(mode(&agent), "offline");
    let (body, source) = boot(&agent, "52:54:00:00:21:01");
    assert_eq!(source, "offline");
    assert!(body.contains("action=local source=offline"), "{body}");
    assert!(
        body.contains("*** siteboot OFFLINE: central unreachable since "),
        "{body}"
    );
    controller.up();
    wait_until(LONG, "registration after the controller appeared", || {
        !controller
            .calls_to("POST", "/api/v1/agents/register")
            .is_empty()
    });
    wait_until(LONG, "online", || mode(&agent) == "online");
}

fn offline_after_the_threshold_online_after_recovery_logged_once_each(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    let agent = online_agent(&controller);
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    let status = get_json(&agent.url("/api/v1/status"));
    assert!(status["offline_since"].as_str().is_some(), "{status}");
    assert_eq!(status["online"], false);
    // Probes keep failing every 200 ms; the transition is logged once.
    std::thread::sleep(Duration::from_millis(800));
    controller.up();
    wait_until(LONG, "online again", || mode(&agent) == "online");
    let token = admin_token(&agent);
    let log = get_json_auth(&agent.url("/api/v1/sync/log?limit=1000"), &token);
    let kinds: Vec<&str> = log["data"]
        .as_array()
        .expect("log")
        .iter()
        .rev()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| *k == "online" || *k == "offline")
        .collect();
    assert_eq!(kinds, ["online", "offline", "online"], "{log}");
}

fn get_json_auth(url: &str, token: &str) -> serde_json::Value {
    let (status, _, body) = curl(&["-H", &format!("Authorization: Bearer {token}"), url]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("json")
}

fn post_sync(agent: &common::Agent, token: &str, full: bool) -> serde_json::Value {
    let (status, _, body) = curl(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {token}"),
        &agent.url(&format!("/api/v1/sync?full={full}")),
    ]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("json")
}

fn full_and_incremental_sync(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    controller.add_workflow(
        json!({"id": "ubuntu", "name": "Ubuntu", "method": "kernel", "kernel": "u/vmlinuz"}),
    );
    controller.set_node("52:54:00:00:22:01", "active", None);
    controller.set_node("52:54:00:00:22:02", "pending", Some("ubuntu"));
    controller.set_raw_node(
        "broken",
        json!({"id": "x", "mac": "not-a-mac", "state": "active"}),
    );
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&central_config(&controller))
        .start();
    let token = admin_token(&agent);
    // The admin API wants the token.
    let (status, _, _) = curl(&["-X", "POST", &agent.url("/api/v1/sync?full=true")]);
    assert_eq!(status, 401);
    wait_until(LONG, "online", || mode(&agent) == "online");
    let report = post_sync(&agent, &token, true);
    assert_eq!(report["received"], 2, "{report}");
    // PureBoot's central lists no workflows with the nodes.
    let workflows = match dialect {
        Dialect::Design => 1,
        Dialect::PureBoot => 0,
    };
    assert_eq!(report["workflows"], workflows, "{report}");
    assert_eq!(
        report["errors"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(get_json(&agent.url("/api/v1/status"))["nodes_cached"], 2);

    controller.set_raw_node("broken", json!(null));
    controller.remove_node("broken");
    controller.set_node("52:54:00:00:22:03", "installed", None);
    let report = post_sync(&agent, &token, false);
    match dialect {
        Dialect::Design => {
            // Only the change since the cursor: one node, not all three.
            // (The agent's own incremental sync, every 200 ms here, may
            // have taken it first; then this one receives nothing.)
            let received = report["received"].as_u64().unwrap_or(99);
            assert!(received <= 1, "only the change since the cursor: {report}");
            let last = controller
                .calls_to("GET", "/api/v1/sites/fra1/nodes")
                .pop()
                .expect("call");
            assert!(
                last.query.contains("since="),
                "incremental sync sends the cursor: {:?}",
                last.query
            );
        }
        Dialect::PureBoot => {
            // No cursor was ever given: only a full sync can tell, so the
            // request for an incremental one runs a full one.
            assert_eq!(report["full"], true, "{report}");
            assert_eq!(report["received"], 3, "{report}");
            assert!(
                controller
                    .calls_to("GET", "/api/v1/sites/fra1/nodes")
                    .iter()
                    .all(|c| !c.query.contains("since=")),
                "no cursor is ever sent"
            );
        }
    }
    wait_until(LONG, "the changed node cached", || {
        get_json(&agent.url("/api/v1/status"))["nodes_cached"] == 3
    });

    controller.remove_node("52:54:00:00:22:01");
    let report = post_sync(&agent, &token, true);
    assert_eq!(report["marked_missing"], 1, "{report}");
    assert_eq!(
        get_json(&agent.url("/api/v1/status"))["nodes_cached"],
        3,
        "marked, not dropped"
    );
    let log = get_json_auth(&agent.url("/api/v1/sync/log"), &token);
    let text = log.to_string();
    assert!(
        text.contains("full_sync") && text.contains("node_error"),
        "{text}"
    );
    assert_eq!(
        text.contains("incremental_sync"),
        dialect == Dialect::Design,
        "incremental syncs only with a cursor: {text}"
    );
}

fn slow_controller_answers_from_cache_and_refreshes_in_the_background(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    let mac = "52:54:00:00:23:01";
    controller.set_node(mac, "active", None);
    let agent = online_agent(&controller);
    let (_, source) = boot(&agent, mac);
    assert_eq!(source, "live");
    controller.set_node(mac, "retired", None);
    controller.set_mode(Mode::Slow(Duration::from_millis(700)));
    let (body, source) = boot(&agent, mac);
    assert_eq!(source, "cache");
    assert!(
        body.contains("state=active action=local source=cache"),
        "{body}"
    );
    // (slower than the 300 ms deadline, faster than the 1 s request timeout)
    // The lookup finishes in the background and updates the cache: a later
    // boot, still answered from the cache, shows the controller's change.
    wait_until(LONG, "the background lookup updated the cache", || {
        let (body, source) = boot(&agent, mac);
        source == "cache" && body.contains("state=retired action=retired source=cache")
    });
}

fn concurrent_boots_for_one_mac_make_one_controller_call(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    let mac = "52:54:00:00:24:01";
    // Pending: a boot that may install always asks for its own MAC (a
    // disk-booting node is confirmed by the change feed instead, below).
    controller.set_node(mac, "pending", None);
    let agent = online_agent(&controller);
    // The one lookup stays in flight far longer than the 100 boots take,
    // however slow the machine: every boot finds it under way (a window
    // of 800 ms raced a loaded machine). Calls are recorded as they
    // arrive, before the fake's delay.
    controller.set_mode(Mode::SlowLookups(Duration::from_secs(30)));
    let before = controller.calls_to("GET", "/api/v1/nodes").len();
    let url = agent.url(&format!("/api/v1/boot?mac={mac}"));
    let mut args = vec![
        "-Z".to_string(),
        "--parallel-max".into(),
        "100".into(),
        "-o".into(),
        "/dev/null".into(),
    ];
    for _ in 0..100 {
        args.push(url.clone());
    }
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(&args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lookups = controller.calls_to("GET", "/api/v1/nodes").len() - before;
    assert_eq!(lookups, 1, "100 concurrent boots must share one lookup");
    controller.set_mode(Mode::Healthy);
}

fn garbage_and_errors_never_panic_or_poison_the_cache(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    let mac = "52:54:00:00:25:01";
    controller.set_node(mac, "active", None);
    let agent = online_agent(&controller);
    boot(&agent, mac);
    for bad in [Mode::Garbage, Mode::Erroring] {
        controller.set_mode(bad);
        for _ in 0..3 {
            let (body, source) = boot(&agent, mac);
            assert_eq!(source, "cache", "{bad:?}");
            assert!(
                body.contains("state=active action=local"),
                "{bad:?}: {body}"
            );
        }
        // A controller that answers (even badly) is up.
        assert_eq!(mode(&agent), "online", "{bad:?}");
    }
    controller.set_mode(Mode::Healthy);
    let (body, source) = boot(&agent, mac);
    assert_eq!(source, "live");
    assert!(body.contains("state=active"), "{body}");
    let log = agent.log_lines().join("\n");
    assert!(!log.contains("panicked"), "{log}");
}

fn unknown_mac_is_registered_at_the_controller(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    let agent = online_agent(&controller);
    let (body, source) = boot(&agent, "52-54-00-00-26-01");
    assert_eq!(source, "live");
    assert!(
        body.contains("mac=52:54:00:00:26:01 state=discovered action=discovery source=live"),
        "{body}"
    );
    let created = controller.calls_to("POST", "/api/v1/nodes");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].body["mac_address"], "52:54:00:00:26:01");
    assert_eq!(created[0].body["site_id"], "fra1");
    assert!(controller.node("52:54:00:00:26:01").is_some());
}

/// Issue 10's "done when", against both controllers (the PureBoot-shaped
/// one being the point): live decisions for active, pending-with-workflow
/// and installed nodes; a change at the controller seen at the next boot;
/// an unknown MAC booting as i386/pcbios registered as x86_64; an
/// installer report keeping its metadata; nothing called garbage.
fn a_real_controllers_answers_drive_live_decisions(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    let (active, pending, installed, stranger) = (
        "52:54:00:00:2d:01",
        "52:54:00:00:2d:02",
        "52:54:00:00:2d:03",
        "52:54:00:00:2d:04",
    );
    controller.set_node(active, "active", None);
    controller.set_node(pending, "pending", Some("debian"));
    controller.set_node(installed, "installed", None);
    let workflow = controller.offer_workflow(json!({
        "id": "debian", "name": "Debian", "method": "kernel",
        "kernel": "debian/vmlinuz", "initrd": ["debian/initrd.gz"], "cmdline": "auto"
    }));
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&central_config(&controller))
        .config(&workflow)
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    let decision = |mac: &str| boot(&agent, mac).0;
    assert!(decision(active).contains(&format!(
        "mac={active} state=active action=local source=live"
    )));
    assert!(decision(pending).contains(&format!(
        "mac={pending} state=pending action=install source=live"
    )));
    assert!(decision(installed).contains(&format!(
        "mac={installed} state=installed action=local source=live"
    )));
    // A change made at the controller is what the next boot gets.
    controller.set_node(active, "reprovision", Some("debian"));
    let next = decision(active);
    assert!(
        next.contains("state=reprovision action=install source=live"),
        "{next}"
    );

    // iPXE on a BIOS x86-64 machine says i386.
    let (status, _, body) = curl(&[&agent.url(&format!(
        "/api/v1/boot?mac={stranger}&arch=i386&platform=pcbios"
    ))]);
    assert_eq!(status, 200);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("state=discovered action=discovery source=live"),
        "{body}"
    );
    let created = controller.calls_to("POST", "/api/v1/nodes");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].status, 201, "{:?}", created[0].body);
    assert_eq!(created[0].body["arch"], "x86_64");
    assert_eq!(created[0].body["boot_mode"], "bios");

    // An installer's report keeps its metadata (as event_metadata).
    let (status, _, answer) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &json!({"mac_address": pending, "event": "install_progress",
                "metadata": {"percent": 40}})
        .to_string(),
        &agent.url("/api/v1/report"),
    ]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let report = controller
        .applied()
        .into_iter()
        .find(|w| w.op == "report" && w.mac == pending && w.body["event"] == "install_progress")
        .expect("report applied");
    assert_eq!(
        report.body["event_metadata"]["percent"], 40,
        "{:?}",
        report.body
    );

    // A change the controller refuses comes back to the operator as it
    // was answered (400 naming the valid transitions: both fakes have
    // PureBoot's state machine, DESIGN §3).
    {
        let token = admin_token(&agent);
        let (status, _, answer) = curl(&[
            "-X",
            "PATCH",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"state": "installing"}"#,
            &agent.url(&format!("/api/v1/nodes/{installed}/state")),
        ]);
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("valid transitions") || answer.contains("valid: "),
            "{answer}"
        );
        assert_eq!(
            controller.node(installed).expect("node")["state"],
            "installed"
        );
    }

    let log = agent.log_lines().join("\n");
    assert!(!log.contains("garbage"), "{log}");
}

/// §6 controllers only: PureBoot's heartbeat never delivers a command
/// (its list is always empty), and its fake is as strict.
#[test]
fn heartbeat_commands_take_effect() {
    let dialect = Dialect::Design;
    let controller = FakeController::start_as(dialect);
    let mac = "52:54:00:00:27:01";
    controller.set_node(mac, "retired", None);
    let builder = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&central_config(&controller));
    let template = builder.path().join("templates/retired.ipxe.j2");
    let agent = builder.start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    let (body, _) = boot(&agent, mac);
    assert!(body.contains("RETIRED"), "{body}");
    std::fs::write(&template, "echo custom retirement notice\n").expect("write template");
    let syncs_before = controller.calls_to("GET", "/api/v1/sites/fra1/nodes").len();
    controller.queue_command(json!({"command": "reload_templates", "params": {}}));
    controller.queue_command(json!({"command": "sync", "params": {"full": true}}));
    wait_until(LONG, "reloaded template in use", || {
        boot(&agent, mac).0.contains("custom retirement notice")
    });
    wait_until(LONG, "a full sync on command", || {
        controller
            .calls_to("GET", "/api/v1/sites/fra1/nodes")
            .iter()
            .skip(syncs_before)
            .any(|c| !c.query.contains("since="))
    });
    // invalidate {mac}: the agent fetches that node again at once.
    let lookups = controller.calls_to("GET", "/api/v1/nodes").len();
    controller.queue_command(json!({"command": "invalidate", "params": {"mac": mac}}));
    wait_until(LONG, "a lookup after invalidate", || {
        controller.calls_to("GET", "/api/v1/nodes").len() > lookups
    });
    let sync_log = get_json_auth(&agent.url("/api/v1/sync/log"), &admin_token(&agent)).to_string();
    assert!(
        sync_log.contains("invalidate") && sync_log.contains("reload_templates"),
        "{sync_log}"
    );
    // A controller that forgot the agent gets a new registration.
    let registrations = controller.calls_to("POST", "/api/v1/agents/register").len();
    controller.forget_agent(true);
    wait_until(LONG, "re-registration after 404", || {
        controller.calls_to("POST", "/api/v1/agents/register").len() > registrations
    });
    controller.forget_agent(false);
    // And one that answers 401 (its credentials were reset): the same.
    let registrations = controller.calls_to("POST", "/api/v1/agents/register").len();
    controller.inject(
        "POST",
        "/api/v1/agents/heartbeat",
        None,
        401,
        std::time::Duration::ZERO,
        1,
    );
    wait_until(LONG, "re-registration after 401", || {
        controller.calls_to("POST", "/api/v1/agents/register").len() > registrations
    });
}

fn install_assets_missing_here_are_proxied_from_the_controller(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    let kernel = common::pattern(300_000, 5);
    controller.add_file("debian/vmlinuz", &kernel);
    controller.add_workflow(json!({"id": "debian", "name": "Debian", "method": "kernel",
        "kernel": "debian/vmlinuz", "initrd": ["debian/initrd.gz"]}));
    let mac = "52:54:00:00:28:01";
    controller.set_node(mac, "pending", Some("debian"));
    // PureBoot's central lists no workflows: the agent's config defines
    // the one its node references, under the same id.
    let local_workflows = match dialect {
        Dialect::Design => "",
        Dialect::PureBoot => {
            "[workflows.debian]\nmethod = \"kernel\"\nkernel = \"debian/vmlinuz\"\ninitrd = [\"debian/initrd.gz\"]\n"
        }
    };
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&central_config(&controller))
        .config(local_workflows)
        .asset("local.bin", b"local")
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    let kernel_url = format!("http://{}/assets/debian/vmlinuz", agent.http);
    // The workflow arrives with the first sync, right after start.
    wait_until(LONG, "an install script", || {
        boot(&agent, mac)
            .0
            .contains(&format!("kernel {kernel_url}"))
    });
    let (body, source) = boot(&agent, mac);
    assert_eq!(source, "live");
    assert!(body.contains("action=install source=live"), "{body}");
    let (status, headers, bytes) = curl(&[&kernel_url]);
    assert_eq!(status, 200);
    assert!(bytes == kernel, "proxied kernel differs");
    // The checksum is passed on when the controller sends one (PureBoot's
    // does only when it has one; this fake's PureBoot has none).
    assert_eq!(
        headers.to_ascii_lowercase().contains(&format!(
            "x-checksum-sha256: {}",
            common::controller::sha256_hex(&kernel)
        )),
        dialect == Dialect::Design,
        "{headers}"
    );
    let (status, _, _) = curl(&[&agent.url("/assets/debian/initrd.gz")]);
    assert_eq!(status, 404, "missing at the controller too");
    let (status, _, bytes) = curl(&[&agent.url("/assets/local.bin")]);
    assert_eq!((status, bytes.as_slice()), (200, b"local".as_slice()));
    let (status, _, _) = curl(&["--path-as-is", &agent.url("/assets/../etc/passwd")]);
    assert_eq!(status, 403, "traversal is refused before any proxying");
    controller.down();
    // Fetched once, the kernel is in the content cache (DESIGN §12) ...
    let (status, _, bytes) = curl(&[&kernel_url]);
    assert_eq!(status, 200);
    assert!(bytes == kernel, "cached kernel differs");
    // ... a file never fetched cannot be had.
    let (status, _, _) = curl(&[&agent.url("/assets/debian/other")]);
    assert_eq!(status, 502);
}

fn a_gateway_answering_502_for_a_dead_controller_means_offline(dialect: Dialect) {
    // DESIGN §10: behind a reverse proxy, a dead controller answers 502
    // (or 503, 504) to every call, health check included.
    let controller = FakeController::start_as(dialect);
    let mac = "52:54:00:00:27:01";
    controller.set_node(mac, "active", None);
    let agent = online_agent(&controller);
    boot(&agent, mac);
    controller.set_mode(Mode::BadGateway);
    wait_until(LONG, "offline behind the gateway", || {
        mode(&agent) == "offline"
    });
    let (body, source) = boot(&agent, mac);
    assert_eq!(source, "offline");
    assert!(
        body.contains("state=active action=local source=offline"),
        "{body}"
    );
    controller.set_mode(Mode::Healthy);
    wait_until(LONG, "online again", || mode(&agent) == "online");
}

fn the_first_heartbeat_follows_registration_then_the_controllers_interval(dialect: Dialect) {
    // The agent's own interval is an hour and so is the controller's: the
    // only heartbeat the test can see is the one sent right after
    // registration.
    let controller = FakeController::start_as(dialect);
    controller.set_heartbeat_interval(3600);
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(
            &central_config(&controller)
                .replace("heartbeat_interval = \"1s\"", "heartbeat_interval = \"1h\""),
        )
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    wait_until(LONG, "a heartbeat right after registration", || {
        !controller
            .calls_to("POST", "/api/v1/agents/heartbeat")
            .is_empty()
    });
}

fn a_retired_node_whose_script_fails_still_does_not_boot(dialect: Dialect) {
    // The retired template prints the hostname; one the controller sent
    // with a character refused in scripts makes rendering fail. The
    // fallback keeps the intent: no boot (DESIGN §4).
    let controller = FakeController::start_as(dialect);
    let mac = "52:54:00:00:28:01";
    controller.set_node(mac, "retired", None);
    let mut node = controller.node(mac).expect("node");
    node["hostname"] = json!("db01;reboot");
    controller.set_raw_node(mac, node);
    let agent = online_agent(&controller);
    let (body, _) = boot(&agent, mac);
    assert!(body.contains("action=retired"), "{body}");
    assert!(
        body.contains("could not build this node's script"),
        "the template must have failed for this test to mean anything: {body}"
    );
    assert!(
        !body.contains("sanboot") && !body.contains("exit"),
        "a retired node booted: {body}"
    );
}

fn an_unusable_answer_for_an_uncached_mac_gets_the_offline_default(dialect: Dialect) {
    // DESIGN §4: the controller is up but answers garbage or errors for a
    // MAC the cache does not hold: the machine could be anything (an active
    // server among them), so it gets offline.default_action (here the
    // default, local boot), never discovery, and is not registered.
    let controller = FakeController::start_as(dialect);
    let agent = online_agent(&controller);
    for (n, bad) in [Mode::Garbage, Mode::Erroring].into_iter().enumerate() {
        controller.set_mode(bad);
        let mac = format!("52:54:00:00:29:{n:02x}");
        let (body, source) = boot(&agent, &mac);
        assert_eq!(source, "cache", "{bad:?}");
        assert!(
            body.contains(&format!(
                "mac={mac} state=discovered action=local source=cache"
            )),
            "{bad:?}: {body}"
        );
        assert!(
            !body.contains("OFFLINE"),
            "{bad:?}: the controller is up: {body}"
        );
    }
    assert_eq!(mode(&agent), "online");
    controller.set_mode(Mode::Healthy);
    assert!(
        controller.node("52:54:00:00:29:00").is_none(),
        "no registration from an unusable answer"
    );
}

fn the_asset_proxy_reaches_nothing_but_the_controllers_files(dialect: Dialect) {
    // DESIGN §10: a node asks for encodings that decode to `..`, a query
    // or a fragment once more on the way to the controller.
    let controller = FakeController::start_as(dialect);
    controller.set_node("52:54:00:00:2a:01", "active", None);
    let agent = online_agent(&controller);
    let files_before = controller.calls_to("GET", "/api/v1/files").len();
    for hostile in [
        "/assets/%252e%252e/sites/fra1/nodes",
        "/assets/%252e%252e/%252e%252e/api/v1/sites/fra1/nodes",
        "/assets/%2e%2e/%2e%2e/api/v1/sites/fra1/nodes",
        "/assets/x%3Fsince=0",
        "/assets/x%23frag",
        "/assets/a%2f..%2f..%2fhealth",
        "/assets/a/./b",
        "/assets/a//b",
        // Issue 19 item 13: `;` path parameters (`..;` is `..` to Tomcat,
        // Spring and Jetty) and dots followed by spaces.
        "/assets/a/..;/..;/..;/sites/fra1/nodes",
        "/assets/a/..;x/b",
        "/assets/a/..%20/..%20/sites/fra1/nodes",
        "/assets/a/.%20/b",
        "/assets/a/.../b",
    ] {
        let (status, _, body) = curl(&["--path-as-is", &agent.url(hostile)]);
        let text = String::from_utf8_lossy(&body);
        assert!(
            status == 403 || status == 404 || status == 400,
            "{hostile}: {status} {text}"
        );
        assert!(
            !text.contains("52:54:00:00:2a:01"),
            "{hostile} leaked: {text}"
        );
    }
    let files_after = controller.calls_to("GET", "/api/v1/files");
    assert_eq!(
        files_after.len(),
        files_before,
        "a hostile path reached the controller: {:?}",
        &files_after[files_before..]
            .iter()
            .map(|c| &c.path)
            .collect::<Vec<_>>()
    );
}

fn a_slow_file_from_the_controller_arrives_whole(dialect: Dialect) {
    // DESIGN §10: the proxy is bounded by an idle timeout, not a total one.
    // request_timeout is 2 s here (a pause that long on a loaded machine is
    // rare, unlike one of 1 s); the file takes about 5 s.
    let controller = FakeController::start_as(dialect);
    let initrd = common::pattern(5 << 20, 9);
    controller.add_file("debian/initrd.gz", &initrd);
    controller.set_file_rate(1 << 20);
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(
            &central_config(&controller)
                .replace("request_timeout = \"1s\"", "request_timeout = \"2s\""),
        )
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    let (status, _, bytes) = curl(&[&agent.url("/assets/debian/initrd.gz")]);
    assert_eq!(
        status,
        200,
        "{}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(400)])
    );
    assert!(
        bytes.len() == initrd.len() && bytes == initrd,
        "got {} of {} bytes",
        bytes.len(),
        initrd.len()
    );
}

fn huge_controller_answers_do_not_take_the_agents_memory(dialect: Dialect) {
    // DESIGN §10 / issue 9 item 4: each controller call could buffer up
    // to 64 MiB; 40 concurrent new MACs whose lookups answered 100 MB took
    // the agent to 1.34 GB.
    const NEW_MACS: usize = 40;
    let controller = FakeController::start_as(dialect);
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(
            &central_config(&controller)
                .replace("request_timeout = \"1s\"", "request_timeout = \"20s\""),
        )
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    let before = agent.peak_rss();
    controller.set_mode(Mode::Huge(100 * 1024 * 1024));
    let boots: Vec<_> = (0..NEW_MACS)
        .map(|n| {
            let url = agent.url(&format!(
                "/api/v1/boot?mac=52:54:00:77:00:{n:02x}&arch=x86_64"
            ));
            std::thread::spawn(move || curl(&[&url]).0)
        })
        .collect();
    for boot in boots {
        assert_eq!(boot.join().expect("boot thread"), 200);
    }
    // Every lookup that was started has ended (each logs its failure).
    wait_until(LONG, "every lookup ended", || {
        let started = controller.calls_to("GET", "/api/v1/nodes").len();
        let ended = agent
            .log_lines()
            .iter()
            .filter(|l| l.contains("controller lookup failed"))
            .count();
        started > 0 && ended >= started
    });
    let started = controller.calls_to("GET", "/api/v1/nodes").len();
    let peak = agent.peak_rss();
    println!(
        "peak RSS {} MiB before, {} MiB after {NEW_MACS} boots ({started} lookups) answered 100 MB each",
        before >> 20,
        peak >> 20
    );
    assert!(started <= NEW_MACS, "{started} lookups");
    assert!(
        peak < before + (150 << 20),
        "peak RSS grew from {} MiB to {} MiB",
        before >> 20,
        peak >> 20
    );
    assert!(
        agent
            .log_lines()
            .iter()
            .any(|l| l.contains("larger than this call's limit")),
        "the oversized answers are named in the log"
    );
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
    workflows_nobody_defines_are_named_at_start_and_by_check_config,
    a_real_controllers_answers_drive_live_decisions,
    registers_and_heartbeats_with_real_values,
    cold_start_with_the_controller_down_then_registration_when_it_appears,
    offline_after_the_threshold_online_after_recovery_logged_once_each,
    full_and_incremental_sync,
    slow_controller_answers_from_cache_and_refreshes_in_the_background,
    concurrent_boots_for_one_mac_make_one_controller_call,
    garbage_and_errors_never_panic_or_poison_the_cache,
    unknown_mac_is_registered_at_the_controller,
    install_assets_missing_here_are_proxied_from_the_controller,
    a_gateway_answering_502_for_a_dead_controller_means_offline,
    the_first_heartbeat_follows_registration_then_the_controllers_interval,
    a_retired_node_whose_script_fails_still_does_not_boot,
    an_unusable_answer_for_an_uncached_mac_gets_the_offline_default,
    the_asset_proxy_reaches_nothing_but_the_controllers_files,
    a_slow_file_from_the_controller_arrives_whole,
    huge_controller_answers_do_not_take_the_agents_memory,
);

fn workflows_nobody_defines_are_named_at_start_and_by_check_config(dialect: Dialect) {
    let controller = FakeController::start_as(dialect);
    controller.set_node("52:54:00:00:2e:01", "pending", Some("ghost"));
    controller.set_node("52:54:00:00:2e:02", "pending", Some("debian"));
    let workflow = controller.offer_workflow(json!({
        "id": "debian", "name": "Debian", "method": "kernel", "kernel": "debian/vmlinuz"
    }));
    let builder = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&central_config(&controller))
        .config(&workflow);
    let out = builder.cli_ok(&["check-config"]);
    assert!(
        out.contains("cannot render") && out.contains("ghost") && !out.contains("debian,"),
        "{out}"
    );
    let agent = builder.start();
    let line = agent.wait_for_log("workflows this agent cannot render");
    assert!(line.contains("ghost") && !line.contains("debian"), "{line}");
}

/// Issue 19 item 1 (DESIGN §6): a controller between two API versions
/// sends both `mac` and `mac_address`. Equal values are one field: the
/// nodes are synced and looked up, a retired node is refused, an active
/// one boots its disk as the controller's, and no MAC is registered
/// again. Two different values make only that record unreadable.
#[test]
fn a_controller_that_sends_both_mac_names_is_read() {
    let controller = FakeController::start();
    let (retired, active, torn) = (
        "52:54:00:00:2b:01",
        "52:54:00:00:2b:02",
        "52:54:00:00:2b:03",
    );
    for (mac, state) in [(retired, "retired"), (active, "active"), (torn, "active")] {
        controller.set_node(mac, state, None);
        let mut node = controller.node(mac).expect("node");
        node["mac_address"] = json!(mac.to_uppercase());
        if mac == torn {
            node["mac_address"] = json!("52:54:00:00:2b:09");
        }
        controller.set_raw_node(mac, node);
    }
    let agent = online_agent(&controller);
    let token = admin_token(&agent);
    let report = post_sync(&agent, &token, true);
    assert_eq!(report["received"], 2, "{report}");
    let errors = report["errors"].to_string();
    assert!(errors.contains("disagree"), "{report}");
    let (body, _) = boot(&agent, retired);
    assert!(body.contains("action=retired"), "{body}");
    assert!(
        !body.contains("sanboot") && !body.contains("exit"),
        "{body}"
    );
    let (body, _) = boot(&agent, active);
    assert!(
        body.contains("state=active") && body.contains("action=local"),
        "{body}"
    );
    assert!(
        controller.calls_to("POST", "/api/v1/nodes").is_empty(),
        "no known MAC registered again"
    );
}

/// DESIGN §10, issue 19's untested promise: at most 16 controller lookups
/// run at once; a boot that finds no room is answered from the cache
/// within its deadline, as if the lookup were slow. 40 known nodes boot at
/// once against a controller that holds every answer for 30 s.
#[test]
fn at_most_sixteen_lookups_run_and_the_rest_are_answered_from_the_cache() {
    let controller = FakeController::start();
    let macs: Vec<String> = (0..40).map(|n| format!("52:54:00:00:2c:{n:02x}")).collect();
    // Pending: each boot asks for its own MAC (see above).
    for mac in &macs {
        controller.set_node(mac, "pending", None);
    }
    let agent = online_agent(&controller);
    let token = admin_token(&agent);
    let report = post_sync(&agent, &token, true);
    assert_eq!(report["received"], 40, "{report}");
    controller.set_mode(Mode::SlowLookups(Duration::from_secs(30)));
    let before = controller.calls_to("GET", "/api/v1/nodes").len();
    let mut args = vec![
        "-sS".to_string(),
        "--max-time".into(),
        "30".into(),
        "-Z".into(),
        "--parallel-max".into(),
        "40".into(),
        "-w".into(),
        "%{http_code}\n".into(),
        "-o".into(),
        "/dev/null".into(),
    ];
    for mac in &macs {
        args.push(agent.url(&format!("/api/v1/boot?mac={mac}&arch=x86_64")));
    }
    let out = std::process::Command::new("curl")
        .args(&args)
        .output()
        .expect("curl");
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(codes.lines().filter(|c| *c == "200").count(), 40, "{codes}");
    // Lookups are recorded as they arrive, before the fake's delay.
    let lookups = controller.calls_to("GET", "/api/v1/nodes").len() - before;
    assert!(
        (1..=16).contains(&lookups),
        "{lookups} lookups at once for 40 boots"
    );
    controller.set_mode(Mode::Healthy);
}

/// Sources and status lines of boots sent at once, one per URL.
fn boots_at_once(agent: &common::Agent, macs: &[String]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec![
        "-sS".to_string(),
        "--max-time".into(),
        "30".into(),
        "-Z".into(),
        "--parallel-max".into(),
        macs.len().to_string(),
    ];
    for (n, mac) in macs.iter().enumerate() {
        args.push("-o".into());
        args.push(dir.path().join(n.to_string()).display().to_string());
        args.push(agent.url(&format!("/api/v1/boot?mac={mac}&arch=x86_64")));
    }
    let out = std::process::Command::new("curl")
        .args(&args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (0..macs.len())
        .map(|n| {
            let body = std::fs::read_to_string(dir.path().join(n.to_string())).expect("body");
            body.lines()
                .find(|l| l.contains("siteboot: mac="))
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

fn feed_calls(controller: &FakeController) -> usize {
    controller
        .calls_to("GET", "/api/v1/sites/fra1/nodes")
        .iter()
        .filter(|c| c.query.contains("since="))
        .count()
}

/// A controller with a change feed (a cursor): boots of cached nodes that
/// boot their disks are confirmed by one feed call for many boots, never
/// looked up one MAC at a time, and a change at the controller still
/// reaches the very next boot.
#[test]
fn boots_of_cached_nodes_share_one_change_feed_call_and_see_every_change() {
    let controller = FakeController::start();
    let macs: Vec<String> = (0..40).map(|n| format!("52:54:00:00:2d:{n:02x}")).collect();
    for mac in &macs {
        controller.set_node(mac, "active", None);
    }
    // A deadline far above the feed's delay: every boot waits for the
    // call that starts after it arrived, however loaded the machine.
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .env("SITEBOOT_CENTRAL_BOOT_LOOKUP_DEADLINE", "20s")
        // The agent's own incremental syncs (one per check) call the feed
        // too; fewer of them keep the count below about the boots.
        .env("SITEBOOT_CENTRAL_CHECK_INTERVAL", "2s")
        .config(&central_config(&controller))
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    let report = post_sync(&agent, &admin_token(&agent), true);
    assert_eq!(report["received"], 40, "{report}");
    assert!(report["cursor"].is_string(), "{report}");

    let lookups = controller.calls_to("GET", "/api/v1/nodes").len();
    let feeds = feed_calls(&controller);
    controller.set_mode(Mode::SlowFeed(Duration::from_millis(500)));
    let lines = boots_at_once(&agent, &macs);
    controller.set_mode(Mode::Healthy);
    for (mac, line) in macs.iter().zip(&lines) {
        assert!(
            line.contains(&format!(
                "siteboot: mac={mac} state=active action=local source=live"
            )),
            "{line}"
        );
    }
    let feed_rounds = feed_calls(&controller) - feeds;
    println!("40 boots at once: {feed_rounds} change feed calls");
    // One call per boot would be 40; calls are shared (each lasts 500 ms,
    // and the boots arrive within a few of them even on a loaded machine).
    assert!(
        (1..=20).contains(&feed_rounds),
        "{feed_rounds} feed calls for 40 boots at once"
    );
    assert_eq!(
        controller.calls_to("GET", "/api/v1/nodes").len(),
        lookups,
        "no lookup by MAC for a confirmed node"
    );

    // A change at the controller: the very next boot shows it, live.
    controller.set_node(&macs[0], "retired", None);
    let (body, source) = boot(&agent, &macs[0]);
    assert_eq!(source, "live");
    assert!(
        body.contains(&format!(
            "mac={} state=retired action=retired source=live",
            macs[0]
        )),
        "{body}"
    );
    // A node that may be installed is asked for by its MAC at each boot,
    // also the boot whose feed call brought the change (the agent's own
    // incremental sync may have brought it first).
    let lookups = controller.calls_to("GET", "/api/v1/nodes").len();
    controller.set_node(&macs[1], "pending", None);
    for _ in 0..2 {
        let (body, source) = boot(&agent, &macs[1]);
        assert_eq!(source, "live");
        assert!(body.contains("state=pending"), "{body}");
    }
    assert_eq!(
        controller.calls_to("GET", "/api/v1/nodes").len(),
        lookups + 2,
        "a lookup by MAC for each of the pending node's boots"
    );

    // A node with a change queued for the controller: its cached record
    // is the agent's, so its boot asks for its MAC. The rounds before
    // kept their store reads (nothing was written); the queued change is
    // a write, and the next round reads them again.
    let (held, other) = (&macs[2], &macs[3]);
    for _ in 0..2 {
        assert_eq!(boot(&agent, other).1, "live");
    }
    controller.set_mode(Mode::RefusingWrites);
    let token = admin_token(&agent);
    let (status, _, answer) = curl(&[
        "-X",
        "PATCH",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"state": "migrating"}"#,
        &agent.url(&format!("/api/v1/nodes/{held}/state")),
    ]);
    let answer = String::from_utf8_lossy(&answer);
    assert!((200..300).contains(&status), "{status} {answer}");
    let lookups = controller.calls_to("GET", "/api/v1/nodes").len();
    let (_, source) = boot(&agent, held);
    assert_eq!(source, "live");
    assert_eq!(
        controller.calls_to("GET", "/api/v1/nodes").len(),
        lookups + 1,
        "a lookup by MAC for the node with a change queued"
    );
    let (_, source) = boot(&agent, other);
    assert_eq!(source, "live");
    assert_eq!(
        controller.calls_to("GET", "/api/v1/nodes").len(),
        lookups + 1,
        "no lookup for a node without one"
    );
    controller.set_mode(Mode::Healthy);
}

/// A rendered script is kept per node record; a workflow that arrives
/// (or changes) while the node's record stays the same is still seen by
/// the very next boot. (Failed before: a pending node answered before
/// its workflow was known kept that answer after the sync brought it.)
#[test]
fn a_workflow_that_arrives_later_reaches_the_next_boot() {
    let controller = FakeController::start();
    let mac = "52:54:00:00:2e:01";
    controller.set_node(mac, "pending", Some("late"));
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&central_config(&controller))
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    let token = admin_token(&agent);
    post_sync(&agent, &token, true);
    let (before, source) = boot(&agent, mac);
    assert_eq!(source, "live");
    assert!(!before.contains("action=install"), "{before}");
    // Twice: the second answer may come from the kept script.
    assert_eq!(boot(&agent, mac).0, before);

    controller.add_workflow(json!({"id": "late", "name": "Late", "method": "kernel",
        "kernel": "late/vmlinuz"}));
    let report = post_sync(&agent, &token, false);
    assert_eq!(
        report["changed"], 0,
        "the node itself did not change: {report}"
    );
    let (after, source) = boot(&agent, mac);
    assert_eq!(source, "live");
    assert!(after.contains("action=install"), "{after}");
    assert!(after.contains("/late/vmlinuz"), "{after}");
}
