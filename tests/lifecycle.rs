//! Stopping the agent (SIGTERM): it stops taking new work, lets answers
//! and transfers under way finish, writes what it holds, and exits 0.
//! (SIGTERM during queued writes and replay is in offline_queue.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{AgentBuilder, pattern, require_tool, wait_until};

#[test]
fn sigterm_during_a_boot_storm_and_a_tftp_transfer_exits_cleanly() {
    require_tool("curl");
    let data = pattern(4 << 20, 17);
    let agent = AgentBuilder::new().asset("big.bin", &data).start();

    // A boot storm of new MACs, each answered one stores a node.
    let macs: Vec<String> = (0..10_000)
        .map(|n| {
            format!(
                "52:54:01:{:02x}:{:02x}:{:02x}",
                n >> 16,
                (n >> 8) & 0xff,
                n & 0xff
            )
        })
        .collect();
    let list = agent.dir.path().join("storm.txt");
    let urls: String = macs
        .iter()
        .map(|mac| {
            format!(
                "url = \"{}\"\noutput = \"/dev/null\"\n",
                agent.url(&format!("/api/v1/boot?mac={mac}"))
            )
        })
        .collect();
    std::fs::write(&list, urls).expect("write curl config");
    let storm = std::thread::spawn(move || {
        Command::new("curl")
            .args(["-s", "-Z", "--parallel-max", "16", "--max-time", "60"])
            .args(["-w", "%{http_code} %{url}\\n", "-K"])
            .arg(&list)
            .output()
    });
    wait_until(Duration::from_secs(60), "the boot storm under way", || {
        agent
            .log_lines()
            .iter()
            .filter(|l| l.contains("boot script served"))
            .count()
            >= 200
    });

    // Only then the transfer, read by the test through a pipe: once its
    // first bytes are in, the test stops reading, so curl stops
    // acknowledging and the transfer is certainly under way at SIGTERM,
    // however fast this machine is; the test reads on once the agent says
    // it is shutting down.
    let mut transfer = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "120",
            "--tftp-blksize",
            "512",
            "-o",
            "-",
        ])
        .arg(format!("tftp://{}/big.bin", agent.tftp))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start curl tftp");
    let mut pipe = transfer.stdout.take().expect("curl stdout");
    let (under_way, first_bytes) = std::sync::mpsc::channel::<usize>();
    let (go_on, resume) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut got = vec![0u8; 64 << 10];
        pipe.read_exact(&mut got)
            .expect("the first 64 KiB of the transfer");
        under_way.send(got.len()).expect("tell the test");
        resume.recv().expect("told to read on");
        pipe.read_to_end(&mut got)
            .expect("the rest of the transfer");
        got
    });
    let before = first_bytes
        .recv_timeout(Duration::from_secs(60))
        .expect("the transfer under way");
    agent.signal_term();
    agent.wait_for_log("shutting down");
    go_on.send(()).expect("the reader waits");
    let (exit, stopped) = agent.terminate();
    assert!(exit.success(), "SIGTERM must end the agent with 0: {exit}");
    stopped.assert_every_task_joined();
    let received = reader.join().expect("reader thread");
    let status = transfer.wait().expect("curl tftp");
    assert!(status.success(), "the transfer under way was cut");
    assert!(
        received == data,
        "the transfer under way arrived whole (the test had read {before} bytes at SIGTERM)"
    );

    // Every boot answered 200 stored its node before the agent stopped.
    let storm = storm.join().expect("storm thread").expect("run curl");
    let answered: BTreeSet<String> = String::from_utf8_lossy(&storm.stdout)
        .lines()
        .filter_map(|line| {
            let (code, url) = line.split_once(' ')?;
            let mac = url.split("mac=").nth(1)?;
            (code == "200").then(|| mac.to_string())
        })
        .collect();
    let listed = stopped.cli(&["nodes", "list"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed = String::from_utf8_lossy(&listed.stdout);
    let stored: BTreeSet<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let lost: Vec<&String> = answered
        .iter()
        .filter(|m| !stored.contains(m.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} answered boots left no node: {lost:?}",
        lost.len()
    );

    // And every one was logged: the log's writer thread writes what it
    // holds before the agent exits, the last answers' lines included.
    let logged: BTreeSet<&str> = stopped
        .log
        .iter()
        .filter(|l| l.contains("boot script served"))
        .filter_map(|l| l.split("mac=").nth(1)?.split_whitespace().next())
        .collect();
    let unlogged: Vec<&String> = answered
        .iter()
        .filter(|m| !logged.contains(m.as_str()))
        .collect();
    assert!(
        unlogged.is_empty(),
        "{} answered boots have no log line: {:?}",
        unlogged.len(),
        unlogged.iter().take(5).collect::<Vec<_>>()
    );
    println!(
        "{} boots answered before SIGTERM, all stored; the test had read {before} of the transfer's {} bytes at SIGTERM",
        answered.len(),
        data.len()
    );
}

/// Issue 20 (lifecycle): a content-cache fill from a controller that
/// stalls part-way is cut at shutdown, after the answers in
/// flight had their grace; every other task is joined, and the agent
/// exits 0. A partial file is never kept.
#[test]
fn sigterm_during_a_slow_fill_cuts_it_and_joins_every_task() {
    let controller = common::controller::FakeController::start();
    controller.add_file("debian/initrd.gz", &pattern(4 << 20, 23));
    // The controller sends 1 MiB, then holds the rest for as long as the
    // test lasts: the fill can only end by being cut.
    let gate = controller.gate_files_at(1 << 20);
    let agent = AgentBuilder::new()
        .env("SITEBOOT_SITE_ID", "fra1")
        .config(&format!(
            "[central]\n{}check_interval = \"200ms\"\n",
            controller.central_toml()
        ))
        .start();
    wait_until(Duration::from_secs(120), "online", || {
        common::mode(&agent) == "online"
    });
    let url = agent.url("/assets/debian/initrd.gz");
    let client = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "120", &url])
        .spawn()
        .expect("start curl");
    wait_until(Duration::from_secs(60), "the fill under way", || {
        !controller
            .calls_to("GET", "/api/v1/files/debian/initrd.gz")
            .is_empty()
    });
    let (exit, stopped) = agent.terminate();
    assert!(exit.success(), "SIGTERM must end the agent with 0: {exit}");
    stopped.assert_every_task_joined();
    let _ = client.wait_with_output();
    drop(gate);
    // Cut, or completed by resuming during the grace: never kept partial.
    let listed = stopped.cli(&["cache", "list"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    for entry in listed["data"].as_array().into_iter().flatten() {
        assert_eq!(entry["size"], 4 << 20, "a partial file was kept: {entry}");
    }
}
