//! Writes meant for the controller that must not be lost (DESIGN §5, §7):
//! node registrations, state changes, installer reports and boot events.
//!
//! Online, a write goes to the controller directly. Offline, or when the
//! call cannot reach the controller (or it answers 5xx), the write is
//! committed to the durable queue and the caller is told `queued`; either
//! way the local cache takes the change at once, so the next boot sees it.
//! A write for a node that still has queued items is queued behind them,
//! never sent ahead of them. [`replay`] sends the queue when it can.
//!
//! Standalone (no controller) the local store is the truth: writes are
//! applied to it and nothing is queued.

pub mod replay;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore};

use crate::boot::{BootAnswer, BootFacts};
use crate::central::CentralError;
use crate::central::api::{NewNode, NodeReport, StateChange};
use crate::central::link::CentralLink;
use crate::mac::Mac;
use crate::node::{Node, NodeState};
use crate::nodes::NodeCache;
use crate::queue::writer::QueueWriter;
use crate::queue::{Kind, NewItem, Queue, QueueError, Stats};
use crate::store::StoreError;

/// Boot events sent to the controller at once, at most; past this they
/// are queued (a boot storm must not become a storm of controller calls).
const DIRECT_EVENT_SENDS: usize = 32;

/// Boot events waiting to be sent or queued, at most; past this (a boot
/// storm faster than the disk) further events are dropped and counted —
/// events are what DESIGN §7 lets the agent drop, never state changes.
const EVENT_BACKLOG: usize = 4096;

/// A boot with the same outcome (action, source, state) as the MAC's last
/// recorded boot within this long is not recorded again: iPXE retries and
/// boot storms would otherwise cost a controller call or a queue commit per
/// request for no new information.
const BOOT_EVENT_REPEAT: std::time::Duration = std::time::Duration::from_secs(300);

/// The payload's `op`: which controller call replays the item.
pub const OP_REGISTER: &str = "register";
pub const OP_SET_STATE: &str = "set_state";
pub const OP_REPORT: &str = "report";

/// What a boot event reports: action, source, state.
type BootOutcome = (
    crate::decision::Action,
    crate::boot::Source,
    Option<NodeState>,
);

/// What became of a write.
#[derive(Debug, Clone)]
pub enum Written {
    /// Standalone: applied to the local store.
    Applied(Option<Arc<Node>>),
    /// The controller took it (with its record of the node, if it sent one).
    Sent(Option<Arc<Node>>),
    /// Committed to the queue; `offline`: the controller is unreachable
    /// (false: it answered with a server error).
    Queued { id: u64, offline: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("no node with MAC {0}")]
    UnknownNode(Mac),
    #[error("the controller refused the change ({status}): {body}")]
    Rejected { status: u16, body: String },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Outbox {
    queue: Queue,
    writer: QueueWriter,
    nodes: NodeCache,
    link: Option<Arc<CentralLink>>,
    wake: Arc<Notify>,
    direct_events: Arc<Semaphore>,
    event_backlog: Arc<Semaphore>,
    events_shed: std::sync::atomic::AtomicU64,
    /// Last recorded boot outcome per MAC, and when.
    last_boot: Mutex<std::collections::HashMap<Mac, (BootOutcome, std::time::Instant)>>,
    /// MACs whose local registration is being written (one per MAC).
    registering: Mutex<HashSet<Mac>>,
}

impl Outbox {
    /// Needs a tokio runtime (starts the queue's group-commit writer).
    pub fn new(queue: Queue, nodes: NodeCache, link: Option<Arc<CentralLink>>) -> Outbox {
        Outbox {
            writer: QueueWriter::start_with_cache(queue.clone(), nodes.clone()),
            queue,
            nodes,
            link,
            wake: Arc::new(Notify::new()),
            direct_events: Arc::new(Semaphore::new(DIRECT_EVENT_SENDS)),
            event_backlog: Arc::new(Semaphore::new(EVENT_BACKLOG)),
            events_shed: std::sync::atomic::AtomicU64::new(0),
            last_boot: Mutex::new(std::collections::HashMap::new()),
            registering: Mutex::new(HashSet::new()),
        }
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    pub fn nodes(&self) -> &NodeCache {
        &self.nodes
    }

    /// Woken when an item is queued.
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub async fn stats(&self) -> Result<Stats, QueueError> {
        let queue = self.queue.clone();
        run_blocking(move || queue.stats()).await
    }

    async fn has_queued(&self, mac: Mac) -> Result<bool, QueueError> {
        let queue = self.queue.clone();
        run_blocking(move || queue.has_active(&mac.to_string())).await
    }

    fn online(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.monitor().is_online())
    }

    /// Commits an item; the replay processor is woken.
    async fn enqueue(&self, item: NewItem) -> Result<u64, QueueError> {
        let id = self.writer.enqueue(item).await?;
        self.wake.notify_one();
        Ok(id)
    }

    /// `PATCH /api/v1/nodes/{mac}/state`.
    pub async fn set_state(&self, mac: Mac, change: StateChange) -> Result<Written, WriteError> {
        let node = self.nodes.get(mac).ok_or(WriteError::UnknownNode(mac))?;
        let Some(link) = self.link.clone() else {
            let state = change.state;
            let stored = self
                .nodes
                .update(mac, move |n| {
                    n.state = state;
                    n.updated_at = OffsetDateTime::now_utc();
                    n.version += 1;
                })
                .await?;
            return Ok(Written::Applied(Some(stored)));
        };
        let local = node.id.starts_with("local-");
        let change = StateChange {
            base_version: if local { None } else { Some(node.version) },
            ..change
        };
        let mut key = None;
        if self.online() && !local && !self.has_queued(mac).await? {
            let direct = self.queue.direct_key();
            let sent = link.observe(
                link.controller()
                    .set_state(&node.id, &change, &direct)
                    .await,
            );
            match sent {
                Ok(central) => {
                    let stored = self.nodes.upsert_central(central).await?;
                    return Ok(Written::Sent(Some(stored)));
                }
                Err(e) => match refusal(&e) {
                    Some(rejected) => return Err(rejected),
                    None => {
                        tracing::warn!(%mac, error = %e, "state change not sent; queued");
                        key = Some(direct);
                    }
                },
            }
        }
        let id = self
            .enqueue(NewItem {
                kind: Kind::StateUpdate,
                node: mac.to_string(),
                payload: json!({"op": OP_SET_STATE, "node_id": node.id, "change": change}),
                key,
                local_state: Some(change.state),
            })
            .await?;
        Ok(Written::Queued {
            id,
            offline: !self.online(),
        })
    }

    /// `POST /api/v1/report`. A report that implies a state (install
    /// complete, failed, …) is queued as a state update: it is never
    /// dropped to make room, unlike progress events.
    pub async fn report(&self, report: NodeReport) -> Result<Written, WriteError> {
        let mac = report
            .validate()
            .map_err(|body| WriteError::Rejected { status: 400, body })?;
        let implied = report.implied_state();
        let Some(link) = self.link.clone() else {
            let stored = match implied {
                Some(state) if self.nodes.get(mac).is_some() => Some(
                    self.nodes
                        .update(mac, move |n| {
                            n.state = state;
                            n.updated_at = OffsetDateTime::now_utc();
                            n.version += 1;
                        })
                        .await?,
                ),
                _ => None,
            };
            return Ok(Written::Applied(stored));
        };
        let mut key = None;
        if self.online() && !self.has_queued(mac).await? {
            let direct = self.queue.direct_key();
            match link.observe(link.controller().report(&report, &direct).await) {
                Ok(()) => {
                    if let Some(state) = implied {
                        self.apply_locally(mac, state).await;
                    }
                    return Ok(Written::Sent(self.nodes.get(mac)));
                }
                Err(e) => match refusal(&e) {
                    Some(rejected) => return Err(rejected),
                    None => {
                        tracing::warn!(%mac, error = %e, "report not sent; queued");
                        key = Some(direct);
                    }
                },
            }
        }
        let id = self
            .enqueue(NewItem {
                kind: if implied.is_some() {
                    Kind::StateUpdate
                } else {
                    Kind::Event
                },
                node: mac.to_string(),
                payload: json!({"op": OP_REPORT, "report": report}),
                key,
                local_state: implied,
            })
            .await?;
        Ok(Written::Queued {
            id,
            offline: !self.online(),
        })
    }

    /// Records that a node booted (time, action, source), without making
    /// the boot wait: sent directly when online, else queued.
    pub fn boot_event(self: &Arc<Self>, mac: Mac, answer: &BootAnswer) {
        if self.link.is_none() || self.repeated_boot(mac, answer) {
            return;
        }
        let Ok(permit) = self.event_backlog.clone().try_acquire_owned() else {
            let shed = 1 + self
                .events_shed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if shed.is_power_of_two() {
                tracing::warn!(
                    shed,
                    "boot events arrive faster than they can be queued; dropping some"
                );
            }
            return;
        };
        let now = OffsetDateTime::now_utc();
        let report = NodeReport {
            mac_address: mac.to_string(),
            event: Some("boot_started".into()),
            status: Some("success".into()),
            message: Some(format!(
                "action={} source={}",
                answer.action.as_str(),
                answer.source.as_str()
            )),
            metadata: Some(json!({
                "booted_at": now
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                "action": answer.action.as_str(),
                "source": answer.source.as_str(),
                "state": answer.state.map(|s| s.as_str()),
            })),
            installation_status: None,
            extra: Default::default(),
        };
        let outbox = self.clone();
        tokio::spawn(async move {
            if let Err(e) = outbox.send_event(mac, report).await {
                tracing::error!(%mac, error = %e, "boot event lost");
            }
            drop(permit);
        });
    }

    /// Records `answer` as `mac`'s last boot; true if it repeats the last
    /// one within [`BOOT_EVENT_REPEAT`].
    fn repeated_boot(&self, mac: Mac, answer: &BootAnswer) -> bool {
        let outcome = (answer.action, answer.source, answer.state);
        let now = std::time::Instant::now();
        let mut last = self.last_boot.lock().unwrap_or_else(|e| e.into_inner());
        match last.get(&mac) {
            Some((previous, at)) if *previous == outcome && now - *at < BOOT_EVENT_REPEAT => true,
            _ => {
                last.insert(mac, (outcome, now));
                false
            }
        }
    }

    async fn send_event(&self, mac: Mac, report: NodeReport) -> Result<(), WriteError> {
        let mut key = None;
        if self.online()
            && let Some(link) = self.link.clone()
            && let Ok(_permit) = self.direct_events.clone().try_acquire_owned()
            && !self.has_queued(mac).await?
        {
            let direct = self.queue.direct_key();
            match link.observe(link.controller().report(&report, &direct).await) {
                Ok(()) => return Ok(()),
                Err(e) if refusal(&e).is_some() => {
                    tracing::warn!(%mac, error = %e, "controller refused a boot event; dropped");
                    return Ok(());
                }
                Err(_) => key = Some(direct),
            }
        }
        self.enqueue(NewItem {
            kind: Kind::Event,
            node: mac.to_string(),
            payload: json!({"op": OP_REPORT, "report": report}),
            key,
            local_state: None,
        })
        .await?;
        Ok(())
    }

    /// An unknown MAC seen while the controller cannot be reached: the
    /// registration is queued, then the node is cached under a local id
    /// (`local-<uuid>`, remapped when the registration is accepted). A MAC
    /// already cached, or being registered by a concurrent boot, is left
    /// alone.
    pub async fn register_local(&self, mac: Mac, facts: &BootFacts) -> Result<(), WriteError> {
        if self.nodes.get(mac).is_some() {
            return Ok(());
        }
        if !self
            .registering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(mac)
        {
            return Ok(());
        }
        // Checked again under the guard: a boot that finished registering
        // just before it was taken has cached the node.
        let result = if self.nodes.get(mac).is_some() {
            Ok(())
        } else {
            self.write_registration(mac, facts).await
        };
        self.registering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&mac);
        result
    }

    async fn write_registration(&self, mac: Mac, facts: &BootFacts) -> Result<(), WriteError> {
        let site_id = match &self.link {
            Some(link) => link.site_id().to_string(),
            None => String::new(),
        };
        let node = crate::boot::discovered_node(mac, facts);
        let request = NewNode::from_facts(mac, facts, &site_id);
        // Queued first: a crash between the two writes leaves a
        // registration without a cached node (harmless: the controller's
        // record is cached when it is accepted), never the reverse.
        self.enqueue(NewItem {
            kind: Kind::Registration,
            node: mac.to_string(),
            payload: json!({"op": OP_REGISTER, "node_id": node.id, "request": request}),
            key: None,
            local_state: None,
        })
        .await?;
        let stored = self.nodes.insert_if_absent(node).await?;
        tracing::info!(%mac, id = %stored.id, "unknown node seen offline; registration queued");
        Ok(())
    }

    /// A change the controller took, applied to the cache for the next
    /// boot (until the next sync brings the controller's record). Failing
    /// here loses nothing; it is logged.
    async fn apply_locally(&self, mac: Mac, state: NodeState) {
        if self.nodes.get(mac).is_none() {
            return;
        }
        let result = self
            .nodes
            .update(mac, move |n| {
                n.state = state;
                n.updated_at = OffsetDateTime::now_utc();
            })
            .await;
        if let Err(e) = result {
            tracing::error!(%mac, error = %e, "queued change not applied to the cache");
        }
    }
}

/// A controller answer that refuses the write for good (4xx other than
/// the retryable ones): handed back to the caller instead of queued.
fn refusal(e: &CentralError) -> Option<WriteError> {
    match e {
        CentralError::Rejected { status, body }
            if (400..500).contains(status) && !replay::retryable_status(*status) =>
        {
            Some(WriteError::Rejected {
                status: *status,
                body: body.clone(),
            })
        }
        _ => None,
    }
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| QueueError::Store(StoreError::Task(e.to_string())))?
}
