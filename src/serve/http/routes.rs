//! What the HTTP server answers with: the axum router, and beside it the
//! lane for the one request a boot storm is made of.

use std::sync::Arc;

use axum::Router;
use axum::response::Response;

use super::boot_route;
use super::state::AppState;

/// The router and the boot lane, cloned into every connection.
#[derive(Clone)]
pub struct Routes {
    router: Router,
    state: Arc<AppState>,
}

impl Routes {
    /// `router` for everything, the lane for boots answered from `state`.
    pub fn new(router: Router, state: Arc<AppState>) -> Routes {
        Routes { router, state }
    }

    /// The answer to `request` from `peer`.
    ///
    /// `GET /api/v1/boot` skips the router: its matching, the layers'
    /// boxed futures and the extensions they insert were half of a boot
    /// answer's instructions (callgrind, docs/benchmarks.md). The lane keeps what
    /// those layers give a boot: the request timeout and the
    /// `http_requests_total` count; its own log line says what was
    /// served. Every other request, and `HEAD` of the boot path, is
    /// routed.
    pub async fn answer(
        &self,
        mut request: hyper::Request<hyper::body::Incoming>,
        peer: std::net::SocketAddr,
    ) -> Response {
        if boot_route::takes_lane(&request) {
            return boot_route::lane(&self.state, request.uri(), request.headers()).await;
        }
        // Who asks, for what nodes may make the agent do per client
        // (content-cache misses, DESIGN §12).
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let routed =
            tower::ServiceExt::oneshot(self.router.clone(), request.map(axum::body::Body::new));
        match routed.await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}
