//! The site policy in force (DESIGN §15): what the controller last set
//! for the site, under the local keys that pin values, kept in the store
//! so that it holds offline and across restarts. The rules themselves are
//! `model::policy`; this holds the one value every service reads (the
//! outbox its autonomy and conflict strategy, the content cache its
//! policy, size and retention, the status views all of it).

use std::sync::RwLock;

use crate::model::policy::{ControllerPolicy, LocalPins, SitePolicy};
use crate::store::{Store, StoreError};

/// The meta key of the policy in force (JSON).
pub const META_SITE_POLICY: &str = "site_policy";

/// The policy in force and the local pins it is resolved under.
pub struct PolicyCell {
    current: RwLock<SitePolicy>,
    pins: LocalPins,
    /// Serialises [`PolicyCell::take`]: two answers read at once must not
    /// each resolve over the same previous value and lose one another.
    taking: tokio::sync::Mutex<()>,
}

impl PolicyCell {
    /// The policy last stored (else the defaults), under today's pins: a
    /// key pinned since the last run wins at once, a pin taken out falls
    /// back to the default until the controller speaks.
    pub fn open(store: &Store, pins: LocalPins) -> Result<PolicyCell, StoreError> {
        let stored = store
            .get_meta(META_SITE_POLICY)?
            .and_then(|text| match serde_json::from_str::<SitePolicy>(&text) {
                Ok(policy) => Some(policy),
                Err(e) => {
                    tracing::warn!(error = %e, "stored site policy unreadable; using the defaults");
                    None
                }
            })
            .unwrap_or_else(SitePolicy::defaults);
        let current = SitePolicy::resolve(&stored, &pins, &ControllerPolicy::default());
        Ok(PolicyCell::with(current, pins))
    }

    /// A cell holding `current` (tests, and [`PolicyCell::open`]).
    pub fn with(current: SitePolicy, pins: LocalPins) -> PolicyCell {
        PolicyCell {
            current: RwLock::new(current),
            pins,
            taking: tokio::sync::Mutex::new(()),
        }
    }

    /// The policy in force now.
    pub fn current(&self) -> SitePolicy {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What the site may decide alone while offline.
    pub fn autonomy(&self) -> crate::model::policy::Autonomy {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .autonomy
            .value
    }

    /// The controller's cache size, if it set one.
    pub fn cache_max_bytes(&self) -> Option<u64> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cache_max_bytes
            .value
    }

    /// Takes what the controller said (`from`: "registration" or "site
    /// record", for the log): values it did not understand are logged and
    /// ignored; a change is stored, logged and published as a live event.
    /// Returns the names of the values that changed.
    pub async fn take(&self, store: &Store, said: &ControllerPolicy, from: &str) -> Vec<String> {
        let _one = self.taking.lock().await;
        for (field, value) in &said.not_understood {
            tracing::warn!(field = %field, value = %crate::logsafe::shown(value), from,
                "site policy value from the controller not understood; the previous value stays");
        }
        let previous = self.current();
        let next = SitePolicy::resolve(&previous, &self.pins, said);
        let changed = changes(&previous, &next);
        if changed.is_empty() {
            return changed;
        }
        let text = serde_json::to_string(&next).unwrap_or_default();
        if let Err(e) = store
            .call(move |s| s.put_meta(&[(META_SITE_POLICY, &text)]))
            .await
        {
            // In force now all the same; the next answer stores it again.
            tracing::warn!(error = %e, "site policy not stored");
        }
        for name in &changed {
            tracing::info!(value = name.as_str(), from, now = %describe(&next, name),
                "site policy changed");
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next.clone();
        crate::events::publish("policy", status_json(&next));
        changed
    }
}

/// The names of the values that differ (value or origin).
fn changes(before: &SitePolicy, after: &SitePolicy) -> Vec<String> {
    let mut changed = Vec::new();
    let mut note = |name: &str, differs: bool| {
        if differs {
            changed.push(name.to_string());
        }
    };
    note("autonomy", before.autonomy != after.autonomy);
    note("cache_policy", before.cache_policy != after.cache_policy);
    note(
        "cache_patterns",
        before.cache_patterns != after.cache_patterns,
    );
    note(
        "cache_max_bytes",
        before.cache_max_bytes != after.cache_max_bytes,
    );
    note(
        "cache_retention",
        before.cache_retention != after.cache_retention,
    );
    note(
        "conflict_strategy",
        before.conflict_strategy != after.conflict_strategy,
    );
    changed
}

fn describe(policy: &SitePolicy, name: &str) -> String {
    let json = status_json(policy);
    format!("{}", json[name])
}

/// The policy as the status views show it: each value with its origin.
pub fn status_json(policy: &SitePolicy) -> serde_json::Value {
    fn shown<T: serde::Serialize>(
        value: T,
        origin: crate::model::policy::Origin,
    ) -> serde_json::Value {
        serde_json::json!({"value": value, "origin": origin.as_str()})
    }
    serde_json::json!({
        "autonomy": shown(policy.autonomy.value.as_str(), policy.autonomy.origin),
        "cache_policy": shown(policy.cache_policy.value.as_str(), policy.cache_policy.origin),
        "cache_patterns": shown(&policy.cache_patterns.value, policy.cache_patterns.origin),
        "cache_max_bytes": shown(policy.cache_max_bytes.value, policy.cache_max_bytes.origin),
        "cache_retention_days": shown(
            policy.cache_retention.value.map(|d| d.as_secs() / 86_400),
            policy.cache_retention.origin,
        ),
        "conflict_strategy": shown(
            policy.conflict_strategy.value.map(|s| s.as_str()),
            policy.conflict_strategy.origin,
        ),
    })
}

/// One line for people (the status page; its script writes the same):
/// `autonomy readonly (controller) · cache minimal (controller) ·
/// conflicts central_wins (controller)`, and `· sync paused` when held.
pub fn summary(status: &serde_json::Value, sync_paused: bool) -> String {
    let part = |label: &str, name: &str, none: &str| {
        let value = &status[name];
        let shown = value["value"].as_str().unwrap_or(none);
        format!(
            "{label} {shown} ({})",
            value["origin"].as_str().unwrap_or("default")
        )
    };
    let mut line = [
        part("autonomy", "autonomy", "full"),
        part("cache", "cache_policy", "assigned"),
        part("conflicts", "conflict_strategy", "per kind"),
    ]
    .join(" · ");
    if sync_paused {
        line.push_str(" · sync paused");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::{Autonomy, CachePolicy, Origin};

    #[tokio::test]
    async fn a_change_is_stored_and_holds_across_a_reopen_under_the_pins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let cell = PolicyCell::open(&store, LocalPins::default()).expect("open");
        assert_eq!(cell.autonomy(), Autonomy::Full);
        let said = ControllerPolicy {
            autonomy: Some(Autonomy::Readonly),
            cache_policy: Some(CachePolicy::Minimal),
            ..ControllerPolicy::default()
        };
        let changed = cell.take(&store, &said, "registration").await;
        assert_eq!(changed, ["autonomy", "cache_policy"]);
        // The same answer again changes nothing.
        assert!(cell.take(&store, &said, "site record").await.is_empty());

        let reopened = PolicyCell::open(&store, LocalPins::default()).expect("reopen");
        assert_eq!(reopened.autonomy(), Autonomy::Readonly);
        assert_eq!(reopened.current().autonomy.origin, Origin::Controller);

        // Pinned since: the pin wins at once; unpinned again: the default.
        let pins = LocalPins {
            autonomy: Some(Autonomy::Limited),
            ..LocalPins::default()
        };
        let pinned = PolicyCell::open(&store, pins.clone()).expect("pinned");
        assert_eq!(pinned.autonomy(), Autonomy::Limited);
        assert_eq!(pinned.current().autonomy.origin, Origin::Config);
        pinned.take(&store, &said, "registration").await;
        assert_eq!(pinned.autonomy(), Autonomy::Limited);
        let unpinned = PolicyCell::open(&store, LocalPins::default()).expect("unpinned");
        assert_eq!(unpinned.autonomy(), Autonomy::Readonly);
        let json = status_json(&unpinned.current());
        assert_eq!(json["autonomy"]["value"], "readonly");
        assert_eq!(json["cache_policy"]["origin"], "controller");
    }
}
