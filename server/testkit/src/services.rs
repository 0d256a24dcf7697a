//! Real services for integration tests.
//!
//! `kafka()` gives a Kafka-protocol broker the same way (`KAFKA_BROKERS`, else `scripts/kafka`).
//! `postgres()` gives a fresh, empty database: in the cluster named by `DATABASE_URL` (the test
//! command starts one), or, when that is unset, in a throwaway cluster this process starts with
//! `scripts/postgres` and stops when the guard drops. Either way each call gets its own database,
//! so tests never see each other's rows.

use std::process::Command;

/// A database for one test; drops its throwaway cluster, if it started one.
#[derive(Debug)]
pub struct Database {
    pub url: String,
    cluster: Option<String>,
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(directory) = &self.cluster {
            let _ = Command::new(script("postgres")).args(["stop", directory]).status();
        }
    }
}

fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts").join(name)
}

pub async fn postgres() -> Database {
    let (server_url, cluster) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let output = Command::new(script("postgres")).arg("start").output().expect("scripts/postgres runs");
            assert!(output.status.success(), "scripts/postgres start: {}", String::from_utf8_lossy(&output.stderr));
            let exports = parse_exports(&String::from_utf8(output.stdout).unwrap());
            (exports["DATABASE_URL"].clone(), Some(exports["WALLEX_PG_DIR"].clone()))
        }
    };
    let name = format!("wallex_test_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&server_url).await.expect("PostgreSQL is reachable");
    // The name is ours (a UUID), not input: safe to splice.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
    admin.close().await;
    let (base, _) = server_url.rsplit_once('/').expect("a database URL");
    Database { url: format!("{base}/{name}"), cluster }
}

/// A Kafka-protocol broker for one test; stops the broker if this process started it.
#[derive(Debug)]
pub struct Broker {
    pub brokers: String,
    started: Option<String>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(directory) = &self.started {
            let _ = Command::new(script("kafka")).args(["stop", directory]).status();
        }
    }
}

/// The broker named by `KAFKA_BROKERS` (the test command starts one), or a throwaway one started
/// with `scripts/kafka`. Tests share a broker, so each must use its own topics and groups.
pub fn kafka() -> Broker {
    if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
        return Broker { brokers, started: None };
    }
    let output = Command::new(script("kafka")).arg("start").output().expect("scripts/kafka runs");
    assert!(output.status.success(), "scripts/kafka start: {}", String::from_utf8_lossy(&output.stderr));
    let exports = parse_exports(&String::from_utf8(output.stdout).unwrap());
    Broker { brokers: exports["KAFKA_BROKERS"].clone(), started: Some(exports["WALLEX_KAFKA_DIR"].clone()) }
}

/// The `export A=1 B=2` line the service scripts print, as a map.
pub fn parse_exports(line: &str) -> std::collections::BTreeMap<String, String> {
    line.trim()
        .trim_start_matches("export ")
        .split(' ')
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}
