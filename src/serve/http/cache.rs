//! The admin view of the content cache (DESIGN §12): stats, entries, and
//! eviction of one file or every unpinned one.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::state::AppState;
use super::writes::ApiError;
use crate::content::{CacheError, ContentCache};

fn cache(state: &AppState) -> Result<&Arc<ContentCache>, ApiError> {
    state.cache.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "no content cache: it keeps a controller's files, and no controller is configured"
                .into(),
        )
    })
}

fn refused(e: CacheError) -> ApiError {
    let status = match e {
        CacheError::NotCached(_) => StatusCode::NOT_FOUND,
        CacheError::Pinned(_) => StatusCode::CONFLICT,
        CacheError::Store(ref store) if store.is_io() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError(status, e.to_string())
}

/// `GET /api/v1/cache/stats`.
pub async fn stats(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let stats = cache(&state)?.stats();
    let hit_rate = stats.hit_rate();
    let mut body = serde_json::to_value(stats).unwrap_or_default();
    body["hit_rate"] = json!(hit_rate);
    Ok(axum::Json(json!({ "data": body })).into_response())
}

/// `GET /api/v1/cache`: every entry.
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let entries = cache(&state)?.list();
    Ok(axum::Json(json!({ "data": entries, "total": entries.len() })).into_response())
}

/// `DELETE /api/v1/cache`: every unpinned file.
pub async fn clear(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let removed = cache(&state)?.clear_unpinned().await.map_err(refused)?;
    Ok(axum::Json(json!({ "removed": removed })).into_response())
}

/// `DELETE /api/v1/cache/{path}`: one file (409 if pinned).
pub async fn remove(
    State(state): State<Arc<AppState>>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    cache(&state)?.remove(&path).await.map_err(refused)?;
    Ok(axum::Json(json!({ "removed": 1 })).into_response())
}
