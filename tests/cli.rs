//! The `siteboot` command line: node store editing, render, check-config.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use common::AgentBuilder;

/// A refusal: exit status 1 with a message, never a panic (101) or a
/// signal.
fn assert_refused(out: &std::process::Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected exit status 1, got {:?}: {}",
        out.status,
        stderr(out)
    );
    assert!(!stderr(out).contains("panicked"), "{what}: {}", stderr(out));
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn nodes_add_list_set_state_remove() {
    let b = AgentBuilder::new();
    let out = b.cli_ok(&[
        "nodes",
        "add",
        "--mac",
        "52-54-00-AB-CD-01",
        "--state",
        "active",
        "--hostname",
        "web-01",
    ]);
    assert!(
        out.contains("added 52:54:00:ab:cd:01 state=active"),
        "{out}"
    );
    let list = b.cli_ok(&["nodes", "list"]);
    assert!(
        list.contains("52:54:00:ab:cd:01") && list.contains("active") && list.contains("web-01"),
        "{list}"
    );
    let out = b.cli_ok(&[
        "nodes",
        "set-state",
        "--mac",
        "525400abcd01",
        "--state",
        "reprovision",
    ]);
    assert!(out.contains("state=reprovision version=2"), "{out}");
    assert!(b.cli_ok(&["nodes", "list"]).contains("reprovision"));
    b.cli_ok(&["nodes", "remove", "--mac", "52:54:00:ab:cd:01"]);
    assert!(!b.cli_ok(&["nodes", "list"]).contains("52:54:00:ab:cd:01"));
}

#[test]
fn nodes_refuse_bad_input_clearly() {
    let b = AgentBuilder::new().config("[workflows.ubuntu]\nmethod = \"kernel\"\nkernel = \"k\"\n");
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "nodes",
                "add",
                "--mac",
                "52:54:00:zz:00:01",
                "--state",
                "active",
            ],
            "invalid MAC address \"52:54:00:zz:00:01\"",
        ),
        (
            &[
                "nodes",
                "add",
                "--mac",
                "52:54:00:00:00:01",
                "--state",
                "exploded",
            ],
            "unknown node state \"exploded\"",
        ),
        (
            &[
                "nodes",
                "add",
                "--mac",
                "52:54:00:00:00:01",
                "--state",
                "active",
                "--hostname",
                "a;b",
            ],
            "invalid hostname",
        ),
        (
            &[
                "nodes",
                "add",
                "--mac",
                "52:54:00:00:00:01",
                "--state",
                "pending",
                "--workflow",
                "nope",
            ],
            "unknown workflow \"nope\"",
        ),
        (
            &[
                "nodes",
                "set-state",
                "--mac",
                "52:54:00:00:00:09",
                "--state",
                "active",
            ],
            "no node with MAC 52:54:00:00:00:09",
        ),
        (
            &["nodes", "remove", "--mac", "52:54:00:00:00:09"],
            "no node with MAC",
        ),
    ];
    for (args, expected) in cases {
        let out = b.cli(args);
        assert_refused(&out, &format!("{args:?}"));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    b.cli_ok(&[
        "nodes",
        "add",
        "--mac",
        "52:54:00:00:00:01",
        "--state",
        "pending",
        "--workflow",
        "ubuntu",
    ]);
    let out = b.cli(&[
        "nodes",
        "add",
        "--mac",
        "52:54:00:00:00:01",
        "--state",
        "active",
    ]);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert!(
        b.cli_ok(&["nodes", "list"]).contains("pending"),
        "duplicate add must not change the node"
    );
}

#[test]
fn nodes_refuse_while_the_agent_holds_the_database() {
    let b = AgentBuilder::new();
    b.cli_ok(&[
        "nodes",
        "add",
        "--mac",
        "52:54:00:00:00:01",
        "--state",
        "active",
    ]);
    let config = b.path().join("siteboot.toml");
    let agent = b.start();
    let out = std::process::Command::new(common::BIN)
        .args(["nodes", "list", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_refused(&out, "nodes list on a database in use");
    let err = stderr(&out);
    assert!(err.contains("in use by another siteboot process"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    drop(agent);
}

#[test]
fn nodes_read_the_same_environment_as_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("envdata");
    let run = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(args)
            .env("SITEBOOT_DATA_DIR", &data)
            .current_dir(dir.path())
            .output()
            .expect("run")
    };
    assert!(
        run(&[
            "nodes",
            "add",
            "--mac",
            "52:54:00:00:00:05",
            "--state",
            "active"
        ])
        .status
        .success()
    );
    assert!(
        data.join("siteboot.redb").exists(),
        "SITEBOOT_DATA_DIR ignored"
    );
    let list = run(&["nodes", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("52:54:00:00:00:05"));
    let bad = std::process::Command::new(common::BIN)
        .args(["nodes", "list"])
        .env("SITEBOOT_TFTP_MAX_SESSIONS", "lots")
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert_refused(&bad, "a bad variable");
    assert!(
        stderr(&bad).contains("tftp.max_sessions"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn invalid_configuration_stops_start_up_naming_the_key() {
    let b = AgentBuilder::new().env("SITEBOOT_CENTRAL_BOOT_LOOKUP_DEADLINE", "quick");
    let err = b.start_fails();
    assert!(err.contains("central.boot_lookup_deadline"), "{err}");
    assert!(
        err.contains("SITEBOOT_CENTRAL_BOOT_LOOKUP_DEADLINE"),
        "{err}"
    );
    let b = AgentBuilder::new().config("[offline]\ndefault_action = \"reinstall\"\n");
    let out = b.cli(&["check-config"]);
    assert_refused(&out, "check-config with a bad value");
    assert!(
        stderr(&out).contains("offline.default_action"),
        "{}",
        stderr(&out)
    );
    let ok = AgentBuilder::new().cli_ok(&["check-config"]);
    assert!(
        ok.contains("configuration OK") && ok.contains("mode=standalone"),
        "{ok}"
    );
}

#[test]
fn render_prints_the_script_without_a_server() {
    let b = AgentBuilder::new().config(
        "[workflows.ubuntu]\nmethod = \"kernel\"\nkernel = \"u/vmlinuz\"\ninitrd = [\"u/initrd\"]\n",
    );
    b.cli_ok(&[
        "nodes",
        "add",
        "--mac",
        "52:54:00:00:00:07",
        "--state",
        "pending",
        "--workflow",
        "ubuntu",
    ]);
    let online = b.cli_ok(&[
        "render",
        "--mac",
        "52-54-00-00-00-07",
        "--base-url",
        "http://10.1.2.3:8080",
    ]);
    assert!(
        online.contains(
            "echo siteboot: mac=52:54:00:00:00:07 state=pending action=install source=standalone"
        ),
        "{online}"
    );
    assert!(
        online.contains("kernel http://10.1.2.3:8080/assets/u/vmlinuz"),
        "{online}"
    );
    // Offline, a workflow that is not offline_safe is held.
    let offline = b.cli_ok(&["render", "--mac", "52:54:00:00:00:07", "--offline"]);
    assert!(offline.contains("action=local source=offline"), "{offline}");
    assert!(
        offline.contains("*** siteboot OFFLINE: central unreachable since "),
        "{offline}"
    );
    assert!(offline.contains("HOLD"), "{offline}");
    // render has no side effects: the node is still pending.
    assert!(b.cli_ok(&["nodes", "list"]).contains("pending"));
    let out = b.cli(&["render", "--mac", "nonsense"]);
    assert!(stderr(&out).contains("invalid MAC address \"nonsense\""));
}

#[test]
fn an_empty_database_file_is_recreated_and_said_so() {
    let builder = AgentBuilder::new();
    let data = builder.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir data");
    std::fs::write(data.join("siteboot.redb"), b"").expect("empty file");
    let agent = builder.start();
    let log = agent.wait_for_log("siteboot.redb was empty (0 bytes)");
    assert!(log.contains("new, empty database"), "{log}");
}

/// Issue 19 item 10 (DESIGN §10): a data_dir inside a served root would
/// hand every node the admin token and the database (`GET
/// /assets/data/admin.token`). Start-up and check-config refuse it, naming
/// both keys.
#[test]
fn a_data_dir_inside_a_served_root_is_refused() {
    let b = AgentBuilder::new();
    let inside = b.path().join("boot-assets").join("data");
    let b = b.env("SITEBOOT_DATA_DIR", &inside.display().to_string());
    let out = b.cli(&["check-config"]);
    assert_refused(&out, "check-config with data_dir in tftp.root");
    let err = stderr(&out);
    assert!(
        err.contains("data_dir") && err.contains("tftp.root"),
        "{err}"
    );
    let err = b.start_fails();
    assert!(
        err.contains("data_dir") && err.contains("tftp.root"),
        "{err}"
    );
    assert!(
        !inside.join("admin.token").exists(),
        "nothing written there"
    );
}

/// Issue 19 item 11 (DESIGN §10): credentials in `central.url` never reach
/// the log, neither at start nor in the errors of calls that fail.
#[test]
fn credentials_in_the_controller_url_are_never_logged() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let agent = AgentBuilder::new()
        .config(&format!(
            "[central]\nurl = \"http://admin:S3cretPass@127.0.0.1:{port}\"\n\
             check_interval = \"100ms\"\nfailure_threshold = 1\n"
        ))
        .start();
    let log = agent.wait_for_log("central controller configured");
    // Calls fail meanwhile (nothing listens there); their errors, which
    // name the URL, are redacted the same way (unit-tested in logsafe).
    let status = common::get_json(&agent.url("/api/v1/status"));
    let log = format!("{log}\n{status}");
    assert!(!log.contains("S3cretPass"), "{log}");
    assert!(log.contains("***@127.0.0.1"), "{log}");
}
