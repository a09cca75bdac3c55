//! The admin API of the content cache (DESIGN §12): stats, entries,
//! prefetch, and eviction of one file or every unpinned one. The
//! operations are the admin service's; these handlers read the request.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;

use super::admin::admin_answer;
use super::state::AppState;
use crate::admin::{Evict, Request};

/// `GET /api/v1/cache/stats`.
pub async fn stats(State(state): State<Arc<AppState>>) -> Response {
    admin_answer(&state, Ok(Request::CacheStats)).await
}

/// `GET /api/v1/cache`: every entry.
pub async fn list(State(state): State<Arc<AppState>>) -> Response {
    admin_answer(&state, Ok(Request::CacheList)).await
}

/// `DELETE /api/v1/cache`: every unpinned file.
pub async fn clear(State(state): State<Arc<AppState>>) -> Response {
    admin_answer(&state, Ok(Request::CacheEvict(Evict::AllUnpinned))).await
}

/// `DELETE /api/v1/cache/{path}`: one file (409 if pinned).
pub async fn remove(State(state): State<Arc<AppState>>, Path(path): Path<String>) -> Response {
    admin_answer(&state, Ok(Request::CacheEvict(Evict::Paths(vec![path])))).await
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
) -> Response {
    let paths = body.map(|b| b.0.paths).unwrap_or_default();
    admin_answer(&state, Request::cache_prefetch(paths)).await
}
