//! Boot events: every boot is reported to the controller (time, action,
//! source), without a boot ever waiting for it, and without a boot storm
//! becoming a storm of controller calls or queue commits.

use std::sync::Arc;

use time::OffsetDateTime;

use super::queue::Kind;
use super::{Attempt, Outbox, WriteError};
use crate::central::api::NodeReport;
use crate::central::ops::Operation;
use crate::model::boot::BootAnswer;
use crate::model::mac::Mac;
use crate::model::node::NodeState;

/// Boot events sent to the controller at once, at most; past this they
/// are queued (a boot storm must not become a storm of controller calls).
pub(super) const DIRECT_EVENT_SENDS: usize = 32;

/// Boot events waiting to be sent or queued, at most; past this (a boot
/// storm faster than the disk) further events are dropped and counted —
/// events are what DESIGN §7 lets the agent drop, never state changes.
pub(super) const EVENT_BACKLOG: usize = 4096;

/// A boot with the same outcome (action, source, state) as the MAC's last
/// recorded boot within this long is not recorded again: iPXE retries and
/// boot storms would otherwise cost a controller call or a queue commit per
/// request for no new information.
const BOOT_EVENT_REPEAT: std::time::Duration = std::time::Duration::from_secs(300);

/// What a boot event reports: action, source, state.
pub(super) type BootOutcome = (
    crate::model::decision::Action,
    crate::model::boot::Source,
    Option<NodeState>,
);

impl Outbox {
    /// Records that a node booted (time, action, source), without making
    /// the boot wait: sent directly when online, else queued. Standalone
    /// there is nobody to tell.
    pub fn boot_event(self: &Arc<Self>, mac: Mac, answer: &BootAnswer) {
        if !self.port.mode().has_controller() || self.repeated_boot(mac, answer) {
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
            metadata: Some(serde_json::json!({
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

    /// A boot event: like any write, but at most [`DIRECT_EVENT_SENDS`]
    /// go directly at a time, and a refusal drops it (it is only news).
    async fn send_event(&self, mac: Mac, report: NodeReport) -> Result<(), WriteError> {
        let operation = Operation::Report { report };
        let permit = self.direct_events.clone().try_acquire_owned().ok();
        match self.attempt(mac, &operation, permit.is_some()).await {
            Ok(Attempt::Sent(_)) => Ok(()),
            Ok(Attempt::Queue { key, .. }) => {
                drop(permit);
                self.enqueue_operation(Kind::Event, mac, &operation, key, None)
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
}
