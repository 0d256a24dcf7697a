//! Architecture checks: the engine stays pure.
//!
//! These read the engine's own manifest and sources and fail if a dependency outside the allowed
//! set appears, or if the source names IO, clocks, randomness, async, hash-map types whose iteration
//! order is unspecified, or floating point. Comments are skipped; string literals are not (none of
//! these words has a reason to appear in one).

use std::path::Path;

/// Pure crates the engine may depend on: encoding, hashing, exact decimals, errors.
const ALLOWED_DEPENDENCIES: &[&str] =
    &["arrayvec", "bincode", "hashbrown", "rust_decimal", "serde", "siphasher", "thiserror", "xxhash-rust"];

/// Source fragments that would make the engine impure or nondeterministic.
const FORBIDDEN: &[(&str, &str)] = &[
    ("std::fs", "file IO"),
    ("std::net", "network IO"),
    ("std::io", "IO"),
    ("std::env", "environment"),
    ("std::process", "processes"),
    ("std::thread", "threads"),
    ("SystemTime", "the wall clock"),
    ("Instant", "a clock"),
    ("rand::", "randomness"),
    ("thread_rng", "randomness"),
    ("RandomState", "a randomly seeded hasher"),
    ("async ", "async"),
    (".await", "async"),
    ("tokio", "async runtime"),
    ("HashMap", "unordered iteration (use the tables or BTreeMap)"),
    ("HashSet", "unordered iteration (use BTreeSet)"),
    ("f32", "floating point"),
    ("f64", "floating point"),
];

fn engine_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_engine_depends_only_on_pure_crates() {
    let manifest = std::fs::read_to_string(engine_dir().join("Cargo.toml")).unwrap();
    let mut section = String::new();
    let mut checked = 0;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if section != "[dependencies]" || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line.split(['=', '.', ' ']).next().unwrap();
        assert!(ALLOWED_DEPENDENCIES.contains(&name), "engine depends on `{name}`, which is not on the pure list");
        checked += 1;
    }
    assert!(checked >= 5, "parsed only {checked} dependencies: the manifest format changed");
}

/// Source files compiled only into the engine's own unit tests (declared under `#[cfg(test)]` by
/// their parent, which is checked): they may time things.
const TEST_ONLY: &[(&str, &str)] = &[("tables/flooding.rs", "tables.rs")];

fn source_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn the_engine_source_names_no_io_clock_randomness_or_unordered_maps() {
    let src = engine_dir().join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    for (test_only, parent) in TEST_ONLY {
        let module = Path::new(test_only).file_stem().unwrap().to_str().unwrap();
        let parent_text = std::fs::read_to_string(src.join(parent)).unwrap();
        assert!(
            parent_text.contains(&format!("#[cfg(test)]\nmod {module};")),
            "{test_only} must be declared `#[cfg(test)] mod {module};` in {parent}"
        );
    }
    let mut checked = 0;
    for path in &files {
        let relative = path.strip_prefix(&src).unwrap().to_str().unwrap().replace('\\', "/");
        if TEST_ONLY.iter().any(|(test_only, _)| *test_only == relative) {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        checked += 1;
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap();
            for (fragment, why) in FORBIDDEN {
                assert!(
                    !code.contains(fragment),
                    "{}:{}: `{fragment}` brings {why} into the engine: {line}",
                    path.display(),
                    number + 1
                );
            }
        }
    }
    assert!(checked >= 8, "read only {checked} source files");
}
