//! The layers point one way (ARCHITECTURE.md): a crate of the workspace depends only on crates of
//! a lower layer, and inside a crate a module imports (`crate::x`) only modules listed before it.
//! Test code (`#[cfg(test)]` modules at the end of a file) may use anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Crate (by its name in `[workspace.dependencies]`) → layer. Lower layers know nothing above.
const CRATE_LAYERS: &[(&str, u32)] = &[
    ("spec", 0),
    ("lang", 1),
    ("runtime", 1),
    ("meter", 1),
    ("metrics", 1),
    ("engine", 2),
    ("edge-eval", 3),
];

/// Per crate folder: its top-level modules, lowest first.
const MODULE_LAYERS: &[(&str, &[&str])] = &[
    (
        "crates/lang",
        &["source", "diag", "ast", "parse", "signature", "resolve"],
    ),
    (
        "crates/runtime",
        &[
            "test_util",
            "model",
            "gguf",
            "spm",
            "chat",
            "tokenizer",
            "nli",
            "cpu",
            "synthetic",
            "hf",
            "llama",
            "generate",
            "lora",
        ],
    ),
    (
        "crates/meter",
        &["hw", "memory", "pagecache", "host", "rapl", "nvml"],
    ),
    ("crates/metrics", &["stats", "score", "fidelity"]),
    (
        "crates/engine",
        &[
            "cache",
            "stage",
            "row",
            "ui",
            "test_stage",
            "plan",
            "exec",
            "table",
        ],
    ),
    (
        ".",
        &[
            "tasks", "stages", "paper", "report", "results", "study", "bench", "cli",
        ],
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace crates a Cargo.toml's `[dependencies]` names (`name.workspace = true`).
fn workspace_deps(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut in_deps = false;
    let mut out = vec![];
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if let Some(name) = line.strip_suffix(".workspace = true")
            && in_deps
            && CRATE_LAYERS.iter().any(|(c, _)| *c == name)
        {
            out.push(name.to_string());
        }
    }
    out
}

#[test]
fn crates_depend_only_on_lower_layers() {
    let layer: BTreeMap<&str, u32> = CRATE_LAYERS.iter().copied().collect();
    let mut checked = 0;
    for (name, own) in CRATE_LAYERS {
        let dir = if *name == "edge-eval" {
            root()
        } else {
            root().join("crates").join(name)
        };
        for dep in workspace_deps(&dir.join("Cargo.toml")) {
            assert!(
                layer[dep.as_str()] < *own,
                "`{name}` (layer {own}) depends on `{dep}` (layer {}): a lower layer must not \
                 know a higher one or a sibling; move the shared code down",
                layer[dep.as_str()]
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} dependencies found: is the parser right?"
    );
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The top-level module a source file belongs to (`src/exec/job.rs` → `exec`); `None` for the
/// crate root.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

/// The modules named by `crate::NAME` in `text`, test code excluded.
fn crate_imports(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut out = vec![];
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `$crate::` in macros names the crate itself, not a module edge.
        if !rest[..i].ends_with('$') {
            out.push(name);
        }
        rest = after;
    }
    out
}

#[test]
fn modules_import_only_lower_modules() {
    let mut violations = vec![];
    let mut edges = 0;
    for (dir, order) in MODULE_LAYERS {
        let src = root().join(dir).join("src");
        for file in rust_files(&src) {
            let Some(module) = module_of(&src, &file) else {
                continue;
            };
            let Some(own) = order.iter().position(|m| *m == module) else {
                violations.push(format!(
                    "{}: module `{module}` is not in MODULE_LAYERS; add it at its layer",
                    file.display()
                ));
                continue;
            };
            for used in crate_imports(&std::fs::read_to_string(&file).unwrap()) {
                if used.is_empty() {
                    violations.push(format!(
                        "{}: `crate::{{…}}` groups are not checked here: one path per module",
                        file.display()
                    ));
                }
                if used == module {
                    continue;
                }
                edges += 1;
                match order.iter().position(|m| *m == used) {
                    Some(i) if i < own => {}
                    Some(_) => violations.push(format!(
                        "{}: `{module}` imports `crate::{used}`, which is above it",
                        file.display()
                    )),
                    None => {} // an item of the crate root (e.g. a re-export), not a module
                }
            }
        }
    }
    assert!(
        edges >= 20,
        "only {edges} imports found: is the scanner right?"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
