//! Calls to the running agent's admin API from the command line: while
//! the agent runs it holds the database, so `siteboot queue` and
//! `siteboot conflicts` ask it instead (with the token from
//! `admin.token_file`).

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::config::Config;

pub struct AgentApi {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl AgentApi {
    /// `url`: the agent's base URL, default `http://127.0.0.1:<http port>`.
    pub fn new(config: &Config, url: Option<String>) -> Result<AgentApi> {
        let token = std::fs::read_to_string(&config.admin_token_file)
            .with_context(|| {
                format!(
                    "the agent holds the database; reading its admin token {} failed",
                    config.admin_token_file.display()
                )
            })?
            .trim()
            .to_string();
        let base = url
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", config.http.listen.port()))
            .trim_end_matches('/')
            .to_string();
        Ok(AgentApi {
            base,
            token,
            client: reqwest::Client::new(),
        })
    }

    /// A request for `path` (under the base URL), with the admin token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends `request`; the JSON answer, or the agent's error.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value> {
        let base = &self.base;
        let response = request.send().await.with_context(|| {
            format!("the agent holds the database but does not answer at {base}")
        })?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("the agent at {base} answered {status} without JSON"))?;
        if !status.is_success() {
            bail!(
                "the agent answered {status}: {}",
                body["error"].as_str().unwrap_or(&body.to_string())
            );
        }
        Ok(body)
    }
}
