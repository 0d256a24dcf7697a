//! The store conformance suite against the in-memory store (each durable adapter runs it too, and
//! the simulator runs it against the simulated store).

#[tokio::test]
async fn the_memory_store_conforms() {
    wallex_testkit::conformance::run(wallex_testkit::memory::MemoryStore::new()).await;
}

#[tokio::test]
async fn the_memory_store_keeps_api_keys() {
    wallex_testkit::conformance::keys(wallex_testkit::memory::MemoryStore::new()).await;
}
