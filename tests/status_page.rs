//! The status page (`GET /`, DESIGN §11) in headless Chromium over
//! WebDriver: sign-in, the mode badge live through an outage, a boot
//! arriving, a conflict resolved with its button (and the controller
//! receiving the change), queue and node actions, a phone-sized window.
//! Screenshots of each state are written under
//! `target/tmp/status-page/` for people to look at.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::controller::FakeController;
use common::{AgentBuilder, admin_call, admin_token, curl, get_json, mode, wait_until};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

/// The page's badge colour.
fn badge_is(indicator: &str) -> String {
    format!("document.getElementById('badge').dataset.indicator === '{indicator}'")
}

fn row(table: &str, attribute: &str, value: &str) -> String {
    format!("document.querySelector('#{table} [{attribute}=\"{value}\"]') !== null")
}

fn no_row(table: &str, attribute: &str, value: &str) -> String {
    format!("document.querySelector('#{table} [{attribute}=\"{value}\"]') === null")
}

/// Chromium's own timing of the page load just done (milliseconds from
/// navigation start), printed for the closing note and the benchmarks.
fn report_timing(browser: &Browser, what: &str) -> Value {
    browser.wait(
        "the first paint recorded",
        "performance.getEntriesByName('first-contentful-paint').length > 0",
    );
    let timing = browser.js("const nav = performance.getEntriesByType('navigation')[0];
         const paint = performance.getEntriesByName('first-contentful-paint')[0];
         return {
           first_contentful_paint_ms: paint ? paint.startTime : null,
           response_end_ms: nav.responseEnd,
           dom_content_loaded_ms: nav.domContentLoadedEventEnd,
           load_ms: nav.loadEventEnd,
           transfer_bytes: nav.transferSize,
         };");
    eprintln!("status page timing ({what}): {timing}");
    timing
}

fn sign_in(browser: &Browser, agent: &common::Agent) {
    browser.type_into("#token", "not-the-token");
    browser.click("#signin-button");
    browser.wait(
        "the wrong token refused",
        "document.getElementById('signin-error').textContent.includes('Wrong token')",
    );
    assert!(
        browser.js("return document.getElementById('app').hidden;") == Value::Bool(true),
        "nothing admin shows without the token"
    );
    browser.type_into("#token", &admin_token(agent));
    browser.click("#signin-button");
    browser.wait(
        "signed in, events live",
        "!document.getElementById('app').hidden && \
         document.getElementById('live').className === 'live-on'",
    );
}

/// With a controller: green, a boot, red without a reload, a change queued
/// from the page, a conflict on return settled with "Keep local", a queue
/// item deleted, a node registered from the page, search.
#[test]
fn the_status_page_follows_an_outage_live_and_settles_a_conflict_with_its_button() {
    let controller = FakeController::start();
    controller.check_versions();
    let (booted, conflicted, dropped) = (
        "52:54:00:00:a0:01",
        "52:54:00:00:a0:02",
        "52:54:00:00:a0:03",
    );
    for mac in [booted, conflicted, dropped] {
        controller.set_node(mac, "active", None);
    }
    let agent = AgentBuilder::new()
        .watching(
            &controller,
            "failure_threshold = 1\nrecovery_threshold = 1\nheartbeat_interval = \"1s\"",
        )
        .config("[queue]\nretry_base = \"100ms\"\nretry_max = \"400ms\"")
        .config("[conflicts]\nstate_mismatch = \"manual\"")
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    wait_until(LONG, "nodes synced", || {
        get_json(&agent.url("/api/v1/status"))["nodes_cached"] == 3
    });

    let browser = Browser::start("controller", 1280, 1000);
    browser.goto(&agent.url("/"));
    report_timing(&browser, "cold browser, controller online");
    // Before any sign-in the page already shows the mode (server-rendered).
    browser.wait("green before sign-in", &badge_is("green"));
    browser.screenshot("1-sign-in");
    sign_in(&browser, &agent);
    browser.wait("green", &badge_is("green"));
    assert_eq!(browser.text("#badge"), "ONLINE");

    // A boot appears in the latest boots, pushed by the agent.
    let (status, _, _) = curl(&[&agent.url(&format!(
        "/api/v1/boot?mac={booted}&arch=x86_64&platform=efi"
    ))]);
    assert_eq!(status, 200);
    browser.wait("the boot listed", &row("boots", "data-mac", booted));
    browser.wait("nodes listed", &row("nodes", "data-mac", conflicted));
    browser.screenshot("2-online-with-a-boot");

    // The controller dies: red, without a reload.
    browser.js("window.__same_page = true; return null;");
    controller.down();
    browser.wait("red", &badge_is("red"));
    assert_eq!(
        browser.js("return window.__same_page === true;"),
        Value::Bool(true),
        "the page was not reloaded"
    );
    browser.wait(
        "offline since shown",
        "!document.getElementById('offline-row').hidden",
    );

    // A state change from the page while offline is queued...
    let node_row = format!("#nodes tr[data-mac=\"{conflicted}\"]");
    browser.select(&format!("{node_row} select.new-state"), "reprovision");
    browser.click(&format!("{node_row} button.set-state"));
    browser.wait(
        "the change queued",
        "document.getElementById('message').textContent.includes('queued')",
    );
    // ...and one more, for a node whose change the operator drops.
    let (code, answer) = admin_call(
        &agent,
        "PATCH",
        &format!("/api/v1/nodes/{dropped}/state"),
        Some(r#"{"state": "reprovision", "comment": "to be deleted"}"#),
    );
    assert_eq!(code, 202, "{answer}");
    let dropped_id = answer["queue_id"].as_u64().expect("queue id").to_string();
    browser.wait(
        "both items listed",
        &row("queue", "data-queue-id", &dropped_id),
    );
    browser.screenshot("3-offline-with-queued-changes");
    // By now the boot came both in the list and in its event: one row.
    assert_eq!(
        browser.js(&format!(
            "return document.querySelectorAll('#boots tr[data-mac=\"{booted}\"]').length;"
        )),
        Value::from(1)
    );
    // Retry asks the agent to send an item now (it stays pending while
    // the controller is gone).
    browser.click(&format!(
        "#queue tr[data-queue-id=\"{dropped_id}\"] button.retry"
    ));
    browser.wait(
        "the retry taken",
        &format!(
            "document.getElementById('message').textContent === 'item {dropped_id} retried: done.'"
        ),
    );
    let delete = format!("#queue tr[data-queue-id=\"{dropped_id}\"] button.delete-item");
    browser.click(&delete);
    browser.wait(
        "the delete armed",
        &format!("document.querySelector('{delete}').textContent === 'Sure?'"),
    );
    browser.click(&delete);
    browser.wait(
        "the item gone",
        &no_row("queue", "data-queue-id", &dropped_id),
    );

    // Meanwhile the controller's record moves on: on return, the queued
    // change meets a newer version and becomes an open conflict.
    controller.set_node(conflicted, "installed", None);
    controller.up();
    browser.wait("green again", &badge_is("green"));
    browser.wait(
        "the conflict listed",
        "document.querySelector('#conflicts [data-kind=\"state_mismatch\"]') !== null",
    );
    let conflict_id = browser
        .js("return document.querySelector('#conflicts [data-conflict-id]').dataset.conflictId;")
        .as_str()
        .expect("conflict id")
        .to_string();
    let card = format!("#conflicts [data-conflict-id=\"{conflict_id}\"]");
    assert!(
        browser
            .text(&format!("{card} .local"))
            .contains("reprovision")
    );
    assert!(
        browser
            .text(&format!("{card} .central"))
            .contains("installed")
    );
    browser.screenshot("4-conflict");
    browser.click(&format!("{card} button[data-resolve=\"keep_local\"]"));
    browser.wait(
        "the conflict left the list",
        &no_row("conflicts", "data-conflict-id", &conflict_id),
    );
    wait_until(LONG, "the controller got the change", || {
        controller
            .node(conflicted)
            .is_some_and(|n| n["state"] == "reprovision")
    });
    let (_, record) = admin_call(
        &agent,
        "GET",
        &format!("/api/v1/conflicts/{conflict_id}"),
        None,
    );
    assert_eq!(record["data"]["resolution"], "keep_local", "{record}");
    assert_eq!(
        controller.node(dropped).expect("node")["state"],
        "active",
        "the deleted item never reached the controller"
    );

    // A node registered from the page, then found by search.
    let new_mac = "52:54:00:00:a0:09";
    browser.click("#add-node-box summary");
    browser.type_into("#add-node input[name=mac]", new_mac);
    browser.click("#add-node button[type=submit]");
    wait_until(LONG, "registered at the controller", || {
        controller.node(new_mac).is_some()
    });
    browser.type_into("#node-search", "a0:09");
    browser.wait(
        "search shows only the new node",
        &format!(
            "document.querySelectorAll('#nodes tbody tr').length === 1 && {}",
            row("nodes", "data-mac", new_mac)
        ),
    );
    browser.screenshot("5-settled-and-searched");

    // Sync now answers with a report.
    browser.click("#sync-now");
    browser.wait(
        "synced",
        "document.getElementById('message').textContent.startsWith('Synced')",
    );

    // A 1080p screen, then a phone-sized window: the page lays out in
    // both (no sideways page).
    browser.resize(1920, 1080);
    browser.screenshot("6-1080p");
    browser.resize(390, 844);
    browser.wait(
        "no horizontal scroll on a phone",
        "document.documentElement.scrollWidth <= window.innerWidth + 1",
    );
    browser.screenshot("7-phone");
}

/// Standalone: grey; add a node with a state, change it, delete it, all
/// from the page, each checked through the API.
#[test]
fn standalone_the_page_adds_changes_and_deletes_nodes() {
    let agent = AgentBuilder::new().start();
    let browser = Browser::start("standalone", 1280, 1000);
    browser.goto(&agent.url("/"));
    report_timing(&browser, "cold browser, standalone");
    sign_in(&browser, &agent);
    browser.wait("grey", &badge_is("grey"));
    assert!(
        browser.js("return document.getElementById('sync-now').hidden;") == Value::Bool(true),
        "no sync without a controller"
    );

    let mac = "52:54:00:00:b0:01";
    browser.click("#add-node-box summary");
    browser.type_into("#add-node input[name=mac]", mac);
    browser.select("#add-node select[name=state]", "pending");
    browser.type_into("#add-node input[name=hostname]", "rack1-node1");
    browser.click("#add-node button[type=submit]");
    browser.wait("the node listed", &row("nodes", "data-mac", mac));
    let (code, node) = admin_call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None);
    assert_eq!(code, 200);
    assert_eq!(node["data"]["state"], "pending");
    assert_eq!(node["data"]["hostname"], "rack1-node1");

    let node_row = format!("#nodes tr[data-mac=\"{mac}\"]");
    browser.select(&format!("{node_row} select.new-state"), "active");
    // A live redraw (another operator adds a node) keeps the pick.
    let other = "52:54:00:00:b0:03";
    let body = format!(r#"{{"mac": "{other}"}}"#);
    assert_eq!(
        admin_call(&agent, "POST", "/api/v1/nodes", Some(&body)).0,
        201
    );
    browser.wait(
        "redrawn with the other node",
        &row("nodes", "data-mac", other),
    );
    assert_eq!(
        browser.js(&format!(
            "return document.querySelector('{node_row} select.new-state').value;"
        )),
        Value::from("active"),
        "the state picked but not set yet survived the redraw"
    );
    browser.click(&format!("{node_row} button.set-state"));
    browser.wait(
        "the state changed",
        &format!("document.querySelector('{node_row}')?.dataset.state === 'active'"),
    );
    assert_eq!(
        admin_call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None).1["data"]["state"],
        "active"
    );
    browser.screenshot("1-standalone-node");

    let delete = format!("{node_row} button.delete-node");
    browser.click(&delete);
    browser.wait(
        "the delete armed",
        &format!("document.querySelector('{delete}').textContent === 'Sure?'"),
    );
    browser.click(&delete);
    browser.wait("the node gone", &no_row("nodes", "data-mac", mac));
    assert_eq!(
        admin_call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None).0,
        404
    );

    // The agent restarts under the open page: it reconnects by itself
    // and is live again (a boot on the new agent shows without a reload).
    browser.js("window.__same_page = true; return null;");
    let agent = agent.kill_and_restart_on_same_port();
    browser.wait(
        "connected a second time",
        "Number(document.body.dataset.connects) >= 2",
    );
    let rebooted = "52:54:00:00:b0:02";
    let (status, _, _) = curl(&[&agent.url(&format!("/api/v1/boot?mac={rebooted}"))]);
    assert_eq!(status, 200);
    browser.wait(
        "a boot after the restart",
        &row("boots", "data-mac", rebooted),
    );
    assert_eq!(
        browser.js("return window.__same_page === true;"),
        Value::Bool(true),
        "the page was not reloaded"
    );

    // Signing out forgets the token: a reload asks for it again.
    browser.click("#sign-out");
    browser.goto(&agent.url("/"));
    browser.wait(
        "asked to sign in again",
        "!document.getElementById('signin-section').hidden && document.getElementById('app').hidden",
    );
}

/// Issue 21: with ProxyDHCP on, the page shows its counts, and redraws
/// them when the boot that follows an answer arrives (a boot event
/// refreshes the status; DHCP answers themselves publish no event).
#[test]
fn the_page_shows_proxydhcp_counts_and_follows_them() {
    use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType};
    use dhcproto::{Encodable, Encoder};
    let agent = AgentBuilder::new()
        .config(
            "[dhcp]\nmode = \"proxy\"\ninterfaces = [\"lo\"]\nport = 0\npxe_port = 0\nclient_port = 9\n",
        )
        .start();
    let browser = Browser::start("proxydhcp", 1280, 900);
    browser.goto(&agent.url("/"));
    sign_in(&browser, &agent);
    let answered = "document.getElementById('dhcp-answered').textContent";
    assert!(browser.js("return document.getElementById('dhcp-row').hidden;") == Value::Bool(false));
    assert_eq!(
        browser.js(&format!("return {answered};")),
        Value::from("none")
    );

    let mut message = Message::default();
    message
        .set_xid(0x5a6e_0001)
        .set_chaddr(&[0x52, 0x54, 0x00, 0x00, 0xb2, 0x01]);
    let opts = message.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Discover));
    opts.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
    ));
    opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(7)));
    let mut bytes = Vec::new();
    message.encode(&mut Encoder::new(&mut bytes)).unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(&bytes, agent.dhcp.unwrap().0).unwrap();
    wait_until(LONG, "the answer counted", || {
        get_json(&agent.url("/api/v1/status"))["dhcp"]["answered"]["pxe"] == 1
    });
    // The node's boot follows, as iPXE's would.
    let (status, _, _) = curl(&[&agent.url("/api/v1/boot?mac=52:54:00:00:b2:01")]);
    assert_eq!(status, 200);
    browser.wait("the count redrawn", &format!("{answered} === 'pxe 1'"));
    browser.screenshot("5-proxydhcp");
}

/// DESIGN §15 on the page: the site policy row (values and origins, live
/// when the controller changes it), and, offline, the buttons the
/// autonomy level forbids disabled with the reason; the ones it allows
/// still work.
#[test]
fn the_page_shows_the_site_policy_and_disables_what_the_level_forbids() {
    let controller = FakeController::pureboot();
    let node = "52:54:00:00:a5:01";
    controller.set_node(node, "active", None);
    controller.set_site_policy(serde_json::json!({"autonomy_level": "full"}));
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .watching(
            &controller,
            "failure_threshold = 1\nrecovery_threshold = 1\nheartbeat_interval = \"1s\"",
        )
        .start();
    wait_until(LONG, "online", || mode(&agent) == "online");
    wait_until(LONG, "node synced", || {
        get_json(&agent.url("/api/v1/status"))["nodes_cached"] == 1
    });
    let browser = Browser::start("policy", 1280, 1000);
    browser.goto(&agent.url("/"));
    let policy = "document.getElementById('policy-text').textContent";
    // Server-rendered before sign-in.
    assert_eq!(
        browser.js(&format!("return {policy};")),
        Value::from(
            "autonomy full (controller) · cache assigned (default) · conflicts per kind (default)"
        )
    );
    sign_in(&browser, &agent);
    let node_row = format!("#nodes tr[data-mac=\"{node}\"]");
    browser.wait("node listed", &row("nodes", "data-mac", node));

    // The controller sets limited; the next full sync brings it, live.
    controller.set_site_policy(serde_json::json!({"autonomy_level": "limited"}));
    let (code, _) = admin_call(&agent, "POST", "/api/v1/sync?full=true", None);
    assert_eq!(code, 200);
    browser.wait(
        "limited shown",
        &format!("{policy}.startsWith('autonomy limited (controller)')"),
    );
    controller.down();
    browser.wait("red", &badge_is("red"));
    let set = format!("document.querySelector('{node_row} button.set-state')");
    let retire = format!("document.querySelector('{node_row} button.delete-node')");
    // limited: reprovision would start an install: refused, said why.
    browser.select(&format!("{node_row} select.new-state"), "reprovision");
    browser.wait("set-state disabled", &format!("{set}.disabled"));
    let reason = browser.js(&format!("return {set}.title;"));
    assert!(
        reason
            .as_str()
            .is_some_and(|r| r.contains("autonomy level is limited") && r.contains("reprovision")),
        "{reason}"
    );
    assert_eq!(
        browser.js(&format!("return {retire}.disabled;")),
        Value::Bool(false)
    );
    browser.screenshot("6-policy-limited-offline");
    // installed is allowed: the button works, the change is queued.
    browser.select(&format!("{node_row} select.new-state"), "installed");
    browser.wait("set-state enabled", &format!("!{set}.disabled"));
    browser.click(&format!("{node_row} button.set-state"));
    browser.wait(
        "the change queued",
        "document.getElementById('message').textContent.includes('queued')",
    );
    assert_eq!(
        browser.js("return document.getElementById('add-node-button').disabled;"),
        Value::Bool(false)
    );

    // readonly, pinned on a restart with the controller still gone: every
    // operator write is disabled, adding a node too.
    let stopped = agent.stop();
    let config = stopped.path().join("siteboot.toml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("\n[site]\nautonomy = \"readonly\"\n");
    std::fs::write(&config, text).expect("config");
    let agent = stopped.start();
    wait_until(LONG, "offline", || mode(&agent) == "offline");
    browser.goto(&agent.url("/"));
    sign_in(&browser, &agent);
    browser.wait("node listed", &row("nodes", "data-mac", node));
    browser.wait(
        "readonly shown",
        &format!("{policy}.startsWith('autonomy readonly (config)')"),
    );
    browser.wait("set-state disabled", &format!("{set}.disabled"));
    assert_eq!(
        browser.js(&format!("return {retire}.disabled;")),
        Value::Bool(true)
    );
    assert_eq!(
        browser.js("return document.getElementById('add-node-button').disabled;"),
        Value::Bool(true)
    );
    // (The form sits in a closed <details>: its text, not what is drawn.)
    let said = browser.js("return document.getElementById('add-node-forbidden').textContent;");
    assert!(
        said.as_str()
            .is_some_and(|s| s.contains("autonomy level is readonly")),
        "{said}"
    );
    browser.screenshot("7-policy-readonly-offline");
}
