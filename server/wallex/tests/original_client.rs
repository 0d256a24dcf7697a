//! The original service's clients run unchanged: `tests/compat/original_client.py`, written from
//! the original's project summary alone (its routes, fields and answers), drives a real embedded
//! `wallex serve` with concurrent wallets, credits, debits and transfers, and checks every answer
//! and every read after it exactly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kills the server when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_original_services_client_runs_unchanged() {
    let data_dir = std::env::temp_dir().join(format!("wallex-original-client-{}", uuid::Uuid::new_v4().simple()));
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_wallex"));
    for name in ["DATABASE_URL", "KAFKA_BROKERS", "PORT", "RUST_LOG"] {
        command.env_remove(name);
    }
    let _server = Server(
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(&data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut up = false;
    while !up && started.elapsed() < Duration::from_secs(30) {
        up = client.get(format!("{base}/health")).send().await.is_ok_and(|r| r.status().is_success());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "wallex serve did not come up");

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/compat/original_client.py");
    let url = base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(&script)
            .args(["--url", &url, "--wallets", "40", "--operations", "1200", "--workers", "20", "--fast"])
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the original client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("every check held"), "{stdout}");
    let _ = std::fs::remove_dir_all(&data_dir);
}
