//! `siteboot queue|conflicts|cache …` carry out one admin request: on the
//! database while the agent is stopped, through the running agent's API
//! while it holds the database. Both are an [`AdminService`], so the
//! command line answers exactly what the API answers.

use anyhow::Result;
use serde_json::Value;

use super::agent_api::AgentApi;
use crate::admin::{AdminError, AdminService, Answer, Page, Request, StoppedAdmin};
use crate::config::Config;
use crate::store::{Store, StoreError};

/// The running agent's admin API, as an admin service.
pub struct RemoteAdmin {
    api: AgentApi,
}

impl RemoteAdmin {
    pub fn new(api: AgentApi) -> RemoteAdmin {
        RemoteAdmin { api }
    }

    async fn one(&self, request: &Request) -> Result<Value, AdminError> {
        let call = request.http();
        let method = reqwest::Method::from_bytes(call.method.as_bytes())
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        let mut builder = self.api.request(method, &call.path);
        if !call.query.is_empty() {
            builder = builder.query(&call.query);
        }
        if let Some(body) = &call.body {
            builder = builder.json(body);
        }
        self.api.answer(builder).await
    }
}

impl AdminService for RemoteAdmin {
    async fn call(&self, request: Request) -> Result<Answer, AdminError> {
        let accepted = matches!(request, Request::CachePrefetch(_));
        let parts = request.split();
        if parts.len() == 1 {
            let body = self.one(&parts[0]).await?;
            return Ok(Answer { body, accepted });
        }
        // Several paths evicted: one call each, answered together as the
        // agent answers one call for several.
        let mut removed = Vec::new();
        for part in &parts {
            self.one(part).await?;
            if let Request::CacheEvict(crate::admin::Evict::Paths(paths)) = part {
                removed.extend(paths.iter().cloned());
            }
        }
        Ok(Answer {
            body: serde_json::json!({"removed": removed.len(), "paths": removed}),
            accepted,
        })
    }
}

/// Carries out `request` where the database is, and prints the answer.
pub async fn run(config: Config, url: Option<String>, request: Request) -> Result<()> {
    let answer = match Store::open(&config.data_dir) {
        Ok(store) => StoppedAdmin::open(store, config)?.call(request).await?,
        Err(StoreError::Locked { .. }) => {
            RemoteAdmin::new(AgentApi::new(&config, url)?)
                .call(request)
                .await?
        }
        Err(e) => return Err(e.into()),
    };
    println!("{}", serde_json::to_string_pretty(&answer.body)?);
    Ok(())
}

/// `--offset` and `--limit` of a listing.
#[derive(clap::Args)]
pub(crate) struct PageArgs {
    /// Rows to skip.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Rows at most.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

impl PageArgs {
    pub(crate) fn page(&self) -> Result<Page, AdminError> {
        Page::new(self.offset, self.limit)
    }
}
