//! `siteboot conflicts …`: conflicts from the command line (DESIGN §8),
//! the same admin requests as `/api/v1/conflicts` (`cli::admin`: through
//! the running agent, or on the database while it is stopped). Settling
//! one needs the running agent (a resolution may ask the controller).

use anyhow::Result;
use clap::Subcommand;

use super::admin::PageArgs;
use crate::admin::{AdminError, PolicyChange, Request};
use crate::config::Config;

#[derive(Subcommand)]
pub enum ConflictsCommand {
    /// List conflicts, newest first.
    List {
        /// open or resolved.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One conflict, both sides.
    Show { id: u64 },
    /// Settle one: keep_local, keep_central or merge (needs the running agent).
    Resolve {
        id: u64,
        #[arg(long)]
        resolution: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Show the policies, or change some: `--set state_mismatch=manual`.
    Policy {
        #[arg(long)]
        set: Vec<String>,
    },
}

impl ConflictsCommand {
    /// The admin request this command makes.
    pub fn request(self) -> Result<Request, AdminError> {
        Ok(match self {
            ConflictsCommand::List { status, page } => {
                Request::conflict_list(status.as_deref(), page.page()?)?
            }
            ConflictsCommand::Show { id } => Request::ConflictShow(id),
            ConflictsCommand::Resolve {
                id,
                resolution,
                comment,
            } => Request::conflict_resolve(id, &resolution, comment)?,
            ConflictsCommand::Policy { set } if set.is_empty() => Request::PolicyShow,
            ConflictsCommand::Policy { set } => Request::PolicySet(
                set.iter()
                    .map(|pair| PolicyChange::parse(pair))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

pub async fn run(config: Config, url: Option<String>, action: ConflictsCommand) -> Result<()> {
    super::admin::run(config, url, action.request()?).await
}
