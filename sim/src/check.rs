//! The checkers: the six promises, on every seed, from what the clients saw and what the store and
//! the broker hold after the liveness phase.
//!
//! - conservation: every event's balance moves exactly by its posting, every transaction's events
//!   carry one posting, and replaying the journal keeps the engine's own invariants;
//! - no overdraft: no balance or available balance below its floor at any event of the log;
//! - no loss: every decided operation is in the journal, its events are on the bus (or were lost by
//!   the broker after it acknowledged them) and in both projections, and nothing was dead-lettered;
//! - exactly once: no command id is recorded twice, no client was told its key was reused;
//! - ordering: each projection applied each wallet's versions 1, 2, 3, … with no gap or repeat;
//! - convergence: the read model and the ledger equal the write model (checked, then waited for);
//! - and every reply agrees with the auditor, replaying the journal's commands in commit order:
//!   an answered operation got exactly the journal's record and events; an unanswered one may be
//!   in the journal or not.

use std::collections::{BTreeMap, BTreeSet};

use wallex_engine::auditor::{Auditor, Expected, verdict};
use wallex_engine::{Account, Command, CommandId, CommandKind, Currency, EventKind, Ledger, TransactionId, WalletId};
use wallex_pipeline::codec::decode_event;
use wallex_pipeline::ports::{Direction, EventStore, JournalEntry, LedgerEntry, Projection, WalletView};
use wallex_pipeline::writer::SYSTEM_COMMAND_TAG;

use crate::workload::{Attempt, Operation};
use crate::world::{World, lock};

/// A broken promise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub promise: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.promise, self.detail)
    }
}

fn violated<T>(promise: &'static str, detail: String) -> Result<T, Violation> {
    Err(Violation { promise, detail })
}

/// Every journal entry the store holds, in transaction order.
pub async fn journal(world: &World) -> Vec<JournalEntry> {
    world.store.journal(TransactionId(0), usize::MAX).await.expect("the store's disk is always readable")
}

/// The read model's wallets, by id.
type Views = BTreeMap<WalletId, WalletView>;
/// The ledger projection's entries, by wallet and version.
type Entries = BTreeMap<(WalletId, u64), LedgerEntry>;

/// The commands of the seed's operations, by id: what the auditor replays the journal with.
pub fn commands(operations: &[Operation]) -> BTreeMap<CommandId, Command> {
    operations.iter().map(|operation| (operation.command.id, operation.command.clone())).collect()
}

/// The command recorded as `id`: a client's, or the writer's own hold expiry.
fn command_of(commands: &BTreeMap<CommandId, Command>, id: CommandId) -> Command {
    commands.get(&id).cloned().unwrap_or_else(|| Command::new(id, CommandKind::ExpireHolds))
}

/// The read side there must be, from a model that shares no code with the projections (neither
/// `WalletView::after` nor `LedgerEntry::of`): balances, held amounts, floors and versions from
/// the auditor replaying the journal's commands, owners and creation times from the create
/// commands and their records, and each ledger entry's balance as a running sum of the postings.
fn expected_read_side(
    journal: &[JournalEntry],
    commands: &BTreeMap<CommandId, Command>,
    config: wallex_engine::Config,
) -> Result<(Views, Entries), String> {
    let mut auditor = Auditor::new(config);
    type Created = (wallex_engine::OwnerId, wallex_engine::Timestamp, wallex_engine::Memo);
    let mut created: BTreeMap<WalletId, Created> = BTreeMap::new();
    let mut updated: BTreeMap<WalletId, wallex_engine::Timestamp> = BTreeMap::new();
    let mut running: BTreeMap<WalletId, i128> = BTreeMap::new();
    let mut entries = BTreeMap::new();
    for entry in journal {
        let record = &entry.record;
        let command = command_of(commands, record.command_id);
        if record.result.is_ok() {
            let legs = match &command.kind {
                CommandKind::Atomic(legs) => legs.as_slice(),
                kind => std::slice::from_ref(kind),
            };
            for leg in legs {
                if let CommandKind::CreateWallet { wallet_id, owner_id, .. } = leg {
                    created.insert(*wallet_id, (*owner_id, record.at, command.memo.clone()));
                }
            }
        }
        auditor.execute(record.at, &command);
        for event in &entry.events {
            updated.insert(event.wallet_id, record.at);
            let Some(posting) = event.posting else { continue };
            let this = Account::Wallet(event.wallet_id);
            let amount = i128::from(posting.amount.minor());
            let (direction, other, delta) = if posting.destination == this {
                (Direction::Credit, posting.source, amount)
            } else if posting.source == this {
                (Direction::Debit, posting.destination, -amount)
            } else {
                return Err(format!("{} version {} carries a posting not its own", event.wallet_id, event.version));
            };
            let balance = running.entry(event.wallet_id).or_default();
            *balance += delta;
            let expected = LedgerEntry {
                wallet_id: event.wallet_id,
                transaction_id: record.transaction_id,
                version: event.version,
                entry_type: event.kind.name().to_owned(),
                direction,
                amount: posting.amount.minor(),
                balance_after: i64::try_from(*balance).map_err(|_| "a balance beyond i64".to_owned())?,
                currency: posting.currency,
                counterparty: other.to_string(),
                description: event.description.as_ref().map(|description| description.as_str().to_owned()),
                at: record.at,
                // Every entry of a transaction carries what its command carried.
                memo: command.memo.clone(),
            };
            entries.insert((event.wallet_id, event.version), expected);
        }
    }
    let mut views = BTreeMap::new();
    for (wallet_id, (owner_id, created_at, memo)) in created {
        let (currency, balance, held, floor, version) =
            auditor.wallet(wallet_id.as_str()).ok_or(format!("the auditor has no wallet {wallet_id}"))?;
        let view = WalletView {
            wallet_id,
            owner_id,
            currency,
            balance: i64::try_from(balance).map_err(|_| "a balance beyond i64".to_owned())?,
            held: u64::try_from(held).map_err(|_| "a negative held amount".to_owned())?,
            overdraft_limit: u64::try_from(-floor).map_err(|_| "a floor above zero".to_owned())?,
            version,
            created_at,
            updated_at: updated.get(&wallet_id).copied().unwrap_or(created_at),
            memo,
        };
        views.insert(wallet_id, view);
    }
    Ok((views, entries))
}

/// The read side as the model says it must be: `None` if it is, else the first difference.
pub async fn divergence(
    world: &World,
    journal: &[JournalEntry],
    commands: &BTreeMap<CommandId, Command>,
    config: wallex_engine::Config,
) -> Option<String> {
    let (backlog, _) = world.store.outbox_backlog().await.expect("the store's disk is always readable");
    if backlog > 0 {
        return Some(format!("{backlog} outbox messages unpublished"));
    }
    {
        let broker = lock(&world.broker);
        for projection in Projection::ALL {
            let lag = broker.lag(projection.group());
            if lag > 0 {
                return Some(format!("{} has {lag} messages to consume", projection.group()));
            }
        }
    }
    let (views, entries) = match expected_read_side(journal, commands, config) {
        Ok(expected) => expected,
        Err(reason) => return Some(format!("the journal has no read side: {reason}")),
    };
    let tables = lock(&world.projections);
    for projection in Projection::ALL {
        for (wallet_id, view) in &views {
            let projected = tables.tables.checkpoints.get(&(projection, *wallet_id)).copied().unwrap_or(0);
            if projected != view.version {
                return Some(format!(
                    "{} has {wallet_id} at version {projected}, the journal at {}",
                    projection.group(),
                    view.version
                ));
            }
        }
    }
    if tables.tables.wallets != views {
        let differing =
            views.keys().chain(tables.tables.wallets.keys()).find(|id| views.get(id) != tables.tables.wallets.get(id));
        let shown = differing.map(|id| (tables.tables.wallets.get(id), views.get(id)));
        return Some(format!("the read model differs from the model at wallet {differing:?}: (has, model) {shown:?}"));
    }
    if tables.tables.ledger != entries {
        let differing = entries
            .keys()
            .chain(tables.tables.ledger.keys())
            .find(|key| entries.get(key) != tables.tables.ledger.get(key));
        return Some(format!("the ledger projection differs from the model at {differing:?}"));
    }
    None
}

/// Runs every checker; returns how many individual checks passed.
pub async fn verify(world: &World, operations: &[Operation], config: wallex_engine::Config) -> Result<u64, Violation> {
    let journal = journal(world).await;
    let mut checks = 0u64;

    // Liveness: every operation was answered within the bound.
    for operation in operations {
        checks += 1;
        if operation.decided.is_none() && !operation.attempts.contains(&Attempt::KeyReused) {
            return violated(
                "liveness",
                format!(
                    "client {} {} {} never answered after {} attempts",
                    operation.client,
                    operation.command.id,
                    operation.command.kind.name(),
                    operation.attempts.len()
                ),
            );
        }
    }

    // Fencing: every commit was made under the epoch that held the writer lease at that moment,
    // as the store's own lease row says. A writer that lost the lease (paused past it, cut off,
    // killed with a commit still in flight) commits nothing, whatever it had decided.
    checks += 1;
    if let Some((commit, epoch, current)) = world.store.stale_commits().first() {
        return violated(
            "fencing",
            format!("commit {commit} was made under epoch {epoch} while the lease was at epoch {current}"),
        );
    }

    // The journal: contiguous, each command known and recorded once.
    let by_id: BTreeMap<CommandId, &Command> =
        operations.iter().map(|operation| (operation.command.id, &operation.command)).collect();
    let mut recorded: BTreeMap<CommandId, TransactionId> = BTreeMap::new();
    for (position, entry) in journal.iter().enumerate() {
        checks += 1;
        let record = &entry.record;
        if record.transaction_id.0 != position as u64 + 1 {
            return violated("journal", format!("entry {position} holds transaction {}", record.transaction_id));
        }
        if let Some(first) = recorded.insert(record.command_id, record.transaction_id) {
            return violated(
                "exactly_once",
                format!(
                    "command {} took effect twice: transactions {first} and {}",
                    record.command_id, record.transaction_id
                ),
            );
        }
        let system = record.command_id.0 & SYSTEM_COMMAND_TAG == SYSTEM_COMMAND_TAG;
        let expire = Command::new(record.command_id, CommandKind::ExpireHolds);
        let Some(command) = by_id.get(&record.command_id).copied().or(system.then_some(&expire)) else {
            return violated(
                "journal",
                format!("transaction {} records unknown command {}", record.transaction_id, record.command_id),
            );
        };
        if command.fingerprint() != record.fingerprint {
            return violated(
                "journal",
                format!("transaction {} fingerprint differs from its command", record.transaction_id),
            );
        }
    }

    // The auditor predicts every recorded outcome, in commit order, and the replayed ledger keeps
    // every invariant and equals the auditor's model after each transaction.
    let mut auditor = Auditor::new(config);
    let mut ledger = Ledger::new(config);
    for entry in &journal {
        checks += 1;
        let record = &entry.record;
        let command = by_id
            .get(&record.command_id)
            .map_or_else(|| Command::new(record.command_id, CommandKind::ExpireHolds), |command| (*command).clone());
        let expected = auditor.execute(record.at, &command);
        let actual = Expected::New(verdict(record));
        if expected != actual {
            return violated(
                "auditor",
                format!(
                    "transaction {} ({} {}): journal says {actual:?}, the auditor {expected:?}",
                    record.transaction_id,
                    command.kind.name(),
                    command.id
                ),
            );
        }
        if let Err(error) = ledger.replay(record, &entry.events) {
            return violated("conservation", format!("transaction {} does not replay: {error}", record.transaction_id));
        }
        if let Err(violation) = ledger.check_invariants() {
            return violated("conservation", format!("after transaction {}: {violation}", record.transaction_id));
        }
        if let Err(difference) = auditor.compare(&ledger) {
            return violated("auditor", format!("after transaction {}: {difference}", record.transaction_id));
        }
    }

    // Conservation and floors, from the event log alone.
    checks += check_event_log(&journal)?;
    checks += check_money_supply(&journal, &commands(operations))?;

    // Replies: an answered operation got exactly what the journal holds.
    for operation in operations {
        checks += 1;
        if operation.attempts.contains(&Attempt::KeyReused) {
            return violated(
                "exactly_once",
                format!("client {} was told its key {} was reused", operation.client, operation.command.id),
            );
        }
        // The same key with another body: refused as reused whenever it got a definitive answer.
        for attempt in &operation.reuse {
            checks += 1;
            if matches!(attempt, Attempt::Decided { .. } | Attempt::InFlight) {
                return violated(
                    "exactly_once",
                    format!(
                        "client {} reused key {} for another body and got {attempt:?}, not key reused",
                        operation.client, operation.command.id
                    ),
                );
            }
        }
        // The twin sent at the same time: the same decision, or in flight; never its own.
        if let Some((attempt, twin)) = &operation.twin {
            checks += 1;
            match (attempt, twin, &operation.decided) {
                (Attempt::KeyReused, _, _) => {
                    return violated(
                        "exactly_once",
                        format!(
                            "client {}'s twin of {} was told its key was reused",
                            operation.client, operation.command.id
                        ),
                    );
                }
                (_, Some(twin), Some(decided)) if twin != decided => {
                    return violated(
                        "exactly_once",
                        format!(
                            "client {}'s two copies of {} were answered transactions {} and {}",
                            operation.client, operation.command.id, twin.0.transaction_id, decided.0.transaction_id
                        ),
                    );
                }
                _ => {}
            }
        }
        let Some((record, events)) = &operation.decided else { continue };
        let entry = usize::try_from(record.transaction_id.0).ok().and_then(|id| journal.get(id.wrapping_sub(1)));
        match entry {
            Some(entry) if entry.record == *record && entry.events == *events => {}
            Some(entry) => {
                return violated(
                    "no_loss",
                    format!(
                        "client {} was answered transaction {} for {} but the journal holds {:?} there",
                        operation.client, record.transaction_id, operation.command.id, entry.record
                    ),
                );
            }
            None => {
                return violated(
                    "no_loss",
                    format!(
                        "client {} was answered transaction {} for {}, which is not in the journal",
                        operation.client, record.transaction_id, operation.command.id
                    ),
                );
            }
        }
    }

    // No loss downstream: every journal event is on the bus; nothing was dead-lettered.
    checks += check_bus(world, &journal)?;

    // Ordering: each projection applied each wallet's versions in order, each once.
    checks += check_applied_order(world)?;

    // Convergence (the runner waited for it; this is the verdict).
    checks += 1;
    if let Some(difference) = divergence(world, &journal, &commands(operations), config).await {
        return violated("convergence", difference);
    }
    Ok(checks)
}

fn check_bus(world: &World, journal: &[JournalEntry]) -> Result<u64, Violation> {
    let mut checks = 0;
    let broker = lock(&world.broker);
    let mut on_bus: BTreeSet<(WalletId, u64, TransactionId)> = BTreeSet::new();
    let mut lost: BTreeSet<(WalletId, u64, TransactionId)> = BTreeSet::new();
    checks += 1;
    if let Some(premature) = broker.premature_commits.first() {
        return violated("no_loss", premature.clone());
    }
    for message in &broker.lost {
        let event = decode_event(&message.payload).expect("the relay publishes only events");
        lost.insert((event.wallet_id, event.version, event.transaction_id));
    }
    for message in broker.partitions.values().flatten() {
        match decode_event(&message.payload) {
            Ok(event) => {
                on_bus.insert((event.wallet_id, event.version, event.transaction_id));
            }
            Err(_) if broker.poisoned.contains(&message.key) => {}
            Err(error) => return violated("no_loss", format!("an undecodable message is on the bus: {error}")),
        }
    }
    // Each poison message was dead-lettered by each projector (at least once: a crash before the
    // offset commit dead-letters it again), and nothing else was.
    for message in &broker.dead_letters {
        checks += 1;
        if !broker.poisoned.contains(&message.key) {
            return violated("no_loss", format!("a real event was dead-lettered: headers {:?}", message.headers));
        }
        if !message.headers.iter().any(|(name, value)| name == "dlq-reason" && !value.is_empty()) {
            return violated("no_loss", format!("a dead letter without its reason: headers {:?}", message.headers));
        }
    }
    for key in &broker.poisoned {
        for projection in Projection::ALL {
            checks += 1;
            let dead_lettered = broker.dead_letters.iter().any(|message| {
                message.key == *key
                    && message.headers.iter().any(|(name, value)| name == "dlq-group" && value == projection.group())
            });
            if !dead_lettered {
                return violated(
                    "no_loss",
                    format!("poison message {key} was never dead-lettered by {}", projection.group()),
                );
            }
        }
    }
    for event in journal.iter().flat_map(|entry| &entry.events) {
        checks += 1;
        let key = (event.wallet_id, event.version, event.transaction_id);
        // An event the broker lost after acknowledging it reaches the projections by repair
        // (convergence checks that); the relay rightly never sends it again.
        if !on_bus.contains(&key) && !lost.contains(&key) {
            return violated(
                "no_loss",
                format!(
                    "{} version {} (transaction {}) never reached the bus",
                    event.wallet_id, event.version, event.transaction_id
                ),
            );
        }
    }

    Ok(checks)
}

fn check_applied_order(world: &World) -> Result<u64, Violation> {
    let mut checks = 0;
    let tables = lock(&world.projections);
    let mut last: BTreeMap<(Projection, WalletId), u64> = BTreeMap::new();
    for (projection, wallet_id, version) in &tables.applied {
        checks += 1;
        let previous = last.entry((*projection, *wallet_id)).or_insert(0);
        if *version != *previous + 1 {
            return violated(
                "ordering",
                format!("{} applied {wallet_id} version {version} after version {previous}", projection.group()),
            );
        }
        *previous = *version;
    }
    Ok(checks)
}

/// Conservation and floors from the events alone: each event's balance moves by exactly its
/// posting, a posting between wallets leaves one as often as it reaches the other, no balance or available balance below the wallet's floor,
/// versions contiguous per wallet, and every wallet's postings sum to its final balance.
fn check_event_log(journal: &[JournalEntry]) -> Result<u64, Violation> {
    let mut checks = 0;
    let mut wallets: BTreeMap<WalletId, (i128, i128, u64)> = BTreeMap::new(); // balance, floor, version
    let mut accounts: BTreeMap<(Currency, String), i128> = BTreeMap::new();
    for entry in journal {
        // Each posting is carried by the event of every wallet it touches: a transfer's by the
        // source's and the destination's events alike (an atomic group has several postings, and
        // may repeat one, so they are counted, not collected).
        let mut sides: BTreeMap<_, (u32, u32)> = BTreeMap::new();
        for event in &entry.events {
            let Some(posting) = event.posting else { continue };
            let side =
                sides.entry((posting.source, posting.destination, posting.currency, posting.amount)).or_default();
            let this = Account::Wallet(event.wallet_id);
            if posting.source == this {
                side.0 += 1;
            } else if posting.destination == this {
                side.1 += 1;
            } else {
                return violated(
                    "conservation",
                    format!("{} version {} carries a posting not its own", event.wallet_id, event.version),
                );
            }
            // The other end, if it is outside the wallets, moves by the opposite amount.
            let amount = i128::from(posting.amount.minor());
            match (posting.source, posting.destination) {
                (Account::World(_), _) => {
                    *accounts.entry((posting.currency, posting.source.to_string())).or_default() -= amount
                }
                (_, Account::World(_)) => {
                    *accounts.entry((posting.currency, posting.destination.to_string())).or_default() += amount;
                }
                _ => {}
            }
            *accounts.entry((posting.currency, this.to_string())).or_default() += signed(&posting, event.wallet_id);
        }
        for ((source, destination, _, amount), (debited, credited)) in &sides {
            let between_wallets = matches!((source, destination), (Account::Wallet(_), Account::Wallet(_)));
            if between_wallets && debited != credited {
                return violated(
                    "conservation",
                    format!(
                        "transaction {}: {} from {source} to {destination} leaves {debited} time(s), arrives {credited}",
                        entry.record.transaction_id,
                        amount.minor()
                    ),
                );
            }
        }
        for event in &entry.events {
            checks += 1;
            let state = wallets.entry(event.wallet_id).or_insert((0, 0, 0));
            if let EventKind::WalletCreated { overdraft_limit, .. } = &event.kind {
                state.1 = -i128::from(overdraft_limit.minor());
            }
            if event.version != state.2 + 1 {
                return violated(
                    "ordering",
                    format!("{} jumps from version {} to {} in the journal", event.wallet_id, state.2, event.version),
                );
            }
            let delta = event.posting.map_or(0, |posting| signed(&posting, event.wallet_id));
            let balance = i128::from(event.balance_after);
            if balance != state.0 + delta {
                return violated(
                    "conservation",
                    format!(
                        "{} version {}: balance {} -> {balance}, but its posting moves {delta}",
                        event.wallet_id, event.version, state.0
                    ),
                );
            }
            if balance < state.1 || balance - i128::from(event.held_after) < state.1 {
                return violated(
                    "no_overdraft",
                    format!(
                        "{} version {}: balance {balance}, held {}, floor {}",
                        event.wallet_id, event.version, event.held_after, state.1
                    ),
                );
            }
            *state = (balance, state.1, event.version);
        }
    }
    for ((_, account), balance) in &accounts {
        if !account.starts_with('@') {
            let wallet = WalletId::parse(account).expect("a wallet account");
            let final_balance = wallets.get(&wallet).map_or(0, |state| state.0);
            if final_balance != *balance {
                return violated(
                    "conservation",
                    format!("{account}: postings sum to {balance}, events end at {final_balance}"),
                );
            }
        }
    }
    Ok(checks)
}

/// The money supply: per currency, the wallets' final balances (from the events) sum to exactly
/// what the accepted commands brought in and took out (initial balances, credits, debits, captures
/// out of the system), computed from the commands alone. A transfer, hold or capture that made or
/// destroyed money, or an external movement recorded with another amount than its command's,
/// breaks it; a sum over postings (each adds and removes one amount) could not.
fn check_money_supply(journal: &[JournalEntry], commands: &BTreeMap<CommandId, Command>) -> Result<u64, Violation> {
    let mut checks = 0;
    let mut expected: BTreeMap<Currency, i128> = BTreeMap::new();
    let mut holds: BTreeMap<wallex_engine::HoldId, (u64, Currency)> = BTreeMap::new();
    let mut currencies: BTreeMap<WalletId, Currency> = BTreeMap::new();
    let mut balances: BTreeMap<WalletId, i64> = BTreeMap::new();
    for entry in journal {
        for event in &entry.events {
            balances.insert(event.wallet_id, event.balance_after);
        }
        if entry.record.result.is_err() {
            continue;
        }
        let Some(kind) = commands.get(&entry.record.command_id).map(|command| &command.kind) else { continue };
        bring_in(kind, &mut expected, &mut holds, &mut currencies)?;
    }
    let mut actual: BTreeMap<Currency, i128> = BTreeMap::new();
    for (wallet, balance) in balances {
        let currency = currencies.get(&wallet).ok_or(Violation {
            promise: "conservation",
            detail: format!("{wallet} has events but no accepted creation"),
        })?;
        *actual.entry(*currency).or_default() += i128::from(balance);
    }
    for currency in expected.keys().chain(actual.keys()) {
        checks += 1;
        let (want, have) = (expected.get(currency).copied().unwrap_or(0), actual.get(currency).copied().unwrap_or(0));
        if want != have {
            return violated(
                "conservation",
                format!("{currency}: wallets hold {have} in all, the commands brought in {want} net"),
            );
        }
    }
    Ok(checks)
}

/// What one accepted command (or each leg of an accepted group, in order) brought into the system
/// or took out of it, per currency.
fn bring_in(
    kind: &CommandKind,
    expected: &mut BTreeMap<Currency, i128>,
    holds: &mut BTreeMap<wallex_engine::HoldId, (u64, Currency)>,
    currencies: &mut BTreeMap<WalletId, Currency>,
) -> Result<(), Violation> {
    let minor = |amount: &wallex_engine::Amount| i128::from(amount.minor());
    match kind {
        CommandKind::CreateWallet { wallet_id, currency, initial_balance, .. } => {
            currencies.insert(*wallet_id, *currency);
            *expected.entry(*currency).or_default() += minor(initial_balance);
        }
        CommandKind::Credit { currency, amount, .. } => *expected.entry(*currency).or_default() += minor(amount),
        CommandKind::Debit { currency, amount, .. } => *expected.entry(*currency).or_default() -= minor(amount),
        CommandKind::PlaceHold { hold_id, amount, currency, .. } => {
            holds.insert(*hold_id, (amount.minor(), *currency));
        }
        CommandKind::CaptureHold { hold_id, amount, destination, .. } => {
            let Some((held, currency)) = holds.get(hold_id).copied() else {
                return violated("conservation", format!("hold {hold_id} captured but never placed"));
            };
            let captured = amount.map_or(held, |amount| amount.minor());
            if destination.is_none() {
                *expected.entry(currency).or_default() -= i128::from(captured);
            }
        }
        CommandKind::Atomic(legs) => {
            for leg in legs {
                bring_in(leg, expected, holds, currencies)?;
            }
        }
        CommandKind::Transfer { .. } | CommandKind::VoidHold { .. } | CommandKind::ExpireHolds => {}
    }
    Ok(())
}

/// The posting's effect on `wallet`'s balance.
fn signed(posting: &wallex_engine::Posting, wallet: WalletId) -> i128 {
    let amount = i128::from(posting.amount.minor());
    let this = Account::Wallet(wallet);
    if posting.destination == this {
        amount
    } else if posting.source == this {
        -amount
    } else {
        0
    }
}
