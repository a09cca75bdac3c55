//! `siteboot status`: the running agent at a glance in a terminal (DESIGN
//! §11) — its mode, counts and latest boots, from `GET /api/v1/status`
//! and, with the admin token, `GET /api/v1/boots`.

use anyhow::{Context, Result};
use serde_json::Value;

use super::agent_api::AgentApi;
use crate::config::Config;

/// How many of the latest boots are printed.
const SHOWN_BOOTS: usize = 10;

pub async fn run(config: Config, url: Option<String>, json: bool) -> Result<()> {
    let base = url
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:{}", config.http.listen.port()))
        .trim_end_matches('/')
        .to_string();
    let status: Value = reqwest::get(format!("{base}/api/v1/status"))
        .await
        .with_context(|| format!("no agent answers at {base} (is it running? --url)"))?
        .json()
        .await
        .with_context(|| format!("the agent at {base} did not answer its status in JSON"))?;
    // The latest boots need the admin token; without it, the rest is shown.
    let boots = match AgentApi::new(&config, url) {
        Ok(api) => api
            .send(api.request(reqwest::Method::GET, "/api/v1/boots"))
            .await
            .ok(),
        Err(_) => None,
    };
    if json {
        let both = serde_json::json!({"status": status, "boots": boots.map(|b| b["data"].clone())});
        println!("{}", serde_json::to_string_pretty(&both)?);
        return Ok(());
    }
    print!("{}", render(&status, boots.as_ref()));
    Ok(())
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `{"pxe": 2, "ipxe": 4}` as `pxe 2, ipxe 4`; `none` when empty.
fn counts(map: &Value) -> String {
    let shown: Vec<String> = map
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, count)| format!("{key} {}", text(count)))
        .collect();
    if shown.is_empty() {
        "none".into()
    } else {
        shown.join(", ")
    }
}

/// The terminal view.
pub fn render(status: &Value, boots: Option<&Value>) -> String {
    let mut out = String::new();
    let mode = status["mode"].as_str().unwrap_or("unknown");
    let headline = match mode {
        "offline" => format!(
            "OFFLINE since {} ({} s)",
            text(&status["offline_since"]),
            text(&status["offline_duration_s"])
        ),
        "online" if status["indicator"] == "yellow" => {
            "ONLINE, but answering boots from the cache".to_string()
        }
        "online" => "ONLINE".to_string(),
        "standalone" => "STANDALONE (no controller)".to_string(),
        other => other.to_uppercase(),
    };
    out.push_str(&format!(
        "siteboot {} at site {}: {headline}\n",
        text(&status["version"]),
        text(&status["site_id"])
    ));
    out.push_str(&format!(
        "last sync {}, {} nodes cached, up {} s\n",
        text(&status["last_sync_at"]),
        text(&status["nodes_cached"]),
        text(&status["uptime_s"])
    ));
    let queue = &status["queue"];
    out.push_str(&format!(
        "queue: {} pending, {} in flight, {} failed; conflicts open: {}\n",
        text(&queue["pending"]),
        text(&queue["in_flight"]),
        text(&queue["failed"]),
        text(&status["conflicts_pending"])
    ));
    if let Some(cache) = status["cache"].as_object() {
        out.push_str(&format!(
            "content cache: {} files, {} bytes ({} pinned), {} hits, {} misses\n",
            text(&cache["entries"].clone()),
            text(&cache["bytes"].clone()),
            text(&cache["pinned"].clone()),
            text(&cache["hits"].clone()),
            text(&cache["misses"].clone())
        ));
    }
    if status["sync_paused"] == true {
        out.push_str("sync: PAUSED by an operator (siteboot sync resume)\n");
    }
    if let Some(policy) = status["policy"].as_object() {
        let shown: Vec<String> = ["autonomy", "cache_policy", "conflict_strategy"]
            .iter()
            .filter_map(|name| {
                let value = policy.get(*name)?;
                Some(format!(
                    "{name} {} ({})",
                    text(&value["value"]),
                    text(&value["origin"])
                ))
            })
            .collect();
        out.push_str(&format!("policy: {}\n", shown.join(", ")));
    }
    if let Some(dhcp) = status["dhcp"].as_object() {
        out.push_str(&format!(
            "proxydhcp: answered {}; not answered {}\n",
            counts(&dhcp["answered"]),
            counts(&dhcp["not_answered"])
        ));
    }
    match boots.and_then(|b| b["data"].as_array()) {
        None => out.push_str("latest boots: need the admin token (admin.token_file)\n"),
        Some(list) if list.is_empty() => out.push_str("latest boots: none yet\n"),
        Some(list) => {
            out.push_str("latest boots:\n");
            for boot in list.iter().take(SHOWN_BOOTS) {
                out.push_str(&format!(
                    "  {}  {}  state={} action={} source={}\n",
                    text(&boot["at"]),
                    text(&boot["mac"]),
                    text(&boot["state"]),
                    text(&boot["action"]),
                    text(&boot["source"])
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_headline_follows_mode_and_indicator() {
        let headline = |status: Value| {
            render(&status, None)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        };
        let status = |mode: &str, indicator: &str| {
            json!({"mode": mode, "indicator": indicator, "site_id": "fra1", "version": "0.1.0",
                   "offline_since": "2026-11-28T10:00:00Z", "offline_duration_s": 90})
        };
        assert!(headline(status("online", "green")).ends_with(": ONLINE"));
        assert!(
            headline(status("online", "yellow"))
                .contains("ONLINE, but answering boots from the cache")
        );
        assert!(
            headline(status("offline", "red"))
                .contains("OFFLINE since 2026-11-28T10:00:00Z (90 s)")
        );
        assert!(headline(status("standalone", "grey")).contains("STANDALONE"));
        assert!(
            render(&status("online", "green"), None).contains("latest boots: need the admin token")
        );
    }

    #[test]
    fn proxydhcp_counts_are_shown_only_when_it_runs() {
        let off = json!({"mode": "standalone", "dhcp": null});
        assert!(!render(&off, None).contains("proxydhcp"));
        let on = json!({"mode": "standalone", "dhcp": {
            "answered": {"ipxe": 4, "pxe": 2}, "not_answered": {}}});
        assert!(
            render(&on, None).contains("proxydhcp: answered ipxe 4, pxe 2; not answered none\n"),
            "{}",
            render(&on, None)
        );
    }
}
