//! The `wallex` binary's configuration, end to end: `serve --config FILE` runs on what the file says,
//! with the environment and flags overriding it; `config` prints the effective settings; an
//! inconsistent configuration is refused at start, naming the setting, before anything is opened.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scratch(name: &str) -> PathBuf {
    let directory = std::env::temp_dir().join(format!("wallex-config-test-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

/// The binary with a clean environment for what it reads (no store or broker of the test run's).
fn wallex() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wallex"));
    for name in ["DATABASE_URL", "KAFKA_BROKERS", "PORT", "RUST_LOG"] {
        command.env_remove(name);
    }
    for (name, _) in std::env::vars() {
        if name.starts_with("WALLEX_") && name.contains("__") {
            command.env_remove(name);
        }
    }
    command
}

#[tokio::test]
async fn serve_runs_on_the_file_with_the_environment_and_flags_overriding_it() {
    let directory = scratch("serve");
    let data_dir = directory.join("data");
    let (file_port, port) = (free_port(), free_port());
    let file = directory.join("wallex.toml");
    std::fs::write(
        &file,
        format!(
            "[http]\nlisten = \"127.0.0.1:{file_port}\"\n[store]\ndata_dir = \"{}\"\n\
             [pipeline.writer]\nmax_batch = 64\n[pipeline.relay]\nbatch = 100\n",
            data_dir.display()
        ),
    )
    .unwrap();

    // What `config` prints is what `serve` will run on.
    let output = wallex()
        .args(["config", "--config"])
        .arg(&file)
        .args(["--set", "pipeline.relay.batch=5"])
        .env("PORT", port.to_string())
        .env("WALLEX_PIPELINE__WRITER__MAX_BATCH", "32")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8(output.stdout).unwrap();
    let effective: toml::Table = toml::from_str(&printed).unwrap();
    assert_eq!(effective["http"]["listen"].as_str(), Some(format!("127.0.0.1:{port}").as_str()), "PORT wins");
    assert_eq!(effective["pipeline"]["writer"]["max_batch"].as_integer(), Some(32), "the environment wins");
    assert_eq!(effective["pipeline"]["relay"]["batch"].as_integer(), Some(5), "the flag wins");
    assert_eq!(effective["store"]["data_dir"].as_str(), Some(data_dir.to_str().unwrap()), "from the file");

    let mut server = wallex()
        .args(["serve", "--config"])
        .arg(&file)
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut up = false;
    while started.elapsed() < Duration::from_secs(30) {
        if client.get(format!("{base}/health")).send().await.is_ok_and(|response| response.status().is_success()) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created = if up {
        client
            .post(format!("{base}/wallets"))
            .header("content-type", "application/json")
            .body(r#"{"walletId": "configured", "ownerId": "o", "initialBalance": 10}"#)
            .send()
            .await
            .map(|response| response.status().as_u16())
            .ok()
    } else {
        None
    };
    let file_port_answers = std::net::TcpStream::connect(("127.0.0.1", file_port)).is_ok();
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(up, "wallex serve --config did not answer on the port the environment gave");
    assert_eq!(created, Some(201), "the served API works");
    assert!(!file_port_answers, "the file's port was overridden");
    assert!(data_dir.join("wallex.sqlite").exists(), "the embedded store lives where the file says");
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn an_inconsistent_configuration_is_refused_at_start_naming_the_setting() {
    let directory = scratch("refused");
    let data_dir = directory.join("data");
    let file = directory.join("wallex.toml");
    std::fs::write(
        &file,
        format!(
            "[store]\ndata_dir = \"{}\"\n[pipeline.writer]\nengine_retention_micros = 7200000000\n\
             idempotency_retention_micros = 3600000000\n",
            data_dir.display()
        ),
    )
    .unwrap();
    for command in ["serve", "config"] {
        let output = wallex().args([command, "--config"]).arg(&file).output().unwrap();
        assert!(!output.status.success(), "{command} accepted an engine retention longer than the store's");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("pipeline.writer.engine_retention_micros"), "{command}: {stderr}");
    }
    let output = wallex().args(["serve", "--set", "pipeline.writer.max_bach=1"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("pipeline.writer.max_bach"));
    assert!(!data_dir.exists(), "nothing was opened before the configuration was checked");
    std::fs::remove_dir_all(&directory).unwrap();
}
