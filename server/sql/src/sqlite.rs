//! The embedded default store: everything in one durable SQLite file (WAL, `synchronous=FULL`), so
//! `wallex serve` works with zero setup and keeps every promise on one machine.
//!
//! One group commit is one SQLite transaction: the command records, the idempotency keys and the
//! events, inserted with multi-row statements. The events are the outbox: the relay's cursor
//! (`outbox_cursor`, one row) marks what is published. The schema lives in `migrations/sqlite/`.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use sqlx::sqlite::SqliteConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::Mutex;
use wallex_engine::{CommandId, CommandRecord, Event, OwnerId, Rejection, Timestamp, TransactionId, WalletId};

use crate::common::{
    BacklogRow, EntryRow, OUTBOX_BACKLOG, OutboxRow, RecordRow, WalletRow, corrupt, direction_name, id_bytes, int,
    store_error, uint,
};
use wallex_pipeline::codec::decode_event;
use wallex_pipeline::ports::{
    Applied, CommitBatch, EventStore, JournalEntry, LedgerEntry, OutboxMessage, OutboxPosition, Projection,
    ProjectionPlan, ProjectionStore, StoreError, StoredSnapshot, WalletView,
};

/// Rows per multi-row INSERT (SQLite allows 32,766 bound parameters per statement).
const ROWS_PER_STATEMENT: usize = 1_000;

/// The file inside `--data-dir`.
pub const DATABASE_FILE: &str = "wallex.sqlite";

/// Readers share a pool (WAL lets them run beside the writer); every write goes through the one
/// writer connection behind an async mutex. SQLite admits one writer at a time anyway: queueing
/// writers here, first come first served, replaces its busy handler, which sleeps 1, 2, 5, 10… ms
/// between retries and put those sleeps straight into the group commit's latency.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: Arc<Mutex<SqliteConnection>>,
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
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true);
        let mut writer = options.connect().await.map_err(store_error)?;
        sqlx::migrate!("../../migrations/sqlite")
            .run(&mut writer)
            .await
            .map_err(|error| StoreError::Unavailable(format!("migration failed: {error}")))?;
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(store_error)?;
        Ok(SqliteStore { pool, writer: Arc::new(Mutex::new(writer)) })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Puts back into the outbox every event some projection has not applied yet: moves the relay's
    /// cursor back to just before the oldest such event. Returns how many events wait afterwards.
    ///
    /// The embedded bus lives in memory: events the relay published before a restart but the
    /// projectors had not applied are gone from it. Re-publishing from there at start closes that
    /// hole; projectors skip whatever they already have.
    pub async fn requeue_unprojected(&self) -> Result<u64, StoreError> {
        let mut writer = self.writer.lock().await;
        let oldest: Option<(i64, i64)> = sqlx::query_as(
            "SELECT e.transaction_id, e.idx FROM events e \
             WHERE e.version > MIN( \
               COALESCE((SELECT version FROM projection_checkpoints p \
                         WHERE p.projection = 'read-model-projector' AND p.wallet_id = e.wallet_id), 0), \
               COALESCE((SELECT version FROM projection_checkpoints p \
                         WHERE p.projection = 'ledger-projector' AND p.wallet_id = e.wallet_id), 0)) \
             ORDER BY e.transaction_id, e.idx LIMIT 1",
        )
        .fetch_optional(&mut *writer)
        .await
        .map_err(store_error)?;
        if let Some((transaction, index)) = oldest {
            sqlx::query(
                "UPDATE outbox_cursor SET transaction_id = ?1, idx = ?2 WHERE (transaction_id, idx) > (?1, ?2)",
            )
            .bind(transaction)
            .bind(index - 1)
            .execute(&mut *writer)
            .await
            .map_err(store_error)?;
        }
        drop(writer);
        Ok(self.outbox_backlog().await?.0)
    }
}

fn event_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Event, StoreError> {
    let payload: Vec<u8> = row.try_get("payload").map_err(store_error)?;
    decode_event(&payload).map_err(corrupt)
}

impl EventStore for SqliteStore {
    async fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().await;
        let mut transaction = writer.begin_with("BEGIN IMMEDIATE").await.map_err(store_error)?;
        for chunk in batch.records.chunks(ROWS_PER_STATEMENT) {
            let mut insert: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO commands (transaction_id, command_id, fingerprint, at, rejection) ");
            insert.push_values(chunk, |mut row, record| {
                row.push_bind(int(record.transaction_id.0))
                    .push_bind(id_bytes(record.command_id.0))
                    .push_bind(id_bytes(record.fingerprint.0))
                    .push_bind(int(record.at.unix_micros()))
                    .push_bind(record.result.err().map(Rejection::code));
            });
            insert.build().execute(&mut *transaction).await.map_err(store_error)?;
            // The key is live again for this command, replacing an expired one of the same id.
            let mut keys: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO idempotency_keys (command_id, transaction_id, at) ");
            keys.push_values(chunk, |mut row, record| {
                row.push_bind(id_bytes(record.command_id.0))
                    .push_bind(int(record.transaction_id.0))
                    .push_bind(int(record.at.unix_micros()));
            });
            keys.push(
                " ON CONFLICT (command_id) DO UPDATE SET transaction_id = excluded.transaction_id, at = excluded.at",
            );
            keys.build().execute(&mut *transaction).await.map_err(store_error)?;
        }
        // One outbox message per event, in the same order, with its position and its encoded
        // payload: the event rows are the outbox (the relay's cursor walks them), so nothing else is
        // written per event.
        debug_assert_eq!(batch.events.len(), batch.outbox.len());
        let rows: Vec<_> = batch.events.iter().zip(&batch.outbox).collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut insert: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO events (transaction_id, idx, wallet_id, version, payload) ");
            insert.push_values(chunk, |mut row, (event, message)| {
                row.push_bind(int(message.position.transaction_id.0))
                    .push_bind(i64::from(message.position.index))
                    .push_bind(event.wallet_id.to_string())
                    .push_bind(int(event.version))
                    .push_bind(message.payload.as_slice());
            });
            insert.build().execute(&mut *transaction).await.map_err(store_error)?;
        }
        transaction.commit().await.map_err(store_error)
    }

    async fn latest_snapshot(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        let row = sqlx::query("SELECT transaction_id, bytes FROM snapshots ORDER BY transaction_id DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        row.map(|row| {
            Ok(StoredSnapshot {
                transaction_id: TransactionId(uint(row.try_get("transaction_id").map_err(store_error)?)?),
                bytes: row.try_get("bytes").map_err(store_error)?,
            })
        })
        .transpose()
    }

    async fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().await;
        let mut transaction = writer.begin_with("BEGIN IMMEDIATE").await.map_err(store_error)?;
        sqlx::query("INSERT OR REPLACE INTO snapshots (transaction_id, bytes) VALUES (?, ?)")
            .bind(int(snapshot.transaction_id.0))
            .bind(&snapshot.bytes)
            .execute(&mut *transaction)
            .await
            .map_err(store_error)?;
        // Older snapshots are never read again.
        sqlx::query("DELETE FROM snapshots WHERE transaction_id < ?")
            .bind(int(snapshot.transaction_id.0))
            .execute(&mut *transaction)
            .await
            .map_err(store_error)?;
        transaction.commit().await.map_err(store_error)
    }

    async fn journal(&self, after: TransactionId, limit: usize) -> Result<Vec<JournalEntry>, StoreError> {
        let records: Vec<RecordRow> = sqlx::query_as(
            "SELECT transaction_id, command_id, fingerprint, at, rejection FROM commands \
             WHERE transaction_id > ? ORDER BY transaction_id LIMIT ?",
        )
        .bind(int(after.0))
        .bind(int(limit as u64))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let mut entries: Vec<JournalEntry> = records
            .into_iter()
            .map(|row| Ok(JournalEntry { record: row.into_record()?, events: Vec::new() }))
            .collect::<Result<_, StoreError>>()?;
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Ok(entries) };
        let events = sqlx::query(
            "SELECT transaction_id, payload FROM events WHERE transaction_id BETWEEN ? AND ? \
             ORDER BY transaction_id, idx",
        )
        .bind(int(first.record.transaction_id.0))
        .bind(int(last.record.transaction_id.0))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let mut cursor = 0;
        for row in &events {
            let event = event_from_row(row)?;
            while entries[cursor].record.transaction_id < event.transaction_id {
                cursor += 1;
            }
            entries[cursor].events.push(event);
        }
        Ok(entries)
    }

    async fn command_records(
        &self,
        ids: &[CommandId],
        not_before: Timestamp,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        let mut records = Vec::new();
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
                "SELECT c.transaction_id, c.command_id, c.fingerprint, c.at, c.rejection FROM idempotency_keys k \
                 JOIN commands c ON c.transaction_id = k.transaction_id WHERE k.at >= ",
            );
            query.push_bind(int(not_before.unix_micros()));
            query.push(" AND k.command_id IN (");
            let mut separated = query.separated(", ");
            for id in chunk {
                separated.push_bind(id_bytes(id.0));
            }
            query.push(")");
            for row in query.build_query_as::<RecordRow>().fetch_all(&self.pool).await.map_err(store_error)? {
                records.push(row.into_record()?);
            }
        }
        Ok(records)
    }

    async fn forget_idempotency_keys(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE at < ?")
            .bind(int(before.unix_micros()))
            .execute(&mut *self.writer.lock().await)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected())
    }

    async fn outbox_after(
        &self,
        after: Option<OutboxPosition>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let (transaction, index) = after.map_or((-1, -1), |p| (int(p.transaction_id.0), i64::from(p.index)));
        let rows: Vec<OutboxRow> = sqlx::query_as(
            // One row comparison against the later of `after` and the cursor, so the scan of the
            // events' primary key starts there.
            "WITH start AS ( \
               SELECT ? AS transaction_id, ? AS idx \
               UNION ALL SELECT transaction_id, idx FROM outbox_cursor \
               ORDER BY transaction_id DESC, idx DESC LIMIT 1) \
             SELECT e.transaction_id, e.idx, e.wallet_id, e.payload, \
                    (SELECT c.at FROM commands c WHERE c.transaction_id = e.transaction_id) AS committed_at \
             FROM events e WHERE (e.transaction_id, e.idx) > (SELECT transaction_id, idx FROM start) \
             ORDER BY e.transaction_id, e.idx LIMIT ?",
        )
        .bind(transaction)
        .bind(index)
        .bind(int(limit as u64))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.into_iter().map(OutboxRow::into_message).collect()
    }

    async fn mark_published(&self, through: OutboxPosition) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox_cursor SET transaction_id = ?1, idx = ?2 WHERE (transaction_id, idx) < (?1, ?2)")
            .bind(int(through.transaction_id.0))
            .bind(i64::from(through.index))
            .execute(&mut *self.writer.lock().await)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn outbox_backlog(&self) -> Result<(u64, Option<Timestamp>), StoreError> {
        let row: BacklogRow = sqlx::query_as(OUTBOX_BACKLOG).fetch_one(&self.pool).await.map_err(store_error)?;
        row.into_backlog()
    }

    async fn wallet_events(&self, wallet_id: &WalletId, from: u64, to: u64) -> Result<Vec<Event>, StoreError> {
        let rows =
            sqlx::query("SELECT payload FROM events WHERE wallet_id = ? AND version BETWEEN ? AND ? ORDER BY version")
                .bind(wallet_id.as_str())
                .bind(int(from))
                .bind(int(to.min(i64::MAX as u64)))
                .fetch_all(&self.pool)
                .await
                .map_err(store_error)?;
        rows.iter().map(event_from_row).collect()
    }
}

fn projection_name(projection: Projection) -> &'static str {
    projection.group()
}

impl ProjectionStore for SqliteStore {
    async fn project(&self, projection: Projection, events: &[Event]) -> Result<Vec<Applied>, StoreError> {
        let name = projection_name(projection);
        let wallets = ProjectionPlan::wallets(events);
        let mut writer = self.writer.lock().await;
        let mut transaction = writer.begin_with("BEGIN IMMEDIATE").await.map_err(store_error)?;
        let mut checkpoints = std::collections::BTreeMap::new();
        let mut views = std::collections::BTreeMap::new();
        for chunk in wallets.chunks(ROWS_PER_STATEMENT) {
            let mut query: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT wallet_id, version FROM projection_checkpoints WHERE projection = ");
            query.push_bind(name).push(" AND wallet_id IN (");
            let mut ids = query.separated(", ");
            for id in chunk {
                ids.push_bind(id.as_str());
            }
            query.push(")");
            for row in query.build().fetch_all(&mut *transaction).await.map_err(store_error)? {
                let id: String = row.try_get("wallet_id").map_err(store_error)?;
                let version = uint(row.try_get("version").map_err(store_error)?)?;
                checkpoints.insert(WalletId::parse(&id).map_err(corrupt)?, version);
            }
            if projection == Projection::ReadModel {
                let mut query: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM wallets WHERE wallet_id IN (");
                let mut ids = query.separated(", ");
                for id in chunk {
                    ids.push_bind(id.as_str());
                }
                query.push(")");
                for row in
                    query.build_query_as::<WalletRow>().fetch_all(&mut *transaction).await.map_err(store_error)?
                {
                    let view = row.into_view()?;
                    views.insert(view.wallet_id, view);
                }
            }
        }
        let plan = ProjectionPlan::new(projection, events, checkpoints, views)?;
        for chunk in plan.views.chunks(ROWS_PER_STATEMENT) {
            let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO wallets (wallet_id, owner_id, currency, balance, held, overdraft_limit, version, \
                 created_at, updated_at) ",
            );
            insert.push_values(chunk, |mut row, view| {
                row.push_bind(view.wallet_id.as_str())
                    .push_bind(view.owner_id.as_str())
                    .push_bind(view.currency.code())
                    .push_bind(view.balance)
                    .push_bind(int(view.held))
                    .push_bind(int(view.overdraft_limit))
                    .push_bind(int(view.version))
                    .push_bind(int(view.created_at.unix_micros()))
                    .push_bind(int(view.updated_at.unix_micros()));
            });
            insert.push(
                " ON CONFLICT (wallet_id) DO UPDATE SET balance = excluded.balance, held = excluded.held, \
                 version = excluded.version, updated_at = excluded.updated_at",
            );
            insert.build().execute(&mut *transaction).await.map_err(store_error)?;
        }
        for chunk in plan.entries.chunks(ROWS_PER_STATEMENT) {
            let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO ledger_entries (wallet_id, version, transaction_id, entry_type, direction, amount, \
                 balance_after, currency, counterparty, description, at) ",
            );
            insert.push_values(chunk, |mut row, entry| {
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
                    .push_bind(int(entry.at.unix_micros()));
            });
            insert.build().execute(&mut *transaction).await.map_err(store_error)?;
        }
        for chunk in plan.checkpoints.chunks(ROWS_PER_STATEMENT) {
            let mut insert: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO projection_checkpoints (projection, wallet_id, version) ");
            insert.push_values(chunk, |mut row, (wallet_id, version)| {
                row.push_bind(name).push_bind(wallet_id.as_str()).push_bind(int(*version));
            });
            insert.push(" ON CONFLICT (projection, wallet_id) DO UPDATE SET version = excluded.version");
            insert.build().execute(&mut *transaction).await.map_err(store_error)?;
        }
        transaction.commit().await.map_err(store_error)?;
        Ok(plan.verdicts)
    }

    async fn projected_version(&self, projection: Projection, wallet_id: &WalletId) -> Result<u64, StoreError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM projection_checkpoints WHERE projection = ? AND wallet_id = ?")
                .bind(projection_name(projection))
                .bind(wallet_id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(store_error)?;
        Ok(version.map(uint).transpose()?.unwrap_or(0))
    }

    async fn wallet(&self, wallet_id: &WalletId) -> Result<Option<WalletView>, StoreError> {
        let row: Option<WalletRow> = sqlx::query_as("SELECT * FROM wallets WHERE wallet_id = ?")
            .bind(wallet_id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        row.map(WalletRow::into_view).transpose()
    }

    async fn wallets(
        &self,
        owner_id: Option<&OwnerId>,
        after: Option<&WalletId>,
        limit: usize,
    ) -> Result<Vec<WalletView>, StoreError> {
        let rows: Vec<WalletRow> = sqlx::query_as(
            "SELECT * FROM wallets WHERE (? IS NULL OR owner_id = ?) AND wallet_id > ? ORDER BY wallet_id LIMIT ?",
        )
        .bind(owner_id.map(OwnerId::as_str))
        .bind(owner_id.map(OwnerId::as_str))
        .bind(after.map_or("", WalletId::as_str))
        .bind(int(limit as u64))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.into_iter().map(WalletRow::into_view).collect()
    }

    async fn ledger_entries(
        &self,
        wallet_id: &WalletId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let rows: Vec<EntryRow> = sqlx::query_as(
            "SELECT * FROM ledger_entries WHERE wallet_id = ? AND version < ? ORDER BY version DESC LIMIT ?",
        )
        .bind(wallet_id.as_str())
        .bind(before.map_or(i64::MAX, int))
        .bind(int(limit as u64))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.into_iter().map(EntryRow::into_entry).collect()
    }
}
