//! The in-memory store: the same transactional semantics and constraints as the durable ones, with
//! fault switches (`MemoryStore::fail_commits`) so tests can drive the pipeline's failure paths
//! deterministically. It holds nothing across a process restart, so it serves tests, benches, the
//! conformance suite and the simulator; no release binary links it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use wallex_engine::{CommandId, CommandRecord, Event, TransactionId, WalletId};
use wallex_pipeline::ports::{
    ApiKey, Applied, AuditRecord, CommitBatch, EntryCursor, EntryFilter, Epoch, EventStore, JournalEntry, KeyStore,
    Lease, LedgerEntry, OutboxMessage, OutboxPosition, Projection, ProjectionPlan, ProjectionStore, StoreError,
    StoredSnapshot, WalletFilter, WalletSummary, WalletView,
};

/// How an injected commit failure behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitFault {
    /// Nothing is written and the commit reports `Unavailable`.
    Lost,
    /// Everything is written, but the commit reports `Unavailable` (the reply was lost).
    Ambiguous,
}

#[derive(Debug, Default)]
struct StoreState {
    records: BTreeMap<TransactionId, CommandRecord>,
    /// Live idempotency keys.
    keys: BTreeMap<CommandId, TransactionId>,
    events: BTreeMap<TransactionId, Vec<Event>>,
    streams: BTreeMap<(WalletId, u64), TransactionId>,
    outbox: BTreeMap<OutboxPosition, OutboxMessage>,
    snapshot: Option<StoredSnapshot>,
    read_side: ReadSide,
    api_keys: BTreeMap<String, ApiKey>,
    /// The audit trail, in append order (ids from 1).
    audit: Vec<AuditRecord>,
    faults: Vec<CommitFault>,
    commits: u64,
    /// The writer lease: its epoch (0 until first taken), holder, address and when it lapses.
    lease: Option<(Epoch, String, String, tokio::time::Instant)>,
    /// Every commit accepted under an epoch that was not the lease's: (the commit's number, its
    /// epoch, the lease's). What the simulator's fencing checker reads; empty unless the fence
    /// is broken, so no commit pays for a record.
    stale_commits: Vec<(u64, Epoch, Epoch)>,
}

/// A store in memory, with PostgreSQL's constraints: command ids and `(wallet, version)` unique,
/// each batch all or nothing.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<StoreState>>,
    /// Held (by `pause_commits`) to make every commit wait: a store that has stopped answering.
    commit_gate: Arc<tokio::sync::RwLock<()>>,
}

/// Commits wait while this lives (see [`MemoryStore::pause_commits`]).
#[derive(Debug)]
pub struct CommitPause(#[allow(dead_code)] tokio::sync::OwnedRwLockWriteGuard<()>);

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, StoreState> {
        self.state.lock().expect("the memory store's lock is never poisoned")
    }

    /// The next `faults.len()` commits fail as described, in order.
    pub fn fail_commits(&self, faults: &[CommitFault]) {
        self.lock().faults.extend_from_slice(faults);
    }

    /// Every commit from now on waits, without answering, until the returned pause is dropped.
    pub async fn pause_commits(&self) -> CommitPause {
        CommitPause(self.commit_gate.clone().write_owned().await)
    }

    /// Successful and ambiguous commits so far.
    pub fn commits(&self) -> u64 {
        self.lock().commits
    }

    /// Every committed event, in commit order.
    pub fn all_events(&self) -> Vec<Event> {
        self.lock().events.values().flatten().cloned().collect()
    }

    /// Every commit accepted under an epoch that was not the lease's at that moment: (the
    /// commit's number from 1, its epoch, the lease's epoch). Empty while the fence holds.
    pub fn stale_commits(&self) -> Vec<(u64, Epoch, Epoch)> {
        self.lock().stale_commits.clone()
    }

    /// How many outbox messages are not yet marked published.
    pub fn unpublished(&self) -> usize {
        self.lock().outbox.len()
    }
}

fn refuse(reason: String) -> Result<(), StoreError> {
    Err(StoreError::Refused(reason))
}

impl EventStore for MemoryStore {
    async fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        drop(self.commit_gate.read().await);
        let mut state = self.lock();
        let fault = if state.faults.is_empty() { None } else { Some(state.faults.remove(0)) };
        if fault == Some(CommitFault::Lost) {
            return Err(StoreError::Unavailable("injected: connection lost before commit".to_owned()));
        }
        // The fence, checked with the batch's other constraints in the same critical section (the
        // same transaction, on PostgreSQL): only the lease's current epoch commits.
        let current = state.lease.as_ref().map_or(Epoch(0), |lease| lease.0);
        #[cfg(madsim)]
        let checked = !wallex_engine::planted::is_planted(wallex_engine::planted::Bug::CommitWithoutEpochCheck);
        #[cfg(not(madsim))]
        let checked = true;
        if checked && batch.epoch != current {
            return Err(StoreError::Fenced { current });
        }
        // Check every constraint before writing anything: all or nothing.
        for record in &batch.records {
            if state.records.contains_key(&record.transaction_id) {
                return refuse(format!("duplicate transaction {}", record.transaction_id));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for event in &batch.events {
            let key = (event.wallet_id, event.version);
            if state.streams.contains_key(&key) || !seen.insert(key) {
                return refuse(format!("duplicate version {} of stream {}", event.version, event.wallet_id));
            }
        }
        for record in &batch.records {
            state.records.insert(record.transaction_id, *record);
            state.keys.insert(record.command_id, record.transaction_id);
        }
        for event in &batch.events {
            state.streams.insert((event.wallet_id, event.version), event.transaction_id);
            state.events.entry(event.transaction_id).or_default().push(event.clone());
        }
        for message in &batch.outbox {
            state.outbox.insert(message.position, message.clone());
        }
        state.commits += 1;
        if batch.epoch != current {
            let commit = state.commits;
            state.stale_commits.push((commit, batch.epoch, current));
        }
        match fault {
            Some(CommitFault::Ambiguous) => Err(StoreError::Unavailable("injected: reply to COMMIT lost".to_owned())),
            _ => Ok(()),
        }
    }

    async fn acquire_lease(&self, holder: &str, address: &str, lease_ms: u64) -> Result<Option<Lease>, StoreError> {
        let now = tokio::time::Instant::now();
        let mut state = self.lock();
        let epoch = match &state.lease {
            Some((_, held_by, _, expires)) if *expires > now && held_by != holder => return Ok(None),
            Some((epoch, ..)) => *epoch,
            None => Epoch(0),
        };
        let epoch = Epoch(epoch.0 + 1);
        let expires = now + std::time::Duration::from_millis(lease_ms);
        state.lease = Some((epoch, holder.to_owned(), address.to_owned(), expires));
        Ok(Some(Lease { epoch, holder: holder.to_owned(), address: address.to_owned(), remaining_ms: lease_ms }))
    }

    async fn renew_lease(&self, epoch: Epoch, lease_ms: u64) -> Result<bool, StoreError> {
        let now = tokio::time::Instant::now();
        let mut state = self.lock();
        match &mut state.lease {
            Some((current, _, _, expires)) if *current == epoch => {
                *expires = now + std::time::Duration::from_millis(lease_ms);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn lease(&self) -> Result<Option<Lease>, StoreError> {
        let now = tokio::time::Instant::now();
        Ok(self.lock().lease.as_ref().map(|(epoch, holder, address, expires)| Lease {
            epoch: *epoch,
            holder: holder.clone(),
            address: address.clone(),
            remaining_ms: u64::try_from(expires.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX),
        }))
    }

    async fn release_lease(&self, epoch: Epoch) -> Result<(), StoreError> {
        let now = tokio::time::Instant::now();
        if let Some((current, _, _, expires)) = &mut self.lock().lease
            && *current == epoch
        {
            *expires = now;
        }
        Ok(())
    }

    async fn latest_snapshot(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        Ok(self.lock().snapshot.clone())
    }

    async fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), StoreError> {
        let mut state = self.lock();
        if state.snapshot.as_ref().is_none_or(|kept| kept.transaction_id < snapshot.transaction_id) {
            state.snapshot = Some(snapshot.clone());
        }
        Ok(())
    }

    async fn journal(&self, after: TransactionId, limit: usize) -> Result<Vec<JournalEntry>, StoreError> {
        let state = self.lock();
        let after = TransactionId(after.0.saturating_add(1));
        Ok(state
            .records
            .range(after..)
            .take(limit)
            .map(|(id, record)| JournalEntry {
                record: *record,
                events: state.events.get(id).cloned().unwrap_or_default(),
            })
            .collect())
    }

    async fn transaction_events(&self, ids: &[TransactionId]) -> Result<Vec<Event>, StoreError> {
        let state = self.lock();
        let ids: std::collections::BTreeSet<TransactionId> = ids.iter().copied().collect();
        Ok(ids.iter().filter_map(|id| state.events.get(id)).flatten().cloned().collect())
    }

    async fn command_records(
        &self,
        ids: &[CommandId],
        not_before: wallex_engine::Timestamp,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        let state = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| state.keys.get(id))
            .map(|tx| state.records[tx])
            .filter(|record| record.at >= not_before)
            .collect())
    }

    async fn forget_idempotency_keys(&self, before: wallex_engine::Timestamp, limit: usize) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let StoreState { keys, records, .. } = &mut *state;
        let mut expired: Vec<(wallex_engine::Timestamp, CommandId)> =
            keys.iter().map(|(id, tx)| (records[tx].at, *id)).filter(|(at, _)| *at < before).collect();
        expired.sort_unstable();
        expired.truncate(limit);
        for (_, id) in &expired {
            keys.remove(id);
        }
        Ok(expired.len() as u64)
    }

    async fn outbox_after(
        &self,
        after: Option<OutboxPosition>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let state = self.lock();
        let messages = match after {
            Some(after) => state
                .outbox
                .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                .take(limit)
                .map(|(_, message)| message.clone())
                .collect(),
            None => state.outbox.values().take(limit).cloned().collect(),
        };
        Ok(messages)
    }

    async fn mark_published(&self, through: OutboxPosition) -> Result<(), StoreError> {
        let mut state = self.lock();
        let kept = state
            .outbox
            .split_off(&OutboxPosition { transaction_id: through.transaction_id, index: through.index + 1 });
        state.outbox = kept;
        Ok(())
    }

    async fn outbox_backlog(&self) -> Result<(u64, Option<wallex_engine::Timestamp>), StoreError> {
        let state = self.lock();
        Ok((state.outbox.len() as u64, state.outbox.values().next().map(|message| message.committed_at)))
    }

    async fn stream_heads(
        &self,
        after: TransactionId,
        through: TransactionId,
    ) -> Result<Vec<(WalletId, u64)>, StoreError> {
        let state = self.lock();
        let mut heads: BTreeMap<WalletId, u64> = BTreeMap::new();
        if through > after {
            for events in state.events.range(TransactionId(after.0 + 1)..=through).map(|(_, events)| events) {
                for event in events {
                    let head = heads.entry(event.wallet_id).or_default();
                    *head = (*head).max(event.version);
                }
            }
        }
        Ok(heads.into_iter().collect())
    }

    async fn wallet_events(&self, wallet_id: &WalletId, from: u64, to: u64) -> Result<Vec<Event>, StoreError> {
        let state = self.lock();
        Ok(state
            .streams
            .range((*wallet_id, from)..=(*wallet_id, to))
            .filter_map(|((_, version), tx)| {
                state.events.get(tx)?.iter().find(|event| event.wallet_id == *wallet_id && event.version == *version)
            })
            .cloned()
            .collect())
    }
}

impl ProjectionStore for MemoryStore {
    async fn project(&self, projection: Projection, events: &[Event]) -> Result<Vec<Applied>, StoreError> {
        let mut state = self.lock();
        let plan = state.read_side.plan(projection, events)?;
        let verdicts = plan.verdicts.clone();
        state.read_side.write_checkpoints(projection, &plan);
        state.read_side.write_rows(plan);
        Ok(verdicts)
    }

    async fn projected_version(&self, projection: Projection, wallet_id: &WalletId) -> Result<u64, StoreError> {
        Ok(self.lock().read_side.projected_version(projection, wallet_id))
    }

    async fn projected_versions(&self, projection: Projection, wallets: &[WalletId]) -> Result<Vec<u64>, StoreError> {
        let state = self.lock();
        Ok(wallets.iter().map(|wallet| state.read_side.projected_version(projection, wallet)).collect())
    }

    async fn wallet(&self, wallet_id: &WalletId) -> Result<Option<WalletView>, StoreError> {
        Ok(self.lock().read_side.wallets.get(wallet_id).cloned())
    }

    async fn ledger_entries(
        &self,
        wallet_id: &WalletId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        Ok(self.lock().read_side.list_ledger_entries(wallet_id, before, limit))
    }

    async fn entries_by_reference(
        &self,
        reference: &wallex_engine::Reference,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        Ok(self.lock().read_side.entries_by_reference(reference, limit))
    }

    async fn ledger_entry(&self, wallet_id: &WalletId, version: u64) -> Result<Option<LedgerEntry>, StoreError> {
        Ok(self.lock().read_side.ledger.get(&(*wallet_id, version)).cloned())
    }

    async fn wallet_summary(&self, wallet_id: &WalletId) -> Result<Option<WalletSummary>, StoreError> {
        Ok(self.lock().read_side.summaries.get(wallet_id).cloned())
    }

    async fn search_entries(&self, filter: &EntryFilter, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        Ok(self.lock().read_side.search_entries(filter, limit))
    }

    async fn search_wallets(&self, filter: &WalletFilter, limit: usize) -> Result<Vec<WalletView>, StoreError> {
        Ok(self.lock().read_side.search_wallets(filter, limit))
    }
}

impl KeyStore for MemoryStore {
    async fn create_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let mut state = self.lock();
        if state.api_keys.contains_key(&key.id) {
            return Err(StoreError::Refused(format!("key {} exists", key.id)));
        }
        state.api_keys.insert(key.id.clone(), key.clone());
        Ok(())
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        Ok(self.lock().api_keys.get(id).cloned())
    }

    async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        Ok(self.lock().api_keys.values().cloned().collect())
    }

    async fn revoke_key(&self, id: &str, at: wallex_engine::Timestamp) -> Result<bool, StoreError> {
        let mut state = self.lock();
        match state.api_keys.get_mut(id) {
            Some(key) if key.revoked_at.is_none() => {
                key.revoked_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn mark_key_used(&self, id: &str, at: wallex_engine::Timestamp) -> Result<bool, StoreError> {
        let mut state = self.lock();
        match state.api_keys.get_mut(id) {
            Some(key) if key.first_used_at.is_none() => {
                key.first_used_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let mut state = self.lock();
        let id = u64::try_from(state.audit.len()).expect("fits") + 1;
        state.audit.push(AuditRecord { id, ..record.clone() });
        Ok(())
    }

    async fn audit_records(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let state = self.lock();
        let before = before.unwrap_or(u64::MAX);
        Ok(state.audit.iter().rev().filter(|record| record.id < before).take(limit).cloned().collect())
    }
}

/// The read side's tables in memory (checkpoints, read model, ledger entries) and their queries:
/// the memory store's, and the simulated store's, which writes checkpoints and rows separately when
/// a bug is planted.
#[derive(Debug, Default)]
pub struct ReadSide {
    pub checkpoints: BTreeMap<(Projection, WalletId), u64>,
    pub wallets: BTreeMap<WalletId, WalletView>,
    pub ledger: BTreeMap<(WalletId, u64), LedgerEntry>,
    pub summaries: BTreeMap<WalletId, WalletSummary>,
}

impl ReadSide {
    /// Plans `events` for `projection` against the current checkpoints and rows.
    pub fn plan(&self, projection: Projection, events: &[Event]) -> Result<ProjectionPlan, StoreError> {
        let wallets = ProjectionPlan::wallets(events);
        let checkpoints = wallets
            .iter()
            .filter_map(|id| self.checkpoints.get(&(projection, *id)).map(|version| (*id, *version)))
            .collect();
        let views = wallets.iter().filter_map(|id| self.wallets.get(id).map(|view| (*id, view.clone()))).collect();
        ProjectionPlan::new(projection, events, checkpoints, views)
    }

    pub fn write_checkpoints(&mut self, projection: Projection, plan: &ProjectionPlan) {
        for (wallet_id, version) in &plan.checkpoints {
            self.checkpoints.insert((projection, *wallet_id), *version);
        }
    }

    pub fn write_rows(&mut self, plan: ProjectionPlan) {
        for view in plan.views {
            self.wallets.insert(view.wallet_id, view);
        }
        for entry in plan.entries {
            let previous = self.summaries.remove(&entry.wallet_id);
            self.summaries.insert(entry.wallet_id, WalletSummary::after(previous, &entry));
            self.ledger.insert((entry.wallet_id, entry.version), entry);
        }
    }

    pub fn projected_version(&self, projection: Projection, wallet_id: &WalletId) -> u64 {
        self.checkpoints.get(&(projection, *wallet_id)).copied().unwrap_or(0)
    }

    /// The entries of transactions with `reference`, newest first (by transaction, then wallet).
    pub fn entries_by_reference(&self, reference: &wallex_engine::Reference, limit: usize) -> Vec<LedgerEntry> {
        let mut found: Vec<&LedgerEntry> =
            self.ledger.values().filter(|entry| entry.memo.reference.as_ref() == Some(reference)).collect();
        found.sort_by_key(|entry| std::cmp::Reverse((entry.transaction_id, entry.wallet_id)));
        found.into_iter().take(limit).cloned().collect()
    }

    /// The entries `filter` admits, newest first (by time, transaction, wallet), after its cursor.
    pub fn search_entries(&self, filter: &EntryFilter, limit: usize) -> Vec<LedgerEntry> {
        let mut found: Vec<&LedgerEntry> = self
            .ledger
            .values()
            .filter(|entry| filter.admits(entry))
            .filter(|entry| filter.before.is_none_or(|before| EntryCursor::of(entry) < before))
            .collect();
        found.sort_by_key(|entry| std::cmp::Reverse(EntryCursor::of(entry)));
        found.into_iter().take(limit).cloned().collect()
    }

    /// The wallets `filter` admits, in its order, after its cursor.
    pub fn search_wallets(&self, filter: &WalletFilter, limit: usize) -> Vec<WalletView> {
        let position = |view: &WalletView| (filter.key(view), view.wallet_id);
        let mut found: Vec<&WalletView> = self
            .wallets
            .values()
            .filter(|view| filter.admits(view))
            .filter(|view| {
                filter.after.is_none_or(|after| {
                    let cursor = (after.key, after.wallet_id);
                    if filter.descending { position(view) < cursor } else { position(view) > cursor }
                })
            })
            .collect();
        found.sort_by_key(|view| position(view));
        if filter.descending {
            found.reverse();
        }
        found.into_iter().take(limit).cloned().collect()
    }

    /// A wallet's ledger entries, newest first, with versions below `before`.
    pub fn list_ledger_entries(&self, wallet_id: &WalletId, before: Option<u64>, limit: usize) -> Vec<LedgerEntry> {
        let before = before.unwrap_or(u64::MAX);
        self.ledger.range((*wallet_id, 0)..(*wallet_id, before)).rev().take(limit).map(|(_, e)| e.clone()).collect()
    }
}
