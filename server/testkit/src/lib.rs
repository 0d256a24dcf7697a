//! `wallex-testkit`: code that exists to test the pipeline and its adapters, never linked by a
//! release binary.
//!
//! - [`memory`]: `MemoryStore`, a store in memory with the durable stores' constraints and fault
//!   switches, and `ReadSide`, the in-memory projection tables it and the simulated store share.
//! - [`conformance`]: the suite every store passes (the memory, SQLite, PostgreSQL and simulated ones).
//! - `services` (feature `services`): a fresh PostgreSQL database and a Kafka-protocol broker for
//!   integration tests.

pub mod conformance;
pub mod memory;
#[cfg(feature = "services")]
pub mod services;
