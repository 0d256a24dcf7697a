//! The embedded default store: everything in one durable SQLite file (WAL, `synchronous=FULL`), so
//! `wallex serve` works with zero setup and keeps every promise on one machine.
//!
//! One group commit is one SQLite transaction: the command records, the idempotency keys and the
//! events, inserted with multi-row statements. The events are the outbox: the relay's cursor
//! (`outbox_cursor`, one row) marks what is published. The schema lives in `migrations/sqlite/`.
//!
//! A list is bound as the rows of multi-row `VALUES` or the keys of an `IN (…)` list, at most
//! `ROWS_PER_STATEMENT` to a statement, so that no statement binds more parameters than SQLite
//! allows.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::query_builder::Separated;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Encode, QueryBuilder, Sqlite, Type};
use tokio::sync::{Mutex, MutexGuard};
use wallex_engine::{CommandId, Rejection, TransactionId, WalletId};
use wallex_pipeline::ports::{CommitBatch, Epoch, Projection, ProjectionPlan, StoreError};

use crate::common::{
    CheckpointRow, KeyedRecord, WalletRow, direction_name, id_bytes, int, metadata_text, store_error, uint,
};
use crate::store::{Dialect, Driver, SqlStore, lease_statements};

/// The file inside `--data-dir`.
pub const DATABASE_FILE: &str = "wallex.sqlite";

/// SQLite's limit on the parameters one statement binds (`SQLITE_MAX_VARIABLE_NUMBER`).
const MAX_PARAMETERS: usize = 32_766;

/// The most values one row of a multi-row statement binds: a ledger entry's 14 columns.
const MAX_VALUES_PER_ROW: usize = 14;

/// Rows per multi-row INSERT, and keys per `IN (…)` list.
const ROWS_PER_STATEMENT: usize = 1_000;

// The widest statement binds every value of its rows (a lookup binds one value per key and at most
// one more, fewer): it must fit in SQLite's limit, or the statement fails.
const _: () = assert!(ROWS_PER_STATEMENT * MAX_VALUES_PER_ROW <= MAX_PARAMETERS);

/// Connections in the readers' pool.
pub const READERS: u32 = 4;

/// How long a connection waits for a lock another connection holds before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The store in one SQLite file.
pub type SqliteStore = SqlStore<SqliteDialect>;

/// SQLite's side of [`SqlStore`]. Readers share a pool (WAL lets them run beside the writer); every
/// write goes through the one writer connection behind an async mutex. SQLite admits one writer at
/// a time anyway: queueing writers here, first come first served, replaces its busy handler, which
/// sleeps 1, 2, 5, 10… ms between retries and put those sleeps straight into the group commit's
/// latency.
/// The page cache of each connection, in KiB.
const CACHE_KIB: u32 = 32 * 1024;
/// WAL pages (4 KiB) between automatic checkpoints.
const WAL_CHECKPOINT_PAGES: u32 = 16_384;

#[derive(Clone, Debug)]
pub struct SqliteDialect {
    writer: Arc<Mutex<SqliteConnection>>,
    /// How to open the writer connection again after a failure left it unusable.
    options: SqliteConnectOptions,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir` and applies the migrations.
    pub async fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|error| StoreError::Unavailable(error.to_string()))?;
        let url = format!("sqlite://{}", data_dir.join(DATABASE_FILE).display());
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(store_error)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // A group commit of a thousand commands touches more pages than the default 2 MiB
            // cache holds: it would spill them to the WAL mid-transaction. At most this much per
            // connection, allocated as used.
            .pragma("cache_size", format!("-{CACHE_KIB}"))
            // Statement journals (a multi-row statement that may fail half way) stay in memory.
            .pragma("temp_store", "memory")
            // Checkpoint every WAL_CHECKPOINT_PAGES pages, not 1,000: a hot page (a wallet's row,
            // an index's inner pages) rewritten by many commits is copied back once per checkpoint.
            .pragma("wal_autocheckpoint", WAL_CHECKPOINT_PAGES.to_string());
        let mut writer = options.connect().await.map_err(store_error)?;
        sqlx::migrate!("../../migrations/sqlite")
            .run(&mut writer)
            .await
            .map_err(|error| StoreError::Unavailable(format!("migration failed: {error}")))?;
        let pool = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.clone())
            .await
            .map_err(store_error)?;
        // The single writer reads (lookups, replays, reloads) through a connection of its own;
        // its writes, like everyone's, go through the one writer connection.
        let writer_pool =
            SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await.map_err(store_error)?;
        let dialect = SqliteDialect { writer: Arc::new(Mutex::new(writer)), options };
        Ok(SqlStore { pool, writer_pool, dialect })
    }
}

/// Inserts `rows` by multi-row statements of at most [`ROWS_PER_STATEMENT`] rows: `insert` names
/// the table and columns, `bind` pushes one row's values, and `then` ends each statement.
async fn insert_rows<T>(
    connection: &mut SqliteConnection,
    insert: &str,
    rows: &[T],
    then: &str,
    mut bind: impl FnMut(Separated<'_, Sqlite, &'static str>, &T) + Send,
) -> Result<(), StoreError>
where
    T: Sync,
{
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut statement = QueryBuilder::<Sqlite>::new(insert);
        statement.push_values(chunk, &mut bind).push(then);
        statement.build().execute(&mut *connection).await.map_err(store_error)?;
    }
    Ok(())
}

/// Appends ` IN (…)` binding `keys`.
fn push_in<T>(query: &mut QueryBuilder<Sqlite>, keys: impl IntoIterator<Item = T>)
where
    T: for<'t> Encode<'t, Sqlite> + Type<Sqlite>,
{
    query.push(" IN (");
    let mut list = query.separated(", ");
    for key in keys {
        list.push_bind(key);
    }
    list.push_unseparated(")");
}

impl Driver for Sqlite {}

impl Dialect for SqliteDialect {
    type Db = Sqlite;

    /// Takes the write lock when the transaction begins: a transaction that reads first cannot
    /// upgrade to writing if another connection wrote in between, and no busy timeout retries that.
    const BEGIN: &'static str = "BEGIN IMMEDIATE";

    type Writer<'a> = MutexGuard<'a, SqliteConnection>;

    async fn writer<'a>(&'a self, _: &'a SqlitePool) -> Result<MutexGuard<'a, SqliteConnection>, StoreError> {
        Ok(self.writer.lock().await)
    }

    async fn reset_writer<'a>(&'a self, writer: &mut MutexGuard<'a, SqliteConnection>) {
        match self.options.connect().await {
            Ok(fresh) => {
                let failed = std::mem::replace(&mut **writer, fresh);
                // Closing rolls back whatever transaction the failure left open.
                let _ = failed.close().await;
            }
            Err(error) => tracing::warn!(%error, "cannot reopen the writer connection; retrying at the next failure"),
        }
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    lease_statements!("CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)");

    async fn commit(writer: &mut SqliteConnection, batch: &CommitBatch) -> Result<(), StoreError> {
        let mut transaction = writer.begin_with(Self::BEGIN).await.map_err(store_error)?;
        // The fence, inside the transaction that holds the database's write lock: a takeover
        // cannot bump the epoch between this check and the commit.
        let (current,): (i64,) = sqlx::query_as("SELECT epoch FROM writer_lease WHERE id = 1")
            .fetch_one(&mut *transaction)
            .await
            .map_err(store_error)?;
        if current != int(batch.epoch.0) {
            transaction.rollback().await.map_err(store_error)?;
            return Err(StoreError::Fenced { current: Epoch(uint(current)?) });
        }
        insert_rows(
            &mut transaction,
            "INSERT INTO commands (transaction_id, command_id, fingerprint, at, rejection, refused_leg) ",
            &batch.records,
            "",
            |mut row, record| {
                row.push_bind(int(record.transaction_id.0))
                    .push_bind(id_bytes(record.command_id.0))
                    .push_bind(id_bytes(record.fingerprint.0))
                    .push_bind(int(record.at.unix_micros()))
                    .push_bind(record.result.err().map(Rejection::code))
                    .push_bind(record.refused_leg.map(i32::from));
            },
        )
        .await?;
        // The key is live again for this command, replacing an expired one of the same id.
        insert_rows(
            &mut transaction,
            "INSERT INTO idempotency_keys (command_id, transaction_id, at) ",
            &batch.records,
            " ON CONFLICT (command_id) DO UPDATE SET transaction_id = excluded.transaction_id, at = excluded.at",
            |mut row, record| {
                row.push_bind(id_bytes(record.command_id.0))
                    .push_bind(int(record.transaction_id.0))
                    .push_bind(int(record.at.unix_micros()));
            },
        )
        .await?;
        // One outbox message per event, in the same order, with its position and its encoded
        // payload: the event rows are the outbox (the relay's cursor walks them), so nothing else is
        // written per event.
        debug_assert_eq!(batch.events.len(), batch.outbox.len());
        let events: Vec<_> = batch.events.iter().zip(&batch.outbox).collect();
        insert_rows(
            &mut transaction,
            "INSERT INTO events (transaction_id, idx, wallet_id, version, payload) ",
            &events,
            "",
            |mut row, (event, message)| {
                row.push_bind(int(message.position.transaction_id.0))
                    .push_bind(i64::from(message.position.index))
                    .push_bind(event.wallet_id.as_str())
                    .push_bind(int(event.version))
                    .push_bind(message.payload.as_slice());
            },
        )
        .await?;
        transaction.commit().await.map_err(store_error)
    }

    async fn keyed_records(reader: &mut SqliteConnection, ids: &[CommandId]) -> Result<Vec<KeyedRecord>, StoreError> {
        let mut records = Vec::new();
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::new(
                "SELECT c.transaction_id, c.command_id, c.fingerprint, c.at, c.rejection, c.refused_leg, k.at AS key_at \
                 FROM idempotency_keys k JOIN commands c ON c.transaction_id = k.transaction_id WHERE k.command_id",
            );
            push_in(&mut query, chunk.iter().map(|id| id_bytes(id.0)));
            records.extend(query.build_query_as().fetch_all(&mut *reader).await.map_err(store_error)?);
        }
        Ok(records)
    }

    async fn transaction_payloads(
        reader: &mut SqliteConnection,
        ids: &[TransactionId],
    ) -> Result<Vec<(Vec<u8>,)>, StoreError> {
        let mut payloads = Vec::new();
        // `ids` ascend, so chunk after chunk the rows stay in transaction order.
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::new("SELECT payload FROM events WHERE transaction_id");
            push_in(&mut query, chunk.iter().map(|id| int(id.0)));
            query.push(" ORDER BY transaction_id, idx");
            payloads.extend(query.build_query_as().fetch_all(&mut *reader).await.map_err(store_error)?);
        }
        Ok(payloads)
    }

    async fn lock_projection(_: &mut SqliteConnection, _: Projection) -> Result<(), StoreError> {
        // Nothing more to do: the transaction holds the one writer connection.
        Ok(())
    }

    async fn checkpoints(
        transaction: &mut SqliteConnection,
        projection: Projection,
        wallets: &[WalletId],
    ) -> Result<Vec<CheckpointRow>, StoreError> {
        let mut rows = Vec::new();
        for chunk in wallets.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::new(match projection {
                Projection::ReadModel => "SELECT wallet_id, version FROM wallets WHERE wallet_id",
                Projection::Ledger => {
                    "SELECT wallet_id, projected_version AS version FROM wallet_summaries WHERE wallet_id"
                }
            });
            push_in(&mut query, chunk.iter().map(WalletId::as_str));
            rows.extend(query.build_query_as().fetch_all(&mut *transaction).await.map_err(store_error)?);
        }
        Ok(rows)
    }

    async fn wallet_rows(
        transaction: &mut SqliteConnection,
        wallets: &[WalletId],
    ) -> Result<Vec<WalletRow>, StoreError> {
        let mut rows = Vec::new();
        for chunk in wallets.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::new("SELECT * FROM wallets WHERE wallet_id");
            push_in(&mut query, chunk.iter().map(WalletId::as_str));
            rows.extend(query.build_query_as().fetch_all(&mut *transaction).await.map_err(store_error)?);
        }
        Ok(rows)
    }

    const EXPLAIN: &'static str = "EXPLAIN QUERY PLAN ";

    fn plan_line(row: &sqlx::sqlite::SqliteRow) -> Result<String, StoreError> {
        sqlx::Row::try_get(row, "detail").map_err(store_error)
    }

    const ENTRY_WALLET_ORDER: &'static str = "e.wallet_id";

    /// SQLite's LIKE ignores the case of ASCII letters.
    const CASELESS_LIKE: &'static str = "LIKE";

    /// The FTS5 trigram index finds the candidates; the LIKE beside it decides.
    const DESCRIPTION_INDEX: Option<&'static str> =
        Some("e.rowid IN (SELECT rowid FROM ledger_descriptions WHERE ledger_descriptions MATCH {})");

    const DESCRIPTION_PROBE: Option<&'static str> =
        Some("SELECT COUNT(*) FROM (SELECT 1 FROM ledger_descriptions WHERE ledger_descriptions MATCH {}");

    fn description_needle(text: &str) -> String {
        // One FTS5 phrase: the text between double quotes, its own double quotes doubled.
        format!("\"{}\"", text.replace('"', "\"\""))
    }

    /// No statistics of values: a common value and a rare one are told apart by counting.
    const ADAPTIVE: bool = true;

    const NEWEST_SCAN: &'static str = "SELECT e.* FROM ledger_entries e INDEXED BY ledger_entries_newest WHERE 1 = 1";

    async fn write_plan(transaction: &mut SqliteConnection, plan: &ProjectionPlan) -> Result<(), StoreError> {
        insert_rows(
            transaction,
            "INSERT INTO wallets (wallet_id, owner_id, currency, balance, held, overdraft_limit, version, \
             created_at, updated_at, reference_id, metadata, correlation_id) ",
            &plan.views,
            " ON CONFLICT (wallet_id) DO UPDATE SET balance = excluded.balance, held = excluded.held, \
             version = excluded.version, updated_at = excluded.updated_at",
            |mut row, view| {
                row.push_bind(view.wallet_id.as_str())
                    .push_bind(view.owner_id.as_str())
                    .push_bind(view.currency.code())
                    .push_bind(view.balance)
                    .push_bind(int(view.held))
                    .push_bind(int(view.overdraft_limit))
                    .push_bind(int(view.version))
                    .push_bind(int(view.created_at.unix_micros()))
                    .push_bind(int(view.updated_at.unix_micros()))
                    .push_bind(view.memo.reference.as_ref().map(|r| r.as_str().to_owned()))
                    .push_bind(metadata_text(&view.memo))
                    .push_bind(view.memo.correlation_id.as_ref().map(|c| c.as_str().to_owned()));
            },
        )
        .await?;
        let wallet_metadata: Vec<(&str, &str, &str)> = plan
            .views
            .iter()
            .flat_map(|view| view.memo.metadata.iter().map(|(key, value)| (key, value, view.wallet_id.as_str())))
            .collect();
        insert_rows(
            transaction,
            "INSERT INTO wallet_metadata (key, value, wallet_id) ",
            &wallet_metadata,
            " ON CONFLICT DO NOTHING",
            |mut row, (key, value, wallet_id)| {
                row.push_bind(key.to_string()).push_bind(value.to_string()).push_bind(wallet_id.to_string());
            },
        )
        .await?;
        let entry_metadata: Vec<(&str, &str, &str, u64)> = plan
            .entries
            .iter()
            .flat_map(|entry| {
                entry.memo.metadata.iter().map(|(key, value)| (key, value, entry.wallet_id.as_str(), entry.version))
            })
            .collect();
        insert_rows(
            transaction,
            "INSERT INTO entry_metadata (key, value, wallet_id, version) ",
            &entry_metadata,
            " ON CONFLICT DO NOTHING",
            |mut row, (key, value, wallet_id, version)| {
                row.push_bind(key.to_string())
                    .push_bind(value.to_string())
                    .push_bind(wallet_id.to_string())
                    .push_bind(int(*version));
            },
        )
        .await?;
        insert_rows(
            transaction,
            "INSERT INTO ledger_entries (wallet_id, version, transaction_id, entry_type, direction, amount, \
             balance_after, currency, counterparty, description, at, reference_id, metadata, correlation_id) ",
            &plan.entries,
            "",
            |mut row, entry| {
                row.push_bind(entry.wallet_id.as_str())
                    .push_bind(int(entry.version))
                    .push_bind(int(entry.transaction_id.0))
                    .push_bind(entry.entry_type.as_str())
                    .push_bind(direction_name(entry.direction))
                    .push_bind(int(entry.amount))
                    .push_bind(entry.balance_after)
                    .push_bind(entry.currency.code())
                    .push_bind(entry.counterparty.as_str())
                    .push_bind(entry.description.as_deref())
                    .push_bind(int(entry.at.unix_micros()))
                    .push_bind(entry.memo.reference.as_ref().map(|r| r.as_str().to_owned()))
                    .push_bind(metadata_text(&entry.memo))
                    .push_bind(entry.memo.correlation_id.as_ref().map(|c| c.as_str().to_owned()));
            },
        )
        .await?;
        // The ledger's summaries, every touched wallet's (its checkpoint is there), entries or not.
        insert_rows(
            transaction,
            "INSERT INTO wallet_summaries (wallet_id, currency, total_credits, total_debits, transaction_count, \
             last_version, projected_version) ",
            &plan.summaries,
            " ON CONFLICT (wallet_id) DO UPDATE SET \
             total_credits = wallet_summaries.total_credits + excluded.total_credits, \
             total_debits = wallet_summaries.total_debits + excluded.total_debits, \
             transaction_count = wallet_summaries.transaction_count + excluded.transaction_count, \
             last_version = MAX(wallet_summaries.last_version, excluded.last_version), \
             projected_version = excluded.projected_version",
            |mut row, (delta, projected)| {
                row.push_bind(delta.wallet_id.as_str())
                    .push_bind(delta.currency.code())
                    .push_bind(int(delta.total_credits))
                    .push_bind(int(delta.total_debits))
                    .push_bind(int(delta.transaction_count))
                    .push_bind(int(delta.last_version))
                    .push_bind(int(*projected));
            },
        )
        .await
    }
}
