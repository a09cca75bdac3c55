//! End-to-end boots: QEMU (TCG) runs real firmware — SeaBIOS with the iPXE
//! NIC ROM, and OVMF (UEFI) with the ROM's EFI driver — against the agent.
//! The guest reaches the host's loopback as 10.0.2.2 (QEMU user networking),
//! so the agent runs with `http.public_url = http://10.0.2.2:<port>`.
//! Success is the status line on the guest's serial console.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{AgentBuilder, free_tcp_port, require_tool};

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

/// The serial log as text lines. SeaBIOS's serial console wraps lines at
/// 80 columns (inserting CR LF); those pieces are joined back.
fn console_lines(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw).replace('\r', "");
    let mut lines: Vec<String> = Vec::new();
    let mut continues = false;
    for piece in text.split('\n') {
        if continues && let Some(last) = lines.last_mut() {
            last.push_str(piece);
        } else {
            lines.push(piece.to_string());
        }
        continues = piece.chars().count() == 80;
    }
    lines
}

fn wait_for_line(vm: &mut Vm, serial: &Path, wanted: &str) -> Vec<String> {
    let started = Instant::now();
    loop {
        let lines = console_lines(&std::fs::read(serial).unwrap_or_default());
        if lines.iter().any(|l| l.trim_end() == wanted) {
            return lines;
        }
        let exited = vm.child.try_wait().ok().flatten().is_some();
        if exited || started.elapsed() > BOOT_GIVE_UP {
            panic!(
                "status line {wanted:?} never appeared ({}); serial console:\n{}",
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
    port: u16,
    firmware: Firmware,
    mac: &str,
    wanted: &str,
) -> Vec<String> {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = builder
        .http_port(port)
        .env(
            "SITEBOOT_HTTP_PUBLIC_URL",
            &format!("http://10.0.2.2:{port}"),
        )
        .start();
    boot_vm_and_expect(agent.dir.path(), port, firmware, mac, wanted)
}

/// Boots one VM against an agent already listening on `port` (with
/// `public_url` http://10.0.2.2:port); returns the console once `wanted`
/// appeared, checking it is the only status line.
fn boot_vm_and_expect(
    dir: &Path,
    port: u16,
    firmware: Firmware,
    mac: &str,
    wanted: &str,
) -> Vec<String> {
    let bootfile = format!("http://10.0.2.2:{port}/boot.ipxe");
    let (mut vm, serial) = start_vm(firmware, mac, &bootfile, dir);
    let lines = wait_for_line(&mut vm, &serial, wanted);
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

#[test]
fn bios_ipxe_boots_an_active_node_from_local_disk() {
    let port = free_tcp_port();
    let mac = "52:54:00:5b:00:01";
    let builder = AgentBuilder::new();
    builder.cli_ok(&["nodes", "add", "--mac", mac, "--state", "active"]);
    let lines = boot_and_expect(
        builder,
        port,
        Firmware::Bios,
        mac,
        &format!("siteboot: mac={mac} state=active action=local source=standalone"),
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("siteboot: booting local disk"))
    );
}

#[test]
fn bios_ipxe_unknown_mac_gets_discovery() {
    let port = free_tcp_port();
    let mac = "52:54:00:5b:00:02";
    boot_and_expect(
        AgentBuilder::new(),
        port,
        Firmware::Bios,
        mac,
        &format!("siteboot: mac={mac} state=discovered action=discovery source=standalone"),
    );
}

#[test]
fn uefi_ovmf_pending_node_gets_install() {
    require_tool("qemu-system-x86_64");
    let port = free_tcp_port();
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
    let lines = boot_and_expect(
        builder,
        port,
        Firmware::Uefi,
        mac,
        &format!("siteboot: mac={mac} state=pending action=install source=standalone"),
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("siteboot: installing debian")),
        "{}",
        lines.join("\n")
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
    let port = free_tcp_port();
    let builder = AgentBuilder::new().config(&format!(
        "[central]\nurl = \"{}\"\ncheck_interval = \"1s\"\nrequest_timeout = \"2s\"\n",
        controller.url()
    ));
    let lines = boot_and_expect(
        builder,
        port,
        Firmware::Bios,
        mac,
        &format!("siteboot: mac={mac} state=pending action=install source=live"),
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("siteboot: installing debian")),
        "{}",
        lines.join("\n")
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
    let port = free_tcp_port();
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = AgentBuilder::new()
        .config(&format!(
            "[central]\nurl = \"{}\"\ncheck_interval = \"200ms\"\nrequest_timeout = \"2s\"\n\
             failure_threshold = 1\n[offline]\ndefault_action = \"discovery\"\n",
            controller.url()
        ))
        .http_port(port)
        .env(
            "SITEBOOT_HTTP_PUBLIC_URL",
            &format!("http://10.0.2.2:{port}"),
        )
        .start();
    let status = || get_json(&agent.url("/api/v1/status"));
    let limit = Duration::from_secs(60);
    wait_until(limit, "online and synced", || {
        status()["mode"] == "online" && status()["nodes_cached"] == 1
    });
    controller.down();
    wait_until(limit, "offline", || status()["mode"] == "offline");

    let lines = boot_vm_and_expect(
        agent.dir.path(),
        port,
        Firmware::Bios,
        active,
        &format!("siteboot: mac={active} state=active action=local source=offline"),
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("*** siteboot OFFLINE: central unreachable since ")),
        "{}",
        lines.join("\n")
    );
    boot_vm_and_expect(
        agent.dir.path(),
        port,
        Firmware::Bios,
        unknown,
        &format!("siteboot: mac={unknown} state=discovered action=discovery source=offline"),
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
                w.body["metadata"]["source"]
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
