//! The whole firmware chain on a real L2 segment: OVMF's own UEFI PXE
//! client (no iPXE ROM) gets DHCP from dnsmasq in a network namespace made
//! by this test, fetches `ipxe.efi` from the agent's TFTP on port 69 (with
//! the `tsize` probe firmware makes first), and the iPXE it loads then
//! chains the agent over HTTP to the status line.
//!
//! The harness is `common::segment`: a namespace with a bridge, dnsmasq on
//! it (here with the PXE boot file by client architecture and the agent's
//! URL for iPXE), a tap for QEMU. Needs root (CI runs as root) and
//! Debian's qemu-system-x86, ovmf, ipxe and dnsmasq-base; without them the
//! test fails, it does not skip.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use std::time::Duration;

use common::AgentBuilder;
use common::segment::{Firmware, Segment};

/// Far beyond a normal chain (about 15 s here under TCG).
const BOOT_GIVE_UP: Duration = Duration::from_secs(240);

#[test]
fn ovmf_pxe_fetches_ipxe_over_the_agents_tftp_then_chains_it_over_http() {
    let mac = "52:54:00:fe:00:01";
    let mut segment = Segment::create();
    let server = segment.server_ip();
    // Port 69, as firmware requires; HTTP on a port the agent picks.
    let agent = AgentBuilder::new()
        .netns(&segment.netns)
        .env("SITEBOOT_TFTP_LISTEN", &format!("{server}:69"))
        .env("SITEBOOT_HTTP_LISTEN", &format!("{server}:0"))
        .env("SITEBOOT_LOG", "debug")
        .start();
    let url = format!("http://{}/boot.ipxe", agent.http);
    let dir = agent.dir.path().to_path_buf();
    // dnsmasq as the segment's PXE DHCP server: plain UEFI PXE clients
    // (architecture 7 or 9) get `ipxe.efi` from the agent's TFTP; iPXE
    // (it sends option 175) gets the agent's bootstrap URL.
    segment.start_dnsmasq(
        &[
            "--dhcp-match=set:ipxe,175".into(),
            "--dhcp-match=set:efi64,option:client-arch,7".into(),
            "--dhcp-match=set:efi64,option:client-arch,9".into(),
            format!("--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi,,{server}"),
            format!("--dhcp-boot=tag:ipxe,{url}"),
            // iPXE: no ProxyDHCP to wait for.
            "--dhcp-option=tag:ipxe,encap:175,176,1".into(),
        ],
        &dir.join("dnsmasq.log"),
    );
    let mut vm = segment.start_vm(Firmware::UefiPxe, mac, &dir);

    let status = format!("siteboot: mac={mac} state=discovered action=discovery source=standalone");
    let log = dir.join("dnsmasq.log");
    let line = vm.wait_for_line(&status, BOOT_GIVE_UP, || {
        format!(
            "dnsmasq:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert_eq!(line, status);
    let text = vm.console().join("\n");
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
