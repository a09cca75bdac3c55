//! `siteboot cache …`: the content cache from the command line (DESIGN
//! §12), the same admin requests as `/api/v1/cache` (`cli::admin`: through
//! the running agent, or on the database and `<data_dir>/content` while it
//! is stopped; prefetching needs the agent: it asks the controller).

use anyhow::Result;
use clap::Subcommand;

use crate::admin::{AdminError, Evict, Request};
use crate::config::Config;

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

impl CacheCommand {
    /// The admin request this command makes.
    pub fn request(self) -> Result<Request, AdminError> {
        Ok(match self {
            CacheCommand::List => Request::CacheList,
            CacheCommand::Stats => Request::CacheStats,
            CacheCommand::Prefetch { paths } => Request::cache_prefetch(paths)?,
            CacheCommand::Evict { paths, all } => {
                if paths.is_empty() != all {
                    return Err(AdminError::BadRequest(
                        "give the paths to evict, or --all (every unpinned file), not both".into(),
                    ));
                }
                Request::CacheEvict(if all {
                    Evict::AllUnpinned
                } else {
                    Evict::Paths(paths)
                })
            }
        })
    }
}

pub async fn run(config: Config, url: Option<String>, action: CacheCommand) -> Result<()> {
    super::admin::run(config, url, action.request()?).await
}
