//! The `siteboot` command line's arguments, as clap reads them.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::cache::CacheCommand;
use super::conflicts::ConflictsCommand;
use super::queue::QueueCommand;

#[derive(Parser)]
#[command(
    name = "siteboot",
    version,
    about = "Site-local network-boot agent (TFTP + HTTP + iPXE)"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the agent (TFTP and HTTP servers).
    Serve {
        /// TOML configuration file; without it, built-in defaults (standalone).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Once both servers listen, write their addresses here as JSON
        /// (`{"http": "127.0.0.1:8080", "tftp": "…", "pid": N}`), for
        /// supervisors and tests that start the agent on port 0.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Print the script a node would get now, without running a server.
    Render {
        #[arg(long)]
        mac: String,
        /// iPXE ${buildarch} (i386, x86_64, arm64).
        #[arg(long)]
        arch: Option<String>,
        /// iPXE ${platform} (pcbios, efi).
        #[arg(long)]
        platform: Option<String>,
        /// Render as if the controller were unreachable.
        #[arg(long)]
        offline: bool,
        /// Agent URL to put in the script (default: http.public_url, else
        /// http://127.0.0.1:<http port>).
        #[arg(long)]
        base_url: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Edit the local node store directly (the agent must be stopped).
    Nodes {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: NodesCommand,
    },
    /// Inspect and repair the durable queue of changes for the controller
    /// (through the running agent, or directly while it is stopped).
    Queue {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// The running agent's URL (default: http://127.0.0.1:<http port>).
        #[arg(long, global = true)]
        url: Option<String>,
        #[command(subcommand)]
        action: QueueCommand,
    },
    /// Conflicts (DESIGN §8): through the running agent, or on the database
    /// when it is stopped.
    Conflicts {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// The running agent's URL (default: http://127.0.0.1:<http port>).
        #[arg(long, global = true)]
        url: Option<String>,
        #[command(subcommand)]
        action: ConflictsCommand,
    },
    /// The content cache (DESIGN §12): through the running agent, or on
    /// the database when it is stopped.
    Cache {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// The running agent's URL (default: http://127.0.0.1:<http port>).
        #[arg(long, global = true)]
        url: Option<String>,
        #[command(subcommand)]
        action: CacheCommand,
    },
    /// The hand-over to the controller (DESIGN §15): pause or resume
    /// replay and syncs, or probe the controller now (through the running
    /// agent; pause and resume also on the database while it is stopped).
    Sync {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// The running agent's URL (default: http://127.0.0.1:<http port>).
        #[arg(long, global = true)]
        url: Option<String>,
        #[command(subcommand)]
        action: SyncCommand,
    },
    /// The running agent at a glance: mode, counts, latest boots.
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The running agent's URL (default: http://127.0.0.1:<http port>).
        #[arg(long)]
        url: Option<String>,
        /// Print the JSON the view is made from.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and templates, then exit.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Clone, Copy)]
pub(crate) enum SyncCommand {
    /// Hold replay and syncs (writes queue, boots go on) until resumed;
    /// kept across restarts.
    Pause,
    /// Hand the queue over to the controller again.
    Resume,
    /// Probe the controller now and print what came of it.
    Check,
}

impl SyncCommand {
    /// The admin request this command makes.
    pub fn request(self) -> crate::admin::Request {
        match self {
            SyncCommand::Pause => crate::admin::Request::SyncPause(true),
            SyncCommand::Resume => crate::admin::Request::SyncPause(false),
            SyncCommand::Check => crate::admin::Request::ConnectivityCheck,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum NodesCommand {
    /// List the nodes in the store.
    List,
    /// Add a node.
    Add {
        #[arg(long)]
        mac: String,
        #[arg(long)]
        state: String,
        #[arg(long)]
        hostname: Option<String>,
        /// Workflow id (a [workflows.<id>] of the config).
        #[arg(long)]
        workflow: Option<String>,
    },
    /// Change a node's state.
    SetState {
        #[arg(long)]
        mac: String,
        #[arg(long)]
        state: String,
    },
    /// Remove a node.
    Remove {
        #[arg(long)]
        mac: String,
    },
}
