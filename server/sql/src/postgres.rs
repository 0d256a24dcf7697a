//! The production store on PostgreSQL (sqlx). Schema: `migrations/postgres/`.
//!
//! A group commit is one statement whatever the batch size: records, idempotency keys and events
//! are each inserted by an `INSERT … SELECT FROM UNNEST(arrays)` in data-modifying CTEs, so the cost
//! per command is a few array elements, and per batch one round trip. The events are the outbox: the
//! relay's cursor (`outbox_cursor`, one row) marks what is published.
//!
//! Lookups by a list of keys join `UNNEST($n)` rather than test `= ANY($n)`: sqlx prepares every
//! statement, PostgreSQL switches a prepared statement to a generic plan after five runs, and a
//! generic plan may scan the table testing each row against the whole array (3 ms per lookup at
//! 100k idempotency keys, against 0.1 ms by index). Durability is PostgreSQL's: fsync and
//! `synchronous_commit` stay on.

use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
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

/// Connections in the pool: the writer, the relay, two projectors and the readers.
pub const DEFAULT_POOL_SIZE: u32 = 16;

/// The first key of the projections' advisory locks ("WALX").
const PROJECTION_LOCK_CLASS: i32 = 0x5741_4C58;

#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` and applies the migrations.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(DEFAULT_POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(store_error)?;
        let store = PostgresStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../../migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|error| StoreError::Unavailable(format!("migration failed: {error}")))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Puts back into the outbox every event some projection has not applied yet (for a bus that
    /// does not outlive the process, like the in-process one): moves the relay's cursor back to just
    /// before the oldest such event; projectors skip what they already have. See
    /// `SqliteStore::requeue_unprojected`. Returns how many events are waiting afterwards.
    pub async fn requeue_unprojected(&self) -> Result<u64, StoreError> {
        sqlx::query(
            "WITH oldest AS ( \
               SELECT e.transaction_id, e.idx - 1 AS idx FROM events e \
               WHERE e.version > LEAST( \
                 COALESCE((SELECT version FROM projection_checkpoints p \
                           WHERE p.projection = 'read-model-projector' AND p.wallet_id = e.wallet_id), 0), \
                 COALESCE((SELECT version FROM projection_checkpoints p \
                           WHERE p.projection = 'ledger-projector' AND p.wallet_id = e.wallet_id), 0)) \
               ORDER BY e.transaction_id, e.idx LIMIT 1) \
             UPDATE outbox_cursor c SET transaction_id = o.transaction_id, idx = o.idx FROM oldest o \
             WHERE (o.transaction_id, o.idx) < (c.transaction_id, c.idx)",
        )
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(self.outbox_backlog().await?.0)
    }
}

/// A command record found through its idempotency key, with the key's age.
#[derive(sqlx::FromRow)]
struct KeyedRecord {
    #[sqlx(flatten)]
    record: RecordRow,
    key_at: i64,
}

fn event_from(payload: &[u8]) -> Result<Event, StoreError> {
    decode_event(payload).map_err(corrupt)
}

impl EventStore for PostgresStore {
    async fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        // One statement, so one round trip and its own transaction: the commands, their keys and
        // their events go in through data-modifying CTEs, all or nothing (the foreign keys are
        // checked at the end of the statement, when every row is there). Five round trips
        // (BEGIN, three INSERTs, COMMIT) cost the single writer more than the inserts themselves.
        let records = &batch.records;
        // One outbox message per event, in the same order, with its position and its encoded
        // payload: the event rows are the outbox (the relay's cursor walks them), so nothing else is
        // written per event.
        let events = &batch.events;
        let outbox = &batch.outbox;
        debug_assert_eq!(events.len(), outbox.len());
        sqlx::query(
            "WITH recorded AS ( \
               INSERT INTO commands (transaction_id, command_id, fingerprint, at, rejection) \
               SELECT * FROM UNNEST($1::bigint[], $2::bytea[], $3::bytea[], $4::bigint[], $5::text[])), \
             keyed AS ( \
               INSERT INTO idempotency_keys (command_id, transaction_id, at) \
               SELECT * FROM UNNEST($2::bytea[], $1::bigint[], $4::bigint[]) \
               ON CONFLICT (command_id) DO UPDATE SET transaction_id = EXCLUDED.transaction_id, at = EXCLUDED.at) \
             INSERT INTO events (transaction_id, idx, wallet_id, version, payload) \
             SELECT * FROM UNNEST($6::bigint[], $7::int[], $8::text[], $9::bigint[], $10::bytea[])",
        )
        // The key is live again for this command, replacing an expired one of the same id.
        .bind(records.iter().map(|r| int(r.transaction_id.0)).collect::<Vec<_>>())
        .bind(records.iter().map(|r| id_bytes(r.command_id.0)).collect::<Vec<_>>())
        .bind(records.iter().map(|r| id_bytes(r.fingerprint.0)).collect::<Vec<_>>())
        .bind(records.iter().map(|r| int(r.at.unix_micros())).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.result.err().map(Rejection::code)).collect::<Vec<_>>())
        .bind(outbox.iter().map(|m| int(m.position.transaction_id.0)).collect::<Vec<_>>())
        .bind(
            outbox
                .iter()
                .map(|m| i32::try_from(m.position.index).expect("few events per transaction"))
                .collect::<Vec<_>>(),
        )
        .bind(outbox.iter().map(|m| m.key.to_string()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| int(e.version)).collect::<Vec<_>>())
        .bind(outbox.iter().map(|m| m.payload.as_slice()).collect::<Vec<_>>())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
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
        let mut transaction = self.pool.begin().await.map_err(store_error)?;
        sqlx::query(
            "INSERT INTO snapshots (transaction_id, bytes) VALUES ($1, $2) ON CONFLICT (transaction_id) DO NOTHING",
        )
        .bind(int(snapshot.transaction_id.0))
        .bind(&snapshot.bytes)
        .execute(&mut *transaction)
        .await
        .map_err(store_error)?;
        sqlx::query("DELETE FROM snapshots WHERE transaction_id < $1")
            .bind(int(snapshot.transaction_id.0))
            .execute(&mut *transaction)
            .await
            .map_err(store_error)?;
        transaction.commit().await.map_err(store_error)
    }

    async fn journal(&self, after: TransactionId, limit: usize) -> Result<Vec<JournalEntry>, StoreError> {
        let records: Vec<RecordRow> = sqlx::query_as(
            "SELECT transaction_id, command_id, fingerprint, at, rejection FROM commands \
             WHERE transaction_id > $1 ORDER BY transaction_id LIMIT $2",
        )
        .bind(int(after.0))
        .bind(int(limit as u64))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let mut entries = records
            .into_iter()
            .map(|row| Ok(JournalEntry { record: row.into_record()?, events: Vec::new() }))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Ok(entries) };
        let rows = sqlx::query(
            "SELECT payload FROM events WHERE transaction_id BETWEEN $1 AND $2 ORDER BY transaction_id, idx",
        )
        .bind(int(first.record.transaction_id.0))
        .bind(int(last.record.transaction_id.0))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let mut cursor = 0;
        for row in rows {
            let event = event_from(&row.try_get::<Vec<u8>, _>("payload").map_err(store_error)?)?;
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
        // The age test is applied here, not in SQL: given `k.at >= $2`, a generic plan with stale
        // statistics chose the age index and hashed thousands of live keys per lookup.
        let rows: Vec<KeyedRecord> = sqlx::query_as(
            "SELECT c.transaction_id, c.command_id, c.fingerprint, c.at, c.rejection, k.at AS key_at \
             FROM UNNEST($1::bytea[]) AS ids (command_id) \
             JOIN idempotency_keys k ON k.command_id = ids.command_id \
             JOIN commands c ON c.transaction_id = k.transaction_id",
        )
        .bind(ids.iter().map(|id| id_bytes(id.0)).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let not_before = int(not_before.unix_micros());
        rows.into_iter().filter(|row| row.key_at >= not_before).map(|row| row.record.into_record()).collect()
    }

    async fn forget_idempotency_keys(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE at < $1")
            .bind(int(before.unix_micros()))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected())
    }

    async fn outbox_after(
        &self,
        after: Option<OutboxPosition>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let (transaction, index) =
            after.map_or((-1, -1), |p| (int(p.transaction_id.0), i32::try_from(p.index).unwrap_or(i32::MAX)));
        let rows: Vec<OutboxRow> = sqlx::query_as(
            // One row comparison against the later of `after` and the cursor, so the scan of the
            // events' primary key starts there; the commit time is a primary-key lookup per row (a
            // join may choose to merge from the first command).
            "WITH start AS ( \
               SELECT $1::bigint AS transaction_id, $2::int AS idx \
               UNION ALL SELECT transaction_id, idx FROM outbox_cursor \
               ORDER BY transaction_id DESC, idx DESC LIMIT 1) \
             SELECT e.transaction_id, e.idx::bigint AS idx, e.wallet_id, e.payload, \
                    (SELECT c.at FROM commands c WHERE c.transaction_id = e.transaction_id) AS committed_at \
             FROM events e WHERE (e.transaction_id, e.idx) > (SELECT transaction_id, idx FROM start) \
             ORDER BY e.transaction_id, e.idx LIMIT $3",
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
        sqlx::query("UPDATE outbox_cursor SET transaction_id = $1, idx = $2 WHERE (transaction_id, idx) < ($1, $2)")
            .bind(int(through.transaction_id.0))
            .bind(i32::try_from(through.index).unwrap_or(i32::MAX))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn outbox_backlog(&self) -> Result<(u64, Option<Timestamp>), StoreError> {
        let row: BacklogRow = sqlx::query_as(OUTBOX_BACKLOG).fetch_one(&self.pool).await.map_err(store_error)?;
        row.into_backlog()
    }

    async fn wallet_events(&self, wallet_id: &WalletId, from: u64, to: u64) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT payload FROM events WHERE wallet_id = $1 AND version BETWEEN $2 AND $3 ORDER BY version",
        )
        .bind(wallet_id.as_str())
        .bind(int(from))
        .bind(int(to.min(i64::MAX as u64)))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(|row| event_from(&row.try_get::<Vec<u8>, _>("payload").map_err(store_error)?)).collect()
    }
}

impl ProjectionStore for PostgresStore {
    async fn project(&self, projection: Projection, events: &[Event]) -> Result<Vec<Applied>, StoreError> {
        let name = projection.group();
        let wallets: Vec<String> = ProjectionPlan::wallets(events).iter().map(WalletId::to_string).collect();
        let mut transaction = self.pool.begin().await.map_err(store_error)?;
        // One projection applies one batch at a time, whichever instance holds the batch: a
        // transaction-scoped advisory lock per projection serializes instances (during a consumer
        // group rebalance two may briefly hold the same partition) and, unlike `FOR UPDATE` on the
        // checkpoint rows, also covers wallets that have no checkpoint yet and writes nothing.
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(PROJECTION_LOCK_CLASS)
            .bind(match projection {
                Projection::ReadModel => 1_i32,
                Projection::Ledger => 2_i32,
            })
            .execute(&mut *transaction)
            .await
            .map_err(store_error)?;
        let rows = sqlx::query(
            "SELECT p.wallet_id, p.version FROM UNNEST($2::text[]) AS ids (wallet_id) \
             JOIN projection_checkpoints p ON p.projection = $1 AND p.wallet_id = ids.wallet_id",
        )
        .bind(name)
        .bind(&wallets)
        .fetch_all(&mut *transaction)
        .await
        .map_err(store_error)?;
        let mut checkpoints = std::collections::BTreeMap::new();
        for row in rows {
            let id: String = row.try_get("wallet_id").map_err(store_error)?;
            checkpoints
                .insert(WalletId::parse(&id).map_err(corrupt)?, uint(row.try_get("version").map_err(store_error)?)?);
        }
        let mut views = std::collections::BTreeMap::new();
        if projection == Projection::ReadModel {
            let rows: Vec<WalletRow> = sqlx::query_as(
                "SELECT w.* FROM UNNEST($1::text[]) AS ids (wallet_id) JOIN wallets w ON w.wallet_id = ids.wallet_id",
            )
            .bind(&wallets)
            .fetch_all(&mut *transaction)
            .await
            .map_err(store_error)?;
            for row in rows {
                let view = row.into_view()?;
                views.insert(view.wallet_id, view);
            }
        }
        let plan = ProjectionPlan::new(projection, events, checkpoints, views)?;
        if !plan.views.is_empty() {
            let views = &plan.views;
            sqlx::query(
                "INSERT INTO wallets (wallet_id, owner_id, currency, balance, held, overdraft_limit, version, \
                 created_at, updated_at) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], \
                 $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[]) \
                 ON CONFLICT (wallet_id) DO UPDATE SET balance = EXCLUDED.balance, held = EXCLUDED.held, \
                 version = EXCLUDED.version, updated_at = EXCLUDED.updated_at",
            )
            .bind(views.iter().map(|v| v.wallet_id.to_string()).collect::<Vec<_>>())
            .bind(views.iter().map(|v| v.owner_id.to_string()).collect::<Vec<_>>())
            .bind(views.iter().map(|v| v.currency.code()).collect::<Vec<_>>())
            .bind(views.iter().map(|v| v.balance).collect::<Vec<_>>())
            .bind(views.iter().map(|v| int(v.held)).collect::<Vec<_>>())
            .bind(views.iter().map(|v| int(v.overdraft_limit)).collect::<Vec<_>>())
            .bind(views.iter().map(|v| int(v.version)).collect::<Vec<_>>())
            .bind(views.iter().map(|v| int(v.created_at.unix_micros())).collect::<Vec<_>>())
            .bind(views.iter().map(|v| int(v.updated_at.unix_micros())).collect::<Vec<_>>())
            .execute(&mut *transaction)
            .await
            .map_err(store_error)?;
        }
        if !plan.entries.is_empty() {
            let entries = &plan.entries;
            sqlx::query(
                "INSERT INTO ledger_entries (wallet_id, version, transaction_id, entry_type, direction, amount, \
                 balance_after, currency, counterparty, description, at) SELECT * FROM UNNEST($1::text[], \
                 $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::text[], \
                 $9::text[], $10::text[], $11::bigint[])",
            )
            .bind(entries.iter().map(|e| e.wallet_id.to_string()).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| int(e.version)).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| int(e.transaction_id.0)).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.entry_type.clone()).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| direction_name(e.direction)).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| int(e.amount)).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.balance_after).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.currency.code()).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.counterparty.clone()).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.description.clone()).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| int(e.at.unix_micros())).collect::<Vec<_>>())
            .execute(&mut *transaction)
            .await
            .map_err(store_error)?;
        }
        if !plan.checkpoints.is_empty() {
            sqlx::query(
                "INSERT INTO projection_checkpoints (projection, wallet_id, version) \
                 SELECT $1, * FROM UNNEST($2::text[], $3::bigint[]) \
                 ON CONFLICT (projection, wallet_id) DO UPDATE SET version = EXCLUDED.version",
            )
            .bind(name)
            .bind(plan.checkpoints.iter().map(|(id, _)| id.to_string()).collect::<Vec<_>>())
            .bind(plan.checkpoints.iter().map(|(_, version)| int(*version)).collect::<Vec<_>>())
            .execute(&mut *transaction)
            .await
            .map_err(store_error)?;
        }
        transaction.commit().await.map_err(store_error)?;
        Ok(plan.verdicts)
    }

    async fn projected_version(&self, projection: Projection, wallet_id: &WalletId) -> Result<u64, StoreError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM projection_checkpoints WHERE projection = $1 AND wallet_id = $2")
                .bind(projection.group())
                .bind(wallet_id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(store_error)?;
        Ok(version.map(uint).transpose()?.unwrap_or(0))
    }

    async fn wallet(&self, wallet_id: &WalletId) -> Result<Option<WalletView>, StoreError> {
        let row: Option<WalletRow> = sqlx::query_as("SELECT * FROM wallets WHERE wallet_id = $1")
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
            "SELECT * FROM wallets WHERE ($1::text IS NULL OR owner_id = $1) AND wallet_id > $2 \
             ORDER BY wallet_id LIMIT $3",
        )
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
            "SELECT * FROM ledger_entries WHERE wallet_id = $1 AND version < $2 ORDER BY version DESC LIMIT $3",
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
