//! Answering a node's boot request: look the node up, decide (DESIGN §4),
//! render the script. A boot answer is never an error: whatever fails, the
//! node gets a script that boots its local disk, and the failure is logged.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::central::link::{CentralLink, LookupError};
use crate::config::{Config, OfflineDefault};
use crate::decision::{self, Action, Connectivity, Decision, DecisionContext};
use crate::mac::Mac;
use crate::node::{Node, NodeState, Workflow};
use crate::nodes::NodeCache;
use crate::outbox::Outbox;
use crate::script_cache::ScriptCache;
use crate::stats::BootStats;
use crate::store::{LastScript, Store, StoreError};
use crate::templates::{
    BootstrapContext, ImageView, NodeView, OfflineView, ScriptContext, Templates, WorkflowView,
};

/// Where the data behind an answer came from (the status line's `source=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Live,
    Cache,
    Offline,
    Standalone,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Live => "live",
            Source::Cache => "cache",
            Source::Offline => "offline",
            Source::Standalone => "standalone",
        }
    }
}

/// The facts iPXE sends with a boot request.
#[derive(Debug, Clone, Default)]
pub struct BootFacts {
    pub arch: Option<String>,
    pub platform: Option<String>,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BootAnswer {
    pub script: String,
    pub source: Source,
    pub action: Action,
    pub state: Option<NodeState>,
}

/// How often iPXE's bootstrap retries the boot service before local boot.
const BOOTSTRAP_RETRIES: u32 = 3;
const BOOTSTRAP_RETRY_DELAY_S: u32 = 2;

pub struct BootService {
    site_id: String,
    offline_default: OfflineDefault,
    workflows: HashMap<String, Workflow>,
    nodes: NodeCache,
    scripts: ScriptCache,
    stats: BootStats,
    central: Option<Arc<CentralLink>>,
    templates: RwLock<Arc<Templates>>,
    recorder: Option<mpsc::Sender<(Mac, LastScript)>>,
    /// Where boot events and offline registrations go (with a controller).
    outbox: Option<Arc<Outbox>>,
}

impl BootService {
    /// Loads the node cache from `store` (blocking: call at start-up).
    pub fn new(
        config: &Config,
        store: Store,
        templates: Templates,
    ) -> Result<BootService, StoreError> {
        Ok(BootService {
            site_id: config.site_id.clone(),
            offline_default: config.offline_default_action,
            workflows: config
                .workflows
                .iter()
                .map(|(id, wf)| (id.clone(), wf.clone()))
                .collect(),
            nodes: NodeCache::load(store)?,
            scripts: ScriptCache::default(),
            stats: BootStats::default(),
            central: None,
            templates: RwLock::new(Arc::new(templates)),
            recorder: None,
            outbox: None,
        })
    }

    /// Starts the background writer of last-served scripts (needs a tokio
    /// runtime). Without it, nothing is recorded (the CLI's `render`).
    pub fn start_recorder(&mut self) {
        let (tx, rx) = mpsc::channel(RECORDER_QUEUE);
        tokio::spawn(record_last_scripts(self.nodes.store().clone(), rx));
        self.recorder = Some(tx);
    }

    pub fn store(&self) -> &Store {
        self.nodes.store()
    }

    pub fn nodes(&self) -> &NodeCache {
        &self.nodes
    }

    pub fn stats(&self) -> &BootStats {
        &self.stats
    }

    /// Connects the service to a controller (before it serves).
    pub fn set_central(&mut self, link: Arc<CentralLink>) {
        self.central = Some(link);
    }

    pub fn central(&self) -> Option<&Arc<CentralLink>> {
        self.central.as_ref()
    }

    /// Connects the outbox (before it serves).
    pub fn set_outbox(&mut self, outbox: Arc<Outbox>) {
        self.outbox = Some(outbox);
    }

    pub fn outbox(&self) -> Option<&Arc<Outbox>> {
        self.outbox.as_ref()
    }

    /// Loads the templates again; on error the old ones stay in use.
    pub fn reload_templates(
        &self,
        dir: &std::path::Path,
    ) -> Result<(), crate::templates::TemplateError> {
        let templates = Templates::load(dir)?;
        *self.templates.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(templates);
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

    fn templates(&self) -> Arc<Templates> {
        match self.templates.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The bootstrap script (`/boot.ipxe`) for a given agent URL.
    pub fn bootstrap(&self, base_url: &str) -> String {
        let ctx = BootstrapContext {
            base_url: base_url.to_string(),
            site_id: self.site_id.clone(),
            retries: BOOTSTRAP_RETRIES,
            retry_delay_s: BOOTSTRAP_RETRY_DELAY_S,
        };
        match self.templates().render_bootstrap(&ctx) {
            Ok(script) => script,
            Err(e) => {
                tracing::error!(error = %e, "bootstrap template failed; serving local boot");
                fallback_script(None, None, Source::Standalone)
            }
        }
    }

    /// Answers a boot request (standalone: the local store is the truth).
    /// Side effects: an unknown MAC is stored as `discovered`; serving an
    /// install marks the node `installing` so that its next boot (into the
    /// freshly installed disk) is not another install; the script is
    /// recorded for `last_known`.
    pub async fn boot(&self, mac: Mac, facts: &BootFacts, base_url: &str) -> BootAnswer {
        let _active = self.stats.begin(mac);
        let answer = match self.central.clone() {
            None => self.boot_standalone(mac, facts, base_url).await,
            Some(link) => self.boot_with_controller(&link, mac, facts, base_url).await,
        };
        self.stats
            .answered(matches!(answer.source, Source::Cache | Source::Offline));
        if let Some(outbox) = &self.outbox {
            outbox.boot_event(mac, &answer);
        }
        answer
    }

    async fn boot_standalone(&self, mac: Mac, facts: &BootFacts, base_url: &str) -> BootAnswer {
        let source = Source::Standalone;
        let node = match self.lookup_or_discover(mac, facts).await {
            Ok(node) => node,
            Err(e) => {
                tracing::error!(%mac, error = %e, "node store failed; serving local boot");
                return fallback_answer(mac, None, source);
            }
        };
        self.answer(mac, Some(node), facts, base_url, source, true)
            .await
    }

    /// DESIGN §1/§4 with a controller: fresh data if it comes within the
    /// deadline (`live`), else the cached record (`cache`); while the
    /// controller is unreachable, the offline column (`offline`).
    async fn boot_with_controller(
        &self,
        link: &Arc<CentralLink>,
        mac: Mac,
        facts: &BootFacts,
        base_url: &str,
    ) -> BootAnswer {
        if !link.monitor().is_online() {
            return self.answer_offline(link, mac, facts, base_url).await;
        }
        let (node, source) = match link.resolve(mac, facts, &self.nodes).await {
            Some(Ok(node)) => (Some(node), Source::Live),
            Some(Err(e)) => {
                tracing::debug!(%mac, error = %e, "answering from the cache");
                if matches!(&e, LookupError::Central(c) if c.is_unreachable()) {
                    self.register_offline(mac, facts).await;
                }
                if !link.monitor().is_online() {
                    return self.answer_offline(link, mac, facts, base_url).await;
                }
                (self.nodes.get(mac), Source::Cache)
            }
            None => (self.nodes.get(mac), Source::Cache),
        };
        // An unknown MAC whose registration has not come back yet is
        // treated as discovered (harmless) without being stored here; the
        // background lookup registers and caches it.
        self.answer(mac, node, facts, base_url, source, false).await
    }

    async fn answer_offline(
        &self,
        link: &CentralLink,
        mac: Mac,
        facts: &BootFacts,
        base_url: &str,
    ) -> BootAnswer {
        self.register_offline(mac, facts).await;
        let now = OffsetDateTime::now_utc();
        let state = link.monitor().state();
        let since = state.offline_since.unwrap_or(now);
        let duration = state.offline_duration(now).unwrap_or_default();
        self.render_offline(mac, facts, base_url, since, duration)
            .await
    }

    /// DESIGN §4, unknown MAC offline: the registration is queued and the
    /// node cached as discovered under a local id.
    async fn register_offline(&self, mac: Mac, facts: &BootFacts) {
        if let Some(outbox) = &self.outbox
            && let Err(e) = outbox.register_local(mac, facts).await
        {
            tracing::error!(%mac, error = %e, "offline registration not queued");
        }
    }

    /// The offline column of DESIGN §4 from the cached record, with the
    /// OFFLINE banner (also `siteboot render --offline`).
    async fn render_offline(
        &self,
        mac: Mac,
        facts: &BootFacts,
        base_url: &str,
        since: OffsetDateTime,
        duration: Duration,
    ) -> BootAnswer {
        let node = self.nodes.get(mac);
        let offline = OfflineView {
            since: rfc3339(since),
            // Whole seconds: "1h 2m 3s", not nanoseconds.
            duration: humantime::format_duration(Duration::from_secs(duration.as_secs()))
                .to_string(),
            cached_at: node
                .as_ref()
                .map(|n| rfc3339(n.cached_at.unwrap_or(n.updated_at)))
                .unwrap_or_else(|| "never".into()),
        };
        let last = if self.offline_default == OfflineDefault::LastKnown {
            self.store()
                .call(move |s| s.get_last_script(mac))
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        let workflow = match &node {
            Some(n) => self.workflow_for(n).await,
            None => None,
        };
        let last_known_replayable = match &last {
            Some(l) => self.replayable(l).await,
            None => false,
        };
        let decision = decision::decide(
            node.as_deref(),
            workflow.as_ref(),
            DecisionContext {
                connectivity: Connectivity::Offline,
                offline_default: self.offline_default,
                last_known_replayable,
            },
        );
        let shown = node.as_deref().cloned().unwrap_or_else(|| {
            Node::new_local(mac, NodeState::Discovered, OffsetDateTime::now_utc())
        });
        if decision.action == Action::LastKnown
            && let Some(last) = last
        {
            return self.replay(
                &shown,
                facts,
                &last,
                Source::Offline,
                base_url,
                Some(offline),
            );
        }
        self.render(
            &shown,
            facts,
            &decision,
            Source::Offline,
            base_url,
            Some(offline),
        )
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
        standalone: bool,
    ) -> BootAnswer {
        let node = match node {
            Some(node) => node,
            None => Arc::new(Node::new_local(
                mac,
                NodeState::Discovered,
                OffsetDateTime::now_utc(),
            )),
        };
        if let Some(answer) = self.scripts.get(&node, facts, base_url, source) {
            return answer;
        }
        let decision = self.decide_online(&node).await;
        let answer = self.render(&node, facts, &decision, source, base_url, None);
        if answer.action == Action::Install && standalone {
            // Standalone, the agent owns the state: the node changes state,
            // so this answer is never reused. With a controller, the
            // installer's reports move the state there.
            self.mark_installing(mac).await;
        } else if answer.action != Action::Install {
            self.scripts.put(node, facts, base_url, &answer);
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
    ) -> Result<BootAnswer, StoreError> {
        if offline {
            let now = OffsetDateTime::now_utc();
            return Ok(self
                .render_offline(mac, facts, base_url, now, Duration::ZERO)
                .await);
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
        let source = if self.central.is_some() {
            Source::Cache
        } else {
            Source::Standalone
        };
        Ok(self.render(&node, facts, &decision, source, base_url, None))
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
            self.store().call(move |s| s.get_workflow(&id)).await,
            Ok(Some(wf)) if wf.offline_safe
        )
    }

    async fn lookup_or_discover(
        &self,
        mac: Mac,
        facts: &BootFacts,
    ) -> Result<Arc<Node>, StoreError> {
        if let Some(node) = self.nodes.get(mac) {
            return Ok(node);
        }
        let stored = self
            .nodes
            .insert_if_absent(discovered_node(mac, facts))
            .await?;
        tracing::info!(%mac, id = %stored.id, "new node discovered");
        Ok(stored)
    }

    async fn workflow_for(&self, node: &Node) -> Option<Workflow> {
        let id = node.workflow_id.clone()?;
        if let Some(wf) = self.workflows.get(&id) {
            return Some(wf.clone());
        }
        let lookup = id.clone();
        match self.store().call(move |s| s.get_workflow(&lookup)).await {
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
                n.state = NodeState::Installing;
                n.updated_at = OffsetDateTime::now_utc();
                n.version += 1;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(%mac, error = %e, "could not mark node installing");
        }
    }

    fn record(&self, mac: Mac, answer: &BootAnswer, decision: &Decision) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let body = strip_header(&answer.script);
        let entry = LastScript {
            script: body.to_string(),
            served_at: OffsetDateTime::now_utc(),
            action: answer.action.as_str().to_string(),
            destructive: answer.action.is_destructive(),
            workflow_id: decision.workflow.as_ref().map(|w| w.id.clone()),
        };
        // Never make a boot wait for bookkeeping: a full queue drops the entry.
        if recorder.try_send((mac, entry)).is_err() {
            tracing::warn!(%mac, "last-script recorder is behind; entry dropped");
        }
    }

    fn render(
        &self,
        node: &Node,
        facts: &BootFacts,
        decision: &Decision,
        source: Source,
        base_url: &str,
        offline: Option<OfflineView>,
    ) -> BootAnswer {
        let ctx = self.context(node, facts, decision, source, base_url, offline);
        let templates = self.templates();
        let rendered = templates.render_header(&ctx).and_then(|header| {
            templates
                .render_body(decision.action.as_str(), &ctx)
                .map(|body| header + &body)
        });
        match rendered {
            Ok(script) => BootAnswer {
                script,
                source,
                action: decision.action,
                state: Some(node.state),
            },
            Err(e) => {
                tracing::error!(mac = %node.mac, action = decision.action.as_str(), error = %e,
                    "script template failed; serving the built-in local-boot script");
                fallback_answer(node.mac, Some(node.state), source)
            }
        }
    }

    fn replay(
        &self,
        node: &Node,
        facts: &BootFacts,
        last: &LastScript,
        source: Source,
        base_url: &str,
        offline: Option<OfflineView>,
    ) -> BootAnswer {
        let decision = Decision {
            action: Action::LastKnown,
            banner: decision::Banner::None,
            workflow: None,
        };
        let ctx = self.context(node, facts, &decision, source, base_url, offline);
        match self.templates().render_header(&ctx) {
            Ok(header) => BootAnswer {
                script: format!(
                    "{header}echo siteboot: replaying the script served at {}\n{}",
                    rfc3339(last.served_at),
                    last.script
                ),
                source,
                action: Action::LastKnown,
                state: Some(node.state),
            },
            Err(e) => {
                tracing::error!(mac = %node.mac, error = %e, "header template failed");
                fallback_answer(node.mac, Some(node.state), source)
            }
        }
    }

    fn context(
        &self,
        node: &Node,
        facts: &BootFacts,
        decision: &Decision,
        source: Source,
        base_url: &str,
        offline: Option<OfflineView>,
    ) -> ScriptContext {
        ScriptContext {
            site_id: self.site_id.clone(),
            base_url: base_url.to_string(),
            mac: node.mac.to_string(),
            mac_hyphen: node.mac.hyphenated(),
            state: node.state.as_str().to_string(),
            action: decision.action.as_str().to_string(),
            source: source.as_str().to_string(),
            arch: facts.arch.clone().or_else(|| node.arch.clone()),
            platform: facts.platform.clone(),
            hostname: node.hostname.clone(),
            node: Some(NodeView {
                id: node.id.clone(),
                hostname: node.hostname.clone(),
                group_id: node.group_id.clone(),
                tags: node.tags.clone(),
            }),
            workflow: decision
                .workflow
                .as_ref()
                .map(|wf| workflow_view(wf, base_url)),
            banner: decision.banner.as_str().map(str::to_string),
            offline,
        }
    }
}

fn workflow_view(wf: &Workflow, base_url: &str) -> WorkflowView {
    WorkflowView {
        id: wf.id.clone(),
        name: wf.name.clone(),
        method: match wf.method {
            crate::node::BootMethod::Kernel => "kernel",
            crate::node::BootMethod::Sanboot => "sanboot",
            crate::node::BootMethod::Chain => "chain",
        }
        .to_string(),
        kernel_url: asset_url(&wf.kernel, base_url),
        initrds: wf
            .initrd
            .iter()
            .map(|path| {
                let url = asset_url(path, base_url);
                ImageView {
                    name: image_name(&url),
                    url,
                }
            })
            .collect(),
        cmdline: wf.cmdline.clone(),
        url: wf.url.as_ref().map(|u| asset_url(u, base_url)),
    }
}

/// Absolute URLs are used as they are; anything else is a path under the
/// agent's `/assets/`.
pub fn asset_url(path: &str, base_url: &str) -> String {
    if path.starts_with("http://") || path.starts_with("https://") {
        path.to_string()
    } else {
        format!("{base_url}/assets/{}", path.trim_start_matches('/'))
    }
}

fn image_name(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    without_query
        .rsplit('/')
        .next()
        .unwrap_or(without_query)
        .to_string()
}

/// A node first seen now: `discovered` under a local id, with the
/// architecture iPXE reported if it is a plain token.
pub(crate) fn discovered_node(mac: Mac, facts: &BootFacts) -> Node {
    let mut node = Node::new_local(mac, NodeState::Discovered, OffsetDateTime::now_utc());
    node.arch = facts.arch.clone().filter(|a| is_plain_token(a));
    node
}

fn is_plain_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The script body after the header (for `last_known` replays, which get
/// a fresh header).
fn strip_header(script: &str) -> &str {
    let mut rest = script;
    for prefix in ["#!ipxe\n", "echo siteboot: mac="] {
        if let Some(after) = rest.strip_prefix(prefix) {
            rest = after;
            if prefix.starts_with("echo") {
                rest = rest.split_once('\n').map(|(_, tail)| tail).unwrap_or("");
            }
        }
    }
    rest
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn fallback_answer(mac: Mac, state: Option<NodeState>, source: Source) -> BootAnswer {
    BootAnswer {
        script: fallback_script(Some(mac), state, source),
        source,
        action: Action::Local,
        state,
    }
}

/// The script served when templates or the store fail: boots the local
/// disk, never anything destructive. Deliberately not a template.
pub fn fallback_script(mac: Option<Mac>, state: Option<NodeState>, source: Source) -> String {
    let status = match mac {
        Some(mac) => format!(
            "echo siteboot: mac={mac} state={} action=local source={}\n",
            state.map(NodeState::as_str).unwrap_or("unknown"),
            source.as_str()
        ),
        None => String::new(),
    };
    format!(
        "#!ipxe\n{status}echo *** siteboot ERROR: could not build this node's script (see the agent log); booting local disk ***\n\
         iseq ${{platform}} efi && exit 0 ||\nsanboot --no-describe --drive 0x80 || exit 0\n"
    )
}

/// Bound of the recorder's queue; past it entries are dropped, not waited for.
const RECORDER_QUEUE: usize = 8192;
/// How long the recorder gathers entries before one commit.
const RECORDER_BATCH_WINDOW: Duration = Duration::from_millis(100);

/// A script identical to the one recorded for a MAC is written again only
/// after this long: a node that reboots with the same answer costs no disk
/// write, and `served_at` is at most this stale.
const RECORD_REFRESH: time::Duration = time::Duration::minutes(10);

/// Writes last-served scripts in batches: one commit per window, however
/// many nodes booted in it.
async fn record_last_scripts(store: Store, mut rx: mpsc::Receiver<(Mac, LastScript)>) {
    let mut recorded: HashMap<Mac, (u64, OffsetDateTime)> = HashMap::new();
    while let Some(first) = rx.recv().await {
        let mut batch: HashMap<Mac, LastScript> = HashMap::new();
        let mut take = |mac: Mac, entry: LastScript| {
            let digest = digest(&entry);
            if let Some((previous, at)) = recorded.get(&mac)
                && *previous == digest
                && entry.served_at - *at < RECORD_REFRESH
            {
                return;
            }
            recorded.insert(mac, (digest, entry.served_at));
            batch.insert(mac, entry);
        };
        take(first.0, first.1);
        let deadline = tokio::time::Instant::now() + RECORDER_BATCH_WINDOW;
        while let Ok(Some((mac, entry))) = tokio::time::timeout_at(deadline, rx.recv()).await {
            take(mac, entry);
        }
        if batch.is_empty() {
            continue;
        }
        let entries: Vec<_> = batch.into_iter().collect();
        let count = entries.len();
        if let Err(e) = store.call(move |s| s.put_last_scripts(&entries)).await {
            tracing::error!(error = %e, count, "could not record last-served scripts");
        }
    }
}

fn digest(entry: &LastScript) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    entry.action.hash(&mut hasher);
    entry.script.hash(&mut hasher);
    entry.workflow_id.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_urls() {
        assert_eq!(
            asset_url("ubuntu/vmlinuz", "http://a:8080"),
            "http://a:8080/assets/ubuntu/vmlinuz"
        );
        assert_eq!(asset_url("/x", "http://a"), "http://a/assets/x");
        assert_eq!(asset_url("http://mirror/k", "http://a"), "http://mirror/k");
        assert_eq!(image_name("http://a/assets/u/initrd.gz?x=1"), "initrd.gz");
    }

    #[test]
    fn header_is_stripped_for_replay() {
        let script = "#!ipxe\necho siteboot: mac=52:54:00:00:00:01 state=active action=local source=live\necho body\n";
        assert_eq!(strip_header(script), "echo body\n");
        assert_eq!(strip_header("echo other\n"), "echo other\n");
    }

    #[test]
    fn fallback_script_boots_locally_with_a_status_line() {
        let mac: Mac = "52:54:00:00:00:09".parse().unwrap();
        let s = fallback_script(Some(mac), Some(NodeState::Pending), Source::Standalone);
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains(
            "echo siteboot: mac=52:54:00:00:00:09 state=pending action=local source=standalone\n"
        ));
        assert!(s.contains("sanboot --no-describe --drive 0x80"));
        assert!(!s.contains("kernel"));
    }
}
