//! A small vocabulary for describing command sequences over colliding pools of wallets and holds,
//! shared by the property tests, the fuzzer and the simulator's workload.
//!
//! A [`Draft`] names wallets and holds by pool index and leaves ids and time open; [`Draft::command`]
//! fills them in at the moment the command is sent. [`run`] plays a sequence of [`Step`]s through the
//! [`Harness`], checking every step against the auditor, then replay and snapshots.

use std::collections::BTreeSet;

use crate::auditor::Harness;
use crate::{
    Amount, Command, CommandId, CommandKind, Config, Currency, Description, HoldId, Outcome, OwnerId, Timestamp,
    WalletId,
};

pub const WALLETS: usize = 6;
pub const HOLDS: usize = 6;
/// The currency each wallet is usually created in: four USD wallets so transfers mostly match.
pub const HOME: [Currency; WALLETS] =
    [Currency::USD, Currency::USD, Currency::USD, Currency::USD, Currency::JPY, Currency::KWD];
pub const CURRENCIES: [Currency; 3] = [Currency::USD, Currency::JPY, Currency::KWD];

/// A command before ids and time are known; `expiry_offset` is relative to the step's `now`.
#[derive(Clone, Debug)]
pub enum Draft {
    Create {
        wallet: usize,
        currency: Option<usize>,
        initial: u64,
        overdraft: u64,
    },
    Credit {
        wallet: usize,
        currency: Option<usize>,
        amount: u64,
        described: bool,
    },
    Debit {
        wallet: usize,
        currency: Option<usize>,
        amount: u64,
    },
    Transfer {
        source: usize,
        destination: usize,
        currency: Option<usize>,
        amount: u64,
    },
    PlaceHold {
        hold: usize,
        wallet: usize,
        currency: Option<usize>,
        amount: u64,
        expiry_offset: Option<i64>,
    },
    Capture {
        hold: usize,
        amount: Option<u64>,
        destination: Option<usize>,
    },
    Void {
        hold: usize,
    },
    ExpireHolds,
    /// An atomic group of these legs (a leg that is itself a group or `ExpireHolds` makes the
    /// group invalid, which is worth sending too).
    Atomic(Vec<Draft>),
}

#[derive(Clone, Debug)]
pub enum Step {
    /// A new command under a fresh id.
    Fresh(Draft),
    /// Sends an earlier command again, same id and content (a client retry); the number picks which,
    /// modulo how many were sent.
    Retry(usize),
    /// Sends other content under an earlier command's id.
    Reuse(usize, Draft),
    /// A new command under a fresh id, carrying reference `ref-N` (and metadata naming it), so
    /// that references repeat across wallets and transactions.
    Referenced(Draft, usize),
}

pub fn wallet_id(index: usize) -> WalletId {
    WalletId::parse(&format!("w{index}")).unwrap()
}

pub fn hold_id(index: usize) -> HoldId {
    HoldId::parse(&format!("h{index}")).unwrap()
}

impl Draft {
    /// The command this draft describes when sent at `now` (hold expiries are relative to it).
    pub fn command(&self, now: u64) -> CommandKind {
        let pick = |wallet: usize, currency: Option<usize>| currency.map_or(HOME[wallet], |index| CURRENCIES[index]);
        let money = |minor: u64| Amount::from_minor(minor).unwrap();
        match *self {
            Draft::Atomic(ref legs) => CommandKind::Atomic(legs.iter().map(|leg| leg.command(now)).collect()),
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
}

/// What a run of steps did, so tests can tell a vacuous run from a real one.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Commands accepted (new and successful).
    pub accepted: usize,
    /// Every outcome seen: a command name for an accepted command, else a rejection code (and
    /// `atomic_leg_refused` when a group was refused for one of its legs).
    pub outcomes: BTreeSet<&'static str>,
}

/// Plays `steps` (each with the clock's move before it, in microseconds) through a [`Harness`],
/// then checks replay and snapshots. Returns the first disagreement as text.
pub fn run(config: Config, steps: &[(i64, Step)]) -> Result<Summary, String> {
    let mut harness = Harness::new(config);
    let mut sent: Vec<Command> = Vec::new();
    let mut now: u64 = 1_000;
    let mut summary = Summary::default();
    for (index, (tick, step)) in steps.iter().enumerate() {
        now = now.saturating_add_signed(*tick);
        let command = match step {
            Step::Fresh(draft) => Command::new(CommandId(index as u128 + 1), draft.command(now)),
            Step::Retry(earlier) if !sent.is_empty() => sent[earlier % sent.len()].clone(),
            Step::Reuse(earlier, draft) if !sent.is_empty() => {
                Command::new(sent[earlier % sent.len()].id, draft.command(now))
            }
            Step::Referenced(draft, reference) => Command {
                id: CommandId(index as u128 + 1),
                kind: draft.command(now),
                memo: crate::Memo {
                    reference: Some(crate::Reference::parse(&format!("ref-{reference}")).unwrap()),
                    metadata: crate::Metadata::parse([("n", reference.to_string().as_str())]).unwrap(),
                    correlation_id: None,
                },
            },
            Step::Retry(_) | Step::Reuse(..) => continue,
        };
        let outcome = harness.step(Timestamp::from_unix_micros(now), &command)?;
        match outcome.result() {
            Ok(_) if matches!(outcome, Outcome::Recorded(_)) => {
                summary.accepted += 1;
                summary.outcomes.insert(command.kind.name());
            }
            Ok(_) => {}
            Err(rejection) => {
                summary.outcomes.insert(rejection.code());
                if let Outcome::Recorded(record) = &outcome
                    && record.refused_leg.is_some()
                {
                    summary.outcomes.insert("atomic_leg_refused");
                }
            }
        }
        sent.push(command);
    }
    harness.check_replay()?;
    harness.check_snapshot()?;
    Ok(summary)
}
