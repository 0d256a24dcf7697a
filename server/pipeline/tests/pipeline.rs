//! The pipeline end to end on the in-memory store and the in-process bus: group commit, retries,
//! failed and ambiguous commits, recovery, relay, projections, duplicates and poison messages.
//!
//! Every test drives real concurrency (several submitting tasks, the writer, the relay and two
//! projectors as tokio tasks) and then checks the promises against the store, the bus log and the
//! projections, not against anything the pipeline reports about itself.

use std::collections::BTreeMap;
use std::time::Duration;

use wallex_engine::{
    Amount, Command, CommandId, CommandKind, Currency, HoldId, Ledger, OwnerId, Timestamp, TransactionId, WalletId,
};
use wallex_pipeline::bus::InProcessBus;
use wallex_pipeline::ports::{EventStore, Projection, ProjectionStore};
use wallex_pipeline::writer::recover;
use wallex_pipeline::{Pipeline, PipelineConfig, Reply, StartError, codec};
use wallex_pipeline::{SystemClock, ports::Clock};
use wallex_testkit::memory::{CommitFault, MemoryStore};

const WALLETS: usize = 8;

fn wallet(index: usize) -> WalletId {
    WalletId::parse(&format!("w{index}")).unwrap()
}

fn money(minor: u64) -> Amount {
    Amount::from_minor(minor).unwrap()
}

fn create(index: usize) -> CommandKind {
    CommandKind::CreateWallet {
        wallet_id: wallet(index),
        owner_id: OwnerId::parse("owner").unwrap(),
        currency: Currency::USD,
        initial_balance: money(10_000),
        overdraft_limit: Amount::ZERO,
    }
}

/// A deterministic mix of credits, debits and transfers for client `client`.
fn mix(client: u64, count: u64) -> Vec<CommandKind> {
    let mut state = client.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let source = usize::try_from(next() % WALLETS as u64).unwrap();
            let amount = money(1 + next() % 3_000);
            match next() % 3 {
                0 => CommandKind::Credit {
                    wallet_id: wallet(source),
                    currency: Currency::USD,
                    amount,
                    description: None,
                },
                1 => {
                    CommandKind::Debit { wallet_id: wallet(source), currency: Currency::USD, amount, description: None }
                }
                _ => CommandKind::Transfer {
                    source: wallet(source),
                    destination: wallet((source + 1) % WALLETS),
                    currency: Currency::USD,
                    amount,
                    description: None,
                },
            }
        })
        .collect()
}

async fn start(store: &MemoryStore, bus: &InProcessBus, config: PipelineConfig) -> Pipeline {
    Pipeline::start(store.clone(), bus.clone(), SystemClock, config).await.unwrap()
}

fn decided(reply: &Reply) -> (wallex_engine::CommandRecord, bool) {
    match reply {
        Reply::Decided { record, replayed, .. } => (*record, *replayed),
        other => panic!("expected a decided reply, got {other:?}"),
    }
}

async fn create_wallets(pipeline: &Pipeline) {
    for index in 0..WALLETS {
        let reply = pipeline.commands.submit(Command::new(CommandId(index as u128 + 1), create(index))).await;
        assert!(decided(&reply).0.result.is_ok());
    }
}

/// Runs `clients` concurrent submitters of `per_client` mix commands; returns every reply by id.
async fn run_clients(pipeline: &Pipeline, clients: u64, per_client: u64) -> BTreeMap<CommandId, Reply> {
    let mut tasks = Vec::new();
    for client in 0..clients {
        let sender = pipeline.commands.clone();
        tasks.push(tokio::spawn(async move {
            let mut replies = Vec::new();
            for (sequence, kind) in (0u64..).zip(mix(client, per_client)) {
                let id = CommandId((u128::from(client + 1) << 64) | u128::from(sequence));
                replies.push((id, sender.submit(Command::new(id, kind)).await));
            }
            replies
        }));
    }
    let mut all = BTreeMap::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Waits (bounded) until both projections have every wallet at the write side's version.
async fn converge(store: &MemoryStore) -> Ledger {
    let ledger = recover(store, wallex_engine::Config::default(), 1_000).await.unwrap();
    for _ in 0..500 {
        let mut done = true;
        for wallet in ledger.wallets() {
            for projection in Projection::ALL {
                done &= store.projected_version(projection, &wallet.id).await.unwrap() == wallet.version;
            }
        }
        if done {
            return ledger;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lagging = Vec::new();
    for wallet in ledger.wallets() {
        for projection in Projection::ALL {
            let projected = store.projected_version(projection, &wallet.id).await.unwrap();
            if projected != wallet.version {
                lagging.push(format!("{} {projection:?} at {projected} of {}", wallet.id, wallet.version));
            }
        }
    }
    panic!("projections did not converge within 5 s: {lagging:?}; {} unpublished", store.unpublished());
}

/// The promises every test ends with: the bus carries every event in per-wallet version order, and
/// both projections equal the write side exactly.
async fn check_promises(store: &MemoryStore, bus: &InProcessBus) -> Ledger {
    let ledger = converge(store).await;
    let committed = store.all_events();
    let mut seen: BTreeMap<WalletId, u64> = BTreeMap::new();
    for partition in bus.log() {
        for (key, payload) in partition {
            // Anything undecodable is a poison message; the dead-letter test checks where it went.
            let Ok(event) = codec::decode_event(&payload) else { continue };
            assert_eq!(key, event.wallet_id.to_string(), "keyed by wallet");
            let last = seen.entry(event.wallet_id).or_insert(0);
            assert!(event.version <= *last + 1, "{key}: version {} after {last} skips a version", event.version);
            *last = (*last).max(event.version);
        }
    }
    for wallet in ledger.wallets() {
        assert_eq!(seen.get(&wallet.id), Some(&wallet.version), "every event of {} reached the bus", wallet.id);
        let view = store.wallet(&wallet.id).await.unwrap().unwrap();
        assert_eq!((view.balance, view.held, view.version), (wallet.balance, wallet.held, wallet.version));
        let postings = committed.iter().filter(|e| e.wallet_id == wallet.id && e.posting.is_some()).count();
        let entries = store.ledger_entries(&wallet.id, None, 100_000).await.unwrap();
        assert_eq!(entries.len(), postings, "one ledger entry per posting of {}", wallet.id);
        assert_eq!(entries.first().map(|e| e.balance_after), Some(wallet.balance), "ledger ends at the balance");
    }
    ledger.check_invariants().unwrap();
    ledger
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_command_is_committed_once_published_in_order_and_projected() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::recording());
    let pipeline = start(&store, &bus, PipelineConfig::default()).await;
    create_wallets(&pipeline).await;
    let replies = run_clients(&pipeline, 6, 150).await;

    let mut accepted = 0;
    for (id, reply) in &replies {
        let (record, replayed) = decided(reply);
        assert_eq!(record.command_id, *id);
        assert!(!replayed);
        accepted += usize::from(record.result.is_ok());
    }
    assert!(accepted > 300, "the mix is mostly accepted ({accepted})");
    assert!(store.commits() < replies.len() as u64, "commands share commits ({} commits)", store.commits());
    let ledger = check_promises(&store, &bus).await;
    assert_eq!(ledger.last_transaction_id(), TransactionId((WALLETS + replies.len()) as u64));
    pipeline.shutdown().await;
}

#[tokio::test]
async fn a_retried_command_takes_effect_once_and_returns_the_original_reply() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::recording());
    let pipeline = start(&store, &bus, PipelineConfig::default()).await;
    create_wallets(&pipeline).await;
    let debit =
        CommandKind::Debit { wallet_id: wallet(0), currency: Currency::USD, amount: money(700), description: None };
    let first = pipeline.commands.submit(Command::new(CommandId(500), debit.clone())).await;
    let again = pipeline.commands.submit(Command::new(CommandId(500), debit)).await;
    let (Reply::Decided { record, events, .. }, Reply::Decided { record: record2, events: events2, replayed }) =
        (&first, &again)
    else {
        panic!("{first:?} / {again:?}");
    };
    assert!(replayed);
    assert_eq!((record, events), (record2, events2), "the original reply, events included");
    let other =
        CommandKind::Credit { wallet_id: wallet(0), currency: Currency::USD, amount: money(1), description: None };
    let reused = pipeline.commands.submit(Command::new(CommandId(500), other)).await;
    assert!(matches!(reused, Reply::KeyReused { .. }), "{reused:?}");
    let ledger = check_promises(&store, &bus).await;
    assert_eq!(ledger.wallet(&wallet(0)).unwrap().balance, 9_300, "debited once");
    pipeline.shutdown().await;
}

#[tokio::test]
async fn ids_the_engine_forgot_are_answered_from_the_store() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::recording());
    let mut config = PipelineConfig::default();
    config.writer.engine_retention_micros = 1; // The engine forgets at once.
    let pipeline = start(&store, &bus, config).await;
    create_wallets(&pipeline).await;
    let debit =
        CommandKind::Debit { wallet_id: wallet(1), currency: Currency::USD, amount: money(5), description: None };
    let first = pipeline.commands.submit(Command::new(CommandId(900), debit.clone())).await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let again = pipeline.commands.submit(Command::new(CommandId(900), debit.clone())).await;
    assert_eq!(decided(&again), (decided(&first).0, true), "answered from the stored record");
    // A command with a reference and metadata: its retry is the same content (the stored record's
    // fingerprint covers the memo), another reference under the key is reuse.
    let memo = |reference: &str| wallex_engine::Memo {
        reference: Some(wallex_engine::Reference::parse(reference).unwrap()),
        metadata: wallex_engine::Metadata::parse([("order", "9")]).unwrap(),
        correlation_id: None,
    };
    let with_memo = Command { id: CommandId(901), kind: debit.clone(), memo: memo("inv-9") };
    let first = pipeline.commands.submit(with_memo.clone()).await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let again = pipeline.commands.submit(with_memo).await;
    assert_eq!(decided(&again), (decided(&first).0, true), "a referenced command's retry replays");
    let other = pipeline.commands.submit(Command { id: CommandId(901), kind: debit, memo: memo("inv-10") }).await;
    assert!(matches!(other, Reply::KeyReused { .. }), "{other:?}");
    let ledger = check_promises(&store, &bus).await;
    assert_eq!(ledger.wallet(&wallet(1)).unwrap().balance, 9_990);
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_and_ambiguous_commits_are_resolved_through_the_store_never_guessed() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::recording());
    let pipeline = start(&store, &bus, PipelineConfig::default()).await;
    create_wallets(&pipeline).await;
    store.fail_commits(&[CommitFault::Lost, CommitFault::Ambiguous, CommitFault::Ambiguous, CommitFault::Lost]);
    let replies = run_clients(&pipeline, 4, 60).await;
    for reply in replies.values() {
        decided(reply);
    }
    let ledger = check_promises(&store, &bus).await;
    // Exactly one record per command: the store's unique ids would refuse a second.
    assert_eq!(ledger.last_transaction_id(), TransactionId((WALLETS + replies.len()) as u64));
    let ids: Vec<_> = replies.keys().copied().collect();
    let records = store.command_records(&ids, Timestamp::from_unix_micros(0)).await.unwrap();
    assert_eq!(records.len(), replies.len());
    for record in records {
        assert_eq!(decided(&replies[&record.command_id]).0, record, "the reply is what the store holds");
    }
    pipeline.shutdown().await;
}

/// Found by the simulator: after an ambiguous commit, the reload can outlast the engine's memory of
/// the batch's ids; the batch must then be resolved from the store's idempotency records, never
/// decided a second time.
#[tokio::test]
async fn an_ambiguous_commit_is_resolved_from_the_store_after_the_engine_forgot_its_ids() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::recording());
    let mut config = PipelineConfig::default();
    // The engine forgets an id a microsecond after deciding it: only the store can answer retries.
    config.writer.engine_retention_micros = 1;
    config.writer.retry_backoff_ms = 1;
    let pipeline = start(&store, &bus, config).await;
    create_wallets(&pipeline).await;
    store.fail_commits(&[CommitFault::Ambiguous]);
    let kind =
        CommandKind::Credit { wallet_id: wallet(2), currency: Currency::USD, amount: money(5), description: None };
    let reply = pipeline.commands.submit(Command::new(CommandId(91), kind)).await;
    let (record, replayed) = decided(&reply);
    assert!(replayed, "the committed batch is answered from the store: {reply:?}");
    assert!(record.result.is_ok());
    let ledger = check_promises(&store, &bus).await;
    assert_eq!(ledger.wallet(&wallet(2)).unwrap().balance, 10_005, "credited once");
    assert_eq!(ledger.last_transaction_id(), TransactionId(WALLETS as u64 + 1), "one record, not two");
    pipeline.shutdown().await;
}

#[tokio::test]
async fn commands_fail_cleanly_when_the_store_stays_down() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::recording());
    let mut config = PipelineConfig::default();
    config.writer.commit_attempts = 3;
    config.writer.retry_backoff_ms = 1;
    let pipeline = start(&store, &bus, config).await;
    create_wallets(&pipeline).await;
    store.fail_commits(&[CommitFault::Lost; 3]);
    let kind =
        CommandKind::Credit { wallet_id: wallet(2), currency: Currency::USD, amount: money(1), description: None };
    let reply = pipeline.commands.submit(Command::new(CommandId(77), kind.clone())).await;
    assert!(matches!(reply, Reply::Unavailable(_)), "{reply:?}");
    // Not applied; the same id succeeds once the store is back.
    let retry = pipeline.commands.submit(Command::new(CommandId(77), kind)).await;
    assert!(!decided(&retry).1, "the first attempt left no trace");
    let ledger = check_promises(&store, &bus).await;
    assert_eq!(ledger.wallet(&wallet(2)).unwrap().balance, 10_001);
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_from_snapshot_and_journal_reproduces_the_ledger() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::recording());
    let mut config = PipelineConfig::default();
    config.writer.snapshot_every_events = 40;
    let pipeline = start(&store, &bus, config).await;
    create_wallets(&pipeline).await;
    run_clients(&pipeline, 3, 50).await;
    // The snapshotter follows the journal on its own: wait (bounded) for its snapshot, then add a
    // credit (one event, far from the next snapshot) so that recovery has journal to replay after
    // the snapshot.
    for _ in 0..100 {
        if store.latest_snapshot().await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kind =
        CommandKind::Credit { wallet_id: wallet(0), currency: Currency::USD, amount: money(1), description: None };
    decided(&pipeline.commands.submit(Command::new(CommandId(9_990), kind)).await);
    let before = pipeline.shutdown().await.expect("the only instance is the writer");
    assert!(store.latest_snapshot().await.unwrap().is_some(), "snapshots were taken");
    assert!(
        store.latest_snapshot().await.unwrap().unwrap().transaction_id < before.last_transaction_id(),
        "the test exercises journal replay after the snapshot"
    );

    let pipeline = start(&store, &bus, config).await;
    let reply = pipeline.commands.submit(Command::new(CommandId(10_000), CommandKind::ExpireHolds)).await;
    assert_eq!(decided(&reply).0.transaction_id, before.last_transaction_id().next(), "numbering continues");
    for wallet in before.wallets() {
        let now = pipeline.commands.wallet(wallet.id).await.unwrap().unwrap();
        assert_eq!(now, *wallet, "recovered {} exactly", wallet.id);
    }
    check_promises(&store, &bus).await;
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_deliveries_and_refused_publishes_change_nothing() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::recording());
    let pipeline = start(&store, &bus, PipelineConfig::default()).await;
    bus.duplicate_deliveries(true);
    bus.fail_publishes(7);
    create_wallets(&pipeline).await;
    run_clients(&pipeline, 3, 80).await;
    check_promises(&store, &bus).await;
    let duplicates =
        pipeline.stats.projector(Projection::ReadModel).duplicates.load(std::sync::atomic::Ordering::Relaxed);
    assert!(duplicates > 0, "duplicates were delivered and skipped");
    assert!(pipeline.stats.relay.publish_failures.load(std::sync::atomic::Ordering::Relaxed) > 0);
    pipeline.shutdown().await;
}

#[tokio::test]
async fn a_poison_message_goes_to_the_dead_letter_topic_with_its_reason() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::recording());
    let pipeline = start(&store, &bus, PipelineConfig::default()).await;
    create_wallets(&pipeline).await;
    bus.inject("w3", b"{not an event".to_vec());
    run_clients(&pipeline, 1, 20).await;
    check_promises(&store, &bus).await;
    for _ in 0..200 {
        if bus.dead_letters().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dead = bus.dead_letters();
    assert_eq!(dead.len(), 2, "each consumer group dead-letters it once");
    for letter in &dead {
        assert_eq!(letter.payload, b"{not an event");
        assert!(
            letter.headers.iter().any(|(name, value)| name == "dlq-reason" && value.contains("not an event envelope"))
        );
    }
    let counted: u64 = Projection::ALL
        .iter()
        .map(|p| pipeline.stats.projector(*p).dead_lettered.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(counted, 2, "and counts it");
    pipeline.shutdown().await;
}

#[tokio::test]
async fn lapsed_holds_are_released_by_the_writer_itself() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::recording());
    let pipeline = start(&store, &bus, PipelineConfig::default()).await;
    create_wallets(&pipeline).await;
    let expires_at = Timestamp::from_unix_micros(SystemClock.now().unix_micros() + 50_000);
    let place = CommandKind::PlaceHold {
        hold_id: HoldId::parse("h1").unwrap(),
        wallet_id: wallet(4),
        currency: Currency::USD,
        amount: money(2_500),
        expires_at: Some(expires_at),
        description: None,
    };
    decided(&pipeline.commands.submit(Command::new(CommandId(1_000), place)).await);
    assert_eq!(pipeline.commands.wallet(wallet(4)).await.unwrap().unwrap().held, 2_500);
    let mut held = 2_500;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        held = pipeline.commands.wallet(wallet(4)).await.unwrap().unwrap().held;
        if held == 0 {
            break;
        }
    }
    assert_eq!(held, 0, "the hold expired without any client command");
    check_promises(&store, &bus).await;
    pipeline.shutdown().await;
}

#[tokio::test]
async fn an_idempotency_key_is_reusable_after_its_retention_and_the_cleanup() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::recording());
    let mut config = PipelineConfig::default();
    config.writer.idempotency_retention_micros = 20_000; // 20 ms
    config.writer.engine_retention_micros = 20_000; // never longer than the store's
    config.writer.idempotency_cleanup_interval_ms = 5;
    let pipeline = start(&store, &bus, config).await;
    create_wallets(&pipeline).await;
    let credit =
        CommandKind::Credit { wallet_id: wallet(5), currency: Currency::USD, amount: money(10), description: None };
    let first = pipeline.commands.submit(Command::new(CommandId(4_242), credit.clone())).await;
    let retry = pipeline.commands.submit(Command::new(CommandId(4_242), credit.clone())).await;
    assert_eq!(decided(&retry), (decided(&first).0, true), "within the retention: the original reply");
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(store.command_records(&[CommandId(4_242)], Timestamp::from_unix_micros(0)).await.unwrap().is_empty());
    let later = pipeline.commands.submit(Command::new(CommandId(4_242), credit)).await;
    let (record, replayed) = decided(&later);
    assert!(!replayed && record.transaction_id > decided(&first).0.transaction_id, "after it: a new command");
    let ledger = check_promises(&store, &bus).await;
    assert_eq!(ledger.wallet(&wallet(5)).unwrap().balance, 10_020);
    pipeline.shutdown().await;
}

#[tokio::test]
async fn an_engine_retention_longer_than_the_stores_is_refused_at_start_not_clamped() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::recording());
    let mut config = PipelineConfig::default();
    config.writer.idempotency_retention_micros = 1_000_000;
    config.writer.engine_retention_micros = 2_000_000;
    match Pipeline::start(store.clone(), bus, SystemClock, config).await {
        Err(StartError::Config(error)) => assert_eq!(error.field, "pipeline.writer.engine_retention_micros"),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("an inconsistent retention was accepted"),
    }
    assert_eq!(store.commits(), 0, "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_sheds_new_commands_at_once_and_applies_none_of_them() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::recording());
    let mut config = PipelineConfig::default();
    config.writer.queue_depth = 4;
    config.writer.max_batch = 1;
    let pipeline = start(&store, &bus, config).await;
    create_wallets(&pipeline).await;
    let credit = |id: u128| Command {
        id: CommandId(1_000 + id),
        kind: CommandKind::Credit {
            wallet_id: wallet(1),
            currency: Currency::USD,
            amount: money(1),
            description: None,
        },
        memo: Default::default(),
    };

    // The store stops answering: the writer's commit waits, then its queue fills.
    let pause = store.pause_commits().await;
    let mut waiting = Vec::new();
    let mut shed = Vec::new();
    for id in 0..64u128 {
        let commands = pipeline.commands.clone();
        let mut submitted = tokio::spawn(async move { commands.submit(credit(id)).await });
        // A refusal is immediate; an admitted command waits for the store.
        match tokio::time::timeout(Duration::from_millis(200), &mut submitted).await {
            Ok(Ok(Reply::Unavailable(reason))) => shed.push((id, reason)),
            Ok(other) => panic!("nothing can be decided while the store is paused: {other:?}"),
            Err(_) => waiting.push((id, submitted)),
        }
    }
    assert!(!shed.is_empty(), "a full queue refuses instead of waiting");
    assert!(shed.iter().all(|(_, reason)| reason.contains("queue is full")), "{shed:?}");
    // The queue, plus what the writer took off it, plus its own read-ahead: never more.
    assert!(waiting.len() <= 4 + 1 + 1, "{} commands were admitted past a queue of 4", waiting.len());

    drop(pause);
    for (id, submitted) in &mut waiting {
        let reply = submitted.await.unwrap();
        assert!(decided(&reply).0.result.is_ok(), "admitted command {id}: {reply:?}");
    }
    let ledger = check_promises(&store, &bus).await;
    // Every admitted command was applied once, no shed one at all.
    let credited = ledger.wallet(&wallet(1)).unwrap().balance - 10_000;
    assert_eq!(credited, i64::try_from(waiting.len()).unwrap(), "admitted {}, shed {}", waiting.len(), shed.len());
    // Once the store answers again, commands are admitted and applied.
    assert!(decided(&pipeline.commands.submit(credit(99)).await).0.result.is_ok());
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_queued_whole_decided_in_order_in_one_commit_and_shed_whole() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::recording());
    let mut config = PipelineConfig::default();
    config.writer.queue_depth = 8;
    config.writer.max_batch = 3;
    let pipeline = start(&store, &bus, config).await;
    create_wallets(&pipeline).await;
    let credit = |id: u128, minor: u64| Command {
        id: CommandId(id),
        kind: CommandKind::Credit {
            wallet_id: wallet(1),
            currency: Currency::USD,
            amount: money(minor),
            description: None,
        },
        memo: Default::default(),
    };

    // Six commands, more than a group commit's three: one request is never split. The debit at
    // the end needs every credit before it.
    let mut batch: Vec<Command> = (1..=5u64).map(|n| credit(100 + u128::from(n), n)).collect();
    let debit =
        CommandKind::Debit { wallet_id: wallet(1), currency: Currency::USD, amount: money(10_015), description: None };
    batch.push(Command::new(CommandId(200), debit));
    let before = store.commits();
    let replies = pipeline.commands.submit_all(batch.clone()).await;
    assert_eq!(replies.len(), 6);
    for (reply, command) in replies.iter().zip(&batch) {
        let (record, replayed) = decided(reply);
        assert_eq!((record.command_id, record.result, replayed), (command.id, Ok(()), false));
    }
    assert_eq!(store.commits() - before, 1, "the batch went into one group commit");
    let ids: Vec<u64> = replies.iter().map(|reply| decided(reply).0.transaction_id.0).collect();
    assert!(ids.windows(2).all(|pair| pair[1] == pair[0] + 1), "decided in order: {ids:?}");

    // Nine commands never fit a queue of eight: all refused at once, none applied.
    let too_many: Vec<Command> = (1..=9).map(|n| credit(300 + n, 1)).collect();
    let replies = pipeline.commands.submit_all(too_many).await;
    assert!(
        replies.iter().all(|reply| matches!(reply, Reply::Unavailable(reason) if reason.contains("queue is full")))
    );
    let committed = store.commits();
    // The same batch again is a replay of each, in one read.
    let replies = pipeline.commands.submit_all(batch.clone()).await;
    assert!(replies.iter().all(|reply| decided(reply).1), "every retried command is a replay");
    assert_eq!(store.commits(), committed, "a replayed batch commits nothing");
    let ledger = check_promises(&store, &bus).await;
    assert_eq!(
        ledger.wallet(&wallet(1)).unwrap().balance,
        0,
        "10,000 + 15 credited, 10,015 debited, nothing from the shed batch"
    );
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_is_down_stalls_only_its_own_wallets_and_nothing_is_sent_twice() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::recording());
    let mut config = PipelineConfig::default();
    config.relay.retry_backoff_ms = 5;
    let pipeline = start(&store, &bus, config).await;
    let down = InProcessBus::partition_of(wallet(0).as_str());
    let healthy: Vec<usize> =
        (0..WALLETS).filter(|index| InProcessBus::partition_of(wallet(*index).as_str()) != down).collect();
    assert!(!healthy.is_empty() && healthy.len() < WALLETS, "the wallets span the partition that fails and others");
    bus.partition_down(down, true);

    create_wallets(&pipeline).await;
    let mut id = 1_000;
    for round in 0..40 {
        for index in 0..WALLETS {
            id += 1;
            let kind = CommandKind::Credit {
                wallet_id: wallet(index),
                currency: Currency::USD,
                amount: money(1 + round),
                description: None,
            };
            assert!(decided(&pipeline.commands.submit(Command::new(CommandId(id), kind)).await).0.result.is_ok());
        }
    }
    // Every wallet off the failing partition is projected to its last version while it is down.
    let ledger = recover(&store, wallex_engine::Config::default(), 1_000).await.unwrap();
    for _ in 0..500 {
        let mut done = true;
        for index in &healthy {
            let version = ledger.wallet(&wallet(*index)).unwrap().version;
            done &= store.projected_version(Projection::ReadModel, &wallet(*index)).await.unwrap() == version;
        }
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for index in &healthy {
        let version = ledger.wallet(&wallet(*index)).unwrap().version;
        assert_eq!(version, 41, "created and credited 40 times");
        assert_eq!(
            store.projected_version(Projection::ReadModel, &wallet(*index)).await.unwrap(),
            version,
            "{} flows while another partition is down",
            wallet(*index)
        );
    }
    assert_eq!(store.projected_version(Projection::ReadModel, &wallet(0)).await.unwrap(), 0, "w0's partition is down");
    // What the broker acknowledged was sent once: the healthy partitions hold each event once.
    let healthy_events = store.all_events().iter().filter(|event| healthy.contains(&wallet_index(event))).count();
    let published: usize = bus
        .log()
        .iter()
        .enumerate()
        .filter(|(partition, _)| u32::try_from(*partition).unwrap() != down)
        .map(|(_, log)| log.len())
        .sum();
    assert_eq!(published, healthy_events, "no acknowledged message was published again");
    assert!(pipeline.stats.relay.publish_failures.load(std::sync::atomic::Ordering::Relaxed) > 0);

    // The partition comes back: its wallets catch up, in order, and everything converges.
    bus.partition_down(down, false);
    check_promises(&store, &bus).await;
    pipeline.shutdown().await;
}

fn wallet_index(event: &wallex_engine::Event) -> usize {
    event.wallet_id.as_str()[1..].parse().unwrap()
}

fn credit(id: u128, index: usize, minor: u64) -> Command {
    let kind = CommandKind::Credit {
        wallet_id: wallet(index),
        currency: Currency::USD,
        amount: money(minor),
        description: None,
    };
    Command::new(CommandId(id), kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_lost_is_repaired_from_the_event_store_when_a_later_one_waits_on_it() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::new());
    let mut config = PipelineConfig::default();
    config.projector.repair_after_ms = 50;
    let pipeline = start(&store, &bus, config).await;
    create_wallets(&pipeline).await;
    converge(&store).await;
    // The broker acknowledges w0's next event and loses it; the one after it arrives and waits.
    bus.lose_next(1);
    assert!(decided(&pipeline.commands.submit(credit(100, 0, 5)).await).0.result.is_ok());
    // Published (and lost) before anything else is committed: on a busy machine the relay could
    // otherwise publish a batch in which another wallet's event comes first and is the one lost.
    let published = std::time::Instant::now();
    while store.unpublished() > 0 {
        assert!(published.elapsed() < Duration::from_secs(5), "the relay never published");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(decided(&pipeline.commands.submit(credit(101, 0, 7)).await).0.result.is_ok());
    for index in 1..WALLETS {
        assert!(decided(&pipeline.commands.submit(credit(200 + index as u128, index, 3)).await).0.result.is_ok());
    }
    check_promises_without_bus_log(&store).await;
    for projection in Projection::ALL {
        let repaired = pipeline.stats.projector(projection).repaired.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(repaired, 1, "{projection:?}: the lost event was fetched from the event store");
    }
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_repairs_a_lost_last_event_that_no_gap_reveals() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::new());
    let mut config = PipelineConfig::default();
    config.projector.reconcile_interval_ms = 100;
    let pipeline = start(&store, &bus, config).await;
    create_wallets(&pipeline).await;
    converge(&store).await;
    // w3's last event is lost after the broker acknowledged it; nothing after it shows a gap.
    bus.lose_next(1);
    assert!(decided(&pipeline.commands.submit(credit(300, 3, 11)).await).0.result.is_ok());
    check_promises_without_bus_log(&store).await;
    let reconciliation = &pipeline.stats.reconciliation;
    assert_eq!(reconciliation.repaired.load(std::sync::atomic::Ordering::Relaxed), 2, "one event, two projections");
    pipeline.shutdown().await;
}

/// Both projections equal the write side exactly (the bus log is not inspected: it lost messages).
async fn check_promises_without_bus_log(store: &MemoryStore) {
    let ledger = converge(store).await;
    for wallet in ledger.wallets() {
        let view = store.wallet(&wallet.id).await.unwrap().unwrap();
        assert_eq!((view.balance, view.held, view.version), (wallet.balance, wallet.held, wallet.version));
        let postings = store.all_events().iter().filter(|e| e.wallet_id == wallet.id && e.posting.is_some()).count();
        assert_eq!(store.ledger_entries(&wallet.id, None, 100_000).await.unwrap().len(), postings);
    }
}

/// A clock over a wall clock the test steps, read the way `SystemClock` reads the system clock.
#[derive(Clone, Debug)]
struct SteppedWall {
    wall: std::sync::Arc<std::sync::atomic::AtomicU64>,
    anchor: std::time::Instant,
    steady: std::sync::Arc<std::sync::Mutex<wallex_pipeline::SteadyTime>>,
}

impl SteppedWall {
    fn new(start: u64) -> SteppedWall {
        SteppedWall {
            wall: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(start)),
            anchor: std::time::Instant::now(),
            steady: std::sync::Arc::new(std::sync::Mutex::new(wallex_pipeline::SteadyTime::new(start, 0))),
        }
    }

    fn step(&self, micros: i64) {
        let wall = self.wall.load(std::sync::atomic::Ordering::SeqCst);
        self.wall.store(wall.checked_add_signed(micros).unwrap(), std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for SteppedWall {
    fn now(&self) -> Timestamp {
        let monotonic = u64::try_from(self.anchor.elapsed().as_micros()).unwrap();
        let wall = self.wall.load(std::sync::atomic::Ordering::SeqCst) + monotonic;
        Timestamp::from_unix_micros(self.steady.lock().unwrap().read(wall, monotonic))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_step_of_the_wall_clock_past_the_retention_forgets_no_idempotency_key() {
    let store = MemoryStore::new();
    let clock = SteppedWall::new(1_767_225_600_000_000);
    let mut config = PipelineConfig::default();
    config.writer.idempotency_cleanup_interval_ms = 20;
    let pipeline = Pipeline::start(store.clone(), InProcessBus::new(), clock.clone(), config).await.unwrap();
    create_wallets(&pipeline).await;
    let (original, _) = decided(&pipeline.commands.submit(credit(500, 1, 42)).await);
    assert!(original.result.is_ok());

    // The system clock steps two days ahead (past the 24 h retention), and the cleanup runs.
    clock.step(48 * 3_600 * 1_000_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (replayed, was_replay) = decided(&pipeline.commands.submit(credit(500, 1, 42)).await);
    assert!(was_replay, "the retry is answered from the first decision");
    assert_eq!(replayed, original, "the same transaction");
    assert_eq!(store.all_events().iter().filter(|e| e.command_id == CommandId(500)).count(), 1, "applied once");

    // A backward step does not move the ledger's time back either.
    let before = clock.now();
    clock.step(-3 * 3_600 * 1_000_000);
    assert!(clock.now() >= before, "time never goes back");
    pipeline.shutdown().await;
}

#[test]
fn steady_time_absorbs_steps_and_tracks_drift() {
    use wallex_pipeline::{MAX_SLEW_PPM, SteadyTime};
    const HOUR: u64 = 3_600 * 1_000_000;
    let start = 1_767_225_600_000_000;
    // A step of two days forward: an hour later the reading has moved by the hour and at most
    // the slew, not by two days.
    let mut steady = SteadyTime::new(start, 0);
    let reading = steady.read(start + 48 * HOUR + HOUR, HOUR);
    assert_eq!(reading, start + HOUR + HOUR * MAX_SLEW_PPM / 1_000_000);
    // A step back: the reading still advances with the monotonic clock, slowed by the slew.
    let mut steady = SteadyTime::new(start, 0);
    let reading = steady.read(start + HOUR - 5 * HOUR, HOUR);
    assert_eq!(reading, start + HOUR - HOUR * MAX_SLEW_PPM / 1_000_000);
    assert!(steady.read(start - 5 * HOUR, HOUR) >= reading, "never back");
    // A wall clock that runs 100 ppm fast is followed exactly (within the slew).
    let mut steady = SteadyTime::new(start, 0);
    for hour in 1..=24 {
        let wall = start + hour * HOUR + hour * HOUR / 10_000;
        assert_eq!(steady.read(wall, hour * HOUR), wall, "hour {hour}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_a_wall_clock_two_days_ahead_forgets_no_idempotency_key() {
    let store = MemoryStore::new();
    let start = 1_767_225_600_000_000;
    let mut config = PipelineConfig::default();
    config.writer.idempotency_cleanup_interval_ms = 20;
    let pipeline = Pipeline::start(store.clone(), InProcessBus::new(), SteppedWall::new(start), config).await.unwrap();
    create_wallets(&pipeline).await;
    let (original, _) = decided(&pipeline.commands.submit(credit(600, 2, 9)).await);
    pipeline.shutdown().await;

    // The process comes back on a system clock two days ahead: nothing tells it from a real outage.
    let ahead = SteppedWall::new(start + 48 * 3_600 * 1_000_000);
    let pipeline = Pipeline::start(store.clone(), InProcessBus::new(), ahead, config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (replayed, was_replay) = decided(&pipeline.commands.submit(credit(600, 2, 9)).await);
    assert!(was_replay, "the retry is answered from the first decision");
    assert_eq!(replayed, original);
    assert_eq!(store.all_events().iter().filter(|e| e.command_id == CommandId(600)).count(), 1, "applied once");
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_committed_view_holds_every_wallet_the_read_model_has_not_caught_up_on() {
    let store = MemoryStore::new();
    let bus = InProcessBus::new();
    bus.fail_publishes(u32::MAX); // Nothing reaches the read model.
    let pipeline = start(&store, &bus, PipelineConfig::default()).await;
    create_wallets(&pipeline).await;
    decided(&pipeline.commands.submit(credit(700, 4, 5)).await);
    pipeline.shutdown().await;

    let bus = InProcessBus::new();
    bus.fail_publishes(u32::MAX);
    let pipeline = start(&store, &bus, PipelineConfig::default()).await;
    for index in 0..WALLETS {
        let committed =
            pipeline.stats.view.wallet(&wallet(index)).expect("a wallet the read model lacks is in the view");
        let expected = if index == 4 { (10_005, 2) } else { (10_000, 1) };
        assert_eq!((committed.balance, committed.version), expected, "{}", wallet(index));
    }
    pipeline.shutdown().await;
}

/// A short lease, so takeovers happen within a test's patience.
fn short_lease() -> PipelineConfig {
    PipelineConfig {
        lease: wallex_pipeline::LeaseConfig { lease_ms: 300, renew_ms: 100, poll_ms: 20 },
        ..PipelineConfig::default()
    }
}

fn node(id: &str) -> wallex_pipeline::Node {
    wallex_pipeline::Node { id: id.to_owned(), address: format!("http://{id}") }
}

/// Waits until `pipeline`'s role satisfies `wanted`, for at most two seconds.
async fn role_becomes(pipeline: &Pipeline, wanted: impl Fn(&wallex_pipeline::Role) -> bool) -> wallex_pipeline::Role {
    let mut role = pipeline.role();
    let waited = tokio::time::timeout(Duration::from_secs(2), role.wait_for(|role| wanted(role))).await;
    waited.expect("the role changes in time").expect("the seat runs").clone()
}

#[tokio::test]
async fn a_second_instance_follows_refuses_commands_and_takes_over_when_the_writer_lets_go() {
    let store = MemoryStore::new();
    let bus = InProcessBus::new();
    let a = Pipeline::start_node(store.clone(), bus.clone(), SystemClock, short_lease(), node("a")).await.unwrap();
    assert_eq!(*a.role().borrow(), wallex_pipeline::Role::Writer { epoch: wallex_pipeline::ports::Epoch(1) });
    let b = Pipeline::start_node(store.clone(), bus.clone(), SystemClock, short_lease(), node("b")).await.unwrap();
    let followed = role_becomes(&b, |role| matches!(role, wallex_pipeline::Role::Follower { writer: Some(_) })).await;
    let wallex_pipeline::Role::Follower { writer: Some(holder) } = followed else { unreachable!() };
    assert_eq!((holder.node.as_str(), holder.address.as_str()), ("a", "http://a"), "the follower knows the writer");

    let refused = b.commands.submit(Command::new(CommandId(1), create(0))).await;
    assert!(matches!(refused, Reply::Unavailable(_)), "a follower decides nothing: {refused:?}");
    assert_eq!(store.commits(), 0);
    let created = a.commands.submit(Command::new(CommandId(2), create(0))).await;
    assert!(decided(&created).0.result.is_ok());

    // A clean shutdown hands the lease over at once; the follower recovers what `a` committed.
    a.shutdown().await.expect("a was the writer");
    let taken = role_becomes(&b, |role| matches!(role, wallex_pipeline::Role::Writer { .. })).await;
    assert_eq!(taken, wallex_pipeline::Role::Writer { epoch: wallex_pipeline::ports::Epoch(2) });
    let credit =
        CommandKind::Credit { wallet_id: wallet(0), currency: Currency::USD, amount: money(5), description: None };
    let credited = b.commands.submit(Command::new(CommandId(3), credit)).await;
    assert!(decided(&credited).0.result.is_ok(), "the new writer has the old one's wallet");
    let replayed = b.commands.submit(Command::new(CommandId(2), create(0))).await;
    assert!(decided(&replayed).1, "and its idempotency keys: a retry on the new writer replays");
    let ledger = b.shutdown().await.expect("b is the writer");
    assert_eq!(ledger.wallet(&wallet(0)).unwrap().balance, 10_005);
}

#[tokio::test]
async fn a_writer_whose_lease_passed_on_is_fenced_off_and_steps_down() {
    let store = MemoryStore::new();
    let bus = InProcessBus::new();
    let config = PipelineConfig {
        // Long enough that only the test moves the lease.
        lease: wallex_pipeline::LeaseConfig { lease_ms: 60_000, renew_ms: 20_000, poll_ms: 20 },
        ..PipelineConfig::default()
    };
    let a = Pipeline::start_node(store.clone(), bus.clone(), SystemClock, config, node("a")).await.unwrap();
    // The writer decides a command and sends its commit; the store holds it (a pause, a slow
    // disk) while another node takes the lease.
    let pause = store.pause_commits().await;
    let commands = a.commands.clone();
    let pending = tokio::spawn(async move { commands.submit(Command::new(CommandId(1), create(0))).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.release_lease(wallex_pipeline::ports::Epoch(1)).await.unwrap();
    let taken = store.acquire_lease("b", "http://b", 60_000).await.unwrap().expect("the lease is free");
    drop(pause);
    let answer = pending.await.unwrap();
    assert!(matches!(answer, Reply::Unavailable(_)), "the old writer's commit is refused: {answer:?}");
    assert_eq!(store.commits(), 0, "nothing of it was written");
    let stepped = role_becomes(&a, |role| matches!(role, wallex_pipeline::Role::Follower { .. })).await;
    assert!(matches!(stepped, wallex_pipeline::Role::Follower { .. }));
    assert_eq!(a.stats.writer.state(), wallex_pipeline::WriterState::Follower);
    let after = a.commands.submit(Command::new(CommandId(2), create(1))).await;
    assert!(matches!(after, Reply::Unavailable(_)), "a deposed writer decides nothing more");
    assert_eq!(store.lease().await.unwrap().map(|lease| lease.epoch), Some(taken.epoch));
    assert_eq!(a.shutdown().await, None, "a follower has no ledger to hand back");
}
