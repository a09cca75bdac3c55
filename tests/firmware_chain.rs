//! The whole firmware chain on a real L2 segment: OVMF's own UEFI PXE
//! client (no iPXE ROM) gets DHCP from dnsmasq in a network namespace made
//! by this test, fetches `ipxe.efi` from the agent's TFTP on port 69 (with
//! the `tsize` probe firmware makes first), and the iPXE it loads then
//! chains the agent over HTTP to the status line.
//!
//! The harness is this file's own: a namespace with a bridge, dnsmasq on
//! it (PXE boot file by client architecture, the agent's URL for iPXE,
//! router advertisements so iPXE does not wait for IPv6), a tap for QEMU.
//! Needs root (CI runs as root) and Debian's qemu-system-x86, ovmf, ipxe
//! and dnsmasq-base; without them the test fails, it does not skip.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{AgentBuilder, require_tool};

/// Far beyond a normal chain (about 15 s here under TCG).
const BOOT_GIVE_UP: Duration = Duration::from_secs(240);

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const BRIDGE: &str = "sbbr0";
const SERVER_IP: &str = "10.213.0.1";

/// A network namespace with a bridge holding the agent's address; deleted
/// (with whatever still runs in it killed) when dropped.
struct Segment {
    netns: String,
    children: Vec<Child>,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed (this test needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Segment {
    fn create() -> Segment {
        require_tool("ip");
        let netns = format!("sbfw{}", std::process::id());
        run(&["ip", "netns", "add", &netns]);
        let segment = Segment {
            netns,
            children: Vec::new(),
        };
        let ns = segment.netns.clone();
        let inside = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", ns.as_str()];
            all.extend_from_slice(args);
            run(&all);
        };
        inside(&["ip", "link", "set", "lo", "up"]);
        inside(&["ip", "link", "add", BRIDGE, "type", "bridge"]);
        inside(&[
            "ip",
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            BRIDGE,
        ]);
        // An IPv6 prefix for dnsmasq's router advertisements: without one,
        // iPXE waits about 13 s for IPv6 configuration.
        inside(&["ip", "addr", "add", "fd00:5e::1/64", "dev", BRIDGE, "nodad"]);
        inside(&["ip", "link", "set", BRIDGE, "up"]);
        segment
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, program]);
        cmd
    }

    /// dnsmasq as the segment's PXE DHCP server: plain UEFI PXE clients
    /// (architecture 7 or 9) get `ipxe.efi` from the agent's TFTP; iPXE
    /// (it sends option 175) gets the agent's bootstrap URL.
    fn start_dhcp(&mut self, ipxe_url: &str, log: &Path) {
        require_tool("dnsmasq");
        let net = SERVER_IP.rsplit_once('.').map(|(n, _)| n).unwrap_or("");
        let child = self
            .command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--log-facility=-",
                "--log-dhcp",
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
                "--pid-file",
                "--leasefile-ro",
                "--no-ping",
                "--bind-interfaces",
                &format!("--interface={BRIDGE}"),
                &format!("--dhcp-range={net}.100,{net}.199,1h"),
                "--enable-ra",
                &format!("--dhcp-range=::,constructor:{BRIDGE},ra-only"),
                "--dhcp-match=set:ipxe,175",
                "--dhcp-match=set:efi64,option:client-arch,7",
                "--dhcp-match=set:efi64,option:client-arch,9",
                &format!("--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi,,{SERVER_IP}"),
                &format!("--dhcp-boot=tag:ipxe,{ipxe_url}"),
                // iPXE: no ProxyDHCP to wait for.
                "--dhcp-option=tag:ipxe,encap:175,176,1",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).expect("dnsmasq log"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dnsmasq");
        self.children.push(child);
    }

    /// QEMU with OVMF and no iPXE ROM on the NIC: the firmware's own PXE
    /// client boots. Its NIC is a tap on the segment's bridge.
    fn start_uefi_pxe_vm(&mut self, mac: &str, dir: &Path) -> PathBuf {
        require_tool("qemu-system-x86_64");
        for file in [OVMF_CODE, OVMF_VARS] {
            assert!(
                Path::new(file).exists(),
                "{file} missing: install Debian's ovmf package"
            );
        }
        let ifup = dir.join("tap-up.sh");
        std::fs::write(
            &ifup,
            format!("#!/bin/sh\nexec ip link set \"$1\" master {BRIDGE} up\n"),
        )
        .expect("write tap script");
        run(&["chmod", "+x", ifup.to_str().expect("utf-8 path")]);
        let vars = dir.join("ovmf-vars.fd");
        std::fs::copy(OVMF_VARS, &vars).expect("copy OVMF vars");
        let serial = dir.join("serial.log");
        let child = self
            .command("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-m",
                "512",
                "-nodefaults",
                "-nographic",
                "-monitor",
                "none",
                "-no-reboot",
                "-machine",
                "q35",
                "-boot",
                "n",
            ])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .args([
                "-drive",
                &format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
            ])
            .args([
                "-drive",
                &format!("if=pflash,format=raw,file={}", vars.display()),
            ])
            .args([
                "-netdev",
                &format!(
                    "tap,id=n0,script={},downscript=no",
                    ifup.to_str().expect("utf-8 path")
                ),
            ])
            // `romfile=`: no iPXE ROM, so OVMF's PXE client does the work.
            .args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={mac},romfile="),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start qemu");
        self.children.push(child);
        serial
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn console(serial: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(serial).unwrap_or_default()).replace('\r', "")
}

#[test]
fn ovmf_pxe_fetches_ipxe_over_the_agents_tftp_then_chains_it_over_http() {
    let mac = "52:54:00:fe:00:01";
    let mut segment = Segment::create();
    // Port 69, as firmware requires; HTTP on a port the agent picks.
    let agent = AgentBuilder::new()
        .netns(&segment.netns)
        .env("SITEBOOT_TFTP_LISTEN", &format!("{SERVER_IP}:69"))
        .env("SITEBOOT_HTTP_LISTEN", &format!("{SERVER_IP}:0"))
        .env("SITEBOOT_LOG", "debug")
        .start();
    let url = format!("http://{}/boot.ipxe", agent.http);
    let dir = agent.dir.path().to_path_buf();
    segment.start_dhcp(&url, &dir.join("dnsmasq.log"));
    let serial = segment.start_uefi_pxe_vm(mac, &dir);

    let status = format!("siteboot: mac={mac} state=discovered action=discovery source=standalone");
    let started = Instant::now();
    loop {
        let text = console(&serial);
        if text.lines().any(|l| l.trim_end() == status) {
            break;
        }
        assert!(
            started.elapsed() < BOOT_GIVE_UP,
            "status line never appeared; serial console:\n{text}\ndnsmasq:\n{}",
            std::fs::read_to_string(dir.join("dnsmasq.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let text = console(&serial);
    // The firmware's own client took ipxe.efi from the agent …
    assert!(text.contains("NBP filename is ipxe.efi"), "{text}");
    let transfer = agent.wait_for_log("tftp transfer complete");
    assert!(transfer.contains("file=ipxe.efi"), "{transfer}");
    // … after its tsize probe (OACK, then the client's error 8).
    let probe = agent.wait_for_log("tftp transfer ended by client");
    assert!(probe.contains("code=8"), "{probe}");
    // … and that iPXE chained the agent over HTTP.
    assert!(text.contains(&format!("{url}... ok")), "{text}");
}
