//! The store conformance suite against the in-memory store (each durable adapter runs it too, and
//! the simulator runs it against the simulated store).

#[tokio::test]
async fn the_memory_store_conforms() {
    wallex_testkit::conformance::run(wallex_testkit::memory::MemoryStore::new()).await;
}
