//! Architecture checks: the engine stays pure.
//!
//! These read the engine's own manifest and sources and fail if a dependency outside the allowed
//! set appears, or if the source names IO, clocks, randomness, async, hash-map types whose iteration
//! order is unspecified, or floating point. Comments are skipped; string literals are not (none of
//! these words has a reason to appear in one).

use std::path::Path;

/// Pure crates the engine may depend on: encoding, hashing, exact decimals, errors.
const ALLOWED_DEPENDENCIES: &[&str] =
    &["arrayvec", "bincode", "hashbrown", "rust_decimal", "rustc-hash", "serde", "thiserror", "xxhash-rust"];

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

#[test]
fn the_engine_source_names_no_io_clock_randomness_or_unordered_maps() {
    let mut files = 0;
    for entry in std::fs::read_dir(engine_dir().join("src")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        files += 1;
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
    assert!(files >= 8, "read only {files} source files");
}
