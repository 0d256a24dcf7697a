//! The single writer: a sans-IO core ([`WriterCore`]) that makes every decision, driven by a short
//! async loop ([`Writer`]) that does the IO it asks for.
//!
//! Commands queue on a bounded channel; the driver takes whatever has queued (up to `max_batch`,
//! waiting at most `max_batch_wait_us` for more) and hands it to the core as one batch. The core
//! decides them all and asks for ONE store transaction (records, events, outbox), then releases the
//! replies. Commits are never concurrent, so a batch forms while the previous one is committing:
//! the busier the service, the larger the batches, the fewer the fsyncs per command.

mod core;
mod recovery;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use wallex_engine::{Command, CommandRecord, Event, Hold, Ledger, TransactionId, Wallet};

pub use self::core::{Io, WriterCore};
pub use self::recovery::{Recovery, RecoveryError, RecoveryStep, recover};
use crate::ConfigError;
use crate::ports::{Clock, EventStore};

/// Limits and pacing of the writer; every one has a default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriterConfig {
    /// How long the engine itself remembers command ids, in microseconds; the store's
    /// idempotency records (`idempotency_retention_micros`) answer older ones.
    pub engine_retention_micros: u64,
    /// Most commands in one group commit.
    pub max_batch: usize,
    /// How long to wait for more commands once one arrived; 0 commits as soon as the previous
    /// commit returned (batches still form while it runs).
    pub max_batch_wait_us: u64,
    /// Commands (and write-side reads) that may wait in the queue; beyond it, a submission is
    /// refused at once as unavailable (HTTP 503 with `Retry-After`): load is shed before the writer
    /// falls behind.
    pub queue_depth: usize,
    /// The snapshotter saves a snapshot after this many events since its last one.
    pub snapshot_every_events: u64,
    /// Attempts to make one batch durable before answering "unavailable".
    pub commit_attempts: u32,
    /// Pause between attempts (and between reload attempts), in milliseconds.
    pub retry_backoff_ms: u64,
    /// Journal entries read per page during recovery.
    pub journal_page: usize,
    /// How long the store keeps an idempotency key live, in microseconds (24 h by default). The
    /// engine's own window (`engine_retention_micros`) must not be longer.
    pub idempotency_retention_micros: u64,
    /// How often expired idempotency keys are deleted from the store, in milliseconds.
    pub idempotency_cleanup_interval_ms: u64,
    /// The most wallets one owner may have (more is refused 422 `quota_exceeded`).
    pub max_wallets_per_owner: u64,
    /// The most active holds across one owner's wallets (more is refused 422 `quota_exceeded`).
    pub max_active_holds_per_owner: u64,
    /// The secret key of the engine's id indexes. Never read from a file nor printed: the server
    /// draws it from the operating system at start (the default is fixed and public, for tests),
    /// the simulator from its seed.
    #[serde(skip)]
    pub hash_seed: wallex_engine::HashSeed,
}

impl Default for WriterConfig {
    fn default() -> WriterConfig {
        WriterConfig {
            // The engine remembers ids for ten minutes; the store's idempotency records cover the
            // rest of the retention (one lookup per batch for ids the engine has forgotten).
            engine_retention_micros: 10 * 60 * 1_000_000,
            max_batch: 1_024,
            max_batch_wait_us: 0,
            queue_depth: 16_384,
            snapshot_every_events: 100_000,
            commit_attempts: 5,
            retry_backoff_ms: 50,
            journal_page: 10_000,
            idempotency_retention_micros: 24 * 60 * 60 * 1_000_000,
            max_wallets_per_owner: wallex_engine::Config::default().max_wallets_per_owner,
            max_active_holds_per_owner: wallex_engine::Config::default().max_active_holds_per_owner,
            idempotency_cleanup_interval_ms: 10 * 60 * 1_000,
            hash_seed: wallex_engine::HashSeed::default(),
        }
    }
}

/// The writer's answer to one command.
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
    /// The command was decided earlier (`record`), but its original answer could not be read back
    /// from the store just now. It took effect (or was refused) once; retry with the same id for
    /// the answer.
    Unconfirmed { record: CommandRecord, reason: String },
}

/// The most commands one group commit may hold: each is a record, its events and their outbox
/// messages in one store transaction, and every store binds them in statements sized for this.
pub const MAX_BATCH_LIMIT: usize = 8_192;

impl WriterConfig {
    /// The engine's own settings.
    pub fn engine(&self) -> wallex_engine::Config {
        wallex_engine::Config {
            command_retention_micros: self.engine_retention_micros,
            hash_seed: self.hash_seed,
            max_wallets_per_owner: self.max_wallets_per_owner,
            max_active_holds_per_owner: self.max_active_holds_per_owner,
        }
    }

    /// Refuses settings that contradict each other or leave the writer unable to work; nothing is
    /// clamped.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = |name: &str| format!("pipeline.writer.{name}");
        if self.max_batch == 0 || self.max_batch > MAX_BATCH_LIMIT {
            return Err(ConfigError::new(
                field("max_batch"),
                format!("must be 1..={MAX_BATCH_LIMIT}, not {}", self.max_batch),
            ));
        }
        if self.queue_depth == 0 {
            return Err(ConfigError::new(field("queue_depth"), "must be at least 1"));
        }
        if self.snapshot_every_events == 0 {
            return Err(ConfigError::new(field("snapshot_every_events"), "must be at least 1"));
        }
        if self.commit_attempts == 0 {
            return Err(ConfigError::new(field("commit_attempts"), "must be at least 1"));
        }
        if self.journal_page == 0 {
            return Err(ConfigError::new(field("journal_page"), "must be at least 1"));
        }
        if self.idempotency_cleanup_interval_ms == 0 {
            return Err(ConfigError::new(field("idempotency_cleanup_interval_ms"), "must be at least 1"));
        }
        if self.engine_retention_micros > self.idempotency_retention_micros {
            return Err(ConfigError::new(
                field("engine_retention_micros"),
                format!(
                    "the engine remembers command ids ({} µs) longer than the store keeps idempotency keys \
                     (pipeline.writer.idempotency_retention_micros, {} µs): a restart would forget what the \
                     running writer remembers",
                    self.engine_retention_micros, self.idempotency_retention_micros
                ),
            ));
        }
        Ok(())
    }
}

enum Request {
    Command {
        /// Boxed: a command (with its memo) is several times larger than the other requests.
        command: Box<Command>,
        reply: oneshot::Sender<Reply>,
    },
    /// The commands of one batch request, decided in order in one group commit.
    Commands(Vec<(Command, oneshot::Sender<Reply>)>),
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

impl Request {
    /// What the request counts against `queue_depth`: its commands (a read counts one).
    fn weight(&self) -> usize {
        match self {
            Request::Commands(commands) => commands.len(),
            Request::Command { .. } | Request::Wallet { .. } | Request::Hold { .. } => 1,
        }
    }
}

/// The handle the service layer uses to submit commands. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CommandSender {
    requests: mpsc::Sender<Request>,
    /// Commands (and reads) queued and not yet taken by the writer: admission counts commands,
    /// so a batch of a thousand takes a thousand places, not one.
    queued: Arc<AtomicUsize>,
    queue_depth: usize,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Command { command, .. } => write!(f, "Command({})", command.id),
            Request::Commands(commands) => write!(f, "Commands({})", commands.len()),
            Request::Wallet { wallet_id, .. } => write!(f, "Wallet({wallet_id})"),
            Request::Hold { hold_id, .. } => write!(f, "Hold({hold_id})"),
        }
    }
}

impl CommandSender {
    /// Submits a command and waits for its durable outcome.
    ///
    /// The queue is the writer's admission control: when `queue_depth` commands already wait, the
    /// command is refused at once as `Unavailable` (never applied; the client retries after
    /// `Retry-After`) rather than waiting behind work the writer cannot finish in time.
    pub async fn submit(&self, command: Command) -> Reply {
        let (reply, answer) = oneshot::channel();
        if let Err(refused) = self.admit(Request::Command { command: Box::new(command), reply }) {
            return Reply::Unavailable(refused.to_owned());
        }
        answer.await.unwrap_or_else(|_| Reply::Unavailable("the writer has stopped".to_owned()))
    }

    /// Submits several commands (one batch request) and waits for each one's durable outcome,
    /// in order. They are queued together and decided in order in the same group commit; a queue
    /// without room for all of them refuses all of them at once, as `Unavailable`.
    pub async fn submit_all(&self, commands: Vec<Command>) -> Vec<Reply> {
        let count = commands.len();
        let mut answers = Vec::with_capacity(count);
        let mut queued = Vec::with_capacity(count);
        for command in commands {
            let (reply, answer) = oneshot::channel();
            queued.push((command, reply));
            answers.push(answer);
        }
        if count == 0 {
            return Vec::new();
        }
        if let Err(refused) = self.admit(Request::Commands(queued)) {
            return (0..count).map(|_| Reply::Unavailable(refused.to_owned())).collect();
        }
        let mut replies = Vec::with_capacity(count);
        for answer in answers {
            replies.push(answer.await.unwrap_or_else(|_| Reply::Unavailable("the writer has stopped".to_owned())));
        }
        replies
    }

    /// Queues a request, or says why not (full, or the writer is gone) without waiting.
    fn admit(&self, request: Request) -> Result<(), &'static str> {
        let weight = request.weight();
        if self.queued.fetch_add(weight, Ordering::AcqRel) + weight > self.queue_depth {
            self.queued.fetch_sub(weight, Ordering::AcqRel);
            metrics::counter!("wallex_writer_shed_total").increment(weight as u64);
            return Err("the writer's queue is full: retry shortly");
        }
        self.requests.try_send(request).map_err(|error| {
            self.queued.fetch_sub(weight, Ordering::AcqRel);
            match error {
                mpsc::error::TrySendError::Full(_) => {
                    metrics::counter!("wallex_writer_shed_total").increment(weight as u64);
                    "the writer's queue is full: retry shortly"
                }
                mpsc::error::TrySendError::Closed(_) => "the writer has stopped",
            }
        })
    }

    /// The hold as the write side knows it, after every command acknowledged so far; `None` if the
    /// writer cannot answer (stopped, or its queue is full).
    pub async fn hold(&self, hold_id: wallex_engine::HoldId) -> Option<Option<Hold>> {
        let (reply, answer) = oneshot::channel();
        self.admit(Request::Hold { hold_id, reply }).ok()?;
        answer.await.ok()
    }

    /// The wallet as the write side knows it, after every command acknowledged so far; `None` if
    /// the writer cannot answer (stopped, or its queue is full).
    pub async fn wallet(&self, wallet_id: wallex_engine::WalletId) -> Option<Option<Wallet>> {
        let (reply, answer) = oneshot::channel();
        self.admit(Request::Wallet { wallet_id, reply }).ok()?;
        answer.await.ok()
    }
}

/// Ids of the commands the writer issues itself (hold expiry) live in their own range.
pub const SYSTEM_COMMAND_TAG: u128 = 0x5757_0000_0000_0000_0000_0000_0000_0000;

/// What the writer is doing, as readiness checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterState {
    /// Deciding and committing.
    Running,
    /// Rebuilding its ledger from the store after a failed commit: writes wait.
    Reloading,
    /// Gone: shut down, or failed. No write will be answered.
    Stopped,
    /// This instance does not hold the writer lease: it forwards writes to the one that does.
    Follower,
}

/// The writer's state, shared with health checks, and a signal when it stops.
#[derive(Debug, Default)]
pub struct WriterHealth {
    /// A `WriterState` as 0 to 3.
    state: AtomicU8,
    stopped: Notify,
    /// The last transaction the writer knows committed.
    committed: AtomicU64,
}

impl WriterHealth {
    /// The last transaction the writer knows the store holds: everything up to it is in the
    /// journal for good.
    pub fn committed_through(&self) -> TransactionId {
        TransactionId(self.committed.load(Ordering::Acquire))
    }

    pub fn state(&self) -> WriterState {
        match self.state.load(Ordering::Acquire) {
            0 => WriterState::Running,
            1 => WriterState::Reloading,
            3 => WriterState::Follower,
            _ => WriterState::Stopped,
        }
    }

    pub(crate) fn set(&self, state: WriterState) {
        let value = match state {
            WriterState::Running => 0,
            WriterState::Reloading => 1,
            WriterState::Stopped => 2,
            WriterState::Follower => 3,
        };
        self.state.store(value, Ordering::Release);
        if state == WriterState::Stopped {
            self.stopped.notify_waiters();
        }
    }

    /// Resolves once the writer has stopped.
    pub async fn stopped(&self) {
        loop {
            let notified = self.stopped.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a stop between the two is not missed.
            notified.as_mut().enable();
            if self.state() == WriterState::Stopped {
                return;
            }
            notified.await;
        }
    }
}

/// Marks the writer stopped when its task ends, by returning or by a panic unwinding through it;
/// disarmed (`None`) when it steps down, which leaves its instance a follower.
struct StoppedOnDrop(Option<Arc<WriterHealth>>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        if let Some(health) = &self.0 {
            health.set(WriterState::Stopped);
        }
    }
}

/// The driver: the core, the queue it is fed from, and the store it does IO on.
#[derive(Debug)]
pub struct Writer<S, C> {
    store: S,
    clock: C,
    core: WriterCore<oneshot::Sender<Reply>>,
    config: WriterConfig,
    queue: Queue,
    /// A request taken from the queue that did not fit the last batch: it leads the next.
    carried: Option<Request>,
    committed: Arc<Notify>,
    health: Arc<WriterHealth>,
    keys_clock: crate::RetentionClock<C>,
    view: Arc<crate::view::CommittedView>,
}

/// The receiving end of the writer's queue. It outlives any one writer: when an instance loses
/// the lease, the queue passes back to its seat (which refuses what arrives while it follows) and
/// on to the next writer it starts.
#[derive(Debug)]
pub struct Queue {
    requests: mpsc::Receiver<Request>,
    /// Shared with the senders: what is queued, by weight.
    queued: Arc<AtomicUsize>,
}

impl Queue {
    /// A queue of `queue_depth` commands, and the sender the service layer submits through.
    pub fn new(queue_depth: usize) -> (CommandSender, Queue) {
        let (sender, requests) = mpsc::channel(queue_depth);
        let queued = Arc::new(AtomicUsize::new(0));
        (CommandSender { requests: sender, queued: queued.clone(), queue_depth }, Queue { requests, queued })
    }

    /// The next request, or `None` once every sender is gone.
    async fn recv(&mut self) -> Option<Request> {
        let request = self.requests.recv().await?;
        self.queued.fetch_sub(request.weight(), Ordering::AcqRel);
        Some(request)
    }

    /// The next request if one is queued, without waiting.
    fn try_recv(&mut self) -> Option<Request> {
        let request = self.requests.try_recv().ok()?;
        self.queued.fetch_sub(request.weight(), Ordering::AcqRel);
        Some(request)
    }

    /// Waits for requests and refuses each (this instance is not the writer) until every sender
    /// is gone; a follower's seat runs it beside its other waits.
    pub async fn refuse_next(&mut self, reason: &str) -> bool {
        match self.recv().await {
            Some(request) => {
                refuse(request, reason);
                true
            }
            None => false,
        }
    }

    /// Refuses everything queued now, without waiting.
    fn refuse_queued(&mut self, reason: &str) {
        while let Some(request) = self.try_recv() {
            refuse(request, reason);
        }
    }
}

/// Answers a request this instance will not decide: commands "unavailable" (not applied: retry,
/// with the same key, where the writer is), reads "cannot answer".
fn refuse(request: Request, reason: &str) {
    match request {
        Request::Command { reply, .. } => drop(reply.send(Reply::Unavailable(reason.to_owned()))),
        Request::Commands(commands) => {
            for (_, reply) in commands {
                let _ = reply.send(Reply::Unavailable(reason.to_owned()));
            }
        }
        Request::Wallet { .. } | Request::Hold { .. } => {}
    }
}

/// How a writer's run ended.
#[derive(Debug)]
pub enum TermEnd {
    /// Every sender is gone (the pipeline is shutting down): the final ledger.
    Closed(Box<Ledger>),
    /// The writer stopped deciding: its commit was fenced off by a later epoch, or its seat told
    /// it the lease is lost. Everything it had queued was answered "unavailable"; the queue goes
    /// back to the seat.
    SteppedDown { queue: Queue, fenced_by: Option<crate::ports::Epoch> },
}

impl<S: EventStore, C: Clock> Writer<S, C> {
    /// A writer over `ledger` (which must equal the store: as [`recover`] returns it), deciding
    /// under `epoch`, fed from `queue`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: S,
        clock: C,
        config: WriterConfig,
        ledger: Ledger,
        epoch: crate::ports::Epoch,
        queue: Queue,
        committed: Arc<Notify>,
        health: Arc<WriterHealth>,
        view: Arc<crate::view::CommittedView>,
    ) -> Writer<S, C> {
        let keys_clock = crate::RetentionClock::new(clock.clone(), ledger.clock());
        health.committed.store(ledger.last_transaction_id().0, Ordering::Release);
        let mut core = WriterCore::new(config, ledger);
        core.set_epoch(epoch);
        health.set(WriterState::Running);
        Writer { store, clock, core, config, queue, carried: None, committed, health, keys_clock, view }
    }

    pub fn ledger(&self) -> &Ledger {
        self.core.ledger()
    }

    /// Runs until every sender is dropped (returning the ledger), or until it must step down:
    /// a commit was fenced off, or `stop` turned true (its seat lost the lease).
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) -> TermEnd {
        const IDLE: Duration = Duration::from_secs(1);
        let mut stopped = StoppedOnDrop(Some(self.health.clone()));
        let mut requests = Vec::with_capacity(self.config.max_batch);
        loop {
            if *stop.borrow() {
                stopped.0 = None;
                return self.step_down(None);
            }
            // Wake up when a hold lapses, to release it, even if no command arrives.
            let idle = self
                .core
                .until_next_expiry_micros(self.clock.now())
                .map_or(IDLE, |micros| Duration::from_micros(micros).min(IDLE));
            match self.carried.take() {
                Some(request) => requests.push(request),
                None => {
                    tokio::select! {
                        // Polled in order, not at random: the simulator replays a seed exactly.
                        biased;
                        changed = stop.changed() => {
                            if changed.is_err() || *stop.borrow() {
                                stopped.0 = None;
                                return self.step_down(None);
                            }
                            continue;
                        }
                        received = tokio::time::timeout(idle, self.queue.recv()) => match received {
                            Ok(Some(request)) => requests.push(request),
                            Ok(None) => return TermEnd::Closed(Box::new(self.core.into_ledger())),
                            Err(_elapsed) => {}
                        },
                    }
                }
            }
            self.gather(&mut requests).await;
            let now = self.clock.now();
            self.core.set_keys_now(self.keys_clock.now());
            let mut commands = Vec::with_capacity(requests.len());
            for request in requests.drain(..) {
                match request {
                    // Between batches the core's ledger holds exactly the committed state.
                    Request::Wallet { wallet_id, reply } => drop(reply.send(self.core.wallet(&wallet_id).cloned())),
                    Request::Hold { hold_id, reply } => drop(reply.send(self.core.hold(&hold_id).cloned())),
                    Request::Command { command, reply } => commands.push((*command, reply)),
                    Request::Commands(batch) => commands.extend(batch),
                }
            }
            self.core.handle_batch(now, commands);
            self.drive().await;
            if let Some(current) = self.core.deposed() {
                stopped.0 = None;
                return self.step_down(Some(current));
            }
        }
    }

    /// Ends this writer's run: everything it holds or has queued is refused, and the queue goes
    /// back to the seat.
    fn step_down(mut self, fenced_by: Option<crate::ports::Epoch>) -> TermEnd {
        const REASON: &str = "this instance no longer holds the writer lease: retry";
        if let Some(request) = self.carried.take() {
            refuse(request, REASON);
        }
        self.queue.refuse_queued(REASON);
        self.health.set(WriterState::Follower);
        let Writer { queue, .. } = self;
        TermEnd::SteppedDown { queue, fenced_by }
    }

    /// Adds whatever else is queued, up to `max_batch` commands, waiting up to
    /// `max_batch_wait_us`. A batch request is never split: one that would overflow the batch is
    /// carried to the next (a single batch request larger than `max_batch` is a batch of its own).
    async fn gather(&mut self, batch: &mut Vec<Request>) {
        let mut weight: usize = batch.iter().map(Request::weight).sum();
        while weight < self.config.max_batch {
            match self.queue.try_recv() {
                Some(request) => {
                    if !self.add(batch, &mut weight, request) {
                        return;
                    }
                }
                None => break,
            }
        }
        if self.config.max_batch_wait_us > 0 && !batch.is_empty() && weight < self.config.max_batch {
            let deadline = tokio::time::Instant::now() + Duration::from_micros(self.config.max_batch_wait_us);
            loop {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(remaining, self.queue.recv()).await {
                    Ok(Some(request)) => {
                        if !self.add(batch, &mut weight, request) {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    /// Adds a request taken from the queue to the batch, or carries it to the next batch if it
    /// would overflow this one; `false` once the batch is full.
    fn add(&mut self, batch: &mut Vec<Request>, weight: &mut usize, request: Request) -> bool {
        if *weight > 0 && *weight + request.weight() > self.config.max_batch {
            self.carried = Some(request);
            return false;
        }
        *weight += request.weight();
        batch.push(request);
        *weight < self.config.max_batch
    }

    /// Carries out what the core asks until the batch is done, releasing replies as they come.
    async fn drive(&mut self) {
        loop {
            while let Some((reply, answer)) = self.core.poll_reply() {
                if let Reply::Decided { events, replayed: false, .. } = &answer
                    && self.core.holds_committed_state()
                {
                    // Before the answer leaves: a read that starts after it sees the write. A
                    // first answer is released only when the ledger holds exactly the committed
                    // state (a replayed one was published when it first committed).
                    for event in events {
                        if let Some(wallet) = self.core.ledger().wallet(&event.wallet_id) {
                            self.view.publish(wallet, event.transaction_id);
                        }
                    }
                }
                // The caller may have gone; the outcome stands and a retry is answered from the store.
                let _ = reply.send(answer);
            }
            self.health.set(if self.core.is_reloading() { WriterState::Reloading } else { WriterState::Running });
            let Some(io) = self.core.poll_io() else {
                // Idle: the ledger holds exactly the committed state.
                self.health.committed.store(self.core.ledger().last_transaction_id().0, Ordering::Release);
                return;
            };
            match io {
                Io::LookUpRecords { ids, not_before } => {
                    let result = self.store.command_records(&ids, not_before).await;
                    self.core.handle_records(result);
                }
                Io::ReadTransactions(ids) => {
                    let result = self.store.transaction_events(&ids).await;
                    self.core.handle_transactions(result);
                }
                Io::Commit => {
                    let started = tokio::time::Instant::now();
                    let result = self.store.commit(self.core.batch()).await;
                    metrics::histogram!("wallex_group_commit_seconds").record(started.elapsed().as_secs_f64());
                    let committed = result.is_ok();
                    self.core.handle_commit(result);
                    if committed {
                        self.committed.notify_one();
                    }
                }
                Io::LoadSnapshot => {
                    let result = self.store.latest_snapshot().await;
                    self.core.handle_snapshot_loaded(self.clock.now(), result);
                }
                Io::ReadJournal { after, limit } => {
                    let result = self.store.journal(after, limit).await;
                    self.core.handle_journal(self.clock.now(), result);
                }
                Io::Wait { ms } => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    self.core.handle_wait_over();
                }
            }
        }
    }
}
