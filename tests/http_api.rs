//! The HTTP API with curl: bootstrap, every row of the standalone decision
//! table, bad MACs, assets with Range, traversal, template failures.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use common::{AgentBuilder, admin_call, curl, curl_text};

const WORKFLOWS: &str = r#"
[workflows.ubuntu]
name = "Ubuntu 24.04"
method = "kernel"
kernel = "ubuntu/vmlinuz"
initrd = ["ubuntu/initrd.gz"]
cmdline = "console=ttyS0 autoinstall"

[workflows.iso]
method = "sanboot"
url = "http://mirror.example/rescue.iso"

[workflows.evil]
method = "kernel"
kernel = "k"
cmdline = "quiet || shell"
"#;

fn status_line(mac: &str, state: &str, action: &str) -> String {
    format!("echo siteboot: mac={mac} state={state} action={action} source=standalone\n")
}

fn boot(agent: &common::Agent, mac: &str) -> (u16, String, String) {
    let (status, headers, body) = curl(&[&agent.url(&format!(
        "/api/v1/boot?mac={mac}&arch=x86_64&platform=efi&serial=&uuid="
    ))]);
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// `GET /api/v1/nodes` with the admin token.
fn admin_nodes(agent: &common::Agent) -> serde_json::Value {
    let token = common::admin_token(agent);
    let (status, _, body) = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &agent.url("/api/v1/nodes"),
    ]);
    assert_eq!(status, 200);
    serde_json::from_slice(&body).expect("JSON")
}

fn mac(n: u8) -> String {
    format!("52:54:00:00:10:{n:02x}")
}

#[test]
fn every_row_of_the_standalone_decision_table() {
    let builder = AgentBuilder::new().config(WORKFLOWS);
    let rows: &[(u8, &str, Option<&str>)] = &[
        (1, "discovered", None),
        (2, "pending", Some("ubuntu")),
        (3, "pending", None),
        (4, "installing", None),
        (5, "install_failed", None),
        (6, "installed", None),
        (7, "active", Some("ubuntu")),
        (8, "migrating", None),
        (9, "serving_source", None),
        (10, "cloning_target", None),
        (11, "deprovisioning", None),
        (12, "reprovision", Some("iso")),
        (13, "reprovision", None),
        (14, "retired", None),
    ];
    for (n, state, workflow) in rows {
        let m = mac(*n);
        let mut args = vec!["nodes", "add", "--mac", &m, "--state", state];
        if let Some(wf) = workflow {
            args.extend(["--workflow", wf]);
        }
        builder.cli_ok(&args);
    }
    let agent = builder.start();
    let expect = |n: u8, state: &str, action: &str, must: &[&str], must_not: &[&str]| {
        let (status, headers, body) = boot(&agent, &mac(n));
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("#!ipxe\n"), "{body}");
        let line = status_line(&mac(n), state, action);
        assert_eq!(
            body.matches("echo siteboot: mac=").count(),
            1,
            "one status line:\n{body}"
        );
        assert!(body.contains(&line), "expected {line:?} in:\n{body}");
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("x-siteboot-source: standalone"),
            "{headers}"
        );
        for needle in must {
            assert!(body.contains(needle), "expected {needle:?} in:\n{body}");
        }
        for needle in must_not {
            assert!(!body.contains(needle), "unexpected {needle:?} in:\n{body}");
        }
    };
    let local = "sanboot --no-describe --drive 0x80";
    expect(
        1,
        "discovered",
        "discovery",
        &["/assets/discovery/vmlinuz"],
        &[],
    );
    expect(
        2,
        "pending",
        "install",
        &[
            &format!(
                "kernel http://{}/assets/ubuntu/vmlinuz initrd=initrd.gz console=ttyS0 autoinstall BOOTIF=01-52-54-00-00-10-02",
                agent.http
            ),
            &format!("initrd http://{}/assets/ubuntu/initrd.gz", agent.http),
            "boot ||",
        ],
        &[],
    );
    // Serving the install marked the node installing: its next boot (into
    // the new system) is local, with a warning, not a second install.
    expect(2, "installing", "local", &["WARNING", local], &["kernel "]);
    expect(3, "pending", "discovery", &["discovery/vmlinuz"], &[]);
    expect(4, "installing", "local", &["WARNING", local], &["kernel "]);
    expect(
        5,
        "install_failed",
        "local",
        &["ERROR: the last install failed", local],
        &["kernel "],
    );
    for (n, state) in [
        (6, "installed"),
        (7, "active"),
        (8, "migrating"),
        (9, "serving_source"),
        (10, "cloning_target"),
        (11, "deprovisioning"),
    ] {
        expect(
            n,
            state,
            "local",
            &[local],
            &["kernel ", "WARNING", "ERROR"],
        );
    }
    expect(
        12,
        "reprovision",
        "install",
        &["sanboot http://mirror.example/rescue.iso"],
        &[],
    );
    expect(
        13,
        "reprovision",
        "local",
        &["no workflow is assigned", local],
        &["kernel "],
    );
    expect(
        14,
        "retired",
        "retired",
        &["RETIRED", "goto siteboot_retired"],
        &[local, "kernel "],
    );
}

#[test]
fn unknown_mac_is_stored_as_discovered() {
    let agent = AgentBuilder::new().start();
    for form in [
        "52-54-00-AA-00-01",
        "525400aa0001",
        "52%3A54%3A00%3Aaa%3A00%3A01",
    ] {
        let (status, _, body) = boot(&agent, form);
        assert_eq!(status, 200);
        assert!(
            body.contains(&status_line("52:54:00:aa:00:01", "discovered", "discovery")),
            "{body}"
        );
    }
    let (_, status) = curl_text(&agent.url("/api/v1/status"));
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(status["nodes_cached"], 1, "{status}");
    assert_eq!(status["mode"], "standalone");
    assert_eq!(status["site_id"], "default");
    assert_eq!(status["queue"]["pending"], 0);
}

#[test]
fn bad_macs_get_a_clear_400() {
    let agent = AgentBuilder::new().start();
    for (query, quoted) in [
        ("mac=zz", "\"zz\""),
        ("mac=52:54:00:12:34", "\"52:54:00:12:34\""),
        ("mac=52:54:00:12:34:56:78", "\"52:54:00:12:34:56:78\""),
        (
            "mac=52:54:00:12:34:56%0Achain%20http://evil",
            "\"52:54:00:12:34:56\\nchain http://evil\"",
        ),
        ("mac=", "\"\""),
    ] {
        let (status, body) = curl_text(&agent.url(&format!("/api/v1/boot?{query}")));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body.contains("invalid MAC address") && body.contains(quoted),
            "{query}: {body}"
        );
    }
    let (status, body) = curl_text(&agent.url("/api/v1/boot?arch=x86_64"));
    assert_eq!(status, 400);
    assert!(body.contains("missing query parameter mac"), "{body}");
    let (_, status) = curl_text(&agent.url("/api/v1/status"));
    assert!(
        status.contains("\"nodes_cached\":0"),
        "bad requests must store nothing: {status}"
    );
}

#[test]
fn bootstrap_chains_with_the_node_facts() {
    let agent = AgentBuilder::new().start();
    let (status, body) = curl_text(&agent.url("/boot.ipxe"));
    assert_eq!(status, 200);
    assert!(body.starts_with("#!ipxe\n"));
    assert!(body.contains(&format!(
        "chain --autofree http://{}/api/v1/boot?mac=${{net0/mac}}&uuid=${{uuid:uristring}}&arch=${{buildarch}}&platform=${{platform}}",
        agent.http
    )), "{body}");
    assert!(body.contains("goto siteboot_retry"), "retries: {body}");
    assert!(
        body.contains("sanboot --no-describe --drive 0x80"),
        "local fallback: {body}"
    );
    // A Host header that is not a host name is refused, not interpolated.
    let (status, _, _) = curl(&["-H", "Host: evil|shell", &agent.url("/boot.ipxe")]);
    assert_eq!(status, 400);
}

#[test]
fn public_url_overrides_the_host_header() {
    let agent = AgentBuilder::new()
        .env("SITEBOOT_HTTP_PUBLIC_URL", "http://10.0.2.2:8080")
        .start();
    let (_, body) = curl_text(&agent.url("/boot.ipxe"));
    assert!(
        body.contains("chain --autofree http://10.0.2.2:8080/api/v1/boot?"),
        "{body}"
    );
}

#[test]
fn assets_support_single_ranges() {
    let data = common::pattern(10_000, 3);
    let agent = AgentBuilder::new().asset("os/vmlinuz", &data).start();
    let url = agent.url("/assets/os/vmlinuz");
    let (status, headers, body) = curl(&[&url]);
    assert_eq!(status, 200);
    assert_eq!(body, data);
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("accept-ranges: bytes")
    );

    let (status, headers, body) = curl(&["-H", "Range: bytes=100-199", &url]);
    assert_eq!(status, 206);
    assert_eq!(body, &data[100..200]);
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-range: bytes 100-199/10000"),
        "{headers}"
    );

    let (status, _, body) = curl(&["-H", "Range: bytes=-10", &url]);
    assert_eq!(status, 206);
    assert_eq!(body, &data[9990..]);

    let (status, _, body) = curl(&["-H", "Range: bytes=9000-", &url]);
    assert_eq!(status, 206);
    assert_eq!(body, &data[9000..]);

    let (status, headers, _) = curl(&["-H", "Range: bytes=20000-", &url]);
    assert_eq!(status, 416);
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-range: bytes */10000"),
        "{headers}"
    );

    // curl's own resume (-C) uses Range too.
    let partial = agent.dir.path().join("partial");
    std::fs::write(&partial, &data[..4000]).expect("write partial");
    let (status, _, _) = curl(&["-C", "-", "-o", partial.to_str().expect("path"), &url]);
    assert_eq!(status, 206);
    assert_eq!(std::fs::read(&partial).expect("read"), data);
}

#[test]
fn assets_refuse_traversal_and_symlink_escapes() {
    let builder = AgentBuilder::new().asset("ok.bin", b"ok");
    std::fs::write(builder.path().join("secret.txt"), b"top secret").expect("secret");
    std::os::unix::fs::symlink(
        builder.path().join("secret.txt"),
        builder.path().join("boot-assets/leak"),
    )
    .expect("symlink");
    let agent = builder.start();
    for path in [
        "/assets/../secret.txt",
        "/assets/%2e%2e/secret.txt",
        "/assets/..%2fsecret.txt",
        "/assets/a/..%2f..%2fsecret.txt",
        "/assets/..%5csecret.txt",
        "/assets/leak",
    ] {
        let (status, _, body) = curl(&["--path-as-is", &agent.url(path)]);
        assert!(status == 403 || status == 404, "{path}: {status}");
        assert!(
            !String::from_utf8_lossy(&body).contains("top secret"),
            "{path} leaked"
        );
    }
    let (status, _, _) = curl(&[&agent.url("/assets/missing.bin")]);
    assert_eq!(status, 404);
    let (status, _, body) = curl(&[&agent.url("/assets/ok.bin")]);
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
}

#[test]
fn injected_workflow_values_yield_the_safe_local_script() {
    let builder = AgentBuilder::new().config(WORKFLOWS);
    builder.cli_ok(&[
        "nodes",
        "add",
        "--mac",
        &mac(1),
        "--state",
        "pending",
        "--workflow",
        "evil",
    ]);
    let agent = builder.start();
    let (status, _, body) = boot(&agent, &mac(1));
    assert_eq!(status, 200);
    assert!(
        body.contains(&status_line(&mac(1), "pending", "local")),
        "{body}"
    );
    assert!(
        body.contains("could not build this node's script"),
        "{body}"
    );
    assert!(
        !body.contains("shell"),
        "injected command reached the script:\n{body}"
    );
    assert!(!body.contains("kernel"), "{body}");
}

#[test]
fn runtime_template_error_serves_the_safe_local_script() {
    // Renders fine with the start-up sample data (which has tags), fails
    // for a node without tags.
    let builder = AgentBuilder::new().template(
        "local.ipxe.j2",
        "echo first tag {{ node.tags[0] }}\nsanboot --no-describe --drive 0x80\n",
    );
    builder.cli_ok(&["nodes", "add", "--mac", &mac(2), "--state", "active"]);
    let agent = builder.start();
    let (status, _, body) = boot(&agent, &mac(2));
    assert_eq!(status, 200);
    assert!(body.starts_with("#!ipxe\n"));
    assert!(
        body.contains(&status_line(&mac(2), "active", "local")),
        "{body}"
    );
    assert!(
        body.contains("could not build this node's script"),
        "{body}"
    );
    let log = agent.wait_for_log("script template failed");
    assert!(
        log.contains("local.ipxe.j2:1"),
        "log lacks file and line:\n{log}"
    );
}

#[test]
fn broken_operator_template_stops_start_up_with_file_and_line() {
    let builder = AgentBuilder::new().template(
        "install.ipxe.j2",
        "echo fine\necho fine\n{% if workflow %}\nkernel {{ workflow.kernel_url }\n",
    );
    let path = builder.path().join("templates/install.ipxe.j2");
    let stderr = builder.start_fails();
    assert!(
        stderr.contains(&format!("{}:4", path.display())),
        "{stderr}"
    );
}

#[test]
fn health_answers() {
    let agent = AgentBuilder::new().start();
    let (status, body) = curl_text(&agent.url("/health"));
    assert_eq!(status, 200);
    assert!(body.contains("\"status\":\"ok\""), "{body}");
}

#[test]
fn installer_reports_move_nodes_only_along_the_installers_path() {
    // DESIGN §10: /api/v1/report is open to anyone on the boot network.
    let builder = AgentBuilder::new();
    for (n, state) in [(30, "retired"), (31, "active"), (32, "pending")] {
        builder.cli_ok(&["nodes", "add", "--mac", &mac(n), "--state", state]);
    }
    let agent = builder.start();
    let token = common::admin_token(&agent);
    let report = |n: u8, event: &str| {
        let body = format!(r#"{{"mac_address": "{}", "event": "{event}"}}"#, mac(n));
        let (status, _, answer) = curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            &agent.url("/api/v1/report"),
        ]);
        (status, String::from_utf8_lossy(&answer).into_owned())
    };
    let state_of = |n: u8| {
        let (status, _, body) = curl(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &agent.url(&format!("/api/v1/nodes/{}", mac(n))),
        ]);
        assert_eq!(status, 200);
        let doc: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        doc["data"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // A forged first_boot does not revive a retired node; a forged failure
    // does not knock an active one over.
    let (status, answer) = report(30, "first_boot");
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer.contains("retired") && answer.contains("\"refused_by\":\"agent\""),
        "{answer}"
    );
    assert_eq!(state_of(30), "retired");
    let (status, answer) = report(31, "install_failed");
    assert_eq!(status, 409, "{answer}");
    assert_eq!(state_of(31), "active");
    // The installer's own path still works, step by step.
    for (event, expected) in [
        ("install_started", "installing"),
        ("install_complete", "installed"),
        ("first_boot", "active"),
    ] {
        let (status, answer) = report(32, event);
        assert_eq!(status, 200, "{event}: {answer}");
        assert_eq!(state_of(32), expected, "after {event}");
    }
}

#[test]
fn the_admin_token_is_compared_exactly() {
    let agent = AgentBuilder::new().start();
    let token = common::admin_token(&agent);
    let url = agent.url("/api/v1/nodes");
    let status_with = |header: String| curl(&["-H", &header, &url]).0;
    assert_eq!(status_with(format!("Authorization: Bearer {token}")), 200);
    // Issue 19 item 15: the scheme is case-insensitive (RFC 7235).
    assert_eq!(status_with(format!("Authorization: bearer {token}")), 200);
    assert_eq!(status_with(format!("Authorization: BEARER {token}")), 200);
    for padded in [
        format!("Authorization: Bearer  {token}"),
        format!("Authorization: Bearer \t{token}"),
        format!("Authorization: Bearer {token}x"),
        format!("Authorization: Bearer {}", &token[1..]),
        format!("Authorization: Basic {token}"),
    ] {
        assert_eq!(status_with(padded.clone()), 401, "{padded:?} was let in");
    }
}

#[test]
fn broadcast_and_multicast_macs_are_refused_as_nodes() {
    let agent = AgentBuilder::new().start();
    for group in ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb"] {
        let (status, _, body) = boot(&agent, group);
        assert_eq!(status, 400, "{group}: {body}");
        assert!(body.contains("broadcast or multicast"), "{body}");
    }
    let nodes = admin_nodes(&agent);
    assert_eq!(nodes["total"], 0, "no node was stored: {nodes}");
}

#[test]
fn standalone_keeps_at_most_max_discovered_never_assigned_nodes() {
    // DESIGN §10: random MACs booting must not grow the store forever.
    let builder = AgentBuilder::new().env("SITEBOOT_NODES_MAX_DISCOVERED", "3");
    builder.cli_ok(&["nodes", "add", "--mac", &mac(40), "--state", "active"]);
    let agent = builder.start();
    // Issue 19 item 12: an operator's node in `discovered` (the default
    // state of an added node) is not a MAC first seen at boot: the bound
    // never evicts it.
    let (code, added) = common::admin_call(
        &agent,
        "POST",
        "/api/v1/nodes",
        Some(&serde_json::json!({"mac": mac(39), "hostname": "db-01"}).to_string()),
    );
    assert_eq!(code, 201, "{added}");
    for n in 41..46 {
        let (status, _, body) = boot(&agent, &mac(n));
        assert_eq!(status, 200);
        assert!(body.contains("action=discovery"), "{body}");
    }
    let nodes = admin_nodes(&agent);
    let mut macs: Vec<String> = nodes["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|n| n["mac"].as_str().map(str::to_string))
        .collect();
    macs.sort();
    let mut expected = vec![mac(39), mac(40), mac(43), mac(44), mac(45)];
    expected.sort();
    assert_eq!(
        macs, expected,
        "the two seen longest ago went; the operator's nodes stayed"
    );
}

/// Reads from `stream` until the agent closes it; false if it is still
/// open after `patience` (far longer than the timeout under test).
fn closed_by_the_agent(stream: &mut std::net::TcpStream, patience: std::time::Duration) -> bool {
    use std::io::Read;
    stream
        .set_read_timeout(Some(patience))
        .expect("read timeout");
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn slow_and_idle_clients_never_keep_a_boot_out() {
    // DESIGN §10 / issue 9 item 7: idle and slow-header connections were
    // held for good; with the file limit at 512, 600 of them made every
    // boot time out (accept failed with EMFILE).
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;
    let agent = AgentBuilder::new()
        .env("SITEBOOT_HTTP_HEADER_TIMEOUT", "2s")
        .env("SITEBOOT_HTTP_IDLE_TIMEOUT", "3s")
        .file_limit(512)
        .start();
    let mut hogs = Vec::new();
    for n in 0..600 {
        let mut stream =
            TcpStream::connect_timeout(&agent.http, Duration::from_secs(10)).expect("connect");
        if n % 2 == 1 {
            // Half of them start a request head and never finish it.
            stream
                .write_all(b"GET /api/v1/boot?mac=52:54:00:00:00:01 HTTP/1.1\r\nHost: x\r\n")
                .expect("partial head");
        }
        hogs.push(stream);
    }
    // While all 600 are still open on the client side, boots are answered.
    for n in 0..20u8 {
        let (status, _, body) = boot(&agent, &mac(n));
        assert_eq!(status, 200, "boot {n} during the flood: {body}");
    }
    // A slow head is cut after http.header_timeout …
    let mut slow = TcpStream::connect(agent.http).expect("connect");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .expect("partial head");
    assert!(
        closed_by_the_agent(&mut slow, Duration::from_secs(60)),
        "a request head that never ends is cut"
    );
    // … and a keep-alive connection waiting for its next request after
    // http.idle_timeout.
    let mut idle = TcpStream::connect(agent.http).expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut answer = [0u8; 12];
    idle.read_exact(&mut answer).expect("answer");
    assert_eq!(&answer, b"HTTP/1.1 200");
    assert!(
        closed_by_the_agent(&mut idle, Duration::from_secs(60)),
        "an idle keep-alive connection is closed"
    );
    drop(hogs);
}

#[test]
fn an_unreadable_record_is_quarantined_and_the_agent_starts() {
    // DESIGN §10 / issue 9 item 9: a bit flip in one stored record made
    // start-up fail with "stored record for … is unreadable".
    let builder = AgentBuilder::new();
    for (n, hostname) in [(1u8, "kept-node"), (2, "flipped-node")] {
        builder.cli_ok(&[
            "nodes",
            "add",
            "--mac",
            &mac(n),
            "--state",
            "active",
            "--hostname",
            hostname,
        ]);
    }
    // One byte of the second record's JSON becomes a control character:
    // the database stays sound, the record does not decode.
    let needle = b"flipped-node";
    common::corrupt_records(
        &builder.path().join("data").join("siteboot.redb"),
        needle,
        needle.len() - 1,
    );

    let agent = builder.start();
    let status = common::get_json(&agent.url("/api/v1/status"));
    assert_eq!(status["quarantined_records"], 1, "{status}");
    agent.wait_for_log("moved to the quarantine");
    let (code, _, script) = boot(&agent, &mac(1));
    assert_eq!(code, 200);
    assert!(
        script.contains(&status_line(&mac(1), "active", "local")),
        "{script}"
    );
    // The quarantined MAC is a stranger now: discovered afresh.
    let (code, _, script) = boot(&agent, &mac(2));
    assert_eq!(code, 200);
    assert!(script.contains("state=discovered"), "{script}");
}

/// DESIGN §5 node admin (issue 13), standalone: the store takes a node as
/// given and lets it go; bad input is refused with the reason.
#[test]
fn nodes_are_added_and_deleted_through_the_admin_api_standalone() {
    let agent = AgentBuilder::new()
        .config("[workflows.debian]\nmethod = \"kernel\"\nkernel = \"debian/vmlinuz\"\n")
        .start();
    let mac = "52:54:00:00:90:01";
    let body = format!(
        r#"{{"mac": "{mac}", "state": "pending", "workflow_id": "debian", "hostname": "web-01"}}"#
    );
    let (code, answer) = admin_call(&agent, "POST", "/api/v1/nodes", Some(&body));
    assert_eq!(code, 201, "{answer}");
    assert_eq!(answer["data"]["state"], "pending");
    let (_, script) = curl_text(&agent.url(&format!("/api/v1/boot?mac={mac}")));
    assert!(script.contains("action=install"), "{script}");
    let (code, _) = admin_call(&agent, "POST", "/api/v1/nodes", Some(&body));
    assert_eq!(code, 409, "exists already");
    for (bad, why) in [
        (r#"{"mac": "01:00:5e:00:00:01"}"#, "a multicast MAC"),
        (
            r#"{"mac": "52:54:00:00:90:02", "workflow_id": "nope"}"#,
            "an unknown workflow",
        ),
        (
            r#"{"mac": "52:54:00:00:90:02", "state": "sleepy"}"#,
            "an unknown state",
        ),
        (
            r#"{"mac": "52:54:00:00:90:02", "hostname": "a;reboot"}"#,
            "a hostname that is not one",
        ),
        (
            r#"{"mac": "52:54:00:00:90:02", "colour": "red"}"#,
            "an unknown field",
        ),
        ("not json", "not JSON"),
    ] {
        let (code, answer) = admin_call(&agent, "POST", "/api/v1/nodes", Some(bad));
        assert_eq!(code, 400, "{why}: {answer}");
        assert!(answer["error"].is_string(), "{why}: {answer}");
    }
    let (code, answer) = admin_call(&agent, "DELETE", &format!("/api/v1/nodes/{mac}"), None);
    assert_eq!(code, 200, "{answer}");
    let (code, _) = admin_call(&agent, "GET", &format!("/api/v1/nodes/{mac}"), None);
    assert_eq!(code, 404);
    let (code, _) = admin_call(&agent, "DELETE", &format!("/api/v1/nodes/{mac}"), None);
    assert_eq!(code, 404);
    // Both need the admin token.
    let (code, _, _) = curl(&["-X", "POST", "--data", &body, &agent.url("/api/v1/nodes")]);
    assert_eq!(code, 401);
    let (code, _, _) = curl(&["-X", "DELETE", &agent.url(&format!("/api/v1/nodes/{mac}"))]);
    assert_eq!(code, 401);
}

/// `GET /api/v1/nodes?search=&state=&limit=` (DESIGN §5; the page shows
/// at most a page of a fleet): matches by MAC, id or hostname, filters by
/// state, counts every match in `total` while `limit` bounds `data`.
#[test]
fn the_node_list_searches_filters_and_limits() {
    let agent = AgentBuilder::new().start();
    for (n, state, hostname) in [
        (1, "active", "web-01"),
        (2, "active", "web-02"),
        (3, "pending", "db-01"),
    ] {
        let body = format!(
            r#"{{"mac": "52:54:00:00:93:0{n}", "state": "{state}", "hostname": "{hostname}"}}"#
        );
        assert_eq!(
            admin_call(&agent, "POST", "/api/v1/nodes", Some(&body)).0,
            201
        );
    }
    let macs = |answer: &serde_json::Value| -> Vec<String> {
        answer["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|n| n["mac"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let (code, all) = admin_call(&agent, "GET", "/api/v1/nodes", None);
    assert_eq!(code, 200);
    assert_eq!(all["total"], 3);
    let (_, web) = admin_call(&agent, "GET", "/api/v1/nodes?search=WEB", None);
    assert_eq!(macs(&web), ["52:54:00:00:93:01", "52:54:00:00:93:02"]);
    let (_, by_mac) = admin_call(&agent, "GET", "/api/v1/nodes?search=93:03", None);
    assert_eq!(macs(&by_mac), ["52:54:00:00:93:03"]);
    let (_, active) = admin_call(&agent, "GET", "/api/v1/nodes?state=active&limit=1", None);
    assert_eq!(macs(&active), ["52:54:00:00:93:01"]);
    assert_eq!(active["total"], 2, "total counts past the limit");
    for bad in [
        "/api/v1/nodes?state=sleepy",
        "/api/v1/nodes?limit=0",
        "/api/v1/nodes?limit=x",
    ] {
        let (code, answer) = admin_call(&agent, "GET", bad, None);
        assert_eq!(code, 400, "{bad}: {answer}");
    }
}

/// DESIGN §5 node admin (issue 13) with a controller: a new node is a
/// registration, sent or (controller gone) queued and replayed; a
/// deletion is a retirement (the state change `retired`), sent or queued,
/// and the node's next boot is refused at once either way.
#[test]
fn with_a_controller_a_new_node_is_a_registration_sent_or_queued() {
    use common::controller::FakeController;
    let controller = FakeController::start();
    let agent = AgentBuilder::new()
        .watching(&controller, "failure_threshold = 1")
        .start();
    common::wait_until(std::time::Duration::from_secs(60), "online", || {
        common::mode(&agent) == "online"
    });
    let (sent, queued) = ("52:54:00:00:91:01", "52:54:00:00:91:02");
    let (code, answer) = admin_call(
        &agent,
        "POST",
        "/api/v1/nodes",
        Some(&format!(r#"{{"mac": "{sent}", "arch": "x86_64"}}"#)),
    );
    assert_eq!(code, 201, "{answer}");
    assert_eq!(
        controller.node(sent).expect("registered")["state"],
        "discovered"
    );
    let (code, answer) = admin_call(
        &agent,
        "POST",
        "/api/v1/nodes",
        Some(&format!(r#"{{"mac": "{queued}", "state": "pending"}}"#)),
    );
    assert_eq!(code, 400, "the controller decides the state: {answer}");
    controller.down();
    common::wait_until(std::time::Duration::from_secs(60), "offline", || {
        common::mode(&agent) == "offline"
    });
    let (code, answer) = admin_call(
        &agent,
        "POST",
        "/api/v1/nodes",
        Some(&format!(r#"{{"mac": "{queued}"}}"#)),
    );
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["status"], "queued");
    controller.up();
    common::wait_until(
        std::time::Duration::from_secs(60),
        "the queued registration replayed",
        || controller.node(queued).is_some(),
    );
    let (code, answer) = admin_call(&agent, "DELETE", &format!("/api/v1/nodes/{sent}"), None);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["status"], "sent");
    assert_eq!(controller.node(sent).expect("kept")["state"], "retired");
    let boot = |mac: &str| {
        curl_text(&agent.url(&format!("/api/v1/boot?mac={mac}&arch=x86_64&platform=efi"))).1
    };
    assert!(boot(sent).contains("action=retired"), "{}", boot(sent));

    controller.down();
    common::wait_until(std::time::Duration::from_secs(60), "offline", || {
        common::mode(&agent) == "offline"
    });
    let (code, answer) = admin_call(&agent, "DELETE", &format!("/api/v1/nodes/{queued}"), None);
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["status"], "queued");
    assert!(
        boot(queued).contains("action=retired"),
        "the cache took the deletion at once: {}",
        boot(queued)
    );
    let (code, answer) = admin_call(&agent, "DELETE", "/api/v1/nodes/52:54:00:00:91:99", None);
    assert_eq!(code, 404, "{answer}");
    controller.up();
    common::wait_until(
        std::time::Duration::from_secs(60),
        "the queued deletion replayed",
        || {
            controller
                .node(queued)
                .is_some_and(|n| n["state"] == "retired")
        },
    );
}

/// DESIGN §5/§11: every admin endpoint answers 401 without the token or
/// with a wrong one (the status page adds no way around it: it is open,
/// and shows only what the open status shows).
#[test]
fn every_admin_endpoint_needs_the_token_and_the_page_is_open() {
    let agent = AgentBuilder::new().start();
    let mac = "52:54:00:00:94:01";
    let admin = [
        ("GET", "/api/v1/nodes".to_string()),
        ("POST", "/api/v1/nodes".to_string()),
        ("GET", format!("/api/v1/nodes/{mac}")),
        ("DELETE", format!("/api/v1/nodes/{mac}")),
        ("PATCH", format!("/api/v1/nodes/{mac}/state")),
        ("GET", "/api/v1/queue".to_string()),
        ("GET", "/api/v1/queue/stats".to_string()),
        ("POST", "/api/v1/queue/1/retry".to_string()),
        ("DELETE", "/api/v1/queue/1".to_string()),
        ("POST", "/api/v1/queue/clear-failed".to_string()),
        ("POST", "/api/v1/sync?full=true".to_string()),
        ("GET", "/api/v1/sync/log".to_string()),
        ("GET", "/api/v1/conflicts".to_string()),
        ("GET", "/api/v1/conflicts/1".to_string()),
        ("POST", "/api/v1/conflicts/1/resolve".to_string()),
        ("GET", "/api/v1/conflicts/policy".to_string()),
        ("PUT", "/api/v1/conflicts/policy".to_string()),
        ("GET", "/api/v1/cache".to_string()),
        ("DELETE", "/api/v1/cache".to_string()),
        ("GET", "/api/v1/cache/stats".to_string()),
        ("POST", "/api/v1/cache/prefetch".to_string()),
        ("DELETE", "/api/v1/cache/debian/vmlinuz".to_string()),
        ("GET", "/api/v1/boots".to_string()),
        ("GET", "/api/v1/events".to_string()),
        ("GET", "/metrics".to_string()),
    ];
    for (method, path) in &admin {
        let url = agent.url(path);
        for auth in [None, Some("Authorization: Bearer wrong-token")] {
            let mut args = vec![
                "-X",
                method,
                "--data",
                "{}",
                "-H",
                "Content-Type: application/json",
            ];
            if let Some(auth) = auth {
                args.extend(["-H", auth]);
            }
            args.push(&url);
            let (code, _, _) = curl(&args);
            assert_eq!(code, 401, "{method} {path} with {auth:?}");
        }
    }
    for open in ["/", "/api/v1/status", "/health"] {
        let (code, body) = curl_text(&agent.url(open));
        assert_eq!(code, 200, "{open}: {body}");
    }
    // The page names no admin data: its token stays with the operator.
    let (_, page) = curl_text(&agent.url("/"));
    assert!(!page.contains(&common::admin_token(&agent)));
}

/// Issue 19 item 9 (DESIGN §10): refused `/assets` paths reach the log
/// escaped, cut, and throttled: a `%0a` in a path cannot forge a log line,
/// raw ESC bytes never reach it, and a flood of refused requests with long
/// paths writes a bounded amount of log.
#[test]
fn refused_asset_paths_cannot_forge_or_flood_the_log() {
    let agent = AgentBuilder::new().start();
    let forged = "/assets/a%0a2026-01-01T00:00:00Z%20%20INFO%20FORGED%20line/..%1b[31m/x";
    let (status, _, _) = curl(&["--globoff", "--path-as-is", &agent.url(forged)]);
    assert_eq!(status, 403);
    let long = format!("/assets/{}/../x", "p".repeat(6000));
    let before: usize = agent.log_lines().iter().map(|l| l.len() + 1).sum();
    let flood = std::time::Instant::now();
    for _ in 0..300 {
        let (status, _, _) = curl(&["--path-as-is", &agent.url(&long)]);
        assert_eq!(status, 403);
    }
    let flood_took = flood.elapsed();
    // Another peer is still heard: the throttle is per peer first.
    let (status, _, _) = curl(&[
        "--interface",
        "127.0.0.2",
        "--path-as-is",
        &agent.url("/assets/other-peer/../x"),
    ]);
    assert_eq!(status, 403);
    agent.wait_for_log("other-peer");
    // A line written after them: once it is there, theirs are too.
    let (status, _, _) = boot(&agent, &mac(90));
    assert_eq!(status, 200);
    agent.wait_for_log("boot script served");
    let lines = agent.log_lines();
    assert!(
        !lines.iter().any(|l| l.starts_with("2026-01-01")
            || (l.contains("FORGED") && !l.contains("asset request refused"))),
        "a forged line: {lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains('\u{1b}')),
        "a raw ESC reached the log"
    );
    // One peer gets one line per 10 s (the forged one, then one per
    // window the flood spanned), not the overall allowance.
    let from_one_peer = lines
        .iter()
        .filter(|l| l.contains("asset request refused") && l.contains("127.0.0.1"))
        .count();
    let windows = 1 + flood_took.as_secs() as usize / 10 + 1;
    assert!(
        from_one_peer <= windows,
        "{from_one_peer} refusal lines from one peer over {flood_took:?}"
    );
    let after: usize = lines.iter().map(|l| l.len() + 1).sum();
    let per_request = (after - before) / 300;
    eprintln!("log bytes per refused request (6 KB paths): {per_request}");
    assert!(
        per_request < 100,
        "{per_request} log bytes per refused request ({} in all)",
        after - before
    );
}

/// DESIGN §14: `format=grub` answers the same decision as a GRUB
/// configuration (status line, single-quoted values, the kernel fetched
/// over the agent's TFTP); an unknown format is a clear 400.
#[test]
fn format_grub_renders_the_same_decision_for_grub() {
    let agent = AgentBuilder::new().config(WORKFLOWS).start();
    let mac = mac(0x61);
    let (status, _) = admin_call(
        &agent,
        "POST",
        "/api/v1/nodes",
        Some(&format!(
            r#"{{"mac": "{mac}", "state": "pending", "workflow_id": "ubuntu", "hostname": "web-01"}}"#
        )),
    );
    assert_eq!(status, 201);
    let (status, _, body) = curl(&[&agent.url(&format!("/api/v1/boot?mac={mac}&format=grub"))]);
    assert_eq!(status, 200);
    let config = String::from_utf8(body).unwrap();
    assert!(
        config.contains(&format!(
            "echo 'siteboot: mac=''{mac}'' state=''pending'' action=''install'' source=''standalone'\n"
        )),
        "{config}"
    );
    let host = agent.http.ip();
    assert!(
        config.contains(&format!(
            "if linux '(tftp,{host})/ubuntu/vmlinuz' 'console=ttyS0' 'autoinstall' "
        )),
        "{config}"
    );
    assert!(config.contains("' on ''web-01'"), "{config}");
    assert!(!config.contains("#!ipxe"), "{config}");
    let (status, _, body) = curl(&[&agent.url(&format!("/api/v1/boot?mac={mac}&format=pxelinux"))]);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("format must be ipxe or grub"));
}

/// `GET /api/v1/boot` is answered beside the router (the boot lane):
/// everything around it must still be the router's, and the lane's
/// answers must be counted and shaped as routed ones.
#[test]
fn the_boot_lane_answers_as_the_router_would() {
    let agent = AgentBuilder::new().start();
    let token = common::admin_token(&agent);
    let requests = |code: u16| -> f64 {
        let (status, _, body) = curl(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &agent.url("/metrics"),
        ]);
        assert_eq!(status, 200);
        let wanted =
            format!("siteboot_http_requests_total{{code=\"{code}\",route=\"/api/v1/boot\"}} ");
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|line| line.strip_prefix(&wanted)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let (ok_before, bad_before) = (requests(200), requests(400));

    let (status, headers, body) = boot(&agent, &mac(1));
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("#!ipxe"), "{body}");
    let header = |headers: &str, name: &str| -> Option<String> {
        headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    };
    assert_eq!(
        header(&headers, "content-length"),
        Some(body.len().to_string())
    );
    assert!(header(&headers, "content-type").is_some(), "{headers}");
    let (status, _) = curl_text(&agent.url("/api/v1/boot?mac=zz"));
    assert_eq!(status, 400);
    assert_eq!(requests(200), ok_before + 1.0, "a lane answer is counted");
    assert_eq!(requests(400), bad_before + 1.0, "so is a refusal");

    // HEAD is routed: the same head, no body.
    let url = agent.url(&format!("/api/v1/boot?mac={}", mac(1)));
    let (status, head, _) = curl(&["-I", &url]);
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        header(&head, "content-type"),
        header(&headers, "content-type")
    );
    // Other methods and near-miss paths are the router's answers.
    let (status, _, _) = curl(&["-X", "POST", &url]);
    assert_eq!(status, 405);
    let (status, _) = curl_text(&agent.url(&format!("/api/v1/boot/?mac={}", mac(1))));
    assert_eq!(status, 404);
}
