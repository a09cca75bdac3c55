//! What every HTTP handler shares.

use std::sync::Arc;

use crate::boot::BootService;
use crate::central::port::ControllerPort;
use crate::serve::fsroot::ServedRoot;
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
    pub roots: Arc<Vec<ServedRoot>>,
    pub public_url: Option<String>,
    pub admin_token: String,
    /// Present when a controller is configured.
    pub sync: Option<crate::link::tasks::SyncHandle>,
    /// The content cache: present when a controller is configured.
    pub cache: Option<Arc<crate::content::ContentCache>>,
    /// `GET /metrics` needs no admin token (`metrics.open`).
    pub metrics_open: bool,
}
