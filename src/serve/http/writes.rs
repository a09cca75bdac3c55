//! Writes that reach the controller through the outbox (DESIGN §5):
//! installer reports (open to nodes) and node state changes (admin), plus
//! the admin's read-only view of the node cache.
//!
//! Answers: `200 {"status":"sent"|"applied", "data": node}` when the
//! controller (or, standalone, the local store) took the write;
//! `202 {"status":"queued","offline":…,"queue_id":…}` when it was queued;
//! the controller's own 4xx when it refused the change; 503 when the queue
//! is full and the write was not accepted.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::state::AppState;
use crate::central::api::{NodeReport, StateChange};
use crate::model::mac::Mac;
use crate::model::node::NodeState;
use crate::outbox::{WriteError, Written};

pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({"error": message.to_string()}))).into_response()
}

/// A request refused before any work: status and a message for the caller.
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn bad_request(message: impl std::fmt::Display) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn written(outcome: Written) -> Response {
    match outcome {
        Written::Applied(node) => (
            StatusCode::OK,
            axum::Json(json!({"status": "applied", "data": node.as_deref()})),
        )
            .into_response(),
        Written::Sent(node) => (
            StatusCode::OK,
            axum::Json(json!({"status": "sent", "offline": false, "data": node.as_deref()})),
        )
            .into_response(),
        Written::Queued { id, offline } => (
            StatusCode::ACCEPTED,
            axum::Json(json!({"status": "queued", "offline": offline, "queue_id": id})),
        )
            .into_response(),
    }
}

/// `refused_by`: who said no (the controller, or standalone the agent).
fn write_failed(e: WriteError, refused_by: &str) -> Response {
    match e {
        WriteError::UnknownNode(_) => error(StatusCode::NOT_FOUND, e),
        // DESIGN §15: the site policy forbids it; the body names why.
        WriteError::Refused(reason) => (
            StatusCode::CONFLICT,
            axum::Json(json!({"error": reason, "refused_by": "site_policy"})),
        )
            .into_response(),
        WriteError::Rejected { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            (
                status,
                axum::Json(json!({"error": body, "refused_by": refused_by})),
            )
                .into_response()
        }
        e if e.is_temporary() => error(StatusCode::SERVICE_UNAVAILABLE, e),
        other => {
            tracing::error!(error = %other, "write failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, other)
        }
    }
}

/// Tells the live view (DESIGN §11) that a node changed here.
fn node_changed(mac: Mac, change: &str) {
    crate::events::publish("node", json!({"mac": mac.to_string(), "change": change}));
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn parse_mac(text: &str) -> Result<Mac, ApiError> {
    text.parse::<Mac>().map_err(ApiError::bad_request)
}

/// `POST /api/v1/report` (PureBoot `NodeReport`).
pub async fn report(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let report: NodeReport = parse_json(&body)?;
    report.validate().map_err(ApiError::bad_request)?;
    Ok(match state.outbox.report(report).await {
        Ok(outcome) => written(outcome),
        Err(e) => write_failed(e, refuser(&state)),
    })
}

fn refuser(state: &AppState) -> &'static str {
    if state.port.mode().has_controller() {
        "controller"
    } else {
        "agent"
    }
}

/// The body of `PATCH /api/v1/nodes/{mac}/state`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: String,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    force: Option<bool>,
}

pub async fn set_state(
    State(state): State<Arc<AppState>>,
    Path(mac): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    let request: StateBody = parse_json(&body)?;
    let new_state = request
        .state
        .parse::<NodeState>()
        .map_err(ApiError::bad_request)?;
    let change = StateChange {
        state: new_state,
        comment: request.comment,
        force: request.force,
        base_version: None,
    };
    Ok(match state.outbox.set_state(mac, change).await {
        Ok(outcome) => {
            tracing::info!(%mac, state = %new_state, "node state change accepted");
            node_changed(mac, "state");
            written(outcome)
        }
        Err(e) => write_failed(e, refuser(&state)),
    })
}

/// The body of `POST /api/v1/nodes`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNodeBody {
    mac: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    workflow_id: Option<String>,
    #[serde(default)]
    arch: Option<String>,
}

/// `POST /api/v1/nodes` (DESIGN §5). Standalone the store takes the node
/// as given (state, hostname, workflow); with a controller it is a
/// registration (sent, or queued while the controller is gone), which
/// carries the MAC and facts only: the controller decides the rest.
pub async fn add_node(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: NewNodeBody = parse_json(&body)?;
    let mac = parse_mac(&request.mac)?;
    if let Some(hostname) = &request.hostname {
        crate::model::node::validate_hostname(hostname).map_err(ApiError::bad_request)?;
    }
    let node_state = match &request.state {
        Some(text) => Some(text.parse::<NodeState>().map_err(ApiError::bad_request)?),
        None => None,
    };
    let exists = || ApiError(StatusCode::CONFLICT, format!("node {mac} exists already"));
    if state.port.mode().has_controller() {
        if node_state.is_some() || request.hostname.is_some() || request.workflow_id.is_some() {
            return Err(ApiError::bad_request(
                "with a controller, a new node is a registration (mac, arch): set its state, \
                 hostname or workflow at the controller, or with PATCH …/state once registered",
            ));
        }
        if let Err(e) = state
            .outbox
            .offline_check(crate::model::policy::OfflineWrite::NewNode)
        {
            return Ok(write_failed(e, "site_policy"));
        }
        let facts = crate::model::boot::BootFacts {
            arch: request.arch.clone(),
            ..Default::default()
        };
        let registered = state.outbox.register(mac, &facts).await;
        if matches!(
            registered,
            Ok(crate::outbox::Registered::Sent(_) | crate::outbox::Registered::Queued(_))
        ) {
            node_changed(mac, "added");
        }
        return Ok(match registered {
            Ok(crate::outbox::Registered::Known(_)) => return Err(exists()),
            Ok(crate::outbox::Registered::Sent(node)) => (
                StatusCode::CREATED,
                axum::Json(json!({"status": "sent", "offline": false, "data": *node})),
            )
                .into_response(),
            Ok(crate::outbox::Registered::Queued(node)) => (
                StatusCode::ACCEPTED,
                axum::Json(json!({"status": "queued", "offline": true, "data": *node})),
            )
                .into_response(),
            // Not reached: the check above refuses first. Said plainly
            // should the two ever part.
            Ok(crate::outbox::Registered::Deferred) => (
                StatusCode::ACCEPTED,
                axum::Json(json!({"status": "queued", "offline": true, "data": null})),
            )
                .into_response(),
            Err(e) => write_failed(e, refuser(&state)),
        });
    }
    if let Some(id) = &request.workflow_id {
        let known = state.boot.all_workflows().await.iter().any(|w| &w.id == id);
        if !known {
            return Err(ApiError::bad_request(format!(
                "unknown workflow {id:?}: define [workflows.{id}] in the configuration"
            )));
        }
    }
    let mut node = crate::model::node::Node::new_local(
        mac,
        node_state.unwrap_or(NodeState::Discovered),
        time::OffsetDateTime::now_utc(),
    );
    node.hostname = request.hostname;
    node.workflow_id = request.workflow_id;
    node.arch = request.arch;
    let wanted_id = node.id.clone();
    let stored = state
        .nodes
        .insert_if_absent(node)
        .await
        .map_err(|e| ApiError(store_status(&e), e.to_string()))?;
    if stored.id != wanted_id {
        return Err(exists());
    }
    state.boot.invalidate(Some(mac));
    tracing::info!(%mac, state = %stored.state, "node added");
    node_changed(mac, "added");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"status": "applied", "data": *stored})),
    )
        .into_response())
}

fn store_status(e: &crate::store::StoreError) -> StatusCode {
    if e.is_io() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// `DELETE /api/v1/nodes/{mac}` (DESIGN §5). Standalone the node leaves
/// the store. With a controller the deletion is a retirement: the §6 table
/// has no delete call, and PureBoot's own `DELETE /api/v1/nodes/{id}` is a
/// transition to `retired` (it keeps the record). So the agent sends (or
/// queues) the state change `retired`, which every controller dialect
/// takes, and the node stays cached as retired: its next boot is refused
/// here at once, online or not, instead of installing a node the operator
/// meant to remove.
pub async fn delete_node(
    State(state): State<Arc<AppState>>,
    Path(mac): Path<String>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    if state.port.mode().has_controller() {
        // An unknown MAC is the outbox's 404, as for `PATCH …/state`.
        let change = StateChange {
            state: NodeState::Retired,
            comment: Some("deleted by the site operator".into()),
            force: None,
            base_version: None,
        };
        return Ok(match state.outbox.set_state(mac, change).await {
            Ok(outcome) => {
                tracing::info!(%mac, "node deletion (retirement) accepted");
                node_changed(mac, "retired");
                written(outcome)
            }
            Err(e) => write_failed(e, refuser(&state)),
        });
    }
    let removed = state
        .nodes
        .remove(mac)
        .await
        .map_err(|e| ApiError(store_status(&e), e.to_string()))?;
    if !removed {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no node with MAC {mac}"),
        ));
    }
    state.boot.invalidate(Some(mac));
    tracing::info!(%mac, "node deleted");
    node_changed(mac, "deleted");
    Ok(axum::Json(json!({"status": "applied", "deleted": mac.to_string()})).into_response())
}

/// `GET /api/v1/nodes?search=&state=&limit=`: the cached nodes, by MAC;
/// `total` counts every match, `limit` (optional) bounds `data`, so a
/// page showing a fleet need not carry it all.
pub async fn list_nodes(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let wanted_state = match query.get("state").filter(|s| !s.is_empty()) {
        Some(text) => match text.parse::<NodeState>() {
            Ok(s) => Some(s),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
        None => None,
    };
    let search = query
        .get("search")
        .map(|s| s.to_lowercase())
        .unwrap_or_default();
    let mut nodes: Vec<_> = state
        .nodes
        .all()
        .into_iter()
        .filter(|n| wanted_state.is_none_or(|s| n.state == s))
        .filter(|n| {
            search.is_empty()
                || n.mac.to_string().contains(&search)
                || n.id.to_lowercase().contains(&search)
                || n.hostname
                    .as_deref()
                    .is_some_and(|h| h.to_lowercase().contains(&search))
        })
        .collect();
    let limit = match query.get("limit").filter(|l| !l.is_empty()) {
        Some(text) => match text.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("limit must be a positive integer, not {text:?}"),
                );
            }
        },
        None => usize::MAX,
    };
    // By MAC: byte order is the order of the colon strings. Only the
    // page asked for is sorted in full.
    let total = nodes.len();
    if limit < total {
        nodes.select_nth_unstable_by_key(limit, |n| n.mac);
        nodes.truncate(limit);
    }
    nodes.sort_unstable_by_key(|n| n.mac);
    let data: Vec<&crate::model::node::Node> = nodes.iter().map(|n| n.as_ref()).collect();
    axum::Json(json!({"data": data, "total": total})).into_response()
}

pub async fn get_node(
    State(state): State<Arc<AppState>>,
    Path(mac): Path<String>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    match state.nodes.get(mac) {
        Some(node) => {
            // What the node was served last (offline.default_action =
            // last_known replays it); an unreadable record shows as none.
            let last = state
                .store
                .call(move |s| s.get_last_script(mac))
                .await
                .ok()
                .flatten();
            let last_served = last.map(|l| {
                json!({
                    "action": l.action,
                    "served_at": l.served_at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    "destructive": l.destructive,
                    "workflow_id": l.workflow_id,
                })
            });
            Ok(axum::Json(json!({"data": *node, "last_served": last_served})).into_response())
        }
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no node with MAC {mac}"),
        )),
    }
}
