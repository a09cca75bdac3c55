//! Boot events: which boots are reported to the controller, and what the
//! report says. A boot never waits for its event, and a boot storm does not
//! become a storm of controller calls or queue commits: repeats are
//! folded, a bounded backlog sheds the excess (events are what DESIGN §7
//! lets the agent drop), and only a few events go out directly at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::central::api::NodeReport;
use crate::model::boot::{BootAnswer, Source};
use crate::model::decision::Action;
use crate::model::mac::{Mac, MacMap};
use crate::model::node::NodeState;

/// Boot events sent to the controller at once, at most; past this they
/// are queued.
const DIRECT_EVENT_SENDS: usize = 32;

/// Boot events waiting to be sent or queued, at most; past this (a boot
/// storm faster than the disk) further events are dropped and counted.
const EVENT_BACKLOG: usize = 4096;

/// A boot with the same outcome (action, source, state) as the MAC's last
/// recorded boot within this long is not recorded again: iPXE retries and
/// boot storms would otherwise cost a controller call or a queue commit per
/// request for no new information.
const BOOT_EVENT_REPEAT: Duration = Duration::from_secs(300);

/// What a boot event reports: action, source, state.
type BootOutcome = (Action, Source, Option<NodeState>);

pub struct BootEvents {
    direct: Arc<Semaphore>,
    backlog: Arc<Semaphore>,
    shed: AtomicU64,
    /// Last recorded boot outcome per MAC, and when. Read-locked for the
    /// common case (a repeat), written only when a boot is recorded.
    last: RwLock<MacMap<(BootOutcome, Instant)>>,
}

impl Default for BootEvents {
    fn default() -> Self {
        BootEvents {
            direct: Arc::new(Semaphore::new(DIRECT_EVENT_SENDS)),
            backlog: Arc::new(Semaphore::new(EVENT_BACKLOG)),
            shed: AtomicU64::new(0),
            last: RwLock::new(MacMap::default()),
        }
    }
}

impl BootEvents {
    /// A place in the backlog for this boot's event; None when it repeats
    /// the MAC's last outcome or the backlog is full (counted, logged at
    /// powers of two).
    pub fn admit(&self, mac: Mac, answer: &BootAnswer) -> Option<OwnedSemaphorePermit> {
        if self.repeated(mac, answer) {
            return None;
        }
        match self.backlog.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let shed = 1 + self.shed.fetch_add(1, Ordering::Relaxed);
                if shed.is_power_of_two() {
                    tracing::warn!(
                        shed,
                        "boot events arrive faster than they can be queued; dropping some"
                    );
                }
                None
            }
        }
    }

    /// Leave to send one event directly (None: enough are under way; queue it).
    pub fn direct_send(&self) -> Option<OwnedSemaphorePermit> {
        self.direct.clone().try_acquire_owned().ok()
    }

    /// Records `answer` as `mac`'s last boot; true if it repeats the last
    /// one within [`BOOT_EVENT_REPEAT`].
    fn repeated(&self, mac: Mac, answer: &BootAnswer) -> bool {
        let outcome = (answer.action, answer.source, answer.state);
        let now = Instant::now();
        let repeats = |last: &MacMap<(BootOutcome, Instant)>| {
            last.get(&mac).is_some_and(|(previous, at)| {
                *previous == outcome && now.saturating_duration_since(*at) < BOOT_EVENT_REPEAT
            })
        };
        if repeats(&self.last.read().unwrap_or_else(|e| e.into_inner())) {
            return true;
        }
        let mut last = self.last.write().unwrap_or_else(|e| e.into_inner());
        // Another boot of this MAC may have recorded it meanwhile.
        if repeats(&last) {
            return true;
        }
        last.insert(mac, (outcome, now));
        false
    }
}

/// The `boot_started` report of a boot (PureBoot's `NodeReport`).
pub fn boot_report(mac: Mac, answer: &BootAnswer) -> NodeReport {
    let now = OffsetDateTime::now_utc();
    NodeReport {
        mac_address: mac.to_string(),
        event: Some("boot_started".into()),
        status: Some("success".into()),
        message: Some(format!(
            "action={} source={}",
            answer.action.as_str(),
            answer.source.as_str()
        )),
        event_metadata: Some(serde_json::json!({
            "booted_at": now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "action": answer.action.as_str(),
            "source": answer.source.as_str(),
            "state": answer.state.map(|s| s.as_str()),
        })),
        installation_status: None,
        extra: Default::default(),
    }
}
