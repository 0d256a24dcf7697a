//! `wallex-pipeline`: the Wallex service's pipeline, generic over its ports. Command writer →
//! store → outbox relay → bus → projectors. It names no concrete adapter (no sqlx, rdkafka or axum:
//! `tests/tidy.rs` keeps its dependency list to the engine, serde and the runtime and telemetry
//! facades), so the simulator runs exactly this code under `--cfg madsim`.
//!
//! - [`ports`]: what the pipeline needs from the world (store, bus, clock), and the projection plan
//!   every store applies.
//! - [`writer`]: the single writer, recovery, and the group commit.
//! - [`relay`]: outbox → bus in commit order; [`projector`]: bus → projections.
//! - [`codec`]: the event's wire form; [`bus`]: the in-process bus of the embedded default.

pub mod bus;
pub mod codec;
pub mod ports;
pub mod projector;
pub mod relay;
pub mod seat;
pub mod snapshotter;
pub mod view;
pub mod writer;

use std::sync::Arc;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use projector::{ProjectorConfig, ProjectorStats};
pub use relay::{RelayConfig, RelayStats};
pub use seat::{Holder, LeaseConfig, Node, Role};
pub use writer::{CommandSender, RecoveryError, Reply, WriterConfig, WriterHealth, WriterState};

use crate::ports::{Bus, Clock, EventStore, Projection, ProjectionStore};

/// Every knob of the pipeline, each with a default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub writer: WriterConfig,
    pub relay: RelayConfig,
    pub projector: ProjectorConfig,
    pub lease: LeaseConfig,
}

impl PipelineConfig {
    /// Refuses an inconsistent or unworkable setting, naming it; nothing is clamped.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.writer.validate()?;
        self.relay.validate()?;
        self.projector.validate()?;
        self.lease.validate()
    }
}

/// A setting refused at start: which one (its path in the configuration) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError { field: field.into(), reason: reason.into() }
    }
}

/// Why a pipeline did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
}

/// Counters the health endpoints and metrics read.
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub writer: Arc<WriterHealth>,
    pub relay: Arc<RelayStats>,
    pub read_model: Arc<ProjectorStats>,
    pub ledger: Arc<ProjectorStats>,
    pub reconciliation: Arc<projector::ReconciliationStats>,
    /// Wallets committed and not yet in the read model (see [`view::CommittedView`]).
    pub view: Arc<view::CommittedView>,
}

impl PipelineStats {
    pub fn projector(&self, projection: Projection) -> &ProjectorStats {
        match projection {
            Projection::ReadModel => &self.read_model,
            Projection::Ledger => &self.ledger,
        }
    }
}

/// A running pipeline: the command sender, the tasks, and how to stop them.
#[derive(Debug)]
pub struct Pipeline {
    pub commands: CommandSender,
    pub stats: Arc<PipelineStats>,
    role: watch::Receiver<Role>,
    shutdown: watch::Sender<bool>,
    seat: JoinHandle<Option<wallex_engine::Ledger>>,
    workers: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts a pipeline alone on its store ([`Node::alone`]): see [`Pipeline::start_node`].
    pub async fn start<S, B, C>(store: S, bus: B, clock: C, config: PipelineConfig) -> Result<Pipeline, StartError>
    where
        S: EventStore + ProjectionStore,
        B: Bus,
        C: Clock,
    {
        Pipeline::start_node(store, bus, clock, config, Node::alone()).await
    }

    /// Starts `node`'s pipeline on `store`: both projectors (every instance of a cluster is a
    /// member of their consumer groups) and the writer's seat ([`seat`]). If the writer lease is
    /// free, it is taken before this returns: the write side is recovered (snapshot plus journal)
    /// and the writer, the relay and the writer's background work run. Otherwise the instance
    /// follows, and takes the lease when it lapses.
    pub async fn start_node<S, B, C>(
        store: S,
        bus: B,
        clock: C,
        config: PipelineConfig,
        node: Node,
    ) -> Result<Pipeline, StartError>
    where
        S: EventStore + ProjectionStore,
        B: Bus,
        C: Clock,
    {
        config.validate()?;
        let stats = Arc::new(PipelineStats::default());
        let (commands, queue) = writer::Queue::new(config.writer.queue_depth);
        let (role_sender, role) = watch::channel(Role::Follower { writer: None });
        let (shutdown, stop) = watch::channel(false);
        let seat = seat::Seat {
            store: store.clone(),
            bus: bus.clone(),
            clock: clock.clone(),
            config,
            node,
            stats: stats.clone(),
            committed: Arc::new(Notify::new()),
            role: role_sender,
        };
        let (term, queue) = match seat.try_take().await? {
            Some(lease) => match seat.begin(&lease, queue).await {
                Ok(term) => (Some(term), None),
                Err((error, _)) => return Err(error.into()),
            },
            None => {
                seat.follow(None);
                (None, Some(queue))
            }
        };
        let seat = tokio::spawn(seat.run(term, queue, stop.clone()));
        let mut workers = Vec::new();
        for projection in Projection::ALL {
            let projector_stats = match projection {
                Projection::ReadModel => stats.read_model.clone(),
                Projection::Ledger => stats.ledger.clone(),
            };
            // Each projector tells the committed view what its projection has.
            let view = Some(stats.view.clone());
            workers.push(tokio::spawn(projector::run_projector(
                projection,
                store.clone(),
                bus.clone(),
                clock.clone(),
                config.projector,
                projector::ProjectorOutputs { stats: projector_stats, view },
                stop.clone(),
            )));
        }
        Ok(Pipeline { commands, stats, role, shutdown, seat, workers })
    }

    /// What this instance is in its cluster, as it changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// Resolves when the writer has stopped: after `shutdown`, or because it failed (a journal it
    /// cannot replay). A server answers no write without it, so it should exit.
    pub async fn writer_stopped(&self) {
        self.stats.writer.stopped().await;
    }

    /// Stops accepting commands, lets the writer finish what is queued (and hands the lease over
    /// at once), then stops the projectors. Returns the final ledger if this instance was the
    /// writer.
    pub async fn shutdown(self) -> Option<wallex_engine::Ledger> {
        let Pipeline { commands, shutdown, seat, workers, .. } = self;
        drop(commands);
        let _ = shutdown.send(true);
        let ledger = seat.await.expect("the seat does not panic");
        for worker in workers {
            let _ = worker.await;
        }
        ledger
    }
}

/// At start, the committed view gets every wallet whose read model is behind the recovered ledger:
/// writes acknowledged before a restart stay visible while the projector catches up.
pub(crate) async fn seed_view<S: ProjectionStore>(
    store: &S,
    ledger: &wallex_engine::Ledger,
    view: &view::CommittedView,
) -> Result<(), RecoveryError> {
    const CHUNK: usize = 10_000;
    for wallets in ledger.wallets().chunks(CHUNK) {
        let ids: Vec<wallex_engine::WalletId> = wallets.iter().map(|wallet| wallet.id).collect();
        let projected = store.projected_versions(Projection::ReadModel, &ids).await?;
        let entries = store.projected_versions(Projection::Ledger, &ids).await?;
        for ((wallet, projected), entries) in wallets.iter().zip(projected).zip(entries) {
            // Which of its transactions a projection lacks is not known: the earliest.
            if projected < wallet.version {
                view.publish(wallet, wallex_engine::TransactionId(0));
            }
            if entries < wallet.version {
                view.ledger_behind(wallet.id, wallet.version, wallex_engine::TransactionId(0));
            }
        }
    }
    Ok(())
}

/// Deletes expired idempotency keys every `interval_ms` (their ids may then be used again).
pub(crate) async fn run_cleanup<S: EventStore, C: Clock>(
    store: S,
    clock: C,
    retention_micros: u64,
    interval_ms: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            // Polled in order, not at random: the simulator replays a seed exactly.
            biased;
            () = tokio::time::sleep(std::time::Duration::from_millis(interval_ms.max(1))) => {}
            _ = shutdown.changed() => return,
        }
        let before =
            wallex_engine::Timestamp::from_unix_micros(clock.now().unix_micros().saturating_sub(retention_micros));
        match forget_expired_keys(&store, before, CLEANUP_CHUNK, &mut shutdown).await {
            Ok(forgotten) => tracing::debug!(forgotten, "expired idempotency keys deleted"),
            Err(error) => tracing::warn!(%error, "idempotency cleanup failed; retrying next round"),
        }
    }
}

/// Keys deleted per statement by the cleanup: each statement is short, and commits go between.
pub const CLEANUP_CHUNK: usize = 2_000;

/// Deletes every idempotency key recorded before `before`, `chunk` at a time, yielding between
/// chunks; stops early when `shutdown` changes. Returns how many it deleted.
pub async fn forget_expired_keys<S: EventStore>(
    store: &S,
    before: wallex_engine::Timestamp,
    chunk: usize,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<u64, ports::StoreError> {
    let mut forgotten = 0;
    loop {
        let deleted = store.forget_idempotency_keys(before, chunk).await?;
        forgotten += deleted;
        metrics::counter!("wallex_idempotency_keys_forgotten_total").increment(deleted);
        if deleted < chunk as u64 || *shutdown.borrow() {
            return Ok(forgotten);
        }
        tokio::task::yield_now().await;
    }
}

/// The ledger's clock in production: the system clock, read through [`SteadyTime`] so that a step
/// of it cannot jump the ledger's time. The simulator passes its own clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl ports::Clock for SystemClock {
    fn now(&self) -> wallex_engine::Timestamp {
        static ANCHOR: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        static STEADY: std::sync::Mutex<Option<SteadyTime>> = std::sync::Mutex::new(None);
        let monotonic =
            u64::try_from(ANCHOR.get_or_init(std::time::Instant::now).elapsed().as_micros()).unwrap_or(u64::MAX);
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let wall = u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX);
        let mut steady = STEADY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let reading = steady.get_or_insert_with(|| SteadyTime::new(wall, monotonic)).read(wall, monotonic);
        // Microseconds as f64 seconds: a clock offset for the operator, not money.
        metrics::gauge!("wallex_clock_offset_seconds").set((wall as f64 - reading as f64) / 1e6);
        wallex_engine::Timestamp::from_unix_micros(reading)
    }
}

/// The clock that judges when an idempotency key may be forgotten: the ledger's clock, but never
/// ahead of the last committed time at start plus the (monotonic) time this process has run.
/// Downtime counts as none, so a wall clock that is ahead when the process starts (stepped while it
/// was down, or wrong at boot) cannot expire keys a client may still retry with; after a real
/// outage, keys merely live longer than the retention. Steps while running are absorbed by
/// [`SteadyTime`] already.
#[derive(Clone, Debug)]
pub struct RetentionClock<C> {
    inner: C,
    anchor: wallex_engine::Timestamp,
    started: tokio::time::Instant,
}

impl<C: ports::Clock> RetentionClock<C> {
    /// Counts from `anchor`, the ledger's clock after recovery (its last commit's time); from the
    /// clock's own reading when the ledger is empty (no key to protect).
    pub fn new(inner: C, anchor: wallex_engine::Timestamp) -> RetentionClock<C> {
        let anchor = if anchor == wallex_engine::Timestamp::ZERO { inner.now() } else { anchor };
        RetentionClock { inner, anchor, started: tokio::time::Instant::now() }
    }
}

impl<C: ports::Clock> ports::Clock for RetentionClock<C> {
    fn now(&self) -> wallex_engine::Timestamp {
        let ran = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let bound = wallex_engine::Timestamp::from_unix_micros(self.anchor.unix_micros().saturating_add(ran));
        self.inner.now().min(bound)
    }
}

/// Time that follows the wall clock without jumping with it. It advances by the monotonic clock and
/// moves toward the wall clock by at most [`MAX_SLEW_PPM`] of the time elapsed (as `ntpd` slews):
/// a real drift is tracked, while a step (an operator, a resumed VM, NTP correcting a wrong time)
/// is absorbed slowly instead of landing at once. A forward step past the idempotency retention
/// would otherwise forget every key in one cleanup, and a retry would apply twice; a backward step
/// would leave lapsed holds reserving funds. It never goes back. Pure: the caller supplies both
/// readings, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SteadyTime {
    monotonic: u64,
    reading: u64,
}

/// How fast [`SteadyTime`] closes a gap to the wall clock: microseconds per second elapsed.
pub const MAX_SLEW_PPM: u64 = 1_000;

impl SteadyTime {
    /// Starts at the wall clock's reading.
    pub fn new(wall: u64, monotonic: u64) -> SteadyTime {
        SteadyTime { monotonic, reading: wall }
    }

    /// The time now, given the wall clock's and the monotonic clock's readings.
    pub fn read(&mut self, wall: u64, monotonic: u64) -> u64 {
        let elapsed = monotonic.saturating_sub(self.monotonic);
        let free = self.reading.saturating_add(elapsed);
        let slew = elapsed.saturating_mul(MAX_SLEW_PPM) / 1_000_000;
        let reading = if wall >= free { free + (wall - free).min(slew) } else { free - (free - wall).min(slew) };
        // A backward slew never reaches behind the last reading: it is at most a thousandth of
        // the time elapsed.
        self.monotonic = self.monotonic.max(monotonic);
        self.reading = reading.max(self.reading);
        self.reading
    }
}
