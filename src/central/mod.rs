//! The central controller as the rest of the agent sees it (DESIGN §6):
//! one port ([`port::ControllerPort`]) that every controller call goes
//! through, which counts each outcome towards connectivity and tells the
//! agent's [`Mode`](crate::model::mode::Mode). Behind it, a [`Controller`]
//! implementation: the HTTP client of a real controller ([`client`]), or,
//! standalone, the local store in the controller's place ([`local`]).
//!
//! Seams: the controller's dialect (field names, timestamps, what a real
//! controller answers) is read and written in [`api`] and [`client`]; the
//! versions a change was made against travel in
//! [`api::StateChange::base_version`], compared where [`port`] sends
//! [`ops::Operation`]s.

pub mod api;
pub mod client;
pub mod local;
pub mod monitor;
pub mod ops;
pub mod port;

use std::future::Future;
use std::pin::Pin;

use crate::model::mac::Mac;
use crate::model::node::Node;
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
    /// Standalone: the local store, in the controller's place, failed.
    #[error("local store: {0}")]
    Local(String),
    /// Standalone: the local store cannot write now (a full disk); the
    /// write may succeed later.
    #[error("local store cannot write now: {0}")]
    LocalUnwritable(String),
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

/// 4xx answers that say "not now" rather than "never".
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 401 | 403 | 408 | 429)
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
    /// The site's record (`GET /api/v1/sites/{id}`, PureBoot's), its
    /// `data` object; `Ok(None)`: the controller has none (404), or is no
    /// controller at all (standalone).
    fn site_record(
        &self,
        _site_id: &str,
    ) -> BoxFuture<'_, Result<Option<serde_json::Value>, CentralError>> {
        Box::pin(async { Ok(None) })
    }
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
        mac: Mac,
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
    /// A file of the controller's (`GET /api/v1/files/{path}`), streamed,
    /// from `request.from` if the controller takes a Range.
    fn fetch_file(
        &self,
        path: &str,
        request: FileRequest,
    ) -> BoxFuture<'_, Result<FileAnswer, CentralError>>;
}

/// What to ask of a controller's file.
#[derive(Debug, Clone, Default)]
pub struct FileRequest {
    /// Resume at this byte (`Range: bytes=<from>-`); 0: the whole file.
    pub from: u64,
    /// Revalidation: `If-None-Match` with the validator kept.
    pub if_none_match: Option<String>,
}

/// The controller's answer for a file.
pub enum FileAnswer {
    /// It has no such file (404).
    Missing,
    /// Unchanged since the validator given (304).
    NotModified,
    Body(RemoteFile),
}

/// A file being streamed from the controller.
pub struct RemoteFile {
    /// Where the body starts in the file: the requested `from` if the
    /// controller answered the Range (206), else 0.
    pub offset: u64,
    /// The whole file's length, if the controller says (Content-Length
    /// of a 200, the total of a 206's Content-Range).
    pub total: Option<u64>,
    /// `X-Checksum-SHA256`: lowercase hex, as sent.
    pub sha256: Option<String>,
    /// `ETag`, for revalidation.
    pub etag: Option<String>,
    pub body: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send>,
    >,
}
