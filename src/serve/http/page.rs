//! `GET /`, the status page for people (DESIGN §11): server-rendered HTML
//! with its style and a little plain JavaScript inline, so one answer is
//! the whole page and a site without internet needs nothing else.
//!
//! The HTML shows what `GET /api/v1/status` shows (open, like it); the
//! rest (boots, nodes, conflicts, queue) is fetched by the script from the
//! admin API with the token the operator signs in with, kept in the tab's
//! `sessionStorage` only. The page is therefore no second way in: each of
//! its buttons is one admin API call.

use std::sync::{Arc, LazyLock};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use minijinja::Value;
use sha2::Digest;

use super::state::AppState;
use crate::model::mode::Mode;
use crate::model::node::NodeState;

const TEMPLATE: &str = include_str!("page/status.html.j2");
const STYLE: &str = include_str!("page/status.css");
const SCRIPT: &str = include_str!("page/status.js");

struct Page {
    env: minijinja::Environment<'static>,
    /// Allows exactly the inline style and script above (by hash) and
    /// fetches to this agent: injected markup could run nothing.
    policy: HeaderValue,
}

fn csp_hash(text: &str) -> String {
    let digest = sha2::Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

static PAGE: LazyLock<Result<Page, String>> = LazyLock::new(|| {
    let mut env = minijinja::Environment::new();
    // The `.html` name turns on HTML escaping for every value.
    env.add_template("status.html", TEMPLATE)
        .map_err(|e| format!("status page template: {e}"))?;
    let policy = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        csp_hash(SCRIPT),
        csp_hash(STYLE)
    );
    let policy = HeaderValue::from_str(&policy).map_err(|e| format!("page policy: {e}"))?;
    Ok(Page { env, policy })
});

/// The page's headline for a mode, as the script writes it too.
fn headline(indicator: &str) -> &'static str {
    match indicator {
        "green" => "ONLINE",
        "yellow" => "ONLINE · answering from cache",
        "red" => "OFFLINE",
        _ => "STANDALONE",
    }
}

/// `pxe 2, ipxe 4`, as the page's script and `siteboot status` show
/// counts; `none` when empty.
fn shown_counts(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(key, count)| format!("{key} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn status_page(State(state): State<Arc<AppState>>) -> Response {
    let page = match &*PAGE {
        Ok(page) => page,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.clone()).into_response(),
    };
    let snapshot = state.status.snapshot().await;
    let status = snapshot.to_json();
    let indicator = snapshot.indicator();
    let offline_s = status["offline_duration_s"].as_u64().unwrap_or(0);
    let context = minijinja::context! {
        site_id => snapshot.site_id,
        version => env!("CARGO_PKG_VERSION"),
        mode => snapshot.mode.as_str(),
        standalone => snapshot.mode == Mode::Standalone,
        indicator => indicator,
        headline => headline(indicator),
        offline_since => status["offline_since"].as_str(),
        offline_duration_s => offline_s,
        offline_for => humantime::format_duration(std::time::Duration::from_secs(offline_s)).to_string(),
        last_sync_at => snapshot.last_sync_at,
        nodes_cached => snapshot.nodes_cached,
        queue_pending => snapshot.queue.pending,
        queue_in_flight => snapshot.queue.in_flight,
        queue_failed => snapshot.queue.failed + snapshot.queue.conflict,
        conflicts_open => snapshot.conflicts_pending,
        policy_text => crate::policy::summary(&status["policy"], snapshot.sync_paused),
        dhcp => snapshot.dhcp.is_some(),
        dhcp_answered => snapshot.dhcp.as_ref().map(|d| shown_counts(&d.answered)),
        dhcp_not_answered => snapshot.dhcp.as_ref().map(|d| shown_counts(&d.not_answered)),
        states => NodeState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        // Ours, written into the page as they are (not escaped).
        style => Value::from_safe_string(STYLE.to_string()),
        script => Value::from_safe_string(SCRIPT.to_string()),
    };
    let html = match page
        .env
        .get_template("status.html")
        .and_then(|t| t.render(context))
    {
        Ok(html) => html,
        Err(e) => {
            tracing::error!(error = %e, "status page not rendered");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("status page: {e}\n"),
            )
                .into_response();
        }
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, page.policy.clone()),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        html,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_renders_escaped_and_its_policy_names_its_own_script() {
        let page = PAGE.as_ref().expect("page");
        let html = page
            .env
            .get_template("status.html")
            .unwrap()
            .render(minijinja::context! {
                site_id => "<script>alert(1)</script>",
                mode => "offline",
                indicator => "red",
                headline => "OFFLINE",
                states => vec!["active"],
                script => Value::from_safe_string(SCRIPT.to_string()),
            })
            .unwrap();
        assert!(!html.contains("<script>alert(1)"), "escaped");
        assert!(html.contains("&lt;script&gt;alert(1)"));
        assert!(html.contains(r#"data-indicator="red""#));
        let policy = page.policy.to_str().unwrap();
        assert!(policy.contains(&csp_hash(SCRIPT)));
        // The script lands in the page byte for byte, or its hash would
        // not match and the browser would refuse to run it.
        assert!(html.contains(&format!("<script>{SCRIPT}</script>")));
    }
}
