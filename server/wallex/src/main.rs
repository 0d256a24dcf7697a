//! The `wallex` binary: `serve` runs the service, `demo` tours the engine.

mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use wallex_http::{AppState, router};
use wallex_kafka::{KafkaBus, KafkaConfig};
use wallex_pipeline::SystemClock;
use wallex_pipeline::bus::InProcessBus;
use wallex_pipeline::ports::{Bus, EventStore, ProjectionStore};
use wallex_pipeline::{Pipeline, PipelineConfig};
use wallex_sql::PostgresStore;
use wallex_sql::SqliteStore;

#[derive(Debug, Parser)]
#[command(name = "wallex", version, about = "Wallex: an exact, event-sourced wallet ledger")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Serves the REST API. With DATABASE_URL it stores in PostgreSQL (migrating at start); without,
    /// in the embedded store: one durable SQLite file in --data-dir. With KAFKA_BROKERS it publishes
    /// to Kafka; without, to an in-process bus.
    Serve {
        /// Address to listen on; the port defaults to $PORT, else 3000.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Where the embedded store keeps its file.
        #[arg(long, default_value = "wallex-data")]
        data_dir: PathBuf,
        /// Most commands in one group commit.
        #[arg(long, default_value_t = PipelineConfig::default().writer.max_batch)]
        max_batch: usize,
        /// The events topic, when KAFKA_BROKERS is set.
        #[arg(long, default_value = "wallet-events")]
        kafka_topic: String,
        /// The dead-letter topic, when KAFKA_BROKERS is set.
        #[arg(long, default_value = "wallet-events-dlq")]
        kafka_dlq_topic: String,
    },
    /// Applies the PostgreSQL migrations to DATABASE_URL and exits.
    Migrate,
    /// Runs a short tour of the ledger engine in memory and prints what it decided.
    Demo,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Commands::Demo => {
            print!("{}", demo::run()?);
            Ok(())
        }
        Commands::Serve { listen, data_dir, max_batch, kafka_topic, kafka_dlq_topic } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let kafka = std::env::var("KAFKA_BROKERS").ok().map(|brokers| {
                let mut config = KafkaConfig::new(brokers);
                config.topic = kafka_topic;
                config.dead_letter_topic = kafka_dlq_topic;
                config
            });
            runtime.block_on(serve(listen, data_dir, max_batch, kafka))
        }
        Commands::Migrate => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let url = std::env::var("DATABASE_URL").context("DATABASE_URL must name the PostgreSQL database")?;
                let store = PostgresStore::connect(&url).await?;
                store.close().await;
                println!("migrations applied");
                Ok(())
            })
        }
    }
}

async fn serve(
    listen: Option<SocketAddr>,
    data_dir: PathBuf,
    max_batch: usize,
    kafka: Option<KafkaConfig>,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .init();
    let listen = match listen {
        Some(listen) => listen,
        None => {
            let port = std::env::var("PORT").ok().map(|port| port.parse()).transpose().context("PORT")?.unwrap_or(3000);
            SocketAddr::from(([0, 0, 0, 0], port))
        }
    };
    let mut config = PipelineConfig::default();
    config.writer.max_batch = max_batch.max(1);
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let store = PostgresStore::connect(&url).await.context("connecting to PostgreSQL")?;
            tracing::info!("store: postgresql");
            let requeue = store.clone();
            serve_on(store.clone(), kafka, listen, config, async move { requeue.requeue_unprojected().await }).await?;
            store.close().await;
        }
        Err(_) => {
            let store =
                SqliteStore::open(&data_dir).await.with_context(|| format!("opening {}", data_dir.display()))?;
            tracing::info!(data_dir = %data_dir.display(), "store: embedded");
            let requeue = store.clone();
            serve_on(store.clone(), kafka, listen, config, async move { requeue.requeue_unprojected().await }).await?;
            store.close().await;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves `store` on Kafka when configured, else on the in-process bus; that bus starts empty, so
/// first `requeue` puts back into the outbox whatever a projection had not applied.
async fn serve_on<S: EventStore + ProjectionStore>(
    store: S,
    kafka: Option<KafkaConfig>,
    listen: SocketAddr,
    config: PipelineConfig,
    requeue: impl std::future::Future<Output = Result<u64, wallex_pipeline::ports::StoreError>>,
) -> anyhow::Result<()> {
    match kafka {
        Some(kafka) => run_on_kafka(store, kafka, listen, config).await,
        None => {
            let requeued = requeue.await?;
            tracing::info!(requeued, "bus: in-process");
            run(store, InProcessBus::new(), "in-process", listen, config).await
        }
    }
}

async fn run_on_kafka<S: EventStore + ProjectionStore>(
    store: S,
    kafka: KafkaConfig,
    listen: SocketAddr,
    config: PipelineConfig,
) -> anyhow::Result<()> {
    let brokers = kafka.brokers.clone();
    let bus = KafkaBus::connect(kafka).await.with_context(|| format!("connecting to Kafka at {brokers}"))?;
    tracing::info!(%brokers, "bus: kafka");
    run(store, bus.clone(), "kafka", listen, config).await?;
    // Whatever the relay handed the producer is acknowledged (or failed) before exit.
    bus.flush(std::time::Duration::from_secs(10))?;
    Ok(())
}

/// Runs the pipeline and the HTTP server until SIGTERM or Ctrl-C, then drains.
async fn run<S: EventStore + ProjectionStore, B: Bus + std::fmt::Debug>(
    store: S,
    bus: B,
    bus_name: &'static str,
    listen: SocketAddr,
    config: PipelineConfig,
) -> anyhow::Result<()> {
    wallex_http::install_metrics();
    let pipeline = Pipeline::start(store.clone(), bus.clone(), SystemClock, config).await?;
    let state = AppState::new(pipeline.commands.clone(), store, pipeline.stats.clone(), bus_name).with_bus(bus);
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, "wallex serving");
    axum::serve(listener, router(state)).with_graceful_shutdown(stop_signal()).await?;
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
