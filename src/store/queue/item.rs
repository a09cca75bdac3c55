//! What the queue holds: items, their kinds, origins and statuses, the
//! keys that go with them, the listing cursor, the bounds, and the errors.

use super::*;

/// What a queue item sends the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A node registered offline (`POST /api/v1/nodes`).
    Registration,
    /// A state change (`POST /api/v1/report` or `PATCH`).
    StateUpdate,
    /// A boot or installer event.
    Event,
}

impl Kind {
    /// The kind's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Registration => "registration",
            Kind::StateUpdate => "state_update",
            Kind::Event => "event",
        }
    }

    pub(super) fn priority(self) -> u8 {
        match self {
            Kind::Registration => 0,
            Kind::StateUpdate => 1,
            Kind::Event => 2,
        }
    }
}

/// Who caused an item (DESIGN §7 "Admission"): an operator's write (the
/// admin token) or a node's unauthenticated traffic (a registration at
/// boot, an installer report, a boot event). Node items have their own
/// bounded share of the queue, so they can never crowd out operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Items written before origins were recorded count as operator
    /// items: they are never shed retroactively.
    #[default]
    Operator,
    /// A node's unauthenticated traffic.
    Node,
}

/// Where an item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting to be sent.
    Pending,
    /// Being sent now.
    InFlight,
    /// Refused for good by the controller; kept for an operator.
    Failed,
    /// Held for a conflict (DESIGN §8).
    Conflict,
}

impl Status {
    /// The status's name in the API (`?status=in_flight`).
    pub fn as_str(self) -> &'static str {
        self.counter()
    }

    pub(super) fn counter(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InFlight => "in_flight",
            Status::Failed => "failed",
            Status::Conflict => "conflict",
        }
    }

    /// Still to be sent (counts in [`QUEUE_NODES`]). An item parked by a
    /// conflict counts: the node's later items and writes wait behind it
    /// until the conflict is resolved (DESIGN §8).
    pub(super) fn is_active(self) -> bool {
        matches!(self, Status::Pending | Status::InFlight | Status::Conflict)
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Status::Pending),
            "in_flight" => Ok(Status::InFlight),
            "failed" => Ok(Status::Failed),
            "conflict" => Ok(Status::Conflict),
            other => Err(format!(
                "unknown queue status {other:?}; valid: pending, in_flight, failed, conflict"
            )),
        }
    }
}

/// A change waiting for the controller (DESIGN §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Its id, in the order queued.
    pub id: u64,
    /// What it sends.
    pub kind: Kind,
    /// Who caused it.
    #[serde(default)]
    pub origin: Origin,
    /// The node's MAC.
    pub node: String,
    /// The body it sends.
    pub payload: serde_json::Value,
    /// Sent as `Idempotency-Key` with every attempt.
    #[serde(default)]
    pub key: String,
    /// When it was queued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// How many sends reached the controller.
    pub attempts: u32,
    /// When it was last sent.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_attempt_at: Option<OffsetDateTime>,
    /// The controller's answer to the last send, if it was an error.
    pub last_error: Option<String>,
    /// Where it is in its life.
    pub status: Status,
    /// Not sent again before this (backoff).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
}

/// An item to queue.
#[derive(Debug, Clone)]
pub struct NewItem {
    /// What it sends.
    pub kind: Kind,
    /// Who caused it.
    pub origin: Origin,
    /// The node's MAC.
    pub node: String,
    /// The body it sends.
    pub payload: serde_json::Value,
    /// The idempotency key a direct attempt already used, so that a replay
    /// of a write the controller may have applied is recognised; None: the
    /// queue's own `<instance>-<id>`.
    pub key: Option<String>,
    /// A state for the cached node (`node`'s MAC), written in the same
    /// commit as the item: the cache and the queue never disagree, even
    /// after a crash.
    pub local_state: Option<crate::model::node::NodeState>,
}

/// The most one item caused by a node may carry (payload JSON): a 4 KiB
/// report or a registration's cut facts, with the envelope around them.
pub const NODE_ITEM_MAX_BYTES: usize = 8 * 1024;

/// DESIGN §6: a different request is a new request. When a change to an
/// item alters what will be sent (a resolution adds `force` or a new
/// `base_version`, a remap points it at another node id), the item gets
/// the next key in its line, `<key>.<n>`; a controller that remembers the
/// old key would otherwise replay that key's first answer (the 409 again)
/// or refuse the new body under it (422). A resend of the same body keeps
/// its key, which is what makes a retry after a timeout safe.
pub(super) fn rekey_if_changed(item: &mut Item, sent_payload: &serde_json::Value) {
    if item.payload != *sent_payload {
        item.key = next_key(&item.key);
    }
}

/// `k` → `k.1`, `k.1` → `k.2`: the keys of one item's successive requests.
pub fn next_key(key: &str) -> String {
    if let Some((base, n)) = key.rsplit_once('.')
        && !base.is_empty()
        && let Ok(n) = n.parse::<u32>()
    {
        return format!("{base}.{}", n.saturating_add(1));
    }
    format!("{key}.1")
}

/// A place in send order (an item's priority and id), for paging that
/// holds while the queue changes: written `<priority>-<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub(super) u8, pub(super) u64);

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = s.split_once('-').and_then(|(p, id)| {
            let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
            (digits(p) && digits(id)).then(|| Some(Cursor(p.parse().ok()?, id.parse().ok()?)))?
        });
        parsed.ok_or_else(|| format!("cursor must be the `next` of a previous page, not {s:?}"))
    }
}

/// How one send of a batch ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The controller took it: the item leaves the queue.
    Ack,
    /// Try again from `at` (a 5xx or garbage answer).
    RetryAt {
        /// What went wrong.
        error: String,
        /// Not before then.
        at: OffsetDateTime,
    },
    /// Never reached the controller: pending again, the attempt not counted.
    Unsent {
        /// What went wrong.
        error: String,
    },
    /// Final: `failed` with the controller's error kept.
    Failed {
        /// The controller's error.
        error: String,
    },
    /// Final: `conflict` (DESIGN §8).
    Conflict {
        /// The controller's answer.
        error: String,
    },
}

/// How many items the queue holds, by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Waiting to be sent.
    pub pending: u64,
    /// Being sent now.
    pub in_flight: u64,
    /// Refused for good.
    pub failed: u64,
    /// Held for a conflict.
    pub conflict: u64,
    /// Every item.
    pub total: u64,
    /// Events dropped to make room for state changes.
    pub dropped_events: u64,
    /// Items caused by nodes (unauthenticated), of `total`.
    pub node_items: u64,
    /// Node items refused since the agent started: their share was full,
    /// their MAC over its rate, or a registration already queued.
    pub shed_node_items: u64,
    /// Depth by status, then kind (only the non-empty ones).
    pub by_kind: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
}

/// Why the queue could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "the queue is full ({0} items) and holds no event that could make room; \
         the change was not accepted"
    )]
    /// No room, and no event to drop for it.
    Full(u64),
    /// A node's item not admitted (DESIGN §7 "Admission").
    #[error("{0}; the change was not accepted")]
    Shed(String),
    /// No item with this id.
    #[error("no queue item {0}")]
    NotFound(u64),
    /// A conflict settled by someone else first: its check and its
    /// settlement commit together, so only one resolution lands.
    #[error("conflict {0} is already resolved")]
    Settled(u64),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(super) fn decode(bytes: &[u8]) -> Result<Item, QueueError> {
    serde_json::from_slice(bytes).map_err(|source| {
        QueueError::Store(StoreError::Corrupt {
            key: "queue item".into(),
            source,
        })
    })
}

pub(super) fn encode(item: &Item) -> Vec<u8> {
    serde_json::to_vec(item).unwrap_or_default()
}

/// How many items the queue holds at most.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Items at most.
    pub max_items: u64,
    /// Of `max_items`, items of [`Origin::Node`] at most.
    pub max_node_items: u64,
}

impl Limits {
    /// The limits the configuration sets.
    pub fn from_config(config: &crate::config::QueueConfig) -> Limits {
        Limits {
            max_items: config.max_items,
            max_node_items: config.max_node_items,
        }
    }

    /// Node items may fill the whole queue (tests and benchmarks of other
    /// things than admission).
    pub fn unshared(max_items: u64) -> Limits {
        Limits {
            max_items,
            max_node_items: max_items,
        }
    }

    /// `max_items` with the default node share, a tenth.
    pub fn with_default_share(max_items: u64) -> Limits {
        Limits {
            max_items,
            max_node_items: (max_items / 10).max(1),
        }
    }
}
