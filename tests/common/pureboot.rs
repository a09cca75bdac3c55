//! The fake controller's PureBoot dialect: the routes shaped as PureBoot's
//! central (public repository mrveiss/pureboot, FastAPI) really answers
//! them, read from its source (`src/api/routes/{agents,nodes,sites}.py`,
//! `src/api/schemas.py`, `src/api/middleware/auth.py`,
//! `src/core/state_machine.py`), written here from that reading:
//!
//! * two credentials: every path but `/health` and `/api/v1/report` wants
//!   `Authorization: Bearer pb_…` (a service account's API key); the
//!   registration body's `token` must be the site's agent token;
//! * nodes as `NodeResponse`: `mac_address`, no `version`, naive UTC
//!   timestamps (`2026-11-22T10:00:07`), `{success, data, total}` lists;
//! * `GET /api/v1/nodes` has no `mac` filter: every node comes back;
//! * `GET /api/v1/sites/{id}/nodes`: no `workflows`, no `cursor`, `since`
//!   ignored;
//! * pydantic validation: 422 with `{"detail": [{loc, msg, type}]}` for a
//!   heartbeat whose `services` are not strings, a `cache_hit_rate`
//!   outside 0..1, a node whose `arch` is null or not x86_64/arm64/aarch64,
//!   a report with an unknown `event`; unknown fields are dropped (so a
//!   report's `metadata` is lost, `event_metadata` kept);
//! * state changes follow PureBoot's state machine; an invalid one is a
//!   400 naming the valid transitions, never a 409 (no versions);
//! * `Idempotency-Key` is ignored: a repeat is applied again.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::controller::{Inner, cut_body, query_map, record, slow_body};

/// The service account's API key the fake accepts in the header.
pub const API_KEY: &str = "pb_live_fakesiteboot0123456789";
/// The site's agent token the fake wants in the registration body.
pub const SITE_TOKEN: &str = "site-agent-token-fra1";

pub(super) struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a Value,
}

/// PureBoot's `NodeStateMachine.TRANSITIONS` (and: any state but
/// `retired` may be retired).
pub(super) fn valid_transitions(from: &str) -> Vec<&'static str> {
    let to: &[&str] = match from {
        "discovered" => &["pending", "cloning_target"],
        "pending" => &["installing"],
        "installing" => &["installed", "install_failed"],
        "install_failed" => &["pending"],
        "installed" => &["active", "reprovision", "retired"],
        "active" => &[
            "reprovision",
            "deprovisioning",
            "migrating",
            "serving_source",
            "cloning_target",
        ],
        "reprovision" => &["pending"],
        "deprovisioning" => &["retired"],
        "migrating" | "serving_source" => &["active"],
        "cloning_target" => &["installed"],
        _ => &[],
    };
    to.to_vec()
}

pub(super) fn can_transition(from: &str, to: &str) -> bool {
    if to == "retired" {
        return from != "retired";
    }
    valid_transitions(from).contains(&to)
}

fn detail(status: StatusCode, detail: impl Into<Value>) -> Response {
    (status, axum::Json(json!({ "detail": detail.into() }))).into_response()
}

/// A pydantic validation error.
fn unprocessable(loc: &[&str], msg: &str) -> Response {
    detail(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!([{ "loc": loc, "msg": msg, "type": "value_error" }]),
    )
}

/// A naive UTC time (as `datetime.utcnow()` serialises), moving with `n`.
fn naive_time(n: u64) -> String {
    format!(
        "2026-11-22T{:02}:{:02}:{:02}.{:06}",
        10 + (n / 3600) % 12,
        (n / 60) % 60,
        n % 60,
        n % 1_000_000
    )
}

/// The fake's record of a node as PureBoot's `NodeResponse`. Raw entries
/// a test planted (malformed on purpose) are passed on as they are.
fn node_response(node: &Value) -> Value {
    let (Some(id), Some(mac), Some(state)) = (
        node["id"].as_str(),
        node["mac"].as_str(),
        node["state"].as_str(),
    ) else {
        return node.clone();
    };
    // PureBoot's clock: `state_changed_at` is set when the state changes
    // (null until then), `updated_at` on every write (SQLAlchemy's
    // `onupdate=now()`: a report's `last_seen_at` moves it too). Nodes a
    // test planted carry only a version and use it for both.
    let changes = node["version"].as_u64().unwrap_or(1);
    let state_changed = node["state_at"]
        .as_u64()
        .or((changes > 1).then_some(changes));
    let updated = node["updated_at_tick"]
        .as_u64()
        .or(state_changed)
        .unwrap_or(changes);
    let future = node["future"] == true;
    json!({
        "id": id, "mac_address": mac, "hostname": node.get("hostname").cloned().unwrap_or(Value::Null),
        "ip_address": null, "state": state, "workflow_id": node["workflow_id"],
        "vendor": null, "model": null, "serial_number": null, "system_uuid": null,
        "arch": node.get("arch").cloned().unwrap_or(json!("x86_64")),
        "boot_mode": node.get("boot_mode").cloned().unwrap_or(json!("bios")),
        "pi_model": null, "group_id": null, "tags": node["tags"],
        "install_attempts": node["install_attempts"].as_u64().unwrap_or(0),
        "last_install_error": null,
        // Nullable, as PureBoot's: a node whose state never changed has
        // none (with it, the SIGKILL test found acknowledged writes taken
        // as made and never sent: issue 19).
        "state_changed_at": if future { json!("2099-01-01T00:00:00") } else { json!(state_changed.map(naive_time)) },
        "created_at": naive_time(0),
        "updated_at": if future { "2099-01-01T00:00:00".to_string() } else { naive_time(updated) },
        "last_seen_at": null, "health_status": "unknown", "health_score": 100
    })
}

/// Why PureBoot's auth middleware refuses the request, if it does.
fn refusal(headers: &HeaderMap) -> Option<&'static str> {
    let Some(header) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Some("Not authenticated");
    };
    let Some(token) = header.strip_prefix("Bearer ") else {
        return Some("Invalid authentication scheme");
    };
    if !token.starts_with("pb_") {
        return Some("Invalid or expired token");
    }
    (token != API_KEY).then_some("Invalid API key")
}

/// PureBoot's `StateTransitionService.MAX_INSTALL_ATTEMPTS`.
pub const MAX_INSTALL_ATTEMPTS: u64 = 3;

/// The one site the fake has (PureBoot's `DeviceGroup` with `is_site`).
pub const SITE_ID: &str = "fra1";

fn is_site(id: Option<&str>) -> bool {
    id == Some(SITE_ID)
}

fn is_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split([':', '-']).collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

const REPORT_EVENTS: [&str; 7] = [
    "boot_started",
    "install_started",
    "install_progress",
    "install_complete",
    "install_failed",
    "first_boot",
    "heartbeat",
];

/// The fields of PureBoot's `NodeReport`; pydantic drops the rest.
const REPORT_FIELDS: [&str; 15] = [
    "mac_address",
    "event",
    "status",
    "message",
    "event_metadata",
    "ip_address",
    "hostname",
    "vendor",
    "model",
    "serial_number",
    "system_uuid",
    "installation_status",
    "installation_progress",
    "installation_error",
    "boot_mode",
];

pub(super) fn route(inner: &mut Inner, request: Request<'_>) -> Response {
    let public = matches!(request.path, "/health" | "/api/v1/report");
    if !public && let Some(why) = refusal(request.headers) {
        return detail(StatusCode::UNAUTHORIZED, why);
    }
    let body = request.body;
    let q = query_map(request.query);
    match (request.method, request.path) {
        ("GET", "/health") => axum::Json(json!({"status": "healthy"})).into_response(),
        ("POST", "/api/v1/agents/register") => {
            for field in ["site_id", "token", "agent_url", "agent_version"] {
                if !body[field].is_string() {
                    return unprocessable(&["body", field], "Field required");
                }
            }
            // PureBoot looks the site up first: 404 for one it has not.
            if !is_site(body["site_id"].as_str()) {
                return detail(StatusCode::NOT_FOUND, "Site not found");
            }
            if body["token"] != SITE_TOKEN {
                return detail(StatusCode::UNAUTHORIZED, "Invalid registration token");
            }
            // `agents.py`: AgentConfig from the site's columns (nullable:
            // a column never set is null).
            let column = |name: &str| inner.site_policy.get(name).cloned().unwrap_or(Value::Null);
            axum::Json(json!({
                "success": true, "message": "Agent registered successfully",
                "config": {"site_id": body["site_id"], "site_name": "Test site",
                           "autonomy_level": column("autonomy_level"),
                           "cache_policy": column("cache_policy"),
                           "cache_max_size_gb": column("cache_max_size_gb"),
                           "cache_retention_days": column("cache_retention_days"),
                           "heartbeat_interval": inner.heartbeat_interval, "sync_enabled": true}
            }))
            .into_response()
        }
        ("POST", "/api/v1/agents/heartbeat") => {
            if let Some(services) = body["services"].as_object() {
                for (name, value) in services {
                    if !value.is_string() {
                        return unprocessable(
                            &["body", "services", name],
                            "Input should be a valid string",
                        );
                    }
                }
            } else {
                return unprocessable(&["body", "services"], "Field required");
            }
            let rate = body["cache_hit_rate"].as_f64().unwrap_or(0.0);
            if !(0.0..=1.0).contains(&rate) {
                return unprocessable(
                    &["body", "cache_hit_rate"],
                    "Input should be less than or equal to 1",
                );
            }
            if inner.forget_agent || !is_site(body["site_id"].as_str()) {
                return detail(StatusCode::NOT_FOUND, "Site not found");
            }
            // PureBoot's heartbeat never delivers a command (its list is
            // always empty: "TODO: Check for pending sync requests").
            axum::Json(json!({"acknowledged": true, "server_time": naive_time(7),
                              "commands": []}))
            .into_response()
        }
        // No `mac` filter: every node, whatever the query says.
        ("GET", "/api/v1/nodes") => {
            let data: Vec<Value> = inner.nodes.values().map(node_response).collect();
            axum::Json(json!({"success": true, "data": data, "total": data.len()})).into_response()
        }
        ("POST", "/api/v1/nodes") => {
            let mac = body["mac_address"].as_str().unwrap_or_default();
            if !is_mac(mac) {
                return unprocessable(
                    &["body", "mac_address"],
                    &format!("Value error, Invalid MAC address format: {mac}"),
                );
            }
            let mac = mac.replace('-', ":").to_lowercase();
            let arch = match body.get("arch") {
                None => json!("x86_64"),
                Some(Value::String(a)) if ["x86_64", "arm64", "aarch64"].contains(&a.as_str()) => {
                    json!(a)
                }
                Some(other) => {
                    return unprocessable(
                        &["body", "arch"],
                        &format!("Value error, Invalid architecture: {other}"),
                    );
                }
            };
            let boot_mode = match body.get("boot_mode") {
                None => json!("bios"),
                Some(Value::String(m)) if ["bios", "uefi", "pi"].contains(&m.as_str()) => json!(m),
                Some(other) => {
                    return unprocessable(
                        &["body", "boot_mode"],
                        &format!("Value error, Invalid boot mode: {other}"),
                    );
                }
            };
            if inner.nodes.contains_key(&mac) {
                return detail(
                    StatusCode::CONFLICT,
                    format!("Node with MAC {mac} already exists"),
                );
            }
            inner.generation += 1;
            inner.next_id += 1;
            let generation = inner.generation;
            let node = json!({
                "id": format!("pb-{:04x}", inner.next_id), "mac": mac, "state": "discovered",
                "workflow_id": null, "tags": [], "version": 1, "arch": arch, "boot_mode": boot_mode,
                "updated_at_tick": generation
            });
            inner.nodes.insert(mac.clone(), node.clone());
            inner.changed_at.insert(mac.clone(), generation);
            let answer = json!({"success": true, "data": node_response(&node),
                                "message": "Node registered successfully"});
            record(inner, "register", &None, &mac, body);
            (StatusCode::CREATED, axum::Json(answer)).into_response()
        }
        ("PATCH", p) if p.starts_with("/api/v1/nodes/") && p.ends_with("/state") => {
            let id = &p["/api/v1/nodes/".len()..p.len() - "/state".len()];
            let Some(mac) = inner
                .nodes
                .iter()
                .find(|(_, n)| n["id"].as_str() == Some(id))
                .map(|(mac, _)| mac.clone())
            else {
                return detail(StatusCode::NOT_FOUND, "Node not found");
            };
            let Some(to) = body["state"].as_str().map(str::to_string) else {
                return unprocessable(&["body", "state"], "Field required");
            };
            let from = inner.nodes[&mac]["state"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let force = body["force"] == true;
            let attempts = inner.nodes[&mac]["install_attempts"].as_u64().unwrap_or(0);
            // PureBoot's StateService: a node that failed its install
            // MAX_INSTALL_ATTEMPTS times goes back to pending only forced.
            if from == "install_failed"
                && to == "pending"
                && !force
                && attempts >= MAX_INSTALL_ATTEMPTS
            {
                return detail(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Max install attempts ({MAX_INSTALL_ATTEMPTS}) exceeded. Use force=true to reset and retry."
                    ),
                );
            }
            // PureBoot's StateService: `force` skips the transition check.
            if !inner.any_transition && body["force"] != true && !can_transition(&from, &to) {
                return detail(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Invalid state transition from '{from}' to '{to}'. Valid transitions: {:?}",
                        valid_transitions(&from)
                    ),
                );
            }
            inner.generation += 1;
            let generation = inner.generation;
            let node = inner.nodes.get_mut(&mac).expect("found above");
            node["state"] = Value::String(to.clone());
            node["version"] = json!(node["version"].as_u64().unwrap_or(0) + 1);
            node["state_at"] = json!(generation);
            node["updated_at_tick"] = json!(generation);
            if force || to == "installed" {
                node["install_attempts"] = json!(0);
            }
            let answer = json!({"success": true, "data": node_response(node),
                                "message": format!("Node transitioned to {to}")});
            inner.changed_at.insert(mac.clone(), generation);
            record(inner, "set_state", &None, &mac, body);
            axum::Json(answer).into_response()
        }
        ("POST", "/api/v1/report") => {
            let mac = body["mac_address"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase();
            if !is_mac(&mac) {
                return unprocessable(&["body", "mac_address"], "Invalid MAC address format");
            }
            if let Some(event) = body.get("event").and_then(Value::as_str)
                && !REPORT_EVENTS.contains(&event)
            {
                return unprocessable(&["body", "event"], "Input should be a valid event");
            }
            if !inner.nodes.contains_key(&mac) {
                return detail(
                    StatusCode::NOT_FOUND,
                    format!("Node with MAC {mac} not found"),
                );
            }
            inner.generation += 1;
            let generation = inner.generation;
            let node = inner.nodes.get_mut(&mac).expect("found above");
            // Every report is a write: `last_seen_at`, so `updated_at`.
            node["updated_at_tick"] = json!(generation);
            // What PureBoot's installer events do to a node's state.
            let from = node["state"].as_str().unwrap_or_default().to_string();
            let attempts = node["install_attempts"].as_u64().unwrap_or(0);
            let to = match body["event"].as_str() {
                // PureBoot's report moves only pending → installing.
                Some("install_started") if from == "pending" => {
                    node["install_attempts"] = json!(0);
                    Some("installing")
                }
                Some("install_complete") if from == "installing" => {
                    node["install_attempts"] = json!(0);
                    Some("installed")
                }
                // A failed install stays `installing` (PureBoot retries)
                // until its MAX_INSTALL_ATTEMPTS-th failure.
                Some("install_failed") if from == "installing" => {
                    node["install_attempts"] = json!(attempts + 1);
                    (attempts + 1 >= MAX_INSTALL_ATTEMPTS).then_some("install_failed")
                }
                Some("first_boot") if from == "installed" => Some("active"),
                _ => None,
            };
            if let Some(to) = to {
                node["state"] = json!(to);
                node["version"] = json!(node["version"].as_u64().unwrap_or(0) + 1);
                node["state_at"] = json!(generation);
            }
            let answer = json!({"success": true, "data": node_response(node),
                                "message": "Status reported successfully"});
            // Unknown fields never reach PureBoot's handler.
            let kept: serde_json::Map<String, Value> = body
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(k, _)| REPORT_FIELDS.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            record(inner, "report", &None, &mac, &Value::Object(kept));
            axum::Json(answer).into_response()
        }
        // The site's own nodes (every node of the fake is at its one
        // site); no workflows, no cursor; `since` is ignored; an unknown
        // site is a 404.
        ("GET", p) if p.starts_with("/api/v1/sites/") && p.ends_with("/nodes") => {
            let site = &p["/api/v1/sites/".len()..p.len() - "/nodes".len()];
            if !is_site(Some(site)) {
                return detail(StatusCode::NOT_FOUND, "Site not found");
            }
            let _ignored = q.get("since");
            let data: Vec<Value> = inner
                .nodes
                .iter()
                .filter(|(mac, _)| !inner.unlisted.contains(*mac))
                .map(|(_, node)| node_response(node))
                .collect();
            axum::Json(json!({"success": true, "data": data, "total": data.len()})).into_response()
        }
        // `sites.py` `get_site`: `ApiResponse[SiteResponse]`, every site
        // column present (null when never set), 404 for an unknown site.
        ("GET", p) if p.starts_with("/api/v1/sites/") && p.matches('/').count() == 4 => {
            let site = &p["/api/v1/sites/".len()..];
            if !is_site(Some(site)) {
                return detail(StatusCode::NOT_FOUND, "Site not found");
            }
            let column = |name: &str| inner.site_policy.get(name).cloned().unwrap_or(Value::Null);
            axum::Json(json!({
                "success": true, "message": null,
                "data": {
                    "id": SITE_ID, "name": "Test site", "description": null,
                    "parent_id": null, "path": "/Test site", "depth": 0,
                    "children_count": 0, "default_workflow_id": null,
                    "auto_provision": null, "effective_workflow_id": null,
                    "effective_auto_provision": false, "node_count": inner.nodes.len(),
                    "created_at": "2026-11-22T09:00:00", "updated_at": "2026-11-22T09:00:00",
                    "is_site": true, "agent_url": null, "agent_status": "online",
                    "agent_last_seen": "2026-11-22T10:00:00",
                    "autonomy_level": column("autonomy_level"),
                    "conflict_resolution": column("conflict_resolution"),
                    "cache_policy": column("cache_policy"),
                    "cache_patterns_json": column("cache_patterns_json"),
                    "cache_max_size_gb": column("cache_max_size_gb"),
                    "cache_retention_days": column("cache_retention_days"),
                    "discovery_method": null, "discovery_config_json": null,
                    "migration_policy": null
                }
            }))
            .into_response()
        }
        // PureBoot's `boot_files.py`: a StreamingResponse with
        // Content-Length; `ETag: "sha256:…"` and `X-Checksum-SHA256` only
        // for a file uploaded with its checksum (here: one a test set with
        // `set_file_checksum`); `Range` and `If-None-Match` are ignored
        // (always 200, the whole file); a stream can break off mid-file.
        ("GET", p) if p.starts_with("/api/v1/files/") => {
            let name = &p["/api/v1/files/".len()..];
            let Some(bytes) = inner.files.get(name).cloned() else {
                return detail(StatusCode::NOT_FOUND, format!("File not found: /{name}"));
            };
            let len = bytes.len();
            let cut = match inner.file_cuts.first_mut() {
                Some((after, times)) if *times > 0 => {
                    *times -= 1;
                    Some(*after)
                }
                _ => None,
            };
            inner.file_cuts.retain(|(_, times)| *times > 0);
            let body = match (cut, inner.file_rate) {
                (Some(after), rate) => cut_body(bytes, after, rate.unwrap_or(u64::MAX)),
                (None, Some(rate)) => slow_body(bytes, rate, inner.file_bytes_sent.clone()),
                (None, None) => axum::body::Body::from(bytes),
            };
            let mut response = (StatusCode::OK, body).into_response();
            let h = response.headers_mut();
            if len > 0 {
                h.insert("content-length", len.into());
            }
            if let Some(sum) = inner.file_checksums.get(name) {
                h.insert("etag", format!("\"sha256:{sum}\"").parse().expect("header"));
                h.insert("x-checksum-sha256", sum.parse().expect("header"));
            }
            let file = name.rsplit('/').next().unwrap_or(name);
            if let Ok(disposition) = format!("inline; filename=\"{file}\"").parse() {
                h.insert("content-disposition", disposition);
            }
            response
        }
        _ => detail(StatusCode::NOT_FOUND, "Not Found"),
    }
}
