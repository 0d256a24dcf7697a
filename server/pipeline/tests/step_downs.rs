//! A step-down is counted once: the renewal that finds the lease gone counts it, and neither the
//! renewals that fail again while the writer finishes its commit nor that commit's fencing count
//! it again. (Its own test binary: it installs the process's metrics recorder.)

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use wallex_engine::{Amount, Command, CommandId, CommandKind, Currency, OwnerId, WalletId};
use wallex_pipeline::bus::InProcessBus;
use wallex_pipeline::ports::{Epoch, EventStore};
use wallex_pipeline::{LeaseConfig, Node, Pipeline, PipelineConfig, Reply, Role, SystemClock};
use wallex_testkit::memory::MemoryStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_loses_its_lease_with_a_commit_in_flight_counts_one_step_down() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder of this process");

    let store = MemoryStore::new();
    let config = PipelineConfig {
        // Renewals every 20 ms: several fail while the commit below is held.
        lease: LeaseConfig { lease_ms: 60_000, renew_ms: 20, poll_ms: 20 },
        ..PipelineConfig::default()
    };
    let node = Node { id: "a".to_owned(), address: "http://a".to_owned() };
    let a = Pipeline::start_node(store.clone(), InProcessBus::new(), SystemClock, config, node).await.unwrap();

    // A commit in flight, held by the store, while another node takes the lease.
    let pause = store.pause_commits().await;
    let commands = a.commands.clone();
    let create = CommandKind::CreateWallet {
        wallet_id: WalletId::parse("w").unwrap(),
        owner_id: OwnerId::parse("owner").unwrap(),
        currency: Currency::USD,
        initial_balance: Amount::ZERO,
        overdraft_limit: Amount::ZERO,
    };
    let pending = tokio::spawn(async move { commands.submit(Command::new(CommandId(1), create)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.release_lease(Epoch(1)).await.unwrap();
    store.acquire_lease("b", "http://b", 60_000).await.unwrap().expect("the lease is free");
    // Renewals find the lease gone, again and again, while the commit is held.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(pause);
    assert!(matches!(pending.await.unwrap(), Reply::Unavailable(_)), "the held commit is fenced off");
    let mut role = a.role();
    tokio::time::timeout(Duration::from_secs(2), role.wait_for(|role| matches!(role, Role::Follower { .. })))
        .await
        .expect("a steps down in time")
        .expect("the seat runs");

    let mut step_downs = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if key.key().name() == "wallex_writer_step_downs_total" {
            let DebugValue::Counter(count) = value else { panic!("a counter") };
            let reason: Vec<String> = key.key().labels().map(|label| label.value().to_owned()).collect();
            step_downs.push((reason.join(","), count));
        }
    }
    assert_eq!(step_downs, vec![("lease_lost".to_owned(), 1)], "one step-down, counted once");
    assert_eq!(a.shutdown().await, None);
}
