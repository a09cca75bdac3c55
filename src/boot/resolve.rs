//! Resolving a booting MAC to the node record its answer is decided from,
//! and to where that record came from (DESIGN §1, §4): standalone the
//! local store; online the controller's live record if it comes within
//! `central.boot_lookup_deadline`, else the cache (the lookup finishes in
//! the background and still updates the cache; concurrent boots of one MAC
//! share one controller call); offline the cache. Online, a cached record
//! confirmed by the controller's change feed ([`super::changes`]) is the
//! live record, with one call for many boots. An unknown MAC is
//! registered through the outbox, the one place that registers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::boot::changes::{ChangeFeed, Confirmation};
pub use crate::boot::lookup::LookupError;
use crate::central::CentralError;
use crate::central::port::ControllerPort;
use crate::model::boot::{BootFacts, Source};
use crate::model::mac::Mac;
use crate::model::mode::Mode;
use crate::model::node::{Node, NodeState};
use crate::outbox::{Outbox, Registered, WriteError};
use crate::store::nodes::NodeCache;
use crate::store::queue::QueueError;

type Lookup = Result<Arc<Node>, LookupError>;

/// What a boot is answered from.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// The online column of DESIGN §4 (standalone too), from `node`; None:
    /// a MAC whose registration has not come back yet (treated as
    /// discovered, harmlessly, without being stored here).
    Online {
        node: Option<Arc<Node>>,
        source: Source,
    },
    /// The offline column, from the cache.
    Offline { since: OffsetDateTime },
    /// Standalone, the store failed: the node gets the fallback script.
    Failed(String),
}

/// Controller lookups under way at once, at most (DESIGN §10): each may
/// buffer an answer of up to a few MB, and a flood of new MACs must not
/// become a flood of controller calls. A boot that finds no room within
/// its deadline is answered from the cache, as if the lookup were slow.
pub const MAX_CONCURRENT_LOOKUPS: usize = 16;

pub struct Resolver {
    port: Arc<ControllerPort>,
    outbox: Arc<Outbox>,
    nodes: NodeCache,
    deadline: Duration,
    inflight: Mutex<HashMap<Mac, watch::Receiver<Option<Lookup>>>>,
    lookups: Arc<tokio::sync::Semaphore>,
    feed: Arc<ChangeFeed>,
}

/// Can a boot of this cached node be answered `live` from the change
/// feed? Not a node the controller never had (`local-…`) or no longer
/// lists (the feed does not report deletions), and not one whose answer
/// can be an install: a destructive answer is always taken from the
/// controller's record of that very MAC, asked for at that boot.
fn confirmable(node: &Node) -> bool {
    !node.id.starts_with("local-")
        && node.missing_central_since.is_none()
        && !matches!(node.state, NodeState::Pending | NodeState::Reprovision)
}

impl Resolver {
    pub fn new(
        port: Arc<ControllerPort>,
        outbox: Arc<Outbox>,
        nodes: NodeCache,
        deadline: Duration,
    ) -> Resolver {
        Resolver {
            feed: Arc::new(ChangeFeed::new(port.clone(), outbox.clone(), nodes.clone())),
            port,
            outbox,
            nodes,
            deadline,
            inflight: Mutex::new(HashMap::new()),
            lookups: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_LOOKUPS)),
        }
    }

    pub async fn resolve(self: &Arc<Self>, mac: Mac, facts: &BootFacts) -> Resolved {
        match self.port.mode() {
            Mode::Standalone => match self.outbox.register(mac, facts).await {
                Ok(Registered::Known(Some(node)) | Registered::Sent(node)) => Resolved::Online {
                    node: Some(node),
                    source: Source::Standalone,
                },
                Ok(Registered::Known(None) | Registered::Queued(_) | Registered::Deferred) => {
                    Resolved::Online {
                        node: self.nodes.get(mac),
                        source: Source::Standalone,
                    }
                }
                Err(e) => Resolved::Failed(e.to_string()),
            },
            Mode::Offline { since } => {
                self.register_offline(mac, facts).await;
                Resolved::Offline { since }
            }
            Mode::Online => self.resolve_online(mac, facts).await,
        }
    }

    /// Online: a cached record the change feed confirms, else the
    /// controller's record of the MAC, within the one deadline.
    async fn resolve_online(self: &Arc<Self>, mac: Mac, facts: &BootFacts) -> Resolved {
        let started = tokio::time::Instant::now();
        // A node with an open conflict is decided from what the
        // controller says of it now, as before the feed.
        if self.outbox.open_conflict(mac).is_none()
            && self.nodes.get(mac).is_some_and(|node| confirmable(&node))
        {
            match self.feed.confirm(mac, self.deadline).await {
                Confirmation::Confirmed => {
                    // The feed may have brought a change that makes the
                    // answer an install: that one is asked for by MAC.
                    if let Some(node) = self.nodes.get(mac)
                        && confirmable(&node)
                    {
                        return Resolved::Online {
                            node: Some(node),
                            source: Source::Live,
                        };
                    }
                }
                Confirmation::Late => {
                    return Resolved::Online {
                        node: self.nodes.get(mac),
                        source: Source::Cache,
                    };
                }
                Confirmation::Failed(e) => {
                    tracing::debug!(%mac, error = %e, "answering from the cache");
                    return match self.port.mode() {
                        Mode::Offline { since } => Resolved::Offline { since },
                        _ => Resolved::Online {
                            node: self.nodes.get(mac),
                            source: Source::Cache,
                        },
                    };
                }
                Confirmation::Unavailable => {}
            }
        }
        let left = self.deadline.saturating_sub(started.elapsed());
        match self.lookup_within(mac, facts, left).await {
            Some(Ok(node)) => Resolved::Online {
                node: Some(node),
                source: Source::Live,
            },
            Some(Err(e)) => {
                tracing::debug!(%mac, error = %e, "answering from the cache");
                if matches!(&e, LookupError::Central(c) if c.is_unreachable()) {
                    self.register_offline(mac, facts).await;
                }
                match self.port.mode() {
                    Mode::Offline { since } => Resolved::Offline { since },
                    _ => Resolved::Online {
                        node: self.nodes.get(mac),
                        source: Source::Cache,
                    },
                }
            }
            None => Resolved::Online {
                node: self.nodes.get(mac),
                source: Source::Cache,
            },
        }
    }

    /// DESIGN §4, unknown MAC while the controller is unreachable.
    async fn register_offline(&self, mac: Mac, facts: &BootFacts) {
        match self.outbox.register_offline(mac, facts).await {
            Ok(_) => {}
            // Shed items are counted and logged by the outbox, once per
            // interval: a flood of MACs is not a flood of log lines.
            Err(WriteError::Queue(QueueError::Shed(_))) => {}
            Err(e) => tracing::error!(%mac, error = %e, "offline registration not queued"),
        }
    }

    /// The controller's current record of `mac` (registering it if the
    /// controller does not know it), written through to the cache. `None`
    /// when the deadline passed first; the lookup then finishes in the
    /// background and still updates the cache. Concurrent calls for one
    /// MAC share one controller call.
    pub async fn lookup(self: &Arc<Self>, mac: Mac, facts: &BootFacts) -> Option<Lookup> {
        self.lookup_within(mac, facts, self.deadline).await
    }

    async fn lookup_within(
        self: &Arc<Self>,
        mac: Mac,
        facts: &BootFacts,
        deadline: Duration,
    ) -> Option<Lookup> {
        let started = tokio::time::Instant::now();
        let joined = self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&mac)
            .cloned();
        // A new lookup needs a place among the concurrent ones; waiting
        // for it counts against the boot's deadline.
        let permit = match joined {
            Some(_) => None,
            None => {
                let place =
                    tokio::time::timeout(deadline, self.lookups.clone().acquire_owned()).await;
                match place {
                    Ok(Ok(permit)) => Some(permit),
                    _ => {
                        tracing::debug!(%mac, "controller lookups all busy; answering from the cache");
                        return None;
                    }
                }
            }
        };
        let mut rx = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get(&mac) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(mac, rx.clone());
                    let resolver = self.clone();
                    let facts = facts.clone();
                    crate::tasks::spawn_until_shutdown(async move {
                        let outcome = resolver.fetch(mac, &facts).await;
                        drop(permit);
                        if let Err(e) = &outcome {
                            tracing::warn!(%mac, error = %e, "controller lookup failed");
                        }
                        let _ = tx.send(Some(outcome));
                        resolver
                            .inflight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&mac);
                    });
                    rx
                }
            }
        };
        let left = deadline.saturating_sub(started.elapsed());
        let waited = tokio::time::timeout(left, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(value)) => value.clone(),
            // Deadline passed, or the lookup task died (it logs why).
            _ => None,
        }
    }

    async fn fetch(&self, mac: Mac, facts: &BootFacts) -> Lookup {
        match self.port.node_by_mac(mac).await? {
            Some(node) => self
                .nodes
                .upsert_central(node)
                .await
                .map_err(|e| LookupError::Local(e.to_string())),
            None => match self.outbox.register(mac, facts).await? {
                Registered::Known(Some(node)) | Registered::Sent(node) => Ok(node),
                Registered::Queued(_) | Registered::Deferred => Err(LookupError::Central(
                    CentralError::Unreachable("registration queued".into()),
                )),
                Registered::Known(None) => Err(LookupError::Local(
                    "registration by a concurrent boot still under way".into(),
                )),
            },
        }
    }
}
