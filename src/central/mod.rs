//! The link to the central controller (DESIGN §6): the [`Controller`]
//! trait the rest of the agent depends on, and its HTTP implementation.

pub mod api;
pub mod client;
pub mod link;
pub mod sync;
pub mod tasks;

use std::future::Future;
use std::pin::Pin;

use crate::mac::Mac;
use crate::node::Node;
use api::{
    Heartbeat, HeartbeatReply, NewNode, NodePage, NodeReport, Registration, RegistrationReply,
    StateChange,
};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a controller call failed. The three cases are handled differently:
/// only `Unreachable` is evidence that the controller is down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CentralError {
    #[error("controller unreachable: {0}")]
    Unreachable(String),
    #[error("controller answered {status}: {body}")]
    Rejected { status: u16, body: String },
    #[error("controller answered garbage: {0}")]
    Garbage(String),
}

impl CentralError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CentralError::Unreachable(_))
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            CentralError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What the agent needs from a controller.
pub trait Controller: Send + Sync + 'static {
    fn health(&self) -> BoxFuture<'_, Result<(), CentralError>>;
    fn register(
        &self,
        request: &Registration,
    ) -> BoxFuture<'_, Result<RegistrationReply, CentralError>>;
    fn heartbeat(
        &self,
        heartbeat: &Heartbeat,
    ) -> BoxFuture<'_, Result<HeartbeatReply, CentralError>>;
    fn site_nodes(
        &self,
        site_id: &str,
        since: Option<&str>,
    ) -> BoxFuture<'_, Result<NodePage, CentralError>>;
    /// `Ok(None)`: the controller does not know the MAC.
    fn node_by_mac(&self, mac: Mac) -> BoxFuture<'_, Result<Option<Node>, CentralError>>;
    /// Registers a node; an existing one (409) is fetched and returned.
    /// `idempotency_key` is sent with replayed (and replayable) writes.
    fn create_node(
        &self,
        request: &NewNode,
        idempotency_key: Option<&str>,
    ) -> BoxFuture<'_, Result<Node, CentralError>>;
    /// `PATCH /api/v1/nodes/{id}/state`; the controller's node comes back.
    fn set_state(
        &self,
        node_id: &str,
        change: &StateChange,
        idempotency_key: &str,
    ) -> BoxFuture<'_, Result<Node, CentralError>>;
    /// `POST /api/v1/report`.
    fn report(
        &self,
        report: &NodeReport,
        idempotency_key: &str,
    ) -> BoxFuture<'_, Result<(), CentralError>>;
    /// A file of the controller's (`GET /api/v1/files/{path}`), streamed;
    /// `Ok(None)` if it has no such file.
    fn fetch_file(&self, path: &str) -> BoxFuture<'_, Result<Option<RemoteFile>, CentralError>>;
}

/// A file being streamed from the controller.
pub struct RemoteFile {
    pub length: Option<u64>,
    /// `X-Checksum-SHA256`, passed on to the node.
    pub sha256: Option<String>,
    pub body: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send>,
    >,
}
