//! The ports: what the pipeline needs from the world, and nothing more.
//!
//! The pipeline is generic over these traits and names no concrete adapter. Production implements
//! them with PostgreSQL and Kafka, the embedded default with SQLite and an in-process bus, tests and
//! benches with `memory`, and the simulator with simulated nodes under fault injection. Every method
//! may fail; the pipeline never assumes a failed write did not happen (see `StoreError`).

use std::future::Future;

use serde::{Deserialize, Serialize};
use wallex_engine::{CommandId, CommandRecord, Event, Timestamp, TransactionId, WalletId};

/// A write or read the store could not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store refused the write (a constraint, a conflict): nothing was written.
    #[error("store refused the write: {0}")]
    Refused(String),
    /// The store could not be reached, or failed mid-way: a write may or may not have been made
    /// durable (the connection dropped during COMMIT, say). Only reading back can tell.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The commit named an epoch that no longer holds the writer lease: another instance took
    /// over. Nothing was written, and this writer must never commit again (it steps down).
    #[error("the writer lease has passed to epoch {current}: this writer is fenced off")]
    Fenced { current: Epoch },
}

/// A term of the writer lease. It only grows: every takeover bumps it, and every group commit
/// names the epoch it was decided under, which the store checks in the same transaction. A writer
/// that lost the lease (paused, partitioned, slow) can therefore never commit again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub u64);

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The writer lease as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub epoch: Epoch,
    /// The node that holds (or last held) it.
    pub holder: String,
    /// Where that node takes forwarded requests (`http://host:port`); empty if it takes none.
    pub address: String,
    /// Milliseconds until it lapses, by the store's clock; 0 once it has.
    pub remaining_ms: u64,
}

impl Lease {
    pub fn is_live(&self) -> bool {
        self.remaining_ms > 0
    }
}

/// Where an event sits in the outbox: commit order. The single writer assigns transaction ids in
/// the order it commits, so `(transaction, index)` never lets a later commit slip in before a cursor
/// the way a `bigserial` assigned before commit can.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OutboxPosition {
    pub transaction_id: TransactionId,
    /// The event's index within its transaction.
    pub index: u32,
}

/// One message waiting in the outbox: an encoded event keyed by its wallet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxMessage {
    pub position: OutboxPosition,
    pub key: WalletId,
    pub payload: Vec<u8>,
    /// When the event was committed (the ledger's time), for the outbox-age metric.
    pub committed_at: Timestamp,
}

/// Everything one group commit makes durable, atomically: every new command's record (with its
/// idempotency key, replacing an expired key of the same id), every event, and one outbox message
/// per event. A transaction id or a stream version that exists already refuses the whole batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitBatch {
    /// The writer lease's epoch the batch was decided under: the store commits nothing unless it
    /// is still the current one ([`StoreError::Fenced`]).
    pub epoch: Epoch,
    /// In transaction order.
    pub records: Vec<CommandRecord>,
    /// In transaction order, and within a transaction in emission order.
    pub events: Vec<Event>,
    /// One per event, same order.
    pub outbox: Vec<OutboxMessage>,
}

impl CommitBatch {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Empties the batch for reuse; the epoch stays.
    pub fn clear(&mut self) {
        self.records.clear();
        self.events.clear();
        self.outbox.clear();
    }
}

/// A recorded command with its events: one journal entry, as recovery replays it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    pub record: CommandRecord,
    pub events: Vec<Event>,
}

/// A ledger snapshot as stored: the state after `transaction_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub transaction_id: TransactionId,
    pub bytes: Vec<u8>,
}

/// The write side: the event store, the idempotency records, the outbox and snapshots.
pub trait EventStore: Clone + Send + Sync + 'static {
    /// The handle the single writer uses. A store with a connection pool gives the writer its own
    /// connections here, so that reads, the relay and the projectors holding every shared
    /// connection cannot make a commit wait; by default the same handle.
    fn writer_handle(&self) -> Self {
        self.clone()
    }

    /// Makes the whole batch durable in one transaction, or nothing of it.
    fn commit(&self, batch: &CommitBatch) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The latest snapshot, if any.
    fn latest_snapshot(&self) -> impl Future<Output = Result<Option<StoredSnapshot>, StoreError>> + Send;

    fn save_snapshot(&self, snapshot: &StoredSnapshot) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes the writer lease for `holder` (reachable at `address`) for `lease_ms`, if it has
    /// lapsed, was never taken, or is held by `holder` itself (an earlier run of the same node,
    /// which cannot be running beside it): the epoch grows by one, so every commit of an earlier
    /// epoch is refused from then on. `None`: another node holds it. Time is the store's own
    /// clock, the one every instance shares.
    fn acquire_lease(
        &self,
        holder: &str,
        address: &str,
        lease_ms: u64,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// Extends the lease of `epoch` to `lease_ms` from now; `false` if `epoch` is no longer the
    /// current one (another node took over). A lapsed lease no one took is renewed.
    fn renew_lease(&self, epoch: Epoch, lease_ms: u64) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The lease as it stands (`None`: never taken).
    fn lease(&self) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// Lets the lease of `epoch` lapse now, if it is still current: a clean shutdown hands over
    /// at once instead of after the lease's length.
    fn release_lease(&self, epoch: Epoch) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Up to `limit` journal entries with transaction ids after `after`, in order.
    fn journal(
        &self,
        after: TransactionId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<JournalEntry>, StoreError>> + Send;

    /// Every event of the transactions `ids`, in transaction order and, within one, in emission
    /// order: the original answers to retries of committed commands, for a whole batch in one read.
    fn transaction_events(&self, ids: &[TransactionId]) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// The records of those of `ids` whose idempotency key is live: committed at or after
    /// `not_before` and not yet forgotten.
    fn command_records(
        &self,
        ids: &[CommandId],
        not_before: Timestamp,
    ) -> impl Future<Output = Result<Vec<CommandRecord>, StoreError>> + Send;

    /// Forgets the idempotency keys of commands recorded before `before` (their ids may then be
    /// used again); the commands themselves stay in the journal. Returns how many were forgotten.
    /// At most `limit` of them per call: a cleanup of a million keys is many short statements
    /// between which the writer commits, not one that holds the writer up.
    fn forget_idempotency_keys(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Up to `limit` unpublished outbox messages after `after` (from the start when `None`), in
    /// commit order.
    fn outbox_after(
        &self,
        after: Option<OutboxPosition>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OutboxMessage>, StoreError>> + Send;

    /// Marks every outbox message up to and including `through` as published.
    fn mark_published(&self, through: OutboxPosition) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// How many outbox messages are unpublished, and when the oldest of them was committed.
    fn outbox_backlog(&self) -> impl Future<Output = Result<(u64, Option<Timestamp>), StoreError>> + Send;

    /// Every wallet the transactions in `after + 1 ..= through` touched, with the highest version
    /// it reached among them, in wallet order: what reconciliation compares checkpoints with.
    fn stream_heads(
        &self,
        after: TransactionId,
        through: TransactionId,
    ) -> impl Future<Output = Result<Vec<(WalletId, u64)>, StoreError>> + Send;

    /// A wallet's events with versions in `from..=to`, in version order.
    fn wallet_events(
        &self,
        wallet_id: &WalletId,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;
}

/// The two projections the pipeline maintains from the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Projection {
    /// Current wallets and holds: the read model behind `GET /wallets`.
    ReadModel,
    /// One row per posting per wallet: the ledger behind `GET /ledger/wallet/{id}`.
    Ledger,
}

impl Projection {
    pub const ALL: [Projection; 2] = [Projection::ReadModel, Projection::Ledger];

    /// The consumer group (and checkpoint name) of the projection.
    pub const fn group(self) -> &'static str {
        match self {
            Projection::ReadModel => "read-model-projector",
            Projection::Ledger => "ledger-projector",
        }
    }
}

/// What a projection did with one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// It was the wallet's next version: projected.
    Projected,
    /// The projection already has this version: skipped.
    Duplicate,
    /// An earlier version is missing: nothing written; hold the event until the gap fills.
    Gap { projected_version: u64 },
}

/// A wallet as the read model shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletView {
    pub wallet_id: WalletId,
    pub owner_id: wallex_engine::OwnerId,
    pub currency: wallex_engine::Currency,
    pub balance: i64,
    pub held: u64,
    pub overdraft_limit: u64,
    pub version: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// What the wallet's creation carried (reference, metadata, correlation id).
    pub memo: wallex_engine::Memo,
}

/// One ledger entry: a wallet's side of one posting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub wallet_id: WalletId,
    pub transaction_id: TransactionId,
    pub version: u64,
    /// `event.kind.name()`, e.g. `transfer_sent`.
    pub entry_type: String,
    pub direction: Direction,
    pub amount: u64,
    pub balance_after: i64,
    pub currency: wallex_engine::Currency,
    /// The other account of the posting: a wallet id or `@world:CUR`.
    pub counterparty: String,
    pub description: Option<String>,
    pub at: Timestamp,
    /// The transaction's reference, metadata and correlation id.
    pub memo: wallex_engine::Memo,
}

/// Where a newest-first page of ledger entries ends: entries strictly older come next. Entries
/// are ordered by time, then transaction, then wallet (the ledger's time never goes back, so this
/// is transaction order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryCursor {
    pub at: Timestamp,
    pub transaction_id: TransactionId,
    pub wallet_id: WalletId,
}

impl EntryCursor {
    pub fn of(entry: &LedgerEntry) -> EntryCursor {
        EntryCursor { at: entry.at, transaction_id: entry.transaction_id, wallet_id: entry.wallet_id }
    }
}

/// A search of the ledger (`GET /ledger/transactions`): every filter optional, all that are given
/// must hold; newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryFilter {
    pub wallet_id: Option<WalletId>,
    /// Entry types (`event.kind.name()`), any of them.
    pub entry_types: Vec<&'static str>,
    /// `at >= from`.
    pub from: Option<Timestamp>,
    /// `at < to`.
    pub to: Option<Timestamp>,
    /// The currency of the amount bounds (required with them: minor units mean nothing without it).
    pub currency: Option<wallex_engine::Currency>,
    pub min_amount: Option<u64>,
    pub max_amount: Option<u64>,
    pub reference: Option<wallex_engine::Reference>,
    /// The description contains this text, case-insensitively (at least 3 characters).
    pub description: Option<String>,
    /// One metadata entry, key and value.
    pub metadata: Option<(String, String)>,
    pub before: Option<EntryCursor>,
}

/// How a wallet search is ordered; ties (and `Id`) go by wallet id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WalletOrder {
    #[default]
    Id,
    CreatedAt,
    Balance,
}

/// Where a page of wallets ends: for `Id` the wallet id alone, else the sort key and the wallet id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalletCursor {
    /// The sort key: creation time in microseconds, or the balance in minor units (0 for `Id`).
    pub key: i64,
    pub wallet_id: WalletId,
}

/// A search of the wallets (`GET /wallets`): every filter optional, all that are given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalletFilter {
    pub owner_id: Option<wallex_engine::OwnerId>,
    pub currency: Option<wallex_engine::Currency>,
    /// Balance bounds in minor units of `currency` (required with them), inclusive.
    pub min_balance: Option<i64>,
    pub max_balance: Option<i64>,
    /// `created_at >= created_from`.
    pub created_from: Option<Timestamp>,
    /// `created_at < created_to`.
    pub created_to: Option<Timestamp>,
    /// One entry of the creation's metadata, key and value.
    pub metadata: Option<(String, String)>,
    pub order: WalletOrder,
    pub descending: bool,
    pub after: Option<WalletCursor>,
}

impl WalletFilter {
    /// The sort key of `view` under this filter's order.
    pub fn key(&self, view: &WalletView) -> i64 {
        match self.order {
            WalletOrder::Id => 0,
            WalletOrder::CreatedAt => i64::try_from(view.created_at.unix_micros()).unwrap_or(i64::MAX),
            WalletOrder::Balance => view.balance,
        }
    }

    /// Whether `view` passes every filter (the cursor aside).
    pub fn admits(&self, view: &WalletView) -> bool {
        let created = view.created_at;
        self.owner_id.is_none_or(|owner| view.owner_id == owner)
            && self.currency.is_none_or(|currency| view.currency == currency)
            && self.min_balance.is_none_or(|min| view.balance >= min)
            && self.max_balance.is_none_or(|max| view.balance <= max)
            && self.created_from.is_none_or(|from| created >= from)
            && self.created_to.is_none_or(|to| created < to)
            && self.metadata.as_ref().is_none_or(|(key, value)| view.memo.metadata.get(key) == Some(value.as_str()))
    }
}

impl EntryFilter {
    /// Whether `entry` passes every filter (the cursor aside).
    pub fn admits(&self, entry: &LedgerEntry) -> bool {
        let contains = |needle: &str| {
            entry.description.as_deref().is_some_and(|text| text.to_lowercase().contains(&needle.to_lowercase()))
        };
        self.wallet_id.is_none_or(|wallet| entry.wallet_id == wallet)
            && (self.entry_types.is_empty() || self.entry_types.contains(&entry.entry_type.as_str()))
            && self.from.is_none_or(|from| entry.at >= from)
            && self.to.is_none_or(|to| entry.at < to)
            && self.currency.is_none_or(|currency| entry.currency == currency)
            && self.min_amount.is_none_or(|min| entry.amount >= min)
            && self.max_amount.is_none_or(|max| entry.amount <= max)
            && self.reference.as_ref().is_none_or(|reference| entry.memo.reference.as_ref() == Some(reference))
            && self.description.as_deref().is_none_or(contains)
            && self.metadata.as_ref().is_none_or(|(key, value)| entry.memo.metadata.get(key) == Some(value.as_str()))
    }
}

/// A wallet's ledger in sums, kept by the ledger projection as it writes entries (never computed
/// by scanning them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalletSummary {
    pub wallet_id: WalletId,
    pub currency: wallex_engine::Currency,
    /// Minor units credited and debited over the wallet's life (its opening balance is a credit).
    pub total_credits: u64,
    pub total_debits: u64,
    /// Ledger entries: movements of money (holds placed or released move none).
    pub transaction_count: u64,
    /// The version of the newest entry.
    pub last_version: u64,
}

impl WalletSummary {
    /// The summary after `entry` (a new one for the wallet's first).
    pub fn after(previous: Option<WalletSummary>, entry: &LedgerEntry) -> WalletSummary {
        let mut summary = previous.unwrap_or(WalletSummary {
            wallet_id: entry.wallet_id,
            currency: entry.currency,
            total_credits: 0,
            total_debits: 0,
            transaction_count: 0,
            last_version: 0,
        });
        match entry.direction {
            Direction::Credit => summary.total_credits += entry.amount,
            Direction::Debit => summary.total_debits += entry.amount,
        }
        summary.transaction_count += 1;
        summary.last_version = summary.last_version.max(entry.version);
        summary
    }

    /// What `entries` (ledger entries in version order, of any wallets) add to each wallet's
    /// summary: one row per wallet, with the entries' sums (a store adds them to its row).
    pub fn deltas(entries: &[LedgerEntry]) -> Vec<WalletSummary> {
        let mut deltas: std::collections::BTreeMap<WalletId, WalletSummary> = std::collections::BTreeMap::new();
        for entry in entries {
            let previous = deltas.remove(&entry.wallet_id);
            deltas.insert(entry.wallet_id, WalletSummary::after(previous, entry));
        }
        deltas.into_values().collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Credit,
    Debit,
}

/// The read side: projections and the queries over them.
pub trait ProjectionStore: Clone + Send + Sync + 'static {
    /// Applies `events` to `projection` in one transaction, each only if it is its wallet's next
    /// version, and returns the verdict per event, in order.
    fn project(
        &self,
        projection: Projection,
        events: &[Event],
    ) -> impl Future<Output = Result<Vec<Applied>, StoreError>> + Send;

    /// The version of `wallet_id` that `projection` has applied (0 if none).
    fn projected_version(
        &self,
        projection: Projection,
        wallet_id: &WalletId,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The versions of `wallets` that `projection` has applied (0 for none), in the same order.
    fn projected_versions(
        &self,
        projection: Projection,
        wallets: &[WalletId],
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    fn wallet(&self, wallet_id: &WalletId) -> impl Future<Output = Result<Option<WalletView>, StoreError>> + Send;

    /// A wallet's ledger entries, newest first, with versions below `before` (all when `None`).
    fn ledger_entries(
        &self,
        wallet_id: &WalletId,
        before: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LedgerEntry>, StoreError>> + Send;

    /// The ledger entries of transactions with `reference`, newest first (by transaction, then
    /// wallet), at most `limit`; index-backed.
    fn entries_by_reference(
        &self,
        reference: &wallex_engine::Reference,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LedgerEntry>, StoreError>> + Send;

    /// One ledger entry by its wallet and version.
    fn ledger_entry(
        &self,
        wallet_id: &WalletId,
        version: u64,
    ) -> impl Future<Output = Result<Option<LedgerEntry>, StoreError>> + Send;

    /// The entries `filter` admits, newest first (by time, transaction, wallet), after its cursor,
    /// at most `limit`; every filter is index-backed.
    fn search_entries(
        &self,
        filter: &EntryFilter,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LedgerEntry>, StoreError>> + Send;

    /// The wallets `filter` admits, in its order, after its cursor, at most `limit`; every filter
    /// is index-backed.
    fn search_wallets(
        &self,
        filter: &WalletFilter,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<WalletView>, StoreError>> + Send;

    /// The wallet's summary as the ledger projection keeps it (`None` before its first entry).
    fn wallet_summary(
        &self,
        wallet_id: &WalletId,
    ) -> impl Future<Output = Result<Option<WalletSummary>, StoreError>> + Send;
}

/// A keyed message for the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusMessage {
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// A message as a consumer receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub partition: u32,
    pub offset: u64,
    pub key: String,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bus: {0}")]
pub struct BusError(pub String);

/// The message bus: keyed publishing with acknowledgements, and consumer groups.
pub trait Bus: Clone + Send + Sync + 'static {
    type Consumer: Consumer;

    /// Publishes `messages` to the events topic, keyed; per message, whether the broker
    /// acknowledged it. Messages with the same key are acknowledged in order.
    fn publish(&self, messages: &[BusMessage]) -> impl Future<Output = Vec<Result<(), BusError>>> + Send;

    /// The partition of the events topic that messages keyed `key` go to. `publish` must send
    /// them there: the relay publishes each partition on its own, so a partition that is down
    /// stalls only its own keys.
    fn partition(&self, key: &str) -> u32;

    /// Publishes a message the consumers could not process to the dead-letter topic.
    fn publish_dead_letter(&self, message: BusMessage) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Joins consumer group `group` on the events topic.
    fn consumer(&self, group: &str) -> impl Future<Output = Result<Self::Consumer, BusError>> + Send;

    /// How many messages of the events topic `group` has not committed yet, over all partitions.
    fn lag(&self, group: &str) -> impl Future<Output = Result<u64, BusError>> + Send;
}

/// One member of a consumer group. Deliveries resume after the group's committed offsets.
pub trait Consumer: Send + 'static {
    /// Waits up to `timeout_ms` for at least one message; returns at most `max`.
    fn poll(&mut self, max: usize, timeout_ms: u64) -> impl Future<Output = Result<Vec<Delivery>, BusError>> + Send;

    /// Commits, per partition, the offset of the next message to consume.
    fn commit(&mut self, offsets: &[(u32, u64)]) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// The time, for the pipeline: wall-clock in production, simulated in the simulator.
pub trait Clock: Clone + Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

impl WalletView {
    /// The read model's wallet after `event`: a new view for `WalletCreated`, else `previous`
    /// updated. `None` if the event cannot apply (no previous view for a non-creation event).
    pub fn after(previous: Option<&WalletView>, event: &Event) -> Option<WalletView> {
        let mut view = match (&event.kind, previous) {
            (wallex_engine::EventKind::WalletCreated { owner_id, overdraft_limit }, _) => WalletView {
                wallet_id: event.wallet_id,
                owner_id: *owner_id,
                currency: event.currency,
                balance: 0,
                held: 0,
                overdraft_limit: overdraft_limit.minor(),
                version: 0,
                created_at: event.at,
                updated_at: event.at,
                memo: event.memo.clone(),
            },
            (_, Some(previous)) => previous.clone(),
            (_, None) => return None,
        };
        view.balance = event.balance_after;
        view.held = event.held_after;
        #[cfg(madsim)]
        if wallex_engine::planted::is_planted(wallex_engine::planted::Bug::ReadModelHeldZero) {
            view.held = 0;
        }
        view.version = event.version;
        view.updated_at = event.at;
        Some(view)
    }
}

impl LedgerEntry {
    /// The wallet's side of the event's posting, if it moved money.
    pub fn of(event: &Event) -> Option<LedgerEntry> {
        let posting = event.posting?;
        let this = wallex_engine::Account::Wallet(event.wallet_id);
        let (direction, counterparty) = if posting.destination == this {
            (Direction::Credit, posting.source)
        } else {
            (Direction::Debit, posting.destination)
        };
        Some(LedgerEntry {
            wallet_id: event.wallet_id,
            transaction_id: event.transaction_id,
            version: event.version,
            entry_type: event.kind.name().to_owned(),
            direction,
            amount: posting.amount.minor(),
            balance_after: event.balance_after,
            currency: event.currency,
            counterparty: counterparty.to_string(),
            description: event.description.as_ref().map(|description| description.as_str().to_owned()),
            at: event.at,
            memo: event.memo.clone(),
        })
    }
}

/// What one `project` call writes, decided in memory from the current checkpoints (and, for the
/// read model, the current rows) of the wallets it touches. Every store applies a plan the same way:
/// read those rows, plan, write the changed rows and checkpoints in one transaction. So the
/// next-version rule lives here once, and a batch costs a few statements instead of a few per event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectionPlan {
    /// One verdict per event, in order.
    pub verdicts: Vec<Applied>,
    /// Read model: each touched wallet's row after the batch.
    pub views: Vec<WalletView>,
    /// Ledger: the new entries, in event order.
    pub entries: Vec<LedgerEntry>,
    /// Each touched wallet's projected version after the batch. A store keeps it in the
    /// projection's own rows: the read model's `version`, the ledger's summary row.
    pub checkpoints: Vec<(WalletId, u64)>,
    /// Ledger: what the batch adds to each touched wallet's summary (zero sums for a wallet it
    /// gave no entry), with the wallet's projected version after the batch.
    pub summaries: Vec<(WalletSummary, u64)>,
}

impl ProjectionPlan {
    /// Plans `events` for `projection`, given each wallet's projected version and (read model) row.
    /// Errors if an event cannot apply to a row that should exist.
    pub fn new(
        projection: Projection,
        events: &[Event],
        mut checkpoints: std::collections::BTreeMap<WalletId, u64>,
        mut views: std::collections::BTreeMap<WalletId, WalletView>,
    ) -> Result<ProjectionPlan, StoreError> {
        let mut plan = ProjectionPlan { verdicts: Vec::with_capacity(events.len()), ..ProjectionPlan::default() };
        let mut touched = std::collections::BTreeMap::new();
        for event in events {
            let projected = checkpoints.get(&event.wallet_id).copied().unwrap_or(0);
            let verdict = if event.version <= projected {
                Applied::Duplicate
            } else if event.version > projected + 1 {
                Applied::Gap { projected_version: projected }
            } else {
                match projection {
                    Projection::ReadModel => {
                        let view = WalletView::after(views.get(&event.wallet_id), event)
                            .ok_or_else(|| StoreError::Refused(format!("no wallet {} to update", event.wallet_id)))?;
                        views.insert(event.wallet_id, view);
                    }
                    Projection::Ledger => plan.entries.extend(LedgerEntry::of(event)),
                }
                checkpoints.insert(event.wallet_id, event.version);
                touched.insert(event.wallet_id, event.currency);
                Applied::Projected
            };
            plan.verdicts.push(verdict);
        }
        let mut deltas: std::collections::BTreeMap<WalletId, WalletSummary> =
            WalletSummary::deltas(&plan.entries).into_iter().map(|delta| (delta.wallet_id, delta)).collect();
        for (wallet_id, currency) in touched {
            let version = checkpoints[&wallet_id];
            plan.checkpoints.push((wallet_id, version));
            match projection {
                Projection::ReadModel => {
                    let view = views.remove(&wallet_id).expect("a projected wallet has a row");
                    debug_assert_eq!(view.version, version, "the read model's row is its checkpoint");
                    plan.views.push(view);
                }
                Projection::Ledger => {
                    let delta = deltas.remove(&wallet_id).unwrap_or(WalletSummary {
                        wallet_id,
                        currency,
                        total_credits: 0,
                        total_debits: 0,
                        transaction_count: 0,
                        last_version: 0,
                    });
                    plan.summaries.push((delta, version));
                }
            }
        }
        Ok(plan)
    }

    /// The distinct wallets `events` touch, in order: what a store reads before planning.
    pub fn wallets(events: &[Event]) -> Vec<WalletId> {
        let set: std::collections::BTreeSet<WalletId> = events.iter().map(|event| event.wallet_id).collect();
        set.into_iter().collect()
    }
}

/// What an API key may do: `read` the GET routes; `write` move money out of its own wallets
/// (debits, transfers, holds); `mint` bring money in or extend trust (credits, initial balances,
/// overdraft limits); `admin` everything, keys included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Write,
    Mint,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Mint, Scope::Admin];

    pub const fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Mint => "mint",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.name() == name)
    }

    /// Scopes as stored and shown: their names, comma-separated (`read,write`).
    pub fn list(scopes: &[Scope]) -> String {
        scopes.iter().map(|scope| scope.name()).collect::<Vec<_>>().join(",")
    }
}

/// An API key as stored: its id, what it may do, and the SHA-256 of its secret, never the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// Public: printed by `wallex keys list`, written in logs and audit records.
    pub id: String,
    pub name: Option<String>,
    /// In `Scope` order, no duplicates.
    pub scopes: Vec<Scope>,
    /// The only owner whose wallets the key sees and moves; `None`: every owner's.
    pub owner_id: Option<wallex_engine::OwnerId>,
    pub secret_hash: [u8; 32],
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    /// When a request first authenticated with it (audited once, on whichever instance saw it).
    pub first_used_at: Option<Timestamp>,
}

impl ApiKey {
    /// Whether the key has `scope`: `admin` has every scope.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|held| *held == scope || *held == Scope::Admin)
    }
}

/// One entry of the append-only audit trail: who (a key's id, never its secret) did what to what,
/// under which request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Assigned by the store, in append order; ignored when appending.
    pub id: u64,
    pub at: Timestamp,
    /// The acting key; `None`: the command line, or a server in development mode.
    pub actor: Option<String>,
    /// What happened: `key_created`, `key_revoked`, `key_first_used`, `admin_request`.
    pub action: String,
    /// What it happened to: a key's id, a route.
    pub target: Option<String>,
    /// The request's correlation id, when a request did it.
    pub request_id: Option<String>,
    pub detail: Option<String>,
}

/// Where API keys live: in the ledger's own store, so every instance sees a revocation.
pub trait KeyStore: Clone + Send + Sync + 'static {
    /// Stores a new key; `Refused` if its id exists.
    fn create_key(&self, key: &ApiKey) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The key with this id, revoked or not.
    fn api_key(&self, id: &str) -> impl Future<Output = Result<Option<ApiKey>, StoreError>> + Send;

    /// Every key, by id.
    fn api_keys(&self) -> impl Future<Output = Result<Vec<ApiKey>, StoreError>> + Send;

    /// Revokes the key at `at`; `false` if there is no such key or it was revoked already.
    fn revoke_key(&self, id: &str, at: Timestamp) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records the key's first use at `at`; `true` only for the call that recorded it, so that of
    /// several instances exactly one audits it.
    fn mark_key_used(&self, id: &str, at: Timestamp) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Appends `record` to the audit trail (its `id` is assigned here). Nothing updates or deletes
    /// the trail: the SQL stores refuse both by trigger.
    fn append_audit(&self, record: &AuditRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// At most `limit` audit records with ids below `before` (all, without it), newest first.
    fn audit_records(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send;
}
