//! The one controller port: every controller call of the agent goes
//! through [`ControllerPort`], which records the call's outcome with the
//! connectivity monitor itself (a caller cannot forget to), and which is
//! the one place that knows the agent's [`Mode`].

use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::watch;

use super::api::{Heartbeat, HeartbeatReply, NodePage, Registration, RegistrationReply};
use super::local::LocalController;
use super::monitor::{LinkState, Monitor, Transition};
use super::ops::Operation;
use super::{CentralError, Controller, FileAnswer, FileRequest};
use crate::model::mac::Mac;
use crate::model::mode::Mode;
use crate::model::node::Node;
use crate::store::nodes::NodeCache;

/// Called with each connectivity transition (the sync log records them).
pub type OnTransition = Box<dyn Fn(Transition) + Send + Sync>;

pub struct ControllerPort {
    controller: Arc<dyn Controller>,
    /// None: standalone; the controller is the local store, always there.
    link: Option<Link>,
    site_id: String,
}

struct Link {
    monitor: Monitor,
    on_transition: OnTransition,
}

impl ControllerPort {
    /// No controller configured: the local store takes its place.
    pub fn standalone(nodes: NodeCache, site_id: String, max_discovered: usize) -> ControllerPort {
        ControllerPort {
            controller: Arc::new(LocalController::new(nodes, max_discovered)),
            link: None,
            site_id,
        }
    }

    /// A remote controller, reachable or not as `monitor` judges.
    pub fn remote(
        controller: Arc<dyn Controller>,
        monitor: Monitor,
        site_id: String,
        on_transition: OnTransition,
    ) -> ControllerPort {
        ControllerPort {
            controller,
            link: Some(Link {
                monitor,
                on_transition,
            }),
            site_id,
        }
    }

    pub fn site_id(&self) -> &str {
        &self.site_id
    }

    pub fn mode(&self) -> Mode {
        match &self.link {
            None => Mode::Standalone,
            Some(link) => {
                let state = link.monitor.state();
                match state.offline_since {
                    None if state.online => Mode::Online,
                    since => Mode::Offline {
                        since: since.unwrap_or_else(OffsetDateTime::now_utc),
                    },
                }
            }
        }
    }

    /// Reachability in detail (None standalone).
    pub fn link_state(&self) -> Option<LinkState> {
        self.link.as_ref().map(|l| l.monitor.state())
    }

    /// Every connectivity change (None standalone: there are none).
    pub fn subscribe(&self) -> Option<watch::Receiver<LinkState>> {
        self.link.as_ref().map(|l| l.monitor.subscribe())
    }

    /// Counts a call's outcome as a probe: only unreachability is failure.
    /// Records a call's outcome with the connectivity monitor and in the
    /// metrics (by call, with its time since `started`).
    fn observe_call<T>(
        &self,
        call: &'static str,
        started: std::time::Instant,
        result: Result<T, CentralError>,
    ) -> Result<T, CentralError> {
        let counters = crate::metrics::metrics();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) if e.is_unreachable() => "unreachable",
            Err(CentralError::Rejected { .. }) => "rejected",
            Err(_) => "error",
        };
        counters.controller_call(call, outcome, started.elapsed().as_secs_f64());
        self.observe(result)
    }

    fn observe<T>(&self, result: Result<T, CentralError>) -> Result<T, CentralError> {
        if let Some(link) = &self.link {
            let reachable = !matches!(&result, Err(e) if e.is_unreachable());
            if let Some(transition) = link.monitor.record(reachable, OffsetDateTime::now_utc()) {
                (link.on_transition)(transition);
            }
        }
        result
    }

    pub async fn health(&self) -> Result<(), CentralError> {
        let started = std::time::Instant::now();
        self.observe_call("health", started, self.controller.health().await)
    }

    pub async fn register_agent(
        &self,
        request: &Registration,
    ) -> Result<RegistrationReply, CentralError> {
        let started = std::time::Instant::now();
        self.observe_call(
            "register_agent",
            started,
            self.controller.register(request).await,
        )
    }

    pub async fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<HeartbeatReply, CentralError> {
        let started = std::time::Instant::now();
        self.observe_call(
            "heartbeat",
            started,
            self.controller.heartbeat(heartbeat).await,
        )
    }

    pub async fn site_nodes(&self, since: Option<&str>) -> Result<NodePage, CentralError> {
        let started = std::time::Instant::now();
        self.observe_call(
            "site_nodes",
            started,
            self.controller.site_nodes(&self.site_id, since).await,
        )
    }

    /// The site's record at the controller, if it keeps one (DESIGN §6,
    /// §15: where PureBoot keeps the conflict strategy and cache patterns).
    pub async fn site_record(&self) -> Result<Option<serde_json::Value>, CentralError> {
        let started = std::time::Instant::now();
        self.observe_call(
            "site_record",
            started,
            self.controller.site_record(&self.site_id).await,
        )
    }

    /// The controller's record of `mac`; `Ok(None)` if it has none. The
    /// MAC of what comes back is checked: a controller's answer for
    /// another machine is never taken for this one.
    pub async fn node_by_mac(&self, mac: Mac) -> Result<Option<Node>, CentralError> {
        let started = std::time::Instant::now();
        let found = self.observe_call(
            "node_by_mac",
            started,
            self.controller.node_by_mac(mac).await,
        )?;
        match found {
            Some(node) if node.mac != mac => Err(CentralError::Garbage(format!(
                "asked for {mac}, got node {}",
                node.mac
            ))),
            found => Ok(found),
        }
    }

    /// Sends one write for node `mac` with its idempotency key. A
    /// registration or a state change returns the controller's record of
    /// the node; a report returns nothing.
    pub async fn send(
        &self,
        mac: Mac,
        operation: &Operation,
        idempotency_key: &str,
    ) -> Result<Option<Node>, CentralError> {
        let controller = &self.controller;
        let started = std::time::Instant::now();
        let result = match operation {
            Operation::Register { request, .. } => controller
                .create_node(request, Some(idempotency_key))
                .await
                .map(Some),
            Operation::SetState {
                node_id, change, ..
            } => controller
                .set_state(mac, node_id, change, idempotency_key)
                .await
                .map(Some),
            Operation::Report { report, .. } => controller
                .report(report, idempotency_key)
                .await
                .map(|()| None),
        };
        let node = self.observe_call(operation.name(), started, result)?;
        match node {
            Some(node) if node.mac != mac => Err(CentralError::Garbage(format!(
                "a write for {mac} answered with node {}",
                node.mac
            ))),
            node => Ok(node),
        }
    }

    /// A file of the controller's (standalone: never there).
    pub async fn fetch_file(
        &self,
        path: &str,
        request: FileRequest,
    ) -> Result<FileAnswer, CentralError> {
        let started = std::time::Instant::now();
        self.observe_call(
            "fetch_file",
            started,
            self.controller.fetch_file(path, request).await,
        )
    }
}
