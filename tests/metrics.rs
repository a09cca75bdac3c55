//! `GET /metrics` (DESIGN §11) from a running agent: the exposition passes
//! `promtool check metrics` (Debian's prometheus package), its values move
//! as a boot, a TFTP transfer, an outage and a replay happen, and it needs
//! the admin token unless `metrics.open`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::controller::FakeController;
use common::{AgentBuilder, admin_token, curl, mode, require_tool, wait_until};

const LONG: Duration = Duration::from_secs(60);

fn scrape(agent: &common::Agent) -> String {
    let token = admin_token(agent);
    let (status, headers, body) = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &agent.url("/metrics"),
    ]);
    assert_eq!(status, 200);
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    String::from_utf8(body).expect("UTF-8")
}

/// The value of one series (`name{labels}` exactly as written), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn promtool_check(text: &str) {
    require_tool("promtool");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_pass_promtool_and_move_with_boots_tftp_an_outage_and_a_replay() {
    let controller = FakeController::start();
    let mac = "52:54:00:00:80:01";
    controller.set_node(mac, "active", None);
    let agent = AgentBuilder::new()
        .watching(&controller, "failure_threshold = 1")
        .config("[queue]\nretry_base = \"100ms\"\nretry_max = \"400ms\"")
        .asset("small.bin", &common::pattern(100_000, 3))
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    let before = scrape(&agent);
    promtool_check(&before);
    assert_eq!(value(&before, "siteboot_mode{mode=\"online\"}"), Some(1.0));

    // A boot.
    let boots = "siteboot_boots_total{action=\"local\",source=\"live\"}";
    let (status, _, _) = curl(&[&agent.url(&format!("/api/v1/boot?mac={mac}"))]);
    assert_eq!(status, 200);
    let after_boot = scrape(&agent);
    assert_eq!(
        value(&after_boot, boots).unwrap_or(0.0),
        value(&before, boots).unwrap_or(0.0) + 1.0,
        "{after_boot}"
    );
    assert!(value(&after_boot, "siteboot_boot_answer_seconds_count") >= Some(1.0));
    assert!(
        value(
            &after_boot,
            "siteboot_http_requests_total{code=\"200\",route=\"/api/v1/boot\"}"
        ) >= Some(1.0)
    );
    // A live answer is the controller's: a lookup by MAC, or a call to
    // its change feed (`site_nodes`) once the agent holds a cursor.
    let asked = |scrape: &str| {
        ["node_by_mac", "site_nodes"]
            .iter()
            .map(|call| {
                value(
                    scrape,
                    &format!("siteboot_controller_calls_total{{call=\"{call}\",outcome=\"ok\"}}"),
                )
                .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    assert!(asked(&after_boot) > asked(&before), "{after_boot}");

    // A TFTP transfer.
    let (_, _, bytes) = curl(&[&format!("tftp://127.0.0.1:{}/small.bin", agent.tftp.port())]);
    assert_eq!(bytes.len(), 100_000);
    // The server counts a transfer when the final ACK reaches it, which
    // may be after curl has exited: wait for it, then check the figures.
    let tftp_before = value(&after_boot, "siteboot_tftp_sent_bytes_total").unwrap_or(0.0);
    wait_until(LONG, "the transfer counted", || {
        value(&scrape(&agent), "siteboot_tftp_sent_bytes_total").unwrap_or(0.0) > tftp_before
    });
    let after_tftp = scrape(&agent);
    assert_eq!(
        value(&after_tftp, "siteboot_tftp_sent_bytes_total").unwrap_or(0.0)
            - value(&after_boot, "siteboot_tftp_sent_bytes_total").unwrap_or(0.0),
        100_000.0
    );
    assert!(
        value(
            &after_tftp,
            "siteboot_tftp_transfers_total{outcome=\"completed\"}"
        ) >= Some(1.0)
    );

    // An outage, with a change queued meanwhile.
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    let (code, answer) = common::admin_call(
        &agent,
        "PATCH",
        &format!("/api/v1/nodes/{mac}/state"),
        Some(r#"{"state": "reprovision", "comment": "queued"}"#),
    );
    assert_eq!(code, 202, "{answer}");
    let offline = scrape(&agent);
    promtool_check(&offline);
    assert_eq!(
        value(&offline, "siteboot_mode{mode=\"offline\"}"),
        Some(1.0)
    );
    assert_eq!(value(&offline, "siteboot_mode{mode=\"online\"}"), Some(0.0));
    assert!(
        value(&offline, "siteboot_offline_seconds") > Some(0.0),
        "{offline}"
    );
    assert_eq!(
        value(
            &offline,
            "siteboot_queue_items{kind=\"state_update\",status=\"pending\"}"
        ),
        Some(1.0)
    );

    // The replay.
    let replayed = value(&offline, "siteboot_replayed_items_total").unwrap_or(0.0);
    controller.up();
    wait_until(LONG, "replayed", || {
        let text = scrape(&agent);
        value(&text, "siteboot_replayed_items_total") > Some(replayed)
            && value(
                &text,
                "siteboot_queue_items{kind=\"state_update\",status=\"pending\"}",
            ) == Some(0.0)
    });
    let back = scrape(&agent);
    promtool_check(&back);
    assert_eq!(value(&back, "siteboot_mode{mode=\"online\"}"), Some(1.0));
    assert_eq!(value(&back, "siteboot_offline_seconds"), Some(0.0));
}

#[test]
fn metrics_need_the_admin_token_unless_open() {
    let agent = AgentBuilder::new().start();
    let (status, _, _) = curl(&[&agent.url("/metrics")]);
    assert_eq!(status, 401);
    let (status, _, _) = curl(&["-H", "Authorization: Bearer wrong", &agent.url("/metrics")]);
    assert_eq!(status, 401);
    let open = AgentBuilder::new()
        .config("[metrics]\nopen = true\n")
        .start();
    let (status, _, body) = curl(&[&open.url("/metrics")]);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("siteboot_mode{mode=\"standalone\"} 1"));
}

/// DESIGN §11: `log.format = "json"` writes one JSON object per line.
#[test]
fn logs_can_be_json_lines() {
    let agent = AgentBuilder::new()
        .config("[log]\nformat = \"json\"\n")
        .start();
    let mac = "52:54:00:00:80:02";
    let (status, _, _) = curl(&[&agent.url(&format!("/api/v1/boot?mac={mac}"))]);
    assert_eq!(status, 200);
    wait_until(LONG, "the boot logged", || {
        agent
            .log_lines()
            .iter()
            .any(|l| l.contains("boot script served"))
    });
    let lines = agent.log_lines();
    for line in &lines {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(parsed["level"].is_string(), "{line}");
    }
    let boot = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "boot script served")
        .expect("the boot's line");
    assert_eq!(boot["fields"]["mac"], mac, "{boot}");
    let bad = AgentBuilder::new().config("[log]\nformat = \"xml\"\n");
    let out = bad.cli(&["check-config"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("log.format"));
}

/// DESIGN §11: `siteboot status` shows the running agent at a glance, the
/// latest boots included (with the admin token from the config).
#[test]
fn siteboot_status_shows_the_mode_counts_and_latest_boots() {
    let agent = AgentBuilder::new().start();
    let macs = ["52:54:00:00:80:03", "52:54:00:00:80:04"];
    for mac in macs {
        let (status, _, _) = curl(&[&agent.url(&format!("/api/v1/boot?mac={mac}"))]);
        assert_eq!(status, 200);
    }
    let url = agent.url("");
    let out = agent.cli(&["status", "--url", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("STANDALONE"), "{text}");
    assert!(text.contains("queue: 0 pending"), "{text}");
    let newest = text
        .lines()
        .position(|l| l.contains(macs[1]))
        .expect("the second boot listed");
    let older = text
        .lines()
        .position(|l| l.contains(macs[0]))
        .expect("the first boot listed");
    assert!(newest < older, "newest first: {text}");
    assert!(
        text.contains("action=discovery source=standalone"),
        "{text}"
    );
    let out = agent.cli(&["status", "--url", &url, "--json"]);
    let both: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(both["status"]["mode"], "standalone");
    assert_eq!(both["boots"].as_array().map(Vec::len), Some(2));
    let (code, _, _) = curl(&[&agent.url("/api/v1/boots")]);
    assert_eq!(code, 401, "the latest boots need the admin token");
    let out = agent.cli(&["status", "--url", "http://127.0.0.1:9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent answers"));
}

/// DESIGN §11 `GET /api/v1/events`: a client connected through an outage
/// receives the mode changes in order, and boots as they happen; it needs
/// the admin token.
#[test]
fn an_events_client_sees_boots_and_an_outage_in_order() {
    let controller = FakeController::start();
    let agent = AgentBuilder::new()
        .watching(&controller, "failure_threshold = 1")
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    let (status, _, _) = common::curl_lenient(&["--max-time", "2", &agent.url("/api/v1/events")]);
    assert_ne!(status, Some(200));
    let token = admin_token(&agent);
    let url = agent.url("/api/v1/events");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<String>();
    let client = runtime.spawn(async move {
        let mut response = reqwest::Client::new()
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .expect("events");
        assert_eq!(response.status(), 200);
        let mut text = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                if seen_tx.send(event).is_err() {
                    return;
                }
            }
        }
    });
    let mut events = Vec::new();
    let next = |events: &mut Vec<String>, want: &str| {
        let started = std::time::Instant::now();
        while !events.iter().any(|e| e.contains(want)) {
            assert!(started.elapsed() < LONG, "no {want:?} in {events:?}");
            if let Ok(event) = seen_rx.recv_timeout(Duration::from_millis(200)) {
                events.push(event);
            }
        }
    };
    // Connected before anything below happens: a boot proves it.
    wait_until(LONG, "the client is listening", || {
        let (status, _, _) = curl(&[&agent.url("/api/v1/boot?mac=52:54:00:00:80:05")]);
        assert_eq!(status, 200);
        while let Ok(event) = seen_rx.try_recv() {
            events.push(event);
        }
        events.iter().any(|e| e.starts_with("event: boots"))
    });
    assert!(
        events.iter().any(|e| e.contains("52:54:00:00:80:05")),
        "{events:?}"
    );
    controller.down();
    next(&mut events, "\"mode\":\"offline\"");
    controller.up();
    next(&mut events, "\"mode\":\"online\"");
    let modes: Vec<&String> = events
        .iter()
        .filter(|e| e.starts_with("event: mode"))
        .collect();
    assert_eq!(modes.len(), 2, "{modes:?}");
    assert!(
        modes[0].contains("offline") && modes[1].contains("online"),
        "{modes:?}"
    );
    client.abort();
}

fn indicator(agent: &common::Agent) -> String {
    common::get_json(&agent.url("/api/v1/status"))["indicator"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// DESIGN §11 mode at a glance, as `GET /api/v1/status` gives it to the
/// page and the CLI: green online, yellow online but the latest boot was
/// answered from the cache, red offline, grey standalone.
#[test]
fn the_status_indicator_is_green_yellow_red_and_grey() {
    let controller = FakeController::start();
    let mac = "52:54:00:00:80:11";
    // Pending: every boot asks for its own MAC (a disk-booting node would
    // be confirmed by the change feed), where the 500 below is injected.
    controller.set_node(mac, "pending", None);
    let agent = AgentBuilder::new()
        .watching(&controller, "failure_threshold = 3")
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    let boot = || {
        let (status, _, body) = curl(&[&agent.url(&format!("/api/v1/boot?mac={mac}"))]);
        assert_eq!(status, 200);
        String::from_utf8_lossy(&body).into_owned()
    };
    assert!(boot().contains("source=live"));
    assert_eq!(indicator(&agent), "green");

    controller.inject("GET", "/api/v1/nodes", None, 500, Duration::ZERO, 1);
    let answer = boot();
    assert!(answer.contains("source=cache"), "{answer}");
    assert_eq!(mode(&agent), "online");
    assert_eq!(indicator(&agent), "yellow");
    assert!(boot().contains("source=live"));
    assert_eq!(indicator(&agent), "green");

    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    assert_eq!(indicator(&agent), "red");

    let standalone = AgentBuilder::new().start();
    assert_eq!(indicator(&standalone), "grey");
}

#[test]
fn kept_boot_scripts_are_counted_and_a_change_is_seen_at_the_next_boot() {
    // Issue 24: a rendered script is kept per node; what is kept is in
    // `/metrics`, and a write to the node is visible to the very next boot.
    let agent = AgentBuilder::new().start();
    let mac = "52:54:00:00:80:24";
    let boot = || {
        let (status, _, body) = curl(&[&agent.url(&format!("/api/v1/boot?mac={mac}"))]);
        assert_eq!(status, 200);
        String::from_utf8_lossy(&body).into_owned()
    };
    let hits = "siteboot_script_cache_lookups_total{result=\"hit\"}";
    let misses = "siteboot_script_cache_lookups_total{result=\"miss\"}";
    let first = boot();
    assert!(first.contains("state=discovered"), "{first}");
    let before = scrape(&agent);
    assert_eq!(boot(), first, "an unchanged node gets the same script");
    let after = scrape(&agent);
    promtool_check(&after);
    assert_eq!(
        value(&after, hits).unwrap_or(0.0),
        value(&before, hits).unwrap_or(0.0) + 1.0,
        "{after}"
    );
    assert!(value(&after, "siteboot_script_cache_entries") >= Some(1.0));
    assert!(value(&after, "siteboot_script_cache_bytes") >= Some(first.len() as f64));
    let token = admin_token(&agent);
    let (status, _, body) = curl(&[
        "-X",
        "PATCH",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"state":"retired"}"#,
        &agent.url(&format!("/api/v1/nodes/{mac}/state")),
    ]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let changed = boot();
    assert!(changed.contains("state=retired"), "{changed}");
    let last = scrape(&agent);
    assert_eq!(
        value(&last, misses).unwrap_or(0.0),
        value(&after, misses).unwrap_or(0.0) + 1.0,
        "{last}"
    );
}

/// Issue 24: during an outage a node's script is rendered once, not once
/// per second of the banner's duration: the duration is filled in per
/// answer, and a boot that shows a new duration is still a kept script.
#[test]
fn an_offline_script_is_kept_for_the_outage_with_its_duration_current() {
    let controller = FakeController::start();
    let mac = "52:54:00:00:80:25";
    controller.set_node(mac, "active", None);
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&common::quick_link_config(&controller))
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    let boot = || {
        let (status, _, body) = curl(&[&agent.url(&format!("/api/v1/boot?mac={mac}"))]);
        assert_eq!(status, 200);
        String::from_utf8_lossy(&body).into_owned()
    };
    wait_until(LONG, "node cached", || boot().contains("state=active"));
    controller.down();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    let duration = |script: &str| {
        script
            .lines()
            .find_map(|l| l.split_once("offline for ")?.1.split(',').next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no duration in {script}"))
    };
    let first = boot();
    assert!(first.contains("source=offline"), "{first}");
    let misses = "siteboot_script_cache_lookups_total{result=\"miss\"}";
    let before = value(&scrape(&agent), misses).unwrap_or(0.0);
    let mut later = first.clone();
    wait_until(LONG, "the banner's duration moves on", || {
        later = boot();
        duration(&later) != duration(&first)
    });
    assert!(later.contains("source=offline"), "{later}");
    let after = value(&scrape(&agent), misses).unwrap_or(0.0);
    assert_eq!(
        after,
        before,
        "no boot rendered again: {} then {}",
        duration(&first),
        duration(&later)
    );
}
