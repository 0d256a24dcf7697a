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
