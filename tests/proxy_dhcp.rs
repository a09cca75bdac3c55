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
