//! `wallex-sql`: the SQL stores. PostgreSQL for production, SQLite for the embedded default.
//!
//! Both store the same tables with the same meaning, so one store, [`SqlStore`], serves both: every
//! statement whose text and meaning agree is written once there, over a dialect that supplies only
//! what really differs (list binding, the group commit, how writes are serialized, migrations).

mod common;
pub mod postgres;
pub mod sqlite;
mod store;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use store::{Dialect, SqlStore};
