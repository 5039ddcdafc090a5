//! The architecture's rules, read from the source: the module import graph of `src/` has no
//! circles, and every module imports only from the layers below its own (and from inside its
//! own folder), in the order `docs/ARCHITECTURE.md` and `lib.rs` state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every module file of the library, by its module path (`["browser", "pool"]`).
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                parts.pop();
            }
            if rel == Path::new("main") {
                continue;
            }
            out.insert(parts, path);
        }
    }
    out
}

/// The module a path like `crate::a::b::Item` names: its longest prefix that is a module.
fn resolve(path: &[String], known: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains_key(p))
}

/// Module → the modules it names through `crate::` or `super::` paths.
fn graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let known = modules(src);
    let mut edges = BTreeMap::new();
    for (module, file) in &known {
        let text = std::fs::read_to_string(file).unwrap();
        // Test modules may reach anywhere; the architecture is what the library imports.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let mut targets = BTreeSet::new();
        for (at, _) in text.match_indices("crate::").chain(text.match_indices("super::")) {
            let tail: String = text[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut parts: Vec<String> = tail.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect();
            let mut base = Vec::new();
            if parts.first().is_some_and(|p| p == "crate") {
                parts.remove(0);
            } else {
                // Each `super` is one step up from the module itself.
                base = module.clone();
                while parts.first().is_some_and(|p| p == "super") {
                    parts.remove(0);
                    base.pop();
                }
            }
            let full: Vec<String> = base.into_iter().chain(parts).collect();
            if let Some(target) = resolve(&full, &known).filter(|t| t != module && !t.is_empty()) {
                targets.insert(target);
            }
        }
        // A folder's root naming its own submodules (`use relay::Peer`, `discovery::run(…)`).
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("pub mod ") || l.trim_start().starts_with("mod "))
        {
            let name = line
                .trim_start()
                .trim_start_matches("pub ")
                .trim_start_matches("mod ")
                .trim_end_matches(';');
            let child: Vec<String> = module.iter().cloned().chain([name.to_owned()]).collect();
            let named = text.match_indices(&format!("{name}::")).any(|(at, _)| {
                let before = text[..at].chars().last().unwrap_or(' ');
                !(before.is_alphanumeric() || before == '_' || before == ':')
            });
            if named && known.contains_key(&child) {
                targets.insert(child);
            }
        }
        edges.insert(module.clone(), targets);
    }
    edges
}

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_module_graph_has_no_circles() {
    let edges = graph(&src());
    assert!(edges.len() > 30, "the modules were read: {:?}", edges.keys());
    // Depth-first search; a module met again on the current path closes a circle.
    fn visit(
        m: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = path.iter().position(|p| p == m) {
            let circle: Vec<String> = path[at..].iter().map(|p| p.join("::")).collect();
            panic!("import circle: {} -> {}", circle.join(" -> "), m.join("::"));
        }
        path.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            visit(next, edges, path, done);
        }
        path.pop();
        done.insert(m.clone());
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        visit(m, &edges, &mut Vec::new(), &mut done);
    }
}

/// The layers, lowest first: the order `docs/ARCHITECTURE.md` draws. A module may import
/// the modules of lower layers and its own folder's, never one of its own layer or above.
const LAYERS: &[&[&str]] = &[
    // Whose fault an error is: every layer's errors answer it.
    &["error"],
    &["values", "egress_rules", "tls", "auth", "console_patch", "markdown"],
    &["config", "metrics", "limits", "quota", "store"],
    &["events", "capture"],
    &["browser", "telemetry"],
    &["profile", "artifacts", "webhooks"],
    &["session"],
    &["action"],
    &["broker"],
    &["render"],
    &["proxy"],
    // The MCP server's page tools (its transport is http's).
    &["mcp"],
    &["http"],
    // Entry points for the fuzz targets: above everything they drive.
    &["fuzzing"],
];

fn layer_of(module: &[String]) -> usize {
    let top = module[0].as_str();
    LAYERS
        .iter()
        .position(|layer| layer.contains(&top))
        .unwrap_or_else(|| panic!("module {top} is in no layer: add it to LAYERS and to docs/ARCHITECTURE.md"))
}

#[test]
fn every_module_imports_only_from_the_layers_below_it() {
    let edges = graph(&src());
    let mut offenders = Vec::new();
    for (module, targets) in edges.iter().filter(|(m, _)| !m.is_empty()) {
        for target in targets.iter().filter(|t| t[0] != module[0]) {
            if layer_of(target) >= layer_of(module) {
                offenders.push(format!("{} imports {}", module.join("::"), target.join("::")));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "imports that run sideways or back up: {offenders:#?}"
    );
    // The check sees what it is about: the top layer reaches down, and every module is placed.
    let http = vec!["http".to_owned()];
    assert!(edges[&vec!["fuzzing".to_owned()]].iter().any(|t| t.starts_with(&http)));
    assert!(
        edges
            .keys()
            .filter(|m| !m.is_empty())
            .all(|m| layer_of(m) < LAYERS.len())
    );
}

#[test]
fn the_layers_are_the_documented_ones() {
    // ARCHITECTURE.md names each layer's modules in the same order, top first.
    let doc = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/ARCHITECTURE.md")).unwrap();
    let block = doc
        .split("<!-- layers -->")
        .nth(1)
        .expect("docs/ARCHITECTURE.md has a block between <!-- layers --> markers");
    let documented: Vec<Vec<String>> = block
        .lines()
        .filter_map(|l| l.strip_prefix("layer: "))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    let code: Vec<Vec<String>> = LAYERS
        .iter()
        .rev()
        .map(|layer| layer.iter().map(|m| m.to_string()).collect())
        .collect();
    assert_eq!(
        documented, code,
        "docs/ARCHITECTURE.md's layers and tests/layers.rs's LAYERS differ"
    );
}
