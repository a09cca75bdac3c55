//! The admin view of the durable queue (DESIGN §5): list with a status
//! filter and paging, stats, retry, delete, clear-failed.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::state::AppState;
use super::writes::{ApiError, error};
use crate::store::queue::{Cursor, Queue, QueueError, Status};

/// Most items one page returns.
pub const MAX_PAGE: usize = 1000;

async fn with_queue<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&Queue) -> Result<T, QueueError> + Send + 'static,
) -> Result<T, Response> {
    state.outbox.queue().call(work).await.map_err(|e| match e {
        QueueError::NotFound(_) => error(StatusCode::NOT_FOUND, e),
        QueueError::Store(ref store) if store.is_io() => error(StatusCode::SERVICE_UNAVAILABLE, e),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, other),
    })
}

/// A non-negative integer query parameter, or `default` when absent.
pub(super) fn number(
    query: &HashMap<String, String>,
    key: &str,
    default: usize,
) -> Result<usize, ApiError> {
    match query.get(key) {
        None => Ok(default),
        Some(text) => text.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!(
                "{key} must be a non-negative integer, not {text:?}"
            ))
        }),
    }
}

/// `GET /api/v1/queue?status=&limit=&cursor=` (or `&offset=`). A page
/// that may have more behind it carries `next`, the `cursor` of the page
/// after it; paging by cursor skips nothing while replay removes items.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let status = match query.get("status").filter(|s| !s.is_empty()) {
        Some(text) => Some(text.parse::<Status>().map_err(ApiError::bad_request)?),
        None => None,
    };
    let offset = number(&query, "offset", 0)?;
    let limit = number(&query, "limit", 100)?;
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={MAX_PAGE}"
        )));
    }
    let cursor = match query.get("cursor").filter(|s| !s.is_empty()) {
        Some(text) => Some(text.parse::<Cursor>().map_err(ApiError::bad_request)?),
        None => None,
    };
    if cursor.is_some() && offset > 0 {
        return Err(ApiError::bad_request("give offset or cursor, not both"));
    }
    Ok(
        match with_queue(&state, move |q| {
            let (items, last) = match cursor {
                Some(_) => q.list_after(status, cursor, limit)?,
                None if offset == 0 => q.list_after(status, None, limit)?,
                None => (q.list(status, offset, limit)?, None),
            };
            Ok((items, last, q.stats()?))
        })
        .await
        {
            Ok((items, last, stats)) => {
                // A full page may have more behind it: its last place is
                // where the next page starts.
                let next = last.filter(|_| items.len() == limit).map(|c| c.to_string());
                let total = match status {
                    None => stats.total,
                    Some(Status::Pending) => stats.pending,
                    Some(Status::InFlight) => stats.in_flight,
                    Some(Status::Failed) => stats.failed,
                    Some(Status::Conflict) => stats.conflict,
                };
                axum::Json(json!({"data": items, "offset": offset, "limit": limit,
                    "total": total, "next": next}))
                .into_response()
            }
            Err(response) => response,
        },
    )
}

pub async fn stats(State(state): State<Arc<AppState>>) -> Response {
    match state.outbox.stats().await {
        Ok(stats) => axum::Json(stats).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn parse_id(text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("queue id must be a number, not {text:?}")))
}

pub async fn retry(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    Ok(match with_queue(&state, move |q| q.retry(id)).await {
        Ok(item) => {
            state.outbox.wake_handle().notify_one();
            axum::Json(json!({"data": item})).into_response()
        }
        Err(response) => response,
    })
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    Ok(match with_queue(&state, move |q| q.delete(id)).await {
        Ok(()) => axum::Json(json!({"deleted": id})).into_response(),
        Err(response) => response,
    })
}

pub async fn clear_failed(State(state): State<Arc<AppState>>) -> Response {
    match with_queue(&state, |q| q.clear_failed()).await {
        Ok(count) => axum::Json(json!({"cleared": count})).into_response(),
        Err(response) => response,
    }
}
