//! The writer's core, driven directly: no runtime, no madsim, every IO answered by a script.
//!
//! A `Pair` (after quinn-proto's `tests/util.rs`) joins a `WriterCore` to a real `MemoryStore` and
//! carries out each IO the core asks for, unless the fault script says that step fails: the store
//! call is skipped and `Unavailable` returned (a lookup, a read, a lost commit), or a commit is made
//! and `Unavailable` returned anyway (an ambiguous commit). Replies may be dropped, as when a client
//! goes away.
//!
//! One scenario (creates, credits, transfers, rejections, retries within a batch and after the
//! engine forgot, reused keys, a hold that lapses, snapshots, multi-page reloads) runs without
//! faults, then with one fault at every IO step, then with two faults at every pair of steps, each
//! kind. After every batch and every run it asserts:
//! - every command gets exactly one answer, and a fresh acceptance only once its batch is in the
//!   store (checked when the reply leaves, against the store);
//! - a command answered "unavailable" left nothing in the store;
//! - the store replays to exactly the core's ledger, invariants hold, each id is recorded once;
//! - retrying every unavailable command (without faults) ends in the same books as the run without
//!   faults: the same balances, holds and outcome per command.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::task::{Context, Poll, Waker};

use wallex_engine::{
    Amount, Command, CommandId, CommandKind, Currency, HoldId, Ledger, OwnerId, Rejection, Timestamp, TransactionId,
    WalletId,
};
use wallex_pipeline::Reply;
use wallex_pipeline::ports::{EventStore, StoreError, StoredSnapshot};
use wallex_pipeline::writer::{Io, WriterConfig, WriterCore, recover};
use wallex_testkit::memory::MemoryStore;

/// Resolves a future that never waits (every `MemoryStore` call): the core's IO runs synchronously.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the memory store never waits"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// The call fails with nothing done: a lookup or read that fails, a commit lost before COMMIT.
    Fail,
    /// A commit that is made durable but reported as failed (the reply to COMMIT was lost). Other
    /// IO: as `Fail`.
    Ambiguous,
}

/// What one token was answered, in order.
type Answers = BTreeMap<u32, Vec<Reply>>;
/// Balance and held amount per wallet.
type Books = Vec<(WalletId, i64, u64)>;
/// The outcome each command settled on (accepted, or its rejection), by id.
type Settled = BTreeMap<u128, Option<Result<(), Rejection>>>;

const ENGINE_RETENTION_MICROS: u64 = 5_000_000;
const MAX_STEPS_PER_BATCH: usize = 1_000;

fn config() -> WriterConfig {
    let mut config = WriterConfig {
        snapshot_every_events: 3,
        commit_attempts: 3,
        retry_backoff_ms: 10,
        journal_page: 2,
        idempotency_retention_micros: 3_600_000_000,
        ..WriterConfig::default()
    };
    config.engine_retention_micros = ENGINE_RETENTION_MICROS;
    config
}

struct Pair {
    core: WriterCore<u32>,
    store: MemoryStore,
    now: Timestamp,
    /// Fault per IO step number (counted over the whole run).
    script: BTreeMap<usize, Fault>,
    step: usize,
    answers: Answers,
    /// Tokens whose replies are dropped, as if the client went away.
    dropped: BTreeSet<u32>,
    next_token: u32,
    /// Which kinds of IO the core asked for, to show the script reached every one.
    seen: BTreeSet<&'static str>,
    /// How many IO steps had been carried out when each token got its first answer.
    answered_at: BTreeMap<u32, usize>,
    batches: u64,
}

impl Pair {
    fn new(script: BTreeMap<usize, Fault>) -> Pair {
        let store = MemoryStore::new();
        let ledger = ready(recover(&store, config().engine(), config().journal_page)).unwrap();
        Pair {
            core: WriterCore::new(config(), ledger),
            store,
            now: Timestamp::from_unix_micros(1_700_000_000_000_000),
            script,
            step: 0,
            answers: Answers::new(),
            dropped: BTreeSet::new(),
            next_token: 0,
            seen: BTreeSet::new(),
            answered_at: BTreeMap::new(),
            batches: 0,
        }
    }

    fn fault(&mut self) -> Option<Fault> {
        let fault = self.script.get(&self.step).copied();
        self.step += 1;
        fault
    }

    /// Submits `commands` as one batch and drives the core until it is idle. Returns the tokens.
    fn batch(&mut self, commands: &[Command], drop_replies: bool) -> Vec<u32> {
        let tokens: Vec<u32> = commands
            .iter()
            .map(|_| {
                self.next_token += 1;
                self.next_token
            })
            .collect();
        if drop_replies {
            self.dropped.extend(&tokens);
        }
        self.core.handle_batch(self.now, commands.iter().cloned().zip(tokens.iter().copied()));
        self.drive();
        for (token, command) in tokens.iter().zip(commands) {
            let answers = &self.answers[token];
            assert_eq!(answers.len(), 1, "command {} got {} answers: {answers:?}", command.id, answers.len());
        }
        self.check_store();
        // The snapshotter's part: every other batch, a snapshot of the committed state, so that
        // reloads start from a snapshot and replay the journal after it.
        self.batches += 1;
        if self.batches.is_multiple_of(2) {
            let ledger = self.core.ledger();
            let snapshot =
                StoredSnapshot { transaction_id: ledger.last_transaction_id(), bytes: ledger.encode_snapshot() };
            ready(self.store.save_snapshot(&snapshot)).unwrap();
        }
        tokens
    }

    fn drive(&mut self) {
        for _ in 0..MAX_STEPS_PER_BATCH {
            self.collect_replies();
            let Some(io) = self.core.poll_io() else {
                assert!(self.core.is_idle(), "no IO asked for, yet not idle");
                return;
            };
            self.seen.insert(match io {
                Io::LookUpRecords { .. } => "look_up_records",
                Io::ReadTransactions(_) => "read_transactions",
                Io::Commit => "commit",
                Io::LoadSnapshot => "load_snapshot",
                Io::ReadJournal { .. } => "read_journal",
                Io::Wait { .. } => "wait",
            });
            let fault = self.fault();
            let step = self.step - 1;
            match io {
                Io::LookUpRecords { ids, not_before } => {
                    let result = if fault.is_some() {
                        failed(step)
                    } else {
                        ready(self.store.command_records(&ids, not_before))
                    };
                    self.core.handle_records(result);
                }
                Io::ReadTransactions(ids) => {
                    let result =
                        if fault.is_some() { failed(step) } else { ready(self.store.transaction_events(&ids)) };
                    self.core.handle_transactions(result);
                }
                Io::Commit => {
                    let result = match fault {
                        Some(Fault::Fail) => failed(step),
                        Some(Fault::Ambiguous) => {
                            ready(self.store.commit(self.core.batch())).unwrap();
                            failed(step)
                        }
                        None => ready(self.store.commit(self.core.batch())),
                    };
                    self.core.handle_commit(result);
                }
                Io::LoadSnapshot => {
                    let result = if fault.is_some() { failed(step) } else { ready(self.store.latest_snapshot()) };
                    self.core.handle_snapshot_loaded(self.now, result);
                }
                Io::ReadJournal { after, limit } => {
                    let result = if fault.is_some() { failed(step) } else { ready(self.store.journal(after, limit)) };
                    self.core.handle_journal(self.now, result);
                }
                Io::Wait { ms } => {
                    self.now = Timestamp::from_unix_micros(self.now.unix_micros() + ms * 1_000);
                    self.core.handle_wait_over();
                }
            }
        }
        panic!("the batch did not finish within {MAX_STEPS_PER_BATCH} IO steps");
    }

    /// Takes every reply that left; a fresh acceptance must already be in the store, exactly.
    fn collect_replies(&mut self) {
        while let Some((token, reply)) = self.core.poll_reply() {
            if let Reply::Decided { record, events, .. } = &reply {
                let stored = ready(self.store.journal(TransactionId(record.transaction_id.0 - 1), 1)).unwrap();
                let entry =
                    stored.first().unwrap_or_else(|| panic!("reply for {} before its commit", record.command_id));
                assert_eq!(&entry.record, record, "the reply's record is the stored one");
                assert_eq!(&entry.events, events, "the reply's events are the stored ones");
            }
            self.answers.entry(token).or_default().push(reply);
            self.answered_at.entry(token).or_insert(self.step);
        }
    }

    /// Between batches: the store replays to the core's ledger, whose invariants hold, and no
    /// command id is recorded twice.
    fn check_store(&self) {
        let recovered = ready(recover(&self.store, config().engine(), config().journal_page)).unwrap();
        let ledger = self.core.ledger();
        ledger.check_invariants().unwrap();
        assert_eq!(recovered.last_transaction_id(), ledger.last_transaction_id());
        assert_eq!(recovered.wallets(), ledger.wallets(), "the store replays to the core's wallets");
        let mut ids = BTreeSet::new();
        for entry in ready(self.store.journal(TransactionId(0), usize::MAX)).unwrap() {
            assert!(ids.insert(entry.record.command_id), "command {} recorded twice", entry.record.command_id);
        }
    }

    /// The answer a client that stayed would have seen.
    fn answer(&self, token: u32) -> &Reply {
        &self.answers[&token][0]
    }

    fn later(&mut self, micros: u64) {
        self.now = Timestamp::from_unix_micros(self.now.unix_micros() + micros);
    }
}

fn failed<T>(step: usize) -> Result<T, StoreError> {
    Err(StoreError::Unavailable(format!("scripted fault at step {step}")))
}

fn wallet(name: &str) -> WalletId {
    WalletId::parse(name).unwrap()
}

fn money(minor: u64) -> Amount {
    Amount::from_minor(minor).unwrap()
}

fn command(id: u128, kind: CommandKind) -> Command {
    Command::new(CommandId(id), kind)
}

fn create(id: u128, name: &str, initial: u64) -> Command {
    command(
        id,
        CommandKind::CreateWallet {
            wallet_id: wallet(name),
            owner_id: OwnerId::parse("owner").unwrap(),
            currency: Currency::USD,
            initial_balance: money(initial),
            overdraft_limit: Amount::ZERO,
        },
    )
}

fn credit(id: u128, name: &str, amount: u64) -> Command {
    command(
        id,
        CommandKind::Credit {
            wallet_id: wallet(name),
            currency: Currency::USD,
            amount: money(amount),
            description: None,
        },
    )
}

fn debit(id: u128, name: &str, amount: u64) -> Command {
    command(
        id,
        CommandKind::Debit {
            wallet_id: wallet(name),
            currency: Currency::USD,
            amount: money(amount),
            description: None,
        },
    )
}

fn transfer(id: u128, from: &str, to: &str, amount: u64) -> Command {
    command(
        id,
        CommandKind::Transfer {
            source: wallet(from),
            destination: wallet(to),
            currency: Currency::USD,
            amount: money(amount),
            description: None,
        },
    )
}

/// The outcome a command settled on, for comparing runs: accepted or the rejection code.
fn outcome(reply: &Reply) -> Option<Result<(), Rejection>> {
    match reply {
        Reply::Decided { record, .. } => Some(record.result),
        _ => None,
    }
}

/// The scenario, batch by batch; returns the final books and every command's settled outcome.
/// After each batch, the commands answered "unavailable" are retried at once (as their clients
/// would), until they settle, so that every batch settles before the next and the order of
/// decisions is the same with faults as without.
fn scenario(pair: &mut Pair) -> (Ledger, Settled) {
    let mut settled = BTreeMap::new();
    let mut submitted: BTreeSet<u128> = BTreeSet::new();
    let mut run = |pair: &mut Pair, commands: Vec<Command>, drop_replies: bool| {
        let mut commands = commands;
        for _round in 0..5 {
            if commands.is_empty() {
                return;
            }
            let earlier = submitted.clone();
            submitted.extend(commands.iter().map(|command| command.id.0));
            let tokens = pair.batch(&commands, drop_replies);
            let mut unavailable = Vec::new();
            for (token, command) in tokens.into_iter().zip(commands) {
                match pair.answer(token) {
                    Reply::Unavailable(_) => {
                        if !earlier.contains(&command.id.0) {
                            let stored =
                                ready(pair.store.command_records(&[command.id], Timestamp::from_unix_micros(0)));
                            assert!(stored.unwrap().is_empty(), "{} answered unavailable but stored", command.id);
                        }
                        // A client that went away does not retry.
                        if !drop_replies {
                            unavailable.push(command);
                        }
                    }
                    Reply::Unconfirmed { record, .. } => {
                        assert_eq!(record.command_id, command.id);
                        let stored = ready(pair.store.command_records(&[command.id], Timestamp::from_unix_micros(0)));
                        assert_eq!(stored.unwrap(), vec![*record], "unconfirmed, yet not stored as recorded");
                        if !drop_replies {
                            unavailable.push(command);
                        }
                    }
                    _ if drop_replies => {}
                    reply => {
                        settled.entry(command.id.0).or_insert_with(|| outcome(reply));
                    }
                }
            }
            commands = unavailable;
        }
        assert!(commands.is_empty(), "still unavailable after five rounds: {commands:?}");
    };
    run(pair, vec![create(1, "a", 1_000), create(2, "b", 0)], false);
    run(
        pair,
        vec![
            credit(3, "a", 500),
            transfer(4, "a", "b", 700),
            debit(5, "b", 10_000), // refused: insufficient funds
            create(1, "a", 1_000), // a retry of a committed command: its original answer
            credit(3, "a", 500),   // the same id twice in one batch: in flight
            credit(1, "a", 1),     // a reused key: refused, nothing changes
            command(
                6,
                CommandKind::PlaceHold {
                    hold_id: HoldId::parse("h1").unwrap(),
                    wallet_id: wallet("a"),
                    currency: Currency::USD,
                    amount: money(100),
                    expires_at: Some(Timestamp::from_unix_micros(pair.now.unix_micros() + 1_000_000)),
                    description: None,
                },
            ),
        ],
        true, // nobody waits for these answers: the retries below must get them from the store
    );
    // The engine forgets ids after its retention; the store still answers them.
    pair.later(ENGINE_RETENTION_MICROS + 1);
    run(pair, vec![credit(3, "a", 500), transfer(4, "a", "b", 700), debit(7, "a", 50), debit(5, "b", 10_000)], false);
    // The hold lapsed: the writer releases it by itself, with no client command.
    run(pair, Vec::new(), false);
    pair.core.handle_batch(pair.now, Vec::new());
    pair.drive();
    run(pair, vec![transfer(8, "b", "a", 300), credit(9, "b", 1)], false);
    (pair.core.ledger().clone(), settled)
}

/// Balances and holds per wallet, without times (a retried command is decided later).
fn books(ledger: &Ledger) -> Books {
    ledger.wallets().iter().map(|wallet| (wallet.id, wallet.balance, wallet.held)).collect()
}

fn steps_without_faults() -> (usize, Books, Settled) {
    let mut pair = Pair::new(BTreeMap::new());
    let (ledger, settled) = scenario(&mut pair);
    (pair.step, books(&ledger), settled)
}

#[test]
fn without_faults_every_command_settles_as_the_engine_decides() {
    let (steps, books, settled) = steps_without_faults();
    assert!(steps >= 10, "the scenario asks for IO: {steps} steps");
    // a: 1000 + 500 - 700 - 50 + 300 = 1050; b: 0 + 700 - 300 + 1 = 401 (the hold lapsed).
    assert_eq!(books, vec![(wallet("a"), 1_050, 0), (wallet("b"), 401, 0)]);
    assert_eq!(settled[&5], Some(Err(Rejection::InsufficientFunds)));
    assert_eq!(settled[&1], Some(Ok(())));
    assert_eq!(settled.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 7, 8, 9]);
}

#[test]
fn one_fault_at_any_step_changes_nothing_once_retried() {
    let (steps, expected_books, expected_settled) = steps_without_faults();
    let mut runs = 0;
    let mut seen = BTreeSet::new();
    // Faults shift later steps (a reload adds reads), so probe past the fault-free count too.
    for step in 0..steps + 20 {
        for fault in [Fault::Fail, Fault::Ambiguous] {
            let mut pair = Pair::new(BTreeMap::from([(step, fault)]));
            let (ledger, settled) = scenario(&mut pair);
            assert_eq!(books(&ledger), expected_books, "{fault:?} at step {step}");
            assert_eq!(settled, expected_settled, "{fault:?} at step {step}");
            seen.extend(pair.seen);
            runs += 1;
        }
    }
    assert!(runs > 40);
    let every = ["commit", "load_snapshot", "look_up_records", "read_journal", "read_transactions", "wait"];
    assert_eq!(seen, BTreeSet::from(every), "the faults reached every kind of IO");
}

#[test]
fn two_faults_at_any_two_steps_change_nothing_once_retried() {
    let (steps, expected_books, expected_settled) = steps_without_faults();
    let mut runs = 0;
    for first in 0..steps + 10 {
        for second in first + 1..steps + 20 {
            for (a, b) in [(Fault::Fail, Fault::Fail), (Fault::Ambiguous, Fault::Fail), (Fault::Fail, Fault::Ambiguous)]
            {
                let mut pair = Pair::new(BTreeMap::from([(first, a), (second, b)]));
                let (ledger, settled) = scenario(&mut pair);
                assert_eq!(books(&ledger), expected_books, "{a:?} at {first}, {b:?} at {second}");
                assert_eq!(settled, expected_settled, "{a:?} at {first}, {b:?} at {second}");
                runs += 1;
            }
        }
    }
    assert!(runs > 1_000);
}

#[test]
fn a_store_that_stays_down_answers_unavailable_and_keeps_nothing() {
    // Every IO fails: lookups, commits, reloads. Every new command is refused as unavailable, the
    // store stays empty, and the core stays usable.
    let script = (0..10_000).map(|step| (step, Fault::Fail)).collect();
    let mut pair = Pair::new(script);
    let tokens = pair.batch(&[create(1, "a", 100), credit(2, "a", 5)], false);
    for token in tokens {
        assert!(matches!(pair.answer(token), Reply::Unavailable(_)), "{:?}", pair.answer(token));
    }
    assert!(ready(pair.store.journal(TransactionId(0), 10)).unwrap().is_empty());
    pair.script.clear();
    let tokens = pair.batch(&[create(1, "a", 100)], false);
    assert!(matches!(pair.answer(tokens[0]), Reply::Decided { replayed: false, .. }));
}

#[test]
fn a_commit_that_keeps_failing_after_reloads_answers_unavailable_after_the_configured_attempts() {
    // Lookups succeed, every commit is lost: exactly `commit_attempts` commits are tried.
    let mut pair = Pair::new(BTreeMap::new());
    pair.batch(&[create(1, "a", 100)], false);
    let mut commits = 0;
    let tokens = {
        let commands = [credit(2, "a", 5)];
        pair.core.handle_batch(pair.now, commands.iter().cloned().zip([99]));
        while let Some(io) = pair.core.poll_io() {
            match io {
                Io::LookUpRecords { ids, not_before } => {
                    let result = ready(pair.store.command_records(&ids, not_before));
                    pair.core.handle_records(result);
                }
                Io::Commit => {
                    commits += 1;
                    pair.core.handle_commit(Err(StoreError::Unavailable("lost".to_owned())));
                }
                Io::LoadSnapshot => {
                    let result = ready(pair.store.latest_snapshot());
                    pair.core.handle_snapshot_loaded(pair.now, result);
                }
                Io::ReadJournal { after, limit } => {
                    let result = ready(pair.store.journal(after, limit));
                    pair.core.handle_journal(pair.now, result);
                }
                Io::Wait { .. } => pair.core.handle_wait_over(),
                other => panic!("unexpected {other:?}"),
            }
        }
        [99]
    };
    pair.collect_replies();
    assert_eq!(commits, config().commit_attempts);
    assert!(matches!(pair.answer(tokens[0]), Reply::Unavailable(reason) if reason.contains("lost")));
    assert_eq!(pair.core.ledger().wallet(&wallet("a")).unwrap().balance, 100, "nothing applied");
}

#[test]
#[should_panic(expected = "an answer to a question the core did not ask")]
fn an_answer_to_a_question_not_asked_is_a_bug() {
    let mut core: WriterCore<u32> = WriterCore::new(config(), Ledger::new(config().engine()));
    core.handle_commit(Ok(()));
}

#[test]
fn a_clock_that_steps_back_does_not_keep_lapsed_holds_reserving_funds() {
    // More holds lapse at once than one ExpireHolds releases, so a second one is needed; by then
    // the clock has stepped back a minute. The ledger has recorded later times, and counts every
    // hold as lapsed: the writer must too, or the rest keep reserving funds until the clock
    // catches up, while no capture can take them.
    let holds = u64::try_from(wallex_engine::MAX_EXPIRIES_PER_COMMAND).unwrap() + 44;
    let mut pair = Pair::new(BTreeMap::new());
    pair.batch(&[create(1, "a", 1_000_000)], false);
    let expires_at = Timestamp::from_unix_micros(pair.now.unix_micros() + 1_000_000);
    let place: Vec<Command> = (0..holds)
        .map(|index| {
            command(
                u128::from(100 + index),
                CommandKind::PlaceHold {
                    hold_id: HoldId::parse(&format!("h{index}")).unwrap(),
                    wallet_id: wallet("a"),
                    currency: Currency::USD,
                    amount: money(10),
                    expires_at: Some(expires_at),
                    description: None,
                },
            )
        })
        .collect();
    pair.batch(&place, false);
    assert_eq!(pair.core.ledger().wallet(&wallet("a")).unwrap().held, holds * 10);
    pair.later(2_000_000);
    pair.batch(&[credit(2, "a", 1)], false);
    let held = pair.core.ledger().wallet(&wallet("a")).unwrap().held;
    assert_eq!(held, 44 * 10, "one ExpireHolds released {} holds", wallex_engine::MAX_EXPIRIES_PER_COMMAND);
    // The clock steps back a minute: before the holds' expiry.
    pair.now = Timestamp::from_unix_micros(pair.now.unix_micros() - 60_000_000);
    assert_eq!(pair.core.until_next_expiry_micros(pair.now), Some(0), "the rest are due now, not in a minute");
    pair.batch(&[credit(3, "a", 1)], false);
    assert_eq!(pair.core.ledger().wallet(&wallet("a")).unwrap().held, 0, "every lapsed hold is released");
}

#[test]
fn the_first_answer_after_an_ambiguous_commit_is_not_a_replay() {
    // The commit happened but its outcome was lost; the reload finds the command committed. The
    // client never had an answer, so this one is its first: not a replay (no Idempotent-Replayed).
    let mut pair = Pair::new(BTreeMap::from([(1, Fault::Ambiguous)]));
    let tokens = pair.batch(&[create(1, "a", 100)], false);
    match pair.answer(tokens[0]) {
        Reply::Decided { replayed, record, events } => {
            assert!(!replayed, "the first answer is not a replay");
            assert_eq!((record.result, events.len()), (Ok(()), 1));
        }
        other => panic!("not decided: {other:?}"),
    }
    assert!(pair.seen.contains("load_snapshot"), "the commit's outcome was resolved by a reload");
    // A retry afterwards is a replay.
    let tokens = pair.batch(&[create(1, "a", 100)], false);
    assert!(matches!(pair.answer(tokens[0]), Reply::Decided { replayed: true, .. }));
}

#[test]
fn a_thousand_duplicates_cost_one_read_and_do_not_delay_a_new_command() {
    // Retries of committed commands are answered from the store, but in one read per batch: a
    // burst of 1,000 of them (half remembered by the engine, half only by the store's idempotency
    // keys) ahead of one new command delays it by a constant number of store round trips, not by
    // one per duplicate.
    let mut pair = Pair::new(BTreeMap::new());
    let mut originals = vec![create(1, "a", 0)];
    originals.extend((0..500).map(|n| credit(10 + n, "a", 1)));
    pair.batch(&originals, false);
    // Past the engine's retention: the first 501 are now known to the store alone.
    pair.now = Timestamp::from_unix_micros(pair.now.unix_micros() + ENGINE_RETENTION_MICROS + 1);
    originals.extend((0..500).map(|n| credit(1_000 + n, "a", 1)));
    pair.batch(&originals[501..], false);

    let mut burst: Vec<Command> = originals[1..].to_vec();
    assert_eq!(burst.len(), 1_000);
    burst.push(credit(5_000, "a", 7));
    let before = pair.step;
    let tokens = pair.batch(&burst, false);
    let new = *tokens.last().unwrap();
    match pair.answer(new) {
        Reply::Decided { record, replayed, .. } => assert_eq!((record.result, *replayed), (Ok(()), false)),
        other => panic!("the new credit was not decided: {other:?}"),
    }
    // One lookup of the forgotten ids, one read of the duplicates' events, the commit.
    let steps = pair.answered_at[&new] - before;
    assert!(steps <= 3, "the new command waited {steps} store round trips behind the duplicates");
    assert!(pair.step - before <= 3, "the whole batch took {} store round trips", pair.step - before);
    for (token, original) in tokens.iter().zip(&burst[..1_000]) {
        match pair.answer(*token) {
            Reply::Decided { record, events, replayed } => {
                assert!(*replayed, "a duplicate is a replay");
                assert_eq!(record.command_id, original.id);
                assert_eq!(events.len(), 1, "a credit's one event, read back");
            }
            other => panic!("duplicate {} not answered from the store: {other:?}", original.id),
        }
    }
}

#[test]
fn a_commit_of_an_earlier_writer_that_lands_late_is_found_reloaded_and_answered() {
    // A killed process's last commit reaches the store after this writer recovered: the store is
    // one transaction ahead of the ledger. A retry of that command finds its record; the writer
    // reloads and answers it (the client never had an answer: not a replay).
    let mut pair = Pair::new(BTreeMap::new());
    pair.batch(&[create(1, "a", 100)], false);
    let mut earlier = ready(recover(&pair.store, config().engine(), config().journal_page)).unwrap();
    let mut late = wallex_pipeline::ports::CommitBatch::default();
    let command = credit(77, "a", 5);
    let wallex_engine::Outcome::Recorded(record) = earlier.execute(pair.now, &command, &mut late.events) else {
        panic!("a new command")
    };
    late.records.push(record);
    for (index, event) in late.events.iter().enumerate() {
        late.outbox.push(wallex_pipeline::ports::OutboxMessage {
            position: wallex_pipeline::ports::OutboxPosition {
                transaction_id: record.transaction_id,
                index: u32::try_from(index).unwrap(),
            },
            key: event.wallet_id,
            payload: wallex_pipeline::codec::encode_event(event),
            committed_at: record.at,
        });
    }
    ready(pair.store.commit(&late)).unwrap();

    let tokens = pair.batch(&[command, credit(78, "a", 1)], false);
    match pair.answer(tokens[0]) {
        Reply::Decided { record: answered, replayed, events } => {
            assert_eq!(*answered, record, "the late commit's own record");
            assert!(!replayed);
            assert_eq!(events.len(), 1);
        }
        other => panic!("not decided: {other:?}"),
    }
    assert!(matches!(pair.answer(tokens[1]), Reply::Decided { record, .. } if record.result.is_ok()));
    assert!(pair.seen.contains("load_snapshot"), "the writer reloaded");
    assert_eq!(pair.core.ledger().wallet(&wallet("a")).unwrap().balance, 106);
}
