//! Every command and every rejection code, one scenario each, through the public engine API.
//!
//! Each scenario runs through `auditor::Harness`, so besides the assertions written here every step
//! is also checked against the independent auditor, the invariants and well-formed events; each test
//! ends by replaying its journal and round-tripping a snapshot.

use wallex_engine::auditor::Harness;
use wallex_engine::{
    Account, Amount, Command, CommandId, CommandKind, Config, Currency, Description, Event, EventKind, HoldId,
    HoldStatus, Ledger, MAX_BALANCE_MINOR, Outcome, OwnerId, Rejection, Timestamp, TransactionId, WalletId,
};

fn wallet(id: &str) -> WalletId {
    WalletId::parse(id).unwrap()
}

fn hold(id: &str) -> HoldId {
    HoldId::parse(id).unwrap()
}

fn money(minor: u64) -> Amount {
    Amount::from_minor(minor).unwrap()
}

fn at(micros: u64) -> Timestamp {
    Timestamp::from_unix_micros(micros)
}

/// A ledger under test with a command-id counter and a clock that ticks once per command.
struct Script {
    harness: Harness,
    next_id: u128,
    now: u64,
}

impl Script {
    fn new() -> Script {
        Script::with_config(Config::default())
    }

    fn with_config(config: Config) -> Script {
        Script { harness: Harness::new(config), next_id: 1, now: 1_000_000 }
    }

    fn ledger(&self) -> &Ledger {
        &self.harness.ledger
    }

    /// Runs `kind` under a fresh command id; returns the outcome and the events it emitted.
    fn run(&mut self, kind: CommandKind) -> (Result<TransactionId, Rejection>, Vec<Event>) {
        let id = CommandId(self.next_id);
        self.next_id += 1;
        self.run_as(id, kind)
    }

    fn run_as(&mut self, id: CommandId, kind: CommandKind) -> (Result<TransactionId, Rejection>, Vec<Event>) {
        self.now += 1;
        let before = self.harness.journal.len();
        let outcome =
            self.harness.step(at(self.now), &Command::new(id, kind)).unwrap_or_else(|error| panic!("{error}"));
        let events = match outcome {
            Outcome::Recorded(_) if self.harness.journal.len() > before => {
                self.harness.journal.last().unwrap().1.clone()
            }
            _ => Vec::new(),
        };
        (outcome.result(), events)
    }

    fn ok(&mut self, kind: CommandKind) -> Vec<Event> {
        let (result, events) = self.run(kind.clone());
        assert!(result.is_ok(), "{kind:?} was refused: {result:?}");
        events
    }

    fn refused(&mut self, kind: CommandKind) -> Rejection {
        let (result, events) = self.run(kind.clone());
        assert!(events.is_empty(), "a refused command emits nothing");
        result.expect_err(&format!("{kind:?} was accepted"))
    }

    fn create(&mut self, id: &str, currency: Currency, initial: u64, overdraft: u64) {
        self.ok(create(id, currency, initial, overdraft));
    }

    fn balance(&self, id: &str) -> (i64, u64) {
        let wallet = self.ledger().wallet(&wallet(id)).unwrap();
        (wallet.balance, wallet.held)
    }

    fn finish(&self) {
        self.harness.check_replay().unwrap();
        self.harness.check_snapshot().unwrap();
    }
}

fn create(id: &str, currency: Currency, initial: u64, overdraft: u64) -> CommandKind {
    CommandKind::CreateWallet {
        wallet_id: wallet(id),
        owner_id: OwnerId::parse("owner-1").unwrap(),
        currency,
        initial_balance: money(initial),
        overdraft_limit: money(overdraft),
    }
}

fn credit(id: &str, amount: u64) -> CommandKind {
    CommandKind::Credit { wallet_id: wallet(id), currency: Currency::USD, amount: money(amount), description: None }
}

fn debit(id: &str, amount: u64) -> CommandKind {
    CommandKind::Debit { wallet_id: wallet(id), currency: Currency::USD, amount: money(amount), description: None }
}

fn transfer(from: &str, to: &str, amount: u64) -> CommandKind {
    CommandKind::Transfer {
        source: wallet(from),
        destination: wallet(to),
        currency: Currency::USD,
        amount: money(amount),
        description: None,
    }
}

fn place(hold_id: &str, wallet_id: &str, amount: u64, expires_at: Option<u64>) -> CommandKind {
    CommandKind::PlaceHold {
        hold_id: hold(hold_id),
        wallet_id: wallet(wallet_id),
        currency: Currency::USD,
        amount: money(amount),
        expires_at: expires_at.map(at),
        description: None,
    }
}

fn capture(hold_id: &str, amount: Option<u64>, destination: Option<&str>) -> CommandKind {
    CommandKind::CaptureHold {
        hold_id: hold(hold_id),
        amount: amount.map(money),
        destination: destination.map(wallet),
        description: None,
    }
}

fn void(hold_id: &str) -> CommandKind {
    CommandKind::VoidHold { hold_id: hold(hold_id) }
}

#[test]
fn create_wallet_funds_it_from_the_world_account_in_one_event() {
    let mut script = Script::new();
    let events = script.ok(create("alice", Currency::USD, 10_000, 0));
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.version, 1);
    assert_eq!(event.balance_after, 10_000);
    assert!(matches!(event.kind, EventKind::WalletCreated { .. }));
    let posting = event.posting.unwrap();
    assert_eq!(posting.source, Account::World(Currency::USD));
    assert_eq!(posting.destination, Account::Wallet(wallet("alice")));
    assert_eq!(script.ledger().world_balance(Currency::USD), -10_000);

    let events = script.ok(create("bob", Currency::JPY, 0, 0));
    assert!(events[0].posting.is_none(), "an empty wallet moves no money");
    assert_eq!(script.refused(create("alice", Currency::EUR, 0, 0)), Rejection::WalletExists);
    script.finish();
}

#[test]
fn credit_and_debit_move_money_through_the_world_account() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 0, 0);
    let events = script.ok(credit("alice", 5_000));
    assert_eq!((events[0].version, events[0].balance_after), (2, 5_000));
    assert!(matches!(events[0].kind, EventKind::Credited));
    let events = script.ok(debit("alice", 1_250));
    assert_eq!((events[0].version, events[0].balance_after), (3, 3_750));
    assert_eq!(events[0].posting.unwrap().destination, Account::World(Currency::USD));
    assert_eq!(script.ledger().world_balance(Currency::USD), -3_750);
    assert_eq!(script.balance("alice"), (3_750, 0));
    script.finish();
}

#[test]
fn descriptions_travel_into_the_events() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 0, 0);
    let description = Description::parse("Deposit from bank").unwrap();
    let events = script.ok(CommandKind::Credit {
        wallet_id: wallet("alice"),
        currency: Currency::USD,
        amount: money(10),
        description: Some(description.clone()),
    });
    assert_eq!(events[0].description, Some(description));
    script.finish();
}

#[test]
fn debit_is_refused_beyond_the_available_balance_and_the_overdraft() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    assert_eq!(script.refused(debit("alice", 1_001)), Rejection::InsufficientFunds);
    script.ok(debit("alice", 1_000));
    assert_eq!(script.balance("alice"), (0, 0));

    script.create("carol", Currency::USD, 100, 500);
    script.ok(debit("carol", 600));
    assert_eq!(script.balance("carol"), (-500, 0), "down to exactly minus the overdraft limit");
    assert_eq!(script.refused(debit("carol", 1)), Rejection::InsufficientFunds);
    script.finish();
}

#[test]
fn transfer_is_one_atomic_decision_over_two_streams() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    script.create("bob", Currency::USD, 0, 0);
    let events = script.ok(transfer("alice", "bob", 400));
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].transaction_id, events[1].transaction_id);
    assert_eq!(events[0].posting, events[1].posting, "both streams carry the one posting");
    assert_eq!((events[0].wallet_id, events[0].version, events[0].balance_after), (wallet("alice"), 2, 600));
    assert_eq!((events[1].wallet_id, events[1].version, events[1].balance_after), (wallet("bob"), 2, 400));
    assert!(matches!(events[0].kind, EventKind::TransferSent { destination } if destination == wallet("bob")));
    assert!(matches!(events[1].kind, EventKind::TransferReceived { source } if source == wallet("alice")));
    assert_eq!(script.ledger().world_balance(Currency::USD), -1_000, "a transfer creates no money");

    assert_eq!(script.refused(transfer("alice", "bob", 601)), Rejection::InsufficientFunds);
    assert_eq!(script.balance("alice"), (600, 0), "a refused transfer touches neither side");
    assert_eq!(script.balance("bob"), (400, 0));
    script.finish();
}

#[test]
fn transfer_rejections_follow_the_documented_precedence() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 100, 0);
    script.create("euro", Currency::EUR, 100, 0);
    assert_eq!(script.refused(transfer("alice", "alice", 0)), Rejection::InvalidAmount, "amount before same wallet");
    assert_eq!(script.refused(transfer("alice", "alice", 10)), Rejection::SameWalletTransfer);
    assert_eq!(script.refused(transfer("ghost", "nobody", 10)), Rejection::WalletNotFound, "source first");
    assert_eq!(script.refused(transfer("alice", "nobody", 10)), Rejection::DestinationWalletNotFound);
    assert_eq!(script.refused(transfer("alice", "euro", 1_000)), Rejection::CurrencyMismatch, "currency before funds");
    assert_eq!(script.refused(transfer("euro", "alice", 10)), Rejection::CurrencyMismatch);
    script.finish();
}

#[test]
fn credit_and_debit_rejections() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 100, 0);
    script.create("yen", Currency::JPY, 100, 0);
    assert_eq!(script.refused(credit("alice", 0)), Rejection::InvalidAmount);
    assert_eq!(script.refused(debit("alice", 0)), Rejection::InvalidAmount);
    assert_eq!(script.refused(credit("ghost", 0)), Rejection::InvalidAmount, "the command alone comes first");
    assert_eq!(script.refused(credit("ghost", 10)), Rejection::WalletNotFound);
    assert_eq!(script.refused(debit("ghost", 10)), Rejection::WalletNotFound);
    assert_eq!(script.refused(credit("yen", 10)), Rejection::CurrencyMismatch);
    assert_eq!(script.refused(debit("yen", 1_000)), Rejection::CurrencyMismatch, "currency before funds");
    script.finish();
}

#[test]
fn balances_never_pass_the_balance_limit() {
    let mut script = Script::new();
    script.create("whale", Currency::USD, 0, 0);
    script.create("minnow", Currency::USD, Amount::MAX_MINOR, 0);
    let max = Amount::MAX_MINOR;
    let credits = u64::try_from(MAX_BALANCE_MINOR).unwrap() / max;
    for _ in 0..credits {
        script.ok(credit("whale", max));
    }
    assert_eq!(script.balance("whale").0, MAX_BALANCE_MINOR);
    assert_eq!(script.refused(credit("whale", 1)), Rejection::BalanceLimitExceeded);
    assert_eq!(script.refused(transfer("minnow", "whale", 1)), Rejection::BalanceLimitExceeded);
    script.ok(place("h", "minnow", 5, None));
    assert_eq!(script.refused(capture("h", None, Some("whale"))), Rejection::BalanceLimitExceeded);
    script.finish();
}

#[test]
fn holds_reserve_money_until_captured_in_part_and_release_the_rest() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    script.create("shop", Currency::USD, 0, 0);
    let events = script.ok(place("h1", "alice", 700, None));
    assert_eq!((events[0].balance_after, events[0].held_after), (1_000, 700));
    assert!(events[0].posting.is_none(), "a hold moves no money");
    assert_eq!(script.refused(debit("alice", 301)), Rejection::InsufficientFunds, "held money is not available");
    assert_eq!(script.refused(place("h2", "alice", 301, None)), Rejection::InsufficientFunds);
    script.ok(debit("alice", 300));

    let events = script.ok(capture("h1", Some(500), Some("shop")));
    assert_eq!(events.len(), 2);
    assert!(matches!(
        events[0].kind,
        EventKind::HoldCaptured { captured, released, .. } if captured == money(500) && released == money(200)
    ));
    assert!(matches!(events[1].kind, EventKind::CaptureReceived { .. }));
    assert_eq!(script.balance("alice"), (200, 0), "captured 500, released 200");
    assert_eq!(script.balance("shop"), (500, 0));
    let status = script.ledger().hold(&hold("h1")).unwrap().status;
    assert_eq!(status, HoldStatus::Captured { captured: money(500) });
    assert_eq!(script.refused(capture("h1", None, Some("shop"))), Rejection::HoldNotActive);
    assert_eq!(script.refused(void("h1")), Rejection::HoldNotActive);
    script.finish();
}

#[test]
fn a_full_capture_without_destination_leaves_the_system() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    script.ok(place("h1", "alice", 250, None));
    let events = script.ok(capture("h1", None, None));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].posting.unwrap().destination, Account::World(Currency::USD));
    assert_eq!(script.balance("alice"), (750, 0));
    assert_eq!(script.ledger().world_balance(Currency::USD), -750);
    script.finish();
}

#[test]
fn voiding_releases_the_whole_hold() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    script.ok(place("h1", "alice", 1_000, None));
    let events = script.ok(void("h1"));
    assert!(matches!(events[0].kind, EventKind::HoldVoided { released, .. } if released == money(1_000)));
    assert_eq!(script.balance("alice"), (1_000, 0));
    assert_eq!(script.ledger().hold(&hold("h1")).unwrap().status, HoldStatus::Voided);
    script.finish();
}

#[test]
fn hold_rejections_follow_the_documented_precedence() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    script.create("bob", Currency::USD, 0, 0);
    script.create("euro", Currency::EUR, 0, 0);
    assert_eq!(script.refused(place("h", "alice", 0, None)), Rejection::InvalidAmount);
    assert_eq!(script.refused(place("h", "ghost", 10, None)), Rejection::WalletNotFound);
    assert_eq!(script.refused(place("h", "euro", 10, None)), Rejection::CurrencyMismatch);
    let past = script.now;
    assert_eq!(script.refused(place("h", "alice", 10, Some(past))), Rejection::InvalidExpiry);
    assert_eq!(script.refused(place("h", "alice", 1_001, None)), Rejection::InsufficientFunds);
    script.ok(place("h", "alice", 100, None));
    assert_eq!(script.refused(place("h", "ghost", 10, None)), Rejection::HoldExists, "hold id before wallet");

    assert_eq!(script.refused(capture("nope", None, None)), Rejection::HoldNotFound);
    assert_eq!(script.refused(void("nope")), Rejection::HoldNotFound);
    assert_eq!(script.refused(capture("h", Some(0), None)), Rejection::InvalidAmount);
    assert_eq!(script.refused(capture("h", None, Some("ghost"))), Rejection::DestinationWalletNotFound);
    assert_eq!(script.refused(capture("h", None, Some("alice"))), Rejection::SameWalletTransfer);
    assert_eq!(script.refused(capture("h", None, Some("euro"))), Rejection::CurrencyMismatch);
    assert_eq!(script.refused(capture("h", Some(101), Some("bob"))), Rejection::CaptureExceedsHold);
    script.ok(capture("h", Some(100), Some("bob")));
    script.finish();
}

#[test]
fn holds_lapse_at_their_expiry_and_expire_holds_releases_them_in_order() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    let soon = script.now + 100;
    script.ok(place("late", "alice", 200, Some(soon + 50)));
    script.ok(place("early", "alice", 300, Some(soon)));
    script.ok(place("forever", "alice", 100, None));
    assert_eq!(script.ledger().next_hold_expiry(), Some(at(soon)));

    let events = script.ok(CommandKind::ExpireHolds);
    assert!(events.is_empty(), "nothing has lapsed yet");
    script.now = soon - 1; // The next command runs at exactly `soon`.
    assert_eq!(script.refused(capture("early", None, None)), Rejection::HoldExpired, "lapsed before processing");
    assert_eq!(script.refused(void("early")), Rejection::HoldExpired);
    assert_eq!(script.balance("alice"), (1_000, 600), "a lapsed hold still reserves until released");

    script.now = soon + 100;
    let events = script.ok(CommandKind::ExpireHolds);
    let expired: Vec<_> = events
        .iter()
        .map(|event| match &event.kind {
            EventKind::HoldExpired { hold_id, .. } => (hold_id.to_string(), event.version),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(expired, [("early".to_owned(), 5), ("late".to_owned(), 6)], "oldest expiry first, contiguous versions");
    assert_eq!(script.balance("alice"), (1_000, 100));
    assert_eq!(script.refused(capture("late", None, None)), Rejection::HoldExpired);
    assert_eq!(script.ledger().next_hold_expiry(), None);
    script.finish();
}

#[test]
fn time_never_goes_backwards_inside_the_ledger() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    let expiry = script.now + 10;
    script.ok(place("h", "alice", 100, Some(expiry)));
    script.now = expiry + 5;
    script.ok(credit("alice", 1));
    // The caller's clock jumps back before the expiry: the ledger keeps its later time.
    script.now = expiry - 5;
    assert_eq!(script.refused(void("h")), Rejection::HoldExpired);
    assert_eq!(script.ledger().clock(), at(expiry + 6));
    script.finish();
}

#[test]
fn a_retried_command_returns_its_original_outcome_and_changes_nothing() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    let id = CommandId(777);
    let (first, events) = script.run_as(id, debit("alice", 100));
    assert_eq!(events.len(), 1);
    let (again, events) = script.run_as(id, debit("alice", 100));
    assert_eq!(again, first, "success is pinned");
    assert!(events.is_empty());
    assert_eq!(script.balance("alice"), (900, 0), "debited once");

    let refused_id = CommandId(778);
    let (first, _) = script.run_as(refused_id, debit("alice", 5_000));
    assert_eq!(first, Err(Rejection::InsufficientFunds));
    script.ok(credit("alice", 10_000));
    let (again, events) = script.run_as(refused_id, debit("alice", 5_000));
    assert_eq!(again, Err(Rejection::InsufficientFunds), "a rejection is pinned too, even once funds arrive");
    assert!(events.is_empty());
    script.finish();
}

#[test]
fn a_reused_command_id_with_other_content_is_refused_without_effect() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    let id = CommandId(42);
    script.run_as(id, debit("alice", 100)).0.unwrap();
    let (reused, events) = script.run_as(id, debit("alice", 101));
    assert_eq!(reused, Err(Rejection::IdempotencyKeyReused));
    assert!(events.is_empty());
    let (reused, _) = script.run_as(id, credit("alice", 100));
    assert_eq!(reused, Err(Rejection::IdempotencyKeyReused), "another command type is other content");
    assert_eq!(script.balance("alice"), (900, 0));
    let (again, _) = script.run_as(id, debit("alice", 100));
    assert!(again.is_ok(), "the original is still answered");
    script.finish();
}

#[test]
fn command_ids_are_forgotten_after_the_retention_window() {
    let mut script = Script::with_config(Config { command_retention_micros: 1_000, ..Config::default() });
    script.create("alice", Currency::USD, 1_000, 0);
    let id = CommandId(9);
    script.run_as(id, debit("alice", 100)).0.unwrap();
    script.now += 500;
    assert!(script.run_as(id, debit("alice", 100)).1.is_empty(), "still remembered");
    script.now += 1_000;
    let (result, events) = script.run_as(id, debit("alice", 100));
    assert!(result.is_ok());
    assert_eq!(events.len(), 1, "forgotten: the same id is a new command");
    assert_eq!(script.balance("alice"), (800, 0));
    assert!(script.ledger().remembered_commands() <= 2);
    script.finish();
}

#[test]
fn transaction_ids_number_every_recorded_command() {
    let mut script = Script::new();
    let (first, _) = script.run(create("alice", Currency::USD, 0, 0));
    let (refused, _) = script.run(debit("alice", 1));
    let (third, _) = script.run(credit("alice", 1));
    assert_eq!(first, Ok(TransactionId(1)));
    assert_eq!(refused, Err(Rejection::InsufficientFunds));
    assert_eq!(third, Ok(TransactionId(3)), "the rejection took transaction 2");
    assert_eq!(script.ledger().last_transaction_id(), TransactionId(3));
    script.finish();
}

#[test]
fn replay_refuses_a_journal_the_ledger_could_not_have_written() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    script.ok(debit("alice", 100));
    let journal = script.harness.journal.clone();

    let mut ledger = Ledger::new(Config::default());
    assert!(ledger.replay(&journal[1].0, &journal[1].1).is_err(), "a gap in transactions");

    let mut tampered = journal.clone();
    tampered[1].1[0].balance_after = 950;
    let mut ledger = Ledger::new(Config::default());
    ledger.replay(&tampered[0].0, &tampered[0].1).unwrap();
    let error = ledger.replay(&tampered[1].0, &tampered[1].1).unwrap_err();
    assert!(error.reason.contains("computes balance 900"), "{error}");

    let mut skipped = journal;
    skipped[1].1[0].version = 3;
    let mut ledger = Ledger::new(Config::default());
    ledger.replay(&skipped[0].0, &skipped[0].1).unwrap();
    assert!(ledger.replay(&skipped[1].0, &skipped[1].1).unwrap_err().reason.contains("expected version 2"));
}

#[test]
fn a_corrupted_snapshot_is_refused() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    let mut bytes = script.ledger().encode_snapshot();
    assert!(Ledger::restore(&bytes, Config::default()).is_ok());
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    assert!(matches!(Ledger::restore(&bytes, Config::default()), Err(wallex_engine::SnapshotError::Checksum)));
    let shortened = &bytes[..bytes.len() - 1];
    assert!(matches!(Ledger::restore(shortened, Config::default()), Err(wallex_engine::SnapshotError::Checksum)));
    assert!(matches!(Ledger::restore(&bytes[..4], Config::default()), Err(wallex_engine::SnapshotError::Truncated)));
}

#[test]
fn amounts_in_kwd_and_jpy_keep_their_scale_end_to_end() {
    let mut script = Script::new();
    let kwd = Amount::parse("1.005", Currency::KWD).unwrap();
    script.ok(CommandKind::CreateWallet {
        wallet_id: wallet("k"),
        owner_id: OwnerId::parse("o").unwrap(),
        currency: Currency::KWD,
        initial_balance: kwd,
        overdraft_limit: Amount::ZERO,
    });
    let wallet = script.ledger().wallet(&wallet("k")).unwrap();
    assert_eq!(wallet.balance, 1_005);
    assert_eq!(Currency::KWD.format_minor(i128::from(wallet.balance)), "1.005");
    script.finish();
}

#[test]
fn a_journal_written_under_a_shorter_retention_replays_under_a_longer_one() {
    // The operator raised the retention between restarts: an id the old ledger forgot and saw
    // again appears twice in the journal. Replay keeps the newer record.
    let mut script = Script::with_config(Config { command_retention_micros: 1_000, ..Config::default() });
    script.create("alice", Currency::USD, 1_000, 0);
    let id = CommandId(5);
    script.run_as(id, debit("alice", 100)).0.unwrap();
    script.now += 5_000;
    let (second, _) = script.run_as(id, debit("alice", 100));
    let mut longer = Ledger::new(Config::default());
    for (record, events) in &script.harness.journal {
        longer.replay(record, events).unwrap();
    }
    longer.check_invariants().unwrap();
    assert_eq!(longer.command(&id, at(script.now)).unwrap().outcome(), second);
    assert_eq!(longer.wallet(&wallet("alice")).unwrap().balance, 800);
    let restored = Ledger::restore(&longer.encode_snapshot(), longer.config()).unwrap();
    assert_eq!(restored, longer, "a snapshot with a superseded record round-trips");
}

#[test]
fn a_restored_ledger_runs_under_the_settings_it_is_restored_with() {
    // The operator shortened the retention between restarts: the snapshot was written under a day,
    // the restored ledger forgets after a millisecond (a snapshot used to bring its settings back).
    let mut script = Script::with_config(Config { command_retention_micros: 86_400_000_000, ..Config::default() });
    script.create("alice", Currency::USD, 1_000, 0);
    let id = CommandId(77);
    script.run_as(id, debit("alice", 100)).0.unwrap();
    let bytes = script.ledger().encode_snapshot();

    let shorter = Config { command_retention_micros: 1_000, ..Config::default() };
    let mut restored = Ledger::restore(&bytes, shorter).unwrap();
    assert_eq!(restored.config(), shorter);
    let mut events = Vec::new();
    let later = at(script.now + 5_000);
    let outcome = restored.execute(later, &Command::new(id, debit("alice", 100)), &mut events);
    assert!(outcome.result().is_ok(), "{outcome:?}");
    assert_eq!(events.len(), 1, "the id is forgotten under the new retention: a new command");
    assert_eq!(restored.wallet(&wallet("alice")).unwrap().balance, 800);
}

/// A format 2 snapshot as the release before references wrote it: alice created with 10.00 and
/// debited 1.00 (`Script::new`, `create("alice", USD, 1_000, 0)`, `ok(debit("alice", 100))`).
const FORMAT_2: &[u8] = include_bytes!("fixtures/snapshot-format-2.bin");

/// The same ledger as format 3 wrote it, the release before atomic groups (records without their
/// refused leg).
const FORMAT_3: &[u8] = include_bytes!("fixtures/snapshot-format-3.bin");

#[test]
fn format_1_to_3_snapshots_still_restore_and_format_1_settings_are_ignored() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    script.ok(debit("alice", 100));
    let current = script.ledger().encode_snapshot();
    assert_eq!(current[0], 4, "this release writes format 4");
    let restored = Ledger::restore(FORMAT_2, Config::default()).unwrap();
    assert_eq!(restored.encode_snapshot(), current, "format 2 restores to the same state");
    assert_eq!(FORMAT_3[0], 3);
    let restored = Ledger::restore(FORMAT_3, Config::default()).unwrap();
    assert_eq!(restored.encode_snapshot(), current, "format 3 restores to the same state");

    // Format 1 was the format version, the settings (the retention, a varint) and then format 2's
    // state.
    let state = &FORMAT_2[1..FORMAT_2.len() - 8];
    let sealed = |mut bytes: Vec<u8>| {
        let checksum = xxhash_rust::xxh3::xxh3_64(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes
    };
    let mut old = vec![1u8];
    old.extend(bincode::encode_to_vec(3_600_000_000u64, bincode::config::standard()).unwrap());
    old.extend_from_slice(state);
    let old = sealed(old);
    let config = Config { command_retention_micros: 5_000, ..Config::default() };
    let restored = Ledger::restore(&old, config).unwrap();
    assert_eq!(restored.config(), config, "the caller's settings, not the snapshot's");
    assert_eq!(restored.wallet(&wallet("alice")).unwrap().balance, 900);
    assert_eq!(restored.encode_snapshot(), current, "the same state");

    let mut future = current.clone();
    future[0] = 5;
    let len = future.len();
    let checksum = xxhash_rust::xxh3::xxh3_64(&future[..len - 8]);
    future[len - 8..].copy_from_slice(&checksum.to_le_bytes());
    assert!(matches!(Ledger::restore(&future, config), Err(wallex_engine::SnapshotError::Format { found: 5 })));
}

#[test]
fn a_reference_is_unique_among_each_wallets_transactions_and_is_content() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    script.create("bob", Currency::USD, 10, 0);
    let memo = |reference: &str| wallex_engine::Memo {
        reference: Some(wallex_engine::Reference::parse(reference).unwrap()),
        metadata: wallex_engine::Metadata::parse([("order", "42")]).unwrap(),
        correlation_id: None,
    };
    let mut ledger = script.ledger().clone();
    let mut events = Vec::new();
    let now = at(script.now + 1);
    let first = Command { id: CommandId(900), kind: debit("alice", 100), memo: memo("inv-1") };
    assert!(ledger.execute(now, &first, &mut events).result().is_ok());
    assert_eq!(events[0].memo, first.memo, "the event carries the memo");
    // The same reference on alice again: refused, nothing changes; on bob it is free.
    let again = Command { id: CommandId(901), kind: debit("alice", 1), memo: memo("inv-1") };
    assert_eq!(ledger.execute(now, &again, &mut events).result(), Err(Rejection::ReferenceExists));
    assert_eq!(events.len(), 1, "a refusal emits nothing");
    assert_eq!(ledger.wallet(&wallet("alice")).unwrap().balance, 900);
    let transfer = Command {
        id: CommandId(902),
        kind: CommandKind::Transfer {
            source: wallet("bob"),
            destination: wallet("alice"),
            currency: Currency::USD,
            amount: Amount::from_minor(1).unwrap(),
            description: None,
        },
        memo: memo("inv-1"),
    };
    assert_eq!(ledger.execute(now, &transfer, &mut events).result(), Err(Rejection::ReferenceExists), "either leg");
    let on_bob = Command { id: CommandId(903), kind: credit("bob", 5), memo: memo("inv-1") };
    assert!(ledger.execute(now, &on_bob, &mut events).result().is_ok());
    // The reference and metadata are content: the same key with another reference is reuse.
    let reused = Command { id: CommandId(900), kind: debit("alice", 100), memo: memo("inv-2") };
    assert!(matches!(ledger.execute(now, &reused, &mut events), wallex_engine::Outcome::KeyReused { .. }));
    // A wallet keeps what its creation carried, for reads.
    let create = Command {
        id: CommandId(905),
        kind: CommandKind::CreateWallet {
            wallet_id: wallet("carol"),
            owner_id: OwnerId::parse("o").unwrap(),
            currency: Currency::USD,
            initial_balance: Amount::ZERO,
            overdraft_limit: Amount::ZERO,
        },
        memo: memo("carol-1"),
    };
    assert!(ledger.execute(now, &create, &mut events).result().is_ok());
    assert_eq!(ledger.wallet(&wallet("carol")).unwrap().memo.as_deref(), Some(&create.memo));
    // The references and the wallets' memos survive a snapshot.
    let mut restored = Ledger::restore(&ledger.encode_snapshot(), ledger.config()).unwrap();
    assert_eq!(restored, ledger);
    let after = Command { id: CommandId(904), kind: credit("bob", 5), memo: memo("inv-1") };
    assert_eq!(restored.execute(now, &after, &mut events).result(), Err(Rejection::ReferenceExists));
}

#[test]
fn an_owner_gets_at_most_its_quota_of_wallets_and_of_active_holds() {
    let quota = Config { max_wallets_per_owner: 2, max_active_holds_per_owner: 2, ..Config::default() };
    let mut script = Script::with_config(quota);
    script.create("a1", Currency::USD, 100, 0);
    script.create("a2", Currency::USD, 100, 0);
    assert_eq!(script.refused(create("a3", Currency::USD, 0, 0)), Rejection::QuotaExceeded);
    let other = CommandKind::CreateWallet {
        wallet_id: wallet("b1"),
        owner_id: OwnerId::parse("owner-2").unwrap(),
        currency: Currency::USD,
        initial_balance: money(0),
        overdraft_limit: money(0),
    };
    script.ok(other);

    // Holds on either of the owner's wallets count; a finished one frees its place.
    script.ok(place("h1", "a1", 1, None));
    script.ok(place("h2", "a2", 1, Some(script.now + 100)));
    assert_eq!(script.refused(place("h3", "a1", 1, None)), Rejection::QuotaExceeded);
    script.ok(void("h1"));
    script.ok(place("h3", "a1", 1, None));
    assert_eq!(script.refused(place("h4", "a2", 1, None)), Rejection::QuotaExceeded);
    script.now += 1_000;
    script.ok(CommandKind::ExpireHolds);
    script.ok(place("h4", "a2", 1, None));
    script.ok(capture("h4", None, None));
    script.ok(place("h5", "a2", 1, None));
    // Replay and a snapshot restore count the same (the snapshot holds no counts of its own).
    script.finish();
}

#[test]
fn an_atomic_group_takes_effect_as_one_transaction_each_leg_seeing_the_ones_before() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    script.create("bob", Currency::USD, 0, 0);
    // A new wallet, funded by a transfer, holding part of it and paying bob from the hold: every
    // leg after the first needs what an earlier leg did.
    let group = CommandKind::Atomic(vec![
        create("carol", Currency::USD, 0, 0),
        transfer("alice", "carol", 600),
        place("h1", "carol", 400, None),
        capture("h1", Some(250), Some("bob")),
        credit("bob", 5),
        debit("alice", 400),
    ]);
    let events = script.ok(group);
    let transaction = events[0].transaction_id;
    assert!(events.iter().all(|event| event.transaction_id == transaction), "one transaction id");
    let kinds: Vec<&str> = events.iter().map(|event| event.kind.name()).collect();
    assert_eq!(
        kinds,
        [
            "wallet_created",
            "transfer_sent",
            "transfer_received",
            "hold_placed",
            "hold_captured",
            "capture_received",
            "credited",
            "debited"
        ]
    );
    let carol: Vec<u64> = events.iter().filter(|event| event.wallet_id == wallet("carol")).map(|e| e.version).collect();
    assert_eq!(carol, [1, 2, 3, 4], "a wallet's versions run on within the group");
    assert_eq!(script.balance("alice"), (0, 0));
    assert_eq!(script.balance("carol"), (350, 0));
    assert_eq!(script.balance("bob"), (255, 0));
    assert_eq!(script.ledger().world_balance(Currency::USD), -605, "in 1,000 and 5, out 400");
    script.finish();
}

#[test]
fn an_atomic_group_with_one_refused_leg_changes_nothing_and_names_that_leg() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    script.create("bob", Currency::USD, 100, 0);
    script.ok(place("h0", "bob", 50, Some(5_000_000)));
    let before = script.ledger().clone();
    // Creates a wallet, places and finishes holds, moves money; the fifth leg overdraws alice.
    let group = CommandKind::Atomic(vec![
        create("carol", Currency::USD, 0, 0),
        transfer("alice", "carol", 700),
        place("h1", "carol", 300, Some(9_000_000)),
        void("h0"),
        debit("alice", 301),
        credit("bob", 1),
    ]);
    let id = CommandId(4_242);
    let (result, events) = script.run_as(id, group.clone());
    assert_eq!(result, Err(Rejection::InsufficientFunds));
    assert!(events.is_empty());
    let record = *script.ledger().command(&id, at(script.now)).unwrap();
    assert_eq!(record.refused_leg, Some(4), "the fifth leg is the refused one");
    let ledger = script.ledger();
    assert_eq!(ledger.wallets(), before.wallets(), "no wallet changed, and carol does not exist");
    assert_eq!(ledger.holds().collect::<Vec<_>>(), before.holds().collect::<Vec<_>>());
    assert_eq!(ledger.next_hold_expiry(), before.next_hold_expiry());
    assert_eq!(ledger.world_balance(Currency::USD), before.world_balance(Currency::USD));
    // The same id again: the same refusal, still naming its leg, and nothing changes.
    let mut again = script.ledger().clone();
    let outcome = again.execute(at(script.now + 1), &Command::new(id, group), &mut Vec::new());
    assert_eq!(outcome, wallex_engine::Outcome::Duplicate(record));
    // Restored from a snapshot, the record still names the leg.
    let restored = Ledger::restore(&script.ledger().encode_snapshot(), Config::default()).unwrap();
    assert_eq!(restored.command(&id, at(script.now)).unwrap().refused_leg, Some(4));
    // Without the overdraft, the same legs go through.
    script.ok(CommandKind::Atomic(vec![create("carol", Currency::USD, 0, 0), transfer("alice", "carol", 700)]));
    script.finish();
}

#[test]
fn malformed_groups_are_refused_whole_and_a_groups_reference_covers_every_wallet_it_touches() {
    let mut script = Script::new();
    script.create("alice", Currency::USD, 1_000, 0);
    script.create("bob", Currency::USD, 0, 0);
    assert_eq!(script.refused(CommandKind::Atomic(Vec::new())), Rejection::InvalidAtomicGroup);
    let nested = CommandKind::Atomic(vec![credit("alice", 1), CommandKind::Atomic(vec![credit("alice", 1)])]);
    assert_eq!(script.refused(nested), Rejection::InvalidAtomicGroup);
    assert_eq!(script.refused(CommandKind::Atomic(vec![CommandKind::ExpireHolds])), Rejection::InvalidAtomicGroup);
    let too_many = CommandKind::Atomic(vec![credit("alice", 1); wallex_engine::MAX_ATOMIC_LEGS + 1]);
    assert_eq!(script.refused(too_many), Rejection::InvalidAtomicGroup);
    let largest = CommandKind::Atomic(vec![credit("alice", 1); wallex_engine::MAX_ATOMIC_LEGS]);
    assert_eq!(script.ok(largest).len(), wallex_engine::MAX_ATOMIC_LEGS);

    let memo = wallex_engine::Memo {
        reference: Some(wallex_engine::Reference::parse("order-7").unwrap()),
        ..wallex_engine::Memo::default()
    };
    let mut ledger = script.ledger().clone();
    let now = at(script.now + 1);
    let first = Command { id: CommandId(1_001), kind: debit("bob", 1), memo: memo.clone() };
    assert_eq!(ledger.execute(now, &first, &mut Vec::new()).result(), Err(Rejection::InsufficientFunds));
    let paid = Command { id: CommandId(1_002), kind: credit("bob", 1), memo: memo.clone() };
    assert!(ledger.execute(now, &paid, &mut Vec::new()).result().is_ok());
    let before = ledger.clone();
    // The group's second leg touches bob, whose transactions already used the reference.
    let group = Command {
        id: CommandId(1_003),
        kind: CommandKind::Atomic(vec![create("dave", Currency::USD, 0, 0), transfer("alice", "bob", 5)]),
        memo: memo.clone(),
    };
    let mut events = Vec::new();
    assert_eq!(ledger.execute(now, &group, &mut events).result(), Err(Rejection::ReferenceExists));
    assert!(events.is_empty());
    assert_eq!(ledger.wallets(), before.wallets(), "dave was never created");
    assert_eq!(ledger.command(&CommandId(1_003), now).unwrap().refused_leg, None, "refused as a whole");
    // Without bob, the group goes through and its reference then covers dave and alice.
    let group = Command {
        id: CommandId(1_004),
        kind: CommandKind::Atomic(vec![create("dave", Currency::USD, 0, 0), transfer("alice", "dave", 5)]),
        memo: memo.clone(),
    };
    assert!(ledger.execute(now, &group, &mut events).result().is_ok());
    assert!(events.iter().all(|event| event.memo == memo));
    assert_eq!(ledger.wallet(&wallet("dave")).unwrap().memo.as_deref(), Some(&memo));
    let again = Command { id: CommandId(1_005), kind: credit("dave", 1), memo };
    assert_eq!(ledger.execute(now, &again, &mut Vec::new()).result(), Err(Rejection::ReferenceExists));
    ledger.check_invariants().unwrap();
}

#[test]
fn a_groups_fingerprint_is_its_legs_in_order() {
    let one = CommandKind::Atomic(vec![credit("a", 1), debit("a", 1)]);
    let swapped = CommandKind::Atomic(vec![debit("a", 1), credit("a", 1)]);
    assert_eq!(one.fingerprint(), CommandKind::Atomic(vec![credit("a", 1), debit("a", 1)]).fingerprint());
    assert_ne!(one.fingerprint(), swapped.fingerprint());
    assert_ne!(CommandKind::Atomic(vec![credit("a", 1)]).fingerprint(), credit("a", 1).fingerprint());
}
