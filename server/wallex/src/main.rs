//! The `wallex` binary: `serve` runs the service, `migrate` prepares PostgreSQL, `config` prints
//! the effective configuration, `demo` tours the engine.

mod config;
mod demo;
mod keys;
mod tls;

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use config::{Config, ConfigArgs, HttpConfig};
use wallex_http::{AppState, router, split_routers};
use wallex_kafka::{KafkaBus, KafkaConfig};
use wallex_pipeline::SystemClock;
use wallex_pipeline::bus::InProcessBus;
use wallex_pipeline::ports::{Bus, EventStore, KeyStore, ProjectionStore};
use wallex_pipeline::{Node, Pipeline, PipelineConfig};
use wallex_sql::{PostgresStore, SqliteStore};

/// Every request allocates its body, its parsed command, its answer and the rows it is written
/// with, from whichever worker thread runs it: glibc's allocator spent 15–17 % of the server's
/// CPU on that (its arena locks and `malloc_consolidate`), mimalloc's thread-local heaps a
/// fraction of it (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "wallex", version, about = "Wallex: an exact, event-sourced wallet ledger")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Serves the REST API. With a database URL (DATABASE_URL) it stores in PostgreSQL (migrating
    /// at start); without, in the embedded store: one durable SQLite file in the data directory.
    /// With Kafka brokers (KAFKA_BROKERS) it publishes to Kafka; without, to an in-process bus.
    Serve(ConfigArgs),
    /// Applies the PostgreSQL migrations to the configured database and exits.
    Migrate(ConfigArgs),
    /// Prints the effective configuration (defaults, file, environment, flags) as TOML, secrets
    /// masked, after checking it as `serve` would.
    Config(ConfigArgs),
    /// Runs a short tour of the ledger engine in memory and prints what it decided.
    Demo,
    /// Manages API keys in the configured store: `create`, `list`, `revoke`.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
}

fn main() -> anyhow::Result<()> {
    let load = |args: &ConfigArgs| Config::load(args, std::env::vars());
    match Cli::parse().command {
        Commands::Demo => {
            print!("{}", demo::run()?);
            Ok(())
        }
        Commands::Keys { command } => {
            let config = load(command.config())?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let out = runtime.block_on(async {
                match &config.store.database_url {
                    Some(url) => {
                        let store = PostgresStore::connect(url).await.context("connecting to PostgreSQL")?;
                        let out = keys::run(&store, command).await;
                        store.close().await;
                        out
                    }
                    None => {
                        let data_dir = &config.store.data_dir;
                        let store = SqliteStore::open(data_dir)
                            .await
                            .with_context(|| format!("opening {}", data_dir.display()))?;
                        let out = keys::run(&store, command).await;
                        store.close().await;
                        out
                    }
                }
            })?;
            print!("{out}");
            Ok(())
        }
        Commands::Config(args) => {
            print!("{}", load(&args)?.render());
            Ok(())
        }
        Commands::Serve(args) => {
            let config = load(&args)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(config))
        }
        Commands::Migrate(args) => {
            let config = load(&args)?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let url = config
                    .store
                    .database_url
                    .context("DATABASE_URL (store.database_url) must name the PostgreSQL database")?;
                let store = PostgresStore::connect(&url).await?;
                store.close().await;
                println!("migrations applied");
                Ok(())
            })
        }
    }
}

/// A fresh key for the engine's id indexes, from the operating system, never stored: ids chosen to
/// collide under one process's key mean nothing to the next.
fn secret_hash_seed() -> anyhow::Result<wallex_engine::HashSeed> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("drawing the hash seed: {error}"))?;
    Ok(wallex_engine::HashSeed::from_bytes(bytes))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.filter))
        .context("log.filter")?;
    tracing_subscriber::fmt().json().with_env_filter(filter).init();
    let http = config.http.clone();
    let kafka = config.kafka();
    let mut pipeline = config.pipeline;
    pipeline.writer.hash_seed = secret_hash_seed()?;
    let node = config.cluster.node(config.http.listen);
    match &config.store.database_url {
        Some(url) => {
            let store = PostgresStore::connect(url).await.context("connecting to PostgreSQL")?;
            tracing::info!("store: postgresql");
            let requeue = store.clone();
            serve_on(store.clone(), kafka, http, pipeline, node, async move { requeue.requeue_unprojected().await })
                .await?;
            store.close().await;
        }
        None => {
            let data_dir = &config.store.data_dir;
            let store = SqliteStore::open(data_dir).await.with_context(|| format!("opening {}", data_dir.display()))?;
            tracing::info!(data_dir = %data_dir.display(), "store: embedded");
            let requeue = store.clone();
            serve_on(store.clone(), kafka, http, pipeline, node, async move { requeue.requeue_unprojected().await })
                .await?;
            store.close().await;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long a stopping server waits for the broker to acknowledge what the relay handed the producer.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `store` on Kafka when configured, else on the in-process bus; that bus starts empty, so
/// first `requeue` puts back into the outbox whatever a projection had not applied.
async fn serve_on<S: EventStore + ProjectionStore + KeyStore + std::fmt::Debug>(
    store: S,
    kafka: Option<KafkaConfig>,
    http: HttpConfig,
    config: PipelineConfig,
    node: Node,
    requeue: impl std::future::Future<Output = Result<u64, wallex_pipeline::ports::StoreError>>,
) -> anyhow::Result<()> {
    match kafka {
        Some(kafka) => run_on_kafka(store, kafka, http, config, node).await,
        None => {
            let requeued = requeue.await?;
            tracing::info!(requeued, "bus: in-process");
            run(store, InProcessBus::new(), "in-process", http, config, node).await
        }
    }
}

async fn run_on_kafka<S: EventStore + ProjectionStore + KeyStore + std::fmt::Debug>(
    store: S,
    kafka: KafkaConfig,
    http: HttpConfig,
    config: PipelineConfig,
    node: Node,
) -> anyhow::Result<()> {
    let brokers = kafka.brokers.clone();
    let bus = KafkaBus::connect(kafka).await.with_context(|| format!("connecting to Kafka at {brokers}"))?;
    tracing::info!(%brokers, "bus: kafka");
    run(store, bus.clone(), "kafka", http, config, node).await?;
    // Whatever the relay handed the producer is acknowledged (or failed) before exit.
    bus.flush(FLUSH_TIMEOUT)?;
    Ok(())
}

/// Runs the pipeline and the HTTP server until SIGTERM or Ctrl-C, then drains.
async fn run<S: EventStore + ProjectionStore + KeyStore + std::fmt::Debug, B: Bus + std::fmt::Debug>(
    store: S,
    bus: B,
    bus_name: &'static str,
    http: HttpConfig,
    config: PipelineConfig,
    node: Node,
) -> anyhow::Result<()> {
    // Before anything starts: no key, and an address beyond this machine, is refused.
    let keys = KeyStore::api_keys(&store).await.context("reading the API keys")?;
    if keys.is_empty() && !http.listen.ip().is_loopback() && !http.insecure_allow_anonymous {
        anyhow::bail!(
            "refusing to serve on {} without API keys: anyone who reaches it could move any money. Create a \
             key (`wallex keys create --scope admin`), listen on loopback, or pass --insecure-allow-anonymous",
            http.listen
        );
    }
    // TLS is read before anything starts, so a bad certificate stops nothing but the start.
    let tls = match (&http.tls_cert, &http.tls_key) {
        (Some(cert), Some(key)) => Some(tls::load(cert, key).await?),
        _ => None,
    };
    wallex_http::install_metrics();
    let listen = http.listen;
    // Bound before the pipeline starts: a second process on this address (so with this node id)
    // fails here, before it could take the writer lease.
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let pipeline = Pipeline::start_node(store.clone(), bus.clone(), SystemClock, config, node.clone()).await?;
    let cluster = wallex_http::cluster::Cluster::new(node.id.clone(), pipeline.role(), http.limits().timeout);
    let state = AppState::new(pipeline.commands.clone(), store.clone(), pipeline.stats.clone(), bus_name)
        .with_cluster(cluster)
        .with_bus(bus)
        .with_keys(store, http.rate_limits)
        .requiring_idempotency_keys(http.require_idempotency_key)
        .with_max_batch_operations(http.max_batch_operations)
        .with_limits(http.limits());
    let state = Arc::new(state);
    if !state.requires_keys().await.context("reading the API keys")? {
        tracing::warn!(
            %listen,
            "DEVELOPMENT MODE: the store holds no API key, so requests are not authenticated and may do \
             anything; create one with `wallex keys create --scope admin` to require keys"
        );
    }
    let (main, ops) = match http.ops_listen {
        Some(_) => {
            let (main, ops) = split_routers(state);
            (main, Some(ops))
        }
        None => (router(state), None),
    };
    tracing::info!(%listen, tls = tls.is_some(), node = %node.id, "wallex serving");
    let served_http = http.clone();
    let server = async move {
        let http = served_http;
        match tls {
            None => axum::serve(listener, main).with_graceful_shutdown(stop_signal()).await.context("serving"),
            Some(config) => tls::serve(listener, main, config, &http, stop_signal()).await,
        }
    };
    if let (Some(address), Some(ops)) = (http.ops_listen, ops) {
        let listener = tokio::net::TcpListener::bind(address).await.with_context(|| format!("binding {address}"))?;
        tracing::info!(listen = %address, "operational routes serving");
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, ops).await {
                tracing::error!(%error, "the operational listener failed");
            }
        });
    }
    tokio::select! {
        served = server => served?,
        // A process without its writer would serve reads, fail every write and look alive: exit,
        // so a supervisor restarts it (recovery then finds the same fault, or none).
        () = pipeline.writer_stopped() => {
            tracing::error!("the writer stopped while serving; exiting");
            anyhow::bail!("the writer stopped while serving");
        }
    }
    tracing::info!("draining");
    pipeline.shutdown().await;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn stop_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
