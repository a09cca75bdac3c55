//! A boot request's facts and its answer, and the node a first boot
//! creates.

use time::OffsetDateTime;

use super::decision::Action;
use super::mac::Mac;
use super::node::{Node, NodeState};

/// Where the data behind an answer came from (the status line's `source=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Decided on the controller's answer to this very boot.
    Live,
    /// Decided on the cached record (the controller was slow or the record fresh).
    Cache,
    /// Decided while the controller is unreachable.
    Offline,
    /// Decided on the local store: no controller is configured.
    Standalone,
}

impl Source {
    /// The name the status line and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Live => "live",
            Source::Cache => "cache",
            Source::Offline => "offline",
            Source::Standalone => "standalone",
        }
    }
}

/// The facts iPXE sends with a boot request.
#[derive(Debug, Clone, Default)]
pub struct BootFacts {
    /// iPXE's `${buildarch}` (`i386`, `x86_64`, `arm64`).
    pub arch: Option<String>,
    /// iPXE's `${platform}` (`pcbios`, `efi`).
    pub platform: Option<String>,
    /// The machine's SMBIOS UUID.
    pub uuid: Option<String>,
    /// The machine's serial number.
    pub serial: Option<String>,
    /// The machine's manufacturer (SMBIOS).
    pub manufacturer: Option<String>,
    /// The machine's product name (SMBIOS).
    pub product: Option<String>,
    /// The language the client reads: iPXE, or GRUB (`?format=grub`, or
    /// GRUB's TFTP request for its configuration).
    pub format: super::script::ScriptFormat,
}

/// What the agent answers a boot: the script and why it was chosen.
#[derive(Debug, Clone)]
pub struct BootAnswer {
    /// The rendered script.
    pub script: super::script::Script,
    /// Where the data behind it came from.
    pub source: Source,
    /// What the script does.
    pub action: Action,
    /// The node's state, when the node is known.
    pub state: Option<NodeState>,
}

/// A node first seen now: `discovered` under a local id, with the
/// architecture iPXE reported if it is a plain token.
pub fn discovered_node(mac: Mac, facts: &BootFacts) -> Node {
    let mut node = Node::new_local(mac, NodeState::Discovered, OffsetDateTime::now_utc());
    node.arch = facts.arch.clone().filter(|a| is_plain_token(a));
    node.seen_at_boot = true;
    node
}

fn is_plain_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}
