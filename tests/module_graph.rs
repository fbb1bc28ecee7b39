//! firstboot's modules import each other without a circle (issue 17:
//! "the import circle is gone"). The temporary services once spanned the
//! bootstrap module, the join server, the peer service and the resolver,
//! each reaching into the others; a circle like that means no module can
//! be read, tested or stopped on its own. This reads the sources as the
//! compiler's paths name them (`crate::a::b`) and fails on any circle
//! among the modules, naming each edge with a file and line.
//!
//! A module is a top-level one (`bootstrap`, `certs`), except `join`,
//! whose parts (`join::server`, `join::peer`, `join::client`, ...) are
//! separate services and count each on its own. Tests (`tests.rs`, and a
//! trailing `#[cfg(test)] mod tests`) and comments are left out: they may
//! reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where an edge was seen: `file:line`.
type Edges = BTreeMap<String, BTreeMap<String, String>>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// The module a source file belongs to, as this test counts them.
fn module_of(relative: &Path) -> Option<String> {
    let parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let first = parts.first()?.clone();
    if matches!(first.as_str(), "lib" | "main") {
        return None;
    }
    match (first.as_str(), parts.get(1)) {
        ("join", Some(second)) if second != "mod" => Some(format!("join::{second}")),
        _ => Some(first),
    }
}

/// Every `crate::a` (or `crate::join::b`) a line names; in a part of
/// `join` (`join/b.rs`), `super::c` too, as `join::c`.
fn targets_in(module: &str, line: &str) -> Vec<String> {
    let mut found = targets(line);
    if module.starts_with("join::") {
        let mut rest = line;
        while let Some(at) = rest.find("super::") {
            rest = &rest[at + "super::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                found.push(format!("join::{name}"));
            } else if !name.is_empty() {
                found.push("join".to_owned());
            }
        }
    }
    found
}

/// Every `crate::a` (or `crate::join::b`) a line names.
fn targets(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let ident = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        let first = ident(rest);
        if first == "join" {
            let after = &rest[first.len()..];
            if let Some(tail) = after.strip_prefix("::") {
                let second = ident(tail);
                // `crate::join::Credentials` is the module itself.
                if second
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase())
                {
                    found.push(format!("join::{second}"));
                    continue;
                }
            }
        }
        if !first.is_empty() {
            found.push(first);
        }
    }
    found
}

fn edges(src: &Path) -> Edges {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut edges = Edges::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let Some(module) = module_of(relative) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(at) => &text[..at],
            None => &text[..],
        };
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for target in targets_in(&module, line) {
                if target != module {
                    edges
                        .entry(module.clone())
                        .or_default()
                        .entry(target)
                        .or_insert_with(|| format!("{}:{}", relative.display(), n + 1));
                }
            }
        }
    }
    edges
}

/// A circle, if there is one: the modules in order, the first again last.
fn circle(edges: &Edges) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &Edges,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(found) = visit(next, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(found) = visit(node, edges, &mut Vec::new(), &mut done) {
            return Some(found);
        }
    }
    None
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn firstboot_s_modules_import_each_other_without_a_circle() {
    let edges = edges(&src());
    // The reader sees what it should: the temporary services' modules are
    // there, with their edges.
    for module in [
        "bootstrap",
        "temporary",
        "join::server",
        "join::peer",
        "resolver",
    ] {
        assert!(edges.contains_key(module), "{module} not read: {edges:#?}");
    }
    if let Some(found) = circle(&edges) {
        let steps: Vec<String> = found
            .windows(2)
            .map(|w| format!("{} -> {} ({})", w[0], w[1], edges[&w[0]][&w[1]]))
            .collect();
        panic!("an import circle:\n  {}", steps.join("\n  "));
    }
}

/// The check finds a circle where there is one, and says where.
#[test]
fn a_circle_is_found_and_named() {
    fn add(edges: &mut Edges, a: &str, b: &str) {
        edges
            .entry(a.to_owned())
            .or_default()
            .insert(b.to_owned(), format!("{a}.rs:1"));
    }
    let mut edges = Edges::new();
    add(&mut edges, "bootstrap", "join::server");
    add(&mut edges, "join::server", "resolver");
    add(&mut edges, "resolver", "state");
    assert_eq!(circle(&edges), None);
    add(&mut edges, "resolver", "bootstrap");
    assert_eq!(
        circle(&edges).unwrap(),
        ["bootstrap", "join::server", "resolver", "bootstrap"]
    );
    assert_eq!(
        targets("let x = crate::join::peer::ask(crate::dns::PORT, crate::join::Credentials);"),
        ["join::peer", "dns", "join"]
    );
    assert_eq!(
        targets_in(
            "join::server",
            "tokio::spawn(super::peer::announce(super::Credentials"
        ),
        ["join::peer", "join"]
    );
    assert_eq!(
        module_of(Path::new("join/server.rs")).as_deref(),
        Some("join::server")
    );
    assert_eq!(module_of(Path::new("join/mod.rs")).as_deref(), Some("join"));
}
