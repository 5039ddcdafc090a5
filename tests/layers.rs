//! The architecture's rules, read from the source: the module import graph of `src/` has no
//! circles, and nothing below the HTTP layer imports from it (`docs/ARCHITECTURE.md`).

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

#[test]
fn nothing_below_http_imports_it() {
    let edges = graph(&src());
    let http = vec!["http".to_owned()];
    // Above the HTTP layer: the crate root and the fuzzing entry points.
    let above = |m: &Vec<String>| m.is_empty() || m[0] == "http" || m[0] == "fuzzing";
    let offenders: Vec<String> = edges
        .iter()
        .filter(|(m, targets)| !above(m) && targets.iter().any(|t| t.starts_with(&http)))
        .map(|(m, _)| m.join("::"))
        .collect();
    assert!(offenders.is_empty(), "below http but importing it: {offenders:?}");
    assert!(
        edges[&vec!["fuzzing".to_owned()]].iter().any(|t| t.starts_with(&http)),
        "the check sees imports of http where there are some"
    );
}
