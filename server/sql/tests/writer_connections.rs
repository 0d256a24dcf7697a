//! The single writer has connections of its own: with every shared connection held (a flood of
//! slow reads, a stuck projector), commands still commit.

use std::time::Duration;

use wallex_engine::{Amount, Command, CommandId, CommandKind, Currency, OwnerId, WalletId};
use wallex_pipeline::bus::InProcessBus;
use wallex_pipeline::ports::{EventStore, ProjectionStore};
use wallex_pipeline::{Pipeline, PipelineConfig, Reply, SystemClock};
use wallex_sql::{PostgresStore, SqliteStore};
use wallex_testkit::services as support;

/// Longer than a commit ever takes here, much shorter than the pool's acquire timeout (10 s): a
/// writer waiting for a shared connection misses it.
const PATIENCE: Duration = Duration::from_secs(5);

async fn submit(pipeline: &Pipeline, id: u128, kind: CommandKind) -> Reply {
    let command = Command::new(CommandId(id), kind);
    tokio::time::timeout(PATIENCE, pipeline.commands.submit(command)).await.unwrap_or_else(|_| {
        panic!("command {id} was not answered within {PATIENCE:?}: the writer waits for a connection")
    })
}

/// With the `held` shared connections taken (all of them), creates a wallet and credits it.
async fn commits_with_every_shared_connection_held<S: EventStore + ProjectionStore, H>(store: S, held: Vec<H>) {
    let pipeline = Pipeline::start(store.clone(), InProcessBus::new(), SystemClock, PipelineConfig::default())
        .await
        .expect("the writer recovers through its own connections");
    let wallet = WalletId::parse("held-pool").unwrap();
    let created = submit(
        &pipeline,
        1,
        CommandKind::CreateWallet {
            wallet_id: wallet,
            owner_id: OwnerId::parse("owner").unwrap(),
            currency: Currency::USD,
            initial_balance: Amount::ZERO,
            overdraft_limit: Amount::ZERO,
        },
    )
    .await;
    assert!(matches!(created, Reply::Decided { record, .. } if record.result.is_ok()), "{created:?}");
    let credit = CommandKind::Credit {
        wallet_id: wallet,
        currency: Currency::USD,
        amount: Amount::from_minor(250).unwrap(),
        description: None,
    };
    let credited = submit(&pipeline, 2, credit.clone()).await;
    assert!(matches!(credited, Reply::Decided { record, .. } if record.result.is_ok()), "{credited:?}");
    // A retry is answered from the store, through the writer's connections too.
    let retried = submit(&pipeline, 2, credit).await;
    assert!(matches!(retried, Reply::Decided { replayed: true, .. }), "{retried:?}");
    assert_eq!(store.writer_handle().journal(wallex_engine::TransactionId(0), 10).await.unwrap().len(), 2);
    drop(held);
    let ledger = pipeline.shutdown().await.expect("the only instance is the writer");
    assert_eq!(ledger.wallet(&wallet).map(|wallet| wallet.balance), Some(250));
}

#[tokio::test]
async fn with_every_shared_postgres_connection_held_a_credit_still_commits() {
    let database = support::postgres().await;
    let store = PostgresStore::connect(&database.url).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..wallex_sql::postgres::DEFAULT_POOL_SIZE {
        held.push(store.hold_shared_connection().await.expect("a shared connection"));
    }
    commits_with_every_shared_connection_held(store.clone(), held).await;
    store.close().await;
}

#[tokio::test]
async fn with_every_shared_sqlite_connection_held_a_credit_still_commits() {
    let directory = std::env::temp_dir().join(format!("wallex-held-{}", uuid::Uuid::new_v4()));
    let store = SqliteStore::open(&directory).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..wallex_sql::sqlite::READERS {
        held.push(store.hold_shared_connection().await.expect("a shared connection"));
    }
    commits_with_every_shared_connection_held(store.clone(), held).await;
    store.close().await;
    std::fs::remove_dir_all(&directory).unwrap();
}
