//! Writes meant for the controller that must not be lost (DESIGN §5, §7):
//! node registrations, state changes, installer reports and boot events.
//!
//! Every write takes one path ([`Outbox::write`]): sent through the
//! controller port at once when the controller can take it now and the
//! node has nothing queued; otherwise (offline, unreachable, a 5xx) it is
//! committed to the durable queue and the caller is told `queued`. Either
//! way the local cache takes the change at once, so the next boot sees it.
//! A write for a node that still has queued items is queued behind them,
//! never sent ahead of them. [`replay`] sends the queue when it can.
//!
//! Standalone the port is the local store: writes are applied to it at
//! once, and nothing is ever queued.

mod detect;
mod events;
pub mod pause;
mod register;
pub mod replay;
pub mod resolve;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::central::CentralError;
use crate::central::api::{NewNode, NodeReport, StateChange};
use crate::central::ops::{Observed, Operation};
use crate::central::port::ControllerPort;
use crate::model::boot::{BootAnswer, BootFacts, discovered_node};
use crate::model::mac::Mac;
use crate::model::mode::Mode;
use crate::model::node::{Node, NodeState};
use crate::ratelimit::{KeyedRate, LOG_INTERVAL, LogThrottle};
use crate::store::StoreError;
use crate::store::conflicts;
use crate::store::nodes::NodeCache;
use crate::store::queue::writer::QueueWriter;
use crate::store::queue::{Kind, NewItem, Origin, Queue, QueueError, Stats};
use events::{BootEvents, boot_report};

/// When a node's state last changed at its controller, as far as the
/// record says: `state_changed_at`, else `updated_at` (a version-less
/// controller's stand-in for a version, DESIGN §8).
pub fn changed_at(node: &Node) -> OffsetDateTime {
    node.state_changed_at.unwrap_or(node.updated_at)
}

/// The meta key of the conflict policies set at run time (JSON).
pub const META_CONFLICT_POLICY: &str = "conflict_policy";

/// The policies in force at start: those set at run time and stored, else
/// the config's.
pub fn stored_policies(
    store: &crate::store::Store,
    config: crate::config::ConflictPolicies,
) -> Result<crate::config::ConflictPolicies, StoreError> {
    Ok(store
        .get_meta(META_CONFLICT_POLICY)?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(config))
}

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
    /// A registration the controller answered with an error (not
    /// unreachable): nothing is queued (DESIGN §4).
    #[error("registration not taken: {0}")]
    NotRegistered(CentralError),
    #[error("{0}")]
    Local(String),
    /// The site policy forbids it now (DESIGN §15: the autonomy level
    /// while offline, or a strategy the controller set): 409, naming why.
    #[error("{0}")]
    Refused(String),
    /// The agent's disk cannot take the write now (full, an I/O error):
    /// nothing was acknowledged; it may succeed later.
    #[error("the agent cannot store the change now: {0}")]
    Unwritable(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WriteError {
    /// Refused for a reason that passes (a full queue or share, a disk
    /// that cannot write): 503, and the caller may try again.
    pub fn is_temporary(&self) -> bool {
        match self {
            WriteError::Unwritable(_)
            | WriteError::Queue(QueueError::Full(_) | QueueError::Shed(_)) => true,
            WriteError::Queue(QueueError::Store(e)) | WriteError::Store(e) => e.is_io(),
            _ => false,
        }
    }
}

/// How a registration ended.
#[derive(Debug, Clone)]
pub enum Registered {
    /// The MAC was known already (or is being registered by a concurrent
    /// boot: `None`).
    Known(Option<Arc<Node>>),
    /// The controller (standalone: the store) took it.
    Sent(Arc<Node>),
    /// Queued; the node is cached under its local id.
    Queued(Arc<Node>),
    /// Queued, and not cached: the site's autonomy level (`readonly`)
    /// lets it create no node while offline (DESIGN §15), so the MAC
    /// stays unknown here and boots `offline.default_action`.
    Deferred,
}

/// The direct attempt of [`Outbox::write`].
enum Attempt {
    /// Taken; the port's record of the node, if it answered with one.
    Sent(Option<Node>),
    /// Not sent (or not taken, in a way worth retrying): queue it, with
    /// the key of the attempt if one was made, so the controller can tell
    /// a repeat.
    Queue {
        key: Option<String>,
        error: Option<CentralError>,
    },
}

pub struct Outbox {
    queue: Queue,
    writer: QueueWriter,
    nodes: NodeCache,
    port: Arc<ControllerPort>,
    wake: Arc<Notify>,
    events: BootEvents,
    /// MACs whose registration is being written (one per MAC).
    registering: Mutex<HashSet<Mac>>,
    /// Longest a direct attempt may take before the write is queued.
    write_deadline: std::time::Duration,
    /// Queue items each MAC may cause per minute (DESIGN §7 "Admission").
    node_rate: KeyedRate<Mac>,
    /// Node items refused since start.
    shed: AtomicU64,
    /// Shed items are logged once per interval, with the count.
    shed_log: LogThrottle<()>,
    /// How conflicts are settled when found (DESIGN §8).
    policies: std::sync::RwLock<crate::config::ConflictPolicies>,
    /// MAC → its open conflict, for the boot path (mirrors the store).
    open_conflicts: std::sync::RwLock<std::collections::HashMap<Mac, u64>>,
    /// Open conflicts the policy has been tried on since start (a policy
    /// that cannot be applied is not retried every round).
    policy_tried: Mutex<HashSet<u64>>,
    /// The site policy: its autonomy level bounds the writes made while
    /// offline, its conflict strategy (if any) the policies (§15).
    site_policy: Arc<crate::policy::PolicyCell>,
    /// The operators' hold on replay and syncs (DESIGN §15).
    pause: pause::SyncPause,
}

impl Outbox {
    /// Needs a tokio runtime (starts the queue's group-commit writer).
    pub fn new(
        queue: Queue,
        nodes: NodeCache,
        port: Arc<ControllerPort>,
        write_deadline: std::time::Duration,
        node_items_per_minute: u32,
        policies: crate::config::ConflictPolicies,
    ) -> Outbox {
        match conflicts::quarantine_unreadable(queue.store()) {
            Ok(macs) => {
                for mac in macs {
                    // Parked behind a record nobody can read: failed, with
                    // the reason, for an operator to retry or delete; the
                    // node's later items are no longer held.
                    let reason = "its conflict record was unreadable and is quarantined; \
                                  retry or delete this item";
                    if let Err(e) = queue.fail_parked(&mac, reason) {
                        tracing::error!(%mac, error = %e, "parked queue items not released");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "conflict records not checked at start"),
        }
        if let Err(e) = conflicts::index(queue.store()) {
            tracing::error!(error = %e, "conflict indexes not built; listings scan the records");
        }
        let open_conflicts =
            conflicts::list(queue.store(), Some(conflicts::Status::Open), 0, usize::MAX)
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "open conflicts unreadable at start");
                    Vec::new()
                })
                .into_iter()
                .filter_map(|c| Some((c.mac.parse::<Mac>().ok()?, c.id)))
                .collect();
        Outbox {
            pause: pause::SyncPause::open(queue.store()),
            writer: QueueWriter::start_with_cache(queue.clone(), nodes.clone()),
            queue,
            nodes,
            port,
            wake: Arc::new(Notify::new()),
            events: BootEvents::default(),
            registering: Mutex::new(HashSet::new()),
            write_deadline,
            node_rate: KeyedRate::new(node_items_per_minute),
            shed: AtomicU64::new(0),
            shed_log: LogThrottle::new(LOG_INTERVAL),
            policies: std::sync::RwLock::new(policies),
            open_conflicts: std::sync::RwLock::new(open_conflicts),
            policy_tried: Mutex::new(HashSet::new()),
            site_policy: Arc::new(crate::policy::PolicyCell::with(
                crate::model::policy::SitePolicy::defaults(),
                Default::default(),
            )),
        }
    }

    /// The site policy in force (DESIGN §15) this outbox obeys.
    pub fn with_site_policy(mut self, policy: Arc<crate::policy::PolicyCell>) -> Outbox {
        self.site_policy = policy;
        self
    }

    /// The site policy in force.
    pub fn site_policy(&self) -> &crate::policy::PolicyCell {
        &self.site_policy
    }

    /// The operators' hold on replay and syncs.
    pub fn pause(&self) -> &pause::SyncPause {
        &self.pause
    }

    /// Pauses (true) or resumes replay and syncs; kept across restarts.
    /// A resume wakes replay at once.
    pub async fn set_sync_paused(&self, paused: bool) -> Result<bool, WriteError> {
        let changed = self.pause.set(self.queue.store(), paused).await?;
        if changed && !paused {
            self.wake.notify_one();
        }
        Ok(changed)
    }

    /// DESIGN §15: may the site make `write` now? Online (and standalone)
    /// every write may go, the controller (or the store) judges it; while
    /// the controller is unreachable the autonomy level decides.
    pub fn offline_check(
        &self,
        write: crate::model::policy::OfflineWrite,
    ) -> Result<(), WriteError> {
        if !self.port.mode().is_offline() {
            return Ok(());
        }
        self.site_policy
            .autonomy()
            .allows(write)
            .map_err(WriteError::Refused)
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The node's open conflict, if it has one (DESIGN §8: its boots get
    /// nothing destructive meanwhile).
    pub fn open_conflict(&self, mac: Mac) -> Option<u64> {
        self.open_conflicts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&mac)
            .copied()
    }

    /// Keeps [`Outbox::open_conflict`] in step with the store, after the
    /// commit that opened (Some) or closed (None) the node's conflict.
    pub(crate) fn note_conflict(&self, mac: &str, open: Option<u64>) {
        let Ok(mac) = mac.parse::<Mac>() else {
            return;
        };
        let mut map = self
            .open_conflicts
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match open {
            Some(id) => map.insert(mac, id),
            None => map.remove(&mac),
        };
        crate::events::publish(
            "conflict",
            serde_json::json!({"mac": mac.to_string(), "open": open}),
        );
    }

    /// The conflict policies in force: those of the site's conflict
    /// strategy when one is set (by the controller, or pinned by
    /// `conflicts.site_policy`), else the per-kind ones (DESIGN §8, §15).
    pub fn policies(&self) -> crate::config::ConflictPolicies {
        match self.site_policy.current().conflict_strategy.value {
            Some(strategy) => crate::config::ConflictPolicies::of_strategy(strategy),
            None => *self.policies.read().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Changes the conflict policies; stored, so they outlast a restart
    /// (and win over the config until changed again). Refused while a
    /// site-wide strategy is in force: the controller (or the pin) decides.
    pub async fn set_policies(
        &self,
        policies: crate::config::ConflictPolicies,
    ) -> Result<(), WriteError> {
        let strategy = self.site_policy.current().conflict_strategy;
        if let Some(value) = strategy.value {
            let by = match strategy.origin {
                crate::model::policy::Origin::Config => "the conflicts.site_policy key".to_string(),
                other => format!("the {}", other.as_str()),
            };
            return Err(WriteError::Refused(format!(
                "the site's conflict strategy is {} (set by {by}); per-kind policies do not \
                 apply while it is in force: change it there, or pin conflicts.site_policy",
                value.as_str()
            )));
        }
        let text = serde_json::to_string(&policies).unwrap_or_default();
        self.queue
            .store()
            .call(move |s| s.put_meta(&[(META_CONFLICT_POLICY, &text)]))
            .await?;
        *self.policies.write().unwrap_or_else(|e| e.into_inner()) = policies;
        Ok(())
    }

    pub fn nodes(&self) -> &NodeCache {
        &self.nodes
    }

    pub fn port(&self) -> &ControllerPort {
        &self.port
    }

    /// Woken when an item is queued.
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub async fn stats(&self) -> Result<Stats, QueueError> {
        let stats = self.queue.call(|q| q.stats()).await?;
        Ok(self.with_shed(stats))
    }

    /// The queue's counts read by the caller (already on a blocking
    /// thread), with the items shed since start.
    pub fn with_shed(&self, mut stats: Stats) -> Stats {
        stats.shed_node_items = self.shed.load(Ordering::Relaxed);
        stats
    }

    async fn has_queued(&self, mac: Mac) -> Result<bool, QueueError> {
        self.queue
            .call(move |q| q.has_active(&mac.to_string()))
            .await
    }

    /// Commits an item; the replay processor is woken. An item a node
    /// caused is admitted only within its MAC's rate and the node share
    /// (DESIGN §7 "Admission"); one that is not is shed: counted, logged
    /// once per interval, and refused to the caller.
    async fn enqueue(&self, item: NewItem) -> Result<u64, QueueError> {
        let result = if item.origin == Origin::Node && !self.admit_rate(&item.node) {
            Err(QueueError::Shed(format!(
                "{} caused more than its queue.node_items_per_minute",
                item.node
            )))
        } else {
            self.writer.enqueue(item).await
        };
        match result {
            Ok(id) => {
                self.wake.notify_one();
                crate::events::publish("queue", serde_json::json!({"queued": id}));
                Ok(id)
            }
            Err(QueueError::Shed(reason)) => {
                let shed = 1 + self.shed.fetch_add(1, Ordering::Relaxed);
                crate::metrics::metrics().link.shed.inc();
                if let Some(left_out) = self.shed_log.admit(()) {
                    tracing::warn!(shed_since_start = shed, left_out, reason = %reason,
                        "queue item caused by a node shed");
                }
                Err(QueueError::Shed(reason))
            }
            Err(e) => Err(e),
        }
    }

    fn admit_rate(&self, node: &str) -> bool {
        match node.parse::<Mac>() {
            Ok(mac) => self.node_rate.admit(mac),
            // Every node item names a checked MAC; should one not, it
            // gets no rate of its own and the share alone bounds it.
            Err(_) => true,
        }
    }

    /// Sends `operation` at once if it can go now: the controller is not
    /// known to be offline, the node has nothing queued, and `direct` is
    /// true. A refusal for good comes back as the error; anything else
    /// that kept it from the controller says "queue it".
    async fn attempt(
        &self,
        mac: Mac,
        operation: &Operation,
        direct: bool,
    ) -> Result<Attempt, WriteError> {
        let mode = self.port.mode();
        // Paused, every write queues: the operators hand the queue over
        // when they resume, in order.
        let can_send = direct
            && !self.pause.is_paused()
            && !mode.is_offline()
            && (mode == Mode::Standalone || !self.has_queued(mac).await?);
        if !can_send {
            return Ok(Attempt::Queue {
                key: None,
                error: None,
            });
        }
        let key = self.queue.direct_key();
        // A hanging controller must not hold the caller (an operator, an
        // installer) for the whole request timeout: past the deadline the
        // write is queued under the same idempotency key, so if the
        // abandoned attempt did land, the controller applies it once.
        let sent = tokio::time::timeout(self.write_deadline, self.port.send(mac, operation, &key))
            .await
            .unwrap_or_else(|_| {
                Err(CentralError::Unreachable(format!(
                    "no answer within central.write_deadline ({:?})",
                    self.write_deadline
                )))
            });
        match sent {
            Ok(node) => Ok(Attempt::Sent(node)),
            Err(e) => match refusal(&e) {
                Some(refused) => Err(refused),
                None => {
                    tracing::warn!(%mac, op = operation.name(), error = %e, "write not sent; queued");
                    Ok(Attempt::Queue {
                        key: Some(key),
                        error: Some(e),
                    })
                }
            },
        }
    }

    /// Commits `operation` to the queue (with the cache's new state for
    /// the node in the same commit).
    async fn enqueue_operation(
        &self,
        kind: Kind,
        origin: Origin,
        mac: Mac,
        operation: &Operation,
        key: Option<String>,
        local_state: Option<NodeState>,
    ) -> Result<Written, WriteError> {
        let id = self
            .enqueue(NewItem {
                kind,
                origin,
                node: mac.to_string(),
                payload: operation.to_payload(),
                key,
                local_state,
            })
            .await?;
        Ok(Written::Queued {
            id,
            offline: self.port.mode().is_offline(),
        })
    }

    /// The one write path: directly if it can go now, else queued.
    /// `local_state` is what the cache shows for the node afterwards.
    async fn write(
        &self,
        kind: Kind,
        origin: Origin,
        mac: Mac,
        operation: Operation,
        local_state: Option<NodeState>,
    ) -> Result<Written, WriteError> {
        match self.attempt(mac, &operation, true).await? {
            Attempt::Sent(answer) => {
                let standalone = self.port.mode() == Mode::Standalone;
                let stored = match answer {
                    Some(node) => Some(self.nodes.upsert_central(node).await?),
                    None => {
                        // The port answered without the node (a report):
                        // the cache takes the implied state itself, unless
                        // the port is the store and has done so already.
                        if let (Some(state), false) = (local_state, standalone) {
                            self.apply_locally(mac, state).await;
                        }
                        self.nodes.get(mac)
                    }
                };
                Ok(if standalone {
                    Written::Applied(stored)
                } else {
                    Written::Sent(stored)
                })
            }
            Attempt::Queue { key, .. } => {
                self.enqueue_operation(kind, origin, mac, &operation, key, local_state)
                    .await
            }
        }
    }

    /// `PATCH /api/v1/nodes/{mac}/state`.
    pub async fn set_state(&self, mac: Mac, change: StateChange) -> Result<Written, WriteError> {
        let node = self.nodes.get(mac).ok_or(WriteError::UnknownNode(mac))?;
        self.offline_check(crate::model::policy::OfflineWrite::StateChange(
            change.state,
        ))?;
        let local = node.id.starts_with("local-");
        let change = StateChange {
            // A controller without versions gets none (DESIGN §8).
            base_version: (!local && node.versioned).then_some(node.version),
            ..change
        };
        let state = change.state;
        let operation = Operation::SetState {
            node_id: node.id.clone(),
            change,
            base_changed_at: (!local && !node.versioned).then(|| changed_at(&node)),
            base_state: (!local && !node.versioned).then_some(node.state),
        };
        if local && self.port.mode().has_controller() {
            // Not registered at the controller yet: only the queue can
            // carry it, behind the registration.
            return self
                .enqueue_operation(
                    Kind::StateUpdate,
                    Origin::Operator,
                    mac,
                    &operation,
                    None,
                    Some(state),
                )
                .await;
        }
        self.write(
            Kind::StateUpdate,
            Origin::Operator,
            mac,
            operation,
            Some(state),
        )
        .await
    }

    /// `POST /api/v1/report`. A report that implies a state (install
    /// complete, failed, …) is queued as a state update: it is never
    /// dropped to make room, unlike progress events.
    pub async fn report(&self, report: NodeReport) -> Result<Written, WriteError> {
        let mac = report
            .validate()
            .map_err(|body| WriteError::Rejected { status: 400, body })?;
        // Unauthenticated: what it may make the queue hold is bounded.
        let report = report.fit(crate::central::api::REPORT_MAX_BYTES);
        let implied = report.implied_state();
        let kind = if implied.is_some() {
            Kind::StateUpdate
        } else {
            Kind::Event
        };
        // The controller judges the report itself; the cache takes its
        // state only along the installer's path (DESIGN §10), so a forged
        // report cannot change what the next boot gets here.
        let cache_takes = implied.filter(|to| {
            self.nodes
                .get(mac)
                .is_some_and(|n| n.state.installer_may_move_to(*to))
        });
        if implied.is_some() && cache_takes.is_none() {
            tracing::warn!(%mac, event = report.effective_event().unwrap_or(""),
                "installer report does not fit the node's state; the cache keeps its state");
        }
        // An observed state change has a base like an operator's: replay
        // compares it with the controller's record (DESIGN §8).
        let observed = implied
            .and_then(|_| self.nodes.get(mac))
            .and_then(|node| Observed::on(&node));
        self.write(
            kind,
            Origin::Node,
            mac,
            Operation::Report { report, observed },
            cache_takes,
        )
        .await
    }

    /// Records that a node booted (time, action, source), without making
    /// the boot wait: sent directly when online, else queued. Standalone
    /// there is nobody to tell.
    pub fn boot_event(self: &Arc<Self>, mac: Mac, answer: &BootAnswer) {
        if !self.port.mode().has_controller() {
            return;
        }
        let Some(backlog_place) = self.events.admit(mac, answer) else {
            return;
        };
        let report = boot_report(mac, answer);
        let outbox = self.clone();
        crate::tasks::spawn(async move {
            match outbox.send_event(mac, report).await {
                Ok(()) | Err(WriteError::Queue(QueueError::Shed(_))) => {}
                Err(e) => tracing::error!(%mac, error = %e, "boot event lost"),
            }
            drop(backlog_place);
        });
    }

    /// A boot event: like any write, but only a few go directly at a time,
    /// and a refusal drops it (it is only news).
    async fn send_event(&self, mac: Mac, report: NodeReport) -> Result<(), WriteError> {
        let operation = Operation::Report {
            report,
            observed: None,
        };
        let direct = self.events.direct_send();
        match self.attempt(mac, &operation, direct.is_some()).await {
            Ok(Attempt::Sent(_)) => Ok(()),
            Ok(Attempt::Queue { key, .. }) => {
                drop(direct);
                self.enqueue_operation(Kind::Event, Origin::Node, mac, &operation, key, None)
                    .await
                    .map(|_| ())
            }
            Err(WriteError::Rejected { status, body }) => {
                tracing::warn!(%mac, status, %body, "controller refused a boot event; dropped");
                Ok(())
            }
            Err(e) => Err(e),
        }
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
            if (400..500).contains(status) && !crate::central::retryable_status(*status) =>
        {
            Some(WriteError::Rejected {
                status: *status,
                body: body.clone(),
            })
        }
        CentralError::Local(reason) => Some(WriteError::Local(reason.clone())),
        CentralError::LocalUnwritable(reason) => Some(WriteError::Unwritable(reason.clone())),
        _ => None,
    }
}
