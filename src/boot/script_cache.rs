//! Rendered boot scripts, kept per MAC while nothing they depend on has
//! changed, so that a node that reboots (or a boot storm of unchanged
//! nodes) does not pay for a template render each time.
//!
//! An entry is valid for the exact node record it was rendered from (the
//! node cache replaces the `Arc` on every write), the same iPXE facts and
//! agent URL, and at most [`MAX_AGE`]. Offline answers are never cached:
//! their banner carries the outage duration.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::model::boot::{BootAnswer, BootFacts, Source};
use crate::model::mac::Mac;
use crate::model::node::Node;

/// After this long an entry is rendered (and recorded for `last_known`) again.
pub const MAX_AGE: Duration = Duration::from_secs(600);
/// Bound on entries; past it the cache starts over rather than grow.
const MAX_ENTRIES: usize = 50_000;

struct Entry {
    node: Arc<Node>,
    arch: Option<String>,
    platform: Option<String>,
    base_url: String,
    answer: BootAnswer,
    rendered_at: Instant,
}

#[derive(Default)]
pub struct ScriptCache {
    entries: RwLock<HashMap<Mac, Entry>>,
}

impl ScriptCache {
    pub fn get(
        &self,
        node: &Arc<Node>,
        facts: &BootFacts,
        base_url: &str,
        source: Source,
    ) -> Option<BootAnswer> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(&node.mac)?;
        let valid = Arc::ptr_eq(&entry.node, node)
            && entry.arch == facts.arch
            && entry.platform == facts.platform
            && entry.answer.script.format() == facts.format
            && entry.base_url == base_url
            && entry.answer.source == source
            && entry.rendered_at.elapsed() < MAX_AGE;
        valid.then(|| entry.answer.clone())
    }

    pub fn put(&self, node: Arc<Node>, facts: &BootFacts, base_url: &str, answer: &BootAnswer) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&node.mac) {
            entries.clear();
        }
        entries.insert(
            node.mac,
            Entry {
                arch: facts.arch.clone(),
                platform: facts.platform.clone(),
                base_url: base_url.to_string(),
                answer: answer.clone(),
                rendered_at: Instant::now(),
                node,
            },
        );
    }

    pub fn forget(&self, mac: Mac) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&mac);
    }

    /// Forgets everything (templates reloaded).
    pub fn clear(&self) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
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
        cache.put(node.clone(), &facts, "http://a", &answer("one"));
        let s = Source::Standalone;
        assert_eq!(
            cache
                .get(&node, &facts, "http://a", s)
                .unwrap()
                .script
                .text(),
            "one"
        );
        assert!(cache.get(&node, &facts, "http://a", Source::Live).is_none());
        assert!(cache.get(&node, &facts, "http://b", s).is_none());
        assert!(
            cache
                .get(&node, &BootFacts::default(), "http://a", s)
                .is_none()
        );
        // Same content, new record (a write happened): not valid.
        let rewritten = Arc::new((*node).clone());
        assert!(cache.get(&rewritten, &facts, "http://a", s).is_none());
        cache.forget(node.mac);
        assert!(cache.get(&node, &facts, "http://a", s).is_none());
        cache.put(node.clone(), &facts, "http://a", &answer("one"));
        cache.clear();
        assert!(cache.get(&node, &facts, "http://a", s).is_none());
    }
}
