//! Reading a DHCP request (RFC 2131) for the boot question it asks
//! (DESIGN §13). `dhcproto` decodes the message; before it sees a byte,
//! [`check`] walks the packet itself, so that what the crate would take
//! apart unchecked (a hardware address longer than its field, an option
//! of a fixed length with another) is dropped here as malformed.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder};

use crate::model::client::{CLASS_HTTP, CLASS_PXE};
use crate::model::mac::Mac;

/// The fixed part of a BOOTP message, up to and with the magic cookie.
const FIXED_LEN: usize = 240;
/// RFC 2131's magic cookie, which starts the options.
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// More relay hops than this is a loop or a forgery (DESIGN §13).
pub const MAX_HOPS: u8 = 4;

/// A request the agent may answer: a PXE or HTTP Boot client's DISCOVER
/// or REQUEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootRequest {
    /// DISCOVER or REQUEST.
    pub kind: Kind,
    /// The client's transaction id, echoed.
    pub xid: u32,
    /// The flags field (its broadcast bit), echoed.
    pub flags: u16,
    /// The client's address, if it has one (a request to port 4011).
    pub ciaddr: Ipv4Addr,
    /// The relay's address (0.0.0.0: not relayed).
    pub giaddr: Ipv4Addr,
    /// The client's MAC (`chaddr`).
    pub mac: Mac,
    /// Option 60 as sent.
    pub class: String,
    /// Option 93's first architecture type.
    pub arch: u16,
    /// Option 77, raw.
    pub user_class: Option<Vec<u8>>,
    /// Option 175 (iPXE's own options) is present.
    pub ipxe_options: bool,
    /// Option 97, raw.
    pub machine_id: Option<Vec<u8>>,
    /// Option 54: the server a REQUEST is for.
    pub server_id: Option<Ipv4Addr>,
}

/// A DISCOVER or a REQUEST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// DHCPDISCOVER.
    Discover,
    /// DHCPREQUEST.
    Request,
}

impl Kind {
    /// The name `/metrics` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Discover => "discover",
            Kind::Request => "request",
        }
    }
}

/// Why a packet gets no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    /// Not a well-formed DHCP request (DESIGN §13: dropped and counted).
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// A well-formed message that is not a DISCOVER or a REQUEST.
    #[error("not a DISCOVER or a REQUEST")]
    OtherType,
    /// No option 60 beginning `PXEClient` or `HTTPClient`, or no option
    /// 93: an ordinary DHCP client, the site's server's business.
    #[error("not a PXE or HTTP Boot client")]
    NotPxe,
}

impl Ignored {
    /// The `result` label in `/metrics`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Ignored::Malformed(_) => "malformed",
            Ignored::OtherType => "other_type",
            Ignored::NotPxe => "not_pxe",
        }
    }
}

/// Reads `bytes` as a boot request.
pub fn parse(bytes: &[u8]) -> Result<BootRequest, Ignored> {
    check(bytes)?;
    let message = Message::decode(&mut Decoder::new(bytes))
        .map_err(|_| Ignored::Malformed("options do not decode"))?;
    let opts = message.opts();
    let kind = match opts.msg_type() {
        Some(MessageType::Discover) => Kind::Discover,
        Some(MessageType::Request) => Kind::Request,
        Some(_) => return Err(Ignored::OtherType),
        None => return Err(Ignored::Malformed("no message type (option 53)")),
    };
    let class = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        _ => return Err(Ignored::NotPxe),
    };
    if !class.starts_with(CLASS_PXE) && !class.starts_with(CLASS_HTTP) {
        return Err(Ignored::NotPxe);
    }
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(arch)) => u16::from(*arch),
        _ => return Err(Ignored::NotPxe),
    };
    let raw = |code: OptionCode| match opts.get(code) {
        Some(DhcpOption::UserClass(bytes) | DhcpOption::ClientMachineIdentifier(bytes)) => {
            Some(bytes.clone())
        }
        _ => None,
    };
    let chaddr: [u8; 6] = message
        .chaddr()
        .try_into()
        .map_err(|_| Ignored::Malformed("hardware address is not 6 bytes"))?;
    let server_id = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    Ok(BootRequest {
        kind,
        xid: message.xid(),
        flags: message.flags().into(),
        ciaddr: message.ciaddr(),
        giaddr: message.giaddr(),
        mac: Mac::new(chaddr),
        class,
        arch,
        user_class: raw(OptionCode::UserClass),
        ipxe_options: has_option(bytes, 175),
        machine_id: raw(OptionCode::ClientMachineIdentifier),
        server_id,
    })
}

/// The packet's own shape, before any decoding: a BOOTREQUEST for
/// Ethernet, within [`MAX_HOPS`], with the magic cookie and options that
/// stay inside the packet, no overload (option 52: PXE clients never use
/// it) and the right length for every option of a fixed length.
pub fn check(bytes: &[u8]) -> Result<(), Ignored> {
    if bytes.len() < FIXED_LEN {
        return Err(Ignored::Malformed("shorter than a BOOTP message"));
    }
    if bytes[0] != 1 {
        return Err(Ignored::Malformed("not a BOOTREQUEST"));
    }
    if bytes[1] != 1 || bytes[2] != 6 {
        return Err(Ignored::Malformed("not an Ethernet hardware address"));
    }
    if bytes[3] > MAX_HOPS {
        return Err(Ignored::Malformed("relayed through too many hops"));
    }
    if bytes[236..240] != MAGIC {
        return Err(Ignored::Malformed("no DHCP magic cookie"));
    }
    // The decoder joins repeated options into one (RFC 3396): a fixed-length
    // option twice would reach it with twice its length.
    let mut seen = [false; 256];
    for option in options(bytes) {
        let (code, value) = option?;
        let once = !std::mem::replace(&mut seen[usize::from(code)], true);
        let fits = once || !matches!(code, 52..=54 | 80 | 81 | 93 | 94 | 152..=155);
        let fits = fits
            && match code {
                // Overloaded sname/file fields: refused rather than decoded.
                52 => false,
                53 => value.len() == 1,
                54 => value.len() == 4,
                80 => value.is_empty(),
                81 => value.len() >= 3,
                93 => !value.is_empty() && value.len() % 2 == 0,
                94 => value.len() == 3,
                152..=155 => value.len() == 4,
                _ => true,
            };
        if !fits {
            return Err(Ignored::Malformed("an option of the wrong length"));
        }
    }
    Ok(())
}

/// Whether option `code` is in the packet (one that passed [`check`]).
fn has_option(bytes: &[u8], code: u8) -> bool {
    options(bytes).any(|option| option.is_ok_and(|(c, _)| c == code))
}

/// The options area as (code, value), PAD skipped, up to END; an option
/// that runs past the packet is an error.
fn options(bytes: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), Ignored>> {
    let mut rest = bytes.get(FIXED_LEN..).unwrap_or_default();
    std::iter::from_fn(move || {
        loop {
            let (&code, tail) = rest.split_first()?;
            match code {
                0 => rest = tail,
                255 => {
                    rest = &[];
                    return None;
                }
                _ => {
                    let Some((&len, tail)) = tail.split_first() else {
                        rest = &[];
                        return Some(Err(Ignored::Malformed("an option without its length")));
                    };
                    let len = usize::from(len);
                    if len > tail.len() {
                        rest = &[];
                        return Some(Err(Ignored::Malformed("an option runs past the packet")));
                    }
                    let (value, after) = tail.split_at(len);
                    rest = after;
                    return Some(Ok((code, value)));
                }
            }
        }
    })
}
