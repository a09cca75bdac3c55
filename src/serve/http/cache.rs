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

#[derive(serde::Deserialize, Default)]
pub struct PrefetchRequest {
    /// These files (unpinned); none: the pass a sync runs (the files of
    /// workflows due to install, and of every offline_safe one, pinned).
    #[serde(default)]
    paths: Vec<String>,
}

/// `POST /api/v1/cache/prefetch {paths?}`: fetches now, in the background;
/// answers 202 with what it will fetch.
pub async fn prefetch(
    State(state): State<Arc<AppState>>,
    body: Option<axum::Json<PrefetchRequest>>,
) -> Result<Response, ApiError> {
    let cache = cache(&state)?.clone();
    let paths = body.map(|b| b.0.paths).unwrap_or_default();
    let explicit = !paths.is_empty();
    let wanted: Vec<(String, bool)> = if paths.is_empty() {
        let workflows = state.boot.all_workflows().await;
        crate::content::wanted_files(&workflows, &state.nodes.all())
    } else {
        let mut wanted = Vec::new();
        for path in paths {
            let clean = crate::serve::fsroot::sanitise(&path)
                .ok()
                .and_then(|p| p.to_str().map(str::to_string))
                .ok_or_else(|| ApiError::bad_request(format!("{path:?}: path not allowed")))?;
            wanted.push((clean, false));
        }
        wanted
    };
    let listed: Vec<&String> = wanted.iter().map(|(p, _)| p).collect();
    let body = json!({ "prefetching": listed });
    if explicit {
        crate::tasks::spawn_until_shutdown(async move { cache.fetch_paced(wanted).await });
    } else {
        crate::tasks::spawn_until_shutdown(async move { cache.prefetch(wanted).await });
    }
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}
