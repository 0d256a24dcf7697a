//! The ledger state machine: `execute` decides and applies a command; `replay` applies what an earlier
//! `execute` recorded, and reaches exactly the same state.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::tables::{CommandMemory, HashSeed, WalletTable};
use crate::{
    Account, Amount, Command, CommandId, CommandKind, Currency, Event, EventKind, Fingerprint, HoldId, MAX_ATOMIC_LEGS,
    Memo, OwnerId, Posting, Rejection, Timestamp, TransactionId, WalletId,
};

/// The highest balance a wallet may hold, in minor units (10^18, well inside `i64`).
pub const MAX_BALANCE_MINOR: i64 = 1_000_000_000_000_000_000;

/// The most holds one `ExpireHolds` command releases; the caller repeats it while
/// [`Ledger::next_hold_expiry`] is due.
pub const MAX_EXPIRIES_PER_COMMAND: usize = 256;

/// Settings that shape decisions. They are the caller's, not the state's: a snapshot does not carry
/// them, and [`Ledger::restore`] takes the current ones, so a changed retention takes effect at the
/// next start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long a command id is remembered (and its retries deduplicated), in microseconds.
    /// Default: 24 hours.
    pub command_retention_micros: u64,
    /// The key of the id indexes; see [`HashSeed`]. The default is fixed and public: a server
    /// passes a secret one.
    pub hash_seed: HashSeed,
    /// The most wallets one owner may have: creating one more is refused `quota_exceeded`, so no
    /// client can grow the writer's memory without bound. Default: 100,000.
    pub max_wallets_per_owner: u64,
    /// The most active holds across one owner's wallets (placing one more is refused
    /// `quota_exceeded`). Default: 100,000.
    pub max_active_holds_per_owner: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            command_retention_micros: 24 * 60 * 60 * 1_000_000,
            hash_seed: HashSeed::default(),
            max_wallets_per_owner: 100_000,
            max_active_holds_per_owner: 100_000,
        }
    }
}

/// What one owner has of the ledger, for the quotas: derived from the wallets and holds (rebuilt
/// on restore, never stored).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) wallets: u64,
    pub(crate) active_holds: u64,
}

/// A wallet as the write side knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wallet {
    pub id: WalletId,
    pub owner_id: OwnerId,
    pub currency: Currency,
    /// Minor units; below zero only within `overdraft_limit`.
    pub balance: i64,
    /// Sum of the wallet's active holds, in minor units.
    pub held: u64,
    pub overdraft_limit: Amount,
    /// Version of the last event on the wallet's stream.
    pub version: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// What the creating command carried (reference, metadata), for reads; boxed and absent when
    /// empty, so a wallet without one costs a pointer. Decisions never read it.
    #[serde(with = "memo_fields")]
    pub memo: Option<Box<Memo>>,
}

/// A wallet's memo in snapshots: every field always present, as bincode (which is not
/// self-describing) needs; the JSON form of `Memo` leaves empty fields out.
mod memo_fields {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::{CorrelationId, Memo, Metadata, Reference};

    type Fields = (Option<String>, Vec<(String, String)>, Option<String>);

    pub(crate) fn serialize<S: Serializer>(memo: &Option<Box<Memo>>, serializer: S) -> Result<S::Ok, S::Error> {
        let fields: Option<Fields> = memo.as_ref().map(|memo| {
            (
                memo.reference.as_ref().map(|reference| reference.as_str().to_owned()),
                memo.metadata.iter().map(|(key, value)| (key.to_owned(), value.to_owned())).collect(),
                memo.correlation_id.as_ref().map(|id| id.as_str().to_owned()),
            )
        });
        fields.serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Box<Memo>>, D::Error> {
        let Some((reference, metadata, correlation_id)) = Option::<Fields>::deserialize(deserializer)? else {
            return Ok(None);
        };
        let invalid = |error: crate::ParseError| serde::de::Error::custom(error.to_string());
        Ok(Some(Box::new(Memo {
            reference: reference.as_deref().map(Reference::parse).transpose().map_err(invalid)?,
            metadata: Metadata::parse(metadata.iter().map(|(key, value)| (key.as_str(), value.as_str())))
                .map_err(invalid)?,
            correlation_id: correlation_id.as_deref().map(CorrelationId::parse).transpose().map_err(invalid)?,
        })))
    }
}

impl Wallet {
    /// What the wallet may still spend or reserve: balance minus holds plus the overdraft limit.
    pub fn available(&self) -> i128 {
        i128::from(self.balance) - i128::from(self.held) + i128::from(self.overdraft_limit.minor())
    }

    /// The lowest balance (and available balance before the overdraft) the wallet may reach.
    pub fn floor(&self) -> i128 {
        -i128::from(self.overdraft_limit.minor())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldStatus {
    Active,
    Captured { captured: Amount },
    Voided,
    Expired,
}

/// A reservation of part of a wallet's balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: HoldId,
    pub wallet_id: WalletId,
    pub currency: Currency,
    pub amount: Amount,
    pub expires_at: Option<Timestamp>,
    pub status: HoldStatus,
    pub placed_at: Timestamp,
    pub transaction_id: TransactionId,
}

impl Hold {
    /// Whether the hold's expiry has passed at `now`, whether or not `ExpireHolds` processed it yet.
    pub fn is_lapsed(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|expires_at| expires_at <= now)
    }
}

/// What the ledger remembers of a command id: enough to answer a retry with the original outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub command_id: CommandId,
    pub fingerprint: Fingerprint,
    /// The ledger's time when the command was decided.
    pub at: Timestamp,
    /// The command's position in the journal. An accepted command's events carry it.
    pub transaction_id: TransactionId,
    pub result: Result<(), Rejection>,
    /// For a refused atomic group: the leg whose own rejection `result` is (every other leg was
    /// refused with it). `None` for every other command, and for a group refused as a whole
    /// (`invalid_atomic_group`, `reference_exists`).
    pub refused_leg: Option<u16>,
}

impl CommandRecord {
    /// The outcome a client sees: the transaction id, or why the command was refused.
    pub fn outcome(&self) -> Result<TransactionId, Rejection> {
        self.result.map(|()| self.transaction_id)
    }
}

/// The answer to [`Ledger::execute`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new command was decided. The record, and the events pushed for it, must be made durable
    /// together before the outcome is acknowledged.
    Recorded(CommandRecord),
    /// The id was seen before with the same content: the original outcome, and nothing changed.
    Duplicate(CommandRecord),
    /// The id was seen before with different content: refused as `idempotency_key_reused`, and
    /// nothing changed. `original` is the first command's record.
    KeyReused { original: CommandRecord },
}

impl Outcome {
    /// What the client is told: the transaction id or the rejection.
    pub fn result(&self) -> Result<TransactionId, Rejection> {
        match self {
            Outcome::Recorded(record) | Outcome::Duplicate(record) => record.outcome(),
            Outcome::KeyReused { .. } => Err(Rejection::IdempotencyKeyReused),
        }
    }
}

/// A journal that cannot have come from this ledger: replay refuses it rather than guess.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("replay of transaction {transaction_id}: {reason}")]
pub struct ReplayError {
    pub transaction_id: TransactionId,
    pub reason: String,
}

/// A broken invariant: always a bug (or corrupted input), never a client error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ledger invariant broken: {0}")]
pub struct InvariantViolation(pub String);

/// The whole write-side state: wallets, holds, system accounts and remembered command ids.
///
/// Wallets and remembered commands live in dense arrays in a deterministic order (creation order,
/// oldest first) with compact hash indexes beside them (see `tables.rs`): lookups are O(1) and every
/// iteration (invariants, snapshots, equality) follows the arrays, never an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ledger {
    pub(crate) config: Config,
    /// The latest `now` the ledger has recorded a command at; the ledger's time never goes back.
    pub(crate) clock: Timestamp,
    pub(crate) last_transaction_id: TransactionId,
    pub(crate) wallets: WalletTable,
    pub(crate) holds: BTreeMap<HoldId, Hold>,
    /// Active holds with an expiry, in the order they lapse.
    pub(crate) hold_expiries: BTreeSet<(Timestamp, HoldId)>,
    /// Balance of each currency's `@world` account, indexed by `Currency::index`.
    pub(crate) world: [i128; Currency::COUNT],
    /// Remembered command ids, oldest first: the order they are forgotten in.
    pub(crate) commands: CommandMemory,
    /// Every (wallet, reference) pair a transaction has used, as digests (see [`reference_key`]),
    /// with that transaction: 24 bytes each, kept forever, so a reference stays unique among a
    /// wallet's transactions.
    pub(crate) references: BTreeMap<u128, TransactionId>,
    /// Each owner's wallets and active holds, for the quotas.
    pub(crate) usage: BTreeMap<OwnerId, Usage>,
}

/// The digest of a wallet's reference: XXH3-128 over the length-prefixed wallet id and reference.
pub(crate) fn reference_key(wallet_id: &WalletId, reference: &crate::Reference) -> u128 {
    let (wallet, reference) = (wallet_id.as_bytes(), reference.as_str().as_bytes());
    let mut input = Vec::with_capacity(4 + wallet.len() + reference.len());
    input.extend_from_slice(&u16::try_from(wallet.len()).expect("ids are short").to_le_bytes());
    input.extend_from_slice(wallet);
    input.extend_from_slice(&u16::try_from(reference.len()).expect("references are short").to_le_bytes());
    input.extend_from_slice(reference);
    xxhash_rust::xxh3::xxh3_128(&input)
}

impl Ledger {
    pub fn new(config: Config) -> Ledger {
        Ledger {
            config,
            clock: Timestamp::ZERO,
            last_transaction_id: TransactionId(0),
            wallets: WalletTable::new(config.hash_seed),
            holds: BTreeMap::new(),
            hold_expiries: BTreeSet::new(),
            world: [0; Currency::COUNT],
            commands: CommandMemory::new(config.hash_seed),
            references: BTreeMap::new(),
            usage: BTreeMap::new(),
        }
    }

    /// What `owner` has of the ledger now.
    fn usage_of(&self, owner: &OwnerId) -> Usage {
        self.usage.get(owner).copied().unwrap_or_default()
    }

    /// Counts the wallets and active holds of every owner afresh (after a restore).
    pub(crate) fn recount_usage(&mut self) {
        let mut usage: BTreeMap<OwnerId, Usage> = BTreeMap::new();
        for wallet in self.wallets.as_slice() {
            usage.entry(wallet.owner_id).or_default().wallets += 1;
        }
        for hold in self.holds.values().filter(|hold| hold.status == HoldStatus::Active) {
            if let Some(wallet) = self.wallets.get(&hold.wallet_id) {
                usage.entry(wallet.owner_id).or_default().active_holds += 1;
            }
        }
        self.usage = usage;
    }

    pub fn config(&self) -> Config {
        self.config
    }

    /// The latest time the ledger has recorded a command at.
    pub fn clock(&self) -> Timestamp {
        self.clock
    }

    pub fn last_transaction_id(&self) -> TransactionId {
        self.last_transaction_id
    }

    pub fn wallet(&self, wallet_id: &WalletId) -> Option<&Wallet> {
        self.wallets.get(wallet_id)
    }

    fn find(&self, wallet_id: &WalletId) -> Option<(usize, &Wallet)> {
        self.wallets.position(wallet_id).map(|position| (position, self.wallets.at(position)))
    }

    /// Every wallet, in creation order.
    pub fn wallets(&self) -> &[Wallet] {
        self.wallets.as_slice()
    }

    pub fn hold(&self, hold_id: &HoldId) -> Option<&Hold> {
        self.holds.get(hold_id)
    }

    /// Every hold ever placed, by id.
    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.values()
    }

    /// The balance of the currency's system account: minus everything the wallets hold.
    pub fn world_balance(&self, currency: Currency) -> i128 {
        self.world[currency.index()]
    }

    /// The record of `command_id` if the ledger still remembers it at `now`.
    pub fn command(&self, command_id: &CommandId, now: Timestamp) -> Option<&CommandRecord> {
        let now = now.max(self.clock);
        self.commands.get(command_id).filter(|record| !self.is_forgotten(record, now))
    }

    /// How many command ids the ledger remembers.
    pub fn remembered_commands(&self) -> usize {
        self.commands.len()
    }

    /// When the earliest active hold lapses; `ExpireHolds` at or after it releases it.
    pub fn next_hold_expiry(&self) -> Option<Timestamp> {
        self.hold_expiries.first().map(|(expires_at, _)| *expires_at)
    }

    /// Decides `command` at `now` and applies it. New events are pushed onto `events` (which is not
    /// cleared, so a caller can collect a whole batch); see [`Outcome`] for what must be persisted.
    ///
    /// `now` may go backwards (clocks jump); the ledger then keeps its own later time.
    pub fn execute(&mut self, now: Timestamp, command: &Command, events: &mut Vec<Event>) -> Outcome {
        let now = now.max(self.clock);
        let fingerprint = command.fingerprint();
        if let Some(original) = self.command(&command.id, now) {
            return if original.fingerprint == fingerprint {
                Outcome::Duplicate(*original)
            } else {
                Outcome::KeyReused { original: *original }
            };
        }

        let transaction_id = self.last_transaction_id.next();
        let record_start = events.len();
        let mut touched = Touched::new();
        let mut refused_leg = None;
        // An atomic group applies its legs as it decides them (each leg sees the ones before it);
        // `undo` puts them back if the group is refused after all.
        let mut undo = None;
        let mut result = match &command.kind {
            CommandKind::Atomic(legs) => match self.decide_group(now, transaction_id, command, legs, events) {
                Ok(log) => {
                    undo = Some(log);
                    Ok(())
                }
                Err((rejection, leg)) => {
                    refused_leg = leg;
                    Err(rejection)
                }
            },
            kind => self.decide(now, transaction_id, command.id, kind, events, &mut touched),
        };
        debug_assert!(result.is_ok() || events.len() == record_start, "a rejection emits no events");
        // Last of all: a reference already used on a wallet the command touches.
        if let Some(reference) = &command.memo.reference
            && events[record_start..]
                .iter()
                .any(|event| self.references.contains_key(&reference_key(&event.wallet_id, reference)))
        {
            if let Some(log) = undo.take() {
                self.undo(log);
            }
            events.truncate(record_start);
            result = Err(Rejection::ReferenceExists);
        }
        let applied = undo.is_some();
        if !command.memo.is_empty() && !applied {
            for event in &mut events[record_start..] {
                event.memo = command.memo.clone();
            }
        }
        let record =
            CommandRecord { command_id: command.id, fingerprint, at: now, transaction_id, result, refused_leg };
        self.record(&record);
        if applied {
            if let Some(reference) = &command.memo.reference {
                for event in &events[record_start..] {
                    self.references.insert(reference_key(&event.wallet_id, reference), transaction_id);
                }
            }
        } else {
            for (index, event) in events[record_start..].iter().enumerate() {
                if let Err(error) = self.apply_at(event, touched.get(index).copied(), true) {
                    panic!("the ledger emitted an event it cannot apply: {error}");
                }
            }
        }
        if cfg!(debug_assertions)
            && let Err(violation) = self.check_invariants()
        {
            panic!("after {} {}: {violation}", command.kind.name(), command.id);
        }
        Outcome::Recorded(record)
    }

    /// Applies one recorded transaction: the command record and the events `execute` emitted with it,
    /// in their order. Replaying a journal into a fresh ledger (or into a restored snapshot, from the
    /// transaction after it) reproduces the original ledger exactly.
    pub fn replay(&mut self, record: &CommandRecord, events: &[Event]) -> Result<(), ReplayError> {
        let fail = |reason: String| ReplayError { transaction_id: record.transaction_id, reason };
        if record.transaction_id != self.last_transaction_id.next() {
            return Err(fail(format!("expected transaction {}", self.last_transaction_id.next())));
        }
        if record.result.is_err() && !events.is_empty() {
            return Err(fail("a rejected command has events".to_owned()));
        }
        if let Some(event) = events.iter().find(|event| event.transaction_id != record.transaction_id) {
            return Err(fail(format!("event of transaction {} in its journal entry", event.transaction_id)));
        }
        self.record(record);
        for event in events {
            self.apply(event)?;
        }
        Ok(())
    }

    /// Applies one event to the wallet and hold state, checking that it is the wallet's next version
    /// and that the balance and held amount it carries are what the ledger computes.
    ///
    /// This is the single place wallet state changes, for `execute` and `replay` alike.
    pub fn apply(&mut self, event: &Event) -> Result<(), ReplayError> {
        self.apply_at(event, None, true)
    }

    /// [`Ledger::apply`], with the wallet's position when the caller already knows it (`execute`
    /// does: it just looked the wallet up to decide), saving a second lookup. Without
    /// `references`, the event's reference is neither checked nor remembered: an atomic group
    /// checks and remembers its reference once, after its last leg.
    fn apply_at(&mut self, event: &Event, position: Option<usize>, references: bool) -> Result<(), ReplayError> {
        let fail = |reason: String| ReplayError {
            transaction_id: event.transaction_id,
            reason: format!("{} v{} {}: {reason}", event.wallet_id, event.version, event.kind.name()),
        };
        let index = match &event.kind {
            EventKind::WalletCreated { owner_id, overdraft_limit } => {
                if event.version != 1 {
                    return Err(fail("a wallet stream starts at version 1".to_owned()));
                }
                let created = self.wallets.push(Wallet {
                    id: event.wallet_id,
                    owner_id: *owner_id,
                    currency: event.currency,
                    balance: 0,
                    held: 0,
                    overdraft_limit: *overdraft_limit,
                    version: 0,
                    created_at: event.at,
                    updated_at: event.at,
                    memo: (!event.memo.is_empty()).then(|| Box::new(event.memo.clone())),
                });
                let created = created.map_err(|()| fail("the wallet exists".to_owned()))?;
                self.usage.entry(*owner_id).or_default().wallets += 1;
                created
            }
            _ => match position.filter(|&position| self.wallets.at(position).id == event.wallet_id) {
                Some(position) => position,
                None => self.wallets.position(&event.wallet_id).ok_or_else(|| fail("no such wallet".to_owned()))?,
            },
        };

        let wallet = self.wallets.at(index);
        let owner = wallet.owner_id;
        if event.version != wallet.version + 1 {
            return Err(fail(format!("expected version {}", wallet.version + 1)));
        }
        if event.currency != wallet.currency {
            return Err(fail("currency differs from the wallet's".to_owned()));
        }
        let reference = event
            .memo
            .reference
            .as_ref()
            .filter(|_| references)
            .map(|reference| reference_key(&event.wallet_id, reference));
        // One transaction may touch a wallet more than once (expiries); another may not reuse it.
        if reference.is_some_and(|key| self.references.get(&key).is_some_and(|used| *used != event.transaction_id)) {
            return Err(fail("the wallet already has a transaction with this reference".to_owned()));
        }

        // The money: the posting moves the balance of this wallet and, if it is a party, of @world.
        let mut balance = i128::from(wallet.balance);
        if let Some(posting) = &event.posting {
            if posting.currency != wallet.currency {
                return Err(fail("posting currency differs from the wallet's".to_owned()));
            }
            let amount = i128::from(posting.amount.minor());
            let this = Account::Wallet(event.wallet_id);
            if posting.source == this {
                balance -= amount;
            } else if posting.destination == this {
                balance += amount;
            } else {
                return Err(fail("the posting does not involve the wallet".to_owned()));
            }
            if posting.source == posting.destination {
                return Err(fail("a posting must move money between two accounts".to_owned()));
            }
            let world = &mut self.world[posting.currency.index()];
            if posting.source == Account::World(posting.currency) {
                *world -= amount;
            } else if posting.destination == Account::World(posting.currency) {
                *world += amount;
            }
        }

        // The reservations: holds change `held` and their own status.
        let mut held = i128::from(wallet.held);
        match &event.kind {
            EventKind::HoldPlaced { hold_id, amount, expires_at } => {
                if self.holds.contains_key(hold_id) {
                    return Err(fail(format!("hold {hold_id} exists")));
                }
                held += i128::from(amount.minor());
                self.holds.insert(
                    *hold_id,
                    Hold {
                        id: *hold_id,
                        wallet_id: event.wallet_id,
                        currency: event.currency,
                        amount: *amount,
                        expires_at: *expires_at,
                        status: HoldStatus::Active,
                        placed_at: event.at,
                        transaction_id: event.transaction_id,
                    },
                );
                if let Some(expires_at) = expires_at {
                    self.hold_expiries.insert((*expires_at, *hold_id));
                }
                self.usage.entry(owner).or_default().active_holds += 1;
            }
            EventKind::HoldCaptured { hold_id, captured, released, .. } => {
                let status = HoldStatus::Captured { captured: *captured };
                held -= self.finish_hold(event, hold_id, status, captured.minor() + released.minor()).map_err(fail)?;
            }
            EventKind::HoldVoided { hold_id, released } => {
                held -= self.finish_hold(event, hold_id, HoldStatus::Voided, released.minor()).map_err(fail)?;
            }
            EventKind::HoldExpired { hold_id, released } => {
                held -= self.finish_hold(event, hold_id, HoldStatus::Expired, released.minor()).map_err(fail)?;
            }
            EventKind::WalletCreated { .. }
            | EventKind::Credited
            | EventKind::Debited
            | EventKind::TransferSent { .. }
            | EventKind::TransferReceived { .. }
            | EventKind::CaptureReceived { .. } => {}
        }

        if balance != i128::from(event.balance_after) || held != i128::from(event.held_after) {
            return Err(fail(format!(
                "carries balance {} held {}, the ledger computes balance {balance} held {held}",
                event.balance_after, event.held_after
            )));
        }
        let wallet = self.wallets.at_mut(index);
        wallet.balance = event.balance_after;
        wallet.held = event.held_after;
        wallet.version = event.version;
        wallet.updated_at = event.at;
        if let Some(key) = reference {
            self.references.insert(key, event.transaction_id);
        }
        Ok(())
    }

    /// Marks an active hold of the event's wallet finished and returns the amount it reserved.
    fn finish_hold(
        &mut self,
        event: &Event,
        hold_id: &HoldId,
        status: HoldStatus,
        accounted: u64,
    ) -> Result<i128, String> {
        let Some(hold) = self.holds.get_mut(hold_id) else {
            return Err(format!("no hold {hold_id}"));
        };
        if hold.wallet_id != event.wallet_id || hold.status != HoldStatus::Active {
            return Err(format!("hold {hold_id} is not an active hold of this wallet"));
        }
        if accounted != hold.amount.minor() {
            return Err(format!(
                "hold {hold_id} reserved {} but the event accounts for {accounted}",
                hold.amount.minor()
            ));
        }
        hold.status = status;
        if let Some(expires_at) = hold.expires_at {
            self.hold_expiries.remove(&(expires_at, *hold_id));
        }
        let amount = i128::from(hold.amount.minor());
        if let Some(wallet) = self.wallets.get(&event.wallet_id)
            && let Some(usage) = self.usage.get_mut(&wallet.owner_id)
        {
            usage.active_holds = usage.active_holds.saturating_sub(1);
        }
        Ok(amount)
    }

    /// Remembers a newly decided command, forgetting the ones whose retention ended by its time.
    fn record(&mut self, record: &CommandRecord) {
        self.clock = self.clock.max(record.at);
        while self.commands.oldest().is_some_and(|oldest| self.is_forgotten(oldest, self.clock)) {
            self.commands.forget_oldest();
        }
        // `execute` records only ids it does not remember; replaying a journal written under a
        // shorter retention may record one again, and then the newer record wins.
        self.commands.remember(*record);
        self.last_transaction_id = record.transaction_id;
    }

    fn is_forgotten(&self, record: &CommandRecord, now: Timestamp) -> bool {
        record.at.saturating_add_micros(self.config.command_retention_micros) <= now
    }

    /// Decides a new command without changing anything: pushes its events (and, for commands that
    /// touch at most two wallets, their positions in `touched`, in event order) and returns `Ok`, or
    /// returns the rejection with nothing pushed. Checks follow the precedence documented on
    /// [`Rejection`].
    fn decide(
        &self,
        now: Timestamp,
        transaction_id: TransactionId,
        command_id: CommandId,
        kind: &CommandKind,
        events: &mut Vec<Event>,
        touched: &mut Touched,
    ) -> Result<(), Rejection> {
        let event =
            |wallet: &Wallet, kind: EventKind, posting: Option<Posting>, balance_after: i128, held_after: i128| Event {
                wallet_id: wallet.id,
                version: wallet.version + 1,
                transaction_id,
                command_id,
                at: now,
                currency: wallet.currency,
                kind,
                posting,
                description: None,
                balance_after: i64::try_from(balance_after).expect("balances stay within MAX_BALANCE_MINOR"),
                held_after: u64::try_from(held_after).expect("held amounts are never negative"),
                memo: Memo::default(),
            };
        let balance_of = |wallet: &Wallet| i128::from(wallet.balance);
        let held_of = |wallet: &Wallet| i128::from(wallet.held);
        let fits = |balance: i128| balance <= i128::from(MAX_BALANCE_MINOR);

        match kind {
            CommandKind::CreateWallet { wallet_id, owner_id, currency, initial_balance, overdraft_limit } => {
                if self.wallets.contains(wallet_id) {
                    return Err(Rejection::WalletExists);
                }
                if self.usage_of(owner_id).wallets >= self.config.max_wallets_per_owner {
                    return Err(Rejection::QuotaExceeded);
                }
                let posting = (!initial_balance.is_zero()).then_some(Posting {
                    source: Account::World(*currency),
                    destination: Account::Wallet(*wallet_id),
                    currency: *currency,
                    amount: *initial_balance,
                });
                let initial = i64::try_from(initial_balance.minor()).expect("Amount::MAX fits i64");
                events.push(Event {
                    wallet_id: *wallet_id,
                    version: 1,
                    transaction_id,
                    command_id,
                    at: now,
                    currency: *currency,
                    kind: EventKind::WalletCreated { owner_id: *owner_id, overdraft_limit: *overdraft_limit },
                    posting,
                    description: None,
                    balance_after: initial,
                    held_after: 0,
                    memo: Memo::default(),
                });
            }
            CommandKind::Credit { wallet_id, currency, amount, description } => {
                positive(*amount)?;
                let (position, wallet) = self.find(wallet_id).ok_or(Rejection::WalletNotFound)?;
                same_currency(*currency, wallet.currency)?;
                let balance = balance_of(wallet) + i128::from(amount.minor());
                if !fits(balance) {
                    return Err(Rejection::BalanceLimitExceeded);
                }
                let posting = Posting {
                    source: Account::World(*currency),
                    destination: Account::Wallet(*wallet_id),
                    currency: *currency,
                    amount: *amount,
                };
                let mut credited = event(wallet, EventKind::Credited, Some(posting), balance, held_of(wallet));
                credited.description = description.clone();
                events.push(credited);
                touched.push(position);
            }
            CommandKind::Debit { wallet_id, currency, amount, description } => {
                positive(*amount)?;
                let (position, wallet) = self.find(wallet_id).ok_or(Rejection::WalletNotFound)?;
                same_currency(*currency, wallet.currency)?;
                covers(wallet, *amount)?;
                let posting = Posting {
                    source: Account::Wallet(*wallet_id),
                    destination: Account::World(*currency),
                    currency: *currency,
                    amount: *amount,
                };
                let balance = balance_of(wallet) - i128::from(amount.minor());
                let mut debited = event(wallet, EventKind::Debited, Some(posting), balance, held_of(wallet));
                debited.description = description.clone();
                events.push(debited);
                touched.push(position);
            }
            CommandKind::Transfer { source, destination, currency, amount, description } => {
                positive(*amount)?;
                if source == destination {
                    return Err(Rejection::SameWalletTransfer);
                }
                let (from_position, from) = self.find(source).ok_or(Rejection::WalletNotFound)?;
                let (to_position, to) = self.find(destination).ok_or(Rejection::DestinationWalletNotFound)?;
                same_currency(*currency, from.currency)?;
                same_currency(*currency, to.currency)?;
                covers(from, *amount)?;
                let to_balance = balance_of(to) + i128::from(amount.minor());
                if !fits(to_balance) {
                    return Err(Rejection::BalanceLimitExceeded);
                }
                let posting = Posting {
                    source: Account::Wallet(*source),
                    destination: Account::Wallet(*destination),
                    currency: *currency,
                    amount: *amount,
                };
                let from_balance = balance_of(from) - i128::from(amount.minor());
                let kind = EventKind::TransferSent { destination: *destination };
                let mut sent = event(from, kind, Some(posting), from_balance, held_of(from));
                sent.description = description.clone();
                let kind = EventKind::TransferReceived { source: *source };
                let mut received = event(to, kind, Some(posting), to_balance, held_of(to));
                received.description = description.clone();
                events.push(sent);
                events.push(received);
                touched.push(from_position);
                touched.push(to_position);
            }
            CommandKind::PlaceHold { hold_id, wallet_id, currency, amount, expires_at, description } => {
                positive(*amount)?;
                if self.holds.contains_key(hold_id) {
                    return Err(Rejection::HoldExists);
                }
                let (position, wallet) = self.find(wallet_id).ok_or(Rejection::WalletNotFound)?;
                same_currency(*currency, wallet.currency)?;
                if expires_at.is_some_and(|expires_at| expires_at <= now) {
                    return Err(Rejection::InvalidExpiry);
                }
                covers(wallet, *amount)?;
                if self.usage_of(&wallet.owner_id).active_holds >= self.config.max_active_holds_per_owner {
                    return Err(Rejection::QuotaExceeded);
                }
                let kind = EventKind::HoldPlaced { hold_id: *hold_id, amount: *amount, expires_at: *expires_at };
                let held = held_of(wallet) + i128::from(amount.minor());
                let mut placed = event(wallet, kind, None, balance_of(wallet), held);
                placed.description = description.clone();
                events.push(placed);
                touched.push(position);
            }
            CommandKind::CaptureHold { hold_id, amount, destination, description } => {
                if let Some(amount) = amount {
                    positive(*amount)?;
                }
                let hold = self.holds.get(hold_id).ok_or(Rejection::HoldNotFound)?;
                let to = match destination {
                    Some(destination) => Some(self.wallet(destination).ok_or(Rejection::DestinationWalletNotFound)?),
                    None => None,
                };
                if let Some(to) = to {
                    if to.id == hold.wallet_id {
                        return Err(Rejection::SameWalletTransfer);
                    }
                    same_currency(hold.currency, to.currency)?;
                }
                check_active(hold, now)?;
                let captured = amount.unwrap_or(hold.amount);
                if captured > hold.amount {
                    return Err(Rejection::CaptureExceedsHold);
                }
                let to_balance = to.map(|to| balance_of(to) + i128::from(captured.minor()));
                if to_balance.is_some_and(|balance| !fits(balance)) {
                    return Err(Rejection::BalanceLimitExceeded);
                }
                let from = self.wallet(&hold.wallet_id).expect("a hold's wallet exists");
                let posting = Posting {
                    source: Account::Wallet(from.id),
                    destination: to.map_or(Account::World(hold.currency), |to| Account::Wallet(to.id)),
                    currency: hold.currency,
                    amount: captured,
                };
                let released = Amount::from_minor(hold.amount.minor() - captured.minor()).expect("below the hold");
                let kind = EventKind::HoldCaptured { hold_id: *hold_id, captured, released, destination: *destination };
                let from_balance = balance_of(from) - i128::from(captured.minor());
                let from_held = held_of(from) - i128::from(hold.amount.minor());
                let mut captured_event = event(from, kind, Some(posting), from_balance, from_held);
                captured_event.description = description.clone();
                events.push(captured_event);
                if let (Some(to), Some(to_balance)) = (to, to_balance) {
                    let kind = EventKind::CaptureReceived { hold_id: *hold_id, source: from.id };
                    let mut received = event(to, kind, Some(posting), to_balance, held_of(to));
                    received.description = description.clone();
                    events.push(received);
                }
            }
            CommandKind::VoidHold { hold_id } => {
                let hold = self.holds.get(hold_id).ok_or(Rejection::HoldNotFound)?;
                check_active(hold, now)?;
                let wallet = self.wallet(&hold.wallet_id).expect("a hold's wallet exists");
                let kind = EventKind::HoldVoided { hold_id: *hold_id, released: hold.amount };
                let held = held_of(wallet) - i128::from(hold.amount.minor());
                events.push(event(wallet, kind, None, balance_of(wallet), held));
            }
            CommandKind::ExpireHolds => {
                // Several holds of one wallet may lapse together: their events take consecutive
                // versions, so track each touched wallet's version and held amount as we go.
                let mut touched: BTreeMap<WalletId, (u64, i128)> = BTreeMap::new();
                #[cfg(madsim)]
                let now = if crate::planted::is_planted(crate::planted::Bug::ExpiryIgnoresNow) {
                    Timestamp::from_unix_micros(u64::MAX)
                } else {
                    now
                };
                let due = self.hold_expiries.iter().take_while(|(expires_at, _)| *expires_at <= now);
                for (_, hold_id) in due.take(MAX_EXPIRIES_PER_COMMAND) {
                    let hold = &self.holds[hold_id];
                    let wallet = self.wallet(&hold.wallet_id).expect("a hold's wallet exists");
                    let (version, held) = touched.entry(wallet.id).or_insert((wallet.version, held_of(wallet)));
                    *version += 1;
                    *held -= i128::from(hold.amount.minor());
                    let mut expired = event(
                        wallet,
                        EventKind::HoldExpired { hold_id: *hold_id, released: hold.amount },
                        None,
                        balance_of(wallet),
                        *held,
                    );
                    expired.version = *version;
                    events.push(expired);
                }
            }
            // Groups are decided by `decide_group`, which never hands one to a leg.
            CommandKind::Atomic(_) => return Err(Rejection::InvalidAtomicGroup),
        }
        Ok(())
    }

    /// Decides an atomic group leg by leg, applying each accepted leg's events at once (with the
    /// command's memo, without its reference) so the next leg sees them. Returns what puts the
    /// ledger back, or the first refused leg's rejection with the ledger as it was and no events.
    fn decide_group(
        &mut self,
        now: Timestamp,
        transaction_id: TransactionId,
        command: &Command,
        legs: &[CommandKind],
        events: &mut Vec<Event>,
    ) -> Result<GroupUndo, (Rejection, Option<u16>)> {
        let nested = |leg: &CommandKind| matches!(leg, CommandKind::Atomic(_) | CommandKind::ExpireHolds);
        if legs.is_empty() || legs.len() > MAX_ATOMIC_LEGS || legs.iter().any(nested) {
            return Err((Rejection::InvalidAtomicGroup, None));
        }
        let start = events.len();
        let mut log = GroupUndo { world: self.world, steps: Vec::with_capacity(legs.len() * 2) };
        for (index, leg) in legs.iter().enumerate() {
            let leg_start = events.len();
            let mut touched = Touched::new();
            if let Err(rejection) = self.decide(now, transaction_id, command.id, leg, events, &mut touched) {
                events.truncate(start);
                #[cfg(madsim)]
                if crate::planted::is_planted(crate::planted::Bug::GroupPartlyUndone) {
                    let index = u16::try_from(index).expect("MAX_ATOMIC_LEGS fits u16");
                    return Err((rejection, Some(index)));
                }
                self.undo(log);
                let index = u16::try_from(index).expect("MAX_ATOMIC_LEGS fits u16");
                return Err((rejection, Some(index)));
            }
            for offset in 0..events.len() - leg_start {
                let event = &mut events[leg_start + offset];
                if !command.memo.is_empty() {
                    event.memo = command.memo.clone();
                }
                let event = &events[leg_start + offset];
                self.remember_for_undo(event, &mut log.steps);
                if let Err(error) = self.apply_at(event, touched.get(offset).copied(), false) {
                    panic!("the ledger emitted an event it cannot apply: {error}");
                }
            }
        }
        Ok(log)
    }

    /// Records what applying `event` will change, before it is applied.
    fn remember_for_undo(&self, event: &Event, steps: &mut Vec<UndoStep>) {
        match &event.kind {
            EventKind::WalletCreated { .. } => steps.push(UndoStep::Created),
            _ => {
                if let Some(position) = self.wallets.position(&event.wallet_id) {
                    let wallet = self.wallets.at(position);
                    steps.push(UndoStep::Wallet {
                        position,
                        balance: wallet.balance,
                        held: wallet.held,
                        version: wallet.version,
                        updated_at: wallet.updated_at,
                    });
                }
            }
        }
        match &event.kind {
            EventKind::HoldPlaced { hold_id, .. } => steps.push(UndoStep::HoldPlaced(*hold_id)),
            EventKind::HoldCaptured { hold_id, .. }
            | EventKind::HoldVoided { hold_id, .. }
            | EventKind::HoldExpired { hold_id, .. } => {
                if let Some(hold) = self.holds.get(hold_id) {
                    steps.push(UndoStep::HoldFinished(hold.clone()));
                }
            }
            _ => {}
        }
    }

    /// Puts back everything an atomic group's applied legs changed, newest first.
    fn undo(&mut self, log: GroupUndo) {
        let owner_of =
            |ledger: &Ledger, wallet_id: &WalletId| ledger.wallets.get(wallet_id).map(|wallet| wallet.owner_id);
        for step in log.steps.into_iter().rev() {
            match step {
                UndoStep::Wallet { position, balance, held, version, updated_at } => {
                    let wallet = self.wallets.at_mut(position);
                    wallet.balance = balance;
                    wallet.held = held;
                    wallet.version = version;
                    wallet.updated_at = updated_at;
                }
                UndoStep::Created => {
                    let wallet = self.wallets.pop().expect("an undone creation is the newest wallet");
                    self.adjust_usage(wallet.owner_id, |usage| usage.wallets -= 1);
                }
                UndoStep::HoldPlaced(hold_id) => {
                    let hold = self.holds.remove(&hold_id).expect("an undone hold exists");
                    if let Some(expires_at) = hold.expires_at {
                        self.hold_expiries.remove(&(expires_at, hold_id));
                    }
                    if let Some(owner) = owner_of(self, &hold.wallet_id) {
                        self.adjust_usage(owner, |usage| usage.active_holds -= 1);
                    }
                }
                UndoStep::HoldFinished(hold) => {
                    if let Some(expires_at) = hold.expires_at {
                        self.hold_expiries.insert((expires_at, hold.id));
                    }
                    if let Some(owner) = owner_of(self, &hold.wallet_id) {
                        self.adjust_usage(owner, |usage| usage.active_holds += 1);
                    }
                    self.holds.insert(hold.id, hold);
                }
            }
        }
        self.world = log.world;
    }

    /// Changes an owner's usage, dropping it when nothing is left (as a recount would).
    fn adjust_usage(&mut self, owner: OwnerId, change: impl FnOnce(&mut Usage)) {
        let usage = self.usage.entry(owner).or_default();
        change(usage);
        if *usage == Usage::default() {
            self.usage.remove(&owner);
        }
    }

    /// Checks every invariant of the state; `execute` asserts it after each command in debug builds.
    ///
    /// - conservation: per currency, the wallets and the `@world` account sum to zero;
    /// - floors: no balance, and no balance minus holds, is below minus the overdraft limit, and no
    ///   balance exceeds [`MAX_BALANCE_MINOR`];
    /// - holds: a wallet's `held` is the sum of its active holds, whose currency is the wallet's, and
    ///   the expiry index lists exactly the active holds that have an expiry;
    /// - streams: every wallet has at least its creation event (contiguity of versions is enforced
    ///   event by event in [`Ledger::apply`]);
    /// - memory of commands: every record is indexed, oldest first, none from the future.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let violation = |text: String| Err(InvariantViolation(text));
        let mut totals = self.world;
        let mut active_held: BTreeMap<WalletId, u64> = BTreeMap::new();
        let mut expiries = BTreeSet::new();
        for hold in self.holds.values() {
            let Some(wallet) = self.wallet(&hold.wallet_id) else {
                return violation(format!("hold {} names a missing wallet", hold.id));
            };
            if hold.currency != wallet.currency || hold.amount.is_zero() {
                return violation(format!("hold {} has another currency or no amount", hold.id));
            }
            if hold.status == HoldStatus::Active {
                *active_held.entry(hold.wallet_id).or_default() += hold.amount.minor();
                if let Some(expires_at) = hold.expires_at {
                    expiries.insert((expires_at, hold.id));
                }
            }
        }
        if expiries != self.hold_expiries {
            return violation("the expiry index differs from the active holds".to_owned());
        }
        // The indexes are built only by `tables.rs`; checking them costs a lookup per entry, so
        // release builds (which restore million-wallet snapshots) trust them.
        if cfg!(debug_assertions) {
            self.wallets.check_index().map_err(InvariantViolation)?;
            self.commands.check_index().map_err(InvariantViolation)?;
        }
        for wallet in self.wallets.as_slice() {
            totals[wallet.currency.index()] += i128::from(wallet.balance);
            let balance = i128::from(wallet.balance);
            if balance < wallet.floor() || wallet.available() < 0 || wallet.balance > MAX_BALANCE_MINOR {
                return violation(format!(
                    "wallet {} balance {} held {} overdraft {} is out of bounds",
                    wallet.id,
                    wallet.balance,
                    wallet.held,
                    wallet.overdraft_limit.minor()
                ));
            }
            if active_held.get(&wallet.id).copied().unwrap_or(0) != wallet.held {
                return violation(format!("wallet {} held {} differs from its active holds", wallet.id, wallet.held));
            }
            if wallet.version == 0 {
                return violation(format!("wallet {} has no events", wallet.id));
            }
        }
        if let Some(currency) = Currency::ALL.iter().find(|currency| totals[currency.index()] != 0) {
            return violation(format!("{currency} sums to {} instead of zero", totals[currency.index()]));
        }
        let mut previous_at = Timestamp::ZERO;
        for record in self.commands.iter() {
            if record.at < previous_at || record.at > self.clock || record.transaction_id > self.last_transaction_id {
                return violation(format!("command {} is out of order", record.command_id));
            }
            previous_at = record.at;
        }
        Ok(())
    }
}

fn positive(amount: Amount) -> Result<(), Rejection> {
    if amount.is_zero() { Err(Rejection::InvalidAmount) } else { Ok(()) }
}

fn same_currency(requested: Currency, actual: Currency) -> Result<(), Rejection> {
    if requested == actual { Ok(()) } else { Err(Rejection::CurrencyMismatch) }
}

fn covers(wallet: &Wallet, amount: Amount) -> Result<(), Rejection> {
    #[cfg(madsim)]
    if crate::planted::is_planted(crate::planted::Bug::OverdraftOffByOne) {
        let allowed = wallet.available() + 1 >= i128::from(amount.minor());
        return if allowed { Ok(()) } else { Err(Rejection::InsufficientFunds) };
    }
    if wallet.available() >= i128::from(amount.minor()) { Ok(()) } else { Err(Rejection::InsufficientFunds) }
}

fn check_active(hold: &Hold, now: Timestamp) -> Result<(), Rejection> {
    match hold.status {
        HoldStatus::Captured { .. } | HoldStatus::Voided => Err(Rejection::HoldNotActive),
        HoldStatus::Expired => Err(Rejection::HoldExpired),
        HoldStatus::Active if hold.is_lapsed(now) => Err(Rejection::HoldExpired),
        HoldStatus::Active => Ok(()),
    }
}

/// Positions of the wallets a command's events touch, in event order, when there are at most two.
type Touched = arrayvec::ArrayVec<usize, 2>;

/// What an atomic group's applied legs changed: the system accounts as they were, and one step
/// per change to a wallet or hold, oldest first.
#[derive(Debug)]
struct GroupUndo {
    world: [i128; Currency::COUNT],
    steps: Vec<UndoStep>,
}

#[derive(Debug)]
enum UndoStep {
    /// A wallet's moving parts before an event.
    Wallet { position: usize, balance: i64, held: u64, version: u64, updated_at: Timestamp },
    /// The newest wallet was created.
    Created,
    /// A hold was placed.
    HoldPlaced(HoldId),
    /// A hold, active as it was, was finished.
    HoldFinished(Hold),
}
