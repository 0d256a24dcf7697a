//! `wallex-sql`: the SQL stores. PostgreSQL for production, SQLite for the embedded default.
//!
//! Both store the same tables with the same meaning. What their logic shares lives once in
//! [`common`]: row decoding, journal assembly, the projection's read-plan-write skeleton, queries
//! whose text agrees. Each dialect keeps only what really differs: list binding, the commit
//! statement, locking and migrations.

mod common;
pub mod postgres;
pub mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
