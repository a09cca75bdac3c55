//! `/api/v1/boot`: the boot script for the MAC in the query (DESIGN §5),
//! and the lane that answers its `GET` without the router.

use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::Poll;

use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::boot_query::BootQuery;
use super::limits::REQUEST_TIMEOUT;
use super::state::AppState;
use crate::model::mac::Mac;
use crate::model::script::ScriptFormat;
use crate::serve::script;

/// The path iPXE asks for its script.
pub const BOOT_PATH: &str = "/api/v1/boot";

/// Whether `request` is a boot (`GET`, this very path) the lane answers.
pub fn takes_lane<B>(request: &hyper::Request<B>) -> bool {
    request.method() == Method::GET && request.uri().path() == BOOT_PATH
}

/// The routed answer's guarantees without the router: the same 503 once
/// [`REQUEST_TIMEOUT`] passes, the same `http_requests_total` count.
///
/// The timer is only set when the answer has to wait (a controller
/// lookup): a kept script is ready on the first poll, and a storm of them
/// should not arm and disarm a timer each.
pub async fn lane(state: &AppState, uri: &Uri, headers: &HeaderMap) -> Response {
    let mut answering = pin!(answer(state, uri, headers));
    let first = std::future::poll_fn(|cx| Poll::Ready(answering.as_mut().poll(cx))).await;
    let response = match first {
        Poll::Ready(response) => response,
        Poll::Pending => tokio::time::timeout(REQUEST_TIMEOUT, answering)
            .await
            .unwrap_or_else(|_| StatusCode::SERVICE_UNAVAILABLE.into_response()),
    };
    count(response.status().as_u16());
    response
}

/// `http_requests_total` for a boot answer; the series of the 200s is
/// kept, not looked up by its labels per answer.
fn count(code: u16) {
    static ANSWERED: OnceLock<prometheus::IntCounter> = OnceLock::new();
    let metrics = crate::metrics::metrics();
    if code == 200 {
        ANSWERED
            .get_or_init(|| metrics.http_request_counter(BOOT_PATH, 200))
            .inc();
    } else {
        metrics.http_request(BOOT_PATH, code);
    }
}

/// The script for the MAC in `uri`'s query. The request's parts are read
/// in place, not through extractors (a `HeaderMap` extractor copies every
/// header).
pub async fn answer(state: &AppState, uri: &Uri, headers: &HeaderMap) -> Response {
    let BootQuery {
        mac: raw_mac,
        format,
        mut facts,
    } = BootQuery::read(uri.query().unwrap_or(""));
    let Some(raw_mac) = raw_mac else {
        return bad_request("missing query parameter mac (e.g. ?mac=${net0/mac})");
    };
    let mac: Mac = match raw_mac.parse() {
        Ok(mac) => mac,
        Err(e) => return bad_request(&e.to_string()),
    };
    let base = match base_url(state, headers) {
        Ok(url) => url,
        Err(message) => return bad_request(&message),
    };
    facts.format = match format {
        None => ScriptFormat::Ipxe,
        Some(name) => match ScriptFormat::parse(&name) {
            Some(format) => format,
            None => return bad_request("format must be ipxe or grub"),
        },
    };
    let answer = state.boot.boot(mac, &facts, &base).await;
    tracing::info!(
        %mac,
        state = answer.state.map(|s| s.as_str()).unwrap_or("unknown"),
        action = answer.action.as_str(),
        source = answer.source.as_str(),
        "boot script served"
    );
    script::http_answer(&answer.script, Some(answer.source))
}

/// The agent URL nodes should use (see [`AgentOrigin::url_for_host`]).
pub fn base_url(state: &AppState, headers: &HeaderMap) -> Result<String, String> {
    state
        .origin
        .url_for_host(headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

pub fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response()
}
