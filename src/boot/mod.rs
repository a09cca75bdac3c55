//! Answering a node's boot request (DESIGN §1, §4): resolve the node
//! ([`resolve`]), decide (the pure table of [`crate::model::decision`]),
//! render ([`render`]), record what was served ([`record`]). A boot answer
//! is never an error: whatever fails, the node gets a script of the same
//! intent that never does anything destructive, and the failure is logged.

pub mod changes;
pub mod lookup;
pub mod record;
pub mod render;
pub mod resolve;
pub mod script_cache;
pub mod stats;
pub mod templates;

#[cfg(test)]
mod grub_tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::central::port::ControllerPort;
use crate::config::{Config, OfflineDefault};
use crate::content::ContentCache;
use crate::model::boot::{BootAnswer, BootFacts, Source};
use crate::model::decision::{self, Action, Connectivity, Decision, DecisionContext};
use crate::model::mac::Mac;
use crate::model::mode::Mode;
use crate::model::node::{Node, NodeState, Workflow};
use crate::outbox::Outbox;
use crate::store::LastScript;
use crate::store::nodes::NodeCache;
use crate::store::rows::{self, BootRows};
use record::Recorder;
use render::{Renderer, Scene, fallback_answer, rfc3339};
use resolve::{Resolved, Resolver};
use script_cache::{ScriptCache, Spliced};
use stats::BootStats;
use templates::{OfflineView, TemplateError, Templates};

pub struct BootService {
    offline_default: OfflineDefault,
    workflows: HashMap<String, Workflow>,
    nodes: NodeCache,
    /// Workflows as last synced and last-served scripts.
    rows: Arc<dyn BootRows>,
    port: Arc<ControllerPort>,
    outbox: Arc<Outbox>,
    resolver: Arc<Resolver>,
    renderer: Renderer,
    scripts: ScriptCache,
    stats: Arc<BootStats>,
    counters: stats::BootCounters,
    /// None: nothing is recorded (the CLI's `render`).
    recorder: Option<Recorder>,
    /// The content cache (with a controller): an offline install starts
    /// only if its files are cached (DESIGN §12).
    cache: Option<Arc<ContentCache>>,
    /// `tftp.root`: a workflow's file found there needs no cache.
    tftp_root: std::path::PathBuf,
}

impl BootService {
    pub fn new(
        config: &Config,
        rows: Arc<dyn BootRows>,
        nodes: NodeCache,
        templates: Templates,
        port: Arc<ControllerPort>,
        outbox: Arc<Outbox>,
        recorder: Option<Recorder>,
    ) -> BootService {
        BootService {
            cache: None,
            tftp_root: config.tftp.root.clone(),
            offline_default: config.offline_default_action,
            workflows: config
                .workflows
                .iter()
                .map(|(id, wf)| (id.clone(), wf.clone()))
                .collect(),
            resolver: Arc::new(Resolver::new(
                port.clone(),
                outbox.clone(),
                nodes.clone(),
                config.central.boot_lookup_deadline,
            )),
            renderer: Renderer::new(config.site_id.clone(), templates),
            scripts: ScriptCache::new(nodes.workflows_epoch()),
            nodes,
            rows,
            port,
            outbox,
            stats: Arc::new(BootStats::default()),
            counters: stats::BootCounters::default(),
            recorder,
        }
    }

    /// Boot counters (shared with the status snapshot).
    pub fn stats(&self) -> Arc<BootStats> {
        self.stats.clone()
    }

    /// Loads the templates again; on error the old ones stay in use.
    pub fn reload_templates(&self, dir: &std::path::Path) -> Result<(), TemplateError> {
        self.renderer.reload(dir)?;
        self.scripts.clear();
        Ok(())
    }

    /// Forgets rendered scripts (one MAC or all), so the next boot decides
    /// afresh.
    pub fn invalidate(&self, mac: Option<Mac>) {
        match mac {
            Some(mac) => self.scripts.forget(mac),
            None => self.scripts.clear(),
        }
    }

    /// Forgets `mac`'s rendered script and fetches its record again now,
    /// so its next boot has fresh data even if the controller is slow then.
    pub async fn refresh(&self, mac: Mac) {
        self.invalidate(Some(mac));
        if self.port.mode() == Mode::Online {
            let _ = self.resolver.lookup(mac, &BootFacts::default()).await;
        }
    }

    /// The bootstrap (`/boot.ipxe`, or GRUB's `grub/grub.cfg`) for a
    /// given agent URL.
    pub fn bootstrap(
        &self,
        base_url: &str,
        format: crate::model::script::ScriptFormat,
    ) -> crate::model::script::Script {
        self.renderer.bootstrap(base_url, format)
    }

    /// Answers a boot request. Side effects: an unknown MAC is registered
    /// (standalone: stored as `discovered`); standalone, serving an install
    /// marks the node `installing` so that its next boot (into the freshly
    /// installed disk) is not another install; the script is recorded for
    /// `last_known`, and the boot reported to the controller.
    pub async fn boot(&self, mac: Mac, facts: &BootFacts, base_url: &str) -> BootAnswer {
        let started = std::time::Instant::now();
        let _active = self.stats.begin(mac);
        let answer = match self.resolver.resolve(mac, facts).await {
            // DESIGN §4: online, but the controller gave no usable answer
            // (error, garbage, deadline) for a MAC the cache does not hold:
            // nothing is known about this machine, so it gets what an
            // unknown MAC gets offline, never a discovery by default.
            Resolved::Online {
                node: None,
                source: Source::Cache,
            } => self.offline_column(mac, facts, base_url, None).await,
            Resolved::Online { node, source } => {
                self.answer(mac, node, facts, base_url, source).await
            }
            Resolved::Offline { since } => {
                let now = OffsetDateTime::now_utc();
                let duration = (now - since).try_into().unwrap_or(Duration::ZERO);
                self.offline_column(mac, facts, base_url, Some((since, duration)))
                    .await
            }
            Resolved::Failed(e) => {
                tracing::error!(%mac, error = %e, "node store failed; serving local boot");
                fallback_answer(mac, None, Source::Standalone, facts.format)
            }
        };
        self.stats.answered();
        // Boots reach event clients in batches (`boot::stats::publish_boots`),
        // never one event per boot: a boot storm must not become one.
        let seen = stats::BootSeen {
            mac,
            state: answer.state.map(|s| s.as_str()),
            action: answer.action.as_str(),
            source: answer.source.as_str(),
            at: OffsetDateTime::now_utc(),
        };
        self.stats.remember(seen);
        self.counters.count(
            answer.action,
            answer.source,
            started.elapsed().as_secs_f64(),
        );
        self.outbox.boot_event(mac, &answer);
        answer
    }

    /// The offline column of DESIGN §4 from the cached record. With an
    /// `outage` (since, how long) it is an offline answer with the OFFLINE
    /// banner (also `siteboot render --offline`); without one, the
    /// controller is up but gave no usable answer (`source=cache`).
    async fn offline_column(
        &self,
        mac: Mac,
        facts: &BootFacts,
        base_url: &str,
        outage: Option<(OffsetDateTime, Duration)>,
    ) -> BootAnswer {
        let node = self.nodes.get(mac);
        let source = if outage.is_some() {
            Source::Offline
        } else {
            Source::Cache
        };
        // An offline answer is kept for the rest of its outage, its
        // banner's duration filled in per answer (`script_cache::Spliced`),
        // when nothing outside the node record decides it: no last script
        // to replay, no open conflict (installs are never kept: see below).
        let keepable = outage.is_some()
            && self.offline_default != OfflineDefault::LastKnown
            && self.outbox.open_conflict(mac).is_none();
        if let (true, Some((since, duration)), Some(node)) = (keepable, outage, &node)
            && let Some(answer) = with_banner_text(duration, |text| {
                self.scripts.get_offline(node, facts, base_url, since, text)
            })
        {
            return answer;
        }
        let banner = outage.map(|(since, duration)| {
            let duration = humantime::format_duration(banner_duration(duration)).to_string();
            (since, duration)
        });
        let kept_for = banner.as_ref().filter(|_| keepable);
        let offline = banner.as_ref().map(|(since, duration)| OfflineView {
            since: rfc3339(*since),
            duration: duration.clone(),
            cached_at: node
                .as_ref()
                .map(|n| rfc3339(n.cached_at.unwrap_or(n.updated_at)))
                .unwrap_or_else(|| "never".into()),
        });
        let last = if self.offline_default == OfflineDefault::LastKnown {
            rows::blocking(&self.rows, move |r| r.last_script(mac))
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        // Read before the workflow is (see `answer`).
        let epoch = self.scripts.epoch();
        let workflow = match &node {
            Some(n) => self.workflow_for(n).await,
            None => None,
        };
        let last_known_replayable = match &last {
            Some(l) => self.replayable(l).await,
            None => false,
        };
        let mut decision = decision::decide(
            node.as_deref(),
            workflow.as_ref(),
            DecisionContext {
                connectivity: Connectivity::Offline,
                offline_default: self.offline_default,
                last_known_replayable,
            },
        );
        let destructive_replay = last.as_ref().is_some_and(|l| l.destructive);
        if let Some(missing) = self.uncached_file(&decision, last.as_ref()).await {
            decision = decision.held_for_missing_file(&missing, destructive_replay);
        }
        if let Some(conflict) = self.outbox.open_conflict(mac) {
            decision = decision.held_for_conflict(conflict, destructive_replay);
        }
        let shown = node.as_deref().cloned().unwrap_or_else(|| {
            Node::new_local(mac, NodeState::Discovered, OffsetDateTime::now_utc())
        });
        let scene = |offline: Option<OfflineView>| Scene {
            node: &shown,
            facts,
            source,
            base_url,
            offline,
        };
        let answer = match &last {
            Some(last) if decision.action == Action::LastKnown => {
                self.renderer.replay(scene(offline.clone()), last)
            }
            _ => self.renderer.render(scene(offline.clone()), &decision),
        };
        // An install depends on the content cache and changes the node's
        // state: decided afresh each time, as online.
        if let (Some((since, duration)), Some(node), Some(view)) = (kept_for, node, offline)
            && answer.action != Action::Install
            && decision.conflict.is_none()
            && decision.missing_file.is_none()
        {
            let marked = OfflineView {
                duration: DURATION_MARK.to_string(),
                ..view
            };
            let marked = self.renderer.render(scene(Some(marked)), &decision);
            if let Some(spliced) =
                Spliced::cut(&marked.script, DURATION_MARK, duration, &answer.script)
            {
                self.scripts
                    .put_offline(node, facts, base_url, &answer, (*since, spliced), epoch);
            }
        }
        answer
    }

    /// Decides and renders for a known (or, with `None`, unknown) node
    /// with the online column, reusing a cached rendering when valid.
    async fn answer(
        &self,
        mac: Mac,
        node: Option<Arc<Node>>,
        facts: &BootFacts,
        base_url: &str,
        source: Source,
    ) -> BootAnswer {
        let node = match node {
            Some(node) => node,
            None => Arc::new(Node::new_local(
                mac,
                NodeState::Discovered,
                OffsetDateTime::now_utc(),
            )),
        };
        // A node with an open conflict is decided afresh each time (its
        // answer depends on the conflict, which the script cache does not
        // know about) and never cached.
        let conflict = self.outbox.open_conflict(mac);
        if conflict.is_none()
            && let Some(answer) = self.scripts.get(&node, facts, base_url, source)
        {
            return answer;
        }
        // Read before the workflow is: a workflow written meanwhile makes
        // this rendering one that is not handed out again.
        let epoch = self.scripts.epoch();
        let mut decision = self.decide_online(&node).await;
        if let Some(conflict) = conflict {
            decision = decision.held_for_conflict(conflict, false);
        }
        let answer = self
            .renderer
            .render(Scene::online(&node, facts, source, base_url), &decision);
        if answer.action == Action::Install && source == Source::Standalone {
            // Standalone, the agent owns the state: the node changes state,
            // so this answer is never reused. With a controller, the
            // installer's reports move the state there.
            self.mark_installing(mac).await;
        } else if answer.action != Action::Install && conflict.is_none() {
            self.scripts.put(node, facts, base_url, &answer, epoch);
        }
        self.record(mac, &answer, &decision);
        answer
    }

    /// What `mac` would get now, without side effects (`siteboot render`).
    pub async fn preview(
        &self,
        mac: Mac,
        facts: &BootFacts,
        offline: bool,
        base_url: &str,
    ) -> BootAnswer {
        if offline {
            let now = OffsetDateTime::now_utc();
            return self
                .offline_column(mac, facts, base_url, Some((now, Duration::ZERO)))
                .await;
        }
        // Online, an unknown MAC would be stored as discovered first.
        let node = self
            .nodes
            .get(mac)
            .map(|n| (*n).clone())
            .unwrap_or_else(|| {
                Node::new_local(mac, NodeState::Discovered, OffsetDateTime::now_utc())
            });
        let decision = self.decide_online(&node).await;
        let source = if self.port.mode().has_controller() {
            Source::Cache
        } else {
            Source::Standalone
        };
        self.renderer
            .render(Scene::online(&node, facts, source, base_url), &decision)
    }

    /// The online column of DESIGN §4 for a known node.
    async fn decide_online(&self, node: &Node) -> Decision {
        let workflow = self.workflow_for(node).await;
        decision::decide(
            Some(node),
            workflow.as_ref(),
            DecisionContext {
                connectivity: Connectivity::Online,
                offline_default: self.offline_default,
                last_known_replayable: false,
            },
        )
    }

    /// DESIGN §4 `last_known`: a destructive script is replayed only if
    /// its workflow (the config's, else the controller's as last synced)
    /// is `offline_safe`.
    async fn replayable(&self, last: &LastScript) -> bool {
        if !last.destructive {
            return true;
        }
        let Some(id) = last.workflow_id.clone() else {
            return false;
        };
        if let Some(wf) = self.workflows.get(&id) {
            return wf.offline_safe;
        }
        matches!(
            rows::blocking(&self.rows, move |r| r.workflow(&id)).await,
            Ok(Some(wf)) if wf.offline_safe
        )
    }

    /// With the content cache: offline installs check their files in it.
    pub fn with_cache(mut self, cache: Option<Arc<ContentCache>>) -> BootService {
        self.cache = cache;
        self
    }

    /// DESIGN §12 offline rule: the first file of the install `decision`
    /// would start (or of the destructive script it would replay) that is
    /// neither cached nor under `tftp.root`.
    async fn uncached_file(
        &self,
        decision: &decision::Decision,
        last: Option<&LastScript>,
    ) -> Option<String> {
        let cache = self.cache.as_ref()?;
        let workflow = match decision.action {
            Action::Install => decision.workflow.clone()?,
            Action::LastKnown if last.is_some_and(|l| l.destructive) => {
                let id = last?.workflow_id.clone()?;
                match self.workflows.get(&id) {
                    Some(wf) => wf.clone(),
                    None => rows::blocking(&self.rows, move |r| r.workflow(&id))
                        .await
                        .ok()??,
                }
            }
            _ => return None,
        };
        workflow
            .files()
            .into_iter()
            .find(|file| !cache.has(file) && !self.under_root(file))
            .map(str::to_string)
    }

    /// Is `file` (a workflow's relative path) a file under `tftp.root`?
    fn under_root(&self, file: &str) -> bool {
        let relative = std::path::Path::new(file.trim_start_matches('/'));
        relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
            && self.tftp_root.join(relative).is_file()
    }

    /// Every workflow this agent can render: the config's, then the
    /// controller's as last synced (an id in both is the config's).
    pub async fn all_workflows(&self) -> Vec<Workflow> {
        let mut all: HashMap<String, Workflow> = rows::blocking(&self.rows, |r| r.workflows())
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "workflows unreadable");
                Vec::new()
            })
            .into_iter()
            .map(|w| (w.id.clone(), w))
            .collect();
        for (id, workflow) in &self.workflows {
            all.insert(id.clone(), workflow.clone());
        }
        all.into_values().collect()
    }

    async fn workflow_for(&self, node: &Node) -> Option<Workflow> {
        let id = node.workflow_id.clone()?;
        if let Some(wf) = self.workflows.get(&id) {
            return Some(wf.clone());
        }
        let lookup = id.clone();
        match rows::blocking(&self.rows, move |r| r.workflow(&lookup)).await {
            Ok(Some(wf)) => Some(wf),
            Ok(None) => {
                tracing::warn!(mac = %node.mac, workflow = %id, "node's workflow is not defined");
                None
            }
            Err(e) => {
                tracing::error!(mac = %node.mac, workflow = %id, error = %e, "workflow lookup failed");
                None
            }
        }
    }

    async fn mark_installing(&self, mac: Mac) {
        let result = self
            .nodes
            .update(mac, |n| {
                n.change_state(NodeState::Installing, OffsetDateTime::now_utc());
            })
            .await;
        if let Err(e) = result {
            tracing::error!(%mac, error = %e, "could not mark node installing");
        }
    }

    fn record(&self, mac: Mac, answer: &BootAnswer, decision: &Decision) {
        if let Some(recorder) = &self.recorder {
            recorder.record(mac, answer, decision);
        }
    }
}

/// Rendered in place of the offline banner's duration, to find where it
/// goes (letters and digits: no template escaping changes them).
const DURATION_MARK: &str = "siteboot0duration0b7e51d";

/// How long the offline banner says the controller has been unreachable:
/// whole seconds for the first minute ("42s"), whole minutes after it
/// ("1h 12m"). The `since` beside it stays exact; the coarser figure lets
/// a node's offline answer be kept for a minute of a long outage instead
/// of a second (a boot storm during an outage renders once a minute).
pub fn banner_duration(outage: Duration) -> Duration {
    let seconds = outage.as_secs();
    if seconds < 60 {
        Duration::from_secs(seconds)
    } else {
        Duration::from_secs(seconds - seconds % 60)
    }
}

thread_local! {
    /// The banner's duration as last written on this thread: it takes a
    /// new value once a second, then once a minute, and a storm's boots
    /// between two values share it instead of formatting it each.
    static BANNER_TEXT: std::cell::RefCell<(Duration, String)> =
        const { std::cell::RefCell::new((Duration::MAX, String::new())) };
}

/// `with` called with the banner's text for an outage of `outage`.
fn with_banner_text<T>(outage: Duration, with: impl FnOnce(&str) -> T) -> T {
    let shown = banner_duration(outage);
    BANNER_TEXT.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != shown {
            use std::fmt::Write;
            cell.1.clear();
            let _ = write!(cell.1, "{}", humantime::format_duration(shown));
            cell.0 = shown;
        }
        with(&cell.1)
    })
}

#[cfg(test)]
mod banner_tests {
    use super::*;

    #[test]
    fn the_kept_banner_text_follows_the_outage() {
        for seconds in [
            0.0, 0.5, 1.0, 59.9, 60.0, 61.0, 119.0, 120.0, 3600.0, 1.0, 0.0,
        ] {
            let outage = Duration::from_secs_f64(seconds);
            let expected = humantime::format_duration(banner_duration(outage)).to_string();
            assert_eq!(
                with_banner_text(outage, str::to_string),
                expected,
                "{seconds}"
            );
        }
    }

    #[test]
    fn the_banner_counts_seconds_then_minutes() {
        let shown = |s: f64| {
            humantime::format_duration(banner_duration(Duration::from_secs_f64(s))).to_string()
        };
        assert_eq!(shown(0.4), "0s");
        assert_eq!(shown(42.9), "42s");
        assert_eq!(shown(59.99), "59s");
        assert_eq!(shown(60.0), "1m");
        assert_eq!(shown(61.0), "1m");
        assert_eq!(shown(4331.0), "1h 12m");
    }
}
