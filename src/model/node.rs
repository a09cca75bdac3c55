//! The node and workflow model of DESIGN §3.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::model::mac::Mac;

/// Node lifecycle states, as the controller defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Seen at boot, not yet assigned a workflow.
    Discovered,
    /// Waiting to be installed at its next boot.
    Pending,
    /// An install is under way.
    Installing,
    /// The last install reported failure.
    InstallFailed,
    /// Installed; boots its disk.
    Installed,
    /// In service; boots its disk.
    Active,
    /// To be installed again at its next boot.
    Reprovision,
    /// Being taken out of service.
    Deprovisioning,
    /// Moving to another machine.
    Migrating,
    /// The source of a clone.
    ServingSource,
    /// The target of a clone.
    CloningTarget,
    /// Out of service for good: never boots.
    Retired,
}

impl NodeState {
    /// Every state, in the order of DESIGN §3.
    pub const ALL: [NodeState; 12] = [
        NodeState::Discovered,
        NodeState::Pending,
        NodeState::Installing,
        NodeState::InstallFailed,
        NodeState::Installed,
        NodeState::Active,
        NodeState::Reprovision,
        NodeState::Deprovisioning,
        NodeState::Migrating,
        NodeState::ServingSource,
        NodeState::CloningTarget,
        NodeState::Retired,
    ];

    /// The state's name on the wire and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Discovered => "discovered",
            NodeState::Pending => "pending",
            NodeState::Installing => "installing",
            NodeState::InstallFailed => "install_failed",
            NodeState::Installed => "installed",
            NodeState::Active => "active",
            NodeState::Reprovision => "reprovision",
            NodeState::Deprovisioning => "deprovisioning",
            NodeState::Migrating => "migrating",
            NodeState::ServingSource => "serving_source",
            NodeState::CloningTarget => "cloning_target",
            NodeState::Retired => "retired",
        }
    }
}

impl NodeState {
    /// May an installer's report (unauthenticated) move a node in this
    /// state to `to`? Only along the installer's path (DESIGN §10):
    /// `pending | reprovision | installing → installing → installed |
    /// install_failed`, and `installed → active` on first boot. A retired
    /// node is never moved.
    pub fn installer_may_move_to(self, to: NodeState) -> bool {
        use NodeState::*;
        match to {
            Installing => matches!(self, Pending | Reprovision | Installing),
            Installed | InstallFailed => self == Installing,
            Active => self == Installed,
            _ => false,
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown node state {0:?}; valid states: discovered, pending, installing, install_failed, installed, active, reprovision, deprovisioning, migrating, serving_source, cloning_target, retired"
)]
/// A state name that is none of DESIGN §3's.
pub struct UnknownState(pub String);

impl FromStr for NodeState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

fn versioned_by_default() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// A node as the agent caches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The controller's id for the node (a local id until it is registered).
    pub id: String,
    /// The node's MAC address (the key of every record).
    pub mac: Mac,
    /// The node's hostname, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Its state (DESIGN §3).
    pub state: NodeState,
    /// The architecture it reported at boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// The workflow an install runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// The controller's group the node belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The controller's tags (`loader:shim` and the like).
    #[serde(default)]
    pub tags: Vec<String>,
    /// When the record last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The controller's version of the record; a controller that keeps
    /// none (PureBoot's central) leaves it 0 and `versioned` false.
    pub version: u64,
    /// Does the controller version its nodes? If not, changes carry no
    /// `base_version`; `updated_at` and `state_changed_at` are what a
    /// version-less conflict check compares (DESIGN §8).
    #[serde(default = "versioned_by_default", skip_serializing_if = "is_true")]
    pub versioned: bool,
    /// When the node's state last changed, if the controller says.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub state_changed_at: Option<OffsetDateTime>,
    /// When this agent last took the record from the controller.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub cached_at: Option<OffsetDateTime>,
    /// Set when a full sync no longer listed the node (kept, not dropped).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub missing_central_since: Option<OffsetDateTime>,
    /// First seen at boot and stored by the agent itself (standalone),
    /// not added by an operator: only such nodes count against, and are
    /// evicted by, `nodes.max_discovered` (DESIGN §10).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seen_at_boot: bool,
}

impl Node {
    /// Equal as the controller sees it (ignoring this agent's bookkeeping).
    pub fn same_as_central(&self, other: &Node) -> bool {
        self.id == other.id
            && self.mac == other.mac
            && self.hostname == other.hostname
            && self.state == other.state
            && self.arch == other.arch
            && self.workflow_id == other.workflow_id
            && self.group_id == other.group_id
            && self.tags == other.tags
            && self.updated_at == other.updated_at
            && self.version == other.version
            && self.versioned == other.versioned
            && self.state_changed_at == other.state_changed_at
    }
}

impl Node {
    /// The owner of the node's state (standalone: this agent) moves it to
    /// `state`: a new version.
    pub fn change_state(&mut self, state: NodeState, now: OffsetDateTime) {
        self.state = state;
        self.updated_at = now;
        self.version += 1;
    }

    /// A node first seen by this agent, not (yet) known to any controller.
    pub fn new_local(mac: Mac, state: NodeState, now: OffsetDateTime) -> Node {
        Node {
            id: format!("local-{}", uuid::Uuid::new_v4()),
            mac,
            hostname: None,
            state,
            arch: None,
            workflow_id: None,
            group_id: None,
            tags: Vec::new(),
            updated_at: now,
            version: 1,
            versioned: true,
            state_changed_at: None,
            cached_at: None,
            missing_central_since: None,
            seen_at_boot: false,
        }
    }
}

/// How a workflow boots its installer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootMethod {
    /// `kernel` + `initrd` + `boot`
    Kernel,
    /// `sanboot <url>` (an ISO or disk image)
    Sanboot,
    /// `chain <url>` (another iPXE script or EFI binary)
    Chain,
}

/// How a node is installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workflow {
    /// The workflow's id (`[workflows.<id>]`, or the controller's).
    pub id: String,
    /// A name for people.
    pub name: String,
    /// How it boots.
    pub method: BootMethod,
    /// The kernel's path under `/assets` (method `kernel`).
    #[serde(default)]
    pub kernel: String,
    /// The initrds' paths under `/assets` (method `kernel`).
    #[serde(default)]
    pub initrd: Vec<String>,
    /// The kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// The URL to boot (methods `sanboot` and `chain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// May this workflow run from cached data while the controller is
    /// unreachable? Installing wipes a disk, so the default is no.
    #[serde(default)]
    pub offline_safe: bool,
}

impl Workflow {
    /// The files an install with it fetches through the agent (its
    /// kernel and initrds; a workflow that boots a URL has none).
    pub fn files(&self) -> Vec<&str> {
        if self.method != BootMethod::Kernel {
            return Vec::new();
        }
        std::iter::once(self.kernel.as_str())
            .chain(self.initrd.iter().map(String::as_str))
            .filter(|path| !path.is_empty() && !path.contains("://"))
            .collect()
    }
}

/// Why a workflow cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    #[error("workflow {id:?}: method kernel needs a kernel")]
    /// Method `kernel` without a kernel.
    MissingKernel {
        /// The workflow's id.
        id: String,
    },
    #[error("workflow {id:?}: method {method} needs a url")]
    /// Method `sanboot` or `chain` without a URL.
    MissingUrl {
        /// The workflow's id.
        id: String,
        /// The method that needs it.
        method: &'static str,
    },
}

impl Workflow {
    /// Checks that the fields the method needs are present.
    pub fn validate(&self) -> Result<(), WorkflowError> {
        match self.method {
            BootMethod::Kernel if self.kernel.trim().is_empty() => {
                Err(WorkflowError::MissingKernel {
                    id: self.id.clone(),
                })
            }
            BootMethod::Sanboot | BootMethod::Chain
                if self.url.as_deref().is_none_or(|u| u.trim().is_empty()) =>
            {
                Err(WorkflowError::MissingUrl {
                    id: self.id.clone(),
                    method: if self.method == BootMethod::Sanboot {
                        "sanboot"
                    } else {
                        "chain"
                    },
                })
            }
            _ => Ok(()),
        }
    }
}

/// Hostnames are shown in scripts and logs; only RFC 1123 labels are taken.
pub fn validate_hostname(hostname: &str) -> Result<(), String> {
    let ok = !hostname.is_empty()
        && hostname.len() <= 253
        && hostname.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid hostname {hostname:?}: use letters, digits, '-' and '.' (RFC 1123)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installer_reports_follow_only_the_installers_path() {
        use NodeState::*;
        assert!(Pending.installer_may_move_to(Installing));
        assert!(Reprovision.installer_may_move_to(Installing));
        assert!(Installing.installer_may_move_to(Installed));
        assert!(Installing.installer_may_move_to(InstallFailed));
        assert!(Installed.installer_may_move_to(Active));
        for to in NodeState::ALL {
            assert!(!Retired.installer_may_move_to(to), "retired → {to}");
        }
        assert!(!Active.installer_may_move_to(InstallFailed));
        assert!(!Active.installer_may_move_to(Installing));
        assert!(!Pending.installer_may_move_to(Installed));
        assert!(!Installing.installer_may_move_to(Retired));
    }

    #[test]
    fn states_round_trip_through_text_and_json() {
        for state in NodeState::ALL {
            assert_eq!(state.as_str().parse::<NodeState>().unwrap(), state);
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
    }

    #[test]
    fn unknown_state_is_named_in_the_error() {
        let err = "exploded".parse::<NodeState>().unwrap_err();
        assert!(err.to_string().contains("\"exploded\""));
        assert!(err.to_string().contains("install_failed"));
    }

    #[test]
    fn hostnames_are_checked() {
        assert!(validate_hostname("web-01.rack3").is_ok());
        for bad in [
            "",
            "a b",
            "x\nchain http://evil",
            "-lead",
            "a..b",
            "x||y",
            "a;b",
        ] {
            assert!(validate_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn workflow_validation_names_the_missing_field() {
        let mut wf = Workflow {
            id: "ubuntu".into(),
            name: "Ubuntu".into(),
            method: BootMethod::Kernel,
            kernel: String::new(),
            initrd: vec![],
            cmdline: String::new(),
            url: None,
            offline_safe: false,
        };
        assert!(wf.validate().unwrap_err().to_string().contains("kernel"));
        wf.method = BootMethod::Sanboot;
        assert!(wf.validate().unwrap_err().to_string().contains("url"));
        wf.url = Some("http://x/y.iso".into());
        assert!(wf.validate().is_ok());
    }
}
