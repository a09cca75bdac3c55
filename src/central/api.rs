//! Wire types of the central controller API v1 (DESIGN §6).

use serde::{Deserialize, Serialize};

use crate::model::node::{Node, Workflow};

#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    pub site_id: String,
    pub token: String,
    pub agent_url: String,
    pub agent_version: String,
    pub capabilities: Vec<String>,
}

/// The controller's settings for this agent, as registration returns them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentSettings {
    #[serde(default)]
    pub site_id: Option<String>,
    #[serde(default)]
    pub site_name: Option<String>,
    /// Seconds.
    #[serde(default)]
    pub heartbeat_interval: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RegistrationReply {
    pub success: bool,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub config: AgentSettings,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Heartbeat {
    pub site_id: String,
    pub timestamp: String,
    pub agent_version: String,
    pub uptime_seconds: u64,
    pub services: ServicesStatus,
    pub nodes_seen_last_hour: u64,
    pub active_boots: u64,
    pub cache_hit_rate: f64,
    pub disk_usage_percent: f64,
    pub pending_sync_items: u64,
    pub failed_sync_items: u64,
    pub last_sync_at: Option<String>,
    pub conflicts_pending: u64,
    pub last_offline_duration_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServicesStatus {
    pub tftp: bool,
    pub http: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct HeartbeatReply {
    #[serde(default)]
    pub acknowledged: bool,
    #[serde(default)]
    pub server_time: Option<String>,
    #[serde(default)]
    pub commands: Vec<Command>,
}

/// A command the controller sends back with a heartbeat.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Command {
    pub command: String,
    #[serde(default)]
    pub params: serde_json::Value,
}

/// A page of the site's nodes. Entries stay raw JSON here so that one
/// malformed node is recorded as that node's error, not the page's.
#[derive(Debug, Clone, Deserialize)]
pub struct NodePage {
    pub data: Vec<serde_json::Value>,
    #[serde(default)]
    pub workflows: Vec<serde_json::Value>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub total: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeList {
    pub data: Vec<Node>,
}

/// Parses one entry of a page; the error names what was wrong.
pub fn parse_node(value: &serde_json::Value) -> Result<Node, String> {
    Node::deserialize(value).map_err(|e| e.to_string())
}

pub fn parse_workflow(value: &serde_json::Value) -> Result<Workflow, String> {
    let workflow = Workflow::deserialize(value).map_err(|e| e.to_string())?;
    workflow.validate().map_err(|e| e.to_string())?;
    Ok(workflow)
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeEnvelope {
    pub data: Node,
}

/// `POST /api/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewNode {
    pub mac_address: String,
    pub arch: Option<String>,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub system_uuid: Option<String>,
    pub site_id: String,
}

impl NewNode {
    /// The registration of `mac` with the facts iPXE sent.
    pub fn from_facts(
        mac: crate::model::mac::Mac,
        facts: &crate::model::boot::BootFacts,
        site_id: &str,
    ) -> NewNode {
        NewNode {
            mac_address: mac.to_string(),
            arch: facts.arch.clone(),
            vendor: facts.manufacturer.clone(),
            model: facts.product.clone(),
            serial_number: facts.serial.clone(),
            system_uuid: facts.uuid.clone(),
            site_id: site_id.to_string(),
        }
    }
}

/// `PATCH /api/v1/nodes/{id}/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    pub state: crate::model::node::NodeState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// The node's version this change was made against (DESIGN §8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<u64>,
}

/// Installer and boot progress (`POST /api/v1/report`), PureBoot's
/// `NodeReport`. Fields this agent does not interpret are kept and passed
/// on unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub mac_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation_status: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Report events, as PureBoot names them.
pub const REPORT_EVENTS: [&str; 7] = [
    "boot_started",
    "install_started",
    "install_progress",
    "install_complete",
    "install_failed",
    "first_boot",
    "heartbeat",
];

impl NodeReport {
    /// The event, from `event` or PureBoot's legacy `installation_status`.
    pub fn effective_event(&self) -> Option<&str> {
        if let Some(event) = self.event.as_deref() {
            return Some(event);
        }
        match self.installation_status.as_deref()? {
            "started" => Some("install_started"),
            "progress" => Some("install_progress"),
            "complete" => Some("install_complete"),
            "failed" => Some("install_failed"),
            _ => None,
        }
    }

    /// The state the report moves the node to, as the controller would.
    pub fn implied_state(&self) -> Option<crate::model::node::NodeState> {
        use crate::model::node::NodeState;
        match self.effective_event()? {
            "install_started" => Some(NodeState::Installing),
            "install_complete" => Some(NodeState::Installed),
            "install_failed" => Some(NodeState::InstallFailed),
            "first_boot" => Some(NodeState::Active),
            _ => None,
        }
    }

    /// Checks what the agent relies on; the error says what is wrong.
    pub fn validate(&self) -> Result<crate::model::mac::Mac, String> {
        let mac = self
            .mac_address
            .parse::<crate::model::mac::Mac>()
            .map_err(|e| format!("mac_address: {e}"))?;
        if let Some(event) = &self.event
            && !REPORT_EVENTS.contains(&event.as_str())
        {
            return Err(format!(
                "unknown event {event:?}; valid: {}",
                REPORT_EVENTS.join(", ")
            ));
        }
        if let Some(status) = &self.installation_status
            && !["started", "progress", "complete", "failed"].contains(&status.as_str())
        {
            return Err(format!(
                "unknown installation_status {status:?}; valid: started, progress, complete, failed"
            ));
        }
        if self.effective_event().is_none() {
            return Err("a report needs an event (or installation_status)".into());
        }
        Ok(mac)
    }
}
