//! State-machine property tests: random command sequences against the independent auditor.
//!
//! Each case draws 50 to 150 commands over a small pool of wallets and holds (so they collide and
//! interact), three currencies with scales 2, 0 and 3, amounts from zero to the maximum, a clock that
//! ticks, stalls, jumps back and leaps forward (so holds lapse and command ids are forgotten), and
//! repeated command ids with the same or different content. After every step the harness checks the
//! outcome against the auditor, the full state against the auditor's, the events' form and every
//! invariant; after the sequence, replaying the journal and a snapshot round trip (whole, and half
//! snapshot plus half journal) must reproduce the ledger exactly.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use wallex_engine::auditor::Harness;
use wallex_engine::{
    Amount, Command, CommandId, CommandKind, Config, Currency, Description, HoldId, OwnerId, Timestamp, WalletId,
};

const WALLETS: usize = 6;
const HOLDS: usize = 6;
/// The currency each wallet is usually created in: four USD wallets so transfers mostly match.
const HOME: [Currency; WALLETS] = [Currency::USD, Currency::USD, Currency::USD, Currency::USD, Currency::JPY, Currency::KWD];
const CURRENCIES: [Currency; 3] = [Currency::USD, Currency::JPY, Currency::KWD];

/// A command before ids and time are known; `expiry_offset` is relative to the step's `now`.
#[derive(Clone, Debug)]
enum Draft {
    Create { wallet: usize, currency: Option<usize>, initial: u64, overdraft: u64 },
    Credit { wallet: usize, currency: Option<usize>, amount: u64, described: bool },
    Debit { wallet: usize, currency: Option<usize>, amount: u64 },
    Transfer { source: usize, destination: usize, currency: Option<usize>, amount: u64 },
    PlaceHold { hold: usize, wallet: usize, currency: Option<usize>, amount: u64, expiry_offset: Option<i64> },
    Capture { hold: usize, amount: Option<u64>, destination: Option<usize> },
    Void { hold: usize },
    ExpireHolds,
}

#[derive(Clone, Debug)]
enum Step {
    /// A new command under a fresh id.
    Fresh(Draft),
    /// Sends an earlier command again, same id and content (a client retry).
    Retry(prop::sample::Index),
    /// Sends other content under an earlier command's id.
    Reuse(prop::sample::Index, Draft),
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        10 => 1u64..=200,
        4 => 200u64..=5_000,
        1 => Just(Amount::MAX_MINOR),
    ]
}

fn currency() -> impl Strategy<Value = Option<usize>> {
    // Mostly the wallet's own currency (None), sometimes an explicit, possibly wrong one.
    prop_oneof![8 => Just(None), 1 => (0..CURRENCIES.len()).prop_map(Some)]
}

fn draft() -> impl Strategy<Value = Draft> {
    let wallet = 0..WALLETS;
    let hold = 0..HOLDS;
    prop_oneof![
        2 => (wallet.clone(), currency(), amount(), prop_oneof![3 => Just(0u64), 1 => amount()])
            .prop_map(|(wallet, currency, initial, overdraft)| Draft::Create { wallet, currency, initial, overdraft }),
        4 => (wallet.clone(), currency(), amount(), any::<bool>())
            .prop_map(|(wallet, currency, amount, described)| Draft::Credit { wallet, currency, amount, described }),
        4 => (wallet.clone(), currency(), amount())
            .prop_map(|(wallet, currency, amount)| Draft::Debit { wallet, currency, amount }),
        5 => (wallet.clone(), wallet.clone(), currency(), amount())
            .prop_map(|(source, destination, currency, amount)| Draft::Transfer { source, destination, currency, amount }),
        3 => (hold.clone(), wallet.clone(), currency(), amount(), prop::option::weighted(0.6, -20i64..200))
            .prop_map(|(hold, wallet, currency, amount, expiry_offset)| {
                Draft::PlaceHold { hold, wallet, currency, amount, expiry_offset }
            }),
        2 => (hold.clone(), prop::option::weighted(0.5, amount()), prop::option::weighted(0.5, wallet))
            .prop_map(|(hold, amount, destination)| Draft::Capture { hold, amount, destination }),
        1 => hold.prop_map(|hold| Draft::Void { hold }),
        1 => Just(Draft::ExpireHolds),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => draft().prop_map(Step::Fresh),
        2 => any::<prop::sample::Index>().prop_map(Step::Retry),
        1 => (any::<prop::sample::Index>(), draft()).prop_map(|(index, draft)| Step::Reuse(index, draft)),
    ]
}

/// How the clock moves before a step, in microseconds.
fn tick() -> impl Strategy<Value = i64> {
    prop_oneof![
        10 => 0i64..=20,
        2 => Just(0i64),
        1 => -60i64..0,
        1 => 200i64..=2_000,
    ]
}

fn retention() -> impl Strategy<Value = Config> {
    prop_oneof![
        Just(Config::default()),
        Just(Config { command_retention_micros: 300 }),
        Just(Config { command_retention_micros: 1_500 }),
    ]
}

fn wallet_id(index: usize) -> WalletId {
    WalletId::parse(&format!("w{index}")).unwrap()
}

fn hold_id(index: usize) -> HoldId {
    HoldId::parse(&format!("h{index}")).unwrap()
}

fn materialize(draft: &Draft, now: u64) -> CommandKind {
    let pick = |wallet: usize, currency: Option<usize>| currency.map_or(HOME[wallet], |index| CURRENCIES[index]);
    let money = |minor: u64| Amount::from_minor(minor).unwrap();
    match *draft {
        Draft::Create { wallet, currency, initial, overdraft } => CommandKind::CreateWallet {
            wallet_id: wallet_id(wallet),
            owner_id: OwnerId::parse(&format!("owner-{}", wallet % 2)).unwrap(),
            currency: pick(wallet, currency),
            initial_balance: money(initial),
            overdraft_limit: money(overdraft),
        },
        Draft::Credit { wallet, currency, amount, described } => CommandKind::Credit {
            wallet_id: wallet_id(wallet),
            currency: pick(wallet, currency),
            amount: money(amount),
            description: described.then(|| Description::parse("top-up").unwrap()),
        },
        Draft::Debit { wallet, currency, amount } => CommandKind::Debit {
            wallet_id: wallet_id(wallet),
            currency: pick(wallet, currency),
            amount: money(amount),
            description: None,
        },
        Draft::Transfer { source, destination, currency, amount } => CommandKind::Transfer {
            source: wallet_id(source),
            destination: wallet_id(destination),
            currency: pick(source, currency),
            amount: money(amount),
            description: None,
        },
        Draft::PlaceHold { hold, wallet, currency, amount, expiry_offset } => CommandKind::PlaceHold {
            hold_id: hold_id(hold),
            wallet_id: wallet_id(wallet),
            currency: pick(wallet, currency),
            amount: money(amount),
            expires_at: expiry_offset.map(|offset| Timestamp::from_unix_micros(now.saturating_add_signed(offset))),
            description: None,
        },
        Draft::Capture { hold, amount, destination } => CommandKind::CaptureHold {
            hold_id: hold_id(hold),
            amount: amount.map(money),
            destination: destination.map(wallet_id),
            description: None,
        },
        Draft::Void { hold } => CommandKind::VoidHold { hold_id: hold_id(hold) },
        Draft::ExpireHolds => CommandKind::ExpireHolds,
    }
}

/// Runs one sequence and returns how many commands were accepted (so the test can see it is not
/// vacuous), or the first disagreement.
fn run(config: Config, steps: &[(i64, Step)]) -> Result<usize, String> {
    let mut harness = Harness::new(config);
    let mut sent: Vec<Command> = Vec::new();
    let mut now: u64 = 1_000;
    let mut accepted = 0;
    for (index, (tick, step)) in steps.iter().enumerate() {
        now = now.saturating_add_signed(*tick);
        let command = match step {
            Step::Fresh(draft) => Command { id: CommandId(index as u128 + 1), kind: materialize(draft, now) },
            Step::Retry(earlier) if !sent.is_empty() => sent[earlier.index(sent.len())].clone(),
            Step::Reuse(earlier, draft) if !sent.is_empty() => {
                Command { id: sent[earlier.index(sent.len())].id, kind: materialize(draft, now) }
            }
            Step::Retry(_) | Step::Reuse(..) => continue,
        };
        let outcome = harness.step(Timestamp::from_unix_micros(now), &command)?;
        if matches!(outcome, wallex_engine::Outcome::Recorded(record) if record.result.is_ok()) {
            accepted += 1;
        }
        sent.push(command);
    }
    harness.check_replay()?;
    harness.check_snapshot()?;
    Ok(accepted)
}

/// 1,000 cases; failing seeds are kept in `engine/proptest-regressions/` (committed) and rerun first.
fn runner_config() -> ProptestConfig {
    ProptestConfig {
        cases: 1_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/properties.txt"))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(runner_config())]

    #[test]
    fn engine_agrees_with_the_auditor_on_every_step(
        config in retention(),
        steps in prop::collection::vec((tick(), step()), 50..150),
    ) {
        let creates = steps.iter().any(|(_, step)| matches!(step, Step::Fresh(Draft::Create { .. })));
        let accepted = run(config, &steps).map_err(TestCaseError::fail)?;
        // The first creation of a wallet always succeeds, so a sequence with one cannot be all refusals.
        prop_assert!(accepted > 0 || !creates);
    }
}

/// The generator must actually reach the interesting corners, or the property above proves little:
/// across a fixed sample of cases, every rejection code and every accepted command type occurs.
#[test]
fn the_generator_reaches_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
    use std::collections::BTreeSet;

    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(RunnerConfig::default(), rng);
    let strategy = (retention(), prop::collection::vec((tick(), step()), 50..150));
    let mut outcomes = BTreeSet::new();
    for _ in 0..400 {
        let (config, steps) = strategy.new_tree(&mut runner).unwrap().current();
        let mut harness = Harness::new(config);
        let mut now = 1_000u64;
        for (index, (tick, step)) in steps.iter().enumerate() {
            now = now.saturating_add_signed(*tick);
            let Step::Fresh(draft) = step else { continue };
            let command = Command { id: CommandId(index as u128 + 1), kind: materialize(draft, now) };
            let outcome = harness.step(Timestamp::from_unix_micros(now), &command).unwrap();
            outcomes.insert(match outcome.result() {
                Ok(_) => command.kind.name().to_owned(),
                Err(rejection) => rejection.code().to_owned(),
            });
        }
    }
    for expected in wallex_engine::Rejection::ALL.iter().map(|rejection| rejection.code()).chain([
        "create_wallet",
        "credit",
        "debit",
        "transfer",
        "place_hold",
        "capture_hold",
        "void_hold",
        "expire_holds",
    ]) {
        // `idempotency_key_reused` comes only from `Step::Reuse`, which this census skips, and the
        // balance limit needs thousands of maximal credits; both have their own unit tests.
        if expected == "idempotency_key_reused" || expected == "balance_limit_exceeded" {
            continue;
        }
        assert!(outcomes.contains(expected), "the generator never produced {expected}; saw {outcomes:?}");
    }
}
