//! What every HTTP handler shares.

use std::sync::Arc;

use crate::boot::BootService;
use crate::central::port::ControllerPort;
use crate::serve::bootfiles::BootFileResolver;
use crate::serve::origin::AgentOrigin;
use crate::status::StatusSource;
use crate::store::Store;
use crate::store::nodes::NodeCache;

/// What the HTTP handlers reach: the services, never the raw store
/// tables.
pub struct AppState {
    pub boot: Arc<BootService>,
    pub port: Arc<ControllerPort>,
    pub outbox: Arc<crate::outbox::Outbox>,
    pub nodes: NodeCache,
    /// The sync log.
    pub store: Store,
    pub status: Arc<StatusSource>,
    /// Where `/assets` paths are found (the same as for TFTP).
    pub files: Arc<BootFileResolver>,
    /// The agent's own URL, for the scripts.
    pub origin: AgentOrigin,
    pub admin_token: String,
    /// The queue's, conflicts' and content cache's admin operations.
    pub admin: Arc<crate::admin::LiveAdmin>,
    /// Present when a controller is configured.
    pub sync: Option<crate::link::tasks::SyncHandle>,
    /// `GET /metrics` needs no admin token (`metrics.open`).
    pub metrics_open: bool,
}
