//! The SQL store, written once over a [`Dialect`]: every statement whose text and meaning agree on
//! both databases (the journal, snapshots, the outbox, the idempotency keys, the read queries), and
//! the read-plan-write skeleton of a projection. A dialect supplies only what really differs: the
//! writer, the group commit, how projection batches are serialized, how a list of keys or rows is
//! bound, and (in its constructor) the connections and migrations.
//!
//! Shared statements number their parameters `$1`, `$2`…: PostgreSQL's syntax, which SQLite reads as
//! named parameters and sqlx binds by number, so one text serves both.
//!
//! The shared code is generic over the sqlx driver. sqlx states what generic code needs as bounds on
//! other types (`i64: Encode<DB>`, `&mut DB::Connection: Executor`), which every generic impl would
//! have to repeat; [`Driver`] restates them as bounds on the driver's associated types, which hold
//! wherever `D: Dialect` does.
//!
//! `Dialect` and its helper traits are `pub` only because they bound the public [`SqlStore`]: this
//! module is private, so no other crate can name or implement them.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::DerefMut;

use sqlx::error::BoxDynError;
use sqlx::pool::Pool;
use sqlx::query::Query;
use sqlx::{Arguments, Connection, Database, Encode, Executor, FromRow, IntoArguments, Row, Type};
use wallex_engine::{CommandId, CommandRecord, Event, Timestamp, TransactionId, WalletId};
use wallex_pipeline::codec::decode_event;
use wallex_pipeline::ports::{
    ApiKey, Applied, AuditRecord, CommitBatch, EntryFilter, Epoch, EventStore, JournalEntry, KeyStore, Lease,
    LedgerEntry, OutboxMessage, OutboxPosition, Projection, ProjectionPlan, ProjectionStore, StoreError,
    StoredSnapshot, WalletFilter, WalletOrder, WalletSummary, WalletView,
};

use crate::common::{
    AuditRow, BacklogRow, CheckpointRow, EntryRow, KeyRow, KeyedRecord, LeaseRow, OutboxRow, RecordRow, SummaryRow,
    WalletRow, bound, corrupt, int, scopes_text, store_error, uint,
};

/// A store over one SQL database: PostgreSQL ([`crate::PostgresStore`]) or SQLite
/// ([`crate::SqliteStore`]).
#[derive(Debug)]
pub struct SqlStore<D: Dialect> {
    /// The connections this handle reads through (and, on PostgreSQL, writes through): the shared
    /// pool of readers, relay, projectors and cleanup, or on the writer's handle its own.
    pub(crate) pool: Pool<D::Db>,
    /// The single writer's own connections ([`EventStore::writer_handle`]): no read, relay or
    /// projector can hold them, so a flood of reads never makes a commit wait for a connection.
    pub(crate) writer_pool: Pool<D::Db>,
    pub(crate) dialect: D,
}

// Not derived: a derive would require the driver type itself to be `Clone`.
impl<D: Dialect> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        SqlStore { pool: self.pool.clone(), writer_pool: self.writer_pool.clone(), dialect: self.dialect.clone() }
    }
}

/// A connection of `D`'s database.
pub type Conn<D> = <<D as Dialect>::Db as Database>::Connection;

/// What differs between the SQL databases. A hook runs on the connection it is given: the writer
/// (inside the caller's transaction, if one is open), or for `keyed_records` a reader.
pub trait Dialect: Clone + std::fmt::Debug + Send + Sync + 'static {
    type Db: Driver;

    /// The statement that begins a write transaction.
    const BEGIN: &'static str;

    /// The writer's connection, held for as long as one write lasts.
    type Writer<'a>: DerefMut<Target = Conn<Self>> + Send
    where
        Self: 'a;

    /// Waits for the writer's connection.
    fn writer<'a>(
        &'a self,
        pool: &'a Pool<Self::Db>,
    ) -> impl Future<Output = Result<Self::Writer<'a>, StoreError>> + Send;

    /// After a write failed on `writer`: makes it usable again. A failed statement or COMMIT can
    /// leave a connection inside a transaction nothing will end (sqlx then refuses to begin
    /// another), so a dialect whose writer is one long-lived connection replaces it, and a pooled
    /// one is closed rather than returned to the pool.
    fn reset_writer<'a>(&'a self, writer: &mut Self::Writer<'a>) -> impl Future<Output = ()> + Send;

    fn rows_affected(result: &<Self::Db as Database>::QueryResult) -> u64;

    /// What turns a query into its plan: `EXPLAIN …` or `EXPLAIN QUERY PLAN `.
    const EXPLAIN: &'static str;

    /// One line of a plan, from a row of [`Dialect::EXPLAIN`]'s answer.
    fn plan_line(row: &<Self::Db as Database>::Row) -> Result<String, StoreError>;

    /// An entry's wallet id as the search orders it: byte order.
    const ENTRY_WALLET_ORDER: &'static str;

    /// The LIKE that ignores case: a description contains a text when it is LIKE `%text%` so.
    const CASELESS_LIKE: &'static str;

    /// A condition beside the LIKE that lets an index find the descriptions containing a text,
    /// where the LIKE alone does not; `{}` is the value [`Dialect::description_needle`] makes.
    const DESCRIPTION_INDEX: Option<&'static str>;

    /// A count of the descriptions containing a text through the index, without its closing
    /// `LIMIT …)`; `{}` as in [`Dialect::DESCRIPTION_INDEX`].
    const DESCRIPTION_PROBE: Option<&'static str>;

    /// The value bound in [`Dialect::DESCRIPTION_INDEX`].
    fn description_needle(text: &str) -> String;

    /// Whether the planner needs telling a common filter value from a rare one (it has no
    /// statistics of values to tell by); see [`Shape`].
    const ADAPTIVE: bool;

    /// The start of a ledger search down the newest-first index (used only when `ADAPTIVE`).
    const NEWEST_SCAN: &'static str;

    /// Takes the writer lease (binds: holder, address, length in µs), by the database's clock,
    /// returning the new epoch; no row if another holder's lease is live. See [`lease_statements`].
    const ACQUIRE_LEASE: &'static str;
    /// Extends the lease of an epoch (binds: epoch, length in µs); no row changed if it is not
    /// current.
    const RENEW_LEASE: &'static str;
    /// The lease: epoch, holder, address and µs until it lapses (negative once it has).
    const READ_LEASE: &'static str;

    /// Makes the whole batch durable in one transaction, or nothing of it, if `batch.epoch` is
    /// still the writer lease's epoch, checked in that transaction (else [`StoreError::Fenced`]).
    fn commit(writer: &mut Conn<Self>, batch: &CommitBatch) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The commands of `ids` that have an idempotency key, with the key's age, in any order.
    fn keyed_records(
        reader: &mut Conn<Self>,
        ids: &[CommandId],
    ) -> impl Future<Output = Result<Vec<KeyedRecord>, StoreError>> + Send;

    /// The payloads of every event of the transactions `ids` (ascending, no duplicates), in
    /// transaction and index order.
    fn transaction_payloads(
        reader: &mut Conn<Self>,
        ids: &[TransactionId],
    ) -> impl Future<Output = Result<Vec<(Vec<u8>,)>, StoreError>> + Send;

    /// Makes any other batch of `projection` wait until this transaction ends.
    fn lock_projection(
        transaction: &mut Conn<Self>,
        projection: Projection,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The checkpoints of `projection` for those of `wallets` that have one: the read model's
    /// wallet rows' versions, the ledger's summary rows' projected versions.
    fn checkpoints(
        transaction: &mut Conn<Self>,
        projection: Projection,
        wallets: &[WalletId],
    ) -> impl Future<Output = Result<Vec<CheckpointRow>, StoreError>> + Send;

    /// The read model's rows for those of `wallets` that have one.
    fn wallet_rows(
        transaction: &mut Conn<Self>,
        wallets: &[WalletId],
    ) -> impl Future<Output = Result<Vec<WalletRow>, StoreError>> + Send;

    /// Writes what `plan` changes: the read model's rows, or the ledger's entries and summaries
    /// (and with them, either way, the projection's checkpoints).
    fn write_plan(
        transaction: &mut Conn<Self>,
        plan: &ProjectionPlan,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A sqlx driver with what the shared statements need of it: connections that run statements,
/// arguments that take the shared value types, and rows that decode to the shared row types. Each
/// dialect's driver implements it, which checks that these hold for it.
pub trait Driver:
    Database<
        Connection: Runs<Self>,
        Arguments: IntoArguments<Self>
                       + Bind<i64>
                       + Bind<i32>
                       + for<'a> Bind<&'a str>
                       + Bind<String>
                       + for<'a> Bind<Option<&'a str>>
                       + for<'a> Bind<&'a [u8]>
                       + Bind<Option<i64>>
                       + Bind<Option<String>>,
        Row: DecodeRow<RecordRow>
                 + DecodeRow<WalletRow>
                 + DecodeRow<EntryRow>
                 + DecodeRow<SummaryRow>
                 + DecodeRow<KeyRow>
                 + DecodeRow<AuditRow>
                 + DecodeRow<OutboxRow>
                 + DecodeRow<BacklogRow>
                 + DecodeRow<LeaseRow>
                 + DecodeRow<(i64,)>
                 + DecodeRow<(String, i64)>
                 + DecodeRow<(Vec<u8>,)>
                 + DecodeRow<(i64, Vec<u8>)>,
    >
{
}

/// A connection as an executor of `DB`'s statements.
pub trait Runs<DB: Database> {
    fn run(&mut self) -> impl Executor<'_, Database = DB>;
}

impl<DB: Database, C> Runs<DB> for C
where
    for<'c> &'c mut C: Executor<'c, Database = DB>,
{
    fn run(&mut self) -> impl Executor<'_, Database = DB> {
        self
    }
}

/// Arguments that take a `T`.
pub trait Bind<T> {
    fn bind(&mut self, value: T) -> Result<(), BoxDynError>;
}

impl<'t, A: Arguments, T: Encode<'t, A::Database> + Type<A::Database>> Bind<T> for A {
    fn bind(&mut self, value: T) -> Result<(), BoxDynError> {
        self.add(value)
    }
}

/// A row that decodes to a `T`.
pub trait DecodeRow<T> {
    fn decode_row(&self) -> Result<T, StoreError>;
}

impl<R: Row, T: for<'r> FromRow<'r, R>> DecodeRow<T> for R {
    fn decode_row(&self) -> Result<T, StoreError> {
        T::from_row(self).map_err(store_error)
    }
}

/// A statement's values, bound in order. A value that does not encode fails the statement.
struct Values<DB: Database>(Result<DB::Arguments, BoxDynError>);

impl<DB: Driver> Values<DB> {
    fn new() -> Values<DB> {
        Values(Ok(DB::Arguments::default()))
    }

    fn and<T>(mut self, value: T) -> Values<DB>
    where
        DB::Arguments: Bind<T>,
    {
        if let Ok(arguments) = &mut self.0
            && let Err(error) = arguments.bind(value)
        {
            self.0 = Err(error);
        }
        self
    }

    fn arguments(self) -> Result<DB::Arguments, StoreError> {
        self.0.map_err(|error| store_error(sqlx::Error::Encode(error)))
    }
}

/// The writer lease's statements, over the dialect's expression for the database's clock in
/// microseconds since the Unix epoch: every instance judges the lease by that one clock. Taking
/// it bumps the epoch in the same statement that checks it is free, so two instances can never
/// hold one epoch.
macro_rules! lease_statements {
    ($now:literal) => {
        const ACQUIRE_LEASE: &'static str = concat!(
            "UPDATE writer_lease SET epoch = epoch + 1, holder = $1, address = $2, expires_at = ",
            $now,
            " + $3 WHERE id = 1 AND (expires_at <= ",
            $now,
            " OR holder = $1) RETURNING epoch"
        );
        const RENEW_LEASE: &'static str =
            concat!("UPDATE writer_lease SET expires_at = ", $now, " + $2 WHERE id = 1 AND epoch = $1");
        const READ_LEASE: &'static str = concat!(
            "SELECT epoch, holder, address, expires_at - ",
            $now,
            " AS remaining FROM writer_lease WHERE id = 1"
        );
    };
}
pub(crate) use lease_statements;

/// A shared statement with its values.
fn statement<DB: Driver>(
    sql: &'static str,
    values: Values<DB>,
) -> Result<Query<'static, DB, DB::Arguments>, StoreError> {
    Ok(sqlx::query_with(sql, values.arguments()?))
}

fn event_from(payload: &[u8]) -> Result<Event, StoreError> {
    decode_event(payload).map_err(corrupt)
}

/// A statement composed from fixed fragments, its values bound in order as `$1`, `$2`, ….
struct Composed<DB: Database> {
    sql: String,
    values: Values<DB>,
    bound: usize,
}

impl<DB: Driver> Composed<DB> {
    fn new(sql: &str) -> Composed<DB> {
        Composed { sql: sql.to_owned(), values: Values::new(), bound: 0 }
    }

    /// Binds `value` and returns its placeholder.
    fn bind<T>(&mut self, value: T) -> String
    where
        DB::Arguments: Bind<T>,
    {
        self.bound += 1;
        self.values = std::mem::replace(&mut self.values, Values::new()).and(value);
        format!("${}", self.bound)
    }

    fn push(&mut self, fragment: &str) {
        self.sql.push_str(fragment);
    }
}

/// A count as a `LIMIT`.
fn sql_limit(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// An event's index within its transaction, as the `idx` columns store it (PostgreSQL's are
/// `INT`); no transaction has more events than that.
fn idx(position: OutboxPosition) -> i32 {
    i32::try_from(position.index).unwrap_or(i32::MAX)
}

impl<D: Dialect> SqlStore<D> {
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer_pool.close().await;
    }

    /// Takes one of the shared connections (readers', relay's, projectors') and keeps it until
    /// the returned connection drops, as a slow read does: for tests and load experiments.
    pub async fn hold_shared_connection(&self) -> Result<sqlx::pool::PoolConnection<D::Db>, StoreError> {
        self.pool.acquire().await.map_err(store_error)
    }

    /// Puts back into the outbox every event some projection has not applied yet: moves the relay's
    /// cursor back to just before the oldest such event. Returns how many events wait afterwards.
    ///
    /// For a bus that does not outlive the process, like the in-process one: events the relay
    /// published before a restart but the projectors had not applied are gone from it.
    /// Re-publishing from there at start closes that hole; projectors skip whatever they already
    /// have.
    pub async fn requeue_unprojected(&self) -> Result<u64, StoreError> {
        // An event waits if its version is past either projection's checkpoint of its wallet (the
        // wallet row's version, the summary row's projected version); the cursor only ever moves
        // back.
        self.write(
            "UPDATE outbox_cursor SET transaction_id = oldest.transaction_id, idx = oldest.idx \
             FROM (SELECT e.transaction_id, e.idx - 1 AS idx FROM events e \
                   WHERE e.version > COALESCE((SELECT w.version FROM wallets w WHERE w.wallet_id = e.wallet_id), 0) \
                      OR e.version > COALESCE((SELECT s.projected_version FROM wallet_summaries s \
                                               WHERE s.wallet_id = e.wallet_id), 0) \
                   ORDER BY e.transaction_id, e.idx LIMIT 1) AS oldest \
             WHERE (oldest.transaction_id, oldest.idx) < (outbox_cursor.transaction_id, outbox_cursor.idx)",
            Values::new(),
        )
        .await?;
        Ok(self.outbox_backlog().await?.0)
    }

    /// The rows of a read, decoded.
    async fn read<T>(&self, sql: &'static str, values: Values<D::Db>) -> Result<Vec<T>, StoreError>
    where
        <D::Db as Database>::Row: DecodeRow<T>,
    {
        let mut reader = self.pool.acquire().await.map_err(store_error)?;
        let rows = statement(sql, values)?.fetch_all(reader.run()).await.map_err(store_error)?;
        rows.iter().map(DecodeRow::decode_row).collect()
    }

    /// A read whose statement was composed at run time from fixed fragments (every value is bound).
    async fn read_composed<T>(&self, search: Composed<D::Db>) -> Result<Vec<T>, StoreError>
    where
        <D::Db as Database>::Row: DecodeRow<T>,
    {
        let mut reader = self.pool.acquire().await.map_err(store_error)?;
        let arguments = search.values.arguments()?;
        let rows = sqlx::query_with(sqlx::AssertSqlSafe(search.sql), arguments)
            .fetch_all(reader.run())
            .await
            .map_err(store_error)?;
        rows.iter().map(DecodeRow::decode_row).collect()
    }

    /// One write statement on the writer; how many rows it changed.
    async fn write(&self, sql: &'static str, values: Values<D::Db>) -> Result<u64, StoreError> {
        let mut writer = self.dialect.writer(&self.pool).await?;
        let done = match statement(sql, values)?.execute(writer.run()).await {
            Ok(done) => done,
            Err(error) => {
                self.dialect.reset_writer(&mut writer).await;
                return Err(store_error(error));
            }
        };
        Ok(D::rows_affected(&done))
    }
}

/// Saves `snapshot` in one transaction on the writer.
async fn save_snapshot_on<D: Dialect>(writer: &mut Conn<D>, snapshot: &StoredSnapshot) -> Result<(), StoreError> {
    let transaction_id = int(snapshot.transaction_id.0);
    let mut transaction = writer.begin_with(D::BEGIN).await.map_err(store_error)?;
    // A snapshot is the state after its transaction, and committed state never changes: one
    // stored already for this transaction or a later one makes this one redundant, so it is
    // neither written nor rewritten.
    statement(
        "INSERT INTO snapshots (transaction_id, bytes) SELECT $1, $2 \
         WHERE NOT EXISTS (SELECT 1 FROM snapshots WHERE transaction_id >= $1) \
         ON CONFLICT (transaction_id) DO NOTHING",
        Values::new().and(transaction_id).and(snapshot.bytes.as_slice()),
    )?
    .execute(transaction.run())
    .await
    .map_err(store_error)?;
    // Older snapshots are never read again.
    statement("DELETE FROM snapshots WHERE transaction_id < $1", Values::new().and(transaction_id))?
        .execute(transaction.run())
        .await
        .map_err(store_error)?;
    transaction.commit().await.map_err(store_error)
}

impl<D: Dialect> EventStore for SqlStore<D> {
    fn writer_handle(&self) -> Self {
        SqlStore {
            pool: self.writer_pool.clone(),
            writer_pool: self.writer_pool.clone(),
            dialect: self.dialect.clone(),
        }
    }

    async fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        let mut writer = self.dialect.writer(&self.pool).await?;
        let result = D::commit(&mut writer, batch).await;
        if result.is_err() {
            self.dialect.reset_writer(&mut writer).await;
        }
        result
    }

    async fn acquire_lease(&self, holder: &str, address: &str, lease_ms: u64) -> Result<Option<Lease>, StoreError> {
        // The lease's statements run on the writer's own connections: a shared pool that readers
        // have exhausted must not delay a renewal past the lease.
        let mut writer = self.dialect.writer(&self.writer_pool).await?;
        let values = Values::new().and(holder).and(address).and(int(lease_ms.saturating_mul(1_000)));
        let row = match statement(D::ACQUIRE_LEASE, values)?.fetch_optional(writer.run()).await {
            Ok(row) => row,
            Err(error) => {
                self.dialect.reset_writer(&mut writer).await;
                return Err(store_error(error));
            }
        };
        let Some(row) = row else { return Ok(None) };
        let (epoch,): (i64,) = row.decode_row()?;
        Ok(Some(Lease {
            epoch: Epoch(uint(epoch)?),
            holder: holder.to_owned(),
            address: address.to_owned(),
            remaining_ms: lease_ms,
        }))
    }

    async fn renew_lease(&self, epoch: Epoch, lease_ms: u64) -> Result<bool, StoreError> {
        let mut writer = self.dialect.writer(&self.writer_pool).await?;
        let values = Values::new().and(int(epoch.0)).and(int(lease_ms.saturating_mul(1_000)));
        match statement(D::RENEW_LEASE, values)?.execute(writer.run()).await {
            Ok(done) => Ok(D::rows_affected(&done) == 1),
            Err(error) => {
                self.dialect.reset_writer(&mut writer).await;
                Err(store_error(error))
            }
        }
    }

    async fn lease(&self) -> Result<Option<Lease>, StoreError> {
        let rows: Vec<LeaseRow> = self.read(D::READ_LEASE, Values::new()).await?;
        rows.into_iter().next().ok_or_else(|| corrupt("the writer_lease row is missing"))?.into_lease()
    }

    async fn release_lease(&self, epoch: Epoch) -> Result<(), StoreError> {
        let mut writer = self.dialect.writer(&self.writer_pool).await?;
        let values = Values::new().and(int(epoch.0));
        if let Err(error) = statement("UPDATE writer_lease SET expires_at = 0 WHERE id = 1 AND epoch = $1", values)?
            .execute(writer.run())
            .await
        {
            self.dialect.reset_writer(&mut writer).await;
            return Err(store_error(error));
        }
        Ok(())
    }

    async fn latest_snapshot(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        let mut rows: Vec<(i64, Vec<u8>)> = self
            .read("SELECT transaction_id, bytes FROM snapshots ORDER BY transaction_id DESC LIMIT 1", Values::new())
            .await?;
        rows.pop()
            .map(|(transaction_id, bytes)| {
                Ok(StoredSnapshot { transaction_id: TransactionId(uint(transaction_id)?), bytes })
            })
            .transpose()
    }

    async fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), StoreError> {
        let mut writer = self.dialect.writer(&self.pool).await?;
        let result = save_snapshot_on::<D>(&mut writer, snapshot).await;
        if result.is_err() {
            self.dialect.reset_writer(&mut writer).await;
        }
        result
    }

    async fn journal(&self, after: TransactionId, limit: usize) -> Result<Vec<JournalEntry>, StoreError> {
        let records: Vec<RecordRow> = self
            .read(
                "SELECT transaction_id, command_id, fingerprint, at, rejection, refused_leg FROM commands \
                 WHERE transaction_id > $1 ORDER BY transaction_id LIMIT $2",
                Values::new().and(int(after.0)).and(sql_limit(limit)),
            )
            .await?;
        let mut entries = records
            .into_iter()
            .map(|row| Ok(JournalEntry { record: row.into_record()?, events: Vec::new() }))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Ok(entries) };
        let payloads: Vec<(Vec<u8>,)> = self
            .read(
                "SELECT payload FROM events WHERE transaction_id BETWEEN $1 AND $2 ORDER BY transaction_id, idx",
                Values::new().and(int(first.record.transaction_id.0)).and(int(last.record.transaction_id.0)),
            )
            .await?;
        // Both lists are in transaction order: each event belongs to the first entry not before it.
        let mut cursor = 0;
        for (payload,) in payloads {
            let event = event_from(&payload)?;
            while entries[cursor].record.transaction_id < event.transaction_id {
                cursor += 1;
            }
            entries[cursor].events.push(event);
        }
        Ok(entries)
    }

    async fn transaction_events(&self, ids: &[TransactionId]) -> Result<Vec<Event>, StoreError> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut reader = self.pool.acquire().await.map_err(store_error)?;
        let payloads = D::transaction_payloads(&mut reader, &ids).await?;
        payloads.iter().map(|(payload,)| event_from(payload)).collect()
    }

    async fn command_records(
        &self,
        ids: &[CommandId],
        not_before: Timestamp,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        let mut reader = self.pool.acquire().await.map_err(store_error)?;
        let rows = D::keyed_records(&mut reader, ids).await?;
        // The age test is applied here, not in SQL: given `k.at >= $2`, a PostgreSQL generic plan
        // with stale statistics chose the age index and hashed thousands of live keys per lookup.
        let not_before = int(not_before.unix_micros());
        rows.into_iter().filter(|row| row.key_at >= not_before).map(|row| row.record.into_record()).collect()
    }

    async fn forget_idempotency_keys(&self, before: Timestamp, limit: usize) -> Result<u64, StoreError> {
        // The oldest first, by the age index, a bounded number per statement.
        self.write(
            "DELETE FROM idempotency_keys WHERE command_id IN ( \
               SELECT command_id FROM idempotency_keys WHERE at < $1 ORDER BY at LIMIT $2)",
            Values::new().and(int(before.unix_micros())).and(sql_limit(limit)),
        )
        .await
    }

    async fn outbox_after(
        &self,
        after: Option<OutboxPosition>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let (transaction_id, index) = after.map_or((-1, -1), |after| (int(after.transaction_id.0), idx(after)));
        let rows: Vec<OutboxRow> = self
            .read(
                // One row comparison against the later of `after` and the cursor, so the scan of the
                // events' primary key starts there; the commit time is a primary-key lookup per row
                // (a join may choose to merge from the first command).
                "WITH start AS ( \
                   SELECT CAST($1 AS BIGINT) AS transaction_id, CAST($2 AS INTEGER) AS idx \
                   UNION ALL SELECT transaction_id, idx FROM outbox_cursor \
                   ORDER BY transaction_id DESC, idx DESC LIMIT 1) \
                 SELECT e.transaction_id, CAST(e.idx AS BIGINT) AS idx, e.wallet_id, e.payload, \
                        (SELECT c.at FROM commands c WHERE c.transaction_id = e.transaction_id) AS committed_at \
                 FROM events e WHERE (e.transaction_id, e.idx) > (SELECT transaction_id, idx FROM start) \
                 ORDER BY e.transaction_id, e.idx LIMIT $3",
                Values::new().and(transaction_id).and(index).and(sql_limit(limit)),
            )
            .await?;
        rows.into_iter().map(OutboxRow::into_message).collect()
    }

    async fn mark_published(&self, through: OutboxPosition) -> Result<(), StoreError> {
        self.write(
            "UPDATE outbox_cursor SET transaction_id = $1, idx = $2 WHERE (transaction_id, idx) < ($1, $2)",
            Values::new().and(int(through.transaction_id.0)).and(idx(through)),
        )
        .await?;
        Ok(())
    }

    async fn outbox_backlog(&self) -> Result<(u64, Option<Timestamp>), StoreError> {
        // Commit times never go backwards along the journal, so the first waiting event is the
        // oldest.
        let mut rows: Vec<BacklogRow> = self
            .read(
                "WITH waiting AS ( \
                   SELECT e.transaction_id FROM events e \
                   WHERE (e.transaction_id, e.idx) > (SELECT transaction_id, idx FROM outbox_cursor)) \
                 SELECT (SELECT COUNT(*) FROM waiting) AS backlog, \
                        (SELECT c.at FROM commands c WHERE c.transaction_id = (SELECT MIN(transaction_id) FROM waiting)) \
                        AS oldest",
                Values::new(),
            )
            .await?;
        rows.pop().ok_or_else(|| corrupt("no backlog row"))?.into_backlog()
    }

    async fn stream_heads(
        &self,
        after: TransactionId,
        through: TransactionId,
    ) -> Result<Vec<(WalletId, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = self
            .read(
                "SELECT wallet_id, MAX(version) FROM events WHERE transaction_id > $1 AND transaction_id <= $2 \
                 GROUP BY wallet_id ORDER BY wallet_id",
                Values::new().and(int(after.0)).and(int(through.0)),
            )
            .await?;
        rows.into_iter()
            .map(|(wallet_id, version)| Ok((WalletId::parse(&wallet_id).map_err(corrupt)?, uint(version)?)))
            .collect()
    }

    async fn wallet_events(&self, wallet_id: &WalletId, from: u64, to: u64) -> Result<Vec<Event>, StoreError> {
        let payloads: Vec<(Vec<u8>,)> = self
            .read(
                "SELECT payload FROM events WHERE wallet_id = $1 AND version BETWEEN $2 AND $3 ORDER BY version",
                Values::new().and(wallet_id.as_str()).and(bound(from)).and(bound(to)),
            )
            .await?;
        payloads.iter().map(|(payload,)| event_from(payload)).collect()
    }
}

/// Applies `events` to `projection` in one transaction on the writer.
async fn project_on<D: Dialect>(
    writer: &mut Conn<D>,
    projection: Projection,
    events: &[Event],
) -> Result<Vec<Applied>, StoreError> {
    let wallets = ProjectionPlan::wallets(events);
    let mut transaction = writer.begin_with(D::BEGIN).await.map_err(store_error)?;
    D::lock_projection(&mut transaction, projection).await?;
    let mut checkpoints = BTreeMap::new();
    let mut views = BTreeMap::new();
    match projection {
        // The read model's checkpoint is its row's version: one read gives both.
        Projection::ReadModel => {
            for row in D::wallet_rows(&mut transaction, &wallets).await? {
                let view = row.into_view()?;
                checkpoints.insert(view.wallet_id, view.version);
                views.insert(view.wallet_id, view);
            }
        }
        Projection::Ledger => {
            for row in D::checkpoints(&mut transaction, projection, &wallets).await? {
                checkpoints.insert(WalletId::parse(&row.wallet_id).map_err(corrupt)?, uint(row.version)?);
            }
        }
    }
    let plan = ProjectionPlan::new(projection, events, checkpoints, views)?;
    D::write_plan(&mut transaction, &plan).await?;
    transaction.commit().await.map_err(store_error)?;
    Ok(plan.verdicts)
}

impl<D: Dialect> ProjectionStore for SqlStore<D> {
    async fn project(&self, projection: Projection, events: &[Event]) -> Result<Vec<Applied>, StoreError> {
        let mut writer = self.dialect.writer(&self.pool).await?;
        let result = project_on::<D>(&mut writer, projection, events).await;
        if result.is_err() {
            self.dialect.reset_writer(&mut writer).await;
        }
        result
    }

    async fn projected_version(&self, projection: Projection, wallet_id: &WalletId) -> Result<u64, StoreError> {
        Ok(self.projected_versions(projection, std::slice::from_ref(wallet_id)).await?.pop().unwrap_or(0))
    }

    async fn projected_versions(&self, projection: Projection, wallets: &[WalletId]) -> Result<Vec<u64>, StoreError> {
        let mut reader = self.pool.acquire().await.map_err(store_error)?;
        let mut versions = BTreeMap::new();
        for row in D::checkpoints(&mut reader, projection, wallets).await? {
            versions.insert(row.wallet_id, uint(row.version)?);
        }
        Ok(wallets.iter().map(|wallet| versions.get(wallet.as_str()).copied().unwrap_or(0)).collect())
    }

    async fn wallet(&self, wallet_id: &WalletId) -> Result<Option<WalletView>, StoreError> {
        let mut rows: Vec<WalletRow> =
            self.read("SELECT * FROM wallets WHERE wallet_id = $1", Values::new().and(wallet_id.as_str())).await?;
        rows.pop().map(WalletRow::into_view).transpose()
    }

    async fn ledger_entries(
        &self,
        wallet_id: &WalletId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let rows: Vec<EntryRow> = self
            .read(
                "SELECT * FROM ledger_entries WHERE wallet_id = $1 AND version < $2 ORDER BY version DESC LIMIT $3",
                Values::new().and(wallet_id.as_str()).and(before.map_or(i64::MAX, bound)).and(sql_limit(limit)),
            )
            .await?;
        rows.into_iter().map(EntryRow::into_entry).collect()
    }

    async fn entries_by_reference(
        &self,
        reference: &wallex_engine::Reference,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let rows: Vec<EntryRow> = self
            .read(
                "SELECT * FROM ledger_entries WHERE reference_id = $1 \
                 ORDER BY transaction_id DESC, wallet_id DESC LIMIT $2",
                Values::new().and(reference.as_str()).and(sql_limit(limit)),
            )
            .await?;
        rows.into_iter().map(EntryRow::into_entry).collect()
    }

    async fn ledger_entry(&self, wallet_id: &WalletId, version: u64) -> Result<Option<LedgerEntry>, StoreError> {
        let mut rows: Vec<EntryRow> = self
            .read(
                "SELECT * FROM ledger_entries WHERE wallet_id = $1 AND version = $2",
                Values::new().and(wallet_id.as_str()).and(bound(version)),
            )
            .await?;
        rows.pop().map(EntryRow::into_entry).transpose()
    }

    async fn search_entries(&self, filter: &EntryFilter, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        let shape = self.entries_shape(filter, limit).await?;
        let rows: Vec<EntryRow> = self.read_composed(entries_query::<D>(filter, limit, shape)).await?;
        rows.into_iter().map(EntryRow::into_entry).collect()
    }

    async fn search_wallets(&self, filter: &WalletFilter, limit: usize) -> Result<Vec<WalletView>, StoreError> {
        let rows: Vec<WalletRow> = self.read_composed(wallets_query::<D>(filter, limit)).await?;
        rows.into_iter().map(WalletRow::into_view).collect()
    }

    async fn wallet_summary(&self, wallet_id: &WalletId) -> Result<Option<WalletSummary>, StoreError> {
        let mut rows: Vec<SummaryRow> = self
            // A row without entries only holds the ledger projection's checkpoint.
            .read(
                "SELECT * FROM wallet_summaries WHERE wallet_id = $1 AND transaction_count > 0",
                Values::new().and(wallet_id.as_str()),
            )
            .await?;
        rows.pop().map(SummaryRow::into_summary).transpose()
    }
}

/// How a ledger search reads the entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// However the planner likes: an index on a filter, then a sort of what it found.
    Natural,
    /// Down the newest-first index, testing each entry: the fast way when a filter admits many
    /// entries (the first page is found early), which SQLite's planner cannot tell (see
    /// [`Dialect::ADAPTIVE`]).
    Newest,
    /// Through the wallet's or the reference's index, which narrows to few entries, testing the
    /// other filters on each (no other index consulted).
    Narrow,
}

/// Which way is faster for a filter admitting `count` of `total` entries, when a page is `limit`:
/// the newest-first scan reads about `limit * total / count` entries, the filter's own index
/// `count` (and sorts them), so the scan wins past `sqrt(limit * total)` (7,071 for a page of 50
/// in a million entries). Probes count up to this.
fn common_from(total: u64, limit: usize) -> usize {
    let product = u128::from(total).saturating_mul(limit as u128);
    usize::try_from(product.isqrt()).unwrap_or(usize::MAX).clamp(1_000, 50_000)
}

/// `text` as a LIKE pattern that matches it anywhere, its own `%`, `_` and `\` literal.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for character in text.chars() {
        if matches!(character, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(character);
    }
    pattern.push('%');
    pattern
}

/// The ledger search's statement.
fn entries_query<D: Dialect>(filter: &EntryFilter, limit: usize, shape: Shape) -> Composed<D::Db> {
    // Scanning one index, each entry tested: `+` keeps a filter's column from choosing another.
    let newest = shape != Shape::Natural;
    let mut query = Composed::<D::Db>::new(match shape {
        Shape::Natural | Shape::Narrow => "SELECT e.* FROM ledger_entries e WHERE 1 = 1",
        Shape::Newest => D::NEWEST_SCAN,
    });
    let plain = if newest { "+" } else { "" };
    if let Some(wallet_id) = &filter.wallet_id {
        let at = query.bind(wallet_id.as_str().to_owned());
        query.push(&format!(" AND e.wallet_id = {at}"));
    }
    if !filter.entry_types.is_empty() {
        let list: Vec<String> = filter.entry_types.iter().map(|kind| query.bind((*kind).to_owned())).collect();
        query.push(&format!(" AND {plain}e.entry_type IN ({})", list.join(", ")));
    }
    if let Some(from) = filter.from {
        let at = query.bind(bound(from.unix_micros()));
        query.push(&format!(" AND e.at >= {at}"));
    }
    if let Some(to) = filter.to {
        let at = query.bind(bound(to.unix_micros()));
        query.push(&format!(" AND e.at < {at}"));
    }
    if let Some(currency) = filter.currency {
        let at = query.bind(currency.code().to_owned());
        query.push(&format!(" AND {plain}e.currency = {at}"));
    }
    if let Some(min) = filter.min_amount {
        let at = query.bind(bound(min));
        query.push(&format!(" AND {plain}e.amount >= {at}"));
    }
    if let Some(max) = filter.max_amount {
        let at = query.bind(bound(max));
        query.push(&format!(" AND {plain}e.amount <= {at}"));
    }
    if let Some(reference) = &filter.reference {
        let at = query.bind(reference.as_str().to_owned());
        query.push(&format!(" AND e.reference_id = {at}"));
    }
    if let Some(text) = &filter.description {
        let like = query.bind(like_pattern(text));
        query.push(&format!(" AND e.description {} {like} ESCAPE '\\'", D::CASELESS_LIKE));
        if !newest && let Some(index) = D::DESCRIPTION_INDEX {
            let needle = query.bind(D::description_needle(text));
            query.push(&format!(" AND {}", index.replace("{}", &needle)));
        }
    }
    if let Some((key, value)) = &filter.metadata {
        let (key, value) = (query.bind(key.clone()), query.bind(value.clone()));
        if newest {
            query.push(&format!(
                " AND EXISTS (SELECT 1 FROM entry_metadata m WHERE m.key = {key} AND m.value = {value} \
                 AND m.wallet_id = e.wallet_id AND m.version = e.version)"
            ));
        } else {
            query.push(&format!(
                " AND (e.wallet_id, e.version) IN \
                 (SELECT m.wallet_id, m.version FROM entry_metadata m WHERE m.key = {key} AND m.value = {value})"
            ));
        }
    }
    let wallet = D::ENTRY_WALLET_ORDER;
    if let Some(before) = &filter.before {
        let at = query.bind(bound(before.at.unix_micros()));
        let transaction = query.bind(bound(before.transaction_id.0));
        let wallet_id = query.bind(before.wallet_id.as_str().to_owned());
        query.push(&format!(" AND (e.at, e.transaction_id, {wallet}) < ({at}, {transaction}, {wallet_id})"));
    }
    let limit = query.bind(sql_limit(limit));
    query.push(&format!(" ORDER BY e.at DESC, e.transaction_id DESC, {wallet} DESC LIMIT {limit}"));
    query
}

/// The wallet search's statement.
fn wallets_query<D: Dialect>(filter: &WalletFilter, limit: usize) -> Composed<D::Db> {
    let mut query = Composed::<D::Db>::new("SELECT w.* FROM wallets w WHERE 1 = 1");
    if let Some(owner) = &filter.owner_id {
        let at = query.bind(owner.as_str().to_owned());
        query.push(&format!(" AND w.owner_id = {at}"));
    }
    if let Some(currency) = filter.currency {
        let at = query.bind(currency.code().to_owned());
        query.push(&format!(" AND w.currency = {at}"));
    }
    if let Some(min) = filter.min_balance {
        let at = query.bind(min);
        query.push(&format!(" AND w.balance >= {at}"));
    }
    if let Some(max) = filter.max_balance {
        let at = query.bind(max);
        query.push(&format!(" AND w.balance <= {at}"));
    }
    if let Some(from) = filter.created_from {
        let at = query.bind(bound(from.unix_micros()));
        query.push(&format!(" AND w.created_at >= {at}"));
    }
    if let Some(to) = filter.created_to {
        let at = query.bind(bound(to.unix_micros()));
        query.push(&format!(" AND w.created_at < {at}"));
    }
    if let Some((key, value)) = &filter.metadata {
        let (key, value) = (query.bind(key.clone()), query.bind(value.clone()));
        query.push(&format!(
            " AND w.wallet_id IN (SELECT m.wallet_id FROM wallet_metadata m WHERE m.key = {key} AND m.value = {value})"
        ));
    }
    let sort = match filter.order {
        WalletOrder::Id => None,
        WalletOrder::CreatedAt => Some("w.created_at"),
        WalletOrder::Balance => Some("w.balance"),
    };
    let (after, direction) = if filter.descending { ("<", "DESC") } else { (">", "ASC") };
    if let Some(cursor) = &filter.after {
        let wallet_id = query.bind(cursor.wallet_id.as_str().to_owned());
        match sort {
            None => query.push(&format!(" AND w.wallet_id {after} {wallet_id}")),
            Some(column) => {
                let key = query.bind(cursor.key);
                query.push(&format!(" AND ({column}, w.wallet_id) {after} ({key}, {wallet_id})"));
            }
        }
    }
    let limit = query.bind(sql_limit(limit));
    match sort {
        None => query.push(&format!(" ORDER BY w.wallet_id {direction} LIMIT {limit}")),
        Some(column) => {
            query.push(&format!(" ORDER BY {column} {direction}, w.wallet_id {direction} LIMIT {limit}"));
        }
    }
    query
}

impl<D: Dialect> KeyStore for SqlStore<D> {
    async fn create_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let time = |at: Option<Timestamp>| at.map(|at| int(at.unix_micros()));
        self.write(
            "INSERT INTO api_keys (key_id, name, scopes, owner_id, secret_hash, created_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            Values::new()
                .and(key.id.clone())
                .and(key.name.clone())
                .and(scopes_text(&key.scopes))
                .and(key.owner_id.map(|owner| owner.as_str().to_owned()))
                .and(&key.secret_hash[..])
                .and(int(key.created_at.unix_micros()))
                .and(time(key.expires_at))
                .and(time(key.revoked_at)),
        )
        .await
        .map(|_| ())
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let mut rows: Vec<KeyRow> =
            self.read("SELECT * FROM api_keys WHERE key_id = $1", Values::new().and(id.to_owned())).await?;
        rows.pop().map(KeyRow::into_key).transpose()
    }

    async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows: Vec<KeyRow> = self.read("SELECT * FROM api_keys ORDER BY key_id", Values::new()).await?;
        rows.into_iter().map(KeyRow::into_key).collect()
    }

    async fn revoke_key(&self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let changed = self
            .write(
                "UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2 AND revoked_at IS NULL",
                Values::new().and(int(at.unix_micros())).and(id.to_owned()),
            )
            .await?;
        Ok(changed == 1)
    }

    async fn mark_key_used(&self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let changed = self
            .write(
                "UPDATE api_keys SET first_used_at = $1 WHERE key_id = $2 AND first_used_at IS NULL",
                Values::new().and(int(at.unix_micros())).and(id.to_owned()),
            )
            .await?;
        Ok(changed == 1)
    }

    async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.write(
            "INSERT INTO audit_log (at, actor, action, target, request_id, detail) VALUES ($1, $2, $3, $4, $5, $6)",
            Values::new()
                .and(int(record.at.unix_micros()))
                .and(record.actor.clone())
                .and(record.action.clone())
                .and(record.target.clone())
                .and(record.request_id.clone())
                .and(record.detail.clone()),
        )
        .await
        .map(|_| ())
    }

    async fn audit_records(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        // Any id a client names: past the largest a row can have, it means "from the newest".
        let before = before.map_or(i64::MAX, |before| i64::try_from(before).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<AuditRow> = self
            .read(
                "SELECT * FROM audit_log WHERE audit_id < $1 ORDER BY audit_id DESC LIMIT $2",
                Values::new().and(before).and(limit),
            )
            .await?;
        rows.into_iter().map(AuditRow::into_record).collect()
    }
}

impl<D: Dialect> SqlStore<D> {
    /// How the database runs the ledger search `filter` (its query plan, a line per node), to show
    /// and check that every filter is index-backed.
    pub async fn explain_entries(&self, filter: &EntryFilter, limit: usize) -> Result<Vec<String>, StoreError> {
        let shape = self.entries_shape(filter, limit).await?;
        self.explain(entries_query::<D>(filter, limit, shape)).await
    }

    /// How to run a ledger search. Where the planner cannot tell a common filter value from a
    /// rare one ([`Dialect::ADAPTIVE`]): a wallet or a reference narrows through its own index;
    /// else each filter that has an index of its own (amounts, metadata, description) is counted
    /// through it, up to [`common_from`]: if one is rare, the planner's way (through an index of a
    /// filter, then a sort) is fast; if all are common, the newest-first scan is.
    async fn entries_shape(&self, filter: &EntryFilter, limit: usize) -> Result<Shape, StoreError> {
        if !D::ADAPTIVE {
            return Ok(Shape::Natural);
        }
        if filter.wallet_id.is_some() || filter.reference.is_some() {
            return Ok(Shape::Narrow);
        }
        let mut probes = Vec::new();
        let total: Vec<(i64,)> = self.read("SELECT COALESCE(MAX(rowid), 0) FROM ledger_entries", Values::new()).await?;
        let cap = common_from(total.first().map_or(0, |(rows,)| uint(*rows).unwrap_or(0)), limit);
        if filter.min_amount.is_some() || filter.max_amount.is_some() {
            let mut probe = Composed::<D::Db>::new("SELECT COUNT(*) FROM (SELECT 1 FROM ledger_entries e WHERE 1 = 1");
            if let Some(currency) = filter.currency {
                let at = probe.bind(currency.code().to_owned());
                probe.push(&format!(" AND e.currency = {at}"));
            }
            if let Some(min) = filter.min_amount {
                let at = probe.bind(bound(min));
                probe.push(&format!(" AND e.amount >= {at}"));
            }
            if let Some(max) = filter.max_amount {
                let at = probe.bind(bound(max));
                probe.push(&format!(" AND e.amount <= {at}"));
            }
            probes.push(probe);
        }
        if let Some((key, value)) = &filter.metadata {
            let mut probe = Composed::<D::Db>::new("SELECT COUNT(*) FROM (SELECT 1 FROM entry_metadata m WHERE 1 = 1");
            let (key, value) = (probe.bind(key.clone()), probe.bind(value.clone()));
            probe.push(&format!(" AND m.key = {key} AND m.value = {value}"));
            probes.push(probe);
        }
        if let (Some(text), Some(index)) = (&filter.description, D::DESCRIPTION_PROBE) {
            let mut probe = Composed::<D::Db>::new(index);
            let needle = probe.bind(D::description_needle(text));
            probe.sql = probe.sql.replace("{}", &needle);
            probes.push(probe);
        }
        if probes.is_empty() {
            return Ok(Shape::Natural);
        }
        for mut probe in probes {
            let at = probe.bind(sql_limit(cap));
            probe.push(&format!(" LIMIT {at})"));
            let counted: Vec<(i64,)> = self.read_composed(probe).await?;
            if counted.first().is_none_or(|(count,)| uint(*count).is_ok_and(|count| count < cap as u64)) {
                return Ok(Shape::Natural);
            }
        }
        Ok(Shape::Newest)
    }

    /// How the database runs the wallet search `filter`.
    pub async fn explain_wallets(&self, filter: &WalletFilter, limit: usize) -> Result<Vec<String>, StoreError> {
        self.explain(wallets_query::<D>(filter, limit)).await
    }

    async fn explain(&self, mut query: Composed<D::Db>) -> Result<Vec<String>, StoreError> {
        query.sql = format!("{}{}", D::EXPLAIN, query.sql);
        let mut reader = self.pool.acquire().await.map_err(store_error)?;
        let arguments = query.values.arguments()?;
        let rows = sqlx::query_with(sqlx::AssertSqlSafe(query.sql), arguments)
            .fetch_all(reader.run())
            .await
            .map_err(store_error)?;
        rows.iter().map(|row| D::plan_line(row)).collect()
    }
}
