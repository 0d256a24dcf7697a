//! The store conformance suite against the in-memory store (each durable adapter runs it too).

#[tokio::test]
async fn the_memory_store_conforms() {
    wallex_server::conformance::run(wallex_server::memory::MemoryStore::new()).await;
}
