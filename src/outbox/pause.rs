//! The site's hold on the hand-over (DESIGN §15): while paused, replay and
//! syncs wait and every write queues (boots are unaffected: lookups still
//! reach the controller); kept across restarts, until an operator resumes.

use tokio::sync::watch;

use crate::store::{Store, StoreError};

/// The meta key of the hold ("paused" or absent).
pub const META_SYNC_PAUSED: &str = "sync_paused";

pub struct SyncPause {
    state: watch::Sender<bool>,
}

impl SyncPause {
    /// The hold as it was left (no hold if it cannot be read).
    pub fn open(store: &Store) -> SyncPause {
        let paused = match store.get_meta(META_SYNC_PAUSED) {
            Ok(value) => value.as_deref() == Some("paused"),
            Err(e) => {
                tracing::warn!(error = %e, "sync pause unreadable; syncing");
                false
            }
        };
        if paused {
            tracing::warn!(
                "sync is paused (by an operator, before this start): replay and syncs wait for `siteboot sync resume`"
            );
        }
        SyncPause {
            state: watch::Sender::new(paused),
        }
    }

    pub fn is_paused(&self) -> bool {
        *self.state.borrow()
    }

    /// Woken at every change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }

    /// Pauses or resumes; stored before it takes effect, so a restart
    /// keeps what the operator said. Returns whether it changed.
    pub async fn set(&self, store: &Store, paused: bool) -> Result<bool, StoreError> {
        if self.is_paused() == paused {
            return Ok(false);
        }
        let value = if paused { "paused" } else { "" };
        store
            .call(move |s| s.put_meta(&[(META_SYNC_PAUSED, value)]))
            .await?;
        self.state.send_replace(paused);
        tracing::info!(
            paused,
            "sync {} by an operator",
            if paused { "paused" } else { "resumed" }
        );
        crate::events::publish("sync_pause", serde_json::json!({ "paused": paused }));
        Ok(true)
    }
}
