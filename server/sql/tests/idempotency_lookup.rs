//! A group commit's idempotency lookup probes the keys' index for each id, however large the
//! batch: as a plain join, PostgreSQL hashed the whole key table for a batch of a thousand ids
//! (a sequential scan per group commit, growing with every live key).

use wallex_engine::CommandId;
use wallex_pipeline::ports::EventStore;
use wallex_testkit::services as support;

/// Live keys in the table, each with its command, as a day of traffic leaves them (fewer here).
const LIVE_KEYS: i64 = 30_000;

#[tokio::test]
async fn a_batch_of_a_thousand_ids_probes_the_key_index_on_postgres() {
    let database = support::postgres().await;
    let store = wallex_sql::PostgresStore::connect(&database.url).await.unwrap();
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    sqlx::query(
        "INSERT INTO commands (transaction_id, command_id, fingerprint, at) \
         SELECT g, decode(lpad(to_hex(g), 32, '0'), 'hex'), decode(lpad(to_hex(g), 32, '0'), 'hex'), g \
         FROM generate_series(1, $1) AS g",
    )
    .bind(LIVE_KEYS)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (command_id, transaction_id, at) \
         SELECT decode(lpad(to_hex(g), 32, '0'), 'hex'), g, g FROM generate_series(1, $1) AS g",
    )
    .bind(LIVE_KEYS)
    .execute(&pool)
    .await
    .unwrap();
    // The statistics autovacuum keeps: the planner knows how large the tables are.
    sqlx::query("ANALYZE commands, idempotency_keys").execute(&pool).await.unwrap();

    let batch: Vec<CommandId> = (0..1_000u128).map(|n| CommandId((1 << 100) + n)).collect();
    let plan = store.explain_idempotency_lookup(&batch).await.unwrap();
    let scans = |line: &String| line.contains("Seq Scan") || line.contains("Hash Join");
    assert!(!plan.iter().any(scans), "the lookup scans a table:\n{}", plan.join("\n"));
    assert!(
        plan.iter().any(|line| line.contains("idempotency_keys_pkey")),
        "the lookup does not probe the keys' index:\n{}",
        plan.join("\n")
    );

    // And it finds what is there: three live keys among fresh ids.
    let mut mixed = batch[..10].to_vec();
    mixed.extend([7u128, 70, 7_000].map(CommandId));
    let found = store.command_records(&mixed, wallex_engine::Timestamp::from_unix_micros(0)).await.unwrap();
    let mut ids: Vec<u128> = found.iter().map(|record| record.command_id.0).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 70, 7_000]);
    pool.close().await;
    store.close().await;
}
