//! Time from power-on to the status line, ProxyDHCP vs the site's DHCP
//! server configured for network boot (issue 21): OVMF's UEFI PXE, OVMF's
//! UEFI HTTP Boot and SeaBIOS with the iPXE ROM, under TCG. The LAN is
//! the tests' segment (`tests/common/segment.rs`): a bridge in a network
//! namespace with dnsmasq on it, the agent another host on the bridge.
//!
//! * proxy: dnsmasq with an address pool only; the agent answers the boot
//!   question (`dhcp.mode = proxy`).
//! * full: dnsmasq hands out the boot file itself (the README's forms);
//!   the agent's ProxyDHCP is off.

use std::time::{Duration, Instant};

use super::segment::{Firmware, Segment};
use super::{Proc, median};

const ROUNDS: usize = 2;
const GIVE_UP: Duration = Duration::from_secs(300);

/// The agent on the segment (standalone), proxy or not; its HTTP port.
fn start_agent(dir: &std::path::Path, interface: &str, address: &str, proxy: bool) -> (Proc, u16) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("mkdir");
    let config = dir.join("siteboot.toml");
    let dhcp = if proxy {
        format!("[dhcp]\nmode = \"proxy\"\ninterfaces = [\"{interface}\"]\n")
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[http]\nlisten = \"{address}:0\"\n[tftp]\nlisten = \"{address}:69\"\n{dhcp}",
            dir.join("data").display()
        ),
    )
    .expect("config");
    let ready = dir.join("ready.json");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_siteboot"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready)
        .env("SITEBOOT_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start siteboot");
    let started = Instant::now();
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "siteboot did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let doc: serde_json::Value = serde_json::from_str(&text).expect("ready file");
    let http: std::net::SocketAddr = doc["http"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("http address");
    (Proc(child), http.port())
}

/// dnsmasq's options for the full-DHCP case: the README's forms.
fn full_dhcp(address: &str, port: u16) -> Vec<String> {
    vec![
        "--dhcp-vendorclass=set:httpboot,HTTPClient".into(),
        "--dhcp-option-force=tag:httpboot,60,HTTPClient".into(),
        format!("--dhcp-boot=tag:httpboot,http://{address}:{port}/assets/ipxe.efi"),
        "--dhcp-match=set:ipxe,175".into(),
        "--dhcp-userclass=set:ipxe,iPXE".into(),
        "--dhcp-match=set:efi64,option:client-arch,7".into(),
        "--dhcp-match=set:efi64,option:client-arch,9".into(),
        format!("--dhcp-boot=tag:ipxe,http://{address}:{port}/boot.ipxe"),
        format!("--dhcp-boot=tag:!ipxe,tag:!httpboot,tag:efi64,ipxe.efi,,{address}"),
        format!("--dhcp-boot=tag:!ipxe,tag:!httpboot,tag:!efi64,undionly.kpxe,,{address}"),
        "--dhcp-option=tag:ipxe,encap:175,176,1".into(),
    ]
}

/// One boot: seconds from QEMU's start to the status line.
fn boot_once(work: &std::path::Path, firmware: Firmware, proxy: bool, round: usize) -> f64 {
    let mut segment = Segment::create();
    let (interface, address) = segment.join_host();
    let dir = work.join(format!("firmware-{firmware:?}-{proxy}-{round}"));
    let (_agent, port) = start_agent(&dir.join("agent"), &interface, &address, proxy);
    let extra = if proxy {
        Vec::new()
    } else {
        full_dhcp(&address, port)
    };
    segment.start_dnsmasq(&extra, &dir.join("dnsmasq.log"));
    let mac = format!("52:54:00:be:{:02x}:{:02x}", firmware as u8, round);
    let started = Instant::now();
    let mut vm = segment.start_vm(firmware, &mac, &dir);
    let _ = vm.wait_for_line(&format!("siteboot: mac={mac} "), GIVE_UP, || {
        std::fs::read_to_string(dir.join("dnsmasq.log")).unwrap_or_default()
    });
    started.elapsed().as_secs_f64()
}

pub fn firmware_benchmark(work: &std::path::Path) {
    println!(
        "\n== Power-on to status line under TCG, s (median of {ROUNDS} interleaved rounds) =="
    );
    let firmwares = [Firmware::UefiPxe, Firmware::UefiHttp, Firmware::BiosIpxe];
    let mut times: Vec<(Firmware, Vec<f64>, Vec<f64>)> = firmwares
        .iter()
        .map(|f| (*f, Vec::new(), Vec::new()))
        .collect();
    for round in 0..ROUNDS {
        for (firmware, proxy_times, full_times) in &mut times {
            proxy_times.push(boot_once(work, *firmware, true, round));
            full_times.push(boot_once(work, *firmware, false, round));
        }
    }
    println!(
        "{:<22} {:>8} {:>8} {:>12}",
        "firmware", "proxy", "full", "proxy/full"
    );
    for (firmware, proxy_times, full_times) in times {
        let (proxy, full) = (median(proxy_times), median(full_times));
        println!(
            "{:<22} {:>8.1} {:>8.1} {:>11.2}x",
            format!("{firmware:?}"),
            proxy,
            full,
            proxy / full
        );
    }
}

/// Issue 22: power-on to status line under Secure Boot (shim → GRUB, the
/// site server handing out `shimx64.efi`) vs the same node with
/// `ipxe.efi` and Secure Boot off, both full DHCP, interleaved.
pub fn secure_boot_benchmark(work: &std::path::Path) {
    println!(
        "\n== Power-on to status line, Secure Boot (shim -> GRUB) vs ipxe.efi, s (median of {ROUNDS} rounds) =="
    );
    let mut secure = Vec::new();
    let mut plain = Vec::new();
    for round in 0..ROUNDS {
        for shim in [true, false] {
            let mut segment = Segment::create();
            let (interface, address) = segment.join_host();
            let dir = work.join(format!("secureboot-{shim}-{round}"));
            let (_agent, port) = start_agent(&dir.join("agent"), &interface, &address, false);
            let extra = if shim {
                vec![
                    "--dhcp-match=set:efi64,option:client-arch,7".to_string(),
                    format!("--dhcp-boot=tag:efi64,shimx64.efi,,{address}"),
                ]
            } else {
                full_dhcp(&address, port)
            };
            segment.start_dnsmasq(&extra, &dir.join("dnsmasq.log"));
            let mac = format!("52:54:00:5e:{:02x}:{:02x}", u8::from(shim), round);
            let firmware = if shim {
                Firmware::UefiSecureBoot
            } else {
                Firmware::UefiPxe
            };
            let started = Instant::now();
            let mut vm = segment.start_vm(firmware, &mac, &dir);
            let _ = vm.wait_for_status(&format!("siteboot: mac={mac} "), GIVE_UP, || {
                std::fs::read_to_string(dir.join("dnsmasq.log")).unwrap_or_default()
            });
            let seconds = started.elapsed().as_secs_f64();
            if shim {
                secure.push(seconds);
            } else {
                plain.push(seconds);
            }
        }
    }
    let (secure, plain) = (median(secure), median(plain));
    println!("Secure Boot, shim -> GRUB -> status line   {secure:>6.1}");
    println!("Secure Boot off, ipxe.efi -> status line   {plain:>6.1}");
    println!(
        "shim -> GRUB vs ipxe.efi                   {:>6.2}x",
        secure / plain
    );
}
