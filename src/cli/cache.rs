//! `siteboot cache …`: the content cache from the command line (DESIGN
//! §12), through the running agent's admin API, or on the database and
//! `<data_dir>/content` while it is stopped (prefetching needs the agent:
//! it asks the controller).

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use super::agent_api::AgentApi;
use crate::config::Config;
use crate::content;
use crate::store::{Store, StoreError};

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Every cached file: path, size, sha256, pinned, when fetched and used.
    List,
    /// Entries, bytes, pinned; hits, misses, fills, evictions (the counts
    /// since the agent started: only through the running agent).
    Stats,
    /// Fetch files now: the given paths, or (none given) the files a sync
    /// would prefetch.
    Prefetch { paths: Vec<String> },
    /// Remove cached files: the given paths, or with --all every unpinned one.
    Evict {
        paths: Vec<String>,
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(config: Config, url: Option<String>, action: CacheCommand) -> Result<()> {
    if let CacheCommand::Evict { paths, all } = &action
        && paths.is_empty() != *all
    {
        bail!("give the paths to evict, or --all (every unpinned file), not both");
    }
    let answer = match Store::open(&config.data_dir) {
        Ok(store) => direct(&store, &config, action)?,
        Err(StoreError::Locked { .. }) => via_agent(&AgentApi::new(&config, url)?, action).await?,
        Err(e) => return Err(e.into()),
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

fn direct(store: &Store, config: &Config, action: CacheCommand) -> Result<Value> {
    let dir = config.data_dir.join("content");
    Ok(match action {
        CacheCommand::List => {
            let entries = content::stored_entries(store)?;
            json!({"data": entries, "total": entries.len()})
        }
        CacheCommand::Stats => {
            let entries = content::stored_entries(store)?;
            json!({"data": {
                "entries": entries.len(),
                "bytes": entries.iter().map(|e| e.size).sum::<u64>(),
                "pinned": entries.iter().filter(|e| e.pinned).count(),
                "pinned_bytes": entries.iter().filter(|e| e.pinned).map(|e| e.size).sum::<u64>(),
                "max_bytes": config.cache.max_bytes,
            }})
        }
        CacheCommand::Prefetch { .. } => {
            bail!("prefetching needs the running agent (it asks the controller)")
        }
        CacheCommand::Evict { paths, all } => {
            let removed = content::evict_stored(store, &dir, (!all).then_some(paths))?;
            json!({"removed": removed.len(), "paths": removed})
        }
    })
}

async fn via_agent(api: &AgentApi, action: CacheCommand) -> Result<Value> {
    use reqwest::Method;
    match action {
        CacheCommand::List => api.send(api.request(Method::GET, "/api/v1/cache")).await,
        CacheCommand::Stats => {
            api.send(api.request(Method::GET, "/api/v1/cache/stats"))
                .await
        }
        CacheCommand::Prefetch { paths } => {
            let request = api
                .request(Method::POST, "/api/v1/cache/prefetch")
                .json(&json!({ "paths": paths }));
            api.send(request).await
        }
        CacheCommand::Evict { all: true, .. } => {
            api.send(api.request(Method::DELETE, "/api/v1/cache")).await
        }
        CacheCommand::Evict { paths, .. } => {
            let mut removed = Vec::new();
            for path in paths {
                let request = api.request(Method::DELETE, &format!("/api/v1/cache/{path}"));
                api.send(request).await?;
                removed.push(path);
            }
            Ok(json!({"removed": removed.len(), "paths": removed}))
        }
    }
}
