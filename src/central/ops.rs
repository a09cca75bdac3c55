//! The writes the agent makes at its controller, as typed operations: what
//! the outbox sends directly or queues, and what replay sends later.
//!
//! In a queue item an operation is stored as JSON with a version tag,
//! `{"v": 1, "op": "set_state", …}`. Items written before the tag existed
//! (no `v`) have the same shape and read as version 1; a version newer than
//! this agent knows is refused by name, never guessed at.

use serde::{Deserialize, Serialize};

use super::api::{NewNode, NodeReport, StateChange};
use crate::model::node::{Node, NodeState};

/// The payload format this agent writes.
pub const OPERATION_VERSION: u64 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    /// `POST /api/v1/nodes` for a MAC first seen here; `node_id` is the
    /// local id (`local-<uuid>`) it is cached under until accepted.
    Register { node_id: String, request: NewNode },
    /// `PATCH /api/v1/nodes/{node_id}/state`.
    SetState {
        node_id: String,
        change: StateChange,
        /// For a controller without versions: when the node's state last
        /// changed there (`state_changed_at`, else `updated_at`) as this
        /// change was made, checked before sending (DESIGN §8). Kept
        /// here, never sent.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "time::serde::rfc3339::option"
        )]
        base_changed_at: Option<time::OffsetDateTime>,
        /// With `base_changed_at`: the node's state then. A controller
        /// whose record has no state change time (PureBoot's is null
        /// until the state first changes) moves `updated_at` on every
        /// write, a report included; only a different state says the
        /// state moved (see [`moved_past`]). Kept here, never sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_state: Option<NodeState>,
    },
    /// `POST /api/v1/report` (installer progress, boot events).
    Report {
        report: NodeReport,
        /// For a report that moves the node (install complete, failed,
        /// …): what the node's record was when the site observed it,
        /// so that replay can tell a controller that moved the node
        /// meanwhile (DESIGN §8). Kept here, never sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        observed: Option<Observed>,
    },
}

/// The base of a state change observed at the site (an installer's
/// report), like an operator change's `base_version`/`base_changed_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub base_changed_at: Option<time::OffsetDateTime>,
    /// With `base_changed_at`: the node's state then (see [`moved_past`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_state: Option<NodeState>,
    /// A conflict was settled for the site (`keep_local`, `auto`): the
    /// report is sent, then its state set with `force`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

impl Observed {
    /// The base for an observation made on `node` as cached here; None
    /// for a node the controller does not know yet (nothing to compare).
    pub fn on(node: &Node) -> Option<Observed> {
        if node.id.starts_with("local-") {
            return None;
        }
        Some(Observed {
            base_version: node.versioned.then_some(node.version),
            base_changed_at: (!node.versioned)
                .then(|| node.state_changed_at.unwrap_or(node.updated_at)),
            base_state: (!node.versioned).then_some(node.state),
            force: false,
        })
    }

    /// Has the controller's record `now` moved past this base?
    pub fn moved(&self, now: &Node) -> bool {
        match (self.base_version, self.base_changed_at) {
            (Some(base), _) if now.versioned => now.version != base,
            (_, Some(at)) => moved_past(at, self.base_state, now),
            _ => false,
        }
    }
}

/// Has a controller without versions moved the node's state since a base
/// taken at `at` (its state change time then, else its `updated_at`), in
/// `state`? A record with a state change time answers by it. One without
/// (PureBoot's `state_changed_at` is null until the state first changes,
/// and its `updated_at` moves on every write, an installer's progress
/// report or a new IP address included) has moved only if `updated_at`
/// passed the base and the state is not the one the base saw; with no
/// state known, a later `updated_at` is enough (DESIGN §8).
pub fn moved_past(at: time::OffsetDateTime, state: Option<NodeState>, now: &Node) -> bool {
    match now.state_changed_at {
        Some(changed) => changed > at,
        None => now.updated_at > at && state.is_none_or(|s| s != now.state),
    }
}

impl Operation {
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Register { .. } => "register",
            Operation::SetState { .. } => "set_state",
            Operation::Report { .. } => "report",
        }
    }

    /// The stored form: the operation with its version tag.
    pub fn to_payload(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("v".into(), OPERATION_VERSION.into());
        }
        value
    }

    /// Reads a stored payload; the error says what is wrong with it.
    pub fn from_payload(payload: &serde_json::Value) -> Result<Operation, String> {
        let mut value = payload.clone();
        let version = match value.as_object_mut().and_then(|m| m.remove("v")) {
            None => 1,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("payload version {v} is not a number"))?,
        };
        if version > OPERATION_VERSION {
            return Err(format!(
                "payload version {version} was written by a newer siteboot (this one reads up to {OPERATION_VERSION})"
            ));
        }
        serde_json::from_value(value).map_err(|e| format!("payload: {e}"))
    }

    /// The controller id the operation addresses, if it names one.
    pub fn node_id(&self) -> Option<&str> {
        match self {
            Operation::Register { node_id, .. } | Operation::SetState { node_id, .. } => {
                Some(node_id)
            }
            Operation::Report { .. } => None,
        }
    }

    /// Points an operation that names node `from` at `to` (a registration
    /// accepted: the local id becomes the controller's), and a state change
    /// not forced onto `base`: what it was made against, now that the
    /// controller's record is known. True if it changed.
    pub fn remap(&mut self, from: &str, to: &str, base: Option<Base>) -> bool {
        match self {
            Operation::SetState {
                node_id,
                change,
                base_changed_at,
                base_state,
            } if node_id == from => {
                *node_id = to.to_string();
                if change.force != Some(true) {
                    match base {
                        Some(Base::Version(version)) => {
                            change.base_version = Some(version);
                            *base_changed_at = None;
                            *base_state = None;
                        }
                        Some(Base::ChangedAt(at, state)) => {
                            change.base_version = None;
                            *base_changed_at = Some(at);
                            *base_state = state;
                        }
                        None => {}
                    }
                }
                true
            }
            _ => false,
        }
    }
}

/// The controller's record a state change builds on (DESIGN §8): its
/// version, or for a controller without versions, when its state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Version(u64),
    /// The change time, and the state then when the record had one.
    ChangedAt(time::OffsetDateTime, Option<NodeState>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::node::NodeState;

    fn change() -> Operation {
        Operation::SetState {
            node_id: "local-1".into(),
            change: StateChange {
                state: NodeState::Active,
                comment: None,
                force: None,
                base_version: Some(3),
            },
            base_changed_at: None,
            base_state: None,
        }
    }

    #[test]
    fn payloads_round_trip_with_a_version_tag() {
        let op = change();
        let payload = op.to_payload();
        assert_eq!(payload["v"], 1);
        assert_eq!(payload["op"], "set_state");
        assert_eq!(Operation::from_payload(&payload).unwrap(), op);
    }

    #[test]
    fn untagged_payloads_of_older_databases_still_read() {
        let old = serde_json::json!({"op": "set_state", "node_id": "n1",
            "change": {"state": "installed"}});
        let op = Operation::from_payload(&old).unwrap();
        assert_eq!(op.node_id(), Some("n1"));
        let report = serde_json::json!({"op": "report",
            "report": {"mac_address": "52:54:00:00:00:01", "event": "first_boot"}});
        assert_eq!(Operation::from_payload(&report).unwrap().name(), "report");
    }

    #[test]
    fn newer_and_unknown_payloads_are_refused_by_name() {
        let mut newer = change().to_payload();
        newer["v"] = 2.into();
        assert!(
            Operation::from_payload(&newer)
                .unwrap_err()
                .contains("newer siteboot")
        );
        let unknown = serde_json::json!({"op": "teleport"});
        assert!(
            Operation::from_payload(&unknown)
                .unwrap_err()
                .contains("teleport")
        );
    }

    #[test]
    fn a_record_without_a_state_change_time_moved_only_if_its_state_did() {
        let t = |s: i64| time::OffsetDateTime::from_unix_timestamp(s).unwrap();
        let mac = "52:54:00:00:00:01".parse().unwrap();
        let mut now = Node::new_local(mac, NodeState::Discovered, t(100));
        now.versioned = false;
        // PureBoot: a report moved `updated_at`, the state never changed.
        assert!(!moved_past(t(50), Some(NodeState::Discovered), &now));
        assert!(moved_past(t(50), Some(NodeState::Pending), &now));
        assert!(
            moved_past(t(50), None, &now),
            "no state known: the time says"
        );
        assert!(!moved_past(t(100), None, &now));
        // With a state change time, that time alone says.
        now.state_changed_at = Some(t(60));
        assert!(moved_past(t(50), Some(NodeState::Discovered), &now));
        assert!(!moved_past(t(70), Some(NodeState::Pending), &now));
    }

    #[test]
    fn remap_moves_only_the_named_node() {
        let mut op = change();
        assert!(!op.remap("local-2", "n9", None));
        assert!(op.remap("local-1", "n9", Some(Base::Version(7))));
        assert_eq!(op.node_id(), Some("n9"));
        let Operation::SetState { change, .. } = &op else {
            panic!("still a state change")
        };
        assert_eq!(change.base_version, Some(7), "rebased");
    }
}
