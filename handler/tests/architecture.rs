//! The layers of the layout table at the top of `src/lib.rs`, checked against the code: every
//! `crate::…` path in a top-level module (its file, or every file of its folder) names a module
//! of a lower layer, every module is in the table, and the modules form no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Each module's layer, from the rows `//! | 3 | [`datasets`] | … |` of `lib.rs`.
fn declared_layers() -> BTreeMap<String, u32> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut layers = BTreeMap::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! |") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Ok(layer) = cells[0].parse::<u32>() else {
            continue; // the header and its rule
        };
        let module = cells[1].trim_matches(|c| matches!(c, '[' | ']' | '`'));
        layers.insert(module.to_owned(), layer);
    }
    layers
}

/// The top-level modules of the crate: `src/x.rs` and `src/x/`.
fn modules() -> BTreeSet<String> {
    std::fs::read_dir(src())
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            match name.strip_suffix(".rs") {
                Some("lib" | "main") => None,
                Some(module) => Some(module.to_owned()),
                None => Some(name),
            }
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments (a `//` that starts a line or follows a space; the
/// crate's strings put none there).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| {
            let comment = line
                .match_indices("//")
                .find(|(at, _)| *at == 0 || line[..*at].ends_with(char::is_whitespace));
            match comment {
                Some((at, _)) => &line[..at],
                None => line,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a piece of code names: `crate::a::…` and `crate::{a::…, b}`.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let identifier = |text: &str| -> String {
        text.trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item, mut items) = (0, String::new(), Vec::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                    _ if depth == 0 => item.push(c),
                    _ => {}
                }
            }
            items.push(item);
            named.extend(items.iter().map(|i| identifier(i)));
        } else {
            named.insert(identifier(rest));
        }
    }
    named.retain(|name| !name.is_empty() && name != "self");
    named
}

/// For each module, the modules it names, with one place each.
fn edges(modules: &BTreeSet<String>) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src()).unwrap();
        let first = relative.components().next().unwrap();
        let first = first.as_os_str().to_str().unwrap();
        let module = first.strip_suffix(".rs").unwrap_or(first).to_owned();
        if !modules.contains(&module) {
            continue; // lib.rs, main.rs
        }
        let text = code(&std::fs::read_to_string(&file).unwrap());
        for named in named_modules(&text) {
            if named != module && modules.contains(&named) {
                edges
                    .entry(module.clone())
                    .or_default()
                    .entry(named)
                    .or_insert_with(|| relative.display().to_string());
            }
        }
    }
    edges
}

#[test]
fn every_module_uses_only_lower_layers() {
    let (layers, modules) = (declared_layers(), modules());
    let undeclared: Vec<_> = modules
        .iter()
        .filter(|m| !layers.contains_key(*m))
        .collect();
    assert!(
        undeclared.is_empty(),
        "modules missing from lib.rs's layout table: {undeclared:?}"
    );
    let stale: Vec<_> = layers.keys().filter(|m| !modules.contains(*m)).collect();
    assert!(
        stale.is_empty(),
        "the layout table names modules that do not exist: {stale:?}"
    );
    let mut upward = Vec::new();
    for (from, to) in edges(&modules) {
        for (target, place) in to {
            if layers[&target] >= layers[&from] {
                upward.push(format!(
                    "{from} (layer {}) uses {target} (layer {}) in {place}",
                    layers[&from], layers[&target]
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "against the layer order:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_modules_form_no_cycle() {
    let modules = modules();
    let edges = edges(&modules);
    /// Depth-first, with the path so far: a module met again on it closes a cycle.
    fn visit(
        module: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == module) {
            let mut cycle = path[start..].to_vec();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if !done.insert(module.to_owned()) {
            return None;
        }
        path.push(module.to_owned());
        for next in edges.get(module).into_iter().flat_map(|to| to.keys()) {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in &modules {
        if let Some(cycle) = visit(module, &edges, &mut Vec::new(), &mut done) {
            panic!("the modules form a cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn paths_and_groups_are_read() {
    let code = code(
        "use crate::a::B;\nuse crate::{c::D, e, self};\n// crate::commented\nlet x = crate::f::g();",
    );
    let named: Vec<String> = named_modules(&code).into_iter().collect();
    assert_eq!(named, ["a", "c", "e", "f"]);
}
