//! The Secure Boot chain with real firmware (DESIGN §14, issue 22): QEMU
//! with OVMF's Secure Boot build and Microsoft's keys enrolled boots over
//! PXE from the agent: Debian's signed shim → Debian's signed GRUB → the
//! agent's GRUB bootstrap (`grub/grub.cfg`) → the node's own GRUB
//! configuration, rendered from the same decision as its iPXE script.
//! The LAN is `common::segment`: a bridge in a network namespace with
//! dnsmasq as the site's DHCP server handing out `shimx64.efi` with the
//! agent as next server (the README's full-DHCP form), the agent another
//! host on the bridge.
//!
//! Through ProxyDHCP the agent offers the shim too, and the firmware
//! loads shim and GRUB from it; but Debian 12's GRUB takes its TFTP
//! server from the site server's DHCPACK, never from a proxy offer, so it
//! asks the site's server for `grub/grub.cfg` (the last test shows it).
//!
//! Needs root and Debian's ovmf, shim-signed, grub-efi-amd64-signed,
//! qemu-system-x86 and dnsmasq-base; a missing one fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::segment::{Firmware, Segment, Vm};
use common::{Agent, AgentBuilder};

/// TCG guests are CPU-bound; on two cores, one at a time.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Far beyond a normal boot (about 25 s here under TCG).
const BOOT_GIVE_UP: Duration = Duration::from_secs(300);

/// The agent as a host of the segment (TFTP on 69, as firmware needs),
/// with `extra` configuration; its interface and address.
fn agent_on(segment: &mut Segment, extra: &str) -> (AgentBuilder, String, String) {
    let (interface, address) = segment.join_host();
    let builder = AgentBuilder::new()
        .env("SITEBOOT_TFTP_LISTEN", &format!("{address}:69"))
        .env("SITEBOOT_HTTP_LISTEN", &format!("{address}:0"))
        .env("SITEBOOT_LOG", "debug")
        .config(extra);
    (builder, interface, address)
}

/// dnsmasq as a site server configured for the Secure Boot chain: UEFI
/// x64 PXE clients get `shimx64.efi` from the agent.
fn full_dhcp(address: &str) -> Vec<String> {
    vec![
        "--dhcp-match=set:efi64,option:client-arch,7".into(),
        "--dhcp-match=set:efi64,option:client-arch,9".into(),
        format!("--dhcp-boot=tag:efi64,shimx64.efi,,{address}"),
    ]
}

fn boot(segment: &mut Segment, agent: &Agent, mac: &str, prefix: &str) -> (String, Vm) {
    let dir = agent.dir.path().to_path_buf();
    let mut vm = segment.start_vm(Firmware::UefiSecureBoot, mac, &dir);
    let line = vm.wait_for_status(prefix, BOOT_GIVE_UP, || {
        format!(
            "dnsmasq:\n{}\nagent:\n{}",
            std::fs::read_to_string(dir.join("dnsmasq.log")).unwrap_or_default(),
            agent.log_lines().join("\n")
        )
    });
    (line, vm)
}

#[test]
fn shim_and_grub_boot_under_secure_boot_to_the_nodes_status_line() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mac = "52:54:00:5b:00:01";
    let mut segment = Segment::create();
    let (builder, _, address) = agent_on(&mut segment, "");
    let agent = builder.start();
    let dir = agent.dir.path().to_path_buf();
    segment.start_dnsmasq(&full_dhcp(&address), &dir.join("dnsmasq.log"));
    let (line, vm) = boot(&mut segment, &agent, mac, &format!("siteboot: mac={mac} "));
    assert_eq!(
        line,
        format!("siteboot: mac={mac} state=discovered action=discovery source=standalone")
    );
    let log = agent.log_lines().join("\n");
    for file in ["shimx64.efi", "grubx64.efi"] {
        assert!(
            log.contains(&format!("file={file}")),
            "{file} served:\n{log}"
        );
    }
    assert!(log.contains("grub configuration served"), "{log}");
    drop(vm);
}
