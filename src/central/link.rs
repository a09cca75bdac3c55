//! The agent's live link to its controller: reachability (every call is
//! also a probe), and node lookups for boot requests that are bounded by
//! `central.boot_lookup_deadline` and coalesced per MAC.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use super::api::NewNode;
use super::{CentralError, Controller};
use crate::boot::BootFacts;
use crate::connectivity::{Monitor, Transition};
use crate::mac::Mac;
use crate::node::Node;
use crate::nodes::NodeCache;
use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Central(#[from] CentralError),
    #[error("node store: {0}")]
    Store(String),
}

impl From<StoreError> for LookupError {
    fn from(e: StoreError) -> Self {
        LookupError::Store(e.to_string())
    }
}

pub type Resolved = Result<Arc<Node>, LookupError>;

pub struct CentralLink {
    controller: Arc<dyn Controller>,
    monitor: Monitor,
    site_id: String,
    deadline: Duration,
    inflight: Mutex<HashMap<Mac, watch::Receiver<Option<Resolved>>>>,
    /// Called with each connectivity transition (for the sync log).
    on_transition: Box<dyn Fn(Transition) + Send + Sync>,
}

impl CentralLink {
    pub fn new(
        controller: Arc<dyn Controller>,
        monitor: Monitor,
        site_id: String,
        deadline: Duration,
        on_transition: Box<dyn Fn(Transition) + Send + Sync>,
    ) -> CentralLink {
        CentralLink {
            controller,
            monitor,
            site_id,
            deadline,
            inflight: Mutex::new(HashMap::new()),
            on_transition,
        }
    }

    pub fn controller(&self) -> &dyn Controller {
        self.controller.as_ref()
    }

    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    pub fn site_id(&self) -> &str {
        &self.site_id
    }

    /// Counts a call's outcome as a probe: only unreachability is failure.
    pub fn observe<T>(&self, result: Result<T, CentralError>) -> Result<T, CentralError> {
        let reachable = !matches!(&result, Err(e) if e.is_unreachable());
        if let Some(transition) = self.monitor.record(reachable, OffsetDateTime::now_utc()) {
            (self.on_transition)(transition);
        }
        result
    }

    /// The controller's current record of `mac` (registering it if the
    /// controller does not know it), written through to the cache. `None`
    /// when the deadline passed first; the lookup then finishes in the
    /// background and still updates the cache. Concurrent calls for one
    /// MAC share one controller call.
    pub async fn resolve(
        self: &Arc<Self>,
        mac: Mac,
        facts: &BootFacts,
        nodes: &NodeCache,
    ) -> Option<Resolved> {
        let mut rx = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get(&mac) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(mac, rx.clone());
                    let link = self.clone();
                    let nodes = nodes.clone();
                    let facts = facts.clone();
                    tokio::spawn(async move {
                        let outcome = link.fetch(mac, &facts, &nodes).await;
                        if let Err(e) = &outcome {
                            tracing::warn!(%mac, error = %e, "controller lookup failed");
                        }
                        let _ = tx.send(Some(outcome));
                        link.inflight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&mac);
                    });
                    rx
                }
            }
        };
        let waited = tokio::time::timeout(self.deadline, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(value)) => value.clone(),
            // Deadline passed, or the lookup task died (it logs why).
            _ => None,
        }
    }

    async fn fetch(&self, mac: Mac, facts: &BootFacts, nodes: &NodeCache) -> Resolved {
        let found = self.observe(self.controller.node_by_mac(mac).await)?;
        let node = match found {
            Some(node) => node,
            None => {
                let request = NewNode::from_facts(mac, facts, &self.site_id);
                let created = self.observe(self.controller.create_node(&request, None).await)?;
                tracing::info!(%mac, id = %created.id, "new node registered at the controller");
                created
            }
        };
        if node.mac != mac {
            return Err(
                CentralError::Garbage(format!("asked for {mac}, got node {}", node.mac)).into(),
            );
        }
        Ok(nodes.upsert_central(node).await?)
    }
}
