//! The controller link's background work: registration, connectivity
//! probes, heartbeats (and the commands they bring back), node sync.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use tokio_util::sync::CancellationToken;

use super::sync::{self, SyncReport};
use crate::boot::BootService;
use crate::boot::lookup::LookupError;
use crate::central::CentralError;
use crate::central::api::{Command, Heartbeat, Registration, ServiceHealth, ServicesStatus};
use crate::central::port::ControllerPort;
use crate::config::CentralConfig;
use crate::model::mac::Mac;
use crate::model::mode::Mode;
use crate::outbox::Outbox;
use crate::status::StatusSource;
use crate::store::Store;

pub const META_REGISTRATION: &str = "registration";

/// What the tasks need besides the link and the boot service.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub central: CentralConfig,
    pub site_id: String,
    pub agent_url: String,
    /// The registration body's `token`.
    pub token: Option<String>,
    pub templates_dir: PathBuf,
    /// Ids of the workflows the agent's config defines (`[workflows.<id>]`).
    pub config_workflows: std::collections::BTreeSet<String>,
}

/// The services the tasks act on.
pub struct LinkServices {
    pub port: Arc<ControllerPort>,
    pub boot: Arc<BootService>,
    pub outbox: Arc<Outbox>,
    pub status: Arc<StatusSource>,
    pub store: Store,
    /// Files to prefetch after each sync (DESIGN §12).
    pub cache: Option<Arc<crate::content::ContentCache>>,
    /// The site policy in force, refreshed from the controller (§15).
    pub policy: Arc<crate::policy::PolicyCell>,
}

type SyncRequest = (
    bool,
    Option<oneshot::Sender<Result<SyncReport, LookupError>>>,
);

/// Asks the sync task for a sync (admin API, heartbeat commands).
#[derive(Clone)]
pub struct SyncHandle {
    tx: mpsc::Sender<SyncRequest>,
}

impl SyncHandle {
    /// Runs a sync now and returns its report.
    pub async fn sync_now(&self, full: bool) -> Result<SyncReport, LookupError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((full, Some(tx)))
            .await
            .map_err(|_| LookupError::Local("sync task stopped".into()))?;
        rx.await
            .map_err(|_| LookupError::Local("sync task stopped".into()))?
    }

    fn request(&self, full: bool) {
        let _ = self.tx.try_send((full, None));
    }
}

struct Tasks {
    services: LinkServices,
    settings: LinkSettings,
    shutdown: CancellationToken,
    registered: AtomicBool,
    /// Woken by each successful registration (for the first heartbeat).
    registered_now: tokio::sync::Notify,
    heartbeat_secs: AtomicU64,
    sync: SyncHandle,
    /// Workflow ids last reported as missing (reported again on change).
    unrenderable: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// Starts the background tasks (joined at shutdown, `crate::tasks`); they
/// end when `shutdown` is cancelled. Returns the handle for on-demand
/// syncs.
pub fn spawn(
    services: LinkServices,
    settings: LinkSettings,
    shutdown: CancellationToken,
) -> SyncHandle {
    let (tx, rx) = mpsc::channel(16);
    let sync = SyncHandle { tx };
    let tasks = Arc::new(Tasks {
        heartbeat_secs: AtomicU64::new(settings.central.heartbeat_interval.as_secs().max(1)),
        services,
        settings,
        shutdown,
        registered: AtomicBool::new(false),
        registered_now: tokio::sync::Notify::new(),
        sync: sync.clone(),
        unrenderable: Default::default(),
    });
    crate::tasks::spawn(tasks.clone().probe_loop());
    crate::tasks::spawn(tasks.clone().heartbeat_loop());
    crate::tasks::spawn(tasks.sync_loop(rx));
    sync
}

impl Tasks {
    fn log(&self, kind: &'static str, detail: String) {
        let store = self.services.store.clone();
        crate::tasks::spawn(async move {
            let now = OffsetDateTime::now_utc();
            if let Err(e) = store
                .call(move |s| s.append_sync_log(kind, &detail, now))
                .await
            {
                tracing::warn!(error = %e, "cannot write the sync log");
            }
        });
    }

    async fn register(&self) -> Result<(), CentralError> {
        let request = Registration {
            site_id: self.settings.site_id.clone(),
            token: self.settings.token.clone().unwrap_or_default(),
            agent_url: self.settings.agent_url.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            capabilities: vec![
                "tftp".into(),
                "http".into(),
                "ipxe".into(),
                "node_cache".into(),
            ],
        };
        let reply = self.services.port.register_agent(&request).await?;
        if let Some(secs) = reply.config.heartbeat_interval.filter(|s| *s > 0) {
            self.heartbeat_secs.store(secs, Ordering::Relaxed);
        }
        let said = serde_json::Value::Object(reply.config.rest.clone());
        self.take_policy(&said, "registration").await;
        self.refresh_site_record().await;
        self.registered.store(true, Ordering::Relaxed);
        self.registered_now.notify_one();
        let record = serde_json::json!({
            "registered_at": OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "config": reply.config,
        })
        .to_string();
        let store = self.services.store.clone();
        if let Err(e) = store
            .call(move |s| s.put_meta(&[(META_REGISTRATION, &record)]))
            .await
        {
            tracing::warn!(error = %e, "cannot persist the registration");
        }
        tracing::info!(site_id = %self.settings.site_id, "registered at the controller");
        self.log(
            "registered",
            format!(
                "heartbeat every {}s",
                self.heartbeat_secs.load(Ordering::Relaxed)
            ),
        );
        Ok(())
    }

    /// DESIGN §15: the site policy the controller sent, taken under the
    /// local pins; a change goes to the sync log too.
    async fn take_policy(&self, said: &serde_json::Value, from: &'static str) {
        let said = crate::model::policy::ControllerPolicy::read(said);
        let changed = self
            .services
            .policy
            .take(&self.services.store, &said, from)
            .await;
        if !changed.is_empty() {
            let now = crate::policy::status_json(&self.services.policy.current());
            let shown: Vec<String> = changed
                .iter()
                .map(|name| format!("{name}={}", now[name.as_str()]["value"]))
                .collect();
            self.log("policy", format!("from the {from}: {}", shown.join(", ")));
        }
    }

    /// The site record, where the controller keeps one (PureBoot: the
    /// conflict strategy and cache patterns live only there). A failure
    /// keeps the policy in force; the next registration or full sync
    /// tries again.
    async fn refresh_site_record(&self) {
        match self.services.port.site_record().await {
            Ok(Some(record)) => self.take_policy(&record, "site record").await,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "site record not read; the policy in force stays"),
        }
    }

    /// Held by an operator (DESIGN §15): scheduled syncs are skipped.
    fn paused(&self) -> bool {
        self.services.outbox.pause().is_paused()
    }

    async fn ensure_registered(&self) {
        if self.registered.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.register().await {
            tracing::warn!(error = %e, "registration failed; will retry");
        }
    }

    async fn probe_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.settings.central.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let _ = self.services.port.health().await;
            if self.services.port.mode() == Mode::Online {
                self.ensure_registered().await;
            }
        }
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        loop {
            let secs = self.heartbeat_secs.load(Ordering::Relaxed);
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
                // The first heartbeat goes out right after registration
                // (DESIGN §6), then one every interval the controller set.
                _ = self.registered_now.notified() => {}
            }
            // Registration is the probe loop's (and a refused heartbeat's):
            // until it succeeds there is nobody to beat to.
            if self.services.port.mode() != Mode::Online || !self.registered.load(Ordering::Relaxed)
            {
                continue;
            }
            let heartbeat = self.heartbeat().await;
            match self.services.port.heartbeat(&heartbeat).await {
                Ok(reply) => {
                    for command in reply.commands {
                        self.execute(command).await;
                    }
                }
                // The controller no longer knows this agent (restarted, or
                // its state was reset): register again.
                Err(e) if matches!(e.status(), Some(401 | 404)) => {
                    tracing::warn!(error = %e, "heartbeat refused; registering again");
                    self.registered.store(false, Ordering::Relaxed);
                    self.ensure_registered().await;
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }

    /// The heartbeat, from the same snapshot as `/api/v1/status`.
    pub async fn heartbeat(&self) -> Heartbeat {
        let snapshot = self.services.status.snapshot().await;
        Heartbeat {
            site_id: self.settings.site_id.clone(),
            timestamp: snapshot
                .taken_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: snapshot.uptime.as_secs(),
            services: ServicesStatus {
                tftp: ServiceHealth::Ok,
                http: ServiceHealth::Ok,
            },
            nodes_seen_last_hour: snapshot.nodes_seen_last_hour,
            active_boots: snapshot.active_boots,
            cache_hit_rate: snapshot.cache_hit_rate,
            disk_usage_percent: snapshot.disk_usage_percent,
            pending_sync_items: snapshot.pending_sync_items(),
            failed_sync_items: snapshot.failed_sync_items(),
            last_sync_at: snapshot.last_sync_at.clone(),
            conflicts_pending: snapshot.conflicts_pending,
            last_offline_duration_seconds: snapshot.last_outage().map(|d| d.as_secs()),
        }
    }

    async fn execute(&self, command: Command) {
        tracing::info!(command = %command.command, params = %command.params, "controller command");
        let detail = format!("{} {}", command.command, command.params);
        match command.command.as_str() {
            "sync" => {
                let full = command
                    .params
                    .get("full")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                self.sync.request(full);
            }
            "invalidate" => match command.params.get("mac").and_then(|v| v.as_str()) {
                Some(text) => match text.parse::<Mac>() {
                    Ok(mac) => self.services.boot.refresh(mac).await,
                    Err(e) => tracing::warn!(error = %e, "invalidate: bad MAC"),
                },
                None => {
                    self.services.boot.invalidate(None);
                    self.sync.request(true);
                }
            },
            "reload_templates" => {
                if let Err(e) = self
                    .services
                    .boot
                    .reload_templates(&self.settings.templates_dir)
                {
                    tracing::error!(error = %e, "reload_templates failed; keeping the loaded templates");
                }
            }
            other => tracing::warn!(command = other, "unknown controller command ignored"),
        }
        self.log("command", detail);
    }

    async fn sync_loop(self: Arc<Self>, mut requests: mpsc::Receiver<SyncRequest>) {
        let Some(mut online) = self.services.port.subscribe() else {
            return;
        };
        // First full sync as soon as the controller is reachable.
        tokio::select! {
            _ = self.shutdown.cancelled() => return,
            _ = online.wait_for(|s| s.online) => {}
        }
        self.ensure_registered().await;
        if !self.paused() {
            self.sync_once(true).await.ok();
        }
        let mut full_tick = tokio::time::interval(self.settings.central.sync_interval);
        full_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        full_tick.tick().await;
        let mut incremental_tick = tokio::time::interval(self.settings.central.check_interval);
        incremental_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        incremental_tick.tick().await;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                request = requests.recv() => {
                    let Some((full, reply)) = request else { return };
                    let result = self.sync_once(full).await;
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                _ = full_tick.tick() => {
                    if self.services.port.mode() == Mode::Online && !self.paused() {
                        self.sync_once(true).await.ok();
                    }
                }
                _ = incremental_tick.tick() => {
                    // Without a cursor (PureBoot's central gives none)
                    // only the full syncs run.
                    if self.services.port.mode() == Mode::Online
                        && !self.paused()
                        && sync::has_cursor(self.services.outbox.nodes()).await
                    {
                        self.sync_once(false).await.ok();
                    }
                }
            }
        }
    }

    /// Says (log and sync log, once per change) which workflow ids the
    /// controller's nodes reference that neither the controller listed nor
    /// the config defines: those nodes cannot install here.
    async fn report_unrenderable(&self) {
        let nodes = self.services.outbox.nodes().all();
        let referenced: std::collections::BTreeSet<String> = nodes
            .iter()
            .filter_map(|n| n.workflow_id.clone())
            .filter(|id| !self.settings.config_workflows.contains(id))
            .collect();
        let store = self.services.outbox.nodes().store().clone();
        let missing = store
            .call(move |s| {
                let mut missing = std::collections::BTreeSet::new();
                for id in referenced {
                    if s.get_workflow(&id)?.is_none() {
                        missing.insert(id);
                    }
                }
                Ok(missing)
            })
            .await
            .unwrap_or_default();
        let mut reported = self.unrenderable.lock().unwrap_or_else(|e| e.into_inner());
        if *reported == missing {
            return;
        }
        if !missing.is_empty() {
            let ids: Vec<&str> = missing.iter().map(String::as_str).collect();
            tracing::warn!(workflows = %ids.join(", "),
                "the controller's nodes reference workflows this agent cannot render \
                 (the controller lists none by these ids and the config defines none)");
            self.log("workflows_missing", ids.join(", "));
        }
        *reported = missing;
    }

    /// DESIGN §12, §15: after a sync, files unused past the retention are
    /// evicted, and the files the cache policy wants are fetched into the
    /// content cache in the background.
    async fn prefetch(&self) {
        let Some(cache) = self.services.cache.clone() else {
            return;
        };
        // Retention (DESIGN §15) first: what expired is not counted
        // against the room the prefetch needs.
        cache.expire_unused(OffsetDateTime::now_utc()).await;
        let workflows = self.services.boot.all_workflows().await;
        let nodes = self.services.outbox.nodes().all();
        let wanted = cache.wanted(&workflows, &nodes);
        if wanted.is_empty() {
            return;
        }
        crate::tasks::spawn_until_shutdown(async move {
            cache.prefetch(wanted).await;
        });
    }

    async fn sync_once(&self, full: bool) -> Result<SyncReport, LookupError> {
        if self.services.outbox.pause().is_paused() {
            return Err(LookupError::Local(
                "sync is paused by an operator (POST /api/v1/sync/resume, or \
                 `siteboot sync resume`)"
                    .into(),
            ));
        }
        let protected = self
            .services
            .outbox
            .queue()
            .call(|q| q.nodes_with_changes())
            .await
            .map_err(|e| LookupError::Local(e.to_string()))?
            .iter()
            .filter_map(|mac| mac.parse::<Mac>().ok())
            .collect();
        let result = sync::run(
            &self.services.port,
            self.services.outbox.nodes(),
            full,
            &protected,
        )
        .await;
        match &result {
            Ok(report) => {
                if report.changed > 0 || report.marked_missing > 0 {
                    self.services.boot.invalidate(None);
                }
                if report.full {
                    self.report_unrenderable().await;
                    self.refresh_site_record().await;
                }
                self.prefetch().await;
                if !report.unlisted_with_changes.is_empty() {
                    let opened = self
                        .services
                        .outbox
                        .confirm_missing(report.unlisted_with_changes.clone())
                        .await;
                    if opened > 0 {
                        self.services.boot.invalidate(None);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(full, error = %e, "node sync failed");
                self.log("sync_failed", format!("full={full}: {e}"));
            }
        }
        result
    }
}
