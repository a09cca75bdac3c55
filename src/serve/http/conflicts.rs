//! The admin view of conflicts (DESIGN §5, §8): list by status with
//! paging, one record, and an operator's resolution.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::queue::{MAX_PAGE, number};
use super::state::AppState;
use super::writes::{ApiError, error};
use crate::outbox::resolve::{Resolution, ResolveError, ResolvedBy};
use crate::store::conflicts::{self, Status};

fn parse_status(text: &str) -> Result<Status, ApiError> {
    match text {
        "open" => Ok(Status::Open),
        "resolved" => Ok(Status::Resolved),
        other => Err(ApiError::bad_request(format!(
            "unknown conflict status {other:?}; valid: open, resolved"
        ))),
    }
}

/// `GET /api/v1/conflicts?status=open|resolved&offset=&limit=`, newest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let status = match query.get("status").filter(|s| !s.is_empty()) {
        Some(text) => Some(parse_status(text)?),
        None => None,
    };
    let offset = number(&query, "offset", 0)?;
    let limit = number(&query, "limit", 100)?;
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={MAX_PAGE}"
        )));
    }
    let found = state
        .outbox
        .queue()
        .call(move |q| {
            Ok((
                conflicts::list(q.store(), status, offset, limit)?,
                conflicts::open_count(q.store())?,
            ))
        })
        .await;
    Ok(match found {
        Ok((data, open)) => axum::Json(json!({
            "data": data, "offset": offset, "limit": limit, "open": open
        }))
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    })
}

/// `GET /api/v1/conflicts/{id}`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id
        .parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("conflict id must be a number, not {id:?}")))?;
    let found = state
        .outbox
        .queue()
        .call(move |q| conflicts::get(q.store(), id))
        .await;
    Ok(match found {
        Ok(Some(conflict)) => axum::Json(json!({ "data": conflict })).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no conflict {id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    resolution: String,
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /api/v1/conflicts/{id}/resolve {resolution: keep_local|keep_central|merge, comment?}`.
pub async fn resolve(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let id = id
        .parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("conflict id must be a number, not {id:?}")))?;
    let body: ResolveBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let resolution = body
        .resolution
        .parse::<Resolution>()
        .map_err(ApiError::bad_request)?;
    let comment = body.comment.map(|c| c.chars().take(1000).collect());
    Ok(
        match state
            .outbox
            .resolve(id, resolution, comment, ResolvedBy::Operator)
            .await
        {
            Ok(record) => axum::Json(json!({ "data": record })).into_response(),
            Err(e @ ResolveError::NotFound(_)) => error(StatusCode::NOT_FOUND, e),
            Err(e @ ResolveError::AlreadyResolved(_)) => error(StatusCode::CONFLICT, e),
            Err(e @ ResolveError::NotApplicable(_)) => error(StatusCode::BAD_REQUEST, e),
            Err(e @ ResolveError::Central(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
            Err(e @ ResolveError::Queue(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
    )
}

/// `GET /api/v1/conflicts/policy`.
pub async fn get_policy(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({ "data": state.outbox.policies() })).into_response()
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
pub async fn put_policy(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    use crate::config::Policy;
    let body: PolicyBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let parse = |key: &str, text: Option<String>, current: Policy, auto: bool| {
        let Some(text) = text else {
            return Ok(current);
        };
        match text.parse::<Policy>() {
            Ok(Policy::Auto) if !auto => Err(ApiError::bad_request(format!(
                "{key}: auto applies to state_mismatch only"
            ))),
            Ok(policy) => Ok(policy),
            Err(e) => Err(ApiError::bad_request(format!("{key}: {e}"))),
        }
    };
    let current = state.outbox.policies();
    let policies = crate::config::ConflictPolicies {
        state_mismatch: parse(
            "state_mismatch",
            body.state_mismatch,
            current.state_mismatch,
            true,
        )?,
        missing_central: parse(
            "missing_central",
            body.missing_central,
            current.missing_central,
            false,
        )?,
        missing_local: parse(
            "missing_local",
            body.missing_local,
            current.missing_local,
            false,
        )?,
    };
    Ok(match state.outbox.set_policies(policies).await {
        Ok(()) => axum::Json(json!({ "data": policies })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    })
}
