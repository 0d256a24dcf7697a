//! The pipeline, generic over the ports: command processor → store → outbox relay → bus →
//! projectors. It names no concrete adapter (no sqlx, rdkafka or axum) and compiles under
//! `--cfg madsim`, so the simulator runs exactly this code.

pub mod codec;
pub mod processor;
pub mod projector;
pub mod relay;

use std::sync::Arc;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use processor::{CommandSender, ProcessorConfig, RecoveryError, Reply};
pub use projector::{ProjectorConfig, ProjectorStats};
pub use relay::{RelayConfig, RelayStats};

use crate::ports::{Bus, Clock, EventStore, Projection, ProjectionStore};

/// Every knob of the pipeline, each with a default.
#[derive(Clone, Copy, Debug, Default)]
pub struct PipelineConfig {
    pub processor: ProcessorConfig,
    pub relay: RelayConfig,
    pub projector: ProjectorConfig,
}

/// Counters the health endpoints and metrics read.
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub relay: Arc<RelayStats>,
    pub read_model: Arc<ProjectorStats>,
    pub ledger: Arc<ProjectorStats>,
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
    processor: JoinHandle<wallex_engine::Ledger>,
    workers: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Recovers the write side from `store` (snapshot plus journal) and starts the processor, the
    /// relay and both projectors. The relay resumes from the unpublished outbox and each projector
    /// from its consumer group's committed offsets.
    pub async fn start<S, B, C>(store: S, bus: B, clock: C, config: PipelineConfig) -> Result<Pipeline, RecoveryError>
    where
        S: EventStore + ProjectionStore,
        B: Bus,
        C: Clock,
    {
        let committed = Arc::new(Notify::new());
        let (processor, commands) =
            processor::Processor::start(store.clone(), clock.clone(), config.processor, committed.clone()).await?;
        let (shutdown, stop) = watch::channel(false);
        let stats = Arc::new(PipelineStats::default());
        let processor = tokio::spawn(processor.run());
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
            config.processor.idempotency_retention_micros,
            config.processor.idempotency_cleanup_interval_ms,
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
        Ok(Pipeline { commands, stats, shutdown, processor, workers })
    }

    /// Stops accepting commands, lets the processor finish what is queued, then stops the relay and
    /// projectors. Returns the final ledger.
    pub async fn shutdown(self) -> wallex_engine::Ledger {
        let Pipeline { commands, shutdown, processor, workers, .. } = self;
        drop(commands);
        let ledger = processor.await.expect("the command processor does not panic");
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
