//! Pipeline benches on the in-memory store and bus: how many commands per second go through group
//! commit (the writer, the engine and one store transaction per batch, with 64 concurrent
//! submitters), how many events per second a projection applies, and how many events per second
//! the wire form encodes and decodes.
//!
//! Run with `cargo bench -p wallex-benches --bench pipeline`. These isolate the pipeline's own cost;
//! the durable stores add their fsync and round trips on top (measured with `wallex-load`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wallex_benches::{create_wallets, mix};
use wallex_engine::{Config, Ledger, Outcome, Timestamp};
use wallex_pipeline::SystemClock;
use wallex_pipeline::bus::InProcessBus;
use wallex_pipeline::ports::{Projection, ProjectionStore};
use wallex_pipeline::{Pipeline, PipelineConfig, Reply};
use wallex_testkit::memory::MemoryStore;

const WALLETS: usize = 10_000;
const SUBMITTERS: usize = 64;
/// Commands per measured iteration.
const ROUND: usize = 8_192;
/// Events per projection call, as the projector batches them.
const PROJECTION_BATCH: usize = 4_096;

fn group_commit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(ROUND as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("commands_through_group_commit_memory_store", |b| {
        let pipeline = runtime.block_on(async {
            let pipeline =
                Pipeline::start(MemoryStore::new(), InProcessBus::new(), SystemClock, PipelineConfig::default())
                    .await
                    .unwrap();
            for command in create_wallets(WALLETS) {
                assert!(matches!(pipeline.commands.submit(command).await, Reply::Decided { .. }));
            }
            pipeline
        });
        let mut round = 0u64;
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    round += 1;
                    let mut tasks = Vec::with_capacity(SUBMITTERS);
                    for submitter in 0..SUBMITTERS {
                        let sender = pipeline.commands.clone();
                        let first = (u128::from(round) << 64) | (submitter * ROUND) as u128;
                        let commands = mix(WALLETS, ROUND / SUBMITTERS, first, round ^ submitter as u64);
                        tasks.push(tokio::spawn(async move {
                            for command in commands {
                                black_box(sender.submit(command).await);
                            }
                        }));
                    }
                    for task in tasks {
                        task.await.unwrap();
                    }
                }
                started.elapsed()
            })
        });
        runtime.block_on(pipeline.shutdown());
    });
    group.finish();
}

/// A journal's events in commit order: `WALLETS` creations, then `commands` of the mix.
fn journal_events(commands: usize, seed: u64) -> Vec<wallex_engine::Event> {
    let mut ledger = Ledger::new(Config::default());
    let mut events = Vec::new();
    let all = create_wallets(WALLETS).into_iter().chain(mix(WALLETS, commands, 1 << 64, seed));
    for (tick, command) in all.enumerate() {
        let outcome = ledger.execute(Timestamp::from_unix_micros(tick as u64 + 1), &command, &mut events);
        assert!(matches!(outcome, Outcome::Recorded(_)));
    }
    events
}

fn projection(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let events = journal_events(60_000, 3);
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    for projection in Projection::ALL {
        group.bench_function(format!("project_events_memory_store_{}", projection.group()), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let store = MemoryStore::new();
                    for batch in events.chunks(PROJECTION_BATCH) {
                        black_box(store.project(projection, batch).await.unwrap());
                    }
                    store
                })
            });
        });
    }
    group.finish();
}

/// The wire form: every event is encoded once (by the writer) and decoded by each projector and
/// the snapshotter.
fn codec(c: &mut Criterion) {
    let events = journal_events(20_000, 5);
    let encoded: Vec<Vec<u8>> = events.iter().map(wallex_pipeline::codec::encode_event).collect();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("encode_events", |b| {
        b.iter(|| {
            events.iter().map(|event| black_box(wallex_pipeline::codec::encode_event(event)).len()).sum::<usize>()
        })
    });
    group.bench_function("decode_events", |b| {
        b.iter(|| {
            encoded
                .iter()
                .map(|bytes| black_box(wallex_pipeline::codec::decode_event(bytes).unwrap()).version)
                .sum::<u64>()
        })
    });
    group.finish();
}

criterion_group!(benches, group_commit, projection, codec);
criterion_main!(benches);
