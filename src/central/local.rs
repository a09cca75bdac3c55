//! Standalone, the local store stands in the controller's place (DESIGN
//! §4): the same port, so boots and writes take one path whether or not a
//! controller is configured. Writes are applied to the node store at once;
//! nothing is ever unreachable, so nothing is ever queued.

use time::OffsetDateTime;

use super::api::{
    Heartbeat, HeartbeatReply, NewNode, NodePage, NodeReport, Registration, RegistrationReply,
    StateChange,
};
use super::{BoxFuture, CentralError, Controller, FileAnswer, FileRequest};
use crate::model::boot::{BootFacts, discovered_node};
use crate::model::mac::Mac;
use crate::model::node::Node;
use crate::store::StoreError;
use crate::store::nodes::NodeCache;

pub struct LocalController {
    nodes: NodeCache,
    /// Discovered, never-assigned nodes kept at most (`nodes.max_discovered`).
    max_discovered: usize,
}

impl LocalController {
    pub fn new(nodes: NodeCache, max_discovered: usize) -> LocalController {
        LocalController {
            nodes,
            max_discovered,
        }
    }
}

fn local(e: StoreError) -> CentralError {
    if e.is_io() {
        CentralError::LocalUnwritable(e.to_string())
    } else {
        CentralError::Local(e.to_string())
    }
}

fn no_such_node(mac: Mac) -> CentralError {
    CentralError::Rejected {
        status: 404,
        body: format!("no node with MAC {mac}"),
    }
}

impl Controller for LocalController {
    fn health(&self) -> BoxFuture<'_, Result<(), CentralError>> {
        Box::pin(async { Ok(()) })
    }

    fn register(&self, _: &Registration) -> BoxFuture<'_, Result<RegistrationReply, CentralError>> {
        Box::pin(async {
            Ok(RegistrationReply {
                success: true,
                message: None,
                config: Default::default(),
            })
        })
    }

    fn heartbeat(&self, _: &Heartbeat) -> BoxFuture<'_, Result<HeartbeatReply, CentralError>> {
        Box::pin(async {
            Ok(HeartbeatReply {
                acknowledged: true,
                server_time: None,
                commands: Vec::new(),
            })
        })
    }

    /// The store is the cache: there is nothing to sync from.
    fn site_nodes(
        &self,
        _: &str,
        _: Option<&str>,
    ) -> BoxFuture<'_, Result<NodePage, CentralError>> {
        Box::pin(async {
            Ok(NodePage {
                data: Vec::new(),
                workflows: Vec::new(),
                cursor: None,
            })
        })
    }

    fn node_by_mac(&self, mac: Mac) -> BoxFuture<'_, Result<Option<Node>, CentralError>> {
        let found = self.nodes.get(mac).map(|n| (*n).clone());
        Box::pin(async move { Ok(found) })
    }

    /// Stores the MAC as `discovered` (an existing node is returned as it
    /// is, like a controller's 409).
    fn create_node(
        &self,
        request: &NewNode,
        _: Option<&str>,
    ) -> BoxFuture<'_, Result<Node, CentralError>> {
        let mac = request.mac_address.parse::<Mac>();
        let facts = BootFacts {
            arch: request.arch.clone(),
            ..BootFacts::default()
        };
        Box::pin(async move {
            let mac = mac.map_err(|e| CentralError::Rejected {
                status: 400,
                body: e.to_string(),
            })?;
            let stored = self
                .nodes
                .insert_discovered(discovered_node(mac, &facts), self.max_discovered)
                .await
                .map_err(local)?;
            Ok((*stored).clone())
        })
    }

    fn set_state(
        &self,
        mac: Mac,
        _: &str,
        change: &StateChange,
        _: &str,
    ) -> BoxFuture<'_, Result<Node, CentralError>> {
        let state = change.state;
        Box::pin(async move {
            if self.nodes.get(mac).is_none() {
                return Err(no_such_node(mac));
            }
            let stored = self
                .nodes
                .update(mac, move |n| {
                    n.change_state(state, OffsetDateTime::now_utc());
                })
                .await
                .map_err(local)?;
            Ok((*stored).clone())
        })
    }

    /// A report that implies a state moves a known node there, if the
    /// installer may (DESIGN §10); one that may not is refused with 409.
    /// Other reports (and reports for unknown MACs) change nothing.
    fn report(&self, report: &NodeReport, _: &str) -> BoxFuture<'_, Result<(), CentralError>> {
        let target = report.implied_state();
        let mac = report.mac_address.parse::<Mac>().ok();
        let event = report.effective_event().unwrap_or("").to_string();
        Box::pin(async move {
            let (Some(to), Some(mac)) = (target, mac) else {
                return Ok(());
            };
            let Some(node) = self.nodes.get(mac) else {
                return Ok(());
            };
            if !node.state.installer_may_move_to(to) {
                return Err(CentralError::Rejected {
                    status: 409,
                    body: format!(
                        "node {mac} is {}: an installer's {event} report cannot move it to {to} \
                         (installers move pending/reprovision → installing → installed/install_failed, \
                         installed → active; an operator changes the rest)",
                        node.state
                    ),
                });
            }
            self.nodes
                .update(mac, move |n| n.change_state(to, OffsetDateTime::now_utc()))
                .await
                .map_err(local)?;
            Ok(())
        })
    }

    fn fetch_file(
        &self,
        _: &str,
        _: FileRequest,
    ) -> BoxFuture<'_, Result<FileAnswer, CentralError>> {
        Box::pin(async { Ok(FileAnswer::Missing) })
    }
}
