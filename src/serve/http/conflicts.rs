//! The admin API of conflicts (DESIGN §5, §8): list by status with
//! paging, one record, an operator's resolution, the policies. The
//! operations are the admin service's; these handlers read the request.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;

use super::admin::admin_answer;
use super::state::AppState;
use crate::admin::{self, AdminError, Page, PolicyChange, Request};

/// `GET /api/v1/conflicts?status=open|resolved&offset=&limit=`, newest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let arg = |key: &str| query.get(key).map(String::as_str);
    let request = Page::parse(arg("offset"), arg("limit"))
        .and_then(|page| Request::conflict_list(arg("status"), page));
    admin_answer(&state, request).await
}

/// `GET /api/v1/conflicts/{id}`.
pub async fn get(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let request = admin::id("conflict", &id).map(Request::ConflictShow);
    admin_answer(&state, request).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    resolution: String,
    #[serde(default)]
    comment: Option<String>,
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body)
        .map_err(|e| AdminError::BadRequest(format!("invalid JSON body: {e}")))
}

/// `POST /api/v1/conflicts/{id}/resolve {resolution: keep_local|keep_central|merge, comment?}`.
pub async fn resolve(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let request = admin::id("conflict", &id).and_then(|id| {
        let body: ResolveBody = json_body(&body)?;
        Request::conflict_resolve(id, &body.resolution, body.comment)
    });
    admin_answer(&state, request).await
}

/// `GET /api/v1/conflicts/policy`.
pub async fn get_policy(State(state): State<Arc<AppState>>) -> Response {
    admin_answer(&state, Ok(Request::PolicyShow)).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    #[serde(default)]
    state_mismatch: Option<String>,
    #[serde(default)]
    missing_central: Option<String>,
    #[serde(default)]
    missing_local: Option<String>,
}

/// `PUT /api/v1/conflicts/policy {state_mismatch?, missing_central?,
/// missing_local?}`: the kinds named change; stored, so the new policy
/// outlasts a restart and wins over the config until changed again.
pub async fn put_policy(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let request = json_body::<PolicyBody>(&body).map(|body| {
        let named = [
            ("state_mismatch", body.state_mismatch),
            ("missing_central", body.missing_central),
            ("missing_local", body.missing_local),
        ];
        let changes = named
            .into_iter()
            .filter_map(|(kind, policy)| {
                policy.map(|policy| PolicyChange {
                    kind: kind.to_string(),
                    policy,
                })
            })
            .collect();
        Request::PolicySet(changes)
    });
    admin_answer(&state, request).await
}
