//! Wire types of the central controller API v1 (DESIGN §6). Tolerant in
//! what they read (DESIGN §6 "Real controllers differ"): `mac` or
//! `mac_address`, timestamps with or without a zone, no `version`, lists
//! without `workflows` or `cursor`, one bad node skipped rather than the
//! list; exact in what they send.

use crate::model::client::{Client, Cpu, Firmware};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::model::mac::Mac;
use crate::model::node::{Node, NodeState, Workflow};

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
    /// Everything else the controller said (PureBoot: the site policy,
    /// DESIGN §15), read by `model::policy::ControllerPolicy::read`.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
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

/// Each service's health, as PureBoot reads it: `{name: "ok"|"degraded"|"down"}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServicesStatus {
    pub tftp: ServiceHealth,
    pub http: ServiceHealth,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ServiceHealth {
    Ok,
    // DESIGN §6's vocabulary, kept whole: a running agent reports its
    // servers `ok` today; these are for a server that fails at run time.
    #[allow(dead_code)]
    Degraded,
    #[allow(dead_code)]
    Down,
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
}

/// A [`NodePage`] read: its workflows and nodes, and a line for each
/// entry that could not be read.
#[derive(Debug, Default)]
pub struct ParsedPage {
    pub workflows: Vec<Workflow>,
    pub nodes: Vec<Node>,
    pub errors: Vec<String>,
}

impl NodePage {
    /// Reads every entry; one that cannot be read becomes an error line
    /// naming it, and the others are kept.
    pub fn parse(&self) -> ParsedPage {
        let mut parsed = ParsedPage::default();
        for value in &self.workflows {
            match parse_workflow(value) {
                Ok(workflow) => parsed.workflows.push(workflow),
                Err(e) => parsed.errors.push(format!(
                    "workflow {}: {e}",
                    value.get("id").unwrap_or(&serde_json::Value::Null)
                )),
            }
        }
        for value in &self.data {
            match parse_node(value) {
                Ok(node) => parsed.nodes.push(node),
                Err(e) => parsed.errors.push(format!(
                    "node {}: {e}",
                    value
                        .get("mac")
                        .or_else(|| value.get("mac_address"))
                        .or_else(|| value.get("id"))
                        .unwrap_or(&serde_json::Value::Null)
                )),
            }
        }
        parsed
    }
}

/// `GET /api/v1/nodes?mac=`: raw entries, like [`NodePage`], so that one
/// malformed node does not fail the lookup of another.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeList {
    pub data: Vec<serde_json::Value>,
}

/// A node as controllers send it: §6's shape and PureBoot's.
#[derive(Debug, Deserialize)]
struct WireNode {
    id: String,
    /// §6's name; PureBoot says `mac_address`; a controller between two
    /// API versions sends both (see [`one_of_two_names`]).
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    mac_address: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    state: NodeState,
    #[serde(default)]
    arch: Option<String>,
    #[serde(default)]
    workflow_id: Option<String>,
    #[serde(default)]
    group_id: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    tags: Vec<String>,
    updated_at: String,
    #[serde(default)]
    state_changed_at: Option<String>,
    #[serde(default)]
    version: Option<u64>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// One field that controllers spell two ways: either name, or both when
/// they agree (equal values are one field; DESIGN §6). Two different
/// values make the record unreadable rather than picking one on trust.
pub fn one_of_two_names<T: PartialEq + std::fmt::Debug>(
    first: Option<T>,
    second: Option<T>,
    first_name: &str,
    second_name: &str,
) -> Result<Option<T>, String> {
    match (first, second) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "`{first_name}` ({a:?}) and `{second_name}` ({b:?}) disagree"
        )),
        (Some(a), _) => Ok(Some(a)),
        (None, b) => Ok(b),
    }
}

/// An RFC 3339 time, or one without a zone (PureBoot's naive UTC times,
/// `2026-11-23T20:03:28` with optional fractions), read as UTC.
pub fn parse_timestamp(text: &str) -> Result<OffsetDateTime, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let zoneless = time::macros::format_description!(
        version = 2,
        "[year]-[month]-[day][first [T] [ ]][hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    time::PrimitiveDateTime::parse(text, zoneless)
        .map(|t| t.assume_utc())
        .map_err(|_| format!("timestamp {text:?} is neither RFC 3339 nor a zone-less UTC time"))
}

/// Parses one node a controller sent; the error names what was wrong.
pub fn parse_node(value: &serde_json::Value) -> Result<Node, String> {
    let wire = WireNode::deserialize(value).map_err(|e| e.to_string())?;
    let parse = |text: Option<String>, name: &str| {
        text.map(|t| t.parse::<Mac>().map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    let mac = one_of_two_names(
        parse(wire.mac, "mac")?,
        parse(wire.mac_address, "mac_address")?,
        "mac",
        "mac_address",
    )?
    .ok_or_else(|| "missing field `mac` (or `mac_address`)".to_string())?;
    let state_changed_at = match wire.state_changed_at.as_deref() {
        Some(text) => Some(parse_timestamp(text).map_err(|e| format!("state_changed_at: {e}"))?),
        None => None,
    };
    Ok(Node {
        id: wire.id,
        mac,
        hostname: wire.hostname,
        state: wire.state,
        arch: wire.arch,
        workflow_id: wire.workflow_id,
        group_id: wire.group_id,
        tags: wire.tags,
        updated_at: parse_timestamp(&wire.updated_at).map_err(|e| format!("updated_at: {e}"))?,
        version: wire.version.unwrap_or(0),
        versioned: wire.version.is_some(),
        state_changed_at,
        cached_at: None,
        missing_central_since: None,
        seen_at_boot: false,
    })
}

/// The entry for `mac` among a list's nodes, matched by the agent itself:
/// a controller that ignores the `?mac=` filter (PureBoot's central lists
/// every node) must not hand one MAC another node's record. Entries that
/// do not parse are skipped; how many is returned with the match.
pub fn find_node(entries: &[serde_json::Value], mac: Mac) -> (Option<Node>, Vec<String>) {
    let mut skipped = Vec::new();
    let mut found = None;
    for entry in entries {
        match parse_node(entry) {
            Ok(node) if node.mac == mac => {
                found = Some(node);
                break;
            }
            Ok(_) => {}
            Err(e) => skipped.push(e),
        }
    }
    (found, skipped)
}

pub fn parse_workflow(value: &serde_json::Value) -> Result<Workflow, String> {
    let workflow = Workflow::deserialize(value).map_err(|e| e.to_string())?;
    workflow.validate().map_err(|e| e.to_string())?;
    Ok(workflow)
}

/// `{data: Node}`, the node kept raw for [`parse_node`].
#[derive(Debug, Clone, Deserialize)]
pub struct NodeEnvelope {
    pub data: serde_json::Value,
}

/// `POST /api/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewNode {
    pub mac_address: String,
    /// `x86_64` or `arm64` only, else left out (DESIGN §6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// `bios` or `uefi`, from iPXE's platform; left out when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<String>,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub system_uuid: Option<String>,
    pub site_id: String,
}

/// The most of one fact a node sent (vendor, serial, …) that is kept: a
/// node's queued items are bounded in bytes (DESIGN §7).
pub const FACT_MAX_BYTES: usize = 256;

/// The most a node's report may carry once queued (DESIGN §7).
pub const REPORT_MAX_BYTES: usize = 4096;

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn cut_to(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl NewNode {
    /// The registration of `mac` with the facts iPXE sent.
    pub fn from_facts(
        mac: crate::model::mac::Mac,
        facts: &crate::model::boot::BootFacts,
        site_id: &str,
    ) -> NewNode {
        let client = Client::from_ipxe(mac, facts);
        NewNode {
            mac_address: mac.to_string(),
            arch: wire_arch(client.cpu),
            boot_mode: wire_boot_mode(client.firmware),
            vendor: facts
                .manufacturer
                .as_deref()
                .map(|t| cut_to(t, FACT_MAX_BYTES)),
            model: facts.product.as_deref().map(|t| cut_to(t, FACT_MAX_BYTES)),
            serial_number: facts.serial.as_deref().map(|t| cut_to(t, FACT_MAX_BYTES)),
            system_uuid: facts.uuid.as_deref().map(|t| cut_to(t, FACT_MAX_BYTES)),
            site_id: site_id.to_string(),
        }
    }
}

/// A CPU architecture as controllers take it: a BIOS x86 client is an
/// x86-64 machine as far as installs go (iPXE's BIOS build says `i386`),
/// and PureBoot refuses anything but `x86_64`, `arm64` and `aarch64`.
pub fn wire_arch(cpu: Cpu) -> Option<String> {
    match cpu {
        Cpu::X86 | Cpu::X86_64 => Some("x86_64".into()),
        Cpu::Arm64 => Some("arm64".into()),
        Cpu::Arm32 | Cpu::Other => None,
    }
}

/// The firmware as a boot mode: `bios` or `uefi`.
pub fn wire_boot_mode(firmware: Firmware) -> Option<String> {
    match firmware {
        Firmware::Bios => Some("bios".into()),
        Firmware::Uefi => Some("uefi".into()),
        Firmware::Unknown => None,
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
#[serde(try_from = "WireReport")]
pub struct NodeReport {
    pub mac_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// PureBoot's name; installers may also send `metadata`, or both
    /// (see [`WireReport`]); it is forwarded under this name (PureBoot
    /// drops `metadata` silently).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_metadata: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation_status: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A report as installers send it: `metadata`, `event_metadata`, or both
/// at once (equal values are one field; DESIGN §6).
#[derive(Deserialize)]
struct WireReport {
    mac_address: String,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    event_metadata: Option<serde_json::Value>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    installation_status: Option<String>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

impl TryFrom<WireReport> for NodeReport {
    type Error = String;

    fn try_from(wire: WireReport) -> Result<NodeReport, String> {
        Ok(NodeReport {
            mac_address: wire.mac_address,
            event: wire.event,
            status: wire.status,
            message: wire.message,
            event_metadata: one_of_two_names(
                wire.event_metadata,
                wire.metadata,
                "event_metadata",
                "metadata",
            )?,
            installation_status: wire.installation_status,
            extra: wire.extra,
        })
    }
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

    /// The report cut to fit in `max` bytes as JSON (DESIGN §7: a node's
    /// item carries at most 4 KiB): the message is cut first, then the
    /// metadata and fields this agent does not read are replaced by a note
    /// of what was left out. The event and the MAC are always kept.
    pub fn fit(mut self, max: usize) -> NodeReport {
        let size = |r: &NodeReport| serde_json::to_vec(r).map(|v| v.len()).unwrap_or(usize::MAX);
        if size(&self) <= max {
            return self;
        }
        if let Some(message) = &self.message {
            self.message = Some(cut_to(message, max / 4));
        }
        if size(&self) > max
            && let Some(metadata) = self.event_metadata.take()
        {
            let bytes = serde_json::to_vec(&metadata).map(|v| v.len()).unwrap_or(0);
            self.event_metadata = Some(serde_json::json!({
                "siteboot_truncated": format!("metadata of {bytes} bytes left out at the site")
            }));
        }
        if size(&self) > max && !self.extra.is_empty() {
            let names = self.extra.len();
            self.extra.clear();
            self.extra.insert(
                "siteboot_truncated_fields".into(),
                serde_json::Value::from(names),
            );
        }
        for text in [
            &mut self.status,
            &mut self.installation_status,
            &mut self.event,
        ]
        .into_iter()
        .flatten()
        {
            *text = cut_to(text, 64);
        }
        self
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pureboot_node_is_read_as_it_comes() {
        // As PureBoot's NodeResponse serialises: mac_address, naive UTC
        // times, no version.
        let node = parse_node(&json!({
            "id": "3f2c", "mac_address": "52:54:00:aa:00:01", "hostname": null,
            "ip_address": null, "state": "active", "workflow_id": null,
            "arch": "x86_64", "boot_mode": "bios", "group_id": null, "tags": [],
            "install_attempts": 0, "state_changed_at": "2026-11-23T20:03:28.123456",
            "created_at": "2026-11-23T20:00:00", "updated_at": "2026-11-23T20:03:28",
            "last_seen_at": null, "health_status": "unknown", "health_score": 100
        }))
        .unwrap();
        assert_eq!(node.mac.to_string(), "52:54:00:aa:00:01");
        assert_eq!(node.state, NodeState::Active);
        assert!(!node.versioned);
        assert_eq!(
            node.updated_at,
            time::macros::datetime!(2026-11-23 20:03:28 UTC)
        );
        assert_eq!(
            node.state_changed_at,
            Some(time::macros::datetime!(2026-11-23 20:03:28.123456 UTC))
        );
    }

    #[test]
    fn both_spellings_of_the_mac_are_one_field_when_they_agree() {
        let node = |fields: serde_json::Value| {
            let mut value = json!({"id": "n", "state": "retired",
                "updated_at": "2026-11-23T20:03:28Z"});
            value
                .as_object_mut()
                .unwrap()
                .extend(fields.as_object().unwrap().clone());
            parse_node(&value)
        };
        let both =
            node(json!({"mac": "52:54:00:aa:00:01", "mac_address": "52:54:00:AA:00:01"})).unwrap();
        assert_eq!(both.mac.to_string(), "52:54:00:aa:00:01");
        assert_eq!(both.state, NodeState::Retired);
        assert!(node(json!({"mac_address": "52:54:00:aa:00:01"})).is_ok());
        assert!(node(json!({"mac": "52:54:00:aa:00:01"})).is_ok());
        let e = node(json!({"mac": "52:54:00:aa:00:01", "mac_address": "52:54:00:aa:00:02"}))
            .unwrap_err();
        assert!(e.contains("disagree"), "{e}");
        let e = node(json!({})).unwrap_err();
        assert!(e.contains("mac"), "{e}");
    }

    #[test]
    fn a_report_may_carry_metadata_under_both_names() {
        let report: NodeReport = serde_json::from_value(json!({
            "mac_address": "52:54:00:aa:00:01", "event": "install_progress",
            "metadata": {"pct": 5}, "event_metadata": {"pct": 5}}))
        .unwrap();
        assert_eq!(report.event_metadata, Some(json!({"pct": 5})));
        assert!(!report.extra.contains_key("metadata"));
        let sent = serde_json::to_value(&report).unwrap();
        assert_eq!(sent["event_metadata"], json!({"pct": 5}));
        assert!(sent.get("metadata").is_none());
        let differ = serde_json::from_value::<NodeReport>(json!({
            "mac_address": "52:54:00:aa:00:01", "event": "install_progress",
            "metadata": {"pct": 5}, "event_metadata": {"pct": 6}}));
        assert!(differ.is_err());
    }

    #[test]
    fn a_large_report_is_cut_to_fit_keeping_its_event() {
        let report: NodeReport = serde_json::from_value(json!({
            "mac_address": "52:54:00:aa:00:01", "event": "install_complete",
            "message": "m".repeat(60_000), "event_metadata": {"log": "x".repeat(60_000)},
            "other": "y".repeat(60_000)}))
        .unwrap();
        let fitted = report.fit(REPORT_MAX_BYTES);
        assert!(serde_json::to_vec(&fitted).unwrap().len() <= REPORT_MAX_BYTES);
        assert_eq!(fitted.event.as_deref(), Some("install_complete"));
        assert_eq!(fitted.implied_state(), Some(NodeState::Installed));
        let small: NodeReport = serde_json::from_value(json!({
            "mac_address": "52:54:00:aa:00:01", "event": "install_progress", "message": "50%"}))
        .unwrap();
        assert_eq!(small.clone().fit(REPORT_MAX_BYTES), small);
    }

    #[test]
    fn a_design_node_keeps_its_version() {
        let node = parse_node(&json!({
            "id": "n1", "mac": "52:54:00:aa:00:02", "state": "pending", "workflow_id": "ubuntu",
            "tags": null, "updated_at": "2026-11-23T20:03:28+01:00", "version": 7
        }))
        .unwrap();
        assert!(node.versioned);
        assert_eq!(node.version, 7);
        assert_eq!(
            node.updated_at,
            time::macros::datetime!(2026-11-23 19:03:28 UTC)
        );
    }

    #[test]
    fn a_bad_timestamp_or_mac_names_the_field() {
        let e = parse_node(
            &json!({"id": "x", "mac": "52:54:00:aa:00:02", "state": "active",
            "updated_at": "yesterday"}),
        )
        .unwrap_err();
        assert!(e.contains("updated_at"), "{e}");
        let e = parse_node(
            &json!({"id": "x", "mac": "ff:ff:ff:ff:ff:ff", "state": "active",
            "updated_at": "2026-11-23T20:03:28Z"}),
        )
        .unwrap_err();
        assert!(e.contains("mac"), "{e}");
    }

    #[test]
    fn a_list_that_ignores_the_filter_is_searched_and_bad_entries_skipped() {
        let entry = |mac: &str, state: &str| json!({"id": mac, "mac_address": mac, "state": state, "updated_at": "2026-11-23T20:03:28"});
        let list = vec![
            entry("52:54:00:aa:00:01", "active"),
            json!({"id": "broken", "mac_address": "52:54:00:aa:00:09"}),
            entry("52:54:00:aa:00:02", "pending"),
        ];
        let (found, skipped) = find_node(&list, "52:54:00:aa:00:02".parse().unwrap());
        assert_eq!(found.unwrap().state, NodeState::Pending);
        assert_eq!(skipped.len(), 1);
        let (found, _) = find_node(&list, "52:54:00:aa:00:03".parse().unwrap());
        assert!(found.is_none(), "never the first entry on trust");
    }

    #[test]
    fn arch_and_boot_mode_are_sent_as_pureboot_takes_them() {
        assert_eq!(wire_arch(Cpu::X86).as_deref(), Some("x86_64"));
        assert_eq!(wire_arch(Cpu::X86_64).as_deref(), Some("x86_64"));
        assert_eq!(wire_arch(Cpu::Arm64).as_deref(), Some("arm64"));
        assert_eq!(wire_arch(Cpu::Other), None);
        assert_eq!(wire_boot_mode(Firmware::Bios).as_deref(), Some("bios"));
        assert_eq!(wire_boot_mode(Firmware::Uefi).as_deref(), Some("uefi"));
        let facts = crate::model::boot::BootFacts {
            arch: Some("i386".into()),
            platform: Some("pcbios".into()),
            ..Default::default()
        };
        let body = serde_json::to_value(NewNode::from_facts(
            "52:54:00:aa:00:01".parse().unwrap(),
            &facts,
            "fra1",
        ))
        .unwrap();
        assert_eq!(body["arch"], "x86_64");
        assert_eq!(body["boot_mode"], "bios");
        let unknown = crate::model::boot::BootFacts::default();
        let body = serde_json::to_value(NewNode::from_facts(
            "52:54:00:aa:00:01".parse().unwrap(),
            &unknown,
            "fra1",
        ))
        .unwrap();
        assert!(body.get("arch").is_none(), "never null: {body}");
    }

    #[test]
    fn report_metadata_is_forwarded_as_event_metadata() {
        let report: NodeReport = serde_json::from_value(json!({
            "mac_address": "52:54:00:aa:00:01", "event": "install_progress",
            "metadata": {"percent": 40}
        }))
        .unwrap();
        let sent = serde_json::to_value(&report).unwrap();
        assert_eq!(sent["event_metadata"]["percent"], 40);
        assert!(sent.get("metadata").is_none());
    }

    #[test]
    fn heartbeat_services_are_strings() {
        let services = ServicesStatus {
            tftp: ServiceHealth::Ok,
            http: ServiceHealth::Degraded,
        };
        assert_eq!(
            serde_json::to_value(services).unwrap(),
            json!({"tftp": "ok", "http": "degraded"})
        );
    }
}
