//! Commit latency while the idempotency-key cleanup deletes a million expired keys, on the
//! embedded store (SQLite: one writer connection, so a long DELETE holds every commit up).
//!
//! Run with `cargo bench -p wallex-benches --bench cleanup`. For each way of deleting (one
//! statement for everything, as before; `CLEANUP_CHUNK` keys per statement, as the server does), it
//! seeds a fresh store with 1,000,000 expired keys, starts the pipeline, and while the cleanup runs
//! submits credits one after another, recording each one's latency. It prints the cleanup's
//! duration and the commit latency's p50, p99 and maximum.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wallex_engine::{
    Amount, Command, CommandId, CommandKind, CommandRecord, Currency, Fingerprint, OwnerId, Rejection, Timestamp,
    TransactionId, WalletId,
};
use wallex_pipeline::bus::InProcessBus;
use wallex_pipeline::ports::{CommitBatch, EventStore};
use wallex_pipeline::{CLEANUP_CHUNK, Pipeline, PipelineConfig, Reply, SystemClock, forget_expired_keys};
use wallex_sql::SqliteStore;

const EXPIRED_KEYS: u64 = 1_000_000;
const SEED_BATCH: u64 = 8_192;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for (name, chunk) in [("one statement", usize::MAX), ("chunked", CLEANUP_CHUNK)] {
        let directory = std::env::temp_dir().join(format!("wallex-cleanup-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        let store = SqliteStore::open(&directory).await.unwrap();
        seed(&store).await;
        let mut config = PipelineConfig::default();
        config.writer.idempotency_cleanup_interval_ms = 24 * 3_600 * 1_000; // The bench runs it.
        config.writer.snapshot_every_events = u64::MAX;
        let pipeline = Pipeline::start(store.clone(), InProcessBus::new(), SystemClock, config).await.unwrap();
        let wallet = WalletId::parse("bench").unwrap();
        let create = CommandKind::CreateWallet {
            wallet_id: wallet,
            owner_id: OwnerId::parse("o").unwrap(),
            currency: Currency::USD,
            initial_balance: Amount::ZERO,
            overdraft_limit: Amount::ZERO,
        };
        let first = u128::from(EXPIRED_KEYS) + 1;
        assert!(matches!(
            pipeline.commands.submit(Command::new(CommandId(first), create)).await,
            Reply::Decided { .. }
        ));

        let cleanup_store = store.clone();
        let cleanup = tokio::spawn(async move {
            let started = Instant::now();
            let (_stop, mut shutdown) = tokio::sync::watch::channel(false);
            let before = Timestamp::from_unix_micros(EXPIRED_KEYS + 1);
            let forgotten = forget_expired_keys(&cleanup_store, before, chunk, &mut shutdown).await.unwrap();
            (forgotten, started.elapsed())
        });
        let mut latencies = Histogram::<u64>::new(3).unwrap();
        let mut id = first;
        // Only commits started while the cleanup runs.
        while !cleanup.is_finished() {
            id += 1;
            let credit = CommandKind::Credit {
                wallet_id: wallet,
                currency: Currency::USD,
                amount: Amount::from_minor(1).unwrap(),
                description: None,
            };
            let started = Instant::now();
            let reply = pipeline.commands.submit(Command::new(CommandId(id), credit)).await;
            assert!(matches!(reply, Reply::Decided { .. }), "{reply:?}");
            latencies.record(u64::try_from(started.elapsed().as_micros()).unwrap()).unwrap();
        }
        let (forgotten, took) = cleanup.await.unwrap();
        assert_eq!(forgotten, EXPIRED_KEYS);
        println!(
            "{name:>14}: {forgotten} keys in {:.2} s; {} commits started meanwhile: latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            took.as_secs_f64(),
            latencies.len(),
            latencies.value_at_quantile(0.5) as f64 / 1e3,
            latencies.value_at_quantile(0.99) as f64 / 1e3,
            latencies.max() as f64 / 1e3,
        );
        pipeline.shutdown().await;
        store.close().await;
        std::fs::remove_dir_all(&directory).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A million rejected commands recorded long ago, each with its idempotency key.
async fn seed(store: &SqliteStore) {
    let mut next = 1u64;
    while next <= EXPIRED_KEYS {
        let mut batch = CommitBatch::default();
        for transaction in next..(next + SEED_BATCH).min(EXPIRED_KEYS + 1) {
            batch.records.push(CommandRecord {
                command_id: CommandId(u128::from(transaction)),
                fingerprint: Fingerprint(u128::from(transaction)),
                at: Timestamp::from_unix_micros(transaction),
                transaction_id: TransactionId(transaction),
                result: Err(Rejection::WalletNotFound),
                refused_leg: None,
            });
        }
        next += batch.records.len() as u64;
        store.commit(&batch).await.unwrap();
    }
}
