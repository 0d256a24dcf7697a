//! The store conformance suite against the in-memory store (each durable adapter runs it too).

#[tokio::test]
async fn the_memory_store_conforms() {
    wallex_server::conformance::run(wallex_server::memory::MemoryStore::new()).await;
}

#[tokio::test]
async fn the_embedded_sqlite_store_conforms() {
    let directory = std::env::temp_dir().join(format!("wallex-conformance-{}", uuid::Uuid::new_v4()));
    let store = wallex_server::embedded::SqliteStore::open(&directory).await.unwrap();
    wallex_server::conformance::run(store.clone()).await;
    store.close().await;
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn the_embedded_sqlite_store_requeues_what_was_not_projected() {
    let directory = std::env::temp_dir().join(format!("wallex-requeue-{}", uuid::Uuid::new_v4()));
    let store = wallex_server::embedded::SqliteStore::open(&directory).await.unwrap();
    wallex_server::conformance::requeue(store.clone(), || store.requeue_unprojected()).await;
    store.close().await;
    std::fs::remove_dir_all(&directory).unwrap();
}

mod support;

#[tokio::test]
async fn the_postgres_store_conforms() {
    let database = support::postgres().await;
    let store = wallex_server::postgres::PostgresStore::connect(&database.url).await.unwrap();
    wallex_server::conformance::run(store.clone()).await;
    store.close().await;
}

#[tokio::test]
async fn the_postgres_store_requeues_what_was_not_projected() {
    let database = support::postgres().await;
    let store = wallex_server::postgres::PostgresStore::connect(&database.url).await.unwrap();
    wallex_server::conformance::requeue(store.clone(), || store.requeue_unprojected()).await;
    store.close().await;
}
