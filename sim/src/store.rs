//! The simulated store: a node that owns the durable state, and the client the app node uses to
//! reach it over the simulated network (the `EventStore` and `ProjectionStore` ports).
//!
//! The write side is the server's `MemoryStore`, which has the PostgreSQL schema's constraints
//! (unique transaction ids, unique `(wallet, version)`) and applies each batch all or nothing. It
//! lives in the seed's world, so it survives the node's restarts; a request the node was handling
//! when it crashed is lost with it. A commit may also be ambiguous: applied, and its reply lost.
//! The read side keeps its own tables here, applied through the pipeline's `ProjectionPlan`, and
//! logs every applied event for the ordering checker.

use std::sync::Arc;
use std::time::Duration;

use madsim::net::Endpoint;
use madsim::rand::{Rng, thread_rng};
use wallex_engine::planted::Bug;
use wallex_engine::{CommandId, CommandRecord, Event, Timestamp, TransactionId, WalletId};
use wallex_pipeline::ports::{
    Applied, CommitBatch, EntryFilter, Epoch, EventStore, JournalEntry, Lease, LedgerEntry, OutboxMessage,
    OutboxPosition, Projection, ProjectionPlan, ProjectionStore, StoreError, StoredSnapshot, WalletFilter,
    WalletSummary, WalletView,
};
use wallex_testkit::memory::ReadSide;

use crate::rpc::{self, RpcError, STORE_SERVICE};
use crate::swarm::Link;
use crate::world::{lock, world};

/// How long the app waits for the store before calling the outcome unknown.
const STORE_TIMEOUT: Duration = Duration::from_millis(1_000);

/// The read side's tables, and every event a projection applied, in the order applied (what the
/// ordering checker reads).
#[derive(Debug, Default)]
pub struct ProjectionTables {
    pub tables: ReadSide,
    pub applied: Vec<(Projection, WalletId, u64)>,
}

impl ProjectionTables {
    fn write_checkpoints(&mut self, projection: Projection, events: &[Event], plan: &ProjectionPlan) {
        self.tables.write_checkpoints(projection, plan);
        for (event, verdict) in events.iter().zip(&plan.verdicts) {
            if *verdict == Applied::Projected {
                self.applied.push((projection, event.wallet_id, event.version));
            }
        }
    }
}

/// A request to the store node.
#[derive(Debug)]
enum Request {
    Commit(CommitBatch),
    AcquireLease {
        holder: String,
        address: String,
        lease_ms: u64,
    },
    RenewLease {
        epoch: Epoch,
        lease_ms: u64,
    },
    ReadLease,
    ReleaseLease(Epoch),
    LatestSnapshot,
    SaveSnapshot(StoredSnapshot),
    Journal {
        after: TransactionId,
        limit: usize,
    },
    TransactionEvents(Vec<TransactionId>),
    CommandRecords {
        ids: Vec<CommandId>,
        not_before: Timestamp,
    },
    ForgetKeys {
        before: Timestamp,
        limit: usize,
    },
    OutboxAfter {
        after: Option<OutboxPosition>,
        limit: usize,
    },
    MarkPublished(OutboxPosition),
    OutboxBacklog,
    WalletEvents {
        wallet_id: WalletId,
        from: u64,
        to: u64,
    },
    StreamHeads {
        after: TransactionId,
        through: TransactionId,
    },
    ProjectedVersions {
        projection: Projection,
        wallets: Vec<WalletId>,
    },
    Project {
        projection: Projection,
        events: Vec<Event>,
    },
    /// Planted bug: the checkpoint half of a projection, in its own transaction.
    ProjectCheckpoints {
        projection: Projection,
        events: Vec<Event>,
    },
    /// Planted bug: the rows half, in another.
    ProjectRows(ProjectionPlan),
    ProjectedVersion {
        projection: Projection,
        wallet_id: WalletId,
    },
    Wallet(WalletId),
    LedgerEntries {
        wallet_id: WalletId,
        before: Option<u64>,
        limit: usize,
    },
    EntriesByReference {
        reference: wallex_engine::Reference,
        limit: usize,
    },
    LedgerEntry {
        wallet_id: WalletId,
        version: u64,
    },
    WalletSummary(WalletId),
    SearchEntries {
        filter: EntryFilter,
        limit: usize,
    },
    SearchWallets {
        filter: WalletFilter,
        limit: usize,
    },
}

impl Request {
    fn name(&self) -> &'static str {
        match self {
            Request::Commit(_) => "commit",
            Request::AcquireLease { .. } => "acquire_lease",
            Request::RenewLease { .. } => "renew_lease",
            Request::ReadLease => "read_lease",
            Request::ReleaseLease(_) => "release_lease",
            Request::LatestSnapshot => "latest_snapshot",
            Request::SaveSnapshot(_) => "save_snapshot",
            Request::Journal { .. } => "journal",
            Request::TransactionEvents(_) => "transaction_events",
            Request::CommandRecords { .. } => "command_records",
            Request::ForgetKeys { .. } => "forget_keys",
            Request::OutboxAfter { .. } => "outbox_after",
            Request::MarkPublished(_) => "mark_published",
            Request::OutboxBacklog => "outbox_backlog",
            Request::WalletEvents { .. } => "wallet_events",
            Request::StreamHeads { .. } => "stream_heads",
            Request::ProjectedVersions { .. } => "projected_versions",
            Request::Project { .. } => "project",
            Request::ProjectCheckpoints { .. } => "project_checkpoints",
            Request::ProjectRows(_) => "project_rows",
            Request::ProjectedVersion { .. } => "projected_version",
            Request::Wallet(_) => "wallet",
            Request::LedgerEntries { .. } => "ledger_entries",
            Request::EntriesByReference { .. } => "entries_by_reference",
            Request::LedgerEntry { .. } => "ledger_entry",
            Request::WalletSummary(_) => "wallet_summary",
            Request::SearchEntries { .. } => "search_entries",
            Request::SearchWallets { .. } => "search_wallets",
        }
    }
}

#[derive(Debug)]
enum Response {
    Done(Result<(), StoreError>),
    Lease(Result<Option<Lease>, StoreError>),
    Renewed(Result<bool, StoreError>),
    Snapshot(Result<Option<StoredSnapshot>, StoreError>),
    Journal(Result<Vec<JournalEntry>, StoreError>),
    Records(Result<Vec<CommandRecord>, StoreError>),
    Count(Result<u64, StoreError>),
    Outbox(Result<Vec<OutboxMessage>, StoreError>),
    Backlog(Result<(u64, Option<Timestamp>), StoreError>),
    Events(Result<Vec<Event>, StoreError>),
    Verdicts(Result<Vec<Applied>, StoreError>),
    Plan(Result<ProjectionPlan, StoreError>),
    Version(Result<u64, StoreError>),
    Versions(Result<Vec<u64>, StoreError>),
    StreamHeads(Result<Vec<(WalletId, u64)>, StoreError>),
    Wallet(Result<Option<WalletView>, StoreError>),
    Wallets(Result<Vec<WalletView>, StoreError>),
    Entries(Result<Vec<LedgerEntry>, StoreError>),
    Entry(Result<Option<LedgerEntry>, StoreError>),
    Summary(Result<Option<WalletSummary>, StoreError>),
}

/// The store node's main task: serve until killed.
pub async fn run_node() {
    let endpoint = Arc::new(Endpoint::bind(rpc::store_addr()).await.expect("the store's address is free"));
    world().note(format_args!("store node up"));
    rpc::serve(endpoint, STORE_SERVICE, |request: Request| handle(request)).await;
}

async fn handle(request: Request) -> Option<Response> {
    // Disk latency: a crash during it loses the request, as a crash mid-transaction does.
    let latency_us = thread_rng().gen_range(50..2_000);
    tokio::time::sleep(Duration::from_micros(latency_us)).await;
    let world = world();
    let store = &world.store;
    let response = match request {
        Request::Commit(batch) => {
            if world.chance(world.swarm.late_commit_permille) {
                // The transaction waits (a lock, a stalled disk) past the writer's timeout, which
                // has given up on it and moved on; then it commits, or is refused if the writer
                // has meanwhile committed that transaction itself.
                let first = batch.records.first().map_or(0, |record| record.transaction_id.0);
                world.fault("late_commit", format_args!("tx {first} lands after the writer gave up"));
                tokio::time::sleep(STORE_TIMEOUT + Duration::from_millis(thread_rng().gen_range(1..=3_000))).await;
            }
            let result = store.commit(&batch).await;
            let first = batch.records.first().map_or(0, |record| record.transaction_id.0);
            let last = batch.records.last().map_or(0, |record| record.transaction_id.0);
            match &result {
                Ok(()) => world.note(format_args!("store commit tx {first}..={last} ({} events)", batch.events.len())),
                Err(error) => world.note(format_args!("store commit tx {first}..={last} refused: {error}")),
            }
            if result.is_ok() && world.chance(world.swarm.ambiguous_commit_permille) {
                world.fault("ambiguous_commit", format_args!("tx {first}..={last} committed, reply lost"));
                return None;
            }
            Response::Done(result)
        }
        Request::AcquireLease { holder, address, lease_ms } => {
            let result = store.acquire_lease(&holder, &address, lease_ms).await;
            if let Ok(Some(lease)) = &result {
                world.note(format_args!("store writer lease taken by {holder}: epoch {}", lease.epoch));
            }
            Response::Lease(result)
        }
        Request::RenewLease { epoch, lease_ms } => {
            let result = store.renew_lease(epoch, lease_ms).await;
            if let Ok(false) = result {
                world.note(format_args!("store writer lease renewal of epoch {epoch} refused"));
            }
            Response::Renewed(result)
        }
        Request::ReadLease => Response::Lease(store.lease().await),
        Request::ReleaseLease(epoch) => {
            world.note(format_args!("store writer lease of epoch {epoch} released"));
            Response::Done(store.release_lease(epoch).await)
        }
        Request::LatestSnapshot => Response::Snapshot(store.latest_snapshot().await),
        Request::SaveSnapshot(snapshot) => {
            world.note(format_args!("store snapshot at tx {}", snapshot.transaction_id));
            Response::Done(store.save_snapshot(&snapshot).await)
        }
        Request::Journal { after, limit } => Response::Journal(store.journal(after, limit).await),
        Request::TransactionEvents(ids) => Response::Events(store.transaction_events(&ids).await),
        Request::CommandRecords { ids, not_before } => {
            let result = store.command_records(&ids, not_before).await;
            let found = result.as_ref().map_or(0, Vec::len);
            world.note(format_args!("store idempotency lookup of {} ids: {found} recorded", ids.len()));
            Response::Records(result)
        }
        Request::ForgetKeys { before, limit } => Response::Count(store.forget_idempotency_keys(before, limit).await),
        Request::OutboxAfter { after, limit } => Response::Outbox(store.outbox_after(after, limit).await),
        Request::MarkPublished(through) => {
            world.note(format_args!("store outbox published through {}.{}", through.transaction_id, through.index));
            Response::Done(store.mark_published(through).await)
        }
        Request::OutboxBacklog => Response::Backlog(store.outbox_backlog().await),
        Request::WalletEvents { wallet_id, from, to } => {
            Response::Events(store.wallet_events(&wallet_id, from, to).await)
        }
        Request::StreamHeads { after, through } => {
            let result = store.stream_heads(after, through).await;
            let touched = result.as_ref().map_or(0, Vec::len);
            world.note(format_args!("store journal heads of tx {after}..={through}: {touched} wallets"));
            Response::StreamHeads(result)
        }
        Request::ProjectedVersions { projection, wallets } => {
            let tables = lock(&world.projections);
            Response::Versions(Ok(wallets
                .iter()
                .map(|wallet| tables.tables.projected_version(projection, wallet))
                .collect()))
        }
        Request::Project { projection, events } => {
            let mut tables = lock(&world.projections);
            let result = tables.tables.plan(projection, &events).map(|plan| {
                tables.write_checkpoints(projection, &events, &plan);
                let verdicts = plan.verdicts.clone();
                tables.tables.write_rows(plan);
                verdicts
            });
            trace_projection(projection, &events, &result);
            Response::Verdicts(result)
        }
        Request::ProjectCheckpoints { projection, events } => {
            let mut tables = lock(&world.projections);
            let result = tables.tables.plan(projection, &events).inspect(|plan| {
                tables.write_checkpoints(projection, &events, plan);
            });
            trace_projection(
                projection,
                &events,
                &result.as_ref().map(|plan| plan.verdicts.clone()).map_err(Clone::clone),
            );
            Response::Plan(result)
        }
        Request::ProjectRows(plan) => {
            lock(&world.projections).tables.write_rows(plan);
            Response::Done(Ok(()))
        }
        Request::ProjectedVersion { projection, wallet_id } => {
            Response::Version(Ok(lock(&world.projections).tables.projected_version(projection, &wallet_id)))
        }
        Request::Wallet(wallet_id) => {
            Response::Wallet(Ok(lock(&world.projections).tables.wallets.get(&wallet_id).cloned()))
        }
        Request::LedgerEntries { wallet_id, before, limit } => {
            Response::Entries(Ok(lock(&world.projections).tables.list_ledger_entries(&wallet_id, before, limit)))
        }
        Request::EntriesByReference { reference, limit } => {
            Response::Entries(Ok(lock(&world.projections).tables.entries_by_reference(&reference, limit)))
        }
        Request::LedgerEntry { wallet_id, version } => {
            Response::Entry(Ok(lock(&world.projections).tables.ledger.get(&(wallet_id, version)).cloned()))
        }
        Request::WalletSummary(wallet_id) => {
            Response::Summary(Ok(lock(&world.projections).tables.summaries.get(&wallet_id).cloned()))
        }
        Request::SearchEntries { filter, limit } => {
            Response::Entries(Ok(lock(&world.projections).tables.search_entries(&filter, limit)))
        }
        Request::SearchWallets { filter, limit } => {
            Response::Wallets(Ok(lock(&world.projections).tables.search_wallets(&filter, limit)))
        }
    };
    Some(response)
}

fn trace_projection(projection: Projection, events: &[Event], result: &Result<Vec<Applied>, StoreError>) {
    let world = world();
    match result {
        Ok(verdicts) => {
            let projected = verdicts.iter().filter(|verdict| **verdict == Applied::Projected).count();
            let duplicates = verdicts.iter().filter(|verdict| **verdict == Applied::Duplicate).count();
            let first = events.first().map(|event| format!(" from {}@{}", event.wallet_id, event.version));
            world.note(format_args!(
                "store project {} {} events{}: {projected} applied, {duplicates} duplicate, {} held",
                projection.group(),
                events.len(),
                first.unwrap_or_default(),
                verdicts.len() - projected - duplicates
            ));
        }
        Err(error) => world.note(format_args!("store project {} refused: {error}", projection.group())),
    }
}

/// The app node's handle on the store: every port call is one request under a timeout.
#[derive(Clone)]
pub struct SimStore {
    endpoint: Arc<Endpoint>,
}

impl SimStore {
    pub fn new(endpoint: Arc<Endpoint>) -> SimStore {
        SimStore { endpoint }
    }

    async fn call(&self, request: Request) -> Result<Response, StoreError> {
        let name = request.name();
        let answer =
            rpc::call(&self.endpoint, rpc::store_addr(), STORE_SERVICE, Link::AppStore, name, request, STORE_TIMEOUT);
        answer.await.map_err(|error: RpcError| StoreError::Unavailable(format!("{name}: {error}")))
    }
}

/// Unwraps the expected response variant; anything else is a bug in this file.
macro_rules! expect {
    ($response:expr, $variant:ident) => {
        match $response? {
            Response::$variant(result) => result,
            other => panic!("store answered {other:?} to a {} request", stringify!($variant)),
        }
    };
}

impl EventStore for SimStore {
    async fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        expect!(self.call(Request::Commit(batch.clone())).await, Done)
    }

    async fn acquire_lease(&self, holder: &str, address: &str, lease_ms: u64) -> Result<Option<Lease>, StoreError> {
        let request = Request::AcquireLease { holder: holder.to_owned(), address: address.to_owned(), lease_ms };
        expect!(self.call(request).await, Lease)
    }

    async fn renew_lease(&self, epoch: Epoch, lease_ms: u64) -> Result<bool, StoreError> {
        expect!(self.call(Request::RenewLease { epoch, lease_ms }).await, Renewed)
    }

    async fn lease(&self) -> Result<Option<Lease>, StoreError> {
        expect!(self.call(Request::ReadLease).await, Lease)
    }

    async fn release_lease(&self, epoch: Epoch) -> Result<(), StoreError> {
        expect!(self.call(Request::ReleaseLease(epoch)).await, Done)
    }

    async fn latest_snapshot(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        expect!(self.call(Request::LatestSnapshot).await, Snapshot)
    }

    async fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), StoreError> {
        expect!(self.call(Request::SaveSnapshot(snapshot.clone())).await, Done)
    }

    async fn journal(&self, after: TransactionId, limit: usize) -> Result<Vec<JournalEntry>, StoreError> {
        expect!(self.call(Request::Journal { after, limit }).await, Journal)
    }

    async fn transaction_events(&self, ids: &[TransactionId]) -> Result<Vec<Event>, StoreError> {
        expect!(self.call(Request::TransactionEvents(ids.to_vec())).await, Events)
    }

    async fn command_records(
        &self,
        ids: &[CommandId],
        not_before: Timestamp,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        expect!(self.call(Request::CommandRecords { ids: ids.to_vec(), not_before }).await, Records)
    }

    async fn forget_idempotency_keys(&self, before: Timestamp, limit: usize) -> Result<u64, StoreError> {
        expect!(self.call(Request::ForgetKeys { before, limit }).await, Count)
    }

    async fn outbox_after(
        &self,
        after: Option<OutboxPosition>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        expect!(self.call(Request::OutboxAfter { after, limit }).await, Outbox)
    }

    async fn mark_published(&self, through: OutboxPosition) -> Result<(), StoreError> {
        expect!(self.call(Request::MarkPublished(through)).await, Done)
    }

    async fn outbox_backlog(&self) -> Result<(u64, Option<Timestamp>), StoreError> {
        expect!(self.call(Request::OutboxBacklog).await, Backlog)
    }

    async fn stream_heads(
        &self,
        after: TransactionId,
        through: TransactionId,
    ) -> Result<Vec<(WalletId, u64)>, StoreError> {
        expect!(self.call(Request::StreamHeads { after, through }).await, StreamHeads)
    }

    async fn wallet_events(&self, wallet_id: &WalletId, from: u64, to: u64) -> Result<Vec<Event>, StoreError> {
        expect!(self.call(Request::WalletEvents { wallet_id: *wallet_id, from, to }).await, Events)
    }
}

impl ProjectionStore for SimStore {
    async fn project(&self, projection: Projection, events: &[Event]) -> Result<Vec<Applied>, StoreError> {
        if world().bug == Some(Bug::CheckpointOutsideTransaction) {
            let request = Request::ProjectCheckpoints { projection, events: events.to_vec() };
            let plan = expect!(self.call(request).await, Plan)?;
            let verdicts = plan.verdicts.clone();
            expect!(self.call(Request::ProjectRows(plan)).await, Done)?;
            return Ok(verdicts);
        }
        expect!(self.call(Request::Project { projection, events: events.to_vec() }).await, Verdicts)
    }

    async fn projected_version(&self, projection: Projection, wallet_id: &WalletId) -> Result<u64, StoreError> {
        expect!(self.call(Request::ProjectedVersion { projection, wallet_id: *wallet_id }).await, Version)
    }

    async fn projected_versions(&self, projection: Projection, wallets: &[WalletId]) -> Result<Vec<u64>, StoreError> {
        expect!(self.call(Request::ProjectedVersions { projection, wallets: wallets.to_vec() }).await, Versions)
    }

    async fn wallet(&self, wallet_id: &WalletId) -> Result<Option<WalletView>, StoreError> {
        expect!(self.call(Request::Wallet(*wallet_id)).await, Wallet)
    }

    async fn ledger_entries(
        &self,
        wallet_id: &WalletId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        expect!(self.call(Request::LedgerEntries { wallet_id: *wallet_id, before, limit }).await, Entries)
    }

    async fn entries_by_reference(
        &self,
        reference: &wallex_engine::Reference,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        expect!(self.call(Request::EntriesByReference { reference: reference.clone(), limit }).await, Entries)
    }

    async fn ledger_entry(&self, wallet_id: &WalletId, version: u64) -> Result<Option<LedgerEntry>, StoreError> {
        expect!(self.call(Request::LedgerEntry { wallet_id: *wallet_id, version }).await, Entry)
    }

    async fn wallet_summary(&self, wallet_id: &WalletId) -> Result<Option<WalletSummary>, StoreError> {
        expect!(self.call(Request::WalletSummary(*wallet_id)).await, Summary)
    }

    async fn search_entries(&self, filter: &EntryFilter, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        expect!(self.call(Request::SearchEntries { filter: filter.clone(), limit }).await, Entries)
    }

    async fn search_wallets(&self, filter: &WalletFilter, limit: usize) -> Result<Vec<WalletView>, StoreError> {
        expect!(self.call(Request::SearchWallets { filter: filter.clone(), limit }).await, Wallets)
    }
}

impl std::fmt::Debug for SimStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimStore")
    }
}
