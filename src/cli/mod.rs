//! The `siteboot` command line: its arguments (`command.rs`) and one
//! file per subcommand that is more than a few lines. `main.rs` only calls
//! [`main`].

mod admin;
mod agent_api;
mod cache;
mod check;
mod command;
mod conflicts;
mod nodes;
mod queue;
mod render;
mod serve;
mod status;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

use crate::config::{Config, LogFormat};
use crate::model::mac::Mac;
use command::{Cli, Command};

/// The `siteboot` binary: parses the command line, starts logging and the
/// runtime, and runs the subcommand; the exit code says whether it worked.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let logging = init_logging(&cli);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            drop(logging);
            eprintln!("siteboot: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    drop(runtime);
    // Every line logged is written before the last word (or the exit).
    drop(logging);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("siteboot: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { config, ready_file } => {
            serve::run(load_config(config.as_ref())?, ready_file).await
        }
        Command::Render {
            mac,
            arch,
            platform,
            offline,
            base_url,
            config,
        } => {
            let request = render::RenderRequest {
                mac: mac.parse::<Mac>()?,
                arch,
                platform,
                offline,
                base_url,
            };
            render::run(load_config(config.as_ref())?, request).await
        }
        Command::Nodes { config, action } => nodes::run(load_config(config.as_ref())?, action),
        Command::Queue {
            config,
            url,
            action,
        } => queue::run(load_config(config.as_ref())?, url, action).await,
        Command::Conflicts {
            config,
            url,
            action,
        } => conflicts::run(load_config(config.as_ref())?, url, action).await,
        Command::Cache {
            config,
            url,
            action,
        } => cache::run(load_config(config.as_ref())?, url, action).await,
        Command::Sync {
            config,
            url,
            action,
        } => admin::run(load_config(config.as_ref())?, url, action.request()).await,
        Command::Status { config, url, json } => {
            status::run(load_config(config.as_ref())?, url, json).await
        }
        Command::CheckConfig { config } => check::run(&load_config(config.as_ref())?).await,
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    Ok(Config::load(path.map(PathBuf::as_path))?)
}

/// Log lines waiting for the writer thread, at most; past it, whoever
/// logs waits (a line is never dropped).
const LOG_LINES_BUFFERED: usize = 16_384;

/// Logs to stderr: lines for people, or with `log.format = "json"` one
/// JSON object per line for a log shipper. The format is read from the
/// agent's configuration (`serve`); a configuration that does not load
/// is reported after logging starts, in the default format.
///
/// Lines are written by a thread of their own, buffered and written
/// together when it has caught up: at the default level every boot logs a
/// line, and a `write` of each on the runtime's threads was a fifth of
/// a boot answer's CPU (docs/benchmarks.md, "the logger"). The returned
/// guard writes what is left when dropped.
fn init_logging(cli: &Cli) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SITEBOOT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match &cli.command {
        Command::Serve { config, .. } => {
            load_config(config.as_ref()).is_ok_and(|c| c.log_format == LogFormat::Json)
        }
        _ => false,
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_LINES_BUFFERED)
        .thread_name("siteboot-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        builder.json().with_current_span(false).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    guard
}
