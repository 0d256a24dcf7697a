//! Upgrading a store in place: migration 0002 turns the outbox table into a cursor over the events
//! without losing or skipping an unpublished message; 0008 moves the projections' checkpoints into
//! their own rows without moving any of them.

use wallex_testkit::services as support;

use wallex_pipeline::ports::EventStore;

/// Three transactions with events; the old outbox still holds transaction 2's second event and
/// all of transaction 3's (the relay had marked through (2, 0)).
const OLD_ROWS: &[(i64, i32)] = &[(1, 0), (2, 0), (2, 1), (3, 0), (3, 1)];
const WAITING: &[(i64, i32)] = &[(2, 1), (3, 0), (3, 1)];

/// Writes `OLD_ROWS` and `WAITING` into a store at migration 0001 through `$pool` (SQLite or
/// PostgreSQL: both take `$N` parameters).
macro_rules! seed_old_outbox {
    ($pool:expr) => {
        for (transaction, index) in OLD_ROWS {
            if *index == 0 {
                sqlx::query("INSERT INTO commands (transaction_id, command_id, fingerprint, at) VALUES ($1, $2, $3, $4)")
                    .bind(transaction)
                    .bind(transaction.to_be_bytes().to_vec())
                    .bind(vec![0u8; 16])
                    .bind(1_000 + transaction)
                    .execute($pool)
                    .await
                    .unwrap();
            }
            sqlx::query(
                "INSERT INTO events (transaction_id, idx, wallet_id, version, payload) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(transaction)
            .bind(index)
            .bind(format!("w{transaction}-{index}"))
            .bind(1_i64)
            .bind(vec![1u8])
            .execute($pool)
            .await
            .unwrap();
        }
        for (transaction, index) in WAITING {
            sqlx::query(
                "INSERT INTO outbox (transaction_id, idx, wallet_id, payload, committed_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(transaction)
            .bind(index)
            .bind(format!("w{transaction}-{index}"))
            .bind(vec![1u8])
            .bind(1_000 + transaction)
            .execute($pool)
            .await
            .unwrap();
        }
    };
}

/// A fresh embedded store's directory, and a pool on its file with migrations up to `version`.
async fn old_sqlite(version: i64) -> (std::path::PathBuf, sqlx::SqlitePool) {
    let directory = std::env::temp_dir().join(format!("wallex-migrate-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&directory).unwrap();
    let url = format!("sqlite://{}?mode=rwc", directory.join(wallex_sql::sqlite::DATABASE_FILE).display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::migrate!("../../migrations/sqlite").run_to(version, &pool).await.unwrap();
    (directory, pool)
}

/// The waiting messages' positions, as the migrated store's relay will read them.
async fn waiting_positions(store: &impl EventStore) -> Vec<(u64, u32)> {
    let waiting = store.outbox_after(None, 100).await.unwrap();
    waiting.iter().map(|m| (m.position.transaction_id.0, m.position.index)).collect()
}

#[tokio::test]
async fn the_outbox_cursor_starts_at_the_oldest_unpublished_message_in_sqlite() {
    let (directory, pool) = old_sqlite(1).await;
    seed_old_outbox!(&pool);
    pool.close().await;

    let store = wallex_sql::SqliteStore::open(&directory).await.unwrap();
    // Transaction 2 is republished whole: at least once, never skipped.
    assert_eq!(waiting_positions(&store).await, vec![(2, 0), (2, 1), (3, 0), (3, 1)], "nothing unpublished is skipped");
    let first = &store.outbox_after(None, 1).await.unwrap()[0];
    assert_eq!(first.committed_at.unix_micros(), 1_002, "commit time comes from the command");
    assert_eq!(store.outbox_backlog().await.unwrap().0, 4);
    store.close().await;
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn the_outbox_cursor_starts_at_the_oldest_unpublished_message_in_postgres() {
    let database = support::postgres().await;
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    sqlx::migrate!("../../migrations/postgres").run_to(1, &pool).await.unwrap();
    seed_old_outbox!(&pool);
    pool.close().await;

    let store = wallex_sql::PostgresStore::connect(&database.url).await.unwrap();
    assert_eq!(waiting_positions(&store).await, vec![(2, 0), (2, 1), (3, 0), (3, 1)], "nothing unpublished is skipped");
    assert_eq!(store.outbox_backlog().await.unwrap().0, 4);
    store.close().await;
}

#[tokio::test]
async fn an_empty_outbox_means_everything_was_published() {
    let (directory, pool) = old_sqlite(1).await;
    sqlx::query("INSERT INTO commands (transaction_id, command_id, fingerprint, at) VALUES (1, x'01', x'00', 5)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO events (transaction_id, idx, wallet_id, version, payload) VALUES (1, 0, 'w', 1, x'01')")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let store = wallex_sql::SqliteStore::open(&directory).await.unwrap();
    assert!(store.outbox_after(None, 100).await.unwrap().is_empty(), "the published event is not republished");
    store.close().await;
    std::fs::remove_dir_all(&directory).unwrap();
}

/// Writes, into a store at migration 0007 through `$pool`, wallet `a` (read model and ledger at
/// version 3, two entries summed) and wallet `b` (created, no entry: a ledger checkpoint at 1 and
/// no summary row), as the projections and their `projection_checkpoints` left them.
macro_rules! seed_old_checkpoints {
    ($pool:expr) => {
        for (wallet, version) in [("a", 3_i64), ("b", 1)] {
            sqlx::query(
                "INSERT INTO wallets (wallet_id, owner_id, currency, balance, held, overdraft_limit, version, \
                 created_at, updated_at) VALUES ($1, 'owner', 'EUR', 0, 0, 0, $2, 1, 1)",
            )
            .bind(wallet)
            .bind(version)
            .execute($pool)
            .await
            .unwrap();
            for projection in ["read-model-projector", "ledger-projector"] {
                sqlx::query("INSERT INTO projection_checkpoints (projection, wallet_id, version) VALUES ($1, $2, $3)")
                    .bind(projection)
                    .bind(wallet)
                    .bind(version)
                    .execute($pool)
                    .await
                    .unwrap();
            }
        }
        sqlx::query(
            "INSERT INTO wallet_summaries (wallet_id, currency, total_credits, total_debits, transaction_count, \
             last_version) VALUES ('a', 'EUR', 700, 200, 2, 3)",
        )
        .execute($pool)
        .await
        .unwrap();
    };
}

/// After migration 0008 each projection reads its checkpoints from its own rows, with the values
/// `projection_checkpoints` held; a wallet without entries still has no summary.
async fn assert_checkpoints_moved(store: &impl wallex_pipeline::ports::ProjectionStore) {
    use wallex_pipeline::ports::Projection;
    let wallets: Vec<wallex_engine::WalletId> =
        ["a", "b", "c"].iter().map(|id| wallex_engine::WalletId::parse(id).unwrap()).collect();
    for projection in [Projection::ReadModel, Projection::Ledger] {
        assert_eq!(store.projected_versions(projection, &wallets).await.unwrap(), vec![3, 1, 0], "{projection:?}");
        assert_eq!(store.projected_version(projection, &wallets[1]).await.unwrap(), 1, "{projection:?}");
    }
    let summary = store.wallet_summary(&wallets[0]).await.unwrap().expect("a has entries");
    assert_eq!((summary.total_credits, summary.total_debits, summary.transaction_count), (700, 200, 2));
    assert_eq!(summary.last_version, 3);
    assert_eq!(store.wallet_summary(&wallets[1]).await.unwrap(), None, "b has no entries");
}

#[tokio::test]
async fn the_projection_checkpoints_move_into_the_projections_rows_in_sqlite() {
    let (directory, pool) = old_sqlite(7).await;
    seed_old_checkpoints!(&pool);
    pool.close().await;

    let store = wallex_sql::SqliteStore::open(&directory).await.unwrap();
    assert_checkpoints_moved(&store).await;
    store.close().await;
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn the_projection_checkpoints_move_into_the_projections_rows_in_postgres() {
    let database = support::postgres().await;
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    sqlx::migrate!("../../migrations/postgres").run_to(7, &pool).await.unwrap();
    seed_old_checkpoints!(&pool);
    pool.close().await;

    let store = wallex_sql::PostgresStore::connect(&database.url).await.unwrap();
    assert_checkpoints_moved(&store).await;
    store.close().await;
}
