//! The import graph of `src/` stays a DAG that follows the layers of
//! `src/lib.rs` (docs/architecture.md): a file may use its own module and
//! the layers below it, never one above, and no two files may reach each
//! other. Read from the source text, so a new upward import or cycle fails
//! here with the path that closes it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, lowest layer first. Equal ranks may not use each other.
const LAYERS: &[(&str, u32)] = &[
    ("model", 0),
    ("ratelimit", 0),
    ("logsafe", 0),
    ("metrics", 0),
    ("events", 0),
    ("tasks", 0),
    ("config", 1),
    ("store", 2),
    ("central", 3),
    ("policy", 3),
    ("outbox", 4),
    ("content", 4),
    ("boot", 5),
    ("status", 6),
    ("admin", 6),
    ("link", 7),
    ("serve", 8),
    ("agent", 9),
    ("cli", 10),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library source file, as its module path (`["store", "queue"]`
/// for src/store/queue/mod.rs). `main.rs` is the binary, above everything.
fn modules() -> BTreeMap<Vec<String>, PathBuf> {
    let mut found = BTreeMap::new();
    let mut stack = vec![src()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let relative = path.strip_prefix(src()).expect("under src");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if parts.last().map(String::as_str) == Some("mod") {
                parts.pop();
            }
            // `main.rs` is the binary; a `tests.rs` holds its parent's unit
            // tests (declared under `#[cfg(test)]`), whose `super` is that
            // parent.
            if parts == ["main"] || parts.last().map(String::as_str) == Some("tests") {
                continue;
            }
            if parts == ["lib"] {
                parts.clear();
            }
            found.insert(parts, path);
        }
    }
    found
}

/// Strips comments so that prose never reads as an import, and the unit
/// tests at the end of a file (`#[cfg(test)]`), whose `super` is the file
/// itself.
fn code_only(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("//") {
                ""
            } else {
                line.split("//").next().unwrap_or("")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Paths named in `text` (`crate::a::b`, `super::c`, and `child::x` for a
/// declared child module), with `{…}` groups expanded one level.
fn referenced_paths(text: &str, children: &BTreeSet<String>) -> Vec<(String, Vec<String>)> {
    let code = code_only(text);
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident(bytes[i]) || (i > 0 && (is_ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        let root = &code[start..i];
        let rooted = root == "crate" || root == "super" || children.contains(root);
        if !rooted || !code[i..].starts_with("::") {
            continue;
        }
        // Read `::seg::seg…`, possibly ending in a `{…}` group.
        let mut segments = Vec::new();
        let mut j = i;
        while code[j..].starts_with("::") {
            j += 2;
            if code[j..].starts_with('{') {
                let end = code[j..].find('}').map(|e| j + e).unwrap_or(code.len());
                for item in code[j + 1..end].split(',') {
                    let mut path = segments.clone();
                    path.extend(
                        item.trim()
                            .split("::")
                            .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
                            .filter(|s| !s.is_empty() && s != "self" && s != "*"),
                    );
                    out.push((root.to_string(), path));
                }
                segments.clear();
                j = end;
                break;
            }
            let seg_start = j;
            while j < bytes.len() && is_ident(bytes[j]) {
                j += 1;
            }
            if j == seg_start {
                break; // a glob (`::*`)
            }
            segments.push(code[seg_start..j].to_string());
        }
        if !segments.is_empty() {
            out.push((root.to_string(), segments));
        }
        i = j.max(i);
    }
    out
}

/// The file a path lands in: the longest prefix that is a module.
fn resolve(modules: &BTreeMap<Vec<String>, PathBuf>, mut path: Vec<String>) -> Option<Vec<String>> {
    while !path.is_empty() {
        if modules.contains_key(&path) {
            return Some(path);
        }
        path.pop();
    }
    None
}

fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules = modules();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).expect("read source");
        let children: BTreeSet<String> = modules
            .keys()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
            .map(|m| m[module.len()].clone())
            .collect();
        let targets = edges.entry(module.clone()).or_default();
        for (root, rest) in referenced_paths(&text, &children) {
            let mut absolute = match root.as_str() {
                "crate" => Vec::new(),
                "super" => module[..module.len().saturating_sub(1)].to_vec(),
                child => {
                    let mut m = module.clone();
                    m.push(child.to_string());
                    m
                }
            };
            absolute.extend(rest);
            if let Some(target) = resolve(&modules, absolute)
                && &target != module
                // A module's own declaration file is reached by its
                // children implicitly; naming it is not a dependency on
                // one's own parent if it is merely the crate root.
                && !target.is_empty()
            {
                targets.insert(target);
            }
        }
    }
    edges
}

fn rank(module: &[String]) -> Option<u32> {
    let top = module.first()?;
    LAYERS
        .iter()
        .find(|(name, _)| name == top)
        .map(|(_, rank)| *rank)
}

fn show(module: &[String]) -> String {
    if module.is_empty() {
        "crate".into()
    } else {
        module.join("::")
    }
}

#[test]
fn every_top_level_module_has_a_layer() {
    for module in modules().keys() {
        if module.is_empty() {
            continue;
        }
        assert!(
            rank(module).is_some(),
            "src/{} is in no layer: add it to LAYERS here and to docs/architecture.md",
            module[0]
        );
    }
}

#[test]
fn imports_only_go_down_the_layers() {
    let mut wrong = Vec::new();
    for (from, targets) in graph() {
        for to in targets {
            if from.first() == to.first() {
                continue;
            }
            if let (Some(a), Some(b)) = (rank(&from), rank(&to))
                && b >= a
            {
                wrong.push(format!("{} uses {}", show(&from), show(&to)));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "upward or sideways imports:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_two_files_reach_each_other() {
    let edges = graph();
    // Depth-first search; a back edge closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        marks: &mut BTreeMap<Vec<String>, Mark>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(node.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in edges.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(node, &edges, &mut marks, &mut stack) {
            let path: Vec<String> = cycle.iter().map(|m| show(m)).collect();
            panic!("import cycle: {}", path.join(" → "));
        }
    }
}

#[test]
fn the_reader_sees_imports_and_ignores_prose() {
    let children: BTreeSet<String> = ["queue".to_string()].into();
    let text = "use crate::model::mac::Mac;\n// crate::agent is prose\nuse super::{port::ControllerPort, CentralError};\nuse queue::writer::QueueWriter;\nlet x = other::y;";
    let found = referenced_paths(text, &children);
    let shown: Vec<String> = found
        .iter()
        .map(|(root, rest)| format!("{root}::{}", rest.join("::")))
        .collect();
    assert_eq!(
        shown,
        [
            "crate::model::mac::Mac",
            "super::port::ControllerPort",
            "super::CentralError",
            "queue::writer::QueueWriter"
        ]
    );
}

/// docs/architecture.md, "Lifecycle": every task is spawned through
/// `crate::tasks`, so that shutdown joins it (tests may spawn as they
/// like).
#[test]
fn tasks_are_spawned_only_through_the_tracker() {
    let mut found = Vec::new();
    for (module, path) in modules() {
        if module == ["tasks"] {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        let code = code_only(&text);
        for (n, line) in code.lines().enumerate() {
            if line.contains("tokio::spawn(") || line.contains("tokio::task::spawn(") {
                found.push(format!("{}:{}", path.display(), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "spawned outside crate::tasks: {found:#?}");
}

/// docs/architecture.md: the store owns every table. Only `src/store/`
/// names redb; everyone else reaches rows through the store's typed
/// methods, so another storage could stand behind them.
#[test]
fn only_the_store_uses_redb() {
    let mut found = Vec::new();
    for (module, path) in modules() {
        if module.first().map(String::as_str) == Some("store") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        for (n, line) in code_only(&text).lines().enumerate() {
            if line.contains("redb::") || line.contains("use redb") {
                found.push(format!("{}:{}", path.display(), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "redb used outside src/store: {found:#?}");
}

/// docs/architecture.md: one module, one concern; no file in `src/` grows
/// past 800 lines (unit tests live in a module's `tests.rs`).
#[test]
fn no_source_file_is_over_800_lines() {
    let mut long = Vec::new();
    for path in modules().into_values() {
        let lines = std::fs::read_to_string(&path)
            .expect("read source")
            .lines()
            .count();
        if lines > 800 {
            long.push(format!("{}: {lines}", path.display()));
        }
    }
    assert!(long.is_empty(), "split these: {long:#?}");
}
