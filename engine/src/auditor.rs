//! An independent model of the ledger, small enough to be obviously right, that predicts every
//! outcome; and a harness that runs the engine beside it and reports the first disagreement.
//!
//! The auditor shares only the public command and rejection types with the engine. It keeps plain
//! strings, `i128` balances and `BTreeMap`s, remembers whole commands instead of fingerprints, scans
//! instead of indexing, and restates the rejection precedence from the documentation on
//! [`Rejection`]. Property tests, the fuzzer and the simulator all compare the engine against it.

use std::collections::{BTreeMap, BTreeSet};

use crate::ledger::{CommandRecord, Ledger, MAX_BALANCE_MINOR, MAX_EXPIRIES_PER_COMMAND, Outcome};
use crate::{Command, CommandKind, Config, Currency, Event, MAX_ATOMIC_LEGS, Rejection, Timestamp};

/// A decision as the auditor states it: the transaction, or the rejection with the refused leg of
/// an atomic group (`None` for any other command, and for a group refused as a whole).
pub type Verdict = Result<u64, (Rejection, Option<u16>)>;

/// A record's decision, in the auditor's terms.
pub fn verdict(record: &CommandRecord) -> Verdict {
    record.outcome().map(|transaction| transaction.0).map_err(|rejection| (rejection, record.refused_leg))
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelWallet {
    owner: String,
    currency: Currency,
    balance: i128,
    held: i128,
    floor: i128,
    version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ModelHoldState {
    Active,
    Finished { expired: bool },
}

#[derive(Clone, Debug)]
struct ModelHold {
    wallet: String,
    amount: i128,
    expires_at: Option<u64>,
    state: ModelHoldState,
}

#[derive(Clone, Debug)]
struct Seen {
    kind: CommandKind,
    /// The reference and metadata, which are content too (the correlation id is not).
    attached: (Option<String>, Vec<(String, String)>),
    at: u64,
    result: Verdict,
}

/// What the auditor expects `Ledger::execute` to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// A new command with this result (transaction id or rejection).
    New(Verdict),
    /// A retry of a remembered command: the original result.
    Duplicate(Verdict),
    /// A remembered id with other content.
    KeyReused,
}

impl Expected {
    fn of(outcome: &Outcome) -> Expected {
        match outcome {
            Outcome::Recorded(record) => Expected::New(verdict(record)),
            Outcome::Duplicate(record) => Expected::Duplicate(verdict(record)),
            Outcome::KeyReused { .. } => Expected::KeyReused,
        }
    }
}

/// The model.
#[derive(Clone, Debug, Default)]
pub struct Auditor {
    retention_micros: u64,
    /// The quotas: wallets, and active holds, per owner.
    max_wallets: u64,
    max_holds: u64,
    clock: u64,
    transactions: u64,
    wallets: BTreeMap<String, ModelWallet>,
    holds: BTreeMap<String, ModelHold>,
    seen: BTreeMap<u128, Seen>,
    world: BTreeMap<Currency, i128>,
    /// Every (wallet, reference) a transaction has used.
    references: BTreeSet<(String, String)>,
}

impl Auditor {
    pub fn new(config: Config) -> Auditor {
        Auditor {
            retention_micros: config.command_retention_micros,
            max_wallets: config.max_wallets_per_owner,
            max_holds: config.max_active_holds_per_owner,
            ..Auditor::default()
        }
    }

    /// Predicts the outcome of `command` at `now` and applies its effect to the model.
    pub fn execute(&mut self, now: Timestamp, command: &Command) -> Expected {
        let now = now.unix_micros().max(self.clock);
        let retention = self.retention_micros;
        let remembered = |seen: &Seen| seen.at.saturating_add(retention) > now;
        let attached = (
            command.memo.reference.as_ref().map(|reference| reference.as_str().to_owned()),
            command.memo.metadata.iter().map(|(key, value)| (key.to_owned(), value.to_owned())).collect::<Vec<_>>(),
        );
        if let Some(seen) = self.seen.get(&command.id.0).filter(|seen| remembered(seen)) {
            return if seen.kind == command.kind && seen.attached == attached {
                Expected::Duplicate(seen.result)
            } else {
                Expected::KeyReused
            };
        }
        self.clock = now;
        self.seen.retain(|_, seen| remembered(seen));
        self.transactions += 1;
        let transaction = self.transactions;
        let result = match &attached.0 {
            None => self.decide_command(now, &command.kind),
            Some(reference) => self.decide_with_reference(now, &command.kind, reference),
        };
        let result = result.map(|()| transaction);
        self.seen.insert(command.id.0, Seen { kind: command.kind.clone(), attached, at: now, result });
        Expected::New(result)
    }

    /// Decides on a copy of the model; the wallets whose versions moved are the ones the command
    /// touched, and if any of them has used `reference`, nothing happened: `reference_exists`.
    fn decide_with_reference(
        &mut self,
        now: u64,
        kind: &CommandKind,
        reference: &str,
    ) -> Result<(), (Rejection, Option<u16>)> {
        let before = self.clone();
        self.decide_command(now, kind)?;
        let touched: Vec<String> = self
            .wallets
            .iter()
            .filter(|(id, wallet)| before.wallets.get(*id).is_none_or(|old| old.version != wallet.version))
            .map(|(id, _)| id.clone())
            .collect();
        if touched.iter().any(|id| self.references.contains(&(id.clone(), reference.to_owned()))) {
            *self = before;
            return Err((Rejection::ReferenceExists, None));
        }
        for id in touched {
            self.references.insert((id, reference.to_owned()));
        }
        Ok(())
    }

    /// A command, or an atomic group: its legs in order on the model, and if one is refused, the
    /// model as it was before the group.
    fn decide_command(&mut self, now: u64, kind: &CommandKind) -> Result<(), (Rejection, Option<u16>)> {
        let CommandKind::Atomic(legs) = kind else {
            return self.decide(now, kind).map_err(|rejection| (rejection, None));
        };
        if legs.is_empty()
            || legs.len() > MAX_ATOMIC_LEGS
            || legs.iter().any(|leg| matches!(leg, CommandKind::Atomic(_) | CommandKind::ExpireHolds))
        {
            return Err((Rejection::InvalidAtomicGroup, None));
        }
        let before = self.clone();
        for (index, leg) in legs.iter().enumerate() {
            if let Err(rejection) = self.decide(now, leg) {
                *self = before;
                return Err((rejection, Some(u16::try_from(index).expect("legs fit u16"))));
            }
        }
        Ok(())
    }

    fn decide(&mut self, now: u64, kind: &CommandKind) -> Result<(), Rejection> {
        match kind {
            CommandKind::CreateWallet { wallet_id, owner_id, currency, initial_balance, overdraft_limit } => {
                if self.wallets.contains_key(wallet_id.as_str()) {
                    return Err(Rejection::WalletExists);
                }
                let owned = self.wallets.values().filter(|wallet| wallet.owner == owner_id.as_str()).count();
                if owned as u64 >= self.max_wallets {
                    return Err(Rejection::QuotaExceeded);
                }
                let initial = i128::from(initial_balance.minor());
                let wallet = ModelWallet {
                    owner: owner_id.to_string(),
                    currency: *currency,
                    balance: initial,
                    held: 0,
                    floor: -i128::from(overdraft_limit.minor()),
                    version: 1,
                };
                self.wallets.insert(wallet_id.to_string(), wallet);
                *self.world.entry(*currency).or_default() -= initial;
                Ok(())
            }
            CommandKind::Credit { wallet_id, currency, amount, .. } => {
                let amount = i128::from(amount.minor());
                if amount == 0 {
                    return Err(Rejection::InvalidAmount);
                }
                let wallet = self.wallets.get(wallet_id.as_str()).ok_or(Rejection::WalletNotFound)?;
                if wallet.currency != *currency {
                    return Err(Rejection::CurrencyMismatch);
                }
                if wallet.balance + amount > i128::from(MAX_BALANCE_MINOR) {
                    return Err(Rejection::BalanceLimitExceeded);
                }
                self.move_money(None, Some(wallet_id.as_str()), *currency, amount);
                Ok(())
            }
            CommandKind::Debit { wallet_id, currency, amount, .. } => {
                let amount = i128::from(amount.minor());
                if amount == 0 {
                    return Err(Rejection::InvalidAmount);
                }
                let wallet = self.wallets.get(wallet_id.as_str()).ok_or(Rejection::WalletNotFound)?;
                if wallet.currency != *currency {
                    return Err(Rejection::CurrencyMismatch);
                }
                if wallet.balance - wallet.held - amount < wallet.floor {
                    return Err(Rejection::InsufficientFunds);
                }
                self.move_money(Some(wallet_id.as_str()), None, *currency, amount);
                Ok(())
            }
            CommandKind::Transfer { source, destination, currency, amount, .. } => {
                let amount = i128::from(amount.minor());
                if amount == 0 {
                    return Err(Rejection::InvalidAmount);
                }
                if source == destination {
                    return Err(Rejection::SameWalletTransfer);
                }
                let from = self.wallets.get(source.as_str()).ok_or(Rejection::WalletNotFound)?;
                let to = self.wallets.get(destination.as_str()).ok_or(Rejection::DestinationWalletNotFound)?;
                if from.currency != *currency || to.currency != *currency {
                    return Err(Rejection::CurrencyMismatch);
                }
                if from.balance - from.held - amount < from.floor {
                    return Err(Rejection::InsufficientFunds);
                }
                if to.balance + amount > i128::from(MAX_BALANCE_MINOR) {
                    return Err(Rejection::BalanceLimitExceeded);
                }
                self.move_money(Some(source.as_str()), Some(destination.as_str()), *currency, amount);
                Ok(())
            }
            CommandKind::PlaceHold { hold_id, wallet_id, currency, amount, expires_at, .. } => {
                let amount = i128::from(amount.minor());
                if amount == 0 {
                    return Err(Rejection::InvalidAmount);
                }
                if self.holds.contains_key(hold_id.as_str()) {
                    return Err(Rejection::HoldExists);
                }
                let wallet = self.wallets.get(wallet_id.as_str()).ok_or(Rejection::WalletNotFound)?;
                if wallet.currency != *currency {
                    return Err(Rejection::CurrencyMismatch);
                }
                let expires_at = expires_at.map(Timestamp::unix_micros);
                if expires_at.is_some_and(|expires_at| expires_at <= now) {
                    return Err(Rejection::InvalidExpiry);
                }
                if wallet.balance - wallet.held - amount < wallet.floor {
                    return Err(Rejection::InsufficientFunds);
                }
                let owner = wallet.owner.clone();
                let active = self
                    .holds
                    .values()
                    .filter(|hold| hold.state == ModelHoldState::Active && self.wallets[&hold.wallet].owner == owner)
                    .count();
                if active as u64 >= self.max_holds {
                    return Err(Rejection::QuotaExceeded);
                }
                let wallet = self.wallets.get_mut(wallet_id.as_str()).expect("found above");
                wallet.held += amount;
                wallet.version += 1;
                let hold =
                    ModelHold { wallet: wallet_id.to_string(), amount, expires_at, state: ModelHoldState::Active };
                self.holds.insert(hold_id.to_string(), hold);
                Ok(())
            }
            CommandKind::CaptureHold { hold_id, amount, destination, .. } => {
                if amount.is_some_and(|amount| amount.is_zero()) {
                    return Err(Rejection::InvalidAmount);
                }
                let hold = self.holds.get(hold_id.as_str()).ok_or(Rejection::HoldNotFound)?.clone();
                let currency = self.wallets[&hold.wallet].currency;
                if let Some(destination) = destination {
                    let to = self.wallets.get(destination.as_str()).ok_or(Rejection::DestinationWalletNotFound)?;
                    if destination.as_str() == hold.wallet {
                        return Err(Rejection::SameWalletTransfer);
                    }
                    if to.currency != currency {
                        return Err(Rejection::CurrencyMismatch);
                    }
                }
                Auditor::still_active(&hold, now)?;
                let captured = amount.map_or(hold.amount, |amount| i128::from(amount.minor()));
                if captured > hold.amount {
                    return Err(Rejection::CaptureExceedsHold);
                }
                if let Some(destination) = destination
                    && self.wallets[destination.as_str()].balance + captured > i128::from(MAX_BALANCE_MINOR)
                {
                    return Err(Rejection::BalanceLimitExceeded);
                }
                // One event on the hold's wallet: the reservation ends and the captured part leaves.
                self.holds.get_mut(hold_id.as_str()).expect("found above").state =
                    ModelHoldState::Finished { expired: false };
                let from = self.wallets.get_mut(&hold.wallet).expect("hold's wallet");
                from.held -= hold.amount;
                from.balance -= captured;
                from.version += 1;
                match destination {
                    Some(destination) => {
                        let to = self.wallets.get_mut(destination.as_str()).expect("found above");
                        to.balance += captured;
                        to.version += 1;
                    }
                    None => *self.world.entry(currency).or_default() += captured,
                }
                Ok(())
            }
            CommandKind::VoidHold { hold_id } => {
                let hold = self.holds.get(hold_id.as_str()).ok_or(Rejection::HoldNotFound)?;
                Auditor::still_active(hold, now)?;
                self.release(hold_id.as_str(), false);
                Ok(())
            }
            CommandKind::ExpireHolds => {
                let mut due: Vec<(u64, String)> = self
                    .holds
                    .iter()
                    .filter(|(_, hold)| hold.state == ModelHoldState::Active)
                    .filter_map(|(id, hold)| hold.expires_at.filter(|at| *at <= now).map(|at| (at, id.clone())))
                    .collect();
                due.sort();
                for (_, hold_id) in due.into_iter().take(MAX_EXPIRIES_PER_COMMAND) {
                    self.release(&hold_id, true);
                }
                Ok(())
            }
            CommandKind::Atomic(_) => Err(Rejection::InvalidAtomicGroup),
        }
    }

    fn still_active(hold: &ModelHold, now: u64) -> Result<(), Rejection> {
        match hold.state {
            ModelHoldState::Finished { expired: false } => Err(Rejection::HoldNotActive),
            ModelHoldState::Finished { expired: true } => Err(Rejection::HoldExpired),
            ModelHoldState::Active if hold.expires_at.is_some_and(|at| at <= now) => Err(Rejection::HoldExpired),
            ModelHoldState::Active => Ok(()),
        }
    }

    /// Ends a hold: its wallet gets the reservation back, in one new event.
    fn release(&mut self, hold_id: &str, expired: bool) {
        let hold = self.holds.get_mut(hold_id).expect("released holds exist");
        hold.state = ModelHoldState::Finished { expired };
        let wallet = self.wallets.get_mut(&hold.wallet).expect("hold's wallet");
        wallet.held -= hold.amount;
        wallet.version += 1;
    }

    /// Moves money between two wallets, or between a wallet and the world (`None`): one new event on
    /// each wallet involved.
    fn move_money(&mut self, from: Option<&str>, to: Option<&str>, currency: Currency, amount: i128) {
        match from {
            Some(from) => {
                let wallet = self.wallets.get_mut(from).expect("source exists");
                wallet.balance -= amount;
                wallet.version += 1;
            }
            None => *self.world.entry(currency).or_default() -= amount,
        }
        match to {
            Some(to) => {
                let wallet = self.wallets.get_mut(to).expect("destination exists");
                wallet.balance += amount;
                wallet.version += 1;
            }
            None => *self.world.entry(currency).or_default() += amount,
        }
    }

    /// The model's wallet `id`: (currency, balance, held, floor, version). For checkers that hold
    /// a read side against the model rather than against the engine's own events.
    pub fn wallet(&self, id: &str) -> Option<(Currency, i128, i128, i128, u64)> {
        self.wallets.get(id).map(|wallet| (wallet.currency, wallet.balance, wallet.held, wallet.floor, wallet.version))
    }

    /// The model's balance of the currency's system account (`@world`).
    pub fn world_balance(&self, currency: Currency) -> i128 {
        self.world.get(&currency).copied().unwrap_or(0)
    }

    /// Compares every wallet, system account and hold state of `ledger` with the model.
    pub fn compare(&self, ledger: &Ledger) -> Result<(), String> {
        if ledger.wallets().len() != self.wallets.len() {
            return Err(format!("{} wallets, the auditor has {}", ledger.wallets().len(), self.wallets.len()));
        }
        for wallet in ledger.wallets() {
            let Some(model) = self.wallets.get(wallet.id.as_str()) else {
                return Err(format!("wallet {} is unknown to the auditor", wallet.id));
            };
            let actual =
                (wallet.currency, i128::from(wallet.balance), i128::from(wallet.held), wallet.floor(), wallet.version);
            let expected = (model.currency, model.balance, model.held, model.floor, model.version);
            if actual != expected {
                return Err(format!(
                    "wallet {}: engine (currency, balance, held, floor, version) = {actual:?}, auditor {expected:?}",
                    wallet.id
                ));
            }
        }
        for currency in Currency::ALL {
            let expected = self.world.get(currency).copied().unwrap_or(0);
            if ledger.world_balance(*currency) != expected {
                return Err(format!(
                    "@world:{currency} is {}, the auditor has {expected}",
                    ledger.world_balance(*currency)
                ));
            }
        }
        let holds: Vec<_> = ledger.holds().collect();
        if holds.len() != self.holds.len() {
            return Err(format!("{} holds, the auditor has {}", holds.len(), self.holds.len()));
        }
        for hold in holds {
            let model = &self.holds.get(hold.id.as_str()).ok_or(format!("hold {} is unknown", hold.id))?;
            let active = hold.status == crate::HoldStatus::Active;
            if active != (model.state == ModelHoldState::Active) || i128::from(hold.amount.minor()) != model.amount {
                return Err(format!("hold {}: engine {hold:?}, auditor {model:?}", hold.id));
            }
        }
        Ok(())
    }
}

/// The engine and the auditor side by side, with the journal the engine produced.
#[derive(Debug)]
pub struct Harness {
    pub ledger: Ledger,
    pub auditor: Auditor,
    /// Every recorded command with its events, in transaction order: what a store would persist.
    pub journal: Vec<(CommandRecord, Vec<Event>)>,
}

impl Harness {
    pub fn new(config: Config) -> Harness {
        Harness { ledger: Ledger::new(config), auditor: Auditor::new(config), journal: Vec::new() }
    }

    /// Runs one command through both, and checks that they agree on the outcome and on the state
    /// afterwards, that the events are well formed, and that every invariant holds.
    pub fn step(&mut self, now: Timestamp, command: &Command) -> Result<Outcome, String> {
        let mut events = Vec::new();
        let outcome = self.ledger.execute(now, command, &mut events);
        let expected = self.auditor.execute(now, command);
        let context = |what: String| format!("{} {} at {}: {what}", command.kind.name(), command.id, now.unix_micros());
        if Expected::of(&outcome) != expected {
            return Err(context(format!("engine answered {outcome:?}, the auditor expected {expected:?}")));
        }
        match outcome {
            Outcome::Recorded(record) => {
                check_events(&record, &events).map_err(context)?;
                self.journal.push((record, events));
            }
            Outcome::Duplicate(_) | Outcome::KeyReused { .. } if !events.is_empty() => {
                return Err(context("a command with no effect emitted events".to_owned()));
            }
            Outcome::Duplicate(_) | Outcome::KeyReused { .. } => {}
        }
        self.ledger.check_invariants().map_err(|violation| context(violation.to_string()))?;
        self.auditor.compare(&self.ledger).map_err(context)?;
        Ok(outcome)
    }

    /// Replays the journal into a fresh ledger and checks it equals the live one.
    pub fn check_replay(&self) -> Result<(), String> {
        let mut replayed = Ledger::new(self.ledger.config());
        for (record, events) in &self.journal {
            replayed.replay(record, events).map_err(|error| error.to_string())?;
        }
        if replayed != self.ledger {
            return Err("replaying the journal does not reproduce the ledger".to_owned());
        }
        Ok(())
    }

    /// Encodes a snapshot, restores it, and checks the result equals the live ledger; then checks
    /// that the second half of the journal replays onto a snapshot of the first half.
    pub fn check_snapshot(&self) -> Result<(), String> {
        let restored =
            Ledger::restore(&self.ledger.encode_snapshot(), self.ledger.config()).map_err(|error| error.to_string())?;
        if restored != self.ledger {
            return Err("a restored snapshot differs from the ledger".to_owned());
        }
        let middle = self.journal.len() / 2;
        let mut first_half = Ledger::new(self.ledger.config());
        for (record, events) in &self.journal[..middle] {
            first_half.replay(record, events).map_err(|error| error.to_string())?;
        }
        let mut resumed =
            Ledger::restore(&first_half.encode_snapshot(), first_half.config()).map_err(|error| error.to_string())?;
        for (record, events) in &self.journal[middle..] {
            resumed.replay(record, events).map_err(|error| error.to_string())?;
        }
        if resumed != self.ledger {
            return Err("snapshot plus later journal differs from the ledger".to_owned());
        }
        Ok(())
    }
}

/// The events of one recorded command: all carry its transaction, and their postings balance.
fn check_events(record: &CommandRecord, events: &[Event]) -> Result<(), String> {
    if record.result.is_err() && !events.is_empty() {
        return Err("a rejected command emitted events".to_owned());
    }
    if record.refused_leg.is_some() && record.result.is_ok() {
        return Err("an accepted command names a refused leg".to_owned());
    }
    let mut last_version: BTreeMap<_, u64> = BTreeMap::new();
    for event in events {
        if event.transaction_id != record.transaction_id || event.command_id != record.command_id {
            return Err(format!("event {event:?} belongs to another transaction"));
        }
        if let Some(previous) = last_version.insert(event.wallet_id, event.version)
            && event.version != previous + 1
        {
            return Err(format!("versions of {} jump from {previous} to {}", event.wallet_id, event.version));
        }
        if let Some(posting) = event.posting
            && (posting.amount.is_zero() || posting.source == posting.destination)
        {
            return Err(format!("posting {posting:?} moves nothing"));
        }
    }
    Ok(())
}
