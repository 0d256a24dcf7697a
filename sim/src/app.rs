//! The app node: the server's pipeline, unchanged, on the simulated store, broker and clock, with
//! the service layer (below HTTP) answering clients' commands. Killing the node kills every task
//! of the pipeline; restarting it recovers from the store (snapshot plus journal) and resumes the
//! relay and the projectors from the outbox and the committed offsets.

use std::sync::Arc;
use std::time::Duration;

use madsim::net::Endpoint;
use madsim::rand::{Rng, thread_rng};
use wallex_engine::{Command, Timestamp};
use wallex_pipeline::SteadyTime;
use wallex_pipeline::ports::Clock;
use wallex_pipeline::{
    LeaseConfig, Node, Pipeline, PipelineConfig, ProjectorConfig, RecoveryError, RelayConfig, StartError, WriterConfig,
};

use crate::broker::SimBus;
use crate::rpc::{self, APP_SERVICE};
use crate::store::SimStore;
use crate::world::world;

/// How long the engine remembers command ids in the simulator: short, so that retries often reach
/// the store's idempotency records instead.
pub const ENGINE_RETENTION_MICROS: u64 = 2_000_000;

/// The app's clock, read as production reads the system clock: the world's wall clock (simulated
/// time plus the steps the fault driver injects, forward and back) through `SteadyTime`, anchored
/// when the app starts, with simulated time as the monotonic clock.
#[derive(Clone, Debug)]
pub struct SimClock {
    started: tokio::time::Instant,
    steady: Arc<std::sync::Mutex<SteadyTime>>,
}

impl SimClock {
    pub fn new() -> SimClock {
        let steady = SteadyTime::new(world().now().unix_micros(), 0);
        SimClock { started: tokio::time::Instant::now(), steady: Arc::new(std::sync::Mutex::new(steady)) }
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        let monotonic = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let wall = world().now().unix_micros();
        Timestamp::from_unix_micros(crate::world::lock(&self.steady).read(wall, monotonic))
    }
}

/// The pipeline's configuration in the simulator: small pages and frequent snapshots, so recovery
/// paths run often; the relay's and projectors' pacing as the seed's swarm drew it.
pub fn pipeline_config() -> PipelineConfig {
    let (mark_interval_ms, linger_ms) = {
        let world = world();
        (world.swarm.relay_mark_interval_ms, world.swarm.projector_linger_ms)
    };
    let mut writer = WriterConfig {
        max_batch: 64,
        snapshot_every_events: 40,
        journal_page: 32,
        retry_backoff_ms: 50,
        idempotency_cleanup_interval_ms: 3_000,
        ..WriterConfig::default()
    };
    writer.engine_retention_micros = ENGINE_RETENTION_MICROS;
    // Each start draws its own key, as a real server does; the seed's RNG keeps it reproducible.
    writer.hash_seed = wallex_engine::HashSeed::new(thread_rng().r#gen(), thread_rng().r#gen());
    PipelineConfig {
        writer,
        relay: RelayConfig { batch: 64, idle_tick_ms: 250, retry_backoff_ms: 100, mark_interval_ms, window: 1_024 },
        projector: ProjectorConfig {
            batch: 64,
            poll_timeout_ms: 100,
            retry_backoff_ms: 100,
            max_held: 10_000,
            linger_ms,
            repair_after_ms: 1_000,
            reconcile_interval_ms: 3_000,
        },
        lease: LeaseConfig::default(),
    }
}

/// App node `index`: one instance of the cluster, named `app-{index}` (the same name across its
/// restarts). Whichever holds the writer lease decides; the others refuse commands as unavailable
/// (the HTTP layer would forward them; a client here retries on another node).
pub async fn run_node(index: usize) {
    let endpoint = Arc::new(Endpoint::bind(rpc::app_addr_of(index)).await.expect("the app's address is free"));
    let store = SimStore::new(endpoint.clone());
    let bus = SimBus::new(endpoint.clone());
    let node = Node { id: format!("app-{index}"), address: String::new() };
    // The process's clock is anchored once, when it starts, as `SystemClock` anchors on its first
    // reading: a start retried inside the process must not re-read a wall clock that stepped
    // meanwhile (the world corrects it only before a restart).
    let clock = SimClock::new();
    let pipeline = loop {
        match Pipeline::start_node(store.clone(), bus.clone(), clock.clone(), pipeline_config(), node.clone()).await {
            Ok(pipeline) => break pipeline,
            Err(StartError::Recovery(RecoveryError::Store(error))) => {
                world().note(format_args!("app recovery failed: {error}; retrying"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(StartError::Recovery(RecoveryError::Corrupt(reason))) => panic!("the app cannot recover: {reason}"),
            Err(StartError::Config(error)) => panic!("the simulator's configuration is refused: {error}"),
        }
    };
    world().note(format_args!("app-{index} up"));
    let commands = pipeline.commands.clone();
    // One command is one request; several are one batch request (`POST /batch`), queued whole.
    rpc::serve(endpoint, APP_SERVICE, move |mut batch: Vec<Command>| {
        let commands = commands.clone();
        async move {
            Some(match batch.len() {
                1 => vec![commands.submit(batch.remove(0)).await],
                _ => commands.submit_all(batch).await,
            })
        }
    })
    .await;
    drop(pipeline);
}
