//! `siteboot queue …`: the durable queue from the command line. While the
//! agent runs it holds the database, so the command goes through the
//! agent's admin API (same answers as `GET /api/v1/queue` and friends);
//! while it is stopped, the command opens the database directly.

use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value, json};

use super::agent_api::AgentApi;
use crate::config::Config;
use crate::store::queue::{Limits, Queue, Status};
use crate::store::{Store, StoreError};

#[derive(Subcommand)]
pub enum QueueCommand {
    /// List items in send order.
    List {
        /// pending, in_flight, failed or conflict.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Counts per status, and events dropped to make room.
    Stats,
    /// Send a failed (or backing-off) item again now.
    Retry { id: u64 },
    /// Remove an item for good.
    Delete { id: u64 },
    /// Remove every failed item.
    ClearFailed,
}

pub async fn run(config: Config, url: Option<String>, action: QueueCommand) -> Result<()> {
    if let QueueCommand::List {
        status: Some(s), ..
    } = &action
    {
        s.parse::<Status>().map_err(anyhow::Error::msg)?;
    }
    let answer = match Store::open(&config.data_dir) {
        Ok(store) => {
            let queue = Queue::open(store, Limits::from_config(&config.queue))?;
            direct(&queue, action)?
        }
        Err(StoreError::Locked { .. }) => via_agent(&AgentApi::new(&config, url)?, action).await?,
        Err(e) => return Err(e.into()),
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

fn direct(queue: &Queue, action: QueueCommand) -> Result<Value> {
    Ok(match action {
        QueueCommand::List {
            status,
            offset,
            limit,
        } => {
            let status = status
                .map(|s| s.parse::<Status>())
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let items = queue.list(status, offset, limit)?;
            json!({"data": items, "offset": offset, "limit": limit})
        }
        QueueCommand::Stats => serde_json::to_value(queue.stats()?)?,
        QueueCommand::Retry { id } => json!({"data": queue.retry(id)?}),
        QueueCommand::Delete { id } => {
            queue.delete(id)?;
            json!({"deleted": id})
        }
        QueueCommand::ClearFailed => json!({"cleared": queue.clear_failed()?}),
    })
}

async fn via_agent(api: &AgentApi, action: QueueCommand) -> Result<Value> {
    use reqwest::Method;
    let request = match action {
        QueueCommand::List {
            status,
            offset,
            limit,
        } => {
            let mut query = vec![("offset", offset.to_string()), ("limit", limit.to_string())];
            if let Some(status) = status {
                query.push(("status", status));
            }
            api.request(Method::GET, "/api/v1/queue").query(&query)
        }
        QueueCommand::Stats => api.request(Method::GET, "/api/v1/queue/stats"),
        QueueCommand::Retry { id } => {
            api.request(Method::POST, &format!("/api/v1/queue/{id}/retry"))
        }
        QueueCommand::Delete { id } => api.request(Method::DELETE, &format!("/api/v1/queue/{id}")),
        QueueCommand::ClearFailed => api.request(Method::POST, "/api/v1/queue/clear-failed"),
    };
    api.send(request).await
}
