//! The site's policy (DESIGN §15), as pure data and rules: the values a
//! controller such as PureBoot sets for the site (autonomy level, cache
//! policy with its size and retention, conflict strategy), the local keys
//! that pin them, where each value in force came from, and what each
//! autonomy level lets the site decide while the controller is gone.
//!
//! Reading the controller's answer is tolerant: a value the agent does
//! not know is reported (to be logged) and the previous value stays.

use std::time::Duration;

use super::node::NodeState;

/// What the site may decide alone while the controller is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Autonomy {
    /// No new nodes and no operator writes; installer reports still queue.
    Readonly,
    /// New nodes, and state changes that cannot start an install.
    Limited,
    /// Every write, queued for the controller.
    Full,
}

impl Autonomy {
    /// The name PureBoot and the configuration use.
    pub fn as_str(self) -> &'static str {
        match self {
            Autonomy::Readonly => "readonly",
            Autonomy::Limited => "limited",
            Autonomy::Full => "full",
        }
    }

    /// The level named `name`, if it is one.
    pub fn parse(name: &str) -> Option<Autonomy> {
        match name.trim() {
            "readonly" => Some(Autonomy::Readonly),
            "limited" => Some(Autonomy::Limited),
            "full" => Some(Autonomy::Full),
            _ => None,
        }
    }

    /// May the site make `write` while offline? The refusal names the
    /// level and what it forbids (the 409's message).
    pub fn allows(self, write: OfflineWrite) -> Result<(), String> {
        let refused = |what: &str| {
            Err(format!(
                "the site's autonomy level is {}: while the controller is unreachable it may not {what}",
                self.as_str()
            ))
        };
        match (self, write) {
            // Facts from an installer are never refused (DESIGN §15).
            (_, OfflineWrite::InstallerReport) => Ok(()),
            (Autonomy::Full, _) => Ok(()),
            (Autonomy::Readonly, OfflineWrite::NewNode) => refused("create nodes"),
            (Autonomy::Readonly, OfflineWrite::StateChange(_)) => refused("change a node's state"),
            (Autonomy::Limited, OfflineWrite::NewNode) => Ok(()),
            (Autonomy::Limited, OfflineWrite::StateChange(state)) if state.starts_install() => {
                refused(&format!(
                    "set a node to {} (it would start an install)",
                    state.as_str()
                ))
            }
            (Autonomy::Limited, OfflineWrite::StateChange(_)) => Ok(()),
        }
    }
}

/// A write the site makes while the controller is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineWrite {
    /// A MAC first seen now, stored as a node.
    NewNode,
    /// An operator's change of a node's state, to this state.
    StateChange(NodeState),
    /// An installer's report (started, finished, failed).
    InstallerReport,
}

impl NodeState {
    /// Does setting a node to this state make its next boot an install?
    pub fn starts_install(self) -> bool {
        matches!(self, NodeState::Pending | NodeState::Reprovision)
    }
}

/// Which of the controller's files the content cache fetches ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CachePolicy {
    /// Nothing ahead; files are cached as nodes ask for them.
    Minimal,
    /// The files of workflows assigned to the site's pending and
    /// reprovision nodes, and of `offline_safe` workflows (pinned).
    Assigned,
    /// Every file of every workflow the controller lists.
    Mirror,
    /// Files whose paths match the patterns.
    Pattern,
}

impl CachePolicy {
    /// The name PureBoot and the configuration use.
    pub fn as_str(self) -> &'static str {
        match self {
            CachePolicy::Minimal => "minimal",
            CachePolicy::Assigned => "assigned",
            CachePolicy::Mirror => "mirror",
            CachePolicy::Pattern => "pattern",
        }
    }

    /// The policy named `name`, if it is one.
    pub fn parse(name: &str) -> Option<CachePolicy> {
        match name.trim() {
            "minimal" => Some(CachePolicy::Minimal),
            "assigned" => Some(CachePolicy::Assigned),
            "mirror" => Some(CachePolicy::Mirror),
            "pattern" => Some(CachePolicy::Pattern),
            _ => None,
        }
    }
}

/// How the controller's site record says conflicts are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictStrategy {
    /// The controller's side wins.
    CentralWins,
    /// The later change wins (its time here or there).
    LastWrite,
    /// The site's side wins (§8's `local_wins`).
    SiteWins,
    /// An operator decides.
    Manual,
}

impl ConflictStrategy {
    /// The name PureBoot uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictStrategy::CentralWins => "central_wins",
            ConflictStrategy::LastWrite => "last_write",
            ConflictStrategy::SiteWins => "site_wins",
            ConflictStrategy::Manual => "manual",
        }
    }

    /// The strategy named `name`, if it is one.
    pub fn parse(name: &str) -> Option<ConflictStrategy> {
        match name.trim() {
            "central_wins" => Some(ConflictStrategy::CentralWins),
            "last_write" => Some(ConflictStrategy::LastWrite),
            "site_wins" => Some(ConflictStrategy::SiteWins),
            "manual" => Some(ConflictStrategy::Manual),
            _ => None,
        }
    }
}

/// Where a value in force came from (shown to operators).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The controller's registration answer or site record.
    Controller,
    /// A local key pins it.
    Config,
    /// Neither: the agent's default.
    Default,
}

impl Origin {
    /// The name the status views use.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Controller => "controller",
            Origin::Config => "config",
            Origin::Default => "default",
        }
    }
}

/// A value in force and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Setting<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub origin: Origin,
}

/// What the controller said, each value as it was understood; `None`
/// where it said nothing (or nothing the agent knows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerPolicy {
    /// `autonomy_level`.
    pub autonomy: Option<Autonomy>,
    /// `cache_policy`.
    pub cache_policy: Option<CachePolicy>,
    /// `cache_max_size_gb`, in bytes.
    pub cache_max_bytes: Option<u64>,
    /// `cache_retention_days`.
    pub cache_retention: Option<Duration>,
    /// `cache_patterns_json` (the site record's), the patterns.
    pub cache_patterns: Option<Vec<String>>,
    /// `conflict_resolution` (the site record's).
    pub conflict_strategy: Option<ConflictStrategy>,
    /// Values the agent did not understand: (field, value as sent), to be
    /// logged; the previous value stays.
    pub not_understood: Vec<(String, String)>,
}

const GIB: u64 = 1 << 30;
/// Patterns of the `pattern` cache policy taken at most, and their length.
const MAX_PATTERNS: usize = 256;
const MAX_PATTERN_LEN: usize = 512;
const DAY: Duration = Duration::from_secs(24 * 3600);

impl ControllerPolicy {
    /// Reads a registration answer's `config` or a site record's `data`
    /// (the same field names), tolerantly: a missing or null field says
    /// nothing; a value of the wrong kind or an unknown name is noted in
    /// `not_understood`.
    pub fn read(record: &serde_json::Value) -> ControllerPolicy {
        let mut not_understood = Vec::new();
        let mut named = |field: &str| -> Option<String> {
            match record.get(field) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    not_understood.push(policy_note(field, other));
                    None
                }
            }
        };
        let (autonomy, cache, conflicts, patterns) = (
            named("autonomy_level"),
            named("cache_policy"),
            named("conflict_resolution"),
            named("cache_patterns_json"),
        );
        let mut count = |field: &str| -> Option<u64> {
            let value = record.get(field).filter(|v| !v.is_null())?;
            let n = value.as_u64();
            if n.is_none() {
                not_understood.push(policy_note(field, value));
            }
            n
        };
        let (gigabytes, days) = (count("cache_max_size_gb"), count("cache_retention_days"));
        let mut parsed = |text: Option<String>, field: &str| -> Option<String> {
            text.inspect(|t| not_understood.push((field.to_string(), t.clone())))
        };
        // Each name is checked by its own parser; a name it does not
        // know stays in `not_understood`, one it knows is taken out.
        let autonomy = parsed(autonomy, "autonomy_level").and_then(|t| Autonomy::parse(&t));
        let cache_policy = parsed(cache, "cache_policy").and_then(|t| CachePolicy::parse(&t));
        let conflict_strategy =
            parsed(conflicts, "conflict_resolution").and_then(|t| ConflictStrategy::parse(&t));
        // A list of shell patterns, bounded: a controller's mistake must
        // not become a prefetch that matches by a million patterns.
        let cache_patterns = parsed(patterns, "cache_patterns_json")
            .and_then(|t| serde_json::from_str::<Vec<String>>(&t).ok())
            .filter(|list| {
                list.len() <= MAX_PATTERNS && list.iter().all(|p| p.len() <= MAX_PATTERN_LEN)
            });
        let understood = [
            ("autonomy_level", autonomy.is_some()),
            ("cache_policy", cache_policy.is_some()),
            ("conflict_resolution", conflict_strategy.is_some()),
            ("cache_patterns_json", cache_patterns.is_some()),
        ];
        not_understood
            .retain(|(field, _)| !understood.iter().any(|(name, ok)| *ok && name == field));
        ControllerPolicy {
            autonomy,
            cache_policy,
            cache_max_bytes: gigabytes.map(|gb| gb.saturating_mul(GIB)),
            cache_retention: days.map(|d| DAY.saturating_mul(u32::try_from(d).unwrap_or(u32::MAX))),
            cache_patterns,
            conflict_strategy,
            not_understood,
        }
    }
}

fn policy_note(field: &str, value: &serde_json::Value) -> (String, String) {
    let mut shown = value.to_string();
    shown.truncate(80);
    (field.to_string(), shown)
}

/// The local keys that pin a value against the controller (DESIGN §2:
/// `site.autonomy`, `cache.policy`, `cache.patterns`, `cache.retention`,
/// `conflicts.site_policy`); `None` where unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPins {
    /// `site.autonomy`.
    pub autonomy: Option<Autonomy>,
    /// `cache.policy`.
    pub cache_policy: Option<CachePolicy>,
    /// `cache.patterns`.
    pub cache_patterns: Option<Vec<String>>,
    /// `cache.retention`.
    pub cache_retention: Option<Duration>,
    /// `conflicts.site_policy`.
    pub conflict_strategy: Option<ConflictStrategy>,
}

/// The policy in force, each value with its origin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SitePolicy {
    /// What the site may decide alone while offline.
    pub autonomy: Setting<Autonomy>,
    /// What the content cache fetches ahead.
    pub cache_policy: Setting<CachePolicy>,
    /// The patterns of `pattern`.
    pub cache_patterns: Setting<Vec<String>>,
    /// The cache's size from the controller (`cache.max_bytes` otherwise).
    pub cache_max_bytes: Setting<Option<u64>>,
    /// Unpinned entries unused this long are evicted; None: never.
    pub cache_retention: Setting<Option<Duration>>,
    /// The controller's conflict strategy; None: §8's per-kind policies.
    pub conflict_strategy: Setting<Option<ConflictStrategy>>,
}

impl SitePolicy {
    /// The agent's defaults: today's behaviour (DESIGN §2).
    pub fn defaults() -> SitePolicy {
        SitePolicy {
            autonomy: Setting {
                value: Autonomy::Full,
                origin: Origin::Default,
            },
            cache_policy: Setting {
                value: CachePolicy::Assigned,
                origin: Origin::Default,
            },
            cache_patterns: Setting {
                value: Vec::new(),
                origin: Origin::Default,
            },
            cache_max_bytes: Setting {
                value: None,
                origin: Origin::Default,
            },
            cache_retention: Setting {
                value: None,
                origin: Origin::Default,
            },
            conflict_strategy: Setting {
                value: None,
                origin: Origin::Default,
            },
        }
    }

    /// The policy after the controller said `said`, over `previous` (the
    /// last in force, persisted): a pinned value stays the local key's; a
    /// value the controller gave replaces the previous one; where it said
    /// nothing (or nothing understood), the previous value stays.
    pub fn resolve(previous: &SitePolicy, pins: &LocalPins, said: &ControllerPolicy) -> SitePolicy {
        fn pick<T: Clone>(
            pinned: Option<T>,
            said: Option<T>,
            previous: &Setting<T>,
            default: Setting<T>,
        ) -> Setting<T> {
            match (pinned, said) {
                (Some(value), _) => Setting {
                    value,
                    origin: Origin::Config,
                },
                (None, Some(value)) => Setting {
                    value,
                    origin: Origin::Controller,
                },
                // A pin taken out of the configuration no longer holds:
                // the default until the controller says otherwise.
                (None, None) if previous.origin == Origin::Config => default,
                (None, None) => previous.clone(),
            }
        }
        let defaults = SitePolicy::defaults();
        SitePolicy {
            autonomy: pick(
                pins.autonomy,
                said.autonomy,
                &previous.autonomy,
                defaults.autonomy,
            ),
            cache_policy: pick(
                pins.cache_policy,
                said.cache_policy,
                &previous.cache_policy,
                defaults.cache_policy,
            ),
            cache_patterns: pick(
                pins.cache_patterns.clone(),
                said.cache_patterns.clone(),
                &previous.cache_patterns,
                defaults.cache_patterns,
            ),
            cache_max_bytes: pick(
                None,
                said.cache_max_bytes.map(Some),
                &previous.cache_max_bytes,
                defaults.cache_max_bytes,
            ),
            cache_retention: pick(
                pins.cache_retention.map(Some),
                said.cache_retention.map(Some),
                &previous.cache_retention,
                defaults.cache_retention,
            ),
            conflict_strategy: pick(
                pins.conflict_strategy.map(Some),
                said.conflict_strategy.map(Some),
                &previous.conflict_strategy,
                defaults.conflict_strategy,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pureboots_registration_answer_is_read_and_unknown_values_noted() {
        // As PureBoot's AgentConfig serialises it.
        let said = ControllerPolicy::read(&json!({
            "site_id": "fra1", "site_name": "Frankfurt", "autonomy_level": "readonly",
            "cache_policy": "minimal", "cache_max_size_gb": 50, "cache_retention_days": 7,
            "heartbeat_interval": 60, "sync_enabled": true
        }));
        assert_eq!(said.autonomy, Some(Autonomy::Readonly));
        assert_eq!(said.cache_policy, Some(CachePolicy::Minimal));
        assert_eq!(said.cache_max_bytes, Some(50 * GIB));
        assert_eq!(said.cache_retention, Some(DAY * 7));
        assert!(said.not_understood.is_empty());

        // PureBoot's nulls say nothing; unknown names and wrong kinds are noted.
        let said = ControllerPolicy::read(&json!({
            "autonomy_level": null, "cache_policy": "everything", "cache_max_size_gb": "big",
            "conflict_resolution": "site_wins", "cache_patterns_json": "[\"debian/*\"]"
        }));
        assert_eq!(said.autonomy, None);
        assert_eq!(said.cache_policy, None);
        assert_eq!(said.cache_max_bytes, None);
        assert_eq!(said.conflict_strategy, Some(ConflictStrategy::SiteWins));
        assert_eq!(said.cache_patterns, Some(vec!["debian/*".to_string()]));
        let mut fields: Vec<&str> = said
            .not_understood
            .iter()
            .map(|(f, _)| f.as_str())
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, ["cache_max_size_gb", "cache_policy"]);

        // Patterns that are not a list of strings, or too many: noted.
        let many: Vec<String> = (0..300).map(|i| format!("p{i}/*")).collect();
        for garbage in [
            json!("not json"),
            json!("{\"a\": 1}"),
            json!(serde_json::to_string(&many).unwrap()),
        ] {
            let said = ControllerPolicy::read(&json!({"cache_patterns_json": garbage}));
            assert_eq!(said.cache_patterns, None);
            assert_eq!(said.not_understood.len(), 1, "{garbage}");
        }
    }

    #[test]
    fn pins_win_the_controller_replaces_and_silence_keeps_the_last_value() {
        let defaults = SitePolicy::defaults();
        let said = ControllerPolicy {
            autonomy: Some(Autonomy::Readonly),
            cache_policy: Some(CachePolicy::Mirror),
            ..ControllerPolicy::default()
        };
        let pins = LocalPins {
            cache_policy: Some(CachePolicy::Minimal),
            ..LocalPins::default()
        };
        let now = SitePolicy::resolve(&defaults, &pins, &said);
        assert_eq!(
            now.autonomy,
            Setting {
                value: Autonomy::Readonly,
                origin: Origin::Controller
            }
        );
        assert_eq!(
            now.cache_policy,
            Setting {
                value: CachePolicy::Minimal,
                origin: Origin::Config
            }
        );
        assert_eq!(now.conflict_strategy.origin, Origin::Default);

        // The next answer says nothing understood about autonomy: it stays.
        let next = SitePolicy::resolve(&now, &pins, &ControllerPolicy::default());
        assert_eq!(next.autonomy, now.autonomy);
    }

    #[test]
    fn each_autonomy_level_allows_what_design_15_says_offline() {
        use NodeState::*;
        use OfflineWrite::*;
        for level in [Autonomy::Readonly, Autonomy::Limited, Autonomy::Full] {
            assert!(level.allows(InstallerReport).is_ok(), "{level:?}");
        }
        assert!(Autonomy::Full.allows(StateChange(Reprovision)).is_ok());
        assert!(Autonomy::Full.allows(NewNode).is_ok());
        assert!(Autonomy::Limited.allows(NewNode).is_ok());
        assert!(Autonomy::Limited.allows(StateChange(Installed)).is_ok());
        for install in [Pending, Reprovision] {
            let refused = Autonomy::Limited.allows(StateChange(install)).unwrap_err();
            assert!(
                refused.contains("limited") && refused.contains(install.as_str()),
                "{refused}"
            );
        }
        let refused = Autonomy::Readonly.allows(NewNode).unwrap_err();
        assert!(refused.contains("readonly"), "{refused}");
        assert!(Autonomy::Readonly.allows(StateChange(Installed)).is_err());
    }
}
