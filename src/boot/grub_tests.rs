//! GRUB configurations (DESIGN §14): the same decision in GRUB's
//! language, and no value able to add a GRUB command or expand anything.
//! The checks read a rendered configuration with a small GRUB-style word
//! splitter: quotes and backslashes as GRUB's lexer treats them, and any
//! unquoted metacharacter (`;`, `|`, `&`, `$`, `<`, `>`, braces) reported.

use proptest::prelude::*;

use super::templates::{ScriptContext, Templates, sample_context};
use crate::model::script::ScriptFormat;

/// One GRUB command line split into words as GRUB's lexer would, or the
/// unquoted metacharacter that would make it more than one plain command.
fn words(line: &str) -> Result<Vec<String>, char> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '\\' => {
                in_word = true;
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '$' => return Err('$'),
                        '\\' => {
                            if let Some(next) = chars.next() {
                                word.push(next);
                            }
                        }
                        other => word.push(other),
                    }
                }
            }
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            ';' | '|' | '&' | '$' | '<' | '>' | '{' | '}' | '\n' => return Err(c),
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn render(t: &Templates, action: &str, ctx: &ScriptContext) -> Result<String, String> {
    let header = t
        .render_header(ctx, ScriptFormat::Grub)
        .map_err(|e| e.to_string())?;
    let body = t
        .render_body(action, ctx, ScriptFormat::Grub)
        .map_err(|e| e.to_string())?;
    Ok(header + &body)
}

/// The line starting with `command` (its first word), split.
fn command(config: &str, command: &str) -> Vec<String> {
    config
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.split(' ').next() == Some(command) || l.starts_with(&format!("if {command} "))
        })
        .map(|l| {
            // The template's own `if …; then` around a command.
            let (mut split, body) =
                match l.strip_prefix("if ").and_then(|r| r.strip_suffix("; then")) {
                    Some(body) => (vec!["if".to_string()], body),
                    None => (Vec::new(), l),
                };
            split.extend(words(body).unwrap_or_else(|c| panic!("unquoted {c:?} in {l:?}")));
            split
        })
        .next()
        .unwrap_or_else(|| panic!("no {command} line in:\n{config}"))
}

#[test]
fn the_status_line_and_every_action_render_for_grub() {
    let t = Templates::built_in().unwrap();
    let ctx = sample_context("local", "kernel", false);
    let config = render(&t, "local", &ctx).unwrap();
    assert_eq!(
        command(&config, "echo"),
        [
            "echo",
            "siteboot: mac=52:54:00:00:00:01 state=pending action=local source=standalone"
        ]
    );
    assert!(config.trim_end().ends_with("exit"), "{config}");

    let install = render(&t, "install", &sample_context("install", "kernel", false)).unwrap();
    let linux = command(&install, "linux");
    assert_eq!(
        linux,
        [
            "if",
            "linux",
            "(tftp,192.0.2.1)/sample/vmlinuz",
            "console=ttyS0",
            "BOOTIF=01-52-54-00-00-00-01",
            "siteboot.url=http://192.0.2.1:8080",
        ]
    );
    let retired = render(&t, "retired", &sample_context("retired", "kernel", true)).unwrap();
    assert!(retired.contains("OFFLINE"), "{retired}");
    assert!(
        !retired.contains("exit") && !retired.contains("boot\n"),
        "{retired}"
    );
    let mut conflict = sample_context("local", "kernel", false);
    conflict.banner = Some("conflict".into());
    let held = render(&t, "local", &conflict).unwrap();
    assert!(held.contains("siteboot CONFLICT"), "{held}");
    assert!(held.trim_end().ends_with("exit"), "{held}");
}

#[test]
fn a_cmdline_is_one_grub_argument_per_word() {
    let t = Templates::built_in().unwrap();
    let mut ctx = sample_context("install", "kernel", false);
    if let Some(wf) = ctx.workflow.as_mut() {
        wf.cmdline_args = vec![
            "console=ttyS0".into(),
            "auto=true".into(),
            "priority=critical".into(),
        ];
    }
    let install = render(&t, "install", &ctx).unwrap();
    let linux = command(&install, "linux");
    assert_eq!(
        &linux[3..6],
        ["console=ttyS0", "auto=true", "priority=critical"]
    );
}

#[test]
fn hostile_values_stay_one_word_or_are_refused() {
    let t = Templates::built_in().unwrap();
    for evil in [
        "web'; reboot; echo '",
        "web\"; reboot",
        "$(reboot)",
        "${prefix}",
        "a\\' b",
        "x' 'y",
        "web; linux (tftp)/evil",
        "{ reboot }",
    ] {
        let mut ctx = sample_context("retired", "kernel", false);
        ctx.hostname = Some(evil.into());
        let config = render(&t, "retired", &ctx).unwrap();
        let echo = command(&config.replace("echo 'siteboot: mac", "#"), "echo");
        assert_eq!(
            echo[1],
            format!(
                "*** siteboot: node {evil} is RETIRED and will not boot. Ask the fleet operator to re-enable it. ***"
            ),
            "{config}"
        );
    }
    for evil in ["web\nreboot", "web\rreboot", "tab\there"] {
        let mut ctx = sample_context("retired", "kernel", false);
        ctx.hostname = Some(evil.into());
        let err = render(&t, "retired", &ctx).unwrap_err();
        assert!(err.contains("control character"), "{evil:?}: {err}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Any printable hostname and cmdline: the echo carries the hostname
    /// exactly as one word, and the kernel line exactly the cmdline's
    /// words, with nothing unquoted that GRUB would act on.
    #[test]
    fn no_value_adds_a_command_or_expands(host in "[ -~]{0,40}", cmdline in "[ -~]{0,60}") {
        let t = Templates::built_in().unwrap();
        let mut ctx = sample_context("install", "kernel", false);
        ctx.hostname = Some(host.clone());
        if let Some(wf) = ctx.workflow.as_mut() {
            wf.cmdline_args = cmdline.split_whitespace().map(str::to_string).collect();
        }
        let config = render(&t, "install", &ctx).unwrap();
        let installing = config
            .lines()
            .find(|l| l.starts_with("echo 'siteboot: installing"))
            .unwrap();
        let echo = words(installing).map_err(|c| TestCaseError::fail(format!("unquoted {c:?}")))?;
        prop_assert_eq!(echo.len(), 2);
        prop_assert_eq!(&echo[1], &format!("siteboot: installing Sample OS on {}", if host.is_empty() { "52:54:00:00:00:01" } else { host.as_str() }));
        let linux = command(&config, "linux");
        let expected: Vec<&str> = cmdline.split_whitespace().collect();
        prop_assert_eq!(&linux[3..3 + expected.len()], expected.as_slice());
    }
}

/// An operator's `.grub.j2` replaces the built-in one like an iPXE
/// template does, is checked at start, and cannot get a value past the
/// quoting (`|safe` changes nothing).
#[test]
fn an_operator_grub_template_overrides_and_still_quotes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("retired.grub.j2"),
        "echo 'custom: '{{ hostname|safe }}\n",
    )
    .unwrap();
    let t = Templates::load(dir.path()).unwrap();
    let mut ctx = sample_context("retired", "kernel", false);
    ctx.hostname = Some("web'; reboot; '".into());
    let body = t.render_body("retired", &ctx, ScriptFormat::Grub).unwrap();
    assert_eq!(
        words(body.trim_end()).unwrap(),
        ["echo", "custom: web'; reboot; '"]
    );
    std::fs::write(dir.path().join("local.grub.j2"), "echo {{ no_such }}\n").unwrap();
    let err = Templates::load(dir.path())
        .err()
        .expect("refused at start")
        .to_string();
    assert!(err.contains("local.grub.j2:1:"), "{err}");
}
