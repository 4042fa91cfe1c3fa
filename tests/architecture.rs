//! The shape of the crate: `config` is a leaf (plain data and validation),
//! the top-level modules import each other without cycles, and no source
//! file grows past ~600 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level module of a file under `src/` (`src/proxy/handler.rs` → `proxy`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// `crate::name` and `crate::{a, b::c}` references in code (comment lines
/// skipped; a trailing comment may add a reference, never hide one).
fn references(text: &str) -> BTreeSet<String> {
    let ident =
        |s: &str| -> String { s.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                out.extend(inner.split(',').map(ident).filter(|n| !n.is_empty()));
            } else {
                let name = ident(after);
                if !name.is_empty() {
                    out.insert(name);
                }
            }
            rest = after;
        }
    }
    out
}

#[test]
fn references_are_read_in_every_form() {
    let text = "use crate::config::Config;\nuse crate::{proxy, exchange::cache};\n// crate::admin\nlet x = \"http://a\"; crate::otel::f();\n";
    let found: Vec<String> = references(text).into_iter().collect();
    assert_eq!(found, ["config", "exchange", "otel", "proxy"]);
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let from = module_of(&src, f);
        if from == "main" || from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let to = edges.entry(from.clone()).or_default();
        to.extend(references(&text).into_iter().filter(|m| *m != from));
    }
    edges
}

#[test]
fn config_imports_no_other_module() {
    let edges = graph();
    assert!(edges["config"].is_empty(), "config must be a leaf; it imports {:?}", edges["config"]);
}

#[test]
fn top_level_modules_have_no_import_cycles() {
    let edges = graph();
    // Depth-first search; a grey node met again closes a cycle.
    fn visit<'a>(
        n: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
    ) {
        state.insert(n, false);
        path.push(n);
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(false) => panic!("import cycle: {} -> {m}", path.join(" -> ")),
                Some(true) => {}
                None => visit(m, edges, state, path),
            }
        }
        path.pop();
        state.insert(n, true);
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n.as_str()) {
            visit(n, &edges, &mut state, &mut Vec::new());
        }
    }
}

#[test]
fn no_source_file_is_over_600_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > 600).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these by concern: {long:?}");
}
