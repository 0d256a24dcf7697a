//! The command processor: the single writer.
//!
//! It owns the `Ledger`. Commands queue on a bounded channel; the processor takes whatever has
//! queued (up to `max_batch`, waiting at most `max_batch_wait_us` for more), decides them all, and
//! makes the batch durable in ONE store transaction (records, events, outbox), then replies. Commits
//! are never concurrent, so a batch forms naturally while the previous one is committing: the
//! busier the service, the larger the batches, the fewer the fsyncs per command.
//!
//! When a commit fails, or its outcome is unknown, the processor does not guess. Its in-memory
//! ledger may now be ahead of the store, so it reloads the ledger from the store (snapshot plus
//! journal), asks the store which of the batch's commands it has, answers those from the store, and
//! decides the rest again (a bounded number of times, then answers "unavailable": not applied, retry
//! with the same key).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use wallex_engine::{
    Command, CommandId, CommandKind, CommandRecord, Event, Hold, Ledger, Outcome, Timestamp, TransactionId, Wallet,
};

use super::codec::encode_event;
use crate::ports::{Clock, CommitBatch, EventStore, OutboxMessage, OutboxPosition, StoreError, StoredSnapshot};
#[cfg(madsim)]
use wallex_engine::planted::{Bug, is_planted as planted};

/// Limits and pacing of the processor; every one has a default.
#[derive(Clone, Copy, Debug)]
pub struct ProcessorConfig {
    pub engine: wallex_engine::Config,
    /// Most commands in one group commit.
    pub max_batch: usize,
    /// How long to wait for more commands once one arrived; 0 commits as soon as the previous
    /// commit returned (batches still form while it runs).
    pub max_batch_wait_us: u64,
    /// Commands that may wait in the queue; beyond it, submitters wait.
    pub queue_depth: usize,
    /// Take a snapshot after this many events since the last one.
    pub snapshot_every_events: u64,
    /// Attempts to make one batch durable before answering "unavailable".
    pub commit_attempts: u32,
    /// Pause between attempts (and between reload attempts), in milliseconds.
    pub retry_backoff_ms: u64,
    /// Journal entries read per page during recovery.
    pub journal_page: usize,
    /// How long the store keeps an idempotency key live, in microseconds (24 h by default). The
    /// engine's own window (`engine.command_retention_micros`) is capped to it.
    pub idempotency_retention_micros: u64,
    /// How often expired idempotency keys are deleted from the store, in milliseconds.
    pub idempotency_cleanup_interval_ms: u64,
}

impl Default for ProcessorConfig {
    fn default() -> ProcessorConfig {
        ProcessorConfig {
            // The engine remembers ids for ten minutes; the store's idempotency records cover the
            // rest of the retention (one lookup per batch for ids the engine has forgotten).
            engine: wallex_engine::Config { command_retention_micros: 10 * 60 * 1_000_000 },
            max_batch: 1_024,
            max_batch_wait_us: 0,
            queue_depth: 16_384,
            snapshot_every_events: 100_000,
            commit_attempts: 5,
            retry_backoff_ms: 50,
            journal_page: 10_000,
            idempotency_retention_micros: 24 * 60 * 60 * 1_000_000,
            idempotency_cleanup_interval_ms: 10 * 60 * 1_000,
        }
    }
}

/// The processor's answer to one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Decided and durable: the command's record and its events (none for a rejection).
    /// `replayed` says the id was seen before and this is the original answer.
    Decided { record: CommandRecord, events: Vec<Event>, replayed: bool },
    /// The id was used before for a command with other content; nothing changed.
    KeyReused { original: CommandRecord },
    /// A command with the same id is being decided right now; nothing changed.
    InFlight,
    /// The store could not make the command durable: it was not applied. Retry with the same id.
    Unavailable(String),
}

enum Request {
    Command {
        command: Command,
        reply: oneshot::Sender<Reply>,
    },
    /// A read of the write side, answered between batches (so it sees every acknowledged command).
    Wallet {
        wallet_id: wallex_engine::WalletId,
        reply: oneshot::Sender<Option<Wallet>>,
    },
    Hold {
        hold_id: wallex_engine::HoldId,
        reply: oneshot::Sender<Option<Hold>>,
    },
}

/// The handle the service layer uses to submit commands. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CommandSender {
    requests: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Command { command, .. } => write!(f, "Command({})", command.id),
            Request::Wallet { wallet_id, .. } => write!(f, "Wallet({wallet_id})"),
            Request::Hold { hold_id, .. } => write!(f, "Hold({hold_id})"),
        }
    }
}

impl CommandSender {
    /// Submits a command and waits for its durable outcome.
    pub async fn submit(&self, command: Command) -> Reply {
        let (reply, answer) = oneshot::channel();
        if self.requests.send(Request::Command { command, reply }).await.is_err() {
            return Reply::Unavailable("the command processor has stopped".to_owned());
        }
        answer.await.unwrap_or_else(|_| Reply::Unavailable("the command processor has stopped".to_owned()))
    }

    /// The hold as the write side knows it, after every command acknowledged so far.
    pub async fn hold(&self, hold_id: wallex_engine::HoldId) -> Option<Option<Hold>> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Hold { hold_id, reply }).await.ok()?;
        answer.await.ok()
    }

    /// The wallet as the write side knows it, after every command acknowledged so far.
    pub async fn wallet(&self, wallet_id: wallex_engine::WalletId) -> Option<Option<Wallet>> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Wallet { wallet_id, reply }).await.ok()?;
        answer.await.ok()
    }
}

/// Ids of the commands the processor issues itself (hold expiry) live in their own range.
pub const SYSTEM_COMMAND_TAG: u128 = 0x5757_0000_0000_0000_0000_0000_0000_0000;

/// Rebuilds the ledger from the store: the latest snapshot, then every journal entry after it.
pub async fn recover<S: EventStore>(
    store: &S,
    config: wallex_engine::Config,
    journal_page: usize,
) -> Result<Ledger, RecoveryError> {
    let mut ledger = match store.latest_snapshot().await? {
        Some(snapshot) => {
            let ledger = Ledger::restore(&snapshot.bytes).map_err(|error| RecoveryError::Corrupt(error.to_string()))?;
            if ledger.last_transaction_id() != snapshot.transaction_id {
                return Err(RecoveryError::Corrupt("snapshot labelled with another transaction".to_owned()));
            }
            ledger
        }
        None => Ledger::new(config),
    };
    #[cfg(madsim)]
    if planted(Bug::RecoveryForgetsJournal) && ledger.last_transaction_id() != TransactionId(0) {
        return Ok(ledger);
    }
    loop {
        let entries = store.journal(ledger.last_transaction_id(), journal_page).await?;
        if entries.is_empty() {
            return Ok(ledger);
        }
        for entry in &entries {
            ledger.replay(&entry.record, &entry.events).map_err(|error| RecoveryError::Corrupt(error.to_string()))?;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored journal or snapshot cannot be replayed: never start on it.
    #[error("stored state cannot be replayed: {0}")]
    Corrupt(String),
}

/// The single writer.
#[derive(Debug)]
pub struct Processor<S, C> {
    store: S,
    clock: C,
    config: ProcessorConfig,
    ledger: Ledger,
    requests: mpsc::Receiver<Request>,
    committed: Arc<Notify>,
    events_since_snapshot: u64,
    /// Reused between batches to avoid reallocating.
    commit: CommitBatch,
}

impl<S: EventStore, C: Clock> Processor<S, C> {
    /// Recovers the ledger from `store` and returns the processor with its sender. `committed` is
    /// notified after every successful commit (the outbox relay waits on it).
    pub async fn start(
        store: S,
        clock: C,
        config: ProcessorConfig,
        committed: Arc<Notify>,
    ) -> Result<(Processor<S, C>, CommandSender), RecoveryError> {
        let mut config = config;
        config.engine.command_retention_micros =
            config.engine.command_retention_micros.min(config.idempotency_retention_micros);
        let ledger = recover(&store, config.engine, config.journal_page).await?;
        let (sender, requests) = mpsc::channel(config.queue_depth.max(1));
        let processor = Processor {
            store,
            clock,
            config,
            ledger,
            requests,
            committed,
            events_since_snapshot: 0,
            commit: CommitBatch::default(),
        };
        Ok((processor, CommandSender { requests: sender }))
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Runs until every sender is dropped, then returns the ledger.
    pub async fn run(mut self) -> Ledger {
        loop {
            let idle = self.until_next_expiry();
            let first = match tokio::time::timeout(idle, self.requests.recv()).await {
                Ok(Some(request)) => Some(request),
                Ok(None) => return self.ledger,
                Err(_elapsed) => None,
            };
            let mut batch = Vec::new();
            batch.extend(first);
            self.gather(&mut batch).await;
            self.process(batch).await;
        }
    }

    /// How long to wait for the next command before releasing lapsed holds.
    fn until_next_expiry(&self) -> Duration {
        const IDLE: Duration = Duration::from_secs(1);
        match self.ledger.next_hold_expiry() {
            Some(expires_at) => {
                let now = self.clock.now().unix_micros();
                Duration::from_micros(expires_at.unix_micros().saturating_sub(now)).min(IDLE)
            }
            None => IDLE,
        }
    }

    /// Adds whatever else is queued, up to `max_batch` commands, waiting up to `max_batch_wait_us`.
    async fn gather(&mut self, batch: &mut Vec<Request>) {
        while batch.len() < self.config.max_batch {
            match self.requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        if self.config.max_batch_wait_us > 0 && !batch.is_empty() {
            let deadline = tokio::time::Instant::now() + Duration::from_micros(self.config.max_batch_wait_us);
            while batch.len() < self.config.max_batch {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(remaining, self.requests.recv()).await {
                    Ok(Some(request)) => batch.push(request),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    async fn process(&mut self, batch: Vec<Request>) {
        let now = self.clock.now();
        let mut pending: Vec<(Command, oneshot::Sender<Reply>)> = Vec::with_capacity(batch.len());
        for request in batch {
            match request {
                Request::Wallet { wallet_id, reply } => {
                    // The ledger holds exactly the committed state between batches.
                    let _ = reply.send(self.ledger.wallet(&wallet_id).cloned());
                }
                Request::Hold { hold_id, reply } => {
                    let _ = reply.send(self.ledger.hold(&hold_id).cloned());
                }
                Request::Command { command, reply } => pending.push((command, reply)),
            }
        }
        if let Some(expiry) = self.expiry_command(now) {
            let (reply, _ignored) = oneshot::channel();
            pending.push((expiry, reply));
        }
        if pending.is_empty() {
            return;
        }
        let pending = self.answer_forgotten_ids(now, pending).await;
        self.commit_with_retries(now, pending).await;
    }

    /// An `ExpireHolds` command if a hold has lapsed by `now`.
    fn expiry_command(&self, now: Timestamp) -> Option<Command> {
        let due = self.ledger.next_hold_expiry().is_some_and(|expires_at| expires_at <= now);
        let id = CommandId(SYSTEM_COMMAND_TAG | u128::from(self.ledger.last_transaction_id().0 + 1));
        due.then_some(Command { id, kind: CommandKind::ExpireHolds })
    }

    /// Commands whose ids the engine no longer remembers may still have a stored record (the
    /// store keeps them longer): answer those from the store, in one lookup for the whole batch.
    async fn answer_forgotten_ids(
        &mut self,
        now: Timestamp,
        pending: Vec<(Command, oneshot::Sender<Reply>)>,
    ) -> Vec<(Command, oneshot::Sender<Reply>)> {
        #[cfg(madsim)]
        if planted(Bug::IdempotencyLookupSkipped) {
            return pending;
        }
        let unknown: Vec<CommandId> =
            pending.iter().map(|(command, _)| command.id).filter(|id| self.ledger.command(id, now).is_none()).collect();
        if unknown.is_empty() {
            return pending;
        }
        let not_before =
            Timestamp::from_unix_micros(now.unix_micros().saturating_sub(self.config.idempotency_retention_micros));
        let stored = match self.store.command_records(&unknown, not_before).await {
            Ok(records) => records,
            Err(error) => {
                // Without the lookup a retry might apply twice: do not decide these now.
                let mut kept = Vec::with_capacity(pending.len());
                for (command, reply) in pending {
                    if unknown.contains(&command.id) {
                        let _ = reply.send(Reply::Unavailable(error.to_string()));
                    } else {
                        kept.push((command, reply));
                    }
                }
                return kept;
            }
        };
        let stored: BTreeMap<CommandId, CommandRecord> = stored.into_iter().map(|r| (r.command_id, r)).collect();
        let mut kept = Vec::with_capacity(pending.len());
        for (command, reply) in pending {
            match stored.get(&command.id) {
                Some(record) if record.fingerprint == command.kind.fingerprint() => {
                    let answer = self.replayed(record).await;
                    let _ = reply.send(answer);
                }
                Some(record) => {
                    let _ = reply.send(Reply::KeyReused { original: *record });
                }
                None => kept.push((command, reply)),
            }
        }
        kept
    }

    /// The original answer to a command recorded earlier, with its events from the store.
    async fn replayed(&self, record: &CommandRecord) -> Reply {
        if record.result.is_err() {
            return Reply::Decided { record: *record, events: Vec::new(), replayed: true };
        }
        let before = TransactionId(record.transaction_id.0 - 1);
        match self.store.journal(before, 1).await {
            Ok(entries) => match entries.into_iter().next() {
                Some(entry) if entry.record.transaction_id == record.transaction_id => {
                    Reply::Decided { record: *record, events: entry.events, replayed: true }
                }
                _ => Reply::Unavailable(format!("transaction {} is missing from the journal", record.transaction_id)),
            },
            Err(error) => Reply::Unavailable(error.to_string()),
        }
    }

    /// Decides and commits `pending` at `now`: the time its ids were looked up at, so that an id
    /// the engine remembered then is still remembered when it decides (time moves during a lookup).
    async fn commit_with_retries(&mut self, mut now: Timestamp, mut pending: Vec<(Command, oneshot::Sender<Reply>)>) {
        let mut last_error = String::new();
        for attempt in 1..=self.config.commit_attempts.max(1) {
            #[cfg_attr(not(madsim), expect(unused_mut, reason = "only a planted bug mutates it"))]
            let (mut decided, replays) = self.decide_batch(now, pending);
            for (record, reply) in replays {
                let answer = self.replayed(&record).await;
                let _ = reply.send(answer);
            }
            if self.commit.is_empty() {
                return;
            }
            #[cfg(madsim)]
            if planted(Bug::AckBeforeCommit) {
                for (DecidedReply { reply, .. }, record, events) in &mut decided {
                    let (early, _) = oneshot::channel();
                    let events = self.commit.events[events.clone()].to_vec();
                    let _ = std::mem::replace(reply, early).send(Reply::Decided {
                        record: *record,
                        events,
                        replayed: false,
                    });
                }
            }
            let started = tokio::time::Instant::now();
            let committed = self.store.commit(&self.commit).await;
            metrics::histogram!("wallex_group_commit_seconds").record(started.elapsed().as_secs_f64());
            match committed {
                Ok(()) => {
                    metrics::histogram!("wallex_group_commit_commands").record(self.commit.records.len() as f64);
                    for record in &self.commit.records {
                        let outcome = if record.result.is_ok() { "accepted" } else { "rejected" };
                        metrics::counter!("wallex_commands_total", "outcome" => outcome).increment(1);
                    }
                    self.committed.notify_one();
                    self.events_since_snapshot += self.commit.events.len() as u64;
                    for (DecidedReply { reply, .. }, record, events) in decided {
                        let events = self.commit.events[events].to_vec();
                        let _ = reply.send(Reply::Decided { record, events, replayed: false });
                    }
                    self.maybe_snapshot().await;
                    return;
                }
                Err(error) => {
                    metrics::counter!("wallex_group_commit_failures_total").increment(1);
                    tracing::warn!(attempt, batch = decided.len(), %error, "group commit failed; reloading from the store");
                    last_error = error.to_string();
                    self.reload().await;
                    now = self.clock.now();
                    pending = self.resolve_from_store(now, decided).await;
                    // The reload may have taken longer than the engine remembers ids: ask the
                    // store's idempotency records about the rest before deciding them again.
                    pending = self.answer_forgotten_ids(now, pending).await;
                    if pending.is_empty() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(self.config.retry_backoff_ms)).await;
                }
            }
        }
        for (_, reply) in pending {
            metrics::counter!("wallex_commands_total", "outcome" => "unavailable").increment(1);
            let _ = reply.send(Reply::Unavailable(last_error.clone()));
        }
    }

    /// Runs every pending command through the engine into `self.commit`. Answers at once the ones
    /// that change nothing (reused ids, ids already in this batch); returns the newly decided ones
    /// with their record and the range of their events in `self.commit.events` (and the command, to
    /// decide again if the commit fails), and the retries of committed commands, to be answered
    /// from the store.
    fn decide_batch(
        &mut self,
        now: Timestamp,
        pending: Vec<(Command, oneshot::Sender<Reply>)>,
    ) -> (Vec<Decided>, Vec<Replay>) {
        self.commit.clear();
        let mut decided = Vec::with_capacity(pending.len());
        let mut replays = Vec::new();
        let mut events = Vec::new();
        for (command, reply) in pending {
            let before = events.len();
            match self.ledger.execute(now, &command, &mut events) {
                Outcome::Recorded(record) => {
                    self.commit.records.push(record);
                    for (position, event) in events[before..].iter().enumerate() {
                        self.commit.outbox.push(OutboxMessage {
                            position: OutboxPosition {
                                transaction_id: record.transaction_id,
                                index: u32::try_from(position).expect("few events per transaction"),
                            },
                            key: event.wallet_id,
                            payload: encode_event(event),
                            committed_at: record.at,
                        });
                    }
                    decided.push((DecidedReply { reply, command }, record, before..events.len()));
                }
                Outcome::Duplicate(original) => {
                    let in_this_batch = self.commit.records.iter().any(|r| r.command_id == original.command_id);
                    if in_this_batch {
                        let _ = reply.send(Reply::InFlight);
                    } else {
                        replays.push((original, reply));
                    }
                }
                Outcome::KeyReused { original } => {
                    let _ = reply.send(Reply::KeyReused { original });
                }
            }
        }
        self.commit.events = events;
        (decided, replays)
    }

    /// After a failed commit: the ledger must equal the store again before anything else.
    async fn reload(&mut self) {
        loop {
            match recover(&self.store, self.config.engine, self.config.journal_page).await {
                Ok(ledger) => {
                    self.ledger = ledger;
                    self.events_since_snapshot = 0;
                    return;
                }
                Err(RecoveryError::Corrupt(reason)) => {
                    tracing::error!(%reason, "stored state cannot be replayed; the writer stops");
                    panic!("stored state cannot be replayed: {reason}");
                }
                Err(RecoveryError::Store(error)) => {
                    tracing::warn!(%error, "reload from the store failed; retrying");
                    tokio::time::sleep(Duration::from_millis(self.config.retry_backoff_ms)).await;
                }
            }
        }
    }

    /// Answers the commands of a failed batch that the store has anyway (the commit happened);
    /// returns the others, to be decided again.
    async fn resolve_from_store(
        &mut self,
        now: Timestamp,
        decided: Vec<Decided>,
    ) -> Vec<(Command, oneshot::Sender<Reply>)> {
        let mut remaining = Vec::with_capacity(decided.len());
        for (DecidedReply { reply, command }, _, _) in decided {
            // The reloaded ledger remembers whatever the store committed.
            match self.ledger.command(&command.id, now).copied() {
                Some(record) if record.fingerprint == command.kind.fingerprint() => {
                    let answer = self.replayed(&record).await;
                    let _ = reply.send(answer);
                }
                Some(record) => {
                    let _ = reply.send(Reply::KeyReused { original: record });
                }
                None => remaining.push((command, reply)),
            }
        }
        remaining
    }

    async fn maybe_snapshot(&mut self) {
        if self.events_since_snapshot < self.config.snapshot_every_events {
            return;
        }
        let snapshot =
            StoredSnapshot { transaction_id: self.ledger.last_transaction_id(), bytes: self.ledger.encode_snapshot() };
        match self.store.save_snapshot(&snapshot).await {
            Ok(()) => self.events_since_snapshot = 0,
            Err(error) => tracing::warn!(%error, "snapshot not saved; recovery replays a longer journal"),
        }
    }
}

/// A newly decided command: its reply channel, its record and its events' range in the batch.
type Decided = (DecidedReply, CommandRecord, std::ops::Range<usize>);

/// A retry of a command committed earlier, answered from the store.
type Replay = (CommandRecord, oneshot::Sender<Reply>);

/// A command waiting for its commit, with where to send the answer.
#[derive(Debug)]
struct DecidedReply {
    reply: oneshot::Sender<Reply>,
    command: Command,
}
