//! Engine benches: how many commands per second one thread decides, how many events per second
//! replay applies, and how long a snapshot of a million wallets takes to encode and decode.
//!
//! Run with `cargo bench -p wallex-benches --bench engine`. Criterion prints `thrpt` in elements
//! per second: commands for `execute`, events for `replay`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use wallex_benches::{funded_ledger, mix};
use wallex_engine::{CommandId, Config, Ledger, Outcome, Timestamp};

const WALLETS: usize = 100_000;
/// Distinct mix commands, cycled through with fresh ids.
const MIX_COMMANDS: usize = 1 << 20;
/// Commands executed per measured iteration.
const BATCH: usize = 1_024;
/// Bench time advances 1 µs per command, so a retention of N µs keeps the last N command ids: the
/// dedup table is part of what is measured. Two windows: a short one whose table stays in cache (the
/// server backs the engine's window with its durable idempotency table) and a million ids.
const WINDOWS: [(&str, u64); 2] =
    [("execute_commands_100k_wallets", 10_000), ("execute_commands_100k_wallets_1m_ids", 1_000_000)];

fn execute(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.measurement_time(Duration::from_secs(8));
    for (name, retention) in WINDOWS {
        let config = Config { command_retention_micros: retention, ..Config::default() };
        group.bench_function(name, |b| {
            // Set up inside the closure so a filtered run (`-- replay`) skips it.
            let mut ledger = funded_ledger(config, WALLETS);
            let mut commands = mix(WALLETS, MIX_COMMANDS, 0, 42);
            let mut next_id = 1u128 << 64;
            let mut now = 1u64;
            let mut cursor = 0;
            let mut events = Vec::with_capacity(2 * BATCH);
            b.iter(|| {
                // One batch, as the writer hands it over: fresh ids, then execute in order.
                let batch = &mut commands[cursor..cursor + BATCH];
                cursor = (cursor + BATCH) % MIX_COMMANDS;
                for command in batch.iter_mut() {
                    command.id = CommandId(next_id);
                    next_id += 1;
                }
                for command in batch.iter() {
                    now += 1;
                    let outcome = ledger.execute(Timestamp::from_unix_micros(now), command, &mut events);
                    black_box(&outcome);
                }
                events.clear();
            });
            // Retention bounds the dedup table: the creations plus at most one window of mix commands.
            assert!(ledger.remembered_commands() as u64 <= WALLETS as u64 + retention + 1);
        });
    }
    group.finish();
}

/// The journal of 100,000 wallet creations and 400,000 mix commands.
fn journal() -> (Vec<(wallex_engine::CommandRecord, Vec<wallex_engine::Event>)>, usize) {
    let mut ledger = Ledger::new(Config::default());
    let mut journal = Vec::new();
    let mut events_total = 0;
    let commands = wallex_benches::create_wallets(WALLETS).into_iter().chain(mix(WALLETS, 400_000, 1 << 64, 7));
    for (tick, command) in commands.enumerate() {
        let mut events = Vec::new();
        let now = Timestamp::from_unix_micros(tick as u64 + 1);
        if let Outcome::Recorded(record) = ledger.execute(now, &command, &mut events) {
            events_total += events.len();
            journal.push((record, events));
        }
    }
    (journal, events_total)
}

fn replay(c: &mut Criterion) {
    let (journal, events_total) = journal();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(events_total as u64));
    group.sample_size(10);
    group.bench_function("replay_events", |b| {
        b.iter_batched(
            || Ledger::new(Config::default()),
            |mut ledger| {
                for (record, events) in &journal {
                    ledger.replay(record, events).expect("the journal replays");
                }
                ledger
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

fn snapshot(c: &mut Criterion) {
    let ledger = std::cell::OnceCell::new();
    let ledger = || ledger.get_or_init(|| funded_ledger(Config::default(), 1_000_000));
    let mut group = c.benchmark_group("engine");
    group.sample_size(10);
    group.bench_function("snapshot_encode_1m_wallets", |b| {
        let ledger = ledger();
        static SIZE: std::sync::Once = std::sync::Once::new();
        SIZE.call_once(|| {
            let bytes = ledger.encode_snapshot().len();
            eprintln!("snapshot of 1,000,000 wallets: {bytes} bytes ({} KiB)", bytes / 1024);
        });
        b.iter(|| black_box(ledger.encode_snapshot()))
    });
    group.bench_function("snapshot_decode_1m_wallets", |b| {
        let bytes = ledger().encode_snapshot();
        b.iter(|| black_box(Ledger::restore(&bytes, Config::default()).expect("the snapshot restores")))
    });
    group.finish();
}

criterion_group!(benches, execute, replay, snapshot);
criterion_main!(benches);
