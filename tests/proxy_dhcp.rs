//! ProxyDHCP over real sockets (DESIGN §13): the agent answers on the
//! loopback interface at ports it reports in its ready file, broadcasts a
//! DISCOVER's answer to the client port, answers a REQUEST on the PXE
//! port to its sender, and counts what it ignores. (The firmware tests,
//! with dnsmasq beside it in a network namespace, are the next step.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::{AgentBuilder, curl};
use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xd4, 0xc0, 0x01];

/// A request as OVMF's UEFI PXE client sends it.
fn uefi_request(kind: MessageType, ciaddr: Ipv4Addr, mac: [u8; 6]) -> Vec<u8> {
    let mut message = Message::default();
    message
        .set_xid(0xcafe_0001)
        .set_chaddr(&mac)
        .set_ciaddr(ciaddr);
    let opts = message.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
    ));
    opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(7)));
    let mut bytes = Vec::new();
    message.encode(&mut Encoder::new(&mut bytes)).unwrap();
    bytes
}

/// The client's socket: every address, so that it sees broadcasts.
fn client_socket() -> (UdpSocket, u16) {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.set_broadcast(true).unwrap();
    // Bounds a test that would otherwise hang on a lost answer; the
    // assertions are on what arrives, never on how fast.
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

fn proxy_agent(client_port: u16, extra: &str) -> common::Agent {
    proxy_agent_from(AgentBuilder::new(), client_port, extra)
}

fn proxy_agent_from(builder: AgentBuilder, client_port: u16, extra: &str) -> common::Agent {
    builder
        .config(&format!(
            "[metrics]\nopen = true\n\n[dhcp]\nmode = \"proxy\"\ninterfaces = [\"lo\"]\n\
             port = 0\npxe_port = 0\nclient_port = {client_port}\n{extra}"
        ))
        .start()
}

fn reply(socket: &UdpSocket) -> Message {
    let mut buf = [0u8; 1500];
    let (len, _) = socket.recv_from(&mut buf).expect("an answer");
    Message::decode(&mut Decoder::new(&buf[..len])).unwrap()
}

fn boot_file(message: &Message) -> String {
    let field = message.fname().unwrap_or_default();
    String::from_utf8_lossy(field.split(|&b| b == 0).next().unwrap_or_default()).into_owned()
}

fn metric(agent: &common::Agent, series: &str) -> f64 {
    let (status, _, body) = curl(&[&agent.url("/metrics")]);
    assert_eq!(status, 200);
    String::from_utf8(body)
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_discover_is_answered_by_broadcast_and_a_pxe_request_to_its_sender() {
    let (client, client_port) = client_socket();
    let agent = proxy_agent(client_port, "");
    let (dhcp, pxe) = agent.dhcp.expect("the ready file names the DHCP ports");

    // A DISCOVER from a client with no address yet.
    client
        .send_to(
            &uefi_request(MessageType::Discover, Ipv4Addr::UNSPECIFIED, MAC),
            dhcp,
        )
        .unwrap();
    let offer = reply(&client);
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.xid(), 0xcafe_0001);
    assert_eq!(offer.chaddr(), MAC);
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED, "never an address");
    assert_eq!(offer.siaddr(), Ipv4Addr::LOCALHOST, "the address on lo");
    assert_eq!(boot_file(&offer), "ipxe.efi");
    assert_eq!(
        offer.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(Ipv4Addr::LOCALHOST))
    );

    // The follow-up REQUEST on the PXE port, from the address it now has.
    let (unicast, _) = client_socket();
    unicast
        .send_to(
            &uefi_request(MessageType::Request, Ipv4Addr::LOCALHOST, MAC),
            pxe,
        )
        .unwrap();
    let ack = reply(&unicast);
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(boot_file(&ack), "ipxe.efi");

    // Ignored packets are counted, by why.
    let garbage: SocketAddr = dhcp;
    client.send_to(&[1, 1, 6, 0, 9, 9, 9], garbage).unwrap();
    common::wait_until(Duration::from_secs(30), "malformed counted", || {
        metric(
            &agent,
            "siteboot_dhcp_requests_total{class=\"other\",result=\"malformed\",type=\"unknown\"}",
        ) >= 1.0
    });
    assert_eq!(
        metric(
            &agent,
            "siteboot_dhcp_requests_total{class=\"pxe\",result=\"answered\",type=\"discover\"}"
        ),
        1.0
    );

    // The same counts in the status views (issue 21).
    let status = common::get_json(&agent.url("/api/v1/status"));
    assert_eq!(status["dhcp"]["answered"]["pxe"], 2, "{status}");
    assert_eq!(status["dhcp"]["not_answered"]["malformed"], 1, "{status}");
    let shown = String::from_utf8(agent.cli(&["status", "--url", &agent.url("")]).stdout).unwrap();
    assert!(
        shown.contains("proxydhcp: answered pxe 2; not answered malformed 1"),
        "{shown}"
    );
    let (_, _, page) = curl(&[&agent.url("/")]);
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.contains("<div id=\"dhcp-row\"><dt>ProxyDHCP</dt>"),
        "{page}"
    );
    assert!(
        page.contains("<span id=\"dhcp-answered\">pxe 2</span>"),
        "{page}"
    );
}

#[test]
fn known_only_answers_the_nodes_the_agent_knows_and_no_other() {
    let known = [0x52, 0x54, 0x00, 0xd4, 0xc0, 0x02];
    let builder = AgentBuilder::new();
    builder.cli_ok(&[
        "nodes",
        "add",
        "--mac",
        "52:54:00:d4:c0:02",
        "--state",
        "active",
    ]);
    let (client, client_port) = client_socket();
    let agent = proxy_agent_from(builder, client_port, "known_only = true\n");
    let (dhcp, _) = agent.dhcp.unwrap();
    client
        .send_to(
            &uefi_request(MessageType::Discover, Ipv4Addr::UNSPECIFIED, MAC),
            dhcp,
        )
        .unwrap();
    common::wait_until(Duration::from_secs(30), "the refusal counted", || {
        metric(
            &agent,
            "siteboot_dhcp_requests_total{class=\"pxe\",result=\"unknown_mac\",type=\"discover\"}",
        ) >= 1.0
    });
    client
        .send_to(
            &uefi_request(MessageType::Discover, Ipv4Addr::UNSPECIFIED, known),
            dhcp,
        )
        .unwrap();
    let offer = reply(&client);
    assert_eq!(
        offer.chaddr(),
        known,
        "only the known node's answer arrives"
    );
    assert_eq!(boot_file(&offer), "ipxe.efi");
}

/// The packaged unit's privileges are enough, on a multi-homed host
/// (issue 21): the agent as an unprivileged user with CAP_NET_BIND_SERVICE
/// alone, in a namespace of its own with two links (veths whose other
/// ends are here, on two subnets), answers on the real ports 67 and 4011
/// of each with that link's address, and binds TFTP's port 69.
#[test]
fn proxydhcp_answers_each_link_with_its_address_with_only_the_packaged_units_capability() {
    let pid = std::process::id();
    let netns = format!("sbpd{pid}");
    let net = 20 + pid % 200;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?} (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    struct Cleanup(String, Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for link in &self.1 {
                let _ = std::process::Command::new("ip")
                    .args(["link", "del", link])
                    .status();
            }
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    run(&["ip", "netns", "add", &netns]);
    let mut cleanup = Cleanup(netns.clone(), Vec::new());
    run(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
    // (host end, agent end, host address, agent address)
    let links: Vec<(String, String, Ipv4Addr, Ipv4Addr)> = (0..2u8)
        .map(|i| {
            let host = format!("sbpd{}h{i}", pid % 100_000);
            let lan = format!("lan{i}");
            run(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &lan, "netns", &netns,
            ]);
            cleanup.1.push(host.clone());
            let here = Ipv4Addr::new(10, 78 - i, net as u8, 1);
            let there = Ipv4Addr::new(10, 78 - i, net as u8, 2);
            run(&["ip", "addr", "add", &format!("{here}/24"), "dev", &host]);
            run(&["ip", "link", "set", &host, "up"]);
            run(&[
                "ip",
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{there}/24"),
                "dev",
                &lan,
            ]);
            run(&["ip", "-n", &netns, "link", "set", &lan, "up"]);
            (host, lan, here, there)
        })
        .collect();

    let (client, client_port) = client_socket();
    let first = links[0].3;
    let agent = AgentBuilder::new()
        .netns(&netns)
        .unprivileged()
        .env("SITEBOOT_TFTP_LISTEN", &format!("{first}:69"))
        .env("SITEBOOT_HTTP_LISTEN", &format!("{first}:0"))
        .config(&format!(
            "[dhcp]\nmode = \"proxy\"\ninterfaces = [\"lan0\", \"lan1\"]\nrate_per_mac = 100\nclient_port = {client_port}\n"
        ))
        .start();
    assert!(
        agent.proc_status("Uid").starts_with("65534"),
        "{}",
        agent.proc_status("Uid")
    );
    // CAP_NET_BIND_SERVICE is bit 10: 0x400 and nothing else.
    assert_eq!(agent.proc_status("CapEff"), "0000000000000400");
    let (dhcp, pxe) = agent.dhcp.unwrap();
    assert_eq!((dhcp.port(), pxe.port()), (67, 4011));

    for (_, _, here, there) in &links {
        client
            .send_to(
                &uefi_request(MessageType::Discover, Ipv4Addr::UNSPECIFIED, MAC),
                (*there, 67),
            )
            .unwrap();
        let offer = reply(&client);
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.siaddr(), *there, "the address of the link asked on");
        assert_eq!(
            offer.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(*there))
        );
        assert_eq!(boot_file(&offer), "ipxe.efi");
        let (unicast, _) = client_socket();
        unicast
            .send_to(
                &uefi_request(MessageType::Request, *here, MAC),
                (*there, 4011),
            )
            .unwrap();
        let ack = reply(&unicast);
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.siaddr(), *there);
    }
}

/// A small deterministic generator: the same hostile packets every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One of several kinds of broken request, made from a valid one.
fn hostile_packet(rng: &mut XorShift) -> Vec<u8> {
    let valid = uefi_request(MessageType::Discover, Ipv4Addr::UNSPECIFIED, MAC);
    let mut bytes = valid.clone();
    match rng.below(7) {
        // Noise of any length.
        0 => {
            let len = rng.below(700);
            return (0..len).map(|_| rng.next() as u8).collect();
        }
        // Cut anywhere before the end option (a request missing only its
        // end option is read tolerantly, and answered).
        1 => bytes.truncate(rng.below(valid.len() - 1)),
        // An option whose length runs past the end.
        2 => {
            let end = bytes.len() - 1;
            bytes.truncate(end);
            bytes.extend_from_slice(&[60, 255, b'P', b'X']);
        }
        // Option overload (52) pointing into the file and sname fields.
        3 => {
            let end = bytes.len() - 1;
            bytes.splice(end..end, [52, 1, 3]);
        }
        // A relay loop: more hops than any real relay chain.
        4 => bytes[3] = 5 + rng.below(250) as u8,
        // A hardware address length that is not Ethernet's.
        5 => bytes[2] = 16,
        // The same option twice with different values (93).
        _ => {
            let end = bytes.len() - 1;
            bytes.splice(end..end, [93, 2, 0, 0]);
        }
    }
    bytes
}

/// Drains `socket` until it stays quiet for a moment; the answers' MACs.
fn drain(socket: &UdpSocket) -> Vec<[u8; 6]> {
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut macs = Vec::new();
    let mut buf = [0u8; 1500];
    while let Ok((len, _)) = socket.recv_from(&mut buf) {
        if let Ok(message) = Message::decode(&mut Decoder::new(&buf[..len])) {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&message.chaddr()[..6]);
            macs.push(mac);
        }
    }
    macs
}

/// Whether `mac`'s DISCOVER, sent again every half second as firmware
/// retransmits (at most 60 times), is answered.
fn answered(client: &UdpSocket, dhcp: SocketAddr, mac: [u8; 6]) -> bool {
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    for _ in 0..60 {
        client
            .send_to(
                &uefi_request(MessageType::Discover, Ipv4Addr::UNSPECIFIED, mac),
                dhcp,
            )
            .unwrap();
        let mut buf = [0u8; 1500];
        while let Ok((len, _)) = client.recv_from(&mut buf) {
            let reply = Message::decode(&mut Decoder::new(&buf[..len])).unwrap();
            if reply.chaddr()[..6] == mac {
                return true;
            }
        }
    }
    false
}

/// DESIGN §10 and §13, issue 21's hostile cases: 10,000 malformed packets
/// (noise, cuts, option overflows, overload, relay hop loops), a relay
/// that is the agent itself, a flood of DISCOVERs from one MAC and from
/// 10,000 random MACs. No panic, memory bounded, answers to one MAC
/// bounded by `dhcp.rate_per_mac`, and another node's boot still answered.
#[test]
fn hostile_packets_and_floods_cost_a_bounded_amount_and_other_boots_go_on() {
    let (client, client_port) = client_socket();
    let agent = proxy_agent(client_port, "rate_per_mac = 2\n");
    let (dhcp, _) = agent.dhcp.unwrap();
    let before = agent.peak_rss();

    // A relay that is the agent itself: its answer comes back to it as a
    // reply (not a BOOTREQUEST: malformed), which it drops; no loop.
    // Checked first, on a quiet socket: behind a flood, on a loaded
    // machine, the kernel may drop the looped reply before the agent
    // reads it.
    let malformed_series =
        "siteboot_dhcp_requests_total{class=\"other\",result=\"malformed\",type=\"unknown\"}";
    let malformed = metric(&agent, malformed_series);
    let relayed_mac = [0x52, 0x54, 0x00, 0xd4, 0xc0, 0x07];
    let mut relayed = Message::decode(&mut Decoder::new(&uefi_request(
        MessageType::Discover,
        Ipv4Addr::UNSPECIFIED,
        relayed_mac,
    )))
    .unwrap();
    relayed.set_giaddr(Ipv4Addr::LOCALHOST);
    let mut bytes = Vec::new();
    relayed.encode(&mut Encoder::new(&mut bytes)).unwrap();
    client.send_to(&bytes, dhcp).unwrap();
    common::wait_until(Duration::from_secs(30), "the looped reply dropped", || {
        metric(&agent, malformed_series) > malformed
    });
    // A node answered since: the agent has read all that came before it;
    // a loop would have brought the reply round again.
    assert!(
        answered(&client, dhcp, [0x52, 0x54, 0x00, 0xd4, 0xc0, 0x08]),
        "a node's DISCOVER after the relay loop was answered"
    );
    assert_eq!(
        metric(&agent, malformed_series),
        malformed + 1.0,
        "the relay loop ended after one turn"
    );

    let mut rng = XorShift(0x5eed_d4c9_0001);
    for _ in 0..10_000 {
        let _ = client.send_to(&hostile_packet(&mut rng), dhcp);
    }
    // Nothing of that is answered.
    assert_eq!(drain(&client), Vec::<[u8; 6]>::new());

    // One MAC, as fast as the socket goes.
    let started = std::time::Instant::now();
    for _ in 0..5_000 {
        let _ = client.send_to(
            &uefi_request(MessageType::Discover, Ipv4Addr::UNSPECIFIED, MAC),
            dhcp,
        );
    }
    // Random MACs.
    for _ in 0..10_000 {
        let mut mac = [0x52, 0x54, 0, 0, 0, 0];
        for b in &mut mac[2..] {
            *b = rng.next() as u8;
        }
        let _ = client.send_to(
            &uefi_request(MessageType::Discover, Ipv4Addr::UNSPECIFIED, mac),
            dhcp,
        );
    }
    let answers = drain(&client);
    let elapsed = started.elapsed().as_secs_f64();
    let to_one = answers.iter().filter(|m| **m == MAC).count() as f64;
    // The bucket: a burst of 2, then 2 a second (the bound is computed
    // from the time the flood took; it never waits on it).
    assert!(
        to_one >= 1.0 && to_one <= 2.0 + 2.0 * elapsed.ceil(),
        "{to_one} answers to one MAC in {elapsed:.1} s"
    );
    assert!(
        answers.len() <= 5_000 + 1,
        "at most one answer per request: {}",
        answers.len()
    );

    // Another node, retransmitting as firmware does, is answered.
    assert!(
        answered(&client, dhcp, [0x52, 0x54, 0x00, 0xd4, 0xc0, 0x09]),
        "another node's DISCOVER was answered"
    );
    let grown = agent.peak_rss().saturating_sub(before);
    assert!(grown < 32 << 20, "peak memory grew {grown} bytes");
}

/// DESIGN §14: what a UEFI x64 PXE client is given follows
/// `boot.uefi_loader`, and a node's `loader:shim` / `loader:ipxe` tag
/// (from the controller) overrides it, in the proxy's answer.
#[test]
fn the_uefi_loader_follows_the_configuration_and_the_nodes_tag() {
    use common::controller::FakeController;
    let controller = FakeController::start();
    let tagged = |mac: &str, tag: &str| {
        serde_json::json!({
            "id": format!("node-{mac}"), "mac": mac, "state": "active", "workflow_id": null,
            "tags": [tag], "updated_at": "2026-11-22T10:00:00Z", "version": 1
        })
    };
    let (shim, ipxe) = (
        [0x52, 0x54, 0x00, 0xd4, 0xc0, 0x21],
        [0x52, 0x54, 0x00, 0xd4, 0xc0, 0x22],
    );
    controller.set_raw_node(
        "52:54:00:d4:c0:21",
        tagged("52:54:00:d4:c0:21", "loader:shim"),
    );
    controller.set_raw_node(
        "52:54:00:d4:c0:22",
        tagged("52:54:00:d4:c0:22", "loader:ipxe"),
    );
    for (loader, untagged) in [("ipxe", "ipxe.efi"), ("shim", "shimx64.efi")] {
        let (client, client_port) = client_socket();
        let agent = proxy_agent(
            client_port,
            &format!(
                "\n[boot]\nuefi_loader = \"{loader}\"\n\n[central]\n{}check_interval = \"200ms\"\n",
                controller.central_toml()
            ),
        );
        common::wait_until(Duration::from_secs(60), "synced", || {
            common::get_json(&agent.url("/api/v1/status"))["nodes_cached"] == 2
        });
        let (dhcp, _) = agent.dhcp.unwrap();
        for (mac, expected) in [(MAC, untagged), (shim, "shimx64.efi"), (ipxe, "ipxe.efi")] {
            client
                .send_to(
                    &uefi_request(MessageType::Discover, Ipv4Addr::UNSPECIFIED, mac),
                    dhcp,
                )
                .unwrap();
            let offer = reply(&client);
            assert_eq!(offer.chaddr(), mac);
            assert_eq!(boot_file(&offer), expected, "boot.uefi_loader = {loader}");
        }
    }
}
