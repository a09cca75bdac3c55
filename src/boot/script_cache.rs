//! Rendered boot scripts, kept per MAC while nothing they depend on has
//! changed, so that a node that reboots (or a boot storm of unchanged
//! nodes) does not pay for a template render each time.
//!
//! An entry is valid for the exact node record it was rendered from (the
//! node cache replaces the `Arc` on every write), the same iPXE facts and
//! agent URL, and at most [`MAX_AGE`]. An offline answer is valid for
//! the same outage (its start): the banner's duration, which moves every
//! second, is not rendered into a kept offline script but filled in per
//! answer ([`Spliced`]), so a boot storm during an outage renders each
//! node's script once, from the outage's first second on.

use crate::model::mac::MacMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::model::boot::{BootAnswer, BootFacts, Source};
use crate::model::mac::Mac;
use crate::model::node::Node;
use crate::model::script::{Script, ScriptFormat};

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
    /// The start of the outage an offline answer was rendered in (None
    /// online), and its script with the banner's duration left open.
    offline: Option<(time::OffsetDateTime, Arc<Spliced>)>,
    answer: BootAnswer,
    rendered_at: Instant,
    /// The workflows' epoch read before the answer was decided.
    workflows: u64,
}

impl Entry {
    fn bytes(&self) -> usize {
        match &self.offline {
            Some((_, spliced)) => spliced.len(),
            None => self.answer.script.len(),
        }
    }
}

/// An offline script's text cut where the banner's duration goes: the
/// duration is filled in per answer, so the script is rendered once per
/// outage, not once per second of it.
pub struct Spliced {
    /// The text between the places of the duration (one part: the
    /// template does not show it).
    parts: Vec<String>,
    /// The script itself when there is nothing to fill in.
    whole: Option<Script>,
    /// The last filling and its duration, handed out again while the
    /// banner says the same (it moves once a minute in a long outage): a
    /// storm's answers share one copy instead of joining one each.
    last: RwLock<Option<(String, Script)>>,
}

impl Spliced {
    /// `marked` (rendered with `mark` as the duration) cut at each `mark`,
    /// if filling in `duration` gives exactly `rendered` (the same scene
    /// rendered with it): a template that changes the duration (a filter,
    /// a slice) is never spliced, it is rendered per answer.
    pub fn cut(marked: &Script, mark: &str, duration: &str, rendered: &Script) -> Option<Spliced> {
        let parts: Vec<String> = marked.text().split(mark).map(str::to_string).collect();
        let spliced = Spliced {
            whole: (parts.len() == 1).then(|| rendered.clone()),
            parts,
            last: RwLock::new(None),
        };
        (spliced.parts.join(duration) == rendered.text()).then_some(spliced)
    }

    /// The script with `duration` in the banner.
    pub fn fill(&self, format: ScriptFormat, duration: &str) -> Script {
        if let Some(whole) = &self.whole {
            return whole.clone();
        }
        if let Some((filled_with, script)) = &*self.last.read().unwrap_or_else(|e| e.into_inner())
            && filled_with == duration
        {
            return script.clone();
        }
        let script = Script::new(format, self.parts.join(duration));
        *self.last.write().unwrap_or_else(|e| e.into_inner()) =
            Some((duration.to_string(), script.clone()));
        script
    }

    /// The bytes kept: the parts and, when there is one, the last filling
    /// (counted as if there were, so the bound holds whenever it comes).
    fn len(&self) -> usize {
        let parts: usize = self.parts.iter().map(String::len).sum();
        if self.whole.is_some() {
            parts
        } else {
            2 * parts + 32
        }
    }
}

#[derive(Default)]
struct Entries {
    by_mac: MacMap<Entry>,
    /// The kept scripts' bytes.
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, mac: &Mac) {
        if let Some(old) = self.by_mac.remove(mac) {
            self.bytes -= old.bytes();
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
    /// Moved on when stored workflows change (`NodeCache::workflows_written`):
    /// an entry rendered at another epoch is not handed out.
    workflows: Arc<AtomicU64>,
}

impl ScriptCache {
    /// A cache whose entries last while `workflows` stays where it was
    /// when they were decided.
    pub fn new(workflows: Arc<AtomicU64>) -> ScriptCache {
        ScriptCache {
            entries: RwLock::default(),
            workflows,
        }
    }

    /// The workflows' epoch now: read before deciding an answer, and given
    /// to [`ScriptCache::put`] with it.
    pub fn epoch(&self) -> u64 {
        self.workflows.load(Ordering::SeqCst)
    }

    /// The kept answer for this node record, facts and URL, online.
    pub fn get(
        &self,
        node: &Arc<Node>,
        facts: &BootFacts,
        base_url: &str,
        source: Source,
    ) -> Option<BootAnswer> {
        self.find(node, facts, base_url, |entry| {
            (entry.answer.source == source && entry.offline.is_none()).then(|| entry.answer.clone())
        })
    }

    /// The kept offline answer of the outage that began at `since`, with
    /// `duration` in its banner.
    pub fn get_offline(
        &self,
        node: &Arc<Node>,
        facts: &BootFacts,
        base_url: &str,
        since: time::OffsetDateTime,
        duration: &str,
    ) -> Option<BootAnswer> {
        self.find(node, facts, base_url, |entry| match &entry.offline {
            Some((began, spliced)) if *began == since => Some(BootAnswer {
                script: spliced.fill(entry.answer.script.format(), duration),
                ..entry.answer.clone()
            }),
            _ => None,
        })
    }

    fn find(
        &self,
        node: &Arc<Node>,
        facts: &BootFacts,
        base_url: &str,
        answer: impl FnOnce(&Entry) -> Option<BootAnswer>,
    ) -> Option<BootAnswer> {
        let found = {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            entries
                .by_mac
                .get(&node.mac)
                .filter(|entry| {
                    Arc::ptr_eq(&entry.node, node)
                        && entry.workflows == self.epoch()
                        && entry.arch == facts.arch
                        && entry.platform == facts.platform
                        && entry.answer.script.format() == facts.format
                        && entry.base_url == base_url
                        && entry.rendered_at.elapsed() < MAX_AGE
                })
                .and_then(answer)
        };
        crate::metrics::metrics().script_cache_lookup(found.is_some());
        found
    }

    /// Keeps an online answer decided at workflows' `epoch`.
    pub fn put(
        &self,
        node: Arc<Node>,
        facts: &BootFacts,
        base_url: &str,
        answer: &BootAnswer,
        epoch: u64,
    ) {
        self.insert(node, facts, base_url, answer, None, epoch);
    }

    /// Keeps an offline answer for the rest of the outage that began at
    /// `since`, its duration left open.
    pub fn put_offline(
        &self,
        node: Arc<Node>,
        facts: &BootFacts,
        base_url: &str,
        answer: &BootAnswer,
        (since, spliced): (time::OffsetDateTime, Spliced),
        epoch: u64,
    ) {
        let offline = Some((since, Arc::new(spliced)));
        self.insert(node, facts, base_url, answer, offline, epoch);
    }

    fn insert(
        &self,
        node: Arc<Node>,
        facts: &BootFacts,
        base_url: &str,
        answer: &BootAnswer,
        offline: Option<(time::OffsetDateTime, Arc<Spliced>)>,
        workflows: u64,
    ) {
        let entry = Entry {
            workflows,
            arch: facts.arch.clone(),
            platform: facts.platform.clone(),
            base_url: base_url.to_string(),
            offline,
            answer: answer.clone(),
            rendered_at: Instant::now(),
            node,
        };
        let size = entry.bytes();
        if size > MAX_BYTES {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.remove(&entry.node.mac);
        if entries.by_mac.len() >= MAX_ENTRIES || entries.bytes + size > MAX_BYTES {
            entries.clear();
        }
        entries.bytes += size;
        entries.by_mac.insert(entry.node.mac, entry);
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
    fn an_entry_decided_before_a_workflow_change_is_not_handed_out() {
        let epoch = Arc::new(AtomicU64::new(0));
        let cache = ScriptCache::new(epoch.clone());
        let node = Arc::new(Node::new_local(
            "52:54:00:00:00:02".parse().unwrap(),
            NodeState::Pending,
            time::OffsetDateTime::UNIX_EPOCH,
        ));
        let facts = BootFacts::default();
        let s = Source::Standalone;
        let decided_at = cache.epoch();
        cache.put(node.clone(), &facts, "http://a", &answer("one"), decided_at);
        assert!(cache.get(&node, &facts, "http://a", s).is_some());
        epoch.fetch_add(1, Ordering::SeqCst);
        assert!(cache.get(&node, &facts, "http://a", s).is_none());
        // Decided before the change, kept after it: still not handed out.
        cache.put(node.clone(), &facts, "http://a", &answer("one"), decided_at);
        assert!(cache.get(&node, &facts, "http://a", s).is_none());
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
        cache.put(node.clone(), &facts, "http://a", &answer("one"), 0);
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
        cache.put(node.clone(), &facts, "http://a", &answer("one"), 0);
        cache.clear();
        assert!(cache.get(&node, &facts, "http://a", s).is_none());
    }

    #[test]
    fn an_offline_entry_lasts_its_outage_and_fills_in_the_duration() {
        let cache = ScriptCache::default();
        let node = Arc::new(Node::new_local(
            "52:54:00:00:00:02".parse().unwrap(),
            NodeState::Active,
            time::OffsetDateTime::UNIX_EPOCH,
        ));
        let facts = BootFacts::default();
        let since = time::OffsetDateTime::UNIX_EPOCH;
        let script = |text: &str| Script::ipxe(text.into());
        let rendered = script("echo offline for 5s\necho 5s ago\n");
        let marked = script("echo offline for @D@\necho @D@ ago\n");
        let spliced = Spliced::cut(&marked, "@D@", "5s", &rendered).expect("spliced");
        let down = BootAnswer {
            source: Source::Offline,
            script: rendered,
            ..answer("")
        };
        cache.put_offline(node.clone(), &facts, "http://a", &down, (since, spliced), 0);
        let hit = cache.get_offline(&node, &facts, "http://a", since, "1m");
        assert_eq!(
            hit.unwrap().script.text(),
            "echo offline for 1m\necho 1m ago\n"
        );
        // The same minute again: the same filling; the next: a new one.
        for (duration, text) in [
            ("1m", "echo offline for 1m\necho 1m ago\n"),
            ("2m", "echo offline for 2m\necho 2m ago\n"),
            ("1m", "echo offline for 1m\necho 1m ago\n"),
        ] {
            let again = cache.get_offline(&node, &facts, "http://a", since, duration);
            assert_eq!(again.unwrap().script.text(), text);
        }
        // Another outage, or back online: not this entry.
        let later = since + time::Duration::seconds(1);
        assert!(
            cache
                .get_offline(&node, &facts, "http://a", later, "1m")
                .is_none()
        );
        assert!(
            cache
                .get(&node, &facts, "http://a", Source::Offline)
                .is_none()
        );
    }

    #[test]
    fn a_template_that_changes_the_duration_is_not_spliced() {
        let script = |text: &str| Script::ipxe(text.into());
        // `| upper` on the duration: the marked rendering does not say
        // where the real one goes.
        let rendered = script("offline for 5S");
        let marked = script("offline for @d@");
        assert!(Spliced::cut(&marked, "@d@", "5s", &rendered).is_none());
        // No duration shown: the script is kept whole.
        let plain = script("offline");
        let spliced = Spliced::cut(&plain, "@d@", "5s", &plain).expect("whole");
        assert_eq!(spliced.fill(ScriptFormat::Ipxe, "9s").text(), "offline");
    }
}
