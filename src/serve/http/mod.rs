//! The agent's HTTP API (axum): bootstrap, boot scripts, assets, health and
//! status (DESIGN §5).

pub mod admin;
pub mod assets;
mod boot_query;
mod boot_route;
mod cache;
pub mod conflicts;
mod limits;
mod page;
pub mod queue;
mod routes;
pub mod server;
pub mod state;
pub mod writes;

pub use limits::{BODY_LIMIT, REQUEST_TIMEOUT};
pub use routes::Routes;
pub use state::AppState;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::model::script::ScriptFormat;
use crate::serve::script;
use boot_route::{bad_request, base_url};

pub fn router(state: Arc<AppState>) -> Routes {
    Routes::new(full_router(state.clone()), state)
}

fn full_router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route("/api/v1/sync", axum::routing::post(admin::sync))
        .route("/api/v1/sync/log", get(admin::sync_log))
        .route("/api/v1/sync/pause", axum::routing::post(admin::sync_pause))
        .route(
            "/api/v1/sync/resume",
            axum::routing::post(admin::sync_resume),
        )
        .route(
            "/api/v1/connectivity/check",
            axum::routing::post(admin::connectivity_check),
        )
        .route("/api/v1/boots", get(admin::latest_boots))
        .route("/api/v1/events", get(admin::events))
        .route(
            "/api/v1/nodes",
            get(writes::list_nodes).post(writes::add_node),
        )
        .route(
            "/api/v1/nodes/{mac}",
            get(writes::get_node).delete(writes::delete_node),
        )
        .route(
            "/api/v1/nodes/{mac}/state",
            axum::routing::patch(writes::set_state),
        )
        .route("/api/v1/conflicts", get(conflicts::list))
        .route(
            "/api/v1/conflicts/policy",
            get(conflicts::get_policy).put(conflicts::put_policy),
        )
        .route("/api/v1/conflicts/{id}", get(conflicts::get))
        .route(
            "/api/v1/conflicts/{id}/resolve",
            axum::routing::post(conflicts::resolve),
        )
        .route("/api/v1/cache", get(cache::list).delete(cache::clear))
        .route("/api/v1/cache/stats", get(cache::stats))
        .route(
            "/api/v1/cache/prefetch",
            axum::routing::post(cache::prefetch),
        )
        .route(
            "/api/v1/cache/{*path}",
            axum::routing::delete(cache::remove),
        )
        .route("/api/v1/queue", get(queue::list))
        .route("/api/v1/queue/stats", get(queue::stats))
        .route(
            "/api/v1/queue/clear-failed",
            axum::routing::post(queue::clear_failed),
        )
        .route("/api/v1/queue/{id}", axum::routing::delete(queue::delete))
        .route(
            "/api/v1/queue/{id}/retry",
            axum::routing::post(queue::retry),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_token,
        ));
    // `/metrics` behind the admin token unless `metrics.open`.
    let metrics_route = Router::new().route("/metrics", get(metrics));
    let metrics_route = if state.metrics_open {
        metrics_route
    } else {
        metrics_route.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_token,
        ))
    };
    Router::new()
        .merge(admin)
        .merge(metrics_route)
        .route("/boot.ipxe", get(bootstrap))
        .route(boot_route::BOOT_PATH, get(boot))
        .route("/assets/{*path}", get(asset))
        .route("/api/v1/report", axum::routing::post(writes::report))
        .route("/health", get(health))
        .route("/api/v1/status", get(status))
        .route("/", get(page::status_page))
        .route_layer(axum::middleware::from_fn(count_request))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn bootstrap(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match base_url(&state, &headers) {
        Ok(url) => script::http_answer(&state.boot.bootstrap(&url, ScriptFormat::Ipxe), None),
        Err(message) => bad_request(&message),
    }
}

/// `HEAD /api/v1/boot` (GET takes the lane in [`Routes::answer`]).
async fn boot(State(state): State<Arc<AppState>>, request: axum::extract::Request) -> Response {
    boot_route::answer(&state, request.uri(), request.headers()).await
}

async fn asset(
    State(state): State<Arc<AppState>>,
    Path(path): Path<String>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let client = peer.map(|axum::Extension(axum::extract::ConnectInfo(addr))| addr.ip());
    assets::serve(&state.files, path, &headers, client).await
}

/// 200 while the agent can do its work; 503 while its store cannot write
/// (DESIGN §10): boots are still answered, but writes are refused, and a
/// load balancer or monitor should know.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let mode = state.port.mode();
    if !state.store.writable() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "store_unwritable", "mode": mode.as_str(),
                "error": "the database cannot write (disk full or an I/O error); \
                          writes are refused until it can"})),
        )
            .into_response();
    }
    axum::Json(json!({"status": "ok", "mode": mode.as_str()})).into_response()
}

/// `GET /metrics` (DESIGN §11): the counters, with the gauges that
/// mirror the status set from its snapshot now.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.status.snapshot().await;
    let counters = crate::metrics::metrics();
    counters.set_mode(snapshot.mode.as_str());
    let offline = snapshot
        .link
        .as_ref()
        .and_then(|l| l.offline_duration(snapshot.taken_at))
        .map_or(0.0, |d| d.as_secs_f64());
    counters.link.offline_seconds.set(offline);
    // Every pair is set, so a depth that fell to zero reads 0, not its
    // last value.
    for status in ["pending", "in_flight", "failed", "conflict"] {
        let depths = snapshot.queue.by_kind.get(status);
        for kind in ["registration", "state_update", "event"] {
            let items = depths.and_then(|d| d.get(kind)).copied().unwrap_or(0);
            counters.set_queue(status, kind, items);
        }
    }
    counters
        .link
        .conflicts_open
        .set(i64::try_from(snapshot.conflicts_pending).unwrap_or(i64::MAX));
    if let Some(age) = snapshot.last_sync_at.as_deref().and_then(|at| {
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
    }) {
        counters
            .link
            .last_sync_age_seconds
            .set((snapshot.taken_at - age).as_seconds_f64().max(0.0));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        counters.encode(),
    )
        .into_response()
}

/// Counts every routed request by its route (the pattern, never the raw
/// path: a client cannot create series) and status code.
async fn count_request(
    route: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", |r| r.as_str());
    crate::metrics::metrics().http_request(route, response.status().as_u16());
    response
}

async fn status(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(state.status.snapshot().await.to_json()).into_response()
}
