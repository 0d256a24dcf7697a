//! Real services for integration tests.
//!
//! `postgres()` gives a fresh, empty database: in the cluster named by `DATABASE_URL` (the test
//! command starts one), or, when that is unset, in a throwaway cluster this process starts with
//! `scripts/postgres` and stops when the guard drops. Either way each call gets its own database,
//! so tests never see each other's rows.

#![allow(dead_code)]

use std::process::Command;

/// A database for one test; drops its throwaway cluster, if it started one.
pub struct Database {
    pub url: String,
    cluster: Option<String>,
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(directory) = &self.cluster {
            let _ = Command::new(script()).args(["stop", directory]).status();
        }
    }
}

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres")
}

pub async fn postgres() -> Database {
    let (server_url, cluster) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let output = Command::new(script()).arg("start").output().expect("scripts/postgres runs");
            assert!(output.status.success(), "scripts/postgres start: {}", String::from_utf8_lossy(&output.stderr));
            let line = String::from_utf8(output.stdout).unwrap();
            let mut url = None;
            let mut directory = None;
            for assignment in line.trim().trim_start_matches("export ").split(' ') {
                match assignment.split_once('=') {
                    Some(("DATABASE_URL", value)) => url = Some(value.to_owned()),
                    Some(("WALLEX_PG_DIR", value)) => directory = Some(value.to_owned()),
                    _ => {}
                }
            }
            (url.expect("a DATABASE_URL"), directory)
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
