//! Wiring and lifecycle: builds the services from a [`Config`], then
//! serves until a shutdown is asked for. One cancellation token reaches
//! every background loop, and every task (all are spawned through
//! [`crate::tasks`]) is joined before the agent returns:
//!
//! 1. the shutdown future resolves (SIGTERM, Ctrl-C), or one of the
//!    listeners ([`crate::serve::listener::Listener`]: HTTP, TFTP) ends on
//!    its own: every listener stops taking requests;
//! 2. each listener's work in flight (HTTP answers, TFTP transfers) gets
//!    [`SHUTDOWN_GRACE`] to finish; the background loops (replay, probes, heartbeat, sync) stop
//!    at their next wait, replay only between batches, so no queue item is
//!    left `in_flight`;
//! 3. the last-script recorder writes what it holds; the queue writer has
//!    nothing unacknowledged by then (an enqueue is answered only after
//!    its commit);
//! 4. work that may be cut (content-cache fills, prefetches) is cut, and
//!    every other task is waited for, up to [`SHUTDOWN_GRACE`] again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::boot::BootService;
use crate::boot::record::Recorder;
use crate::boot::templates::{TemplateError, Templates};
use crate::central::client::HttpController;
use crate::central::monitor::{Monitor, Transition};
use crate::central::port::ControllerPort;
use crate::config::Config;
use crate::content::ContentCache;
use crate::link::tasks::{LinkServices, LinkSettings};
use crate::outbox::Outbox;
use crate::outbox::replay::ReplaySettings;
use crate::serve::bootfiles::{self, BootFileResolver, BootFiles};
use crate::serve::dhcp::server::DhcpListener;
use crate::serve::http::server::{self, HttpListener, ServerLimits};
use crate::serve::http::{self, AppState};
use crate::serve::listener::Listener;
use crate::serve::origin::AgentOrigin;
use crate::serve::tftp::TftpServer;
use crate::status::StatusSource;
use crate::store::nodes::NodeCache;
use crate::store::queue::{Limits, Queue};
use crate::store::{Store, StoreError};

/// How long in-flight answers and transfers may take to finish after a
/// shutdown was asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("template error: {0}")]
    Templates(#[from] TemplateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("queue: {0}")]
    Queue(#[from] crate::store::queue::QueueError),
    #[error(transparent)]
    Cache(#[from] crate::content::CacheError),
    #[error(transparent)]
    Central(#[from] crate::central::client::ClientError),
    #[error("admin token: {0}")]
    AdminToken(String),
    #[error("ProxyDHCP (dhcp.mode = proxy): {0}")]
    Dhcp(#[from] crate::serve::dhcp::server::DhcpError),
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The services, built and connected, before anything listens.
pub struct Services {
    pub store: Store,
    pub nodes: NodeCache,
    pub port: Arc<ControllerPort>,
    pub outbox: Arc<Outbox>,
    pub boot: Arc<BootService>,
    /// The bearer token for the controller (registration's `token` too).
    /// The registration body's `token`: `central.registration_token_file`,
    /// else the bearer token (DESIGN §6).
    pub registration_token: Option<String>,
    /// The content cache (DESIGN §12), when a controller is configured.
    pub cache: Option<Arc<ContentCache>>,
    /// The site policy in force (DESIGN §15).
    pub policy: Arc<crate::policy::PolicyCell>,
    recorder: Option<tokio::task::JoinHandle<()>>,
}

/// Builds the services (needs a tokio runtime: the queue writer and, with
/// `record`, the last-script recorder are tasks).
pub fn open_services(config: &Config, record: bool) -> Result<Services, StartError> {
    let templates = Templates::load(&config.templates_dir)?;
    let store = Store::open(&config.data_dir)?;
    let nodes = NodeCache::load(store.clone())?;
    let (port, registration_token) = match &config.central.url {
        Some(url) => {
            let (port, bearer) = remote_port(config, url, store.clone())?;
            let registration = match &config.central.registration_token_file {
                Some(path) => Some(crate::central::client::read_token(path)?),
                None => bearer,
            };
            (port, registration)
        }
        None => (
            ControllerPort::standalone(
                nodes.clone(),
                config.site_id.clone(),
                config.max_discovered,
            ),
            None,
        ),
    };
    let port = Arc::new(port);
    let policy = Arc::new(crate::policy::PolicyCell::open(
        &store,
        config.policy_pins.clone(),
    )?);
    let cache = match port.mode().has_controller() {
        true => Some(Arc::new(
            ContentCache::open(
                &config.data_dir.join("content"),
                Arc::new(store.clone()),
                port.clone(),
                config.cache.clone(),
            )?
            .with_site_policy(policy.clone()),
        )),
        false => None,
    };
    let queue = Queue::open(store.clone(), Limits::from_config(&config.queue))?;
    let outbox = Arc::new(
        Outbox::new(
            queue,
            nodes.clone(),
            port.clone(),
            config.central.write_deadline,
            config.queue.node_items_per_minute,
            crate::outbox::stored_policies(&store, config.conflicts)?,
        )
        .with_site_policy(policy.clone()),
    );
    let boot_rows: Arc<dyn crate::store::rows::BootRows> = Arc::new(store.clone());
    let (recorder, recorder_task) = if record {
        let (recorder, task) = Recorder::start(boot_rows.clone());
        (Some(recorder), Some(task))
    } else {
        (None, None)
    };
    let boot = Arc::new(
        BootService::new(
            config,
            boot_rows,
            nodes.clone(),
            templates,
            port.clone(),
            outbox.clone(),
            recorder,
        )
        .with_cache(cache.clone()),
    );
    Ok(Services {
        store,
        nodes,
        port,
        outbox,
        boot,
        registration_token,
        cache,
        policy,
        recorder: recorder_task,
    })
}

/// The running agent's sockets, for tests and logs.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub http: SocketAddr,
    pub tftp: SocketAddr,
    /// ProxyDHCP's DHCP port and PXE port (`dhcp.mode = proxy`).
    pub dhcp: Option<(SocketAddr, SocketAddr)>,
}

/// The agent at work: resolves once `shutdown` has resolved and
/// everything has stopped (see the module comment).
pub type Running = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Starts both servers and the background work; returns once they
/// listen, with the future that serves (to be awaited by the caller).
pub async fn start(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(Listening, Running), StartError> {
    let services = open_services(&config, true)?;
    let cancel = CancellationToken::new();
    let status = status_source(&config, &services);
    spawn_background(&config, &services, &cancel);
    let admin_token = crate::serve::http::admin::load_or_create_token(&config.admin_token_file)
        .map_err(StartError::AdminToken)?;

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(bind_error("http.listen", config.http.listen))?;
    let http_addr = listener
        .local_addr()
        .map_err(bind_error("http.listen", config.http.listen))?;
    let origin = AgentOrigin::new(config.http.public_url.clone(), http_addr.port());
    let roots = Arc::new(bootfiles::served_roots(&config.tftp.root));
    let files = Arc::new(BootFileResolver::new(roots, services.cache.clone()));
    let tftp = bind_tftp(&config, &services, files.clone(), origin.clone()).await?;
    let tftp_addr = tftp.local_addr();
    let dhcp = match config.dhcp.mode {
        crate::config::DhcpMode::Off => None,
        crate::config::DhcpMode::Proxy => Some(DhcpListener::bind(
            &config.dhcp,
            origin.clone(),
            config.uefi_loader,
            services.nodes.clone(),
        )?),
    };
    let dhcp_addrs = dhcp.as_ref().map(|d| (d.local_addr(), d.pxe_addr()));

    let sync = services.port.mode().has_controller().then(|| {
        spawn_link(
            &config,
            &services,
            &status,
            origin.advertised(http_addr),
            &cancel,
        )
    });
    let state = Arc::new(AppState {
        boot: services.boot.clone(),
        port: services.port.clone(),
        outbox: services.outbox.clone(),
        nodes: services.nodes.clone(),
        store: services.store.clone(),
        status,
        files,
        origin,
        admin_token,
        admin: Arc::new(crate::admin::LiveAdmin {
            outbox: services.outbox.clone(),
            cache: services.cache.clone(),
            boot: services.boot.clone(),
            nodes: services.nodes.clone(),
        }),
        sync,
        metrics_open: config.metrics_open,
    });
    let http_limits = ServerLimits {
        header_timeout: config.http.header_timeout,
        idle_timeout: config.http.idle_timeout,
        max_connections: config
            .http
            .max_connections
            .unwrap_or_else(server::default_max_connections),
    };
    tracing::info!(
        http = %http_addr,
        tftp = %tftp_addr,
        site_id = %config.site_id,
        mode = services.port.mode().as_str(),
        data_dir = %config.data_dir.display(),
        http_max_connections = http_limits.max_connections,
        "siteboot agent listening"
    );
    let recorder = services.recorder;
    drop(services.boot);
    let http = HttpListener::new(listener, http::router(state), http_limits)
        .map_err(bind_error("http.listen", config.http.listen))?;
    let mut listeners: Vec<Box<dyn Listener>> = vec![Box::new(http), Box::new(tftp)];
    if let Some(dhcp) = dhcp {
        listeners.push(Box::new(dhcp));
    }
    Ok((
        Listening {
            http: http_addr,
            tftp: tftp_addr,
            dhcp: dhcp_addrs,
        },
        Box::pin(serve_until(listeners, recorder, shutdown, cancel)),
    ))
}

fn bind_error(what: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> StartError {
    move |source: std::io::Error| StartError::Bind { what, addr, source }
}

/// The snapshot source for `/api/v1/status`, the page and the heartbeat.
fn status_source(config: &Config, services: &Services) -> Arc<StatusSource> {
    Arc::new(StatusSource {
        site_id: config.site_id.clone(),
        data_dir: config.data_dir.clone(),
        started: Instant::now(),
        port: services.port.clone(),
        nodes: services.nodes.clone(),
        store: services.store.clone(),
        outbox: services.outbox.clone(),
        boots: services.boot.stats(),
        cache: services.cache.clone(),
        proxy_dhcp: config.dhcp.mode == crate::config::DhcpMode::Proxy,
        reads: Default::default(),
    })
}

/// The loops that need no listener: boot counts published, and with a
/// controller, the queue's replay.
fn spawn_background(config: &Config, services: &Services, cancel: &CancellationToken) {
    crate::tasks::spawn(crate::boot::stats::publish_boots(
        services.boot.stats(),
        cancel.clone(),
    ));
    if services.port.mode().has_controller() {
        crate::tasks::spawn(crate::outbox::replay::run(
            services.outbox.clone(),
            ReplaySettings {
                batch_size: config.queue.batch_size as usize,
                max_retries: config.queue.max_retries,
                retry_base: config.queue.retry_base,
                retry_max: config.queue.retry_max,
                period: config.central.check_interval,
            },
            cancel.clone(),
        ));
    }
}

/// The TFTP server, bound, with its limits.
async fn bind_tftp(
    config: &Config,
    services: &Services,
    files: Arc<BootFileResolver>,
    origin: AgentOrigin,
) -> Result<TftpServer<BootFiles>, StartError> {
    let tftp_files = BootFiles::new(services.boot.clone(), files, origin);
    Ok(
        TftpServer::bind(config.tftp.listen, config.tftp.max_sessions, tftp_files)
            .await
            .map_err(bind_error("tftp.listen", config.tftp.listen))?
            .with_limits(
                crate::serve::tftp::session::Limits {
                    max_timeout: config.tftp.max_timeout,
                    stall_timeout: config.tftp.stall_timeout,
                    ..Default::default()
                },
                config.tftp.max_sessions_per_client,
            ),
    )
}

/// Registration, probes, heartbeats and syncs with the controller.
fn spawn_link(
    config: &Config,
    services: &Services,
    status: &Arc<StatusSource>,
    agent_url: String,
    cancel: &CancellationToken,
) -> crate::link::tasks::SyncHandle {
    crate::link::tasks::spawn(
        LinkServices {
            port: services.port.clone(),
            boot: services.boot.clone(),
            outbox: services.outbox.clone(),
            status: status.clone(),
            store: services.store.clone(),
            cache: services.cache.clone(),
            policy: services.policy.clone(),
        },
        LinkSettings {
            central: config.central.clone(),
            site_id: config.site_id.clone(),
            agent_url,
            token: services.registration_token.clone(),
            templates_dir: config.templates_dir.clone(),
            config_workflows: config.workflows.keys().cloned().collect(),
        },
        cancel.clone(),
    )
}

/// Serves until `shutdown` resolves, or until a listener ends on its own
/// (its task failed), then stops in the order the module comment gives.
async fn serve_until(
    listeners: Vec<Box<dyn Listener>>,
    recorder: Option<tokio::task::JoinHandle<()>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    cancel: CancellationToken,
) {
    let stop = cancel.clone();
    crate::tasks::spawn_until_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no new requests; finishing what is in flight");
        stop.cancel();
    });
    run_listeners(listeners, &cancel).await;
    // The router (and with it the boot service) is gone: the recorder's
    // channel closes, and it writes its last batch.
    if let Some(recorder) = recorder
        && let Err(e) = recorder.await
    {
        tracing::error!(error = %e, "last-script recorder failed");
    }
    let left = crate::tasks::join(SHUTDOWN_GRACE).await;
    if left > 0 {
        tracing::warn!(
            tasks = left,
            "background tasks still running after the grace period; ended"
        );
    }
    tracing::info!("siteboot agent stopped");
}

/// Runs every listener until `cancel` is cancelled or one of them ends on
/// its own (then `cancel` is cancelled for the others); returns once all
/// have ended.
async fn run_listeners(listeners: Vec<Box<dyn Listener>>, cancel: &CancellationToken) {
    let mut running: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let protocol = listener.protocol();
            let task = crate::tasks::spawn(listener.serve(cancel.clone(), SHUTDOWN_GRACE));
            (protocol, task)
        })
        .collect();
    let first_to_end = tokio::select! {
        // A listener that ends because the stop was asked did not end on
        // its own: the stop is looked at first.
        biased;
        () = cancel.cancelled() => None,
        (ended, index, _) = futures_util::future::select_all(
            running.iter_mut().map(|(_, task)| task),
        ) => Some((index, ended)),
    };
    // Ended after the stop was asked (both were ready at once): a stop.
    let first_to_end = first_to_end.filter(|_| !cancel.is_cancelled());
    // Every listener stops: each finishes its work in flight within the
    // grace period.
    cancel.cancel();
    if let Some((index, ended)) = first_to_end {
        let (protocol, _) = running.remove(index);
        tracing::error!(protocol, "a server ended on its own; stopping the agent");
        if let Err(e) = ended {
            tracing::error!(protocol, error = %e, "server task failed");
        }
    }
    for (protocol, task) in running {
        if let Err(e) = task.await {
            tracing::error!(protocol, error = %e, "server task failed");
        }
    }
}

/// The controller port for `central.url`, and the bearer token.
fn remote_port(
    config: &Config,
    url: &str,
    store: Store,
) -> Result<(ControllerPort, Option<String>), StartError> {
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
        crate::events::publish(
            "mode",
            serde_json::json!({"mode": kind, "at": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()}),
        );
        crate::tasks::spawn(async move {
            let now = time::OffsetDateTime::now_utc();
            let _ = store
                .call(move |s| s.append_sync_log(kind, detail, now))
                .await;
        });
    });
    tracing::info!(
        url = %crate::logsafe::redact_userinfo(url),
        "central controller configured"
    );
    Ok((
        ControllerPort::remote(
            Arc::new(controller),
            monitor,
            config.site_id.clone(),
            on_transition,
        ),
        token,
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A listener that ends at once (as a failed server task would), or
    /// one that serves until stopped and records that it was.
    struct Fake {
        ends_on_its_own: bool,
        stopped: Arc<AtomicBool>,
    }

    impl Listener for Fake {
        fn protocol(&self) -> &'static str {
            "fake"
        }

        fn local_addr(&self) -> SocketAddr {
            SocketAddr::from(([127, 0, 0, 1], 0))
        }

        fn serve(
            self: Box<Self>,
            stop: CancellationToken,
            _grace: Duration,
        ) -> futures_util::future::BoxFuture<'static, ()> {
            Box::pin(async move {
                if self.ends_on_its_own {
                    return;
                }
                stop.cancelled().await;
                self.stopped.store(true, Ordering::SeqCst);
            })
        }
    }

    #[tokio::test]
    async fn a_listener_that_ends_on_its_own_stops_the_others() {
        let stopped = Arc::new(AtomicBool::new(false));
        let listeners: Vec<Box<dyn Listener>> = vec![
            Box::new(Fake {
                ends_on_its_own: false,
                stopped: stopped.clone(),
            }),
            Box::new(Fake {
                ends_on_its_own: true,
                stopped: Arc::new(AtomicBool::new(false)),
            }),
        ];
        let cancel = CancellationToken::new();
        run_listeners(listeners, &cancel).await;
        assert!(cancel.is_cancelled());
        assert!(
            stopped.load(Ordering::SeqCst),
            "the other listener was stopped"
        );
    }

    #[tokio::test]
    async fn every_listener_stops_when_the_agent_does() {
        let flags: Vec<_> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let listeners: Vec<Box<dyn Listener>> = flags
            .iter()
            .map(|stopped| {
                Box::new(Fake {
                    ends_on_its_own: false,
                    stopped: stopped.clone(),
                }) as Box<dyn Listener>
            })
            .collect();
        let cancel = CancellationToken::new();
        cancel.cancel();
        run_listeners(listeners, &cancel).await;
        assert!(flags.iter().all(|f| f.load(Ordering::SeqCst)));
    }
}
