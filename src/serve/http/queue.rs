//! The admin API of the durable queue (DESIGN §5): list with a status
//! filter and paging, stats, retry, delete, clear-failed. The operations
//! are the admin service's; these handlers read the request and answer.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;

use super::admin::admin_answer;
use super::state::AppState;
use crate::admin::{self, Page, Request};

/// `GET /api/v1/queue?status=&limit=&cursor=` (or `&offset=`). A page
/// that may have more behind it carries `next`, the `cursor` of the page
/// after it; paging by cursor skips nothing while replay removes items.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let arg = |key: &str| query.get(key).map(String::as_str);
    let request = Page::parse(arg("offset"), arg("limit"))
        .and_then(|page| Request::queue_list(arg("status"), page, arg("cursor")));
    admin_answer(&state, request).await
}

pub async fn stats(State(state): State<Arc<AppState>>) -> Response {
    admin_answer(&state, Ok(Request::QueueStats)).await
}

pub async fn retry(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let request = admin::id("queue", &id).map(Request::QueueRetry);
    admin_answer(&state, request).await
}

pub async fn delete(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let request = admin::id("queue", &id).map(Request::QueueDelete);
    admin_answer(&state, request).await
}

pub async fn clear_failed(State(state): State<Arc<AppState>>) -> Response {
    admin_answer(&state, Ok(Request::QueueClearFailed)).await
}
