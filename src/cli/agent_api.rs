//! Calls to the running agent's admin API from the command line: while
//! the agent runs it holds the database, so `siteboot queue` and
//! `siteboot conflicts` ask it instead (with the token from
//! `admin.token_file`).

use anyhow::{Context, Result};
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

    /// Sends an admin request; the JSON answer, or the agent's refusal as
    /// the admin error it was (its status and message).
    pub async fn answer(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, crate::admin::AdminError> {
        use crate::admin::AdminError;
        let base = &self.base;
        let response = request.send().await.map_err(|e| {
            AdminError::Unavailable(format!(
                "the agent holds the database but does not answer at {base}: {e}"
            ))
        })?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| {
            AdminError::Internal(format!(
                "the agent at {base} answered {status} without JSON: {e}"
            ))
        })?;
        if !status.is_success() {
            let message = body["error"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_string);
            return Err(AdminError::from_http(
                status.as_u16(),
                format!("the agent answered {status}: {message}"),
            ));
        }
        Ok(body)
    }

    /// Sends `request`; the JSON answer, or the agent's error.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value> {
        Ok(self.answer(request).await?)
    }
}
