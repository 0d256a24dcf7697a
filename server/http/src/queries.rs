//! `Queries`: the reads the handlers make of the store, and nothing more.
//!
//! Handlers are generic over this port rather than over the pipeline's `EventStore +
//! ProjectionStore`, so the API cannot reach a write (commands go through the `CommandSender`
//! alone), and a test can stand a few canned answers in for a whole store. Every store the
//! pipeline runs on answers these through the blanket impl below.

use std::future::Future;

use wallex_engine::{Event, Reference, Timestamp, WalletId};
use wallex_pipeline::ports::{
    EntryFilter, EventStore, LedgerEntry, ProjectionStore, StoreError, WalletFilter, WalletSummary, WalletView,
};

/// The store reads behind the API's GET routes.
pub trait Queries: Send + Sync + 'static {
    /// A wallet as the read model shows it (`GET /wallets/{id}`).
    fn wallet(&self, wallet_id: &WalletId) -> impl Future<Output = Result<Option<WalletView>, StoreError>> + Send;

    /// The wallets a search admits, in its order (`GET /wallets`).
    fn search_wallets(
        &self,
        filter: &WalletFilter,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<WalletView>, StoreError>> + Send;

    /// The ledger entries a search admits, newest first (`GET /ledger/transactions`).
    fn search_entries(
        &self,
        filter: &EntryFilter,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LedgerEntry>, StoreError>> + Send;

    /// A wallet's ledger entries, newest first, with versions below `before` (`GET /ledger/wallet/{id}`).
    fn ledger_entries(
        &self,
        wallet_id: &WalletId,
        before: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LedgerEntry>, StoreError>> + Send;

    /// The version of `wallet_id` the ledger projection has applied (0 if none): how far a ledger
    /// read is behind the wallet's committed version.
    fn ledger_version(&self, wallet_id: &WalletId) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// A wallet's events with versions in `from..=to` (`/wallets/{id}/events` and `/balance`).
    fn wallet_events(
        &self,
        wallet_id: &WalletId,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// The entries of a reference's transactions, newest first (`GET /ledger/reference/{id}`).
    fn entries_by_reference(
        &self,
        reference: &Reference,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LedgerEntry>, StoreError>> + Send;

    /// One ledger entry (a summary's newest).
    fn ledger_entry(
        &self,
        wallet_id: &WalletId,
        version: u64,
    ) -> impl Future<Output = Result<Option<LedgerEntry>, StoreError>> + Send;

    /// The wallet's summary as the ledger projection keeps it (`GET /ledger/wallet/{id}/summary`).
    fn wallet_summary(
        &self,
        wallet_id: &WalletId,
    ) -> impl Future<Output = Result<Option<WalletSummary>, StoreError>> + Send;

    /// How many outbox messages are unpublished, and when the oldest was committed (health, metrics).
    fn outbox_backlog(&self) -> impl Future<Output = Result<(u64, Option<Timestamp>), StoreError>> + Send;

    /// Whether the store answers at all, by the cheapest read there is (readiness).
    fn reachable(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl<S: EventStore + ProjectionStore> Queries for S {
    fn wallet(&self, wallet_id: &WalletId) -> impl Future<Output = Result<Option<WalletView>, StoreError>> + Send {
        ProjectionStore::wallet(self, wallet_id)
    }

    fn search_wallets(
        &self,
        filter: &WalletFilter,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<WalletView>, StoreError>> + Send {
        ProjectionStore::search_wallets(self, filter, limit)
    }

    fn search_entries(
        &self,
        filter: &EntryFilter,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LedgerEntry>, StoreError>> + Send {
        ProjectionStore::search_entries(self, filter, limit)
    }

    fn ledger_entries(
        &self,
        wallet_id: &WalletId,
        before: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LedgerEntry>, StoreError>> + Send {
        ProjectionStore::ledger_entries(self, wallet_id, before, limit)
    }

    fn ledger_version(&self, wallet_id: &WalletId) -> impl Future<Output = Result<u64, StoreError>> + Send {
        ProjectionStore::projected_version(self, wallex_pipeline::ports::Projection::Ledger, wallet_id)
    }

    fn wallet_events(
        &self,
        wallet_id: &WalletId,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send {
        EventStore::wallet_events(self, wallet_id, from, to)
    }

    fn entries_by_reference(
        &self,
        reference: &Reference,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LedgerEntry>, StoreError>> + Send {
        ProjectionStore::entries_by_reference(self, reference, limit)
    }

    fn ledger_entry(
        &self,
        wallet_id: &WalletId,
        version: u64,
    ) -> impl Future<Output = Result<Option<LedgerEntry>, StoreError>> + Send {
        ProjectionStore::ledger_entry(self, wallet_id, version)
    }

    fn wallet_summary(
        &self,
        wallet_id: &WalletId,
    ) -> impl Future<Output = Result<Option<WalletSummary>, StoreError>> + Send {
        ProjectionStore::wallet_summary(self, wallet_id)
    }

    fn outbox_backlog(&self) -> impl Future<Output = Result<(u64, Option<Timestamp>), StoreError>> + Send {
        EventStore::outbox_backlog(self)
    }

    async fn reachable(&self) -> Result<(), StoreError> {
        // One primary-key lookup; the id need not exist.
        let probe = WalletId::parse("health-probe").expect("a valid wallet id");
        ProjectionStore::projected_version(self, wallex_pipeline::ports::Projection::ReadModel, &probe)
            .await
            .map(|_| ())
    }
}
