//! Wiring: builds the services from a [`Config`] and runs the TFTP and HTTP
//! servers until a termination signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::boot::BootService;
use crate::bootfiles::{self, BootFiles};
use crate::config::Config;
use crate::http::{self, AppState};
use crate::outbox::Outbox;
use crate::outbox::replay::ReplaySettings;
use crate::store::{Store, StoreError};
use crate::templates::{TemplateError, Templates};
use crate::tftp::TftpServer;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("template error: {0}")]
    Templates(#[from] TemplateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Central(#[from] crate::central::client::ClientError),
    #[error("admin token: {0}")]
    AdminToken(String),
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
    let link = match &config.central.url {
        Some(url) => {
            let link = central_link(&config, url, boot.store().clone())?;
            boot.set_central(link.0.clone());
            Some(link)
        }
        None => None,
    };
    let queue = crate::queue::Queue::open(boot.store().clone(), config.queue.max_items).map_err(
        |e| match e {
            crate::queue::QueueError::Store(e) => StartError::Store(e),
            other => StartError::Store(StoreError::Task(other.to_string())),
        },
    )?;
    let outbox = Arc::new(Outbox::new(
        queue,
        boot.nodes().clone(),
        link.as_ref().map(|(link, _)| link.clone()),
    ));
    boot.set_outbox(outbox.clone());
    if let Some((link, _)) = &link {
        tokio::spawn(crate::outbox::replay::run(
            outbox.clone(),
            link.clone(),
            ReplaySettings {
                batch_size: config.queue.batch_size as usize,
                max_retries: config.queue.max_retries,
                retry_base: config.queue.retry_base,
                retry_max: config.queue.retry_max,
                period: config.central.check_interval,
            },
        ));
    }
    let boot = Arc::new(boot);
    let admin_token = crate::http::admin::load_or_create_token(&config.admin_token_file)
        .map_err(StartError::AdminToken)?;
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

    let sync = link.map(|(link, token)| {
        let agent_url = config
            .http
            .public_url
            .clone()
            .unwrap_or_else(|| agent_url_from(http_addr));
        crate::central::tasks::spawn(
            link,
            boot.clone(),
            crate::central::tasks::LinkSettings {
                central: config.central.clone(),
                site_id: config.site_id.clone(),
                agent_url,
                token,
                data_dir: config.data_dir.clone(),
                templates_dir: config.templates_dir.clone(),
            },
        )
    });
    let state = Arc::new(AppState {
        boot,
        roots,
        public_url: config.http.public_url.clone(),
        site_id: config.site_id.clone(),
        started: Instant::now(),
        admin_token,
        sync,
        outbox,
    });
    let app = http::router(state);
    tracing::info!(
        http = %http_addr,
        tftp = %tftp_addr,
        site_id = %config.site_id,
        mode = if config.central.url.is_some() { "central" } else { "standalone" },
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

type Link = (Arc<crate::central::link::CentralLink>, Option<String>);

fn central_link(
    config: &Config,
    url: &str,
    store: crate::store::Store,
) -> Result<Link, StartError> {
    use crate::central::client::HttpController;
    use crate::connectivity::{Monitor, Transition};
    let controller = HttpController::new(
        url,
        config.central.token_file.as_deref(),
        config.central.request_timeout,
    )?;
    let token = controller.token().map(str::to_string);
    let monitor = Monitor::new(
        config.central.failure_threshold,
        config.central.recovery_threshold,
        time::OffsetDateTime::now_utc(),
    );
    let on_transition = Box::new(move |transition: Transition| {
        let store = store.clone();
        let (kind, detail) = match transition {
            Transition::WentOnline => ("online", "controller reachable"),
            Transition::WentOffline => ("offline", "controller unreachable"),
        };
        tokio::spawn(async move {
            let now = time::OffsetDateTime::now_utc();
            let _ = store
                .call(move |s| s.append_sync_log(kind, detail, now))
                .await;
        });
    });
    let link = crate::central::link::CentralLink::new(
        Arc::new(controller),
        monitor,
        config.site_id.clone(),
        config.central.boot_lookup_deadline,
        on_transition,
    );
    tracing::info!(url, "central controller configured");
    Ok((Arc::new(link), token))
}

/// The URL the controller is told to reach this agent at when
/// `http.public_url` is unset.
fn agent_url_from(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        format!("http://{host}:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}
