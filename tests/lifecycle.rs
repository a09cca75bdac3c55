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
    // 16 MiB in 512-byte blocks, read at most at 8 MB/s: under way for
    // a few seconds, inside the shutdown grace period even on a slow machine.
    let data = pattern(16 << 20, 17);
    let agent = AgentBuilder::new().asset("big.bin", &data).start();
    let out = agent.dir.path().join("big.out");
    let transfer = Command::new("curl")
        .args(["-sS", "--max-time", "120", "--tftp-blksize", "512"])
        .args(["--limit-rate", "8M", "-o"])
        .arg(&out)
        .arg(format!("tftp://{}/big.bin", agent.tftp))
        .spawn()
        .expect("start curl tftp");

    // A boot storm of new MACs, each answered one stores a node.
    let macs: Vec<String> = (0..3000)
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

    wait_until(Duration::from_secs(60), "the transfer under way", || {
        std::fs::metadata(&out)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
    });
    wait_until(Duration::from_secs(60), "the boot storm under way", || {
        agent
            .log_lines()
            .iter()
            .filter(|l| l.contains("boot script served"))
            .count()
            >= 200
    });
    let before = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    assert!(
        before < data.len() as u64,
        "the transfer ended before SIGTERM; this test needs it under way"
    );
    let (exit, stopped) = agent.terminate();
    assert!(exit.success(), "SIGTERM must end the agent with 0: {exit}");
    stopped.assert_every_task_joined();
    let transfer = transfer.wait_with_output().expect("curl tftp");
    assert!(transfer.status.success(), "the transfer under way was cut");
    assert!(
        std::fs::read(&out).expect("output") == data,
        "the transfer under way arrived whole (it had {before} bytes at SIGTERM)"
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
    println!(
        "{} boots answered before SIGTERM, all stored; transfer had {before} of {} bytes at SIGTERM",
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
