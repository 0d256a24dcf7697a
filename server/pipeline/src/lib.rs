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
pub mod writer;

use std::sync::Arc;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use projector::{ProjectorConfig, ProjectorStats};
pub use relay::{RelayConfig, RelayStats};
pub use writer::{CommandSender, RecoveryError, Reply, WriterConfig, WriterHealth, WriterState};

use crate::ports::{Bus, Clock, EventStore, Projection, ProjectionStore};

/// Every knob of the pipeline, each with a default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub writer: WriterConfig,
    pub relay: RelayConfig,
    pub projector: ProjectorConfig,
}

impl PipelineConfig {
    /// Refuses an inconsistent or unworkable setting, naming it; nothing is clamped.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.writer.validate()?;
        self.relay.validate()?;
        self.projector.validate()
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
    shutdown: watch::Sender<bool>,
    writer: JoinHandle<wallex_engine::Ledger>,
    workers: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Recovers the write side from `store` (snapshot plus journal) and starts the writer, the
    /// relay and both projectors. The relay resumes from the unpublished outbox and each projector
    /// from its consumer group's committed offsets.
    pub async fn start<S, B, C>(store: S, bus: B, clock: C, config: PipelineConfig) -> Result<Pipeline, StartError>
    where
        S: EventStore + ProjectionStore,
        B: Bus,
        C: Clock,
    {
        let committed = Arc::new(Notify::new());
        config.validate()?;
        let stats = Arc::new(PipelineStats::default());
        let (writer, commands) = writer::Writer::start(
            store.writer_handle(),
            clock.clone(),
            config.writer,
            committed.clone(),
            stats.writer.clone(),
        )
        .await?;
        let (shutdown, stop) = watch::channel(false);
        let writer = tokio::spawn(writer.run());
        let clock_for_cleanup = clock.clone();
        let mut workers = vec![tokio::spawn(relay::run_relay(
            store.clone(),
            bus.clone(),
            clock.clone(),
            config.relay,
            committed,
            stats.relay.clone(),
            stop.clone(),
        ))];
        workers.push(tokio::spawn(run_cleanup(
            store.clone(),
            clock_for_cleanup,
            config.writer.idempotency_retention_micros,
            config.writer.idempotency_cleanup_interval_ms,
            stop.clone(),
        )));
        workers.push(tokio::spawn(projector::run_reconciliation(
            store.clone(),
            clock.clone(),
            config.projector,
            stats.reconciliation.clone(),
            stop.clone(),
        )));
        for projection in Projection::ALL {
            let projector_stats = match projection {
                Projection::ReadModel => stats.read_model.clone(),
                Projection::Ledger => stats.ledger.clone(),
            };
            workers.push(tokio::spawn(projector::run_projector(
                projection,
                store.clone(),
                bus.clone(),
                clock.clone(),
                config.projector,
                projector_stats,
                stop.clone(),
            )));
        }
        Ok(Pipeline { commands, stats, shutdown, writer, workers })
    }

    /// Resolves when the writer has stopped: after `shutdown`, or because it failed (a journal it
    /// cannot replay). A server answers no write without it, so it should exit.
    pub async fn writer_stopped(&self) {
        self.stats.writer.stopped().await;
    }

    /// Stops accepting commands, lets the writer finish what is queued, then stops the relay and
    /// projectors. Returns the final ledger.
    pub async fn shutdown(self) -> wallex_engine::Ledger {
        let Pipeline { commands, shutdown, writer, workers, .. } = self;
        drop(commands);
        let ledger = writer.await.expect("the writer does not panic");
        let _ = shutdown.send(true);
        for worker in workers {
            let _ = worker.await;
        }
        ledger
    }
}

/// Deletes expired idempotency keys every `interval_ms` (their ids may then be used again).
async fn run_cleanup<S: EventStore, C: Clock>(
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
        match store.forget_idempotency_keys(before).await {
            Ok(forgotten) => {
                metrics::counter!("wallex_idempotency_keys_forgotten_total").increment(forgotten);
                tracing::debug!(forgotten, "expired idempotency keys deleted");
            }
            Err(error) => tracing::warn!(%error, "idempotency cleanup failed; retrying next round"),
        }
    }
}

/// The wall clock, for production; the simulator passes its own clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl ports::Clock for SystemClock {
    fn now(&self) -> wallex_engine::Timestamp {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        wallex_engine::Timestamp::from_unix_micros(u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX))
    }
}
