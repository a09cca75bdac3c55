//! `siteboot queue …`: the durable queue from the command line, the same
//! admin requests as `GET /api/v1/queue` and friends (`cli::admin`: through
//! the running agent, or on the database while it is stopped).

use anyhow::Result;
use clap::Subcommand;

use super::admin::PageArgs;
use crate::admin::{AdminError, Request};
use crate::config::Config;

#[derive(Subcommand)]
pub enum QueueCommand {
    /// List items in send order.
    List {
        /// pending, in_flight, failed or conflict.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        page: PageArgs,
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

impl QueueCommand {
    /// The admin request this command makes.
    pub fn request(self) -> Result<Request, AdminError> {
        Ok(match self {
            QueueCommand::List { status, page } => {
                Request::queue_list(status.as_deref(), page.page()?, None)?
            }
            QueueCommand::Stats => Request::QueueStats,
            QueueCommand::Retry { id } => Request::QueueRetry(id),
            QueueCommand::Delete { id } => Request::QueueDelete(id),
            QueueCommand::ClearFailed => Request::QueueClearFailed,
        })
    }
}

pub async fn run(config: Config, url: Option<String>, action: QueueCommand) -> Result<()> {
    super::admin::run(config, url, action.request()?).await
}
