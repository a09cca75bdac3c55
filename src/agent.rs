//! Wiring: builds the services from a [`Config`] and runs the TFTP and HTTP
//! servers until a termination signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::boot::BootService;
use crate::bootfiles::{self, BootFiles};
use crate::config::Config;
use crate::http::{self, AppState};
use crate::store::{Store, StoreError};
use crate::templates::{TemplateError, Templates};
use crate::tftp::TftpServer;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("template error: {0}")]
    Templates(#[from] TemplateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Opens what `serve`, `render` and `nodes` share: templates and the store.
pub fn open_services(config: &Config) -> Result<BootService, StartError> {
    let templates = Templates::load(&config.templates_dir)?;
    let store = Store::open(&config.data_dir)?;
    Ok(BootService::new(config, store, templates)?)
}

/// The running agent's sockets, for tests and logs.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub http: SocketAddr,
    pub tftp: SocketAddr,
}

/// Starts both servers; returns once they listen, with a future that runs
/// them until `shutdown` resolves.
pub async fn start(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(Listening, tokio::task::JoinHandle<()>), StartError> {
    let mut boot = open_services(&config)?;
    boot.start_recorder();
    let boot = Arc::new(boot);
    let roots = Arc::new(bootfiles::served_roots(&config.tftp.root));

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "http.listen",
            addr: config.http.listen,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Bind {
        what: "http.listen",
        addr: config.http.listen,
        source,
    })?;
    let files = BootFiles::new(
        boot.clone(),
        roots.clone(),
        config.http.public_url.clone(),
        http_addr.port(),
    );
    let tftp = TftpServer::bind(config.tftp.listen, config.tftp.max_sessions, files)
        .await
        .map_err(|source| StartError::Bind {
            what: "tftp.listen",
            addr: config.tftp.listen,
            source,
        })?;
    let tftp_addr = tftp.local_addr().map_err(|source| StartError::Bind {
        what: "tftp.listen",
        addr: config.tftp.listen,
        source,
    })?;

    let state = Arc::new(AppState {
        boot,
        roots,
        public_url: config.http.public_url.clone(),
        site_id: config.site_id.clone(),
        started: Instant::now(),
    });
    let app = http::router(state);
    tracing::info!(
        http = %http_addr,
        tftp = %tftp_addr,
        site_id = %config.site_id,
        mode = "standalone",
        data_dir = %config.data_dir.display(),
        "siteboot agent listening"
    );
    let handle = tokio::spawn(async move {
        let tftp_task = tokio::spawn(tftp.run());
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http server failed");
        }
        tftp_task.abort();
        tracing::info!("siteboot agent stopped");
    });
    Ok((
        Listening {
            http: http_addr,
            tftp: tftp_addr,
        },
        handle,
    ))
}
