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
//! 100k idempotency keys, against 0.1 ms by index). Binding one array per column also keeps a
//! statement's parameters a handful whatever the batch size (PostgreSQL allows 65,535). Durability is
//! PostgreSQL's: fsync and `synchronous_commit` stay on.

use std::time::Duration;

use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgQueryResult};
use wallex_engine::{CommandId, Rejection, TransactionId, WalletId};
use wallex_pipeline::ports::{CommitBatch, Epoch, Projection, ProjectionPlan, StoreError};

use crate::common::{
    CheckpointRow, KeyedRecord, WalletRow, direction_name, id_bytes, int, metadata_text, store_error, uint,
};
use crate::store::{Dialect, Driver, SqlStore, lease_statements};

/// Connections in the shared pool: the relay, two projectors, the cleanup and the readers.
pub const DEFAULT_POOL_SIZE: u32 = 16;

/// The single writer's own connections: it does one IO at a time, and a second connection lets
/// it go on at once while a broken one is being replaced.
pub const WRITER_CONNECTIONS: u32 = 2;

/// How long a statement waits for a connection of the pool before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first key of the projections' advisory locks ("WALX").
const PROJECTION_LOCK_CLASS: i32 = 0x5741_4C58;

/// The store on PostgreSQL.
pub type PostgresStore = SqlStore<PostgresDialect>;

/// PostgreSQL's side of [`SqlStore`]: a write takes any connection of the pool, and PostgreSQL
/// serializes what conflicts (projection batches by an advisory lock).
#[derive(Clone, Copy, Debug)]
pub struct PostgresDialect;

/// The idempotency lookup of a group commit: each of the batch's command ids, through the keys'
/// and the commands' primary keys. `LATERAL … LIMIT 1` keeps it a probe per id: as a plain join,
/// a batch of a thousand ids made PostgreSQL hash the whole key table (a sequential scan, 120,000
/// buffer reads per commit with 100,000 live keys) to find, nearly always, nothing.
const KEYED_RECORDS: &str = "SELECT c.transaction_id, c.command_id, c.fingerprint, c.at, c.rejection, c.refused_leg, \
     k.at AS key_at FROM UNNEST($1::bytea[]) AS ids (command_id) \
     CROSS JOIN LATERAL (SELECT k.transaction_id, k.at FROM idempotency_keys k \
                         WHERE k.command_id = ids.command_id LIMIT 1) AS k \
     CROSS JOIN LATERAL (SELECT c.* FROM commands c WHERE c.transaction_id = k.transaction_id LIMIT 1) AS c";

impl PostgresStore {
    /// How PostgreSQL runs a group commit's idempotency lookup of `ids` (its plan, a line per
    /// node), to check that it probes the keys' index instead of scanning the table.
    pub async fn explain_idempotency_lookup(&self, ids: &[CommandId]) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN (COSTS OFF) {KEYED_RECORDS}")))
            .bind(ids.iter().map(|id| id_bytes(id.0)).collect::<Vec<_>>())
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(rows.into_iter().map(|(line,)| line).collect())
    }

    /// Connects to `url` and applies the migrations.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(DEFAULT_POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(store_error)?;
        let writer_pool = PgPoolOptions::new()
            .max_connections(WRITER_CONNECTIONS)
            .min_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(store_error)?;
        let store = SqlStore { pool, writer_pool, dialect: PostgresDialect };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../../migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|error| StoreError::Unavailable(format!("migration failed: {error}")))
    }
}

/// The wallets' ids as one array.
fn wallet_ids(wallets: &[WalletId]) -> Vec<&str> {
    wallets.iter().map(WalletId::as_str).collect()
}

impl Driver for Postgres {}

impl Dialect for PostgresDialect {
    type Db = Postgres;

    const BEGIN: &'static str = "BEGIN";

    type Writer<'a> = PoolConnection<Postgres>;

    async fn writer<'a>(&'a self, pool: &'a PgPool) -> Result<PoolConnection<Postgres>, StoreError> {
        pool.acquire().await.map_err(store_error)
    }

    async fn reset_writer(&self, writer: &mut PoolConnection<Postgres>) {
        writer.close_on_drop();
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    lease_statements!("(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint");

    async fn commit(writer: &mut PgConnection, batch: &CommitBatch) -> Result<(), StoreError> {
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
        // The fence: the lease row, locked FOR SHARE for the statement's transaction, must still
        // carry the batch's epoch. A takeover's UPDATE of the row waits for this transaction, and
        // a takeover that committed first fails the check (READ COMMITTED re-reads a locked row
        // at its latest version). Every insert joins the fence, so a fenced batch writes nothing.
        let (fenced_in, current): (i64, i64) = sqlx::query_as(
            "WITH fence AS ( \
               SELECT epoch FROM writer_lease WHERE id = 1 AND epoch = $12 FOR SHARE), \
             recorded AS ( \
               INSERT INTO commands (transaction_id, command_id, fingerprint, at, rejection, refused_leg) \
               SELECT r.* FROM UNNEST($1::bigint[], $2::bytea[], $3::bytea[], $4::bigint[], $5::text[], $11::int[]) \
                 AS r (transaction_id, command_id, fingerprint, at, rejection, refused_leg), fence), \
             keyed AS ( \
               INSERT INTO idempotency_keys (command_id, transaction_id, at) \
               SELECT k.* FROM UNNEST($2::bytea[], $1::bigint[], $4::bigint[]) AS k (command_id, transaction_id, at), fence \
               ON CONFLICT (command_id) DO UPDATE SET transaction_id = EXCLUDED.transaction_id, at = EXCLUDED.at), \
             evented AS ( \
               INSERT INTO events (transaction_id, idx, wallet_id, version, payload) \
               SELECT e.* FROM UNNEST($6::bigint[], $7::int[], $8::text[], $9::bigint[], $10::bytea[]) \
                 AS e (transaction_id, idx, wallet_id, version, payload), fence) \
             SELECT (SELECT count(*) FROM fence), (SELECT epoch FROM writer_lease WHERE id = 1)",
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
        .bind(outbox.iter().map(|m| m.key.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| int(e.version)).collect::<Vec<_>>())
        .bind(outbox.iter().map(|m| m.payload.as_slice()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.refused_leg.map(i32::from)).collect::<Vec<_>>())
        .bind(int(batch.epoch.0))
        .fetch_one(writer)
        .await
        .map_err(store_error)?;
        if fenced_in == 0 {
            return Err(StoreError::Fenced { current: Epoch(uint(current)?) });
        }
        Ok(())
    }

    async fn keyed_records(reader: &mut PgConnection, ids: &[CommandId]) -> Result<Vec<KeyedRecord>, StoreError> {
        sqlx::query_as(KEYED_RECORDS)
            .bind(ids.iter().map(|id| id_bytes(id.0)).collect::<Vec<_>>())
            .fetch_all(reader)
            .await
            .map_err(store_error)
    }

    async fn transaction_payloads(
        reader: &mut PgConnection,
        ids: &[TransactionId],
    ) -> Result<Vec<(Vec<u8>,)>, StoreError> {
        sqlx::query_as(
            "SELECT e.payload FROM UNNEST($1::bigint[]) AS ids (transaction_id) \
             JOIN events e ON e.transaction_id = ids.transaction_id ORDER BY e.transaction_id, e.idx",
        )
        .bind(ids.iter().map(|id| int(id.0)).collect::<Vec<_>>())
        .fetch_all(reader)
        .await
        .map_err(store_error)
    }

    async fn lock_projection(transaction: &mut PgConnection, projection: Projection) -> Result<(), StoreError> {
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
            .execute(transaction)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn checkpoints(
        transaction: &mut PgConnection,
        projection: Projection,
        wallets: &[WalletId],
    ) -> Result<Vec<CheckpointRow>, StoreError> {
        sqlx::query_as(match projection {
            Projection::ReadModel => {
                "SELECT w.wallet_id, w.version FROM UNNEST($1::text[]) AS ids (wallet_id) \
                 JOIN wallets w ON w.wallet_id = ids.wallet_id"
            }
            Projection::Ledger => {
                "SELECT s.wallet_id, s.projected_version AS version FROM UNNEST($1::text[]) AS ids (wallet_id) \
                 JOIN wallet_summaries s ON s.wallet_id = ids.wallet_id"
            }
        })
        .bind(wallet_ids(wallets))
        .fetch_all(transaction)
        .await
        .map_err(store_error)
    }

    async fn wallet_rows(transaction: &mut PgConnection, wallets: &[WalletId]) -> Result<Vec<WalletRow>, StoreError> {
        sqlx::query_as(
            "SELECT w.* FROM UNNEST($1::text[]) AS ids (wallet_id) JOIN wallets w ON w.wallet_id = ids.wallet_id",
        )
        .bind(wallet_ids(wallets))
        .fetch_all(transaction)
        .await
        .map_err(store_error)
    }

    const EXPLAIN: &'static str = "EXPLAIN (COSTS OFF) ";

    fn plan_line(row: &sqlx::postgres::PgRow) -> Result<String, StoreError> {
        sqlx::Row::try_get(row, 0).map_err(store_error)
    }

    const ENTRY_WALLET_ORDER: &'static str = "e.wallet_id COLLATE \"C\"";

    /// pg_trgm's GIN index serves ILIKE itself.
    const CASELESS_LIKE: &'static str = "ILIKE";

    const DESCRIPTION_INDEX: Option<&'static str> = None;

    const DESCRIPTION_PROBE: Option<&'static str> = None;

    fn description_needle(text: &str) -> String {
        text.to_owned()
    }

    /// PostgreSQL's statistics tell a common value from a rare one.
    const ADAPTIVE: bool = false;

    const NEWEST_SCAN: &'static str = "SELECT e.* FROM ledger_entries e WHERE 1 = 1";

    async fn write_plan(transaction: &mut PgConnection, plan: &ProjectionPlan) -> Result<(), StoreError> {
        // An empty list would cost a round trip to insert nothing.
        let views = &plan.views;
        if !views.is_empty() {
            sqlx::query(
                "INSERT INTO wallets (wallet_id, owner_id, currency, balance, held, overdraft_limit, version, \
                 created_at, updated_at, reference_id, metadata, correlation_id) SELECT * FROM UNNEST($1::text[], \
                 $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], \
                 $9::bigint[], $10::text[], $11::text[], $12::text[]) \
                 ON CONFLICT (wallet_id) DO UPDATE SET balance = EXCLUDED.balance, held = EXCLUDED.held, \
                 version = EXCLUDED.version, updated_at = EXCLUDED.updated_at",
            )
            .bind(views.iter().map(|v| v.wallet_id.as_str()).collect::<Vec<_>>())
            .bind(views.iter().map(|v| v.owner_id.as_str()).collect::<Vec<_>>())
            .bind(views.iter().map(|v| v.currency.code()).collect::<Vec<_>>())
            .bind(views.iter().map(|v| v.balance).collect::<Vec<_>>())
            .bind(views.iter().map(|v| int(v.held)).collect::<Vec<_>>())
            .bind(views.iter().map(|v| int(v.overdraft_limit)).collect::<Vec<_>>())
            .bind(views.iter().map(|v| int(v.version)).collect::<Vec<_>>())
            .bind(views.iter().map(|v| int(v.created_at.unix_micros())).collect::<Vec<_>>())
            .bind(views.iter().map(|v| int(v.updated_at.unix_micros())).collect::<Vec<_>>())
            .bind(views.iter().map(|v| v.memo.reference.as_ref().map(|r| r.as_str())).collect::<Vec<_>>())
            .bind(views.iter().map(|v| metadata_text(&v.memo)).collect::<Vec<_>>())
            .bind(views.iter().map(|v| v.memo.correlation_id.as_ref().map(|c| c.as_str())).collect::<Vec<_>>())
            .execute(&mut *transaction)
            .await
            .map_err(store_error)?;
            let metadata: Vec<(&str, &str, &str)> = views
                .iter()
                .flat_map(|view| view.memo.metadata.iter().map(|(key, value)| (key, value, view.wallet_id.as_str())))
                .collect();
            if !metadata.is_empty() {
                sqlx::query(
                    "INSERT INTO wallet_metadata (key, value, wallet_id) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
                )
                .bind(metadata.iter().map(|m| m.0).collect::<Vec<_>>())
                .bind(metadata.iter().map(|m| m.1).collect::<Vec<_>>())
                .bind(metadata.iter().map(|m| m.2).collect::<Vec<_>>())
                .execute(&mut *transaction)
                .await
                .map_err(store_error)?;
            }
        }
        let entries = &plan.entries;
        if !entries.is_empty() {
            sqlx::query(
                "INSERT INTO ledger_entries (wallet_id, version, transaction_id, entry_type, direction, amount, \
                 balance_after, currency, counterparty, description, at, reference_id, metadata, correlation_id) \
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bigint[], \
                 $7::bigint[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[], $13::text[], \
                 $14::text[])",
            )
            .bind(entries.iter().map(|e| e.wallet_id.as_str()).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| int(e.version)).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| int(e.transaction_id.0)).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.entry_type.as_str()).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| direction_name(e.direction)).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| int(e.amount)).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.balance_after).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.currency.code()).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.counterparty.as_str()).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.description.as_deref()).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| int(e.at.unix_micros())).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.memo.reference.as_ref().map(|r| r.as_str())).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| metadata_text(&e.memo)).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.memo.correlation_id.as_ref().map(|c| c.as_str())).collect::<Vec<_>>())
            .execute(&mut *transaction)
            .await
            .map_err(store_error)?;
            let metadata: Vec<(&str, &str, &str, i64)> = entries
                .iter()
                .flat_map(|entry| {
                    let (wallet, version) = (entry.wallet_id.as_str(), int(entry.version));
                    entry.memo.metadata.iter().map(move |(key, value)| (key, value, wallet, version))
                })
                .collect();
            if !metadata.is_empty() {
                sqlx::query(
                    "INSERT INTO entry_metadata (key, value, wallet_id, version) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) ON CONFLICT DO NOTHING",
                )
                .bind(metadata.iter().map(|m| m.0).collect::<Vec<_>>())
                .bind(metadata.iter().map(|m| m.1).collect::<Vec<_>>())
                .bind(metadata.iter().map(|m| m.2).collect::<Vec<_>>())
                .bind(metadata.iter().map(|m| m.3).collect::<Vec<_>>())
                .execute(&mut *transaction)
                .await
                .map_err(store_error)?;
            }
        }
        // The ledger's summaries, every touched wallet's (its checkpoint is there), entries or not.
        let summaries = &plan.summaries;
        if !summaries.is_empty() {
            sqlx::query(
                "INSERT INTO wallet_summaries (wallet_id, currency, total_credits, total_debits, transaction_count, \
                 last_version, projected_version) SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], \
                 $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[]) \
                 ON CONFLICT (wallet_id) DO UPDATE SET \
                 total_credits = wallet_summaries.total_credits + EXCLUDED.total_credits, \
                 total_debits = wallet_summaries.total_debits + EXCLUDED.total_debits, \
                 transaction_count = wallet_summaries.transaction_count + EXCLUDED.transaction_count, \
                 last_version = GREATEST(wallet_summaries.last_version, EXCLUDED.last_version), \
                 projected_version = EXCLUDED.projected_version",
            )
            .bind(summaries.iter().map(|(d, _)| d.wallet_id.as_str()).collect::<Vec<_>>())
            .bind(summaries.iter().map(|(d, _)| d.currency.code()).collect::<Vec<_>>())
            .bind(summaries.iter().map(|(d, _)| int(d.total_credits)).collect::<Vec<_>>())
            .bind(summaries.iter().map(|(d, _)| int(d.total_debits)).collect::<Vec<_>>())
            .bind(summaries.iter().map(|(d, _)| int(d.transaction_count)).collect::<Vec<_>>())
            .bind(summaries.iter().map(|(d, _)| int(d.last_version)).collect::<Vec<_>>())
            .bind(summaries.iter().map(|(_, projected)| int(*projected)).collect::<Vec<_>>())
            .execute(transaction)
            .await
            .map_err(store_error)?;
        }
        Ok(())
    }
}
