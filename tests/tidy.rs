//! The house rules, read off the source: the layer rule (which module may name which),
//! where `unsafe` may be, and the crates that forbid it. A broken rule fails with the
//! file, the line and the rule it breaks. (That each `unsafe` says why it is sound, in a
//! `// SAFETY:` comment, is clippy's `undocumented_unsafe_blocks`, denied workspace-wide.)
//!
//! No module names one that names it back (a cycle of `crate::`/`super::` paths).
//!
//! The layers, arrows pointing one way: `api → engine → {domain, actors}`, `domain →
//! compact`.
//! - `src/domain` is the billing rules, pure: it names nothing above it (engine, api,
//!   config), nor the actor runtime, nor I/O, threads, clocks or randomness.
//! - `src/compact` packs state in memory and holds every `unsafe`; it knows no billing
//!   (it names nothing of the domain or above).
//! - `src/engine` never names the HTTP face (`src/api`), does no network I/O (alerts go
//!   out through a transport it is given, `src/webhook.rs`) and opens no file: what it
//!   keeps goes through `src/store`, which names nothing of the engine, the API or the
//!   runtime.
//! - `src/config.rs` reads settings and builds domain objects; it starts nothing.
//! - `actors/` knows nothing of billing: it does not depend on `tallyman`.
//!
//! Test code (`#[cfg(test)]` modules, `*_tests.rs`) may use threads and seeded randomness.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

// What a module's production code must never name.
/// The layers above the domain, and the runtime.
const ABOVE_DOMAIN: &[&str] = &[
    "crate::engine",
    "crate::api",
    "crate::config",
    "tallyman_actors",
    "actix",
    "tokio",
];
/// I/O, threads, clocks and randomness.
const IMPURE: &[&str] = &[
    "std::fs",
    "std::net",
    "std::thread",
    "std::process",
    "Instant::now",
    "SystemTime",
    "Utc::now",
    "Local::now",
    "rand::",
];
/// The HTTP face, and network I/O: the webhook's transport is `src/webhook.rs`.
const ENGINE_NEVER: &[&str] = &["crate::api", "crate::webhook", "awc::", "actix_web", "std::net"];
/// The HTTP face reaches below the engine only for the domain's value types.
const API_NEVER: &[&str] = &["crate::store", "crate::compact", "tallyman_actors"];
const CONFIG_NEVER: &[&str] = &["crate::engine", "crate::api", "actix", "tokio", "tallyman_actors"];
const ACTORS_NEVER: &[&str] = &["tallyman::"];

/// The one module that may hold `unsafe`. No other file has any.
const UNSAFE_HOME: &str = "src/compact/";

/// Each production line of `file` (1-based number and text), comments and test modules
/// left out.
fn production_lines(file: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let next = lines.get(i + 1).map_or("", |l| l.trim_start());
        if trimmed.starts_with("#[cfg(test)]") && next.starts_with("mod ") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push((i + 1, line.to_string()));
    }
    out
}

fn rust_files(dir: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![Path::new(ROOT).join(dir)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(ROOT).unwrap().to_string_lossy().into_owned()
}

/// Every line of the production code of `files` that names one of `never`.
fn offences(files: &[PathBuf], never: &[&[&str]], rule: &str) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        if file.to_string_lossy().ends_with("_tests.rs") {
            continue;
        }
        for (n, line) in production_lines(file) {
            let code = line.split("//").next().unwrap_or_default();
            for name in never.iter().copied().flatten() {
                if code.contains(name) {
                    found.push(format!(
                        "{}:{n}: `{}` names {name}: {rule}",
                        relative(file),
                        line.trim()
                    ));
                }
            }
        }
    }
    found
}

fn assert_none(found: Vec<String>) {
    assert!(found.is_empty(), "\n{}\n", found.join("\n"));
}

#[test]
fn the_domain_names_nothing_above_it_and_does_no_io() {
    let rule = "src/domain is pure billing rules (no engine, api, config, runtime, I/O, clock or randomness)";
    assert_none(offences(&rust_files("src/domain"), &[ABOVE_DOMAIN, IMPURE], rule));
}

#[test]
fn the_compact_containers_know_no_billing() {
    let rule = "src/compact packs state in memory and sits below src/domain";
    assert_none(offences(
        &rust_files("src/compact"),
        &[ABOVE_DOMAIN, &["crate::domain"]],
        rule,
    ));
}

#[test]
fn the_engine_never_names_the_http_face() {
    let rule = "src/engine sits below src/api and does no network I/O (src/webhook.rs carries alerts)";
    assert_none(offences(&rust_files("src/engine"), &[ENGINE_NEVER], rule));
}

#[test]
fn the_engine_does_no_file_io_and_the_store_knows_no_engine() {
    let rule = "src/engine keeps what it keeps through src/store, which sits below it and names \
                only the domain's values (not how they are packed)";
    let mut found = offences(
        &rust_files("src/engine"),
        &[&["std::fs", "OpenOptions", "File::"]],
        rule,
    );
    found.extend(offences(
        &rust_files("src/store"),
        &[ABOVE_DOMAIN, &["crate::compact"]],
        rule,
    ));
    assert_none(found);
}

#[test]
fn the_http_face_goes_through_the_engine() {
    let rule =
        "src/api and src/webhook.rs call src/engine (and name the domain's value types), nothing below";
    let mut files = rust_files("src/api");
    files.push(Path::new(ROOT).join("src/webhook.rs"));
    assert_none(offences(&files, &[API_NEVER], rule));
}

#[test]
fn configuration_starts_nothing() {
    let mut files = vec![Path::new(ROOT).join("src/config.rs")];
    files.extend(rust_files("src/config"));
    let rule = "src/config.rs (and src/config/) reads settings and builds domain objects only";
    assert_none(offences(&files, &[CONFIG_NEVER], rule));
}

#[test]
fn the_actor_runtime_knows_nothing_of_billing() {
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("actors/Cargo.toml")).unwrap();
    let deps = manifest
        .lines()
        .filter(|l| l.trim_start().starts_with("tallyman ") || l.trim_start().starts_with("tallyman."))
        .collect::<Vec<_>>();
    assert!(deps.is_empty(), "actors/Cargo.toml depends on tallyman: {deps:?}");
    let rule = "actors/ hosts entities of any kind and never sees billing";
    assert_none(offences(&rust_files("actors/src"), &[ACTORS_NEVER], rule));
}

#[test]
fn unsafe_lives_in_the_compact_module_only() {
    let mut found = Vec::new();
    for dir in ["src", "actors/src", "loadgen/src", "benches"] {
        for file in rust_files(dir) {
            let name = relative(&file);
            let text = std::fs::read_to_string(&file).unwrap();
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                let is_unsafe = ["unsafe {", "unsafe impl", "unsafe fn", "unsafe extern"]
                    .iter()
                    .any(|u| code.contains(u));
                if !is_unsafe {
                    continue;
                }
                if !name.starts_with(UNSAFE_HOME) {
                    found.push(format!(
                        "{name}:{}: `{}`: unsafe outside {UNSAFE_HOME}",
                        i + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert_none(found);
}

#[test]
fn every_module_but_compact_forbids_unsafe() {
    let roots = [
        "actors/src/lib.rs",
        "loadgen/src/lib.rs",
        "loadgen/src/main.rs",
        "src/domain/mod.rs",
        "src/engine/mod.rs",
        "src/api/mod.rs",
        "src/config.rs",
        "src/report.rs",
        "src/store/mod.rs",
        "src/webhook.rs",
        "src/main.rs",
    ];
    for root in roots {
        let text = std::fs::read_to_string(Path::new(ROOT).join(root)).unwrap();
        assert!(
            text.contains("#![forbid(unsafe_code)]"),
            "{root} does not forbid unsafe code"
        );
    }
}

/// The longest a file (test modules aside) or a function may be.
const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 80;

/// What is longer than its bound, with its length, while it waits to be split (nothing
/// today): an entry may shrink or go, never grow, and nothing new may join it. A
/// function that is long for a reason says so in a `// Long:` comment above it instead.
const STILL_LONG: &[(&str, usize)] = &[];

/// The name of the function `line` opens, if it opens one with a body.
fn opens_fn(line: &str) -> Option<(usize, String)> {
    let indent = line.len() - line.trim_start().len();
    let mut words = line.split_whitespace().peekable();
    while let Some(w) = words.peek() {
        if w.starts_with("pub") || ["async", "const", "unsafe", "extern"].contains(w) {
            words.next();
        } else {
            break;
        }
    }
    if words.next() != Some("fn") || line.trim_end().ends_with(';') {
        return None;
    }
    let name = words.next()?.split(['(', '<']).next()?.to_string();
    Some((indent, name))
}

/// Every file and function of production code over its bound, with its length.
fn long_ones() -> Vec<(String, usize, bool)> {
    let mut found = Vec::new();
    for dir in ["src", "actors/src", "loadgen/src"] {
        for file in rust_files(dir) {
            let name = relative(&file);
            if name.ends_with("_tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let end = lines
                .iter()
                .enumerate()
                .position(|(i, l)| {
                    l.trim_start().starts_with("#[cfg(test)]")
                        && lines
                            .get(i + 1)
                            .is_some_and(|n| n.trim_start().starts_with("mod "))
                })
                .unwrap_or(lines.len());
            if end > MAX_FILE_LINES {
                found.push((name.clone(), end, false));
            }
            for i in 0..end {
                let Some((indent, function)) = opens_fn(lines[i]) else {
                    continue;
                };
                let close = format!("{}}}", " ".repeat(indent));
                let Some(len) = lines[i..end].iter().position(|l| *l == close) else {
                    continue;
                };
                if len + 1 > MAX_FN_LINES {
                    let explained = lines[i.saturating_sub(12)..i]
                        .iter()
                        .any(|l| l.contains("// Long:"));
                    found.push((format!("{name} {function}"), len + 1, explained));
                }
            }
        }
    }
    found
}

#[test]
fn files_and_functions_stay_small() {
    let mut found = Vec::new();
    for (what, len, explained) in long_ones() {
        let known = STILL_LONG.iter().find(|(w, _)| *w == what);
        match known {
            _ if explained => {}
            Some((_, was)) if len <= *was => {}
            Some((_, was)) => found.push(format!(
                "{what}: {len} lines, longer than the {was} it was; split it"
            )),
            None => found.push(format!(
                "{what}: {len} lines, over {MAX_FN_LINES} a function, {MAX_FILE_LINES} a file; \
                 split it along what it owns, or say why in a `// Long:` comment above it"
            )),
        }
    }
    assert_none(found);
}

/// The module path of `file` in the crate whose root folder is `root` (`src/engine/
/// customers/upserts.rs` is `engine::customers::upserts`; a `mod.rs` is its folder's).
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The modules `file` (module `me`) names by path, `crate::…` or `super::…`, each the
/// longest prefix of the path that is a module of `modules`.
fn named_modules(file: &Path, me: &str, modules: &[String]) -> Vec<String> {
    let mut named = Vec::new();
    for (_, line) in production_lines(file) {
        let code = line.split("//").next().unwrap_or_default();
        for (at, _) in code.match_indices("crate::").chain(code.match_indices("super::")) {
            let path: String = code[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut words: Vec<&str> = path.split("::").filter(|w| !w.is_empty()).collect();
            let mut base: Vec<&str> = Vec::new();
            if words.first() == Some(&"super") {
                base = me.split("::").collect();
                while words.first() == Some(&"super") {
                    words.remove(0);
                    base.pop();
                }
            } else {
                words.remove(0);
            }
            base.extend(words);
            let target = (1..=base.len())
                .rev()
                .map(|n| base[..n].join("::"))
                .find(|m| modules.contains(m));
            named.extend(target.filter(|t| t != me));
        }
    }
    named.sort();
    named.dedup();
    named
}

/// A cycle through `from`, if any: the modules from `from` back to it.
fn cycle_through(from: &str, edges: &std::collections::BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_string()]];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in edges.get(last).into_iter().flatten() {
            if next == from {
                let mut cycle = path.clone();
                cycle.push(from.to_string());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn no_module_names_one_that_names_it_back() {
    // A module a parent re-exports from may name the parent (`crate::engine::X`); the
    // parent's own `pub use child::X` is not a path and does not count, and a group
    // (`crate::domain::{customer::X, …}`) counts as naming the module before it.
    let mut found = Vec::new();
    for root in ["src", "actors/src", "loadgen/src"] {
        let root = Path::new(ROOT).join(root);
        let files: Vec<PathBuf> = rust_files(&relative(&root))
            .into_iter()
            .filter(|f| !f.ends_with("main.rs") && !f.to_string_lossy().ends_with("_tests.rs"))
            .collect();
        let modules: Vec<String> = files.iter().map(|f| module_of(&root, f)).collect();
        let mut edges = std::collections::BTreeMap::new();
        for (file, me) in files.iter().zip(&modules) {
            edges.insert(me.clone(), named_modules(file, me, &modules));
        }
        let mut cycles: Vec<std::collections::BTreeSet<String>> = Vec::new();
        for me in &modules {
            if let Some(cycle) = cycle_through(me, &edges) {
                let members = cycle.iter().cloned().collect();
                if !cycles.contains(&members) {
                    cycles.push(members);
                    found.push(format!("{}: {}", relative(&root), cycle.join(" → ")));
                }
            }
        }
    }
    assert_none(found);
}
