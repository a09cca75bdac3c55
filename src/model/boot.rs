//! A boot request's facts and its answer, and the node a first boot
//! creates.

use time::OffsetDateTime;

use super::decision::Action;
use super::mac::Mac;
use super::node::{Node, NodeState};

/// Where the data behind an answer came from (the status line's `source=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Live,
    Cache,
    Offline,
    Standalone,
}

impl Source {
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
    pub arch: Option<String>,
    pub platform: Option<String>,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BootAnswer {
    pub script: super::script::Script,
    pub source: Source,
    pub action: Action,
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
