//! A `wallex serve` process whose writer dies exits instead of lingering: it would otherwise serve
//! reads, fail every write and look alive to anything that only checks the port.
//!
//! The writer is made to die for real, on PostgreSQL: a constraint makes its next commit fail, so
//! it reloads, and the latest snapshot it reloads from is garbage, which it refuses to start on.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wallex_testkit::services as support;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_server_whose_writer_dies_exits() {
    let database = support::postgres().await;
    let port = free_port();
    let data_dir = std::env::temp_dir().join(format!("wallex-health-{}", uuid::Uuid::new_v4().simple()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_wallex"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data_dir)
        .env("DATABASE_URL", &database.url)
        .env_remove("KAFKA_BROKERS")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..400 {
        if client.get(format!("{base}/health/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "the server did not become ready");
    let created = client
        .post(format!("{base}/wallets"))
        .header("content-type", "application/json")
        .body(r#"{"walletId": "w", "ownerId": "o", "initialBalance": 5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);

    let admin = sqlx::PgPool::connect(&database.url).await.unwrap();
    sqlx::query("INSERT INTO snapshots (transaction_id, bytes) VALUES (1000000, '\\x0102030405')")
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE commands ADD CONSTRAINT writes_fail CHECK (transaction_id < 0) NOT VALID")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;

    let refused = client
        .post(format!("{base}/wallets/w/credit"))
        .header("content-type", "application/json")
        .body(r#"{"amount": 1}"#)
        .send()
        .await;
    // Either the answer (503: not applied) or, if the process is already gone, no answer at all.
    if let Ok(response) = refused {
        assert_eq!(response.status().as_u16(), 503);
    }
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(20) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&data_dir);
    let status = status.expect("the server kept running without its writer");
    assert!(!status.success(), "it exits with a failure: {status}");
}
