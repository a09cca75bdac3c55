//! Configuration: one TOML file, every key overridable by `SITEBOOT_*`
//! environment variables (DESIGN §2). Keys are read one by one so that any
//! bad value is reported with the key (and the variable) that carried it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::node::{BootMethod, Workflow};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid value for `{key}` (from {origin}): {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
    #[error("unknown configuration key `{key}` (from {origin})")]
    UnknownKey { key: String, origin: String },
}

pub use crate::model::decision::OfflineDefault;

/// The system's iPXE directories, served after `tftp.root` (Debian's
/// `ipxe` package).
pub const SYSTEM_IPXE_DIRS: &[&str] = &["/usr/lib/ipxe", "/usr/share/ipxe"];

/// `path` as an absolute path with `.`/`..` and symlinks resolved as far
/// as it exists (the rest appended as written).
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// DESIGN §10: the data directory holds the admin token and the database;
/// inside a served root, any node could download both.
fn data_dir_outside_served_roots(data_dir: &Path, tftp_root: &Path) -> Result<(), String> {
    let data = resolved(data_dir);
    let roots = std::iter::once(("tftp.root", tftp_root.to_path_buf())).chain(
        SYSTEM_IPXE_DIRS
            .iter()
            .map(|d| ("the system iPXE directory", PathBuf::from(d))),
    );
    for (key, root) in roots {
        let root_resolved = resolved(&root);
        if data.starts_with(&root_resolved) {
            return Err(format!(
                "{} lies inside {key} ({}), which is served to every node over TFTP and \
                 /assets: the admin token and the database would be downloadable; move \
                 `data_dir` or `tftp.root`",
                data_dir.display(),
                root.display()
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct TftpConfig {
    pub listen: SocketAddr,
    pub root: PathBuf,
    pub max_sessions: usize,
    /// Sessions one client address may hold at once (DESIGN §10).
    pub max_sessions_per_client: usize,
    /// The largest retransmission `timeout` a client may negotiate.
    pub max_timeout: Duration,
    /// A session that makes no progress this long ends.
    pub stall_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Base URL nodes use to reach the agent; `None` = derive it per request.
    pub public_url: Option<String>,
    /// A request's head must arrive within this (DESIGN §10).
    pub header_timeout: Duration,
    /// A keep-alive connection waiting for its next request is closed
    /// after this, and so is one with a request under way but no bytes
    /// either way for this long.
    pub idle_timeout: Duration,
    /// Open connections at most; None: half the process's file limit.
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct CentralConfig {
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    /// The registration body's `token` when the controller wants a second
    /// credential there (PureBoot: the site's agent token); None: the
    /// bearer token.
    pub registration_token_file: Option<PathBuf>,
    pub check_interval: Duration,
    pub request_timeout: Duration,
    pub boot_lookup_deadline: Duration,
    /// Longest a write waits for the controller before it is queued.
    pub write_deadline: Duration,
    pub failure_threshold: u32,
    pub recovery_threshold: u32,
    pub heartbeat_interval: Duration,
    pub sync_interval: Duration,
}

/// How a conflict is settled when it is found (DESIGN §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// State mismatches only: a change the node observed (an installer's
    /// report) is kept, an operator's change at the site yields.
    Auto,
    CentralWins,
    LocalWins,
    /// Left open for an operator.
    Manual,
    /// State mismatches only: the later change wins, the site's by its
    /// `changed_at`, the controller's by its record's `updated_at`
    /// (DESIGN §15); ties go to the controller.
    LastWrite,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Auto => "auto",
            Policy::CentralWins => "central_wins",
            Policy::LocalWins => "local_wins",
            Policy::Manual => "manual",
            Policy::LastWrite => "last_write",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Policy::Auto),
            "central_wins" => Ok(Policy::CentralWins),
            "local_wins" => Ok(Policy::LocalWins),
            "manual" => Ok(Policy::Manual),
            "last_write" => Ok(Policy::LastWrite),
            other => Err(format!(
                "{other:?}: expected auto, central_wins, local_wins, last_write or manual"
            )),
        }
    }
}

impl Policy {
    /// Has this policy a meaning for every kind? `auto` and `last_write`
    /// compare the two sides' changes, which only a state mismatch has.
    pub fn fits_every_kind(self) -> bool {
        !matches!(self, Policy::Auto | Policy::LastWrite)
    }
}

impl ConflictPolicies {
    /// The per-kind policies a site-wide strategy stands for (DESIGN
    /// §15): `last_write` where it has a meaning, `manual` elsewhere.
    pub fn of_strategy(strategy: crate::model::policy::ConflictStrategy) -> ConflictPolicies {
        use crate::model::policy::ConflictStrategy;
        let every = |policy| ConflictPolicies {
            state_mismatch: policy,
            missing_central: policy,
            missing_local: policy,
        };
        match strategy {
            ConflictStrategy::CentralWins => every(Policy::CentralWins),
            ConflictStrategy::SiteWins => every(Policy::LocalWins),
            ConflictStrategy::Manual => every(Policy::Manual),
            ConflictStrategy::LastWrite => ConflictPolicies {
                state_mismatch: Policy::LastWrite,
                ..every(Policy::Manual)
            },
        }
    }
}

/// A policy per conflict kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConflictPolicies {
    pub state_mismatch: Policy,
    pub missing_central: Policy,
    pub missing_local: Policy,
}

impl Default for ConflictPolicies {
    fn default() -> Self {
        ConflictPolicies {
            state_mismatch: Policy::Auto,
            missing_central: Policy::Manual,
            missing_local: Policy::Manual,
        }
    }
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub max_items: u64,
    /// Of `max_items`, items caused by nodes at most (DESIGN §7 "Admission").
    pub max_node_items: u64,
    /// Items one node's MAC may add to the queue per minute.
    pub node_items_per_minute: u32,
    pub batch_size: u32,
    pub max_retries: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `dhcp.mode`: whether the agent answers PXE clients beside the site's
/// DHCP server (DESIGN §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpMode {
    /// No DHCP at all (the site's DHCP server points clients here).
    Off,
    /// ProxyDHCP: the boot question only, never an address.
    Proxy,
}

/// ProxyDHCP (DESIGN §13).
#[derive(Debug, Clone)]
pub struct DhcpConfig {
    /// Off, or proxy.
    pub mode: DhcpMode,
    /// The interfaces answered on; empty: every one with an IPv4 address
    /// (but loopback).
    pub interfaces: Vec<String>,
    /// The address put in answers (option 54, `siaddr`, URLs); None: the
    /// address of the interface a request came in on.
    pub server_address: Option<std::net::Ipv4Addr>,
    /// Answer only MACs the node cache holds.
    pub known_only: bool,
    /// Answers per MAC per second, at most.
    pub rate_per_mac: u32,
    /// The DHCP server port (67; tests use another).
    pub port: u16,
    /// The PXE boot server port (4011).
    pub pxe_port: u16,
    /// Where broadcast answers go (68, the DHCP client port).
    pub client_port: u16,
}

/// The content cache (DESIGN §12).
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Unpinned files are evicted, least recently used first, above this.
    pub max_bytes: u64,
    /// Background prefetches together read at most this many bytes a second.
    pub prefetch_rate: u64,
    /// A cached file is checked against the controller at most this often.
    pub revalidate_interval: Duration,
    /// Fills that client misses may run at once (DESIGN §12).
    pub max_fills: usize,
    /// Misses one client address may cause per minute.
    pub misses_per_client: u32,
    /// A file the controller answered 404 for is not asked for again for
    /// this long.
    pub negative_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub site_id: String,
    pub data_dir: PathBuf,
    pub tftp: TftpConfig,
    pub http: HttpConfig,
    pub templates_dir: PathBuf,
    pub central: CentralConfig,
    pub offline_default_action: OfflineDefault,
    /// How conflicts of each kind are settled when found (DESIGN §8),
    /// until changed at run time.
    pub conflicts: ConflictPolicies,
    /// The local keys that pin the site policy (DESIGN §2, §15):
    /// `site.autonomy`, `cache.policy`, `cache.patterns`,
    /// `cache.retention`, `conflicts.site_policy`.
    pub policy_pins: crate::model::policy::LocalPins,
    pub queue: QueueConfig,
    pub cache: CacheConfig,
    /// ProxyDHCP (`[dhcp]`).
    pub dhcp: DhcpConfig,
    /// What a UEFI x64 PXE client is given to load (`boot.uefi_loader`,
    /// DESIGN §14): iPXE, or the Secure Boot chain's shim; a node's tag
    /// `loader:shim` / `loader:ipxe` overrides it.
    pub uefi_loader: crate::model::client::UefiLoader,
    /// `GET /metrics` without the admin token (`metrics.open`).
    pub metrics_open: bool,
    /// `log.format`: lines for people (`text`) or one JSON object per line.
    pub log_format: LogFormat,
    /// Standalone: MACs first seen at boot kept at most (`nodes.max_discovered`).
    pub max_discovered: usize,
    pub admin_token_file: PathBuf,
    /// Standalone workflows (`[workflows.<id>]`), by id.
    pub workflows: BTreeMap<String, Workflow>,
}

mod source;
#[cfg(test)]
mod tests;
