//! Rendering a decision into an iPXE script: the templates' view data, the
//! bootstrap script, `last_known` replays, and the built-in fallback that
//! boots the local disk when a script cannot be rendered.

use std::sync::{Arc, RwLock};

use time::OffsetDateTime;

use super::templates::{
    BootstrapContext, ImageView, NodeView, OfflineView, ScriptContext, TemplateError, Templates,
    WorkflowView,
};
use crate::model::boot::{BootAnswer, BootFacts, Source};
use crate::model::decision::{self, Action, Decision};
use crate::model::mac::Mac;
use crate::model::node::{Node, NodeState, Workflow};
use crate::model::script::{Script, ScriptFormat};
use crate::store::LastScript;

/// How often iPXE's bootstrap retries the boot service before local boot.
const BOOTSTRAP_RETRIES: u32 = 3;
const BOOTSTRAP_RETRY_DELAY_S: u32 = 2;

/// What a node's script is rendered from, besides the decision.
pub struct Scene<'a> {
    pub node: &'a Node,
    pub facts: &'a BootFacts,
    pub source: Source,
    pub base_url: &'a str,
    /// The offline banner's data; None while the controller is reachable.
    pub offline: Option<OfflineView>,
}

impl<'a> Scene<'a> {
    /// A scene with the controller reachable (or none configured).
    pub fn online(
        node: &'a Node,
        facts: &'a BootFacts,
        source: Source,
        base_url: &'a str,
    ) -> Scene<'a> {
        Scene {
            node,
            facts,
            source,
            base_url,
            offline: None,
        }
    }
}

pub struct Renderer {
    site_id: String,
    templates: RwLock<Arc<Templates>>,
}

impl Renderer {
    pub fn new(site_id: String, templates: Templates) -> Renderer {
        Renderer {
            site_id,
            templates: RwLock::new(Arc::new(templates)),
        }
    }

    /// Loads the templates again; on error the old ones stay in use.
    pub fn reload(&self, dir: &std::path::Path) -> Result<(), TemplateError> {
        let templates = Templates::load(dir)?;
        *self.templates.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(templates);
        Ok(())
    }

    fn templates(&self) -> Arc<Templates> {
        match self.templates.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The bootstrap (`/boot.ipxe`, or GRUB's `grub/grub.cfg`) for a
    /// given agent URL.
    pub fn bootstrap(&self, base_url: &str, format: ScriptFormat) -> Script {
        let ctx = BootstrapContext {
            base_url: base_url.to_string(),
            site_id: self.site_id.clone(),
            retries: BOOTSTRAP_RETRIES,
            retry_delay_s: BOOTSTRAP_RETRY_DELAY_S,
        };
        Script::new(
            format,
            match self.templates().render_bootstrap(&ctx, format) {
                Ok(script) => script,
                Err(e) => {
                    tracing::error!(error = %e, "bootstrap template failed; serving local boot");
                    fallback_script(None, None, Source::Standalone, format)
                }
            },
        )
    }

    /// The node's script in the format its client reads (`facts.format`):
    /// one decision, rendered by that format's templates.
    pub fn render(&self, scene: Scene<'_>, decision: &Decision) -> BootAnswer {
        let (node, source, format) = (scene.node, scene.source, scene.facts.format);
        let ctx = self.context(scene, decision);
        let templates = self.templates();
        let rendered = unreachable_for_grub(&ctx, decision, format)
            .and_then(|()| templates.render_header(&ctx, format))
            .and_then(|header| {
                templates
                    .render_body(decision.action.as_str(), &ctx, format)
                    .map(|body| header + &body)
            });
        match rendered {
            Ok(script) => BootAnswer {
                script: Script::new(format, script),
                source,
                action: decision.action,
                state: Some(node.state),
            },
            Err(e) => {
                tracing::error!(mac = %node.mac, action = decision.action.as_str(), error = %e,
                    "script template failed; serving the built-in script of the same intent");
                fallback_for(decision.action, node.mac, Some(node.state), source, format)
            }
        }
    }

    /// `last_known`: the script served last, behind a fresh header.
    pub fn replay(&self, scene: Scene<'_>, last: &LastScript) -> BootAnswer {
        let decision = Decision {
            action: Action::LastKnown,
            banner: decision::Banner::None,
            workflow: None,
            conflict: None,
            missing_file: None,
        };
        let (node, source) = (scene.node, scene.source);
        if scene.facts.format == ScriptFormat::Grub {
            // The script kept for `last_known` is iPXE's: GRUB cannot run
            // it, and the safe answer of every other failure is the disk.
            tracing::warn!(mac = %node.mac, "last_known has no GRUB form; booting local disk");
            return fallback_answer(node.mac, Some(node.state), source, ScriptFormat::Grub);
        }
        let ctx = self.context(scene, &decision);
        match self.templates().render_header(&ctx, ScriptFormat::Ipxe) {
            Ok(header) => BootAnswer {
                script: Script::ipxe(format!(
                    "{header}echo siteboot: replaying the script served at {}\n{}",
                    rfc3339(last.served_at),
                    last.script
                )),
                source,
                action: Action::LastKnown,
                state: Some(node.state),
            },
            Err(e) => {
                tracing::error!(mac = %node.mac, error = %e, "header template failed");
                fallback_answer(node.mac, Some(node.state), source, ScriptFormat::Ipxe)
            }
        }
    }

    fn context(&self, scene: Scene<'_>, decision: &Decision) -> ScriptContext {
        let Scene {
            node,
            facts,
            source,
            base_url,
            offline,
        } = scene;
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
            conflict_id: decision.conflict,
            missing_file: decision.missing_file.clone(),
            offline,
            asset_root: grub_path(&format!("{base_url}/assets"), base_url).unwrap_or_default(),
        }
    }
}

/// GRUB fetches over TFTP or plain HTTP only: a GRUB configuration that
/// would name a file it cannot fetch is not rendered (the built-in one of
/// the same intent is served, and the reason logged).
fn unreachable_for_grub(
    ctx: &ScriptContext,
    decision: &Decision,
    format: ScriptFormat,
) -> Result<(), TemplateError> {
    if format != ScriptFormat::Grub {
        return Ok(());
    }
    let refused = |what: &str| {
        Err(TemplateError::Render {
            origin: "GRUB configuration".into(),
            line: 0,
            message: format!(
                "GRUB cannot fetch {what} (plain http:// or the agent's /assets only)"
            ),
        })
    };
    if ctx.asset_root.is_empty() {
        return refused(&format!("from the agent at {}", ctx.base_url));
    }
    match (&ctx.workflow, decision.action) {
        (Some(wf), Action::Install) if wf.method == "kernel" => {
            if wf.kernel_path.is_none() {
                return refused(&wf.kernel_url);
            }
            match wf.initrds.iter().find(|i| i.path.is_none()) {
                Some(image) => refused(&image.url),
                None => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// GRUB's device path of a file a configuration names. The agent's own
/// files (`<base_url>/assets/<path>`) are fetched over the agent's TFTP,
/// which serves the same files (served roots, then the content cache):
/// Debian 12's GRUB (2.06) cannot name an HTTP port, and the agent's HTTP
/// is rarely on 80. Another server's `http://host/path` (port 80) is
/// fetched over HTTP. Anything else (https, a port) is None: GRUB cannot
/// fetch it.
pub fn grub_path(url: &str, base_url: &str) -> Option<String> {
    let host_of = |rest: &str| rest.split('/').next().unwrap_or("").to_string();
    if let Some(path) = url
        .strip_prefix(&format!("{base_url}/assets"))
        .filter(|p| p.is_empty() || p.starts_with('/'))
    {
        let agent = host_of(base_url.strip_prefix("http://")?);
        let ip = agent.rsplit_once(':').map_or(agent.as_str(), |(ip, _)| ip);
        return (!ip.is_empty()).then(|| format!("(tftp,{ip}){path}"));
    }
    let rest = url.strip_prefix("http://")?;
    let host = host_of(rest);
    if host.is_empty() || host.contains(':') {
        return None;
    }
    Some(format!("(http,{host}){}", &rest[host.len()..]))
}

fn workflow_view(wf: &Workflow, base_url: &str) -> WorkflowView {
    WorkflowView {
        id: wf.id.clone(),
        name: wf.name.clone(),
        method: match wf.method {
            crate::model::node::BootMethod::Kernel => "kernel",
            crate::model::node::BootMethod::Sanboot => "sanboot",
            crate::model::node::BootMethod::Chain => "chain",
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
                    path: grub_path(&url, base_url),
                    url,
                }
            })
            .collect(),
        cmdline: wf.cmdline.clone(),
        cmdline_args: wf.cmdline.split_whitespace().map(str::to_string).collect(),
        url: wf.url.as_ref().map(|u| asset_url(u, base_url)),
        kernel_path: grub_path(&asset_url(&wf.kernel, base_url), base_url),
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

/// The script body after the header (for `last_known` replays, which get
/// a fresh header).
pub fn strip_header(script: &str) -> &str {
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

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The built-in answer when `action`'s script cannot be rendered, of the
/// same intent (DESIGN §4): a retired node still does not boot; anything
/// else boots its local disk, never anything destructive.
pub fn fallback_for(
    action: Action,
    mac: Mac,
    state: Option<NodeState>,
    source: Source,
    format: ScriptFormat,
) -> BootAnswer {
    if action != Action::Retired {
        return fallback_answer(mac, state, source, format);
    }
    let status = status_line(mac, state, Action::Retired, source, format);
    let text = match format {
        ScriptFormat::Ipxe => format!(
            "#!ipxe\n{status}echo *** siteboot ERROR: could not build this node's script (see the agent log) ***\n\
             echo *** siteboot: this node is RETIRED and will not boot. ***\n\
             :siteboot_retired\nsleep 3600\ngoto siteboot_retired\n"
        ),
        ScriptFormat::Grub => format!(
            "{status}echo '*** siteboot ERROR: could not build this node'\\''s configuration (see the agent log) ***'\n\
             echo '*** siteboot: this node is RETIRED and will not boot. ***'\n\
             while sleep 3600; do echo '*** siteboot: RETIRED ***'; done\n"
        ),
    };
    BootAnswer {
        script: Script::new(format, text),
        source,
        action: Action::Retired,
        state,
    }
}

/// The status line in `format` (the values are the agent's own names and
/// a MAC: nothing to quote).
fn status_line(
    mac: Mac,
    state: Option<NodeState>,
    action: Action,
    source: Source,
    format: ScriptFormat,
) -> String {
    let line = format!(
        "siteboot: mac={mac} state={} action={} source={}",
        state.map(NodeState::as_str).unwrap_or("unknown"),
        action.as_str(),
        source.as_str()
    );
    match format {
        ScriptFormat::Ipxe => format!("echo {line}\n"),
        ScriptFormat::Grub => format!("echo '{line}'\n"),
    }
}

pub fn fallback_answer(
    mac: Mac,
    state: Option<NodeState>,
    source: Source,
    format: ScriptFormat,
) -> BootAnswer {
    BootAnswer {
        script: Script::new(format, fallback_script(Some(mac), state, source, format)),
        source,
        action: Action::Local,
        state,
    }
}

/// The script served when templates or the store fail: boots the local
/// disk, never anything destructive. Deliberately not a template.
pub fn fallback_script(
    mac: Option<Mac>,
    state: Option<NodeState>,
    source: Source,
    format: ScriptFormat,
) -> String {
    let status = match mac {
        Some(mac) => status_line(mac, state, Action::Local, source, format),
        None => String::new(),
    };
    match format {
        ScriptFormat::Ipxe => format!(
            "#!ipxe\n{status}echo *** siteboot ERROR: could not build this node's script (see the agent log); booting local disk ***\n\
             iseq ${{platform}} efi && exit 0 ||\nsanboot --no-describe --drive 0x80 || exit 0\n"
        ),
        ScriptFormat::Grub => format!(
            "{status}echo '*** siteboot ERROR: could not build this node'\\''s configuration (see the agent log); booting local disk ***'\nexit\n"
        ),
    }
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
        let s = fallback_script(
            Some(mac),
            Some(NodeState::Pending),
            Source::Standalone,
            ScriptFormat::Ipxe,
        );
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains(
            "echo siteboot: mac=52:54:00:00:00:09 state=pending action=local source=standalone\n"
        ));
        assert!(s.contains("sanboot --no-describe --drive 0x80"));
        assert!(!s.contains("kernel"));
    }

    #[test]
    fn a_retired_node_still_does_not_boot_when_its_script_fails() {
        let mac: Mac = "52:54:00:00:00:0a".parse().unwrap();
        let a = fallback_for(
            Action::Retired,
            mac,
            Some(NodeState::Retired),
            Source::Live,
            ScriptFormat::Ipxe,
        );
        assert_eq!(a.action, Action::Retired);
        assert!(a.script.contains(
            "echo siteboot: mac=52:54:00:00:00:0a state=retired action=retired source=live\n"
        ));
        assert!(!a.script.contains("sanboot") && !a.script.contains("exit"));
        let b = fallback_for(
            Action::Install,
            mac,
            Some(NodeState::Pending),
            Source::Live,
            ScriptFormat::Ipxe,
        );
        assert_eq!(b.action, Action::Local);
        assert!(!b.script.contains("kernel"));
    }
}
