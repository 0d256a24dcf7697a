//! The writer's core: every decision of the single writer, and no IO.
//!
//! Like quinn-proto's `Connection`, it performs no IO whatsoever and never awaits. Its driver feeds
//! it inputs (`handle_*`, with the time where the time matters) and carries out what it asks for
//! (`poll_io`: look these records up, commit this batch, read the journal, wait), handing each
//! answer back; replies leave through `poll_reply`. The core is generic over the reply handle `T`
//! (a oneshot sender in the driver, a number in tests) and never touches it beyond handing it back.
//!
//! One batch at a time: `handle_batch` starts one when the core is idle, and the core is idle again
//! once `poll_io` returns `None`. At most one IO is outstanding at any moment, and every answer must
//! be to the IO that was asked for (the core asserts it).
//!
//! When a commit fails, or its outcome is unknown, the core does not guess. Its ledger may now be
//! ahead of the store, so it reloads the ledger from the store (snapshot plus journal), answers
//! those of the batch's commands the store has from the store, and decides the rest again (a
//! bounded number of times, then answers "unavailable": not applied, retry with the same key).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use wallex_engine::{
    Command, CommandId, CommandKind, CommandRecord, Event, Hold, HoldId, Ledger, Outcome, Timestamp, TransactionId,
    Wallet, WalletId,
};

use super::recovery::{Recovery, RecoveryError, RecoveryStep};
use super::{Reply, SYSTEM_COMMAND_TAG, WriterConfig};
use crate::codec::encode_event;
use crate::ports::{CommitBatch, Epoch, JournalEntry, OutboxMessage, OutboxPosition, StoreError, StoredSnapshot};
#[cfg(madsim)]
use wallex_engine::planted::{Bug, is_planted as planted};

/// What the core needs done. Each has one answer, through the `handle_*` method named beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Io {
    /// The stored records of commands whose ids the engine forgot, if their keys are live
    /// (`EventStore::command_records`) → [`WriterCore::handle_records`].
    LookUpRecords { ids: Vec<CommandId>, not_before: Timestamp },
    /// The events of committed transactions, to answer retries with their original events: every
    /// retry waiting for an answer, in one read (`EventStore::transaction_events`), so a burst of
    /// duplicates costs one round trip, not one each → [`WriterCore::handle_transactions`].
    ReadTransactions(Vec<TransactionId>),
    /// Make [`WriterCore::batch`] durable in one store transaction → [`WriterCore::handle_commit`].
    Commit,
    /// Reload: the latest snapshot → [`WriterCore::handle_snapshot_loaded`].
    LoadSnapshot,
    /// Reload: journal entries after `after` → [`WriterCore::handle_journal`].
    ReadJournal { after: TransactionId, limit: usize },
    /// Back off for `ms` milliseconds → [`WriterCore::handle_wait_over`].
    Wait { ms: u64 },
}

/// Which IO is outstanding, to pair every answer with its question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    Records,
    Transactions,
    Commit,
    LoadSnapshot,
    Journal,
    Wait,
}

/// A command waiting for its decision, and where its answer goes (none for the writer's own).
#[derive(Debug)]
struct Pending<T> {
    command: Command,
    reply: Option<T>,
}

/// A command decided in the current batch: its record and its events' range in the batch.
#[derive(Debug)]
struct Decided<T> {
    pending: Pending<T>,
    record: CommandRecord,
    events: Range<usize>,
}

/// Why a batch is being decided again, and how often it has been.
#[derive(Debug)]
struct Retry {
    attempt: u32,
    last_error: String,
}

#[derive(Debug)]
enum Phase<T> {
    Idle,
    /// The ids the engine forgot are being looked up; `retry` is set after a failed commit.
    LookingUp {
        now: Timestamp,
        pending: Vec<Pending<T>>,
        ids: Vec<CommandId>,
        retry: Option<Retry>,
    },
    Committing {
        decided: Vec<Decided<T>>,
        attempt: u32,
    },
    /// After a failed commit: the ledger is rebuilt from the store before anything else.
    Reloading {
        recovery: Box<Recovery>,
        pending: Vec<Pending<T>>,
        retry: Retry,
    },
    /// A reload read failed: wait, then start the reload again.
    ReloadBackoff {
        pending: Vec<Pending<T>>,
        retry: Retry,
    },
    /// Reloaded and resolved: wait, then decide what is left again, at `now`.
    DecideBackoff {
        now: Timestamp,
        pending: Vec<Pending<T>>,
        retry: Retry,
    },
}

/// The single writer's decisions, without IO.
#[derive(Debug)]
pub struct WriterCore<T> {
    config: WriterConfig,
    ledger: Ledger,
    phase: Phase<T>,
    /// Retries of committed commands, each answered with its original events read from the
    /// journal; served before the phase's own IO.
    /// The flag says whether the answer is a replay (`false`: the first answer to a command of a
    /// batch whose commit outcome was unknown, found committed after the reload).
    replays: VecDeque<(CommandRecord, T, bool)>,
    /// The retries whose events are being read (`Io::ReadTransactions`).
    replaying: VecDeque<(CommandRecord, T, bool)>,
    asked: Option<Asked>,
    replies: VecDeque<(T, Reply)>,
    /// The batch being committed; reused between batches.
    batch: CommitBatch,
    /// The last transaction the store is known to hold: no fresh answer names a later one.
    committed_through: TransactionId,
    /// The retention clock's reading for the current batch (see [`crate::RetentionClock`]); the
    /// batch's own time when unset.
    keys_now: Option<Timestamp>,
    /// Set when a commit was fenced off: the lease passed to this later epoch, and this core
    /// decides nothing more.
    deposed: Option<Epoch>,
}

impl<T> WriterCore<T> {
    /// A core over `ledger`, which must equal the store (as [`super::recover`] returns it).
    pub fn new(config: WriterConfig, ledger: Ledger) -> WriterCore<T> {
        let committed_through = ledger.last_transaction_id();
        WriterCore {
            config,
            ledger,
            phase: Phase::Idle,
            replays: VecDeque::new(),
            replaying: VecDeque::new(),
            asked: None,
            replies: VecDeque::new(),
            batch: CommitBatch::default(),
            committed_through,
            keys_now: None,
            deposed: None,
        }
    }

    /// The writer lease's epoch this core decides under; every batch names it, and the store
    /// commits none whose epoch is no longer current.
    pub fn set_epoch(&mut self, epoch: Epoch) {
        self.batch.epoch = epoch;
    }

    /// The later epoch a commit was fenced off by, if one was: the lease has passed to another
    /// writer, and this core's commands are all answered unavailable (not applied; retry there).
    pub fn deposed(&self) -> Option<Epoch> {
        self.deposed
    }

    /// No batch in flight and nothing left to do: the ledger equals the committed state.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle) && self.replays.is_empty() && self.asked.is_none()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The ledger holds only committed transactions: no batch is decided and waiting to commit.
    pub fn holds_committed_state(&self) -> bool {
        !matches!(self.phase, Phase::Committing { .. })
    }

    /// Rebuilding the ledger from the store after a failed commit.
    pub fn is_reloading(&self) -> bool {
        matches!(self.phase, Phase::Reloading { .. } | Phase::ReloadBackoff { .. })
    }

    pub fn into_ledger(self) -> Ledger {
        self.ledger
    }

    /// The wallet after every acknowledged command. Only between batches, where the ledger holds
    /// exactly the committed state.
    pub fn wallet(&self, wallet_id: &WalletId) -> Option<&Wallet> {
        assert!(self.is_idle(), "a write-side read during a batch would see uncommitted state");
        self.ledger.wallet(wallet_id)
    }

    /// The hold after every acknowledged command; only between batches.
    pub fn hold(&self, hold_id: &HoldId) -> Option<&Hold> {
        assert!(self.is_idle(), "a write-side read during a batch would see uncommitted state");
        self.ledger.hold(hold_id)
    }

    /// How long the driver may wait for commands before a hold lapses (then call `handle_batch`,
    /// with no commands, to release it). `None`: no hold waits to lapse.
    pub fn until_next_expiry_micros(&self, now: Timestamp) -> Option<u64> {
        let now = self.time(now);
        self.ledger.next_hold_expiry().map(|expires_at| expires_at.unix_micros().saturating_sub(now.unix_micros()))
    }

    /// The writer's one notion of time: the clock's reading, never before what the ledger has
    /// recorded. A clock that steps back must not make a hold the ledger counts as lapsed look
    /// live to the writer (it would keep reserving funds no capture can take).
    fn time(&self, now: Timestamp) -> Timestamp {
        now.max(self.ledger.clock())
    }

    /// The batch to make durable when `poll_io` said [`Io::Commit`].
    pub fn batch(&self) -> &CommitBatch {
        assert_eq!(self.asked, Some(Asked::Commit), "no commit was asked for");
        &self.batch
    }

    /// The next answer ready to leave.
    pub fn poll_reply(&mut self) -> Option<(T, Reply)> {
        self.replies.pop_front()
    }

    /// The retention clock's reading for the next batches: which stored idempotency keys are
    /// still live is judged by it when it is earlier than the batch's time.
    pub fn set_keys_now(&mut self, keys_now: Timestamp) {
        self.keys_now = Some(keys_now);
    }

    /// Starts a batch at `now` with `commands` (and the writer's own `ExpireHolds` if a hold has
    /// lapsed). The core must be idle.
    pub fn handle_batch(&mut self, now: Timestamp, commands: impl IntoIterator<Item = (Command, T)>) {
        assert!(self.is_idle(), "a batch started while another is in flight");
        let now = self.time(now);
        let mut pending: Vec<Pending<T>> =
            commands.into_iter().map(|(command, reply)| Pending { command, reply: Some(reply) }).collect();
        if let Some(current) = self.deposed {
            for pending in pending {
                self.unavailable(pending, not_the_writer(current));
            }
            return;
        }
        if self.ledger.next_hold_expiry().is_some_and(|expires_at| expires_at <= now) {
            let id = CommandId(SYSTEM_COMMAND_TAG | u128::from(self.ledger.last_transaction_id().next().0));
            pending.push(Pending { command: Command::new(id, CommandKind::ExpireHolds), reply: None });
        }
        if !pending.is_empty() {
            self.look_up(now, pending, None);
        }
    }

    /// The next IO to carry out; `None` while one is outstanding, or when the batch is done.
    pub fn poll_io(&mut self) -> Option<Io> {
        if self.asked.is_some() {
            return None;
        }
        let (asked, io) = if !self.replays.is_empty() && self.replaying.is_empty() {
            // Every retry queued so far, in one read; those queued while it runs wait for the next.
            self.replaying = std::mem::take(&mut self.replays);
            let mut ids: Vec<TransactionId> =
                self.replaying.iter().map(|(record, _, _)| record.transaction_id).collect();
            ids.sort_unstable();
            ids.dedup();
            (Asked::Transactions, Io::ReadTransactions(ids))
        } else {
            match &mut self.phase {
                Phase::Idle => return None,
                Phase::LookingUp { now, ids, .. } => {
                    // Keys are live for the retention as the retention clock counts it, which a
                    // wall clock that stepped ahead (even across a restart) cannot hurry.
                    let keys_now = self.keys_now.map_or(*now, |keys_now| keys_now.min(*now));
                    let not_before = Timestamp::from_unix_micros(
                        keys_now.unix_micros().saturating_sub(self.config.idempotency_retention_micros),
                    );
                    (Asked::Records, Io::LookUpRecords { ids: ids.clone(), not_before })
                }
                Phase::Committing { .. } => (Asked::Commit, Io::Commit),
                Phase::Reloading { recovery, .. } => match recovery.poll() {
                    RecoveryStep::LoadSnapshot => (Asked::LoadSnapshot, Io::LoadSnapshot),
                    RecoveryStep::ReadJournal { after, limit } => (Asked::Journal, Io::ReadJournal { after, limit }),
                    RecoveryStep::Done => unreachable!("a finished reload leaves the reloading phase"),
                },
                Phase::ReloadBackoff { .. } | Phase::DecideBackoff { .. } => {
                    (Asked::Wait, Io::Wait { ms: self.config.retry_backoff_ms })
                }
            }
        };
        self.asked = Some(asked);
        Some(io)
    }

    /// The answer to [`Io::LookUpRecords`].
    pub fn handle_records(&mut self, result: Result<Vec<CommandRecord>, StoreError>) {
        self.answered(Asked::Records);
        let Phase::LookingUp { now, pending, ids, retry } = std::mem::replace(&mut self.phase, Phase::Idle) else {
            unreachable!("records are asked for only while looking up")
        };
        let stored: BTreeMap<CommandId, CommandRecord> = match result {
            Ok(records) => records.into_iter().map(|record| (record.command_id, record)).collect(),
            Err(error) => {
                // Without the lookup a retry might apply twice: do not decide these now.
                let (unknown, known): (Vec<_>, Vec<_>) =
                    pending.into_iter().partition(|pending| ids.contains(&pending.command.id));
                for pending in unknown {
                    self.unavailable(pending, error.to_string());
                }
                return self.looked_up(now, known, retry);
            }
        };
        if stored.values().any(|record| record.transaction_id > self.committed_through) {
            // The store holds transactions this writer never saw: a commit of an earlier writer
            // (a process that was killed) landed after this one recovered. The ledger is stale:
            // reload it, then answer and decide on the store's state.
            tracing::warn!(committed_through = %self.committed_through, "the store is ahead of the writer; reloading");
            let last_error = "the store holds transactions this writer has not seen".to_owned();
            let retry = retry.unwrap_or(Retry { attempt: 0, last_error });
            self.phase = Phase::Reloading { recovery: self.recovery(), pending, retry };
            return;
        }
        let mut kept = Vec::with_capacity(pending.len());
        for pending in pending {
            match stored.get(&pending.command.id) {
                Some(record) => self.resolve(*record, pending, true),
                None => kept.push(pending),
            }
        }
        self.looked_up(now, kept, retry);
    }

    /// The answer to [`Io::ReadTransactions`]: the events of the transactions asked for, in order.
    pub fn handle_transactions(&mut self, result: Result<Vec<Event>, StoreError>) {
        self.answered(Asked::Transactions);
        let replaying = std::mem::take(&mut self.replaying);
        let mut by_transaction: BTreeMap<TransactionId, Vec<Event>> = BTreeMap::new();
        let failed = match result {
            Ok(events) => {
                for event in events {
                    by_transaction.entry(event.transaction_id).or_default().push(event);
                }
                None
            }
            Err(error) => Some(error.to_string()),
        };
        for (record, reply, replayed) in replaying {
            let answer = match (&failed, by_transaction.get(&record.transaction_id)) {
                // Not "unavailable": that would say the command was not applied, and it was.
                (Some(error), _) => Reply::Unconfirmed { record, reason: error.clone() },
                (None, Some(events)) => Reply::Decided { record, events: events.clone(), replayed },
                // Every accepted command has events: none is a store that lost them.
                (None, None) => Reply::Unconfirmed {
                    record,
                    reason: format!("transaction {} is missing from the journal", record.transaction_id),
                },
            };
            self.reply(reply, answer);
        }
    }

    /// The answer to [`Io::Commit`].
    pub fn handle_commit(&mut self, result: Result<(), StoreError>) {
        self.answered(Asked::Commit);
        let Phase::Committing { decided, attempt } = std::mem::replace(&mut self.phase, Phase::Idle) else {
            unreachable!("a commit is asked for only while committing")
        };
        match result {
            Ok(()) => {
                metrics::histogram!("wallex_group_commit_commands").record(self.batch.records.len() as f64);
                // Two registry lookups per commit, not one per command.
                let accepted = self.batch.records.iter().filter(|record| record.result.is_ok()).count();
                let rejected = self.batch.records.len() - accepted;
                metrics::counter!("wallex_commands_total", "outcome" => "accepted").increment(accepted as u64);
                metrics::counter!("wallex_commands_total", "outcome" => "rejected").increment(rejected as u64);
                self.committed_through = self.batch.records.last().expect("a commit holds a record").transaction_id;
                assert_eq!(self.committed_through, self.ledger.last_transaction_id(), "the batch is the ledger's tail");
                for Decided { pending, record, events } in decided {
                    if let Some(reply) = pending.reply {
                        let events = self.batch.events[events].to_vec();
                        self.reply(reply, Reply::Decided { record, events, replayed: false });
                    }
                }
            }
            Err(StoreError::Fenced { current }) => {
                // Nothing was written, and nothing this core decides may ever be: the lease has
                // passed on. Every command waiting here is answered "unavailable" (not applied),
                // and its client retries, with the same key, on the writer that holds the lease.
                metrics::counter!("wallex_writer_fenced_total").increment(1);
                tracing::warn!(%current, batch = decided.len(), "group commit fenced off: another writer holds the lease");
                self.deposed = Some(current);
                for decided in decided {
                    self.unavailable(decided.pending, not_the_writer(current));
                }
                for (_, reply, _) in std::mem::take(&mut self.replays) {
                    self.reply(reply, Reply::Unavailable(not_the_writer(current)));
                }
            }
            Err(error) => {
                metrics::counter!("wallex_group_commit_failures_total").increment(1);
                tracing::warn!(attempt, batch = decided.len(), %error, "group commit failed; reloading from the store");
                let pending = decided.into_iter().map(|decided| decided.pending).collect();
                self.phase = Phase::Reloading {
                    recovery: self.recovery(),
                    pending,
                    retry: Retry { attempt, last_error: error.to_string() },
                };
            }
        }
    }

    /// The answer to [`Io::LoadSnapshot`]; `now` is the time the reload may finish at.
    pub fn handle_snapshot_loaded(&mut self, now: Timestamp, result: Result<Option<StoredSnapshot>, StoreError>) {
        self.answered(Asked::LoadSnapshot);
        self.reload_step(now, result.map_err(RecoveryError::from), |recovery, snapshot| {
            recovery.handle_snapshot(snapshot)
        });
    }

    /// The answer to [`Io::ReadJournal`]; `now` is the time the reload may finish at.
    pub fn handle_journal(&mut self, now: Timestamp, result: Result<Vec<JournalEntry>, StoreError>) {
        self.answered(Asked::Journal);
        self.reload_step(now, result.map_err(RecoveryError::from), |recovery, entries| {
            recovery.handle_journal(&entries)
        });
    }

    /// The end of an [`Io::Wait`].
    pub fn handle_wait_over(&mut self) {
        self.answered(Asked::Wait);
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::ReloadBackoff { pending, retry } => {
                self.phase = Phase::Reloading { recovery: self.recovery(), pending, retry };
            }
            Phase::DecideBackoff { now, pending, retry } => self.decide(now, pending, retry.attempt + 1),
            _ => unreachable!("a wait is asked for only while backing off"),
        }
    }

    fn answered(&mut self, asked: Asked) {
        assert_eq!(self.asked.take(), Some(asked), "an answer to a question the core did not ask");
    }

    fn recovery(&self) -> Box<Recovery> {
        Box::new(Recovery::new(self.config.engine(), self.config.journal_page))
    }

    /// Asks the store about the ids in `pending` the engine no longer remembers (the store keeps
    /// idempotency records longer than the engine), or decides at once if there are none.
    fn look_up(&mut self, now: Timestamp, pending: Vec<Pending<T>>, retry: Option<Retry>) {
        let ids: Vec<CommandId> = pending
            .iter()
            .map(|pending| pending.command.id)
            .filter(|id| self.ledger.command(id, now).is_none())
            .collect();
        #[cfg(madsim)]
        let ids = if planted(Bug::IdempotencyLookupSkipped) { Vec::new() } else { ids };
        if ids.is_empty() {
            self.looked_up(now, pending, retry);
        } else {
            self.phase = Phase::LookingUp { now, pending, ids, retry };
        }
    }

    /// After the lookup: decide what the store did not know. Decisions use the time the ids were
    /// looked up at, so an id the engine remembered then is still remembered when it decides (time
    /// moves during a lookup).
    fn looked_up(&mut self, now: Timestamp, pending: Vec<Pending<T>>, retry: Option<Retry>) {
        match retry {
            None => self.decide(now, pending, 1),
            Some(_) if pending.is_empty() => self.phase = Phase::Idle,
            Some(retry) if retry.attempt >= self.config.commit_attempts => {
                for pending in pending {
                    metrics::counter!("wallex_commands_total", "outcome" => "unavailable").increment(1);
                    self.unavailable(pending, retry.last_error.clone());
                }
                self.phase = Phase::Idle;
            }
            Some(retry) => self.phase = Phase::DecideBackoff { now, pending, retry },
        }
    }

    /// Runs every pending command through the engine into the batch. Answers at once the ones that
    /// change nothing (reused ids, ids already in this batch); queues retries of committed commands
    /// to be answered from the journal; commits the rest.
    fn decide(&mut self, now: Timestamp, pending: Vec<Pending<T>>, attempt: u32) {
        self.batch.clear();
        let first = self.ledger.last_transaction_id().next();
        assert_eq!(self.ledger.last_transaction_id(), self.committed_through, "deciding on uncommitted state");
        let mut decided = Vec::with_capacity(pending.len());
        let mut events = Vec::new();
        for pending in pending {
            let before = events.len();
            match self.ledger.execute(now, &pending.command, &mut events) {
                Outcome::Recorded(record) => {
                    self.batch.records.push(record);
                    for (index, event) in events[before..].iter().enumerate() {
                        self.batch.outbox.push(OutboxMessage {
                            position: OutboxPosition {
                                transaction_id: record.transaction_id,
                                index: u32::try_from(index).expect("few events per transaction"),
                            },
                            key: event.wallet_id,
                            payload: encode_event(event),
                            committed_at: record.at,
                        });
                    }
                    decided.push(Decided { pending, record, events: before..events.len() });
                }
                Outcome::Duplicate(original) => {
                    if self.batch.records.iter().any(|record| record.command_id == original.command_id) {
                        if let Some(reply) = pending.reply {
                            self.reply(reply, Reply::InFlight);
                        }
                    } else {
                        self.replay(original, pending.reply, true);
                    }
                }
                Outcome::KeyReused { original } => {
                    if let Some(reply) = pending.reply {
                        self.reply(reply, Reply::KeyReused { original });
                    }
                }
            }
        }
        self.batch.events = events;
        if self.batch.is_empty() {
            self.phase = Phase::Idle;
            return;
        }
        // A batch's transactions are contiguous and follow the last committed one.
        for (offset, record) in self.batch.records.iter().enumerate() {
            assert_eq!(record.transaction_id.0, first.0 + offset as u64, "transaction ids of a batch are contiguous");
        }
        #[cfg(madsim)]
        if planted(Bug::AckBeforeCommit) {
            for decided in &mut decided {
                if let Some(reply) = decided.pending.reply.take() {
                    let events = self.batch.events[decided.events.clone()].to_vec();
                    self.replies.push_back((reply, Reply::Decided { record: decided.record, events, replayed: false }));
                }
            }
        }
        self.phase = Phase::Committing { decided, attempt };
    }

    /// One step of a reload. Done: resolve the failed batch from the reloaded ledger. A store
    /// error: back off and reload again. A journal that cannot be replayed: stop the writer.
    fn reload_step<A>(
        &mut self,
        now: Timestamp,
        answer: Result<A, RecoveryError>,
        apply: impl FnOnce(&mut Recovery, A) -> Result<(), RecoveryError>,
    ) {
        let Phase::Reloading { mut recovery, pending, retry } = std::mem::replace(&mut self.phase, Phase::Idle) else {
            unreachable!("recovery reads are asked for only while reloading")
        };
        match answer.and_then(|answer| apply(&mut recovery, answer)) {
            Ok(()) if recovery.poll() == RecoveryStep::Done => {
                self.ledger = (*recovery).into_ledger();
                self.committed_through = self.ledger.last_transaction_id();
                self.resolve_reloaded(now, pending, retry);
            }
            Ok(()) => self.phase = Phase::Reloading { recovery, pending, retry },
            Err(RecoveryError::Store(error)) => {
                tracing::warn!(%error, "reload from the store failed; retrying");
                self.phase = Phase::ReloadBackoff { pending, retry };
            }
            Err(RecoveryError::Corrupt(reason)) => {
                tracing::error!(%reason, "stored state cannot be replayed; the writer stops");
                panic!("stored state cannot be replayed: {reason}");
            }
        }
    }

    /// After a reload: the commands of the failed batch that the store has anyway (the commit
    /// happened) are answered from it; the others are looked up (the reload may have taken longer
    /// than the engine remembers ids), then decided again.
    fn resolve_reloaded(&mut self, now: Timestamp, pending: Vec<Pending<T>>, retry: Retry) {
        let mut remaining = Vec::with_capacity(pending.len());
        for pending in pending {
            match self.ledger.command(&pending.command.id, now).copied() {
                // Committed by the very commit whose outcome was unknown: the first answer.
                Some(record) => self.resolve(record, pending, false),
                None => remaining.push(pending),
            }
        }
        self.look_up(now, remaining, Some(retry));
    }

    /// Answers `pending` from a record the store holds under its id: the original answer if the
    /// content matches, else the key was reused.
    fn resolve(&mut self, record: CommandRecord, pending: Pending<T>, replayed: bool) {
        if record.fingerprint == pending.command.fingerprint() {
            self.replay(record, pending.reply, replayed);
        } else if let Some(reply) = pending.reply {
            self.reply(reply, Reply::KeyReused { original: record });
        }
    }

    /// The original answer to a command committed earlier: a rejection at once (it has no events),
    /// an acceptance once its events are read back from the journal.
    fn replay(&mut self, record: CommandRecord, reply: Option<T>, replayed: bool) {
        match (record.result, reply) {
            (_, None) => {}
            (Err(_), Some(reply)) => self.reply(reply, Reply::Decided { record, events: Vec::new(), replayed }),
            (Ok(()), Some(reply)) => self.replays.push_back((record, reply, replayed)),
        }
    }

    fn unavailable(&mut self, pending: Pending<T>, reason: String) {
        if let Some(reply) = pending.reply {
            self.reply(reply, Reply::Unavailable(reason));
        }
    }

    fn reply(&mut self, reply: T, answer: Reply) {
        if let Reply::Decided { record, .. } = &answer {
            // No answer names a transaction the store does not hold yet.
            assert!(record.transaction_id <= self.committed_through, "a reply before its batch committed");
        }
        self.replies.push_back((reply, answer));
    }
}

/// Why a deposed writer refuses a command.
fn not_the_writer(current: Epoch) -> String {
    format!("this instance no longer holds the writer lease (now epoch {current}): retry")
}
