//! The store conformance suite against both SQL stores: the embedded SQLite file and PostgreSQL
//! (a fresh database each, in the cluster the test command starts).

use wallex_testkit::services as support;

#[tokio::test]
async fn the_embedded_sqlite_store_conforms() {
    let directory = std::env::temp_dir().join(format!("wallex-conformance-{}", uuid::Uuid::new_v4()));
    let store = wallex_sql::SqliteStore::open(&directory).await.unwrap();
    wallex_testkit::conformance::run(store.clone()).await;
    store.close().await;
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn the_embedded_sqlite_store_requeues_what_was_not_projected() {
    let directory = std::env::temp_dir().join(format!("wallex-requeue-{}", uuid::Uuid::new_v4()));
    let store = wallex_sql::SqliteStore::open(&directory).await.unwrap();
    wallex_testkit::conformance::requeue(store.clone(), || store.requeue_unprojected()).await;
    store.close().await;
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn the_postgres_store_conforms() {
    let database = support::postgres().await;
    let store = wallex_sql::PostgresStore::connect(&database.url).await.unwrap();
    wallex_testkit::conformance::run(store.clone()).await;
    store.close().await;
}

#[tokio::test]
async fn the_postgres_store_requeues_what_was_not_projected() {
    let database = support::postgres().await;
    let store = wallex_sql::PostgresStore::connect(&database.url).await.unwrap();
    wallex_testkit::conformance::requeue(store.clone(), || store.requeue_unprojected()).await;
    store.close().await;
}

#[tokio::test]
async fn both_sql_stores_keep_api_keys() {
    let directory = std::env::temp_dir().join(format!("wallex-keys-{}", uuid::Uuid::new_v4()));
    let store = wallex_sql::SqliteStore::open(&directory).await.unwrap();
    wallex_testkit::conformance::keys(store.clone()).await;
    store.close().await;
    std::fs::remove_dir_all(&directory).unwrap();
    let database = support::postgres().await;
    let store = wallex_sql::PostgresStore::connect(&database.url).await.unwrap();
    wallex_testkit::conformance::keys(store.clone()).await;
    store.close().await;
}

/// What the trail holds is kept: neither store lets a connection rewrite or remove a record.
macro_rules! refuses_changes {
    ($pool:expr) => {{
        let pool = $pool;
        let count = "SELECT COUNT(*) FROM audit_log";
        let before: (i64,) = sqlx::query_as(count).fetch_one(pool).await.unwrap();
        assert!(before.0 > 0, "records to protect");
        for statement in ["UPDATE audit_log SET action = 'rewritten'", "DELETE FROM audit_log"] {
            let refused = sqlx::query(statement).execute(pool).await;
            let message = refused.expect_err(statement).to_string();
            assert!(message.contains("append-only"), "{statement}: {message}");
        }
        let after: (i64,) = sqlx::query_as(count).fetch_one(pool).await.unwrap();
        assert_eq!(before, after);
        let rewritten: (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM audit_log WHERE action = 'rewritten'").fetch_one(pool).await.unwrap();
        assert_eq!(rewritten.0, 0);
    }};
}

#[tokio::test]
async fn the_audit_trail_is_append_only_in_both_sql_stores() {
    let directory = std::env::temp_dir().join(format!("wallex-audit-{}", uuid::Uuid::new_v4()));
    let store = wallex_sql::SqliteStore::open(&directory).await.unwrap();
    wallex_testkit::conformance::keys(store.clone()).await;
    store.close().await;
    let file = directory.join(wallex_sql::sqlite::DATABASE_FILE);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", file.display())).await.unwrap();
    refuses_changes!(&pool);
    pool.close().await;
    std::fs::remove_dir_all(&directory).unwrap();

    let database = support::postgres().await;
    let store = wallex_sql::PostgresStore::connect(&database.url).await.unwrap();
    wallex_testkit::conformance::keys(store.clone()).await;
    store.close().await;
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    refuses_changes!(&pool);
    let truncated = sqlx::query("TRUNCATE audit_log").execute(&pool).await;
    assert!(truncated.expect_err("TRUNCATE").to_string().contains("append-only"));
    pool.close().await;
}
