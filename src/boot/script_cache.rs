//! Rendered boot scripts, kept per MAC while nothing they depend on has
//! changed, so that a node that reboots (or a boot storm of unchanged
//! nodes) does not pay for a template render each time.
//!
//! An entry is valid for the exact node record it was rendered from (the
//! node cache replaces the `Arc` on every write), the same iPXE facts and
//! agent URL, and at most [`MAX_AGE`]. An offline answer is valid for
//! the same outage banner too ([`super::banner_duration`]: whole seconds
//! in an outage's first minute, whole minutes after), so such an entry
//! lives a second, then a minute: a boot storm during an outage renders
//! each node's script once a minute, not once a boot.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::model::boot::{BootAnswer, BootFacts, Source};
use crate::model::mac::Mac;
use crate::model::node::Node;

/// After this long an entry is rendered (and recorded for `last_known`) again.
pub const MAX_AGE: Duration = Duration::from_secs(600);
/// Bounds on entries and on their scripts' bytes; past either the cache
/// starts over rather than grow (a fleet of 50,000 nodes with scripts of
/// 1-2 KB fits; a template that renders megabytes does not take memory).
const MAX_ENTRIES: usize = 50_000;
const MAX_BYTES: usize = 64 << 20;

struct Entry {
    node: Arc<Node>,
    arch: Option<String>,
    platform: Option<String>,
    base_url: String,
    /// The outage an offline answer's banner shows (None online).
    offline: Option<Outage>,
    answer: BootAnswer,
    rendered_at: Instant,
}

/// What an offline answer's banner says: since when, and for how many
/// whole seconds, the controller has been unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    pub since: time::OffsetDateTime,
    pub seconds: u64,
}

#[derive(Default)]
struct Entries {
    by_mac: HashMap<Mac, Entry>,
    /// The kept scripts' bytes.
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, mac: &Mac) {
        if let Some(old) = self.by_mac.remove(mac) {
            self.bytes -= old.answer.script.len();
        }
    }

    fn clear(&mut self) {
        self.by_mac.clear();
        self.bytes = 0;
    }

    /// The entry count and bytes, in `/metrics`.
    fn publish(&self) {
        let m = crate::metrics::metrics();
        m.script_cache_entries.set(self.by_mac.len() as i64);
        m.script_cache_bytes.set(self.bytes as i64);
    }
}

#[derive(Default)]
pub struct ScriptCache {
    entries: RwLock<Entries>,
}

impl ScriptCache {
    pub fn get(
        &self,
        node: &Arc<Node>,
        facts: &BootFacts,
        base_url: &str,
        source: Source,
        offline: Option<Outage>,
    ) -> Option<BootAnswer> {
        let found = {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            entries
                .by_mac
                .get(&node.mac)
                .filter(|entry| {
                    Arc::ptr_eq(&entry.node, node)
                        && entry.arch == facts.arch
                        && entry.platform == facts.platform
                        && entry.answer.script.format() == facts.format
                        && entry.base_url == base_url
                        && entry.answer.source == source
                        && entry.offline == offline
                        && entry.rendered_at.elapsed() < MAX_AGE
                })
                .map(|entry| entry.answer.clone())
        };
        crate::metrics::metrics().script_cache_lookup(found.is_some());
        found
    }

    pub fn put(
        &self,
        node: Arc<Node>,
        facts: &BootFacts,
        base_url: &str,
        answer: &BootAnswer,
        offline: Option<Outage>,
    ) {
        let size = answer.script.len();
        if size > MAX_BYTES {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.remove(&node.mac);
        if entries.by_mac.len() >= MAX_ENTRIES || entries.bytes + size > MAX_BYTES {
            entries.clear();
        }
        entries.bytes += size;
        entries.by_mac.insert(
            node.mac,
            Entry {
                arch: facts.arch.clone(),
                platform: facts.platform.clone(),
                base_url: base_url.to_string(),
                offline,
                answer: answer.clone(),
                rendered_at: Instant::now(),
                node,
            },
        );
        entries.publish();
    }

    pub fn forget(&self, mac: Mac) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.remove(&mac);
        entries.publish();
    }

    /// Forgets everything (templates reloaded).
    pub fn clear(&self) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.clear();
        entries.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::boot::Source;
    use crate::model::decision::Action;
    use crate::model::node::NodeState;

    fn answer(text: &str) -> BootAnswer {
        BootAnswer {
            script: crate::model::script::Script::ipxe(text.into()),
            source: Source::Standalone,
            action: Action::Local,
            state: Some(NodeState::Active),
        }
    }

    #[test]
    fn entries_follow_the_node_record_facts_and_url() {
        let cache = ScriptCache::default();
        let node = Arc::new(Node::new_local(
            "52:54:00:00:00:01".parse().unwrap(),
            NodeState::Active,
            time::OffsetDateTime::UNIX_EPOCH,
        ));
        let facts = BootFacts {
            arch: Some("x86_64".into()),
            ..BootFacts::default()
        };
        cache.put(node.clone(), &facts, "http://a", &answer("one"), None);
        let s = Source::Standalone;
        assert_eq!(
            cache
                .get(&node, &facts, "http://a", s, None)
                .unwrap()
                .script
                .text(),
            "one"
        );
        assert!(
            cache
                .get(&node, &facts, "http://a", Source::Live, None)
                .is_none()
        );
        assert!(cache.get(&node, &facts, "http://b", s, None).is_none());
        assert!(
            cache
                .get(&node, &BootFacts::default(), "http://a", s, None)
                .is_none()
        );
        // Same content, new record (a write happened): not valid.
        let rewritten = Arc::new((*node).clone());
        assert!(cache.get(&rewritten, &facts, "http://a", s, None).is_none());
        cache.forget(node.mac);
        assert!(cache.get(&node, &facts, "http://a", s, None).is_none());
        cache.put(node.clone(), &facts, "http://a", &answer("one"), None);
        cache.clear();
        assert!(cache.get(&node, &facts, "http://a", s, None).is_none());
    }

    #[test]
    fn an_offline_entry_is_valid_for_its_banner_only() {
        let cache = ScriptCache::default();
        let node = Arc::new(Node::new_local(
            "52:54:00:00:00:02".parse().unwrap(),
            NodeState::Active,
            time::OffsetDateTime::UNIX_EPOCH,
        ));
        let facts = BootFacts::default();
        let banner = |seconds: u64| Outage {
            since: time::OffsetDateTime::UNIX_EPOCH,
            seconds,
        };
        let offline = Source::Offline;
        let down = BootAnswer {
            source: Source::Offline,
            ..answer("down 5s")
        };
        cache.put(node.clone(), &facts, "http://a", &down, Some(banner(5)));
        let hit = cache.get(&node, &facts, "http://a", offline, Some(banner(5)));
        assert_eq!(hit.unwrap().script.text(), "down 5s");
        // A second later the banner says 6s: rendered again.
        assert!(
            cache
                .get(&node, &facts, "http://a", offline, Some(banner(6)))
                .is_none()
        );
        // Back online: the offline entry is not an online answer.
        assert!(
            cache
                .get(&node, &facts, "http://a", offline, None)
                .is_none()
        );
    }
}
