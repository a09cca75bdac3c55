//! `siteboot serve`: the agent until SIGTERM or Ctrl-C, and the ready file
//! that tells a supervisor (or a test) the ports it bound.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::agent;
use crate::config::Config;

pub(crate) async fn run(config: Config, ready_file: Option<PathBuf>) -> Result<()> {
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
fn write_ready_file(path: &Path, listening: agent::Listening) -> std::io::Result<()> {
    let mut body = serde_json::json!({
        "http": listening.http.to_string(),
        "tftp": listening.tftp.to_string(),
        "pid": std::process::id(),
    });
    if let Some((dhcp, pxe)) = listening.dhcp {
        body["dhcp"] = dhcp.to_string().into();
        body["dhcp_pxe"] = pxe.to_string().into();
    }
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
