//! A real L2 segment for firmware tests: a network namespace holding a
//! bridge (the site's LAN), dnsmasq on it as the site's DHCP server, QEMU
//! guests on taps in the bridge, and, when the agent is to be "another
//! machine on the LAN", a veth pair whose one end is a bridge port and
//! whose other end, with its own address, stays in the test's namespace
//! (where the agent can still reach a fake controller on 127.0.0.1).
//!
//! Needs root (CI runs as root) and Debian's iproute2, dnsmasq-base,
//! qemu-system-x86, ovmf and ipxe-qemu; a missing one fails the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::require_tool;

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Secure Boot enforced, Microsoft's keys enrolled (Debian's `ovmf`).
pub const OVMF_SB_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.ms.fd";
pub const OVMF_SB_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
const BRIDGE: &str = "sbbr0";

/// Segments made by this process: each has its own subnet, so that the
/// host ends of several segments never share a route.
static SEGMENTS: AtomicU32 = AtomicU32::new(0);

/// The firmware a guest boots with.
#[derive(Clone, Copy, Debug)]
pub enum Firmware {
    /// OVMF's own UEFI PXE client (no iPXE ROM on the NIC).
    UefiPxe,
    /// OVMF with PXE switched off through fw_cfg: it tries UEFI HTTP Boot.
    UefiHttp,
    /// SeaBIOS with the iPXE ROM QEMU puts on the NIC.
    BiosIpxe,
    /// OVMF's Secure Boot build with Microsoft's keys enrolled (SMM and a
    /// secure flash), its own PXE client: only signed loaders start.
    UefiSecureBoot,
}

pub struct Segment {
    pub netns: String,
    /// The third octet of this segment's 10.213.x.0/24.
    net: u32,
    children: Vec<Child>,
    /// The veth end in the test's namespace, when made.
    host_link: Option<String>,
}

pub fn run(args: &[&str]) {
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
    /// A namespace with the bridge at 10.213.x.1 (and an IPv6 prefix for
    /// router advertisements: without one, iPXE waits about 13 s for IPv6).
    pub fn create() -> Segment {
        require_tool("ip");
        let count = SEGMENTS.fetch_add(1, Ordering::Relaxed);
        let net = 20 + (std::process::id() + count * 7) % 200;
        let netns = format!("sbseg{}-{count}", std::process::id());
        run(&["ip", "netns", "add", &netns]);
        let segment = Segment {
            netns,
            net,
            children: Vec::new(),
            host_link: None,
        };
        segment.inside(&["ip", "link", "set", "lo", "up"]);
        segment.inside(&["ip", "link", "add", BRIDGE, "type", "bridge"]);
        let server = format!("{}/24", segment.server_ip());
        segment.inside(&["ip", "addr", "add", &server, "dev", BRIDGE]);
        let v6 = format!("fd00:5e:{net}::1/64");
        segment.inside(&["ip", "addr", "add", &v6, "dev", BRIDGE, "nodad"]);
        segment.inside(&["ip", "link", "set", BRIDGE, "up"]);
        segment
    }

    fn inside(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", self.netns.as_str()];
        all.extend_from_slice(args);
        run(&all);
    }

    /// The address the segment's own end of the bridge holds (dnsmasq's).
    pub fn server_ip(&self) -> String {
        format!("10.213.{}.1", self.net)
    }

    /// Joins the test's own namespace to the LAN as another host: a veth
    /// pair, one end a port of the bridge, the other here at 10.213.x.2.
    /// Returns (interface name, address).
    pub fn join_host(&mut self) -> (String, String) {
        let host = format!("sbh{}", self.netns.trim_start_matches("sbseg"))
            .replace('-', "x")
            .chars()
            .take(15)
            .collect::<String>();
        let peer = "sbport0";
        run(&[
            "ip",
            "link",
            "add",
            &host,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            &self.netns,
        ]);
        self.host_link = Some(host.clone());
        self.inside(&["ip", "link", "set", peer, "master", BRIDGE, "up"]);
        let address = format!("10.213.{}.2", self.net);
        run(&["ip", "addr", "add", &format!("{address}/24"), "dev", &host]);
        run(&["ip", "link", "set", &host, "up"]);
        (host, address)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, program]);
        cmd
    }

    /// dnsmasq as the site's DHCP server on the bridge: an address pool,
    /// router advertisements, and whatever `extra` adds (nothing, for a
    /// plain site server that knows nothing of network boot).
    pub fn start_dnsmasq(&mut self, extra: &[String], log: &Path) {
        require_tool("dnsmasq");
        let net = self.net;
        let mut args = vec![
            "--keep-in-foreground".to_string(),
            "--log-facility=-".into(),
            "--log-dhcp".into(),
            "--conf-file=/dev/null".into(),
            "--port=0".into(),
            "--user=root".into(),
            "--pid-file".into(),
            "--leasefile-ro".into(),
            "--no-ping".into(),
            "--bind-interfaces".into(),
            format!("--interface={BRIDGE}"),
            format!("--dhcp-range=10.213.{net}.100,10.213.{net}.199,1h"),
            "--enable-ra".into(),
            format!("--dhcp-range=::,constructor:{BRIDGE},ra-only"),
        ];
        args.extend(extra.iter().cloned());
        // `--log-facility=-` logs to stderr: kept in `log`.
        let file = std::fs::File::create(log).expect("dnsmasq log");
        let child = self
            .command("dnsmasq")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dnsmasq log"))
            .stderr(file)
            .spawn()
            .expect("start dnsmasq");
        self.children.push(child);
    }

    /// A QEMU guest (TCG) with `firmware`, its NIC a tap on the bridge;
    /// returns its serial log. Each guest of a segment has its own files
    /// in `dir`, named by its MAC.
    pub fn start_vm(&mut self, firmware: Firmware, mac: &str, dir: &Path) -> Vm {
        require_tool("qemu-system-x86_64");
        let name = mac.replace(':', "");
        let ifup = dir.join("tap-up.sh");
        std::fs::write(
            &ifup,
            format!("#!/bin/sh\nexec ip link set \"$1\" master {BRIDGE} up\n"),
        )
        .expect("write tap script");
        run(&["chmod", "+x", ifup.to_str().expect("utf-8 path")]);
        let serial = dir.join(format!("serial-{name}.log"));
        let _ = std::fs::remove_file(&serial);
        let mut cmd = self.command("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg",
            "-m",
            "512",
            "-nodefaults",
            "-nographic",
            "-monitor",
            "none",
            "-no-reboot",
            "-boot",
            "n",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args([
            "-netdev",
            &format!(
                "tap,id=n0,script={},downscript=no",
                ifup.to_str().expect("utf-8 path")
            ),
        ]);
        match firmware {
            Firmware::UefiPxe | Firmware::UefiHttp | Firmware::UefiSecureBoot => {
                let secure = matches!(firmware, Firmware::UefiSecureBoot);
                let (code, vars_file) = if secure {
                    (OVMF_SB_CODE, OVMF_SB_VARS)
                } else {
                    (OVMF_CODE, OVMF_VARS)
                };
                for file in [code, vars_file] {
                    assert!(
                        Path::new(file).exists(),
                        "{file} missing: install Debian's ovmf package"
                    );
                }
                let vars = dir.join(format!("vars-{name}.fd"));
                std::fs::copy(vars_file, &vars).expect("copy OVMF vars");
                if secure {
                    // Secure Boot needs SMM and a flash only SMM may write.
                    cmd.args(["-machine", "q35,smm=on"])
                        .args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
                } else {
                    cmd.args(["-machine", "q35"]);
                }
                cmd.args([
                    "-drive",
                    &format!("if=pflash,format=raw,readonly=on,file={code}"),
                ])
                .args([
                    "-drive",
                    &format!("if=pflash,format=raw,file={}", vars.display()),
                ])
                // `romfile=`: no iPXE ROM; the firmware's own client boots.
                .args([
                    "-device",
                    &format!("virtio-net-pci,netdev=n0,mac={mac},romfile="),
                ]);
                if let Firmware::UefiHttp = firmware {
                    for switch in ["IPv4PXESupport", "IPv6PXESupport"] {
                        cmd.args([
                            "-fw_cfg",
                            &format!("name=opt/org.tianocore/{switch},string=n"),
                        ]);
                    }
                }
            }
            Firmware::BiosIpxe => {
                cmd.args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")]);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start qemu");
        Vm { child, serial }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(host) = &self.host_link {
            let _ = Command::new("ip").args(["link", "del", host]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// A serial log as text lines, without terminal escapes. SeaBIOS's
/// serial console wraps lines at 80 columns (inserting CR LF); those
/// pieces are joined back.
pub fn console_lines(raw: &[u8]) -> Vec<String> {
    let text = strip_escapes(&String::from_utf8_lossy(raw)).replace('\r', "");
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

/// The text without terminal escape sequences (GRUB and OVMF's setup
/// screen draw with them): `ESC [ … final byte` and two-byte `ESC x`.
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&d) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

/// A running guest; killed when dropped.
pub struct Vm {
    child: Child,
    pub serial: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    /// The serial console so far, as lines (SeaBIOS wraps at 80 columns
    /// with CR LF; those pieces are joined back).
    pub fn console(&self) -> Vec<String> {
        console_lines(&std::fs::read(&self.serial).unwrap_or_default())
    }

    /// Waits for a status line (`siteboot: mac=… source=…`) starting with
    /// `prefix` and returns it whole: GRUB's console wraps words at 80
    /// columns, so a line without its `source=` is joined with the next
    /// (which must have arrived).
    pub fn wait_for_status(
        &mut self,
        prefix: &str,
        give_up: Duration,
        context: impl Fn() -> String,
    ) -> String {
        let first = self.wait_for_line(prefix, give_up, &context);
        if first.contains(" source=") {
            return first;
        }
        let started = Instant::now();
        loop {
            let lines = self.console();
            let whole = &lines[..lines.len().saturating_sub(1)];
            if let Some(at) = whole.iter().position(|l| l.starts_with(prefix))
                && let Some(next) = whole.get(at + 1)
            {
                return format!("{} {}", whole[at].trim_end(), next.trim_end());
            }
            assert!(
                started.elapsed() < give_up,
                "the status line's rest never came"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits for the first console line starting with `prefix` and
    /// returns it. `give_up` only ends a hung boot; `context` is printed
    /// with the console when it does.
    pub fn wait_for_line(
        &mut self,
        prefix: &str,
        give_up: Duration,
        context: impl Fn() -> String,
    ) -> String {
        let started = Instant::now();
        loop {
            let lines = self.console();
            // Only whole lines: the last piece may still be arriving.
            let whole = &lines[..lines.len().saturating_sub(1)];
            if let Some(line) = whole.iter().find(|l| l.starts_with(prefix)) {
                return line.trim_end().to_string();
            }
            let exited = self.child.try_wait().ok().flatten().is_some();
            if exited || started.elapsed() > give_up {
                panic!(
                    "no console line starting {prefix:?} ({}); serial console:\n{}\n{}",
                    if exited { "QEMU exited" } else { "gave up" },
                    lines.join("\n"),
                    context()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
