//! The admin API's bearer token and the endpoints of the controller link
//! (DESIGN §5): `POST /api/v1/sync?full=true`, `GET /api/v1/sync/log`;
//! and `admin_answer`, which turns every admin service answer into HTTP.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::state::AppState;

/// Reads the token, or creates the file (mode 0600) with a new random one.
pub fn load_or_create_token(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => return Err(format!("{} is empty", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    writeln!(file, "{token}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), "admin token created");
    Ok(token)
}

/// Refuses requests without `Authorization: Bearer <admin token>`.
pub async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 7235); the token is
        // compared exactly: with padding or anything around it, it is
        // another token.
        .and_then(bearer_token);
    if presented
        .is_some_and(|token| constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()))
    {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "admin API: send Authorization: Bearer <admin token>\n",
        )
            .into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn sync(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(sync) = &state.sync else {
        return (
            StatusCode::CONFLICT,
            "no central controller configured (standalone)\n",
        )
            .into_response();
    };
    if state.outbox.pause().is_paused() {
        return (
            StatusCode::CONFLICT,
            axum::Json(json!({"error": "sync is paused by an operator; \
                POST /api/v1/sync/resume (siteboot sync resume) first"})),
        )
            .into_response();
    }
    let full = match query.get("full").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("full must be true or false, not {other:?}\n"),
            )
                .into_response();
        }
    };
    match sync.sync_now(full).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

pub async fn sync_log(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if n > 0 => n.min(1000),
        Some(_) => return (StatusCode::BAD_REQUEST, "limit must be 1..=1000\n").into_response(),
    };
    match state.store.call(move |s| s.sync_log(limit)).await {
        Ok(entries) => axum::Json(json!({"data": entries})).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// `GET /api/v1/boots`: the latest boots answered, newest first (MAC,
/// state, action, source, time), for the operator's view (DESIGN §11).
pub async fn latest_boots(State(state): State<Arc<AppState>>) -> Response {
    let boots = state.boot.stats().latest();
    axum::Json(serde_json::json!({ "data": boots, "total": boots.len() })).into_response()
}

/// `GET /api/v1/events` (DESIGN §11): server-sent events — `boots`,
/// `mode`, `queue`, `conflict`, `sync`, `node` — from the moment of
/// connecting, each with
/// its JSON; a client too slow to keep up gets a `lagged` event (refetch
/// what it shows) instead of holding the agent back. A comment every 15 s
/// keeps idle connections (and proxies) open.
pub async fn events(State(_state): State<Arc<AppState>>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let receiver = crate::events::subscribe();
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(event) => Event::default().event(event.kind).data(&*event.data),
            Err(RecvError::Lagged(missed)) => Event::default()
                .event("lagged")
                .data(json!({ "missed": missed }).to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(event), receiver))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}

/// The token of an `Authorization: Bearer <token>` value, the scheme in
/// any case (`bearer`, `BEARER`).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case("bearer ").then_some(token)
}

/// Carries out an admin request with the agent's admin service and
/// answers it: the one place where an admin operation's refusal becomes
/// an HTTP status (`AdminError::http_status`).
pub(crate) async fn admin_answer(
    state: &AppState,
    request: Result<crate::admin::Request, crate::admin::AdminError>,
) -> Response {
    use crate::admin::AdminService;
    let answered = match request {
        Ok(request) => state.admin.call(request).await,
        Err(refused) => Err(refused),
    };
    match answered {
        Ok(answer) => {
            let status = if answer.accepted {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            (status, axum::Json(answer.body)).into_response()
        }
        Err(e) => {
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            super::writes::error(status, e)
        }
    }
}

/// `POST /api/v1/sync/pause` (DESIGN §15): replay and syncs wait, writes
/// queue, boots go on; kept across restarts.
pub async fn sync_pause(State(state): State<Arc<AppState>>) -> Response {
    admin_answer(&state, Ok(crate::admin::Request::SyncPause(true))).await
}

/// `POST /api/v1/sync/resume`: the queue goes to the controller again.
pub async fn sync_resume(State(state): State<Arc<AppState>>) -> Response {
    admin_answer(&state, Ok(crate::admin::Request::SyncPause(false))).await
}

/// `POST /api/v1/connectivity/check`: the controller probed now.
pub async fn connectivity_check(State(state): State<Arc<AppState>>) -> Response {
    admin_answer(&state, Ok(crate::admin::Request::ConnectivityCheck)).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        assert_eq!(super::bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(super::bearer_token("bearer abc"), Some("abc"));
        assert_eq!(super::bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(super::bearer_token("Basic abc"), None);
        assert_eq!(super::bearer_token("Bearer"), None);
        assert_eq!(super::bearer_token("Beare\u{e9} x"), None);
    }

    use super::*;

    #[test]
    fn token_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.token");
        let first = load_or_create_token(&path).unwrap();
        assert_eq!(first.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(load_or_create_token(&path).unwrap(), first);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
