//! The shape of the code, held by a test: no two modules import each other (directly or around a circle),
//! `config/` depends on no provider, and no provider knows another.
//!
//! A module here is a top-level module of the library (`src/NAME.rs` or `src/NAME/`), and each provider folder
//! (`src/provider/NAME/`) on its own. What counts is a `crate::…` path in code outside `#[cfg(test)]` modules and
//! comments: the test code of a module may use whatever it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file belongs to: `format`, `provider/aws`, `provider` (for `src/provider/mod.rs`).
fn module_of(relative: &Path) -> Option<String> {
    let parts: Vec<String> = relative.with_extension("").iter().map(|p| p.to_string_lossy().into_owned()).collect();
    match parts.as_slice() {
        [top] if top == "lib" || top == "main" => None,
        [provider, name, ..] if provider == "provider" && name != "mod" => Some(format!("provider/{name}")),
        [top, ..] => Some(top.clone()),
        [] => None,
    }
}

/// The code of a file without its test module and comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The modules `code` names through `crate::…` paths (and `crate::{a, b}` groups).
fn references(code: &str, providers: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end].split(',').map(|n| n.trim().split("::").next().unwrap_or_default()).collect()
        } else {
            vec![rest]
        };
        for name in names {
            let mut segments = name
                .split("::")
                .map(|s| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>());
            let first = segments.next().unwrap_or_default();
            if first.is_empty() {
                continue;
            }
            let second = segments.next().unwrap_or_default();
            if first == "provider" && providers.contains(&second) {
                out.insert(format!("provider/{second}"));
            } else {
                out.insert(first);
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let providers: BTreeSet<String> = std::fs::read_dir(src.join("provider"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(file.strip_prefix(&src).unwrap_or(&file)) else { continue };
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let mut deps = references(&code(&text), &providers);
        deps.remove(&module);
        graph.entry(module).or_default().extend(deps);
    }
    graph
}

/// A path from `from` to `to` through the graph, if there is one.
fn path(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> Option<Vec<String>> {
    let mut queue = std::collections::VecDeque::from([vec![from.to_string()]]);
    let mut seen = BTreeSet::from([from.to_string()]);
    while let Some(route) = queue.pop_front() {
        let last = route.last().cloned().unwrap_or_default();
        for next in graph.get(&last).into_iter().flatten() {
            let mut longer = route.clone();
            longer.push(next.clone());
            if next == to {
                return Some(longer);
            }
            if seen.insert(next.clone()) {
                queue.push_back(longer);
            }
        }
    }
    None
}

#[test]
fn no_two_modules_import_each_other() {
    let graph = graph();
    assert!(
        graph.contains_key("measure") && graph.contains_key("provider/aws"),
        "the scan found the modules: {graph:?}"
    );
    let mut cycles = Vec::new();
    for (module, deps) in &graph {
        for dep in deps {
            if let Some(back) = path(&graph, dep, module) {
                cycles.push(format!("{module} -> {}", back.join(" -> ")));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn config_depends_on_no_provider_and_providers_not_on_each_other() {
    let graph = graph();
    let config = &graph["config"];
    assert!(!config.iter().any(|d| d.starts_with("provider")), "config imports {config:?}");
    for (module, deps) in graph.iter().filter(|(m, _)| m.starts_with("provider/")) {
        let others: Vec<&String> = deps.iter().filter(|d| d.starts_with("provider/") && *d != module).collect();
        assert!(others.is_empty(), "{module} imports {others:?}");
    }
}

#[test]
fn the_scan_sees_a_cycle_when_there_is_one() {
    let providers = BTreeSet::from(["aws".to_string()]);
    let deps = references("use crate::{progress::Progress, image};\nlet x = crate::provider::aws::f();", &providers);
    assert_eq!(deps, BTreeSet::from(["progress".to_string(), "image".to_string(), "provider/aws".to_string()]));
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(path(&graph, "b", "a"), Some(vec!["b".to_string(), "c".to_string(), "a".to_string()]));
}
