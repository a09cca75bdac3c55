//! End-to-end boots: QEMU (TCG) runs real firmware — SeaBIOS with the iPXE
//! NIC ROM, and OVMF (UEFI) with the ROM's EFI driver — against the agent.
//! The guest reaches the host's loopback as 10.0.2.2 (QEMU user networking):
//! iPXE is handed `http://10.0.2.2:<port>/boot.ipxe` with the port the agent
//! reported, and the agent names itself by the request's `Host`.
//! Success is the status line on the guest's serial console.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::segment::console_lines;
use common::{Agent, AgentBuilder, require_tool};

/// TCG guests are CPU-bound; on two cores, one at a time.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Far beyond a normal boot (5–10 s here); only a hung boot reaches it.
const BOOT_GIVE_UP: Duration = Duration::from_secs(180);

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

#[derive(Clone, Copy)]
enum Firmware {
    Bios,
    Uefi,
}

struct Vm {
    child: Child,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_vm(firmware: Firmware, mac: &str, bootfile: &str, dir: &Path) -> (Vm, PathBuf) {
    require_tool("qemu-system-x86_64");
    let serial = dir.join(format!("serial-{}.log", mac.replace(':', "")));
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "512",
        "-nodefaults",
        "-nographic",
        "-monitor",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", serial.display()))
    .args(["-no-reboot", "-boot", "n"])
    .args(["-netdev", &format!("user,id=n0,bootfile={bootfile}")])
    .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")]);
    if let Firmware::Uefi = firmware {
        for file in [OVMF_CODE, OVMF_VARS] {
            assert!(
                Path::new(file).exists(),
                "{file} missing: install Debian's ovmf package"
            );
        }
        let vars = dir.join(format!("vars-{}.fd", mac.replace(':', "")));
        std::fs::copy(OVMF_VARS, &vars).expect("copy OVMF vars");
        cmd.args(["-machine", "q35"])
            .args([
                "-drive",
                &format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
            ])
            .args([
                "-drive",
                &format!("if=pflash,format=raw,file={}", vars.display()),
            ]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu");
    (Vm { child }, serial)
}

/// Waits until the console holds a line equal to `status` and, for each of
/// `also`, a line containing it (lines printed after the status line reach
/// the serial log later; nothing is asserted before it is there).
fn wait_for_lines(vm: &mut Vm, serial: &Path, status: &str, also: &[&str]) -> Vec<String> {
    let started = Instant::now();
    loop {
        let lines = console_lines(&std::fs::read(serial).unwrap_or_default());
        let has_status = lines.iter().any(|l| l.trim_end() == status);
        let has_rest = also
            .iter()
            .all(|want| lines.iter().any(|l| l.contains(want)));
        if has_status && has_rest {
            return lines;
        }
        let exited = vm.child.try_wait().ok().flatten().is_some();
        if exited || started.elapsed() > BOOT_GIVE_UP {
            panic!(
                "status line {status:?} and lines {also:?} never all appeared ({}); serial console:\n{}",
                if exited {
                    "QEMU exited"
                } else {
                    "gave up waiting"
                },
                lines.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn boot_and_expect(
    builder: AgentBuilder,
    firmware: Firmware,
    mac: &str,
    status: &str,
    also: &[&str],
) -> Vec<String> {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = builder.start();
    boot_vm_and_expect(&agent, firmware, mac, status, also)
}

/// Boots one VM against a running agent; returns the console once the
/// status line and every line of `also` appeared, checking that the status
/// line is the only one. The guest reaches the agent's loopback port as
/// 10.0.2.2:<port> (the port learnt from the agent), and the agent names
/// itself by the request's `Host`.
fn boot_vm_and_expect(
    agent: &Agent,
    firmware: Firmware,
    mac: &str,
    status: &str,
    also: &[&str],
) -> Vec<String> {
    let bootfile = format!("http://10.0.2.2:{}/boot.ipxe", agent.http.port());
    let (mut vm, serial) = start_vm(firmware, mac, &bootfile, agent.dir.path());
    let lines = wait_for_lines(&mut vm, &serial, status, also);
    let statuses = lines
        .iter()
        .filter(|l| l.starts_with("siteboot: mac="))
        .count();
    assert_eq!(
        statuses,
        1,
        "exactly one status line expected:\n{}",
        lines.join("\n")
    );
    lines
}

/// An agent linked to `controller` (quick to notice an outage), with
/// `extra` configuration, once it is online with `nodes` nodes synced.
fn linked_agent(controller: &common::controller::FakeController, extra: &str, nodes: u64) -> Agent {
    let agent = AgentBuilder::new()
        .config(&format!(
            "[central]\n{}check_interval = \"200ms\"\nrequest_timeout = \"2s\"\n\
             failure_threshold = 1\n{extra}",
            controller.central_toml()
        ))
        .start();
    let status = || common::get_json(&agent.url("/api/v1/status"));
    common::wait_until(Duration::from_secs(60), "online and synced", || {
        status()["mode"] == "online" && status()["nodes_cached"] == nodes
    });
    agent
}

#[test]
fn bios_ipxe_boots_an_active_node_from_local_disk() {
    let mac = "52:54:00:5b:00:01";
    let builder = AgentBuilder::new();
    builder.cli_ok(&["nodes", "add", "--mac", mac, "--state", "active"]);
    boot_and_expect(
        builder,
        Firmware::Bios,
        mac,
        &format!("siteboot: mac={mac} state=active action=local source=standalone"),
        &["siteboot: booting local disk"],
    );
}

#[test]
fn bios_ipxe_unknown_mac_gets_discovery() {
    let mac = "52:54:00:5b:00:02";
    boot_and_expect(
        AgentBuilder::new(),
        Firmware::Bios,
        mac,
        &format!("siteboot: mac={mac} state=discovered action=discovery source=standalone"),
        &[],
    );
}

#[test]
fn uefi_ovmf_pending_node_gets_install() {
    require_tool("qemu-system-x86_64");
    let mac = "52:54:00:5b:00:03";
    let builder = AgentBuilder::new().config(
        "[workflows.debian]\nmethod = \"kernel\"\nkernel = \"debian/vmlinuz\"\ninitrd = [\"debian/initrd.gz\"]\ncmdline = \"console=ttyS0\"\n",
    );
    builder.cli_ok(&[
        "nodes",
        "add",
        "--mac",
        mac,
        "--state",
        "pending",
        "--workflow",
        "debian",
    ]);
    boot_and_expect(
        builder,
        Firmware::Uefi,
        mac,
        &format!("siteboot: mac={mac} state=pending action=install source=standalone"),
        &["siteboot: installing debian"],
    );
}

#[test]
fn console_wrap_is_undone() {
    let long = format!("{}{}", "a".repeat(80), "tail");
    let raw = format!("x\r\n{}\r\n{}\r\ny\r\n", &long[..80], &long[80..]);
    assert_eq!(console_lines(raw.as_bytes())[1], long);
    assert_eq!(console_lines(raw.as_bytes())[2], "y");
}

#[test]
fn bios_ipxe_pending_node_at_the_controller_gets_a_live_install() {
    use common::controller::FakeController;
    let controller = FakeController::start();
    let mac = "52:54:00:5b:00:04";
    controller.add_workflow(serde_json::json!({
        "id": "debian", "name": "debian", "method": "kernel",
        "kernel": "debian/vmlinuz", "initrd": ["debian/initrd.gz"], "cmdline": "console=ttyS0"
    }));
    controller.set_node(mac, "pending", Some("debian"));
    let builder = AgentBuilder::new().config(&format!(
        "[central]\n{}check_interval = \"1s\"\nrequest_timeout = \"2s\"\n",
        controller.central_toml()
    ));
    boot_and_expect(
        builder,
        Firmware::Bios,
        mac,
        &format!("siteboot: mac={mac} state=pending action=install source=live"),
        &["siteboot: installing debian"],
    );
    assert!(!controller.calls_to("GET", "/api/v1/nodes").is_empty());
}

#[test]
fn bios_ipxe_boots_offline_then_the_queue_reaches_the_controller() {
    use common::controller::FakeController;
    use common::{get_json, wait_until};
    let controller = FakeController::start();
    let active = "52:54:00:5b:00:05";
    let unknown = "52:54:00:5b:00:06";
    controller.set_node(active, "active", None);
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = linked_agent(
        &controller,
        "[offline]\ndefault_action = \"discovery\"\n",
        1,
    );
    let status = || get_json(&agent.url("/api/v1/status"));
    let limit = Duration::from_secs(60);
    controller.down();
    wait_until(limit, "offline", || status()["mode"] == "offline");

    boot_vm_and_expect(
        &agent,
        Firmware::Bios,
        active,
        &format!("siteboot: mac={active} state=active action=local source=offline"),
        &["*** siteboot OFFLINE: central unreachable since "],
    );
    boot_vm_and_expect(
        &agent,
        Firmware::Bios,
        unknown,
        &format!("siteboot: mac={unknown} state=discovered action=discovery source=offline"),
        &[],
    );
    assert!(controller.node(unknown).is_none());

    controller.up();
    wait_until(limit, "queue replayed", || {
        let s = status();
        s["mode"] == "online" && s["queue"]["pending"] == 0 && s["queue"]["in_flight"] == 0
    });
    assert!(
        controller.node(unknown).is_some(),
        "the queued registration arrived"
    );
    let booted: Vec<(String, String)> = controller
        .applied()
        .into_iter()
        .filter(|w| w.op == "report" && w.body["event"] == "boot_started")
        .map(|w| {
            (
                w.mac,
                w.body["event_metadata"]["source"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    for mac in [active, unknown] {
        assert!(
            booted
                .iter()
                .any(|(m, source)| m == mac && source == "offline"),
            "boot event of {mac} arrived: {booted:?}"
        );
    }
}

/// DESIGN §8 boot rule, on real firmware (issue 11): a node whose change
/// made at the site (retire it) conflicts with the controller's
/// `reprovision`, left to an operator, boots its disk with the CONFLICT
/// banner naming the conflict; once the operator keeps the controller's
/// side, the same node installs.
#[test]
fn bios_ipxe_node_with_an_open_conflict_boots_its_disk_then_installs_after_keep_central() {
    use common::controller::FakeController;
    use common::{admin_token, curl};
    let controller = FakeController::start();
    controller.check_versions();
    let mac = "52:54:00:5b:00:07";
    controller.add_workflow(serde_json::json!({
        "id": "debian", "name": "debian", "method": "kernel",
        "kernel": "debian/vmlinuz", "initrd": ["debian/initrd.gz"], "cmdline": "console=ttyS0"
    }));
    controller.set_node(mac, "active", None);
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = linked_agent(&controller, "[conflicts]\nstate_mismatch = \"manual\"\n", 1);
    let token = admin_token(&agent);
    let auth = format!("Authorization: Bearer {token}");
    let admin = |method: &str, path: &str, body: &str| {
        let (code, _, answer) = curl(&[
            "-X",
            method,
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data",
            body,
            &agent.url(path),
        ]);
        let answer: serde_json::Value =
            serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null);
        (code, answer)
    };
    let id = common::open_retired_vs_reprovision_conflict(&agent, &controller, mac, "debian");

    boot_vm_and_expect(
        &agent,
        Firmware::Bios,
        mac,
        &format!("siteboot: mac={mac} state=reprovision action=local source=live"),
        &[
            &format!("*** siteboot CONFLICT {id}:"),
            "siteboot: booting local disk",
        ],
    );

    let (code, settled) = admin(
        "POST",
        &format!("/api/v1/conflicts/{id}/resolve"),
        r#"{"resolution": "keep_central"}"#,
    );
    assert_eq!(code, 200, "{settled}");
    let lines = boot_vm_and_expect(
        &agent,
        Firmware::Bios,
        mac,
        &format!("siteboot: mac={mac} state=reprovision action=install source=live"),
        &["siteboot: installing debian"],
    );
    assert!(
        !lines.iter().any(|l| l.contains("CONFLICT")),
        "{}",
        lines.join("\n")
    );
    assert_eq!(controller.node(mac).expect("node")["state"], "reprovision");
}

/// DESIGN §12, issue 12: with the controller killed, a `pending` node
/// whose workflow is `offline_safe`, and whose files were prefetched while
/// the controller was there, boots a real Linux kernel and initrd from
/// the agent's content cache (SeaBIOS + iPXE, over HTTP) to the initrd's
/// line. A node whose workflow lacks a file at the controller (so not
/// cached) boots its disk with the banner naming the file.
#[test]
fn bios_ipxe_installs_a_real_linux_from_the_cache_with_the_controller_killed() {
    use common::controller::FakeController;
    use common::{get_json, wait_until};
    let (kernel, initrd) = common::linux_assets();
    let controller = FakeController::start();
    controller.add_file("linux/vmlinuz", &kernel);
    controller.add_file("linux/initrd.gz", &initrd);
    for (id, initrd) in [
        ("linux", "linux/initrd.gz"),
        ("linux-gap", "linux/absent.gz"),
    ] {
        controller.add_workflow(serde_json::json!({
            "id": id, "name": id, "method": "kernel", "kernel": "linux/vmlinuz",
            "initrd": [initrd], "cmdline": "console=ttyS0", "offline_safe": true
        }));
    }
    let (ready, short) = ("52:54:00:5b:00:08", "52:54:00:5b:00:09");
    controller.set_node(ready, "pending", Some("linux"));
    controller.set_node(short, "pending", Some("linux-gap"));
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = linked_agent(&controller, "", 2);
    let limit = Duration::from_secs(120);
    let cached = || {
        let token = common::admin_token(&agent);
        let (_, _, body) = common::curl(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &agent.url("/api/v1/cache/stats"),
        ]);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default()["data"]["entries"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_until(limit, "the workflow's files prefetched", || cached() == 2);
    drop(controller);
    wait_until(limit, "offline", || {
        get_json(&agent.url("/api/v1/status"))["mode"] == "offline"
    });

    boot_vm_and_expect(
        &agent,
        Firmware::Bios,
        ready,
        &format!("siteboot: mac={ready} state=pending action=install source=offline"),
        &["siteboot: installing linux", "SITEBOOT-LINUX-UP kernel="],
    );
    boot_vm_and_expect(
        &agent,
        Firmware::Bios,
        short,
        &format!("siteboot: mac={short} state=pending action=local source=offline"),
        &[
            "linux/absent.gz is not in the agent's content cache",
            "siteboot: booting local disk",
        ],
    );
}
