//! The ProxyDHCP answer (DESIGN §13): from the request, the agent's
//! address and the configuration alone (never the controller), the boot
//! file for this client and the fields a PXE client needs to take an
//! answer that offers no address.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode};
use dhcproto::{Encodable, Encoder};

use super::packet::{BootRequest, Kind};
use crate::model::client::{
    self, BootFile, CLASS_HTTP, CLASS_PXE, Client, Fetch, Firmware, UefiLoader,
};
use crate::serve::origin::AgentOrigin;

/// What the answer depends on beside the request.
pub struct Answering<'a> {
    /// The agent's address on the interface the request came in on (or
    /// `dhcp.server_address`): option 54, `siaddr`, and the URLs.
    pub server: Ipv4Addr,
    /// Makes the URLs (an IP literal: a proxy offer carries no DNS).
    pub origin: &'a AgentOrigin,
    /// `boot.uefi_loader` for UEFI x64 PXE clients (DESIGN §14).
    pub loader: UefiLoader,
    /// The request reached the PXE boot server port (4011).
    pub on_pxe_port: bool,
}

/// Why a boot request gets no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    /// The agent has no boot file for this architecture.
    NoBootFile,
    /// A REQUEST on port 67 for another server: the client taking the
    /// site's DHCP server's offer.
    OtherServer,
    /// A DISCOVER on the PXE port: PXE clients send REQUESTs there.
    DiscoverOnPxePort,
    /// The answer does not fit its fields (a boot file name past the
    /// file field's 128 bytes).
    Unencodable,
}

impl NoAnswer {
    /// The `result` label in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            NoAnswer::NoBootFile => "no_boot_file",
            NoAnswer::OtherServer => "other_server",
            NoAnswer::DiscoverOnPxePort => "discover_on_pxe_port",
            NoAnswer::Unencodable => "unencodable",
        }
    }
}

/// An answer ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The encoded message.
    pub bytes: Vec<u8>,
    /// What the client was given (for logs and tests).
    pub boot_file: String,
    /// The client as the request described it.
    pub client: Client,
}

/// The client a request describes.
pub fn client_of(request: &BootRequest) -> Client {
    Client::from_dhcp(
        Some(request.mac),
        Some(request.arch),
        Some(&request.class),
        request.user_class.as_deref(),
        request.ipxe_options,
        request.machine_id.as_deref().map(uuid_text),
    )
}

/// The answer to `request`, or why there is none.
pub fn answer(request: &BootRequest, at: &Answering<'_>) -> Result<Answer, NoAnswer> {
    let reply_type = match (request.kind, at.on_pxe_port) {
        (Kind::Discover, false) => MessageType::Offer,
        (Kind::Discover, true) => return Err(NoAnswer::DiscoverOnPxePort),
        (Kind::Request, true) => MessageType::Ack,
        (Kind::Request, false) if request.server_id == Some(at.server) => MessageType::Ack,
        (Kind::Request, false) => return Err(NoAnswer::OtherServer),
    };
    let client = client_of(request);
    let file = client::boot_file(&client, at.loader).ok_or(NoAnswer::NoBootFile)?;
    let base = at.origin.ip_url(IpAddr::V4(at.server));
    let boot_file = match (file, client.fetch) {
        (BootFile::Bootstrap, _) => format!("{base}/boot.ipxe"),
        (BootFile::Named(name), Fetch::Http) => format!("{base}/assets/{name}"),
        (BootFile::Named(name), Fetch::Tftp) => name.to_string(),
    };

    let mut reply = Message::default();
    reply
        .set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_xid(request.xid)
        .set_flags(Flags::new(request.flags))
        .set_ciaddr(request.ciaddr)
        .set_siaddr(at.server)
        .set_giaddr(request.giaddr)
        .set_chaddr(&request.mac.bytes())
        .set_fname_str(&boot_file);
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(reply_type));
    opts.insert(DhcpOption::ServerIdentifier(at.server));
    // The class echoed: UEFI HTTP Boot takes only an answer that says
    // HTTPClient, PXE only one that says PXEClient.
    let class = if client.fetch == Fetch::Http && !client.ipxe {
        CLASS_HTTP
    } else {
        CLASS_PXE
    };
    opts.insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
    if let Some(id) = request.machine_id.as_ref().filter(|id| id.len() == 17) {
        opts.insert(DhcpOption::ClientMachineIdentifier(id.clone()));
    }
    if client.firmware == Firmware::Bios && !client.ipxe {
        // PXE discovery control 8: take the boot file of this answer, no
        // boot server discovery (PXE 2.1, option 43 sub-option 6).
        opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }
    let mut bytes = Vec::with_capacity(300);
    reply
        .encode(&mut Encoder::new(&mut bytes))
        .map_err(|_| NoAnswer::Unencodable)?;
    Ok(Answer {
        bytes,
        boot_file,
        client,
    })
}

/// Where the answer goes: to the relay (server port) if the request was
/// relayed; to the client's address and port if it has one (a request to
/// the PXE port); else broadcast to the client port of the link it came
/// in on (the client has no address yet).
pub fn destination(
    request: &BootRequest,
    from: SocketAddrV4,
    server_port: u16,
    client_port: u16,
) -> SocketAddrV4 {
    if !request.giaddr.is_unspecified() {
        return SocketAddrV4::new(request.giaddr, server_port);
    }
    if !request.ciaddr.is_unspecified() {
        return SocketAddrV4::new(request.ciaddr, from.port());
    }
    SocketAddrV4::new(Ipv4Addr::BROADCAST, client_port)
}

/// Option 97 (type 0, then a 16-byte GUID) as text, for logs and the
/// client's record; anything else as hex.
fn uuid_text(raw: &[u8]) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    match raw.split_first() {
        Some((0, guid)) if guid.len() == 16 => {
            let h = hex(guid);
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
        _ => hex(raw),
    }
}
