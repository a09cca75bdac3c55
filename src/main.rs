//! The `siteboot` command line.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use time::OffsetDateTime;

use siteboot::agent;
use siteboot::cli::queue as queue_cli;
use siteboot::config::{Config, LogFormat};
use siteboot::model::boot::BootFacts;
use siteboot::model::mac::Mac;
use siteboot::model::node::{self, Node, NodeState};
use siteboot::store::Store;

#[derive(Parser)]
#[command(
    name = "siteboot",
    version,
    about = "Site-local network-boot agent (TFTP + HTTP + iPXE)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        action: queue_cli::QueueCommand,
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
        action: siteboot::cli::conflicts::ConflictsCommand,
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
        action: siteboot::cli::cache::CacheCommand,
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

#[derive(Subcommand)]
enum NodesCommand {
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

/// Logs to stderr: lines for people, or with `log.format = "json"` one
/// JSON object per line for a log shipper. The format is read from the
/// agent's configuration (`serve`); a configuration that does not load
/// is reported after logging starts, in the default format.
fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SITEBOOT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match &cli.command {
        Command::Serve { config, .. } => {
            load_config(config.as_ref()).is_ok_and(|c| c.log_format == LogFormat::Json)
        }
        _ => false,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().with_current_span(false).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("siteboot: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
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
            serve(load_config(config.as_ref())?, ready_file).await
        }
        Command::Render {
            mac,
            arch,
            platform,
            offline,
            base_url,
            config,
        } => {
            let config = load_config(config.as_ref())?;
            let mac = parse_mac(&mac)?;
            let services = agent::open_services(&config, false)?;
            let origin = siteboot::serve::origin::AgentOrigin::new(
                config.http.public_url.clone(),
                config.http.listen.port(),
            );
            let base_url =
                base_url.unwrap_or_else(|| origin.url_at(std::net::Ipv4Addr::LOCALHOST.into()));
            let facts = BootFacts {
                arch,
                platform,
                ..BootFacts::default()
            };
            let answer = services.boot.preview(mac, &facts, offline, &base_url).await;
            print!("{}", answer.script);
            Ok(())
        }
        Command::Nodes { config, action } => nodes(load_config(config.as_ref())?, action),
        Command::Queue {
            config,
            url,
            action,
        } => queue_cli::run(load_config(config.as_ref())?, url, action).await,
        Command::Conflicts {
            config,
            url,
            action,
        } => siteboot::cli::conflicts::run(load_config(config.as_ref())?, url, action).await,
        Command::Cache {
            config,
            url,
            action,
        } => siteboot::cli::cache::run(load_config(config.as_ref())?, url, action).await,
        Command::Status { config, url, json } => {
            siteboot::cli::status::run(load_config(config.as_ref())?, url, json).await
        }
        Command::CheckConfig { config } => {
            let config = load_config(config.as_ref())?;
            siteboot::boot::templates::Templates::load(&config.templates_dir)?;
            println!(
                "configuration OK: site_id={} mode={} http={} tftp={} data_dir={} workflows={}",
                config.site_id,
                if config.central.url.is_some() {
                    "central"
                } else {
                    "standalone"
                },
                config.http.listen,
                config.tftp.listen,
                config.data_dir.display(),
                config.workflows.len()
            );
            match siteboot::cli::check::controller_workflows(&config).await {
                Ok(None) => {}
                Ok(Some(check)) if check.missing.is_empty() => println!(
                    "controller: {} nodes listed; every workflow they reference can be rendered",
                    check.nodes
                ),
                Ok(Some(check)) => println!(
                    "controller: {} nodes listed; workflows they reference that this agent cannot \
                     render (the controller lists none by these ids and the config defines none): {}",
                    check.nodes,
                    check.missing.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
                Err(e) => println!("controller: not asked about workflows ({e})"),
            }
            match siteboot::cli::check::stored_policy_override(&config) {
                Ok(None) => {}
                Ok(Some(p)) => println!(
                    "conflict policy: set at run time and stored, it wins over this config until \
                     changed again (PUT /api/v1/conflicts/policy): state_mismatch={} \
                     missing_central={} missing_local={}",
                    p.state_mismatch.as_str(),
                    p.missing_central.as_str(),
                    p.missing_local.as_str()
                ),
                Err(e) => println!(
                    "conflict policy: the stored one cannot be read now ({e}); \
                     GET /api/v1/conflicts/policy shows the one in force"
                ),
            }
            Ok(())
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    Ok(Config::load(path.map(PathBuf::as_path))?)
}

fn parse_mac(text: &str) -> Result<Mac> {
    Ok(text.parse::<Mac>()?)
}

async fn serve(config: Config, ready_file: Option<PathBuf>) -> Result<()> {
    let (listening, running) = agent::start(config, shutdown_signal()).await?;
    if let Some(path) = ready_file {
        write_ready_file(&path, listening)
            .with_context(|| format!("cannot write the ready file {}", path.display()))?;
    }
    running.await;
    Ok(())
}

/// Written to a temporary name and renamed, so a reader never sees half
/// a file.
fn write_ready_file(path: &std::path::Path, listening: agent::Listening) -> std::io::Result<()> {
    let body = serde_json::json!({
        "http": listening.http.to_string(),
        "tftp": listening.tftp.to_string(),
        "pid": std::process::id(),
    });
    let partial = path.with_extension("partial");
    std::fs::write(&partial, format!("{body}\n"))?;
    std::fs::rename(&partial, path)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

fn nodes(config: Config, action: NodesCommand) -> Result<()> {
    let store = Store::open(&config.data_dir)?;
    match action {
        NodesCommand::List => {
            let nodes = store.list_nodes()?;
            println!(
                "{:<17}  {:<14}  {:<20}  {:<12}  ID",
                "MAC", "STATE", "HOSTNAME", "WORKFLOW"
            );
            for n in &nodes {
                println!(
                    "{:<17}  {:<14}  {:<20}  {:<12}  {}",
                    n.mac,
                    n.state,
                    n.hostname.as_deref().unwrap_or("-"),
                    n.workflow_id.as_deref().unwrap_or("-"),
                    n.id
                );
            }
            eprintln!("{} node(s)", nodes.len());
        }
        NodesCommand::Add {
            mac,
            state,
            hostname,
            workflow,
        } => {
            let mac = parse_mac(&mac)?;
            let state: NodeState = state.parse()?;
            if let Some(h) = &hostname {
                node::validate_hostname(h).map_err(anyhow::Error::msg)?;
            }
            if let Some(id) = &workflow
                && !config.workflows.contains_key(id)
                && store.get_workflow(id)?.is_none()
            {
                bail!("unknown workflow {id:?}: define [workflows.{id}] in the configuration file");
            }
            let mut new = Node::new_local(mac, state, OffsetDateTime::now_utc());
            new.hostname = hostname;
            new.workflow_id = workflow;
            let stored = store.insert_node_if_absent(&new)?;
            if stored.id != new.id {
                bail!(
                    "node {mac} already exists (state {}); use `siteboot nodes set-state`",
                    stored.state
                );
            }
            println!("added {mac} state={state} id={}", stored.id);
        }
        NodesCommand::SetState { mac, state } => {
            let mac = parse_mac(&mac)?;
            let state: NodeState = state.parse()?;
            let node = store.update_node(mac, |n| {
                n.change_state(state, OffsetDateTime::now_utc());
            })?;
            println!("{mac} state={} version={}", node.state, node.version);
        }
        NodesCommand::Remove { mac } => {
            let mac = parse_mac(&mac)?;
            if !store.remove_node(mac)? {
                bail!("no node with MAC {mac}");
            }
            println!("removed {mac}");
        }
    }
    Ok(())
}
