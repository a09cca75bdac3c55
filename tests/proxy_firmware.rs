//! ProxyDHCP with real firmware beside a real DHCP server (DESIGN §13,
//! issue 21). The site's LAN is a bridge in a network namespace; dnsmasq
//! on it is the site's DHCP server and knows nothing of network boot
//! (an address pool, no PXE or boot options). The agent is another host on
//! that LAN (a veth port of the bridge), answering in proxy mode on ports
//! 67 and 4011, TFTP on 69, HTTP on a port it picks. QEMU guests boot on
//! a tap in the bridge. Each firmware boots once with the controller
//! answering and once with it killed (the node's state comes from the
//! agent's cache). And UEFI HTTP Boot through a full DHCP server: dnsmasq
//! answering class `HTTPClient` itself, no proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::controller::FakeController;
use common::segment::{Firmware, Segment, Vm};
use common::{Agent, AgentBuilder, get_json, wait_until};

/// TCG guests are CPU-bound; on two cores, one at a time.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Far beyond a normal boot (15–40 s here under TCG); only a hung boot
/// reaches it.
const BOOT_GIVE_UP: Duration = Duration::from_secs(300);

/// The agent as a host of the segment, in proxy mode on `interface`.
fn proxy_agent(interface: &str, address: &str, extra: &str) -> AgentBuilder {
    AgentBuilder::new()
        .env("SITEBOOT_TFTP_LISTEN", &format!("{address}:69"))
        .env("SITEBOOT_HTTP_LISTEN", &format!("{address}:0"))
        .env("SITEBOOT_LOG", "debug")
        .config(&format!(
            "[metrics]\nopen = true\n\n[dhcp]\nmode = \"proxy\"\ninterfaces = [\"{interface}\"]\n{extra}"
        ))
}

/// The sum of `/metrics` series starting with `series`.
fn metric(agent: &Agent, series: &str) -> f64 {
    let (status, _, body) = common::curl(&[&agent.url("/metrics")]);
    assert_eq!(status, 200);
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn context<'a>(agent: &'a Agent, dir: &std::path::Path) -> impl Fn() -> String + 'a {
    let dnsmasq = dir.join("dnsmasq.log");
    move || {
        format!(
            "dnsmasq:\n{}\nagent:\n{}",
            std::fs::read_to_string(&dnsmasq).unwrap_or_default(),
            agent.log_lines().join("\n")
        )
    }
}

/// One guest's boot to its status line; returns the line and the console.
fn boot(
    segment: &mut Segment,
    agent: &Agent,
    firmware: Firmware,
    mac: &str,
    dir: &std::path::Path,
) -> (String, Vec<String>) {
    let mut vm: Vm = segment.start_vm(firmware, mac, dir);
    let prefix = format!("siteboot: mac={mac} ");
    let line = vm.wait_for_line(&prefix, BOOT_GIVE_UP, context(agent, dir));
    (line, vm.console())
}

/// Boots `firmware` through the proxy with the controller answering, then
/// again with the controller killed.
/// Returns the agent, the online boot's console, and the segment (the
/// agent's address lives as long as it).
fn boots_through_the_proxy(firmware: Firmware, mac: &str) -> (Agent, Vec<String>, Segment) {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let controller = FakeController::start();
    controller.set_node(mac, "active", None);
    let mut segment = Segment::create();
    let (interface, address) = segment.join_host();
    let agent = proxy_agent(
        &interface,
        &address,
        &format!(
            "\n[central]\n{}check_interval = \"200ms\"\nrequest_timeout = \"2s\"\nfailure_threshold = 1\n",
            controller.central_toml()
        ),
    )
    .start();
    let status = || get_json(&agent.url("/api/v1/status"));
    wait_until(Duration::from_secs(60), "online and synced", || {
        status()["mode"] == "online" && status()["nodes_cached"] == 1
    });
    let dir = agent.dir.path().to_path_buf();
    // The site's DHCP server: addresses only.
    segment.start_dnsmasq(&[], &dir.join("dnsmasq.log"));

    let (online, console) = boot(&mut segment, &agent, firmware, mac, &dir);
    let expected = format!("siteboot: mac={mac} state=active action=local source=");
    assert!(
        online.starts_with(&expected)
            && (online.ends_with("source=live") || online.ends_with("source=cache")),
        "{online}"
    );

    controller.down();
    wait_until(Duration::from_secs(60), "offline", || {
        status()["mode"] == "offline"
    });
    let (offline, _) = boot(&mut segment, &agent, firmware, mac, &dir);
    assert_eq!(offline, format!("{expected}offline"));

    // dnsmasq, the site's server, gave the addresses and no boot file.
    let dnsmasq = std::fs::read_to_string(dir.join("dnsmasq.log")).unwrap_or_default();
    assert!(dnsmasq.contains("DHCPACK"), "{dnsmasq}");
    assert!(!dnsmasq.contains("bootfile name"), "{dnsmasq}");
    (agent, console, segment)
}

#[test]
fn ovmf_pxe_boots_through_the_proxy_beside_a_plain_dhcp_server_and_with_the_controller_killed() {
    let (agent, console, _segment) =
        boots_through_the_proxy(Firmware::UefiPxe, "52:54:00:d4:f0:01");
    let text = console.join("\n");
    // The firmware's own client took ipxe.efi from the agent's TFTP …
    assert!(text.contains("NBP filename is ipxe.efi"), "{text}");
    let transfer = agent.wait_for_log("tftp transfer complete");
    assert!(transfer.contains("file=ipxe.efi"), "{transfer}");
    // … answered as a PXE client, then as iPXE.
    assert!(
        metric(
            &agent,
            "siteboot_dhcp_requests_total{class=\"pxe\",result=\"answered\",type=\"discover\"}"
        ) >= 2.0
    );
    assert!(
        metric(
            &agent,
            "siteboot_dhcp_requests_total{class=\"ipxe\",result=\"answered\",type=\"discover\"}"
        ) >= 2.0
    );
}

#[test]
fn ovmf_http_boot_boots_through_the_proxy_beside_a_plain_dhcp_server_and_with_the_controller_killed()
 {
    let (agent, _, _segment) = boots_through_the_proxy(Firmware::UefiHttp, "52:54:00:d4:f0:02");
    // HTTP Boot's class got the URL of ipxe.efi, fetched over HTTP; no TFTP.
    assert!(
        metric(
            &agent,
            "siteboot_dhcp_requests_total{class=\"http_boot\",result=\"answered\",type=\"discover\"}"
        ) >= 2.0
    );
    assert_eq!(metric(&agent, "siteboot_tftp_transfers_total"), 0.0);
}

#[test]
fn bios_ipxe_boots_through_the_proxy_beside_a_plain_dhcp_server_and_with_the_controller_killed() {
    let (agent, _, _segment) = boots_through_the_proxy(Firmware::BiosIpxe, "52:54:00:d4:f0:03");
    assert!(
        metric(
            &agent,
            "siteboot_dhcp_requests_total{class=\"ipxe\",result=\"answered\",type=\"discover\"}"
        ) >= 2.0
    );
    assert_eq!(
        metric(&agent, "siteboot_dhcp_requests_total{class=\"pxe\""),
        0.0
    );
}

/// No proxy: the site's dnsmasq answers UEFI HTTP Boot itself (the
/// README's dnsmasq form), with the URL of the agent's `ipxe.efi`.
#[test]
fn ovmf_http_boot_through_dnsmasq_configured_for_http_boot() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mac = "52:54:00:d4:f0:04";
    let mut segment = Segment::create();
    let (_, address) = segment.join_host();
    let agent = AgentBuilder::new()
        .env("SITEBOOT_HTTP_LISTEN", &format!("{address}:0"))
        .env("SITEBOOT_TFTP_LISTEN", &format!("{address}:0"))
        .start();
    let dir = agent.dir.path().to_path_buf();
    let port = agent.http.port();
    segment.start_dnsmasq(
        &[
            "--dhcp-vendorclass=set:httpboot,HTTPClient".into(),
            "--dhcp-option-force=tag:httpboot,60,HTTPClient".into(),
            format!("--dhcp-boot=tag:httpboot,http://{address}:{port}/assets/ipxe.efi"),
            "--dhcp-match=set:ipxe,175".into(),
            format!("--dhcp-boot=tag:ipxe,http://{address}:{port}/boot.ipxe"),
            "--dhcp-option=tag:ipxe,encap:175,176,1".into(),
        ],
        &dir.join("dnsmasq.log"),
    );
    let (line, _) = boot(&mut segment, &agent, Firmware::UefiHttp, mac, &dir);
    assert_eq!(
        line,
        format!("siteboot: mac={mac} state=discovered action=discovery source=standalone")
    );
    let dnsmasq = std::fs::read_to_string(dir.join("dnsmasq.log")).unwrap_or_default();
    assert!(dnsmasq.contains("HTTPClient"), "{dnsmasq}");
}
