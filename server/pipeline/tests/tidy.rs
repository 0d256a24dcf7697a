//! Architecture checks: the pipeline names no adapter, the simulator links none, and no release
//! binary links test-only code.
//!
//! These ask Cargo itself (`cargo tree`, from the lockfile) for the resolved dependency
//! graphs, so a dependency that arrives transitively (through a new crate in between) is caught as
//! surely as one written into a manifest. The source checks read the pipeline's own files.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates no code the simulator runs may link: the adapters and their transports.
const ADAPTERS: &[&str] = &["sqlx", "sqlx-core", "axum", "hyper", "rdkafka", "rdkafka-sys", "tower-http", "reqwest"];

/// What `wallex-pipeline` may depend on directly: the engine, serde, the runtime and telemetry facades.
const PIPELINE_DEPENDENCIES: &[&str] =
    &["wallex-engine", "metrics", "serde", "serde_json", "thiserror", "tokio", "tracing"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The names of every package in `package`'s normal (non-dev, non-build) dependency graph, for this
/// host, with `rustflags` (`--cfg madsim` for the simulator's graph).
fn graph(package: &str, rustflags: &str, edges: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .current_dir(workspace())
        .env("RUSTFLAGS", rustflags)
        .args(["tree", "--locked", "--prefix", "none", "-e", edges, "-p", package])
        .args(["-f", "{p} {f}"])
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "cargo tree -p {package}: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(lines.len() > 3, "cargo tree -p {package} printed too little: {text}");
    lines
}

fn names(lines: &[String]) -> Vec<&str> {
    lines.iter().filter_map(|line| line.split_whitespace().next()).collect()
}

#[test]
fn the_pipeline_links_no_adapter() {
    let lines = graph("wallex-pipeline", "", "normal");
    for name in names(&lines) {
        assert!(!ADAPTERS.contains(&name), "wallex-pipeline depends on the adapter `{name}`");
    }
}

#[test]
fn the_simulator_links_no_adapter() {
    let lines = graph("wallex-sim", "--cfg madsim", "normal");
    let names = names(&lines);
    assert!(names.contains(&"wallex-pipeline"), "the simulator's graph lacks the pipeline: {names:?}");
    assert!(names.contains(&"madsim"), "the graph was not resolved under --cfg madsim: {names:?}");
    for name in names {
        assert!(!ADAPTERS.contains(&name), "wallex-sim (under --cfg madsim) links the adapter `{name}`");
        assert!(name != "wallex-sql" && name != "wallex-http" && name != "wallex-kafka", "wallex-sim links {name}");
    }
}

#[test]
fn the_release_binary_links_no_test_code() {
    let lines = graph("wallex", "", "normal,features");
    assert!(names(&lines).contains(&"wallex-pipeline"), "the binary's graph lacks the pipeline");
    for line in &lines {
        assert!(!line.starts_with("wallex-testkit "), "the wallex binary links wallex-testkit: {line}");
        assert!(!line.contains("feature \"faults\""), "the wallex binary enables fault switches: {line}");
    }
}

#[test]
fn the_pipeline_manifest_lists_only_its_allowed_dependencies() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let mut section = String::new();
    let mut checked = 0;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if !section.ends_with("dependencies]")
            || section.contains("dev-dependencies")
            || line.is_empty()
            || line.starts_with('#')
        {
            continue;
        }
        let name = line.split(['=', '.', ' ']).next().unwrap();
        assert!(
            PIPELINE_DEPENDENCIES.contains(&name),
            "wallex-pipeline depends on `{name}` ({section}), which is not on its list"
        );
        checked += 1;
    }
    assert!(checked >= 5, "parsed only {checked} dependencies: the manifest format changed");
}

/// The pipeline compiles the same in both modes: only planted bugs (`cfg(madsim)`) may differ, never
/// a module left out of the simulator.
#[test]
fn the_pipeline_source_has_no_production_only_code() {
    let mut files = 0;
    for path in sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src")) {
        let text = std::fs::read_to_string(&path).unwrap();
        files += 1;
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap();
            for fragment in ["not(madsim)", "sqlx", "axum", "rdkafka", "hyper"] {
                assert!(
                    !code.contains(fragment),
                    "{}:{}: `{fragment}` in the pipeline: {line}",
                    path.display(),
                    number + 1
                );
            }
        }
    }
    assert!(files >= 6, "read only {files} source files");
}

/// Every `.rs` file under `directory`, recursively.
fn sources(directory: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(sources(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
    found
}
