//! The packet reader and the answer, on requests shaped like the real
//! firmwares' (OVMF's PXE and HTTP Boot, a BIOS PXE ROM, iPXE), on
//! malformed packets, and on arbitrary bytes.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use proptest::prelude::*;

use super::answer::{Answering, NoAnswer, answer, destination};
use super::packet::{Ignored, Kind, parse};
use crate::model::client::UefiLoader;
use crate::serve::origin::AgentOrigin;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// A request as a firmware builds it.
fn request(kind: MessageType, class: &str, arch: u16, extra: &[DhcpOption]) -> Vec<u8> {
    let mut message = Message::default();
    message
        .set_xid(0x1234_5678)
        .set_chaddr(&MAC)
        .opts_mut()
        .insert(DhcpOption::MessageType(kind));
    let opts = message.opts_mut();
    opts.insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
    opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
        arch,
    )));
    opts.insert(DhcpOption::ClientMachineIdentifier(
        std::iter::once(0).chain(1..=16).collect(),
    ));
    for option in extra {
        opts.insert(option.clone());
    }
    let mut bytes = Vec::new();
    message.encode(&mut Encoder::new(&mut bytes)).unwrap();
    bytes
}

fn discover(class: &str, arch: u16) -> Vec<u8> {
    request(MessageType::Discover, class, arch, &[])
}

const BIOS: &str = "PXEClient:Arch:00000:UNDI:002001";
const UEFI: &str = "PXEClient:Arch:00007:UNDI:003016";
const HTTP: &str = "HTTPClient:Arch:00016:UNDI:003000";

fn answering(origin: &AgentOrigin, on_pxe_port: bool) -> Answering<'_> {
    Answering {
        server: SERVER,
        origin,
        loader: UefiLoader::Ipxe,
        on_pxe_port,
    }
}

/// The reply, decoded, with its boot file name.
fn reply_to(bytes: &[u8], on_pxe_port: bool) -> Result<(Message, String), NoAnswer> {
    let origin = AgentOrigin::new(None, 8080);
    let parsed = parse(bytes).unwrap();
    let answer = answer(&parsed, &answering(&origin, on_pxe_port))?;
    let message = Message::decode(&mut Decoder::new(&answer.bytes)).unwrap();
    // The file field is NUL-padded to its 128 bytes.
    let field = message.fname().unwrap_or_default();
    let name = field.split(|&b| b == 0).next().unwrap_or_default();
    let file = String::from_utf8(name.to_vec()).unwrap();
    assert_eq!(file, answer.boot_file);
    Ok((message, file))
}

fn class_of(message: &Message) -> String {
    match message.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(c)) => String::from_utf8(c.clone()).unwrap(),
        other => panic!("no option 60: {other:?}"),
    }
}

#[test]
fn a_bios_pxe_client_gets_undionly_and_no_boot_server_discovery() {
    let (reply, file) = reply_to(&discover(BIOS, 0), false).unwrap();
    assert_eq!(file, "undionly.kpxe");
    assert_eq!(reply.opcode(), Opcode::BootReply);
    assert_eq!(reply.xid(), 0x1234_5678);
    assert_eq!(reply.chaddr(), MAC);
    assert_eq!(reply.siaddr(), SERVER);
    assert_eq!(reply.yiaddr(), Ipv4Addr::UNSPECIFIED, "never an address");
    assert_eq!(reply.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(
        reply.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(class_of(&reply), "PXEClient");
    assert_eq!(
        reply.opts().get(OptionCode::VendorExtensions),
        Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
    );
}

#[test]
fn a_uefi_pxe_client_gets_ipxe_efi_or_the_shim_and_no_option_43() {
    let (reply, file) = reply_to(&discover(UEFI, 7), false).unwrap();
    assert_eq!(file, "ipxe.efi");
    assert_eq!(class_of(&reply), "PXEClient");
    assert!(reply.opts().get(OptionCode::VendorExtensions).is_none());
    // EFI byte code (9): what many x64 firmwares send.
    assert_eq!(reply_to(&discover(UEFI, 9), false).unwrap().1, "ipxe.efi");

    let origin = AgentOrigin::new(None, 8080);
    let shim = Answering {
        loader: UefiLoader::Shim,
        ..answering(&origin, false)
    };
    let parsed = parse(&discover(UEFI, 7)).unwrap();
    assert_eq!(answer(&parsed, &shim).unwrap().boot_file, "shimx64.efi");
}

#[test]
fn uefi_http_boot_gets_a_url_with_an_ip_literal_and_its_class_echoed() {
    // The public URL is a host name; a proxy offer carries no DNS server.
    let origin = AgentOrigin::new(Some("http://boot.example:8080".into()), 8080);
    let parsed = parse(&discover(HTTP, 16)).unwrap();
    let answer = answer(&parsed, &answering(&origin, false)).unwrap();
    assert_eq!(answer.boot_file, "http://10.213.0.2:8080/assets/ipxe.efi");
    let reply = Message::decode(&mut Decoder::new(&answer.bytes)).unwrap();
    assert_eq!(class_of(&reply), "HTTPClient");
    assert_eq!(
        reply_to(&discover("HTTPClient:Arch:00019:UNDI:003000", 19), false)
            .unwrap()
            .1,
        "http://10.213.0.2:8080/assets/ipxe-arm64.efi"
    );
}

#[test]
fn ipxe_gets_the_bootstrap_url_not_itself_again() {
    let by_user_class = request(
        MessageType::Discover,
        UEFI,
        7,
        &[DhcpOption::UserClass(b"\x04iPXE".to_vec())],
    );
    let (reply, file) = reply_to(&by_user_class, false).unwrap();
    assert_eq!(file, "http://10.213.0.2:8080/boot.ipxe");
    assert_eq!(class_of(&reply), "PXEClient");
    assert!(reply.opts().get(OptionCode::VendorExtensions).is_none());
    // Option 175 (iPXE's encapsulated options) alone says the same.
    let mut by_175 = discover(BIOS, 0);
    let end = by_175.len() - 1;
    by_175.splice(end..end, [175, 3, 1, 1, 1]);
    assert_eq!(
        reply_to(&by_175, false).unwrap().1,
        "http://10.213.0.2:8080/boot.ipxe"
    );
}

#[test]
fn the_17_byte_machine_id_is_mirrored() {
    let (reply, _) = reply_to(&discover(UEFI, 7), false).unwrap();
    match reply.opts().get(OptionCode::ClientMachineIdentifier) {
        Some(DhcpOption::ClientMachineIdentifier(id)) => assert_eq!(id.len(), 17),
        other => panic!("option 97 not mirrored: {other:?}"),
    }
}

#[test]
fn ports_and_message_types_decide_what_is_answered() {
    let req = |server: Option<Ipv4Addr>| {
        let extra: Vec<DhcpOption> = server
            .map(DhcpOption::ServerIdentifier)
            .into_iter()
            .collect();
        request(MessageType::Request, UEFI, 7, &extra)
    };
    // The PXE port: a REQUEST is acknowledged, a DISCOVER is not for it.
    let (ack, _) = reply_to(&req(Some(SERVER)), true).unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(
        reply_to(&req(None), true).unwrap().0.opts().msg_type(),
        Some(MessageType::Ack)
    );
    assert_eq!(
        reply_to(&discover(UEFI, 7), true).unwrap_err(),
        NoAnswer::DiscoverOnPxePort
    );
    // Port 67: a REQUEST for the site's server is not ours.
    let other = Ipv4Addr::new(10, 213, 0, 1);
    assert_eq!(
        reply_to(&req(Some(other)), false).unwrap_err(),
        NoAnswer::OtherServer
    );
    assert_eq!(
        reply_to(&req(None), false).unwrap_err(),
        NoAnswer::OtherServer
    );
    assert!(reply_to(&req(Some(SERVER)), false).is_ok());
    // Other message types and ordinary DHCP clients are ignored.
    let inform = request(MessageType::Inform, UEFI, 7, &[]);
    assert_eq!(parse(&inform).unwrap_err(), Ignored::OtherType);
    let plain = discover("MSFT 5.0", 0);
    assert_eq!(parse(&plain).unwrap_err(), Ignored::NotPxe);
    // An architecture with no file here (32-bit ARM UEFI).
    assert_eq!(
        reply_to(&discover("PXEClient:Arch:00010:UNDI:003000", 10), false).unwrap_err(),
        NoAnswer::NoBootFile
    );
}

#[test]
fn answers_go_to_the_relay_the_client_or_the_link() {
    let from = SocketAddrV4::new(Ipv4Addr::new(10, 213, 0, 50), 4011);
    let mut parsed = parse(&discover(UEFI, 7)).unwrap();
    assert_eq!(
        destination(&parsed, from, 67, 68),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
    );
    parsed.ciaddr = Ipv4Addr::new(10, 213, 0, 50);
    assert_eq!(destination(&parsed, from, 67, 68), from);
    parsed.giaddr = Ipv4Addr::new(10, 9, 0, 1);
    assert_eq!(
        destination(&parsed, from, 67, 68),
        SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 1), 67)
    );
    assert_eq!(parsed.kind, Kind::Discover);
}

#[test]
fn malformed_packets_are_named_and_dropped() {
    let good = discover(UEFI, 7);
    let broken = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = good.clone();
        edit(&mut bytes);
        parse(&bytes)
    };
    let malformed = |r: Result<_, Ignored>| matches!(r, Err(Ignored::Malformed(_)));
    assert!(malformed(broken(&|b| b.truncate(200))));
    assert!(malformed(broken(&|b| b[0] = 2)), "a BOOTREPLY");
    assert!(
        malformed(broken(&|b| b[2] = 20)),
        "hlen past chaddr's 16 bytes"
    );
    assert!(malformed(broken(&|b| b[2] = 16)), "not a MAC");
    assert!(malformed(broken(&|b| b[3] = 5)), "five relay hops");
    assert!(malformed(broken(&|b| b[236] = 0)), "no magic cookie");
    assert!(malformed(broken(&|b| {
        let end = b.len() - 1;
        b[end] = 60; // an option that claims what is not there
        b.push(200);
    })));
    assert!(malformed(broken(&|b| {
        let end = b.len() - 1;
        b.splice(end..end, [94, 2, 1, 2]); // option 94 is 3 bytes
    })));
    assert!(malformed(broken(&|b| {
        let end = b.len() - 1;
        b.splice(end..end, [94, 3, 1, 2, 3, 94, 3, 1, 2, 3]); // twice
    })));
    assert!(malformed(broken(&|b| {
        let end = b.len() - 1;
        b.splice(end..end, [52, 1, 3]); // overload
    })));
}

/// Requests real firmware sent, captured on the test LAN of
/// `tests/proxy_firmware.rs` by `tests/harness/capture-dhcp.py` (the DHCP
/// payload of each datagram, as it arrived).
mod captured {
    pub const OVMF_PXE_DISCOVER: &[u8] =
        include_bytes!("../../../tests/fixtures/dhcp/ovmf-pxe-discover.bin");
    /// Its REQUEST of the site server's address (option 54 names dnsmasq).
    pub const OVMF_PXE_REQUEST_TO_DHCP_SERVER: &[u8] =
        include_bytes!("../../../tests/fixtures/dhcp/ovmf-pxe-request-to-dhcp-server.bin");
    /// Its REQUEST to the proxy's port 4011, for the boot file.
    pub const OVMF_PXE_REQUEST_4011: &[u8] =
        include_bytes!("../../../tests/fixtures/dhcp/ovmf-pxe-request-4011.bin");
    pub const OVMF_HTTP_DISCOVER: &[u8] =
        include_bytes!("../../../tests/fixtures/dhcp/ovmf-http-discover.bin");
    pub const OVMF_HTTP_REQUEST: &[u8] =
        include_bytes!("../../../tests/fixtures/dhcp/ovmf-http-request.bin");
    /// Debian's `ipxe.efi`, loaded by OVMF, configuring itself.
    pub const IPXE_EFI_DISCOVER: &[u8] =
        include_bytes!("../../../tests/fixtures/dhcp/ipxe-efi-discover.bin");
    pub const IPXE_EFI_REQUEST: &[u8] =
        include_bytes!("../../../tests/fixtures/dhcp/ipxe-efi-request.bin");
    /// QEMU's iPXE NIC ROM under SeaBIOS.
    pub const SEABIOS_IPXE_DISCOVER: &[u8] =
        include_bytes!("../../../tests/fixtures/dhcp/seabios-ipxe-discover.bin");
    pub const SEABIOS_IPXE_REQUEST: &[u8] =
        include_bytes!("../../../tests/fixtures/dhcp/seabios-ipxe-request.bin");

    pub const ALL: [&[u8]; 9] = [
        OVMF_PXE_DISCOVER,
        OVMF_PXE_REQUEST_TO_DHCP_SERVER,
        OVMF_PXE_REQUEST_4011,
        OVMF_HTTP_DISCOVER,
        OVMF_HTTP_REQUEST,
        IPXE_EFI_DISCOVER,
        IPXE_EFI_REQUEST,
        SEABIOS_IPXE_DISCOVER,
        SEABIOS_IPXE_REQUEST,
    ];
}

#[test]
fn captured_firmware_requests_are_read_as_the_firmware_meant_them() {
    use captured::*;
    let pxe = parse(OVMF_PXE_DISCOVER).unwrap();
    assert_eq!((pxe.kind, pxe.arch), (Kind::Discover, 7));
    assert!(
        pxe.class.starts_with("PXEClient:Arch:00007"),
        "{}",
        pxe.class
    );
    assert!(pxe.machine_id.is_some());
    let http = parse(OVMF_HTTP_DISCOVER).unwrap();
    assert_eq!(http.arch, 16);
    assert_eq!(http.class, "HTTPClient:Arch:00016:UNDI:003000");
    for ipxe in [IPXE_EFI_DISCOVER, SEABIOS_IPXE_DISCOVER] {
        let parsed = parse(ipxe).unwrap();
        assert!(parsed.ipxe_options, "option 175 seen");
        assert_eq!(parsed.user_class.as_deref(), Some(&b"iPXE"[..]));
    }
    assert_eq!(parse(SEABIOS_IPXE_DISCOVER).unwrap().arch, 0);
    assert_eq!(parse(IPXE_EFI_DISCOVER).unwrap().arch, 7);
    // The same MAC throughout one machine's chain.
    assert_eq!(pxe.mac, parse(OVMF_PXE_REQUEST_4011).unwrap().mac);
}

#[test]
fn captured_firmware_requests_get_the_answer_their_boot_needs() {
    use captured::*;
    let (offer, file) = reply_to(OVMF_PXE_DISCOVER, false).unwrap();
    assert_eq!(file, "ipxe.efi");
    assert_eq!(class_of(&offer), "PXEClient");
    let (ack, file) = reply_to(OVMF_PXE_REQUEST_4011, true).unwrap();
    assert_eq!(file, "ipxe.efi");
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    // Its REQUEST of dnsmasq's offer is dnsmasq's business.
    assert!(reply_to(OVMF_PXE_REQUEST_TO_DHCP_SERVER, false).is_err());
    let (offer, file) = reply_to(OVMF_HTTP_DISCOVER, false).unwrap();
    assert_eq!(file, format!("http://{SERVER}:8080/assets/ipxe.efi"));
    assert_eq!(class_of(&offer), "HTTPClient");
    for ipxe in [IPXE_EFI_DISCOVER, SEABIOS_IPXE_DISCOVER] {
        let (_, file) = reply_to(ipxe, false).unwrap();
        assert_eq!(file, format!("http://{SERVER}:8080/boot.ipxe"));
    }
    for request in [OVMF_HTTP_REQUEST, IPXE_EFI_REQUEST, SEABIOS_IPXE_REQUEST] {
        assert!(reply_to(request, false).is_err(), "not ours to answer");
    }
    for bytes in ALL {
        for on_pxe_port in [false, true] {
            if let Ok(answer) = parse(bytes)
                .map(|p| answer(&p, &answering(&AgentOrigin::new(None, 8080), on_pxe_port)))
                && let Ok(answer) = answer
            {
                assert!(answer.bytes.len() <= 548);
            }
        }
    }
}

/// A valid request's bytes with a few of them changed.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let mut bases = vec![
        discover(BIOS, 0),
        discover(UEFI, 7),
        discover(HTTP, 16),
        request(
            MessageType::Request,
            UEFI,
            7,
            &[DhcpOption::ServerIdentifier(SERVER)],
        ),
    ];
    bases.extend(captured::ALL.iter().map(|b| b.to_vec()));
    (
        prop::sample::select(bases),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        0usize..64,
    )
        .prop_map(|(mut bytes, edits, cut)| {
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let keep = bytes.len().saturating_sub(cut);
            bytes.truncate(keep);
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_input_panics(bytes in prop::collection::vec(any::<u8>(), 0..700)) {
        let origin = AgentOrigin::new(None, 8080);
        if let Ok(parsed) = parse(&bytes) {
            let _ = answer(&parsed, &answering(&origin, false));
        }
    }

    #[test]
    fn no_changed_request_panics_and_answers_stay_small(bytes in mutated()) {
        let origin = AgentOrigin::new(None, 8080);
        for on_pxe_port in [false, true] {
            if let Ok(parsed) = parse(&bytes)
                && let Ok(answer) = answer(&parsed, &answering(&origin, on_pxe_port))
            {
                // Within what every client must take (RFC 2131: 576-byte
                // datagrams), and never an address.
                prop_assert!(answer.bytes.len() <= 548, "{} bytes", answer.bytes.len());
                let reply = Message::decode(&mut Decoder::new(&answer.bytes)).unwrap();
                prop_assert_eq!(reply.yiaddr(), Ipv4Addr::UNSPECIFIED);
            }
        }
    }

    #[test]
    fn a_client_that_is_not_pxe_is_never_answered(class in "[ -~]{0,40}", arch in 0u16..32) {
        prop_assume!(!class.starts_with("PXEClient") && !class.starts_with("HTTPClient"));
        prop_assert_eq!(parse(&discover(&class, arch)).unwrap_err(), Ignored::NotPxe);
    }
}
