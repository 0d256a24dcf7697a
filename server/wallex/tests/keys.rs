//! `wallex keys create|list|revoke` on the embedded store and on PostgreSQL: the secret is printed
//! once, alone on the last line, and stored nowhere; `list` shows every key and no secret;
//! revocation happens once.

use std::process::{Command, Output};

fn wallex(args: &[&str], database_url: Option<&str>, data_dir: &std::path::Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wallex"));
    for name in ["DATABASE_URL", "KAFKA_BROKERS", "PORT", "RUST_LOG", "RUST_BACKTRACE", "RUST_LIB_BACKTRACE"] {
        command.env_remove(name);
    }
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    command.args(args).arg("--data-dir").arg(data_dir).output().unwrap()
}

fn text(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Runs the key lifecycle; returns the secrets it made, for the caller to look for in the store.
fn lifecycle(database_url: Option<&str>, data_dir: &std::path::Path) -> Vec<String> {
    let created = text(&wallex(
        &["keys", "create", "--scope", "write,read", "--owner", "alice", "--name", "alice's app"],
        database_url,
        data_dir,
    ));
    let secret = created.lines().last().unwrap().to_owned();
    assert!(secret.starts_with("wlx_key_") && !secret.contains(' '), "the secret alone on the last line: {created}");
    let id = secret.trim_start_matches("wlx_").rsplit_once('_').unwrap().0.to_owned();
    let admin = text(&wallex(&["keys", "create", "--scope", "admin"], database_url, data_dir));
    let admin_secret = admin.lines().last().unwrap().to_owned();

    let listed = text(&wallex(&["keys", "list"], database_url, data_dir));
    assert!(listed.contains(&id), "{listed}");
    assert!(listed.lines().any(|line| line.starts_with(&id) && line.contains("read,write") && line.contains("alice")));
    assert!(!listed.contains(&secret) && !listed.contains(&admin_secret), "list never shows a secret");

    assert_eq!(text(&wallex(&["keys", "revoke", &id], database_url, data_dir)), format!("revoked {id}\n"));
    let again = wallex(&["keys", "revoke", &id], database_url, data_dir);
    assert!(!again.status.success(), "a key is revoked once");
    assert!(!String::from_utf8_lossy(&again.stderr).contains(&secret));
    let listed = text(&wallex(&["keys", "list"], database_url, data_dir));
    let line = listed.lines().find(|line| line.starts_with(&id)).unwrap();
    assert!(!line.ends_with("\t-"), "the revocation time is listed: {line}");

    let refused = wallex(&["keys", "create", "--scope", "superuser"], database_url, data_dir);
    assert!(!refused.status.success(), "an unknown scope is refused");
    vec![secret, admin_secret]
}

#[test]
fn keys_on_the_embedded_store_keep_no_secret() {
    let data_dir = std::env::temp_dir().join(format!("wallex-keys-cli-{}", uuid::Uuid::new_v4().simple()));
    let secrets = lifecycle(None, &data_dir);
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(&data_dir).unwrap() {
        stored.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let stored = String::from_utf8_lossy(&stored);
    for secret in &secrets {
        let random = secret.rsplit_once('_').unwrap().1;
        assert!(!stored.contains(random), "a secret was stored");
    }
    std::fs::remove_dir_all(&data_dir).unwrap();
}

#[tokio::test]
async fn keys_on_postgres_keep_no_secret() {
    let database = wallex_testkit::services::postgres().await;
    let data_dir = std::env::temp_dir().join(format!("wallex-keys-cli-pg-{}", uuid::Uuid::new_v4().simple()));
    let url = database.url.clone();
    let dir = data_dir.clone();
    let secrets = tokio::task::spawn_blocking(move || lifecycle(Some(&url), &dir)).await.unwrap();
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    // Every column of every key, as text (the digest in hex): no secret, nor its random part.
    let rows: Vec<(String, i32)> = sqlx::query_as("SELECT row_to_json(k)::text, length(k.secret_hash) FROM api_keys k")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for (row, digest) in &rows {
        assert_eq!(*digest, 32, "only a digest is stored");
        for secret in &secrets {
            assert!(!row.contains(secret.rsplit_once('_').unwrap().1), "a secret was stored: {row}");
        }
    }
    pool.close().await;
    assert!(!data_dir.exists(), "with DATABASE_URL nothing is written to the data directory");
}
