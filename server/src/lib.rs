//! `wallex-server`: the Wallex service around the pure engine.
//!
//! Today it holds the `wallex` binary's engine demo ([`demo`]). The pipeline over ports, the
//! PostgreSQL, Kafka and embedded adapters and the HTTP API grow here next (see
//! `docs/ARCHITECTURE.md` for where each will live).

pub mod demo;
