//! The clients: each on its own node, sending create, credit, debit, transfer and hold commands to
//! the app's service layer with an idempotency key (the command id), retrying a timed-out or
//! unavailable attempt with the same key, and recording every attempt and answer.
//!
//! Amounts are small against balances, and some debits and transfers probe the exact boundary of
//! what the wallet can spend (the available balance the client last saw, and one more), so that an
//! off-by-one in the overdraft rule shows within a few seeds.

use std::collections::BTreeMap;
use std::time::Duration;

use madsim::net::Endpoint;
use madsim::rand::{Rng, thread_rng};
use wallex_engine::{
    Amount, Command, CommandId, CommandKind, CommandRecord, Currency, Description, Event, HoldId, OwnerId, Timestamp,
    WalletId,
};
use wallex_pipeline::Reply;

use crate::rpc::{self, APP_SERVICE};
use crate::swarm::Link;
use crate::world::world;

/// How long a client waits for one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(2_000);
/// How long after the fault phase a client may still be retrying its last operation: the liveness
/// bound. Past it the operation is recorded as never answered, and the seed fails.
pub const LIVENESS_MS: u64 = 30_000;

/// What one attempt got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    Timeout,
    Unavailable,
    InFlight,
    KeyReused,
    Decided { replayed: bool },
}

/// A decided answer: the command's record and its events.
pub type Decision = (CommandRecord, Vec<Event>);

/// One operation: the command (its id is the idempotency key), every attempt, and the decided
/// answer if one came.
#[derive(Clone, Debug)]
pub struct Operation {
    pub client: usize,
    pub command: Command,
    pub attempts: Vec<Attempt>,
    pub decided: Option<Decision>,
    /// A second copy of the first attempt, sent at the same time under the same key, and what it
    /// got: the same decision, or "in flight", never a second effect.
    pub twin: Option<(Attempt, Option<Decision>)>,
    /// After the decision, the same key sent with another body: every definitive answer must be
    /// "key reused" (422), and nothing applied.
    pub reuse: Vec<Attempt>,
}

pub fn wallet_id(index: usize) -> WalletId {
    WalletId::parse(&format!("w{index}")).expect("a valid wallet id")
}

/// The currency of wallet `index`: one JPY wallet among USD ones, so currency mismatches happen.
pub fn currency_of(index: usize) -> Currency {
    if index == 2 { Currency::JPY } else { Currency::USD }
}

/// What a client believes about a wallet, from the events it was answered with.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    balance: i64,
    held: u64,
    overdraft: u64,
    version: u64,
}

struct Client {
    index: usize,
    endpoint: Endpoint,
    /// The app node this client sends to; it moves to the next after an attempt that timed out
    /// or was refused as unavailable (as a client behind a load balancer is moved on).
    app: std::sync::atomic::AtomicUsize,
    next_op: u64,
    holds: Vec<HoldId>,
    seen: BTreeMap<WalletId, Seen>,
    log: Vec<Operation>,
}

pub async fn run_client(index: usize) -> Vec<Operation> {
    let endpoint = Endpoint::bind(rpc::client_addr(index)).await.expect("the client's address is free");
    let app = std::sync::atomic::AtomicUsize::new(index);
    let mut client =
        Client { index, endpoint, app, next_op: 0, holds: Vec::new(), seen: BTreeMap::new(), log: Vec::new() };
    let world = world();
    let swarm = world.swarm.clone();
    for wallet in (0..swarm.wallets).filter(|wallet| wallet % swarm.clients == index) {
        let initial = thread_rng().gen_range(0..=2_000);
        let overdraft = if wallet == 1 { 500 } else { 0 };
        let kind = CommandKind::CreateWallet {
            wallet_id: wallet_id(wallet),
            owner_id: OwnerId::parse(&format!("owner-{index}")).expect("a valid owner"),
            currency: currency_of(wallet),
            initial_balance: amount(initial),
            overdraft_limit: amount(overdraft),
        };
        client.perform(kind).await;
    }
    let phase = Duration::from_millis(swarm.fault_phase_ms);
    while world.elapsed() < phase {
        let think = thread_rng().gen_range(0..=swarm.think_ms);
        tokio::time::sleep(Duration::from_millis(think)).await;
        if thread_rng().gen_bool(0.08) {
            // A batch request: several operations in one call, each with its own key.
            let kinds = (0..thread_rng().gen_range(2..=5)).map(|_| client.draw(swarm.wallets)).collect();
            client.perform_batch(kinds).await;
        } else {
            let kind = client.draw(swarm.wallets);
            client.perform(kind).await;
        }
    }
    client.log
}

fn amount(minor: u64) -> Amount {
    Amount::from_minor(minor).expect("a small amount")
}

impl Client {
    /// One operation; now and then an atomic group of two to four of them (a payment and its fee,
    /// a split), which the engine decides as one.
    fn draw(&mut self, wallets: usize) -> CommandKind {
        if thread_rng().gen_bool(0.03) {
            // Any legs: refusals of every kind, undone.
            let legs = thread_rng().gen_range(2..=4);
            CommandKind::Atomic((0..legs).map(|_| self.draw_one(wallets)).collect())
        } else if thread_rng().gen_bool(0.04) {
            // A payment and its fee, between wallets of one currency: mostly accepted.
            let mut rng = thread_rng();
            let usd: Vec<usize> = (0..wallets).filter(|index| currency_of(*index) == Currency::USD).collect();
            let payer = usd[rng.gen_range(0..usd.len())];
            let others: Vec<usize> = usd.iter().copied().filter(|index| *index != payer).collect();
            if others.is_empty() {
                return self.draw_one(wallets);
            }
            let leg = |destination: usize, minor: u64| CommandKind::Transfer {
                source: wallet_id(payer),
                destination: wallet_id(destination),
                currency: Currency::USD,
                amount: amount(minor),
                description: None,
            };
            let mut legs = vec![
                leg(others[rng.gen_range(0..others.len())], rng.gen_range(1..=300)),
                leg(others[rng.gen_range(0..others.len())], rng.gen_range(1..=20)),
            ];
            if rng.gen_bool(0.3) {
                // Funded in the same transaction: the legs after it see the credit.
                let credit = amount(rng.gen_range(1..=400));
                legs.insert(
                    0,
                    CommandKind::Credit {
                        wallet_id: wallet_id(payer),
                        currency: Currency::USD,
                        amount: credit,
                        description: None,
                    },
                );
            }
            CommandKind::Atomic(legs)
        } else {
            self.draw_one(wallets)
        }
    }

    fn draw_one(&mut self, wallets: usize) -> CommandKind {
        let mut rng = thread_rng();
        let index = rng.gen_range(0..wallets);
        let wallet = wallet_id(index);
        let currency = if rng.gen_bool(0.03) { Currency::EUR } else { currency_of(index) };
        let description = rng.gen_bool(0.3).then(|| Description::parse("sim").expect("a valid description"));
        let seen = self.seen.get(&wallet).copied();
        // The available balance as last seen, and one more: the exact edge of the overdraft rule.
        let edge = |rng: &mut madsim::rand::GlobalRng| match seen {
            Some(seen) if rng.gen_bool(0.5) => {
                let available = i128::from(seen.balance) - i128::from(seen.held) + i128::from(seen.overdraft);
                let probe = available + i128::from(rng.gen_range(0..=1u8));
                amount(u64::try_from(probe).unwrap_or(0).max(1))
            }
            _ => amount(rng.gen_range(1..=800)),
        };
        match rng.gen_range(0..100) {
            0..20 => CommandKind::Credit {
                wallet_id: wallet,
                currency,
                amount: amount(rng.gen_range(1..=1_000)),
                description,
            },
            20..42 => CommandKind::Debit { wallet_id: wallet, currency, amount: edge(&mut rng), description },
            42..67 => {
                let destination = wallet_id(rng.gen_range(0..wallets));
                CommandKind::Transfer { source: wallet, destination, currency, amount: edge(&mut rng), description }
            }
            67..80 => {
                let hold_id =
                    HoldId::parse(&format!("c{}-h{}", self.index, self.holds.len())).expect("a valid hold id");
                self.holds.push(hold_id);
                let now = world().now().unix_micros();
                let expires_at =
                    rng.gen_bool(0.7).then(|| Timestamp::from_unix_micros(now + rng.gen_range(300_000..=20_000_000)));
                CommandKind::PlaceHold {
                    hold_id,
                    wallet_id: wallet,
                    currency,
                    amount: edge(&mut rng),
                    expires_at,
                    description,
                }
            }
            80..98 if !self.holds.is_empty() => {
                let hold_id = self.holds[rng.gen_range(0..self.holds.len())];
                if rng.gen_bool(0.4) {
                    CommandKind::VoidHold { hold_id }
                } else {
                    let partial = rng.gen_bool(0.4).then(|| amount(rng.gen_range(1..=300)));
                    let destination = rng.gen_bool(0.5).then(|| wallet_id(rng.gen_range(0..wallets)));
                    CommandKind::CaptureHold { hold_id, amount: partial, destination, description }
                }
            }
            _ => CommandKind::Credit {
                wallet_id: wallet,
                currency,
                amount: amount(rng.gen_range(1..=1_000)),
                description,
            },
        }
    }

    /// A fresh command id, and sometimes a reference (from a small set, so they repeat and collide)
    /// and metadata: a retry must replay, never meet its own reference as `reference_exists`.
    fn command(&mut self, kind: CommandKind) -> Command {
        self.next_op += 1;
        let id = CommandId((1u128 << 100) | ((self.index as u128) << 32) | u128::from(self.next_op));
        let memo = if thread_rng().gen_bool(0.2) {
            let reference = format!("ref-{}", thread_rng().gen_range(0..40));
            wallex_engine::Memo {
                reference: Some(wallex_engine::Reference::parse(&reference).expect("a valid reference")),
                metadata: wallex_engine::Metadata::parse([("client", self.index.to_string().as_str())])
                    .expect("valid metadata"),
                correlation_id: None,
            }
        } else {
            wallex_engine::Memo::default()
        };
        Command { id, kind, memo }
    }

    fn operation(&self, command: &Command) -> Operation {
        Operation {
            client: self.index,
            command: command.clone(),
            attempts: Vec::new(),
            decided: None,
            twin: None,
            reuse: Vec::new(),
        }
    }

    /// Records one attempt's answer in `operation`; whether it is final (decided, or the key is
    /// refused as reused).
    fn answered(&mut self, operation: &mut Operation, answer: Result<Reply, rpc::RpcError>) -> bool {
        let id = operation.command.id;
        let attempt = match answer {
            Ok(Reply::Decided { record, events, replayed }) => {
                for event in &events {
                    let seen = self.seen.entry(event.wallet_id).or_default();
                    if event.version > seen.version {
                        seen.balance = event.balance_after;
                        seen.held = event.held_after;
                        seen.version = event.version;
                        if let wallex_engine::EventKind::WalletCreated { overdraft_limit, .. } = &event.kind {
                            seen.overdraft = overdraft_limit.minor();
                        }
                    }
                }
                let verdict = record.result.map_or_else(|rejection| rejection.code().to_owned(), |()| "ok".to_owned());
                world().note(format_args!(
                    "client {} answer {id}: tx {} {verdict}{}",
                    self.index,
                    record.transaction_id,
                    if replayed { " (replayed)" } else { "" }
                ));
                operation.decided = Some((record, events));
                Attempt::Decided { replayed }
            }
            Ok(Reply::KeyReused { .. }) => Attempt::KeyReused,
            Ok(Reply::InFlight) => Attempt::InFlight,
            Ok(Reply::Unavailable(_) | Reply::Unconfirmed { .. }) => Attempt::Unavailable,
            Err(_) => Attempt::Timeout,
        };
        let done = matches!(attempt, Attempt::Decided { .. } | Attempt::KeyReused);
        operation.attempts.push(attempt);
        done
    }

    /// Submits one command until it is decided, retrying with the same id, up to the liveness bound.
    async fn perform(&mut self, kind: CommandKind) {
        let world = world();
        let command = self.command(kind);
        let id = command.id;
        let mut operation = self.operation(&command);
        let mut twin = thread_rng().gen_bool(0.05);
        let give_up = Duration::from_millis(world.swarm.fault_phase_ms + LIVENESS_MS);
        world.note(format_args!("client {} submit {} {}", self.index, id, command.kind.name()));
        while world.elapsed() < give_up {
            let answer: Result<Reply, _> = if std::mem::take(&mut twin) {
                world.note(format_args!("client {} submits {id} twice at once", self.index));
                let (first, second) = tokio::join!(self.submit(&command), self.submit(&command));
                operation.twin = Some(classify(second));
                first
            } else {
                self.submit(&command).await
            };
            if self.answered(&mut operation, answer) {
                break;
            }
            let backoff = thread_rng().gen_range(50..=400);
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
        if operation.decided.is_some() && thread_rng().gen_bool(0.05) {
            // The same key with another body: a client bug the service must refuse, every time.
            let other = Command {
                id,
                kind: CommandKind::VoidHold { hold_id: HoldId::parse("reused-key").expect("a valid hold id") },
                memo: Default::default(),
            };
            world.note(format_args!("client {} reuses {id} for another body", self.index));
            for _ in 0..20 {
                let (attempt, _) = classify(self.submit(&other).await);
                let definitive = !matches!(attempt, Attempt::Timeout | Attempt::Unavailable);
                operation.reuse.push(attempt);
                if definitive {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(50..=400))).await;
            }
        }
        self.log.push(operation);
    }

    /// Submits several commands as one batch request until each is decided: a retry sends again,
    /// as one batch with the same ids, those not yet decided.
    async fn perform_batch(&mut self, kinds: Vec<CommandKind>) {
        let world = world();
        let mut operations: Vec<Operation> = kinds
            .into_iter()
            .map(|kind| {
                let command = self.command(kind);
                self.operation(&command)
            })
            .collect();
        for operation in &operations {
            let command = &operation.command;
            world.note(format_args!("client {} submit {} {} in a batch", self.index, command.id, command.kind.name()));
        }
        let give_up = Duration::from_millis(world.swarm.fault_phase_ms + LIVENESS_MS);
        while world.elapsed() < give_up {
            let open: Vec<usize> = (0..operations.len()).filter(|index| !final_answer(&operations[*index])).collect();
            if open.is_empty() {
                break;
            }
            let batch: Vec<Command> = open.iter().map(|index| operations[*index].command.clone()).collect();
            match self.submit_all(batch).await {
                Ok(replies) => {
                    assert_eq!(replies.len(), open.len(), "one answer per command of a batch");
                    for (index, reply) in open.iter().zip(replies) {
                        self.answered(&mut operations[*index], Ok(reply));
                    }
                }
                Err(error) => {
                    for index in &open {
                        self.answered(&mut operations[*index], Err(error));
                    }
                }
            }
            if operations.iter().all(final_answer) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(50..=400))).await;
        }
        self.log.extend(operations);
    }

    async fn submit(&self, command: &Command) -> Result<Reply, rpc::RpcError> {
        let mut replies = self.submit_all(vec![command.clone()]).await?;
        assert_eq!(replies.len(), 1, "one answer to one command");
        Ok(replies.remove(0))
    }

    async fn submit_all(&self, commands: Vec<Command>) -> Result<Vec<Reply>, rpc::RpcError> {
        let apps = world().swarm.apps;
        let app = self.app.load(std::sync::atomic::Ordering::Relaxed) % apps;
        let answer: Result<Vec<Reply>, rpc::RpcError> = rpc::call(
            &self.endpoint,
            rpc::app_addr_of(app),
            APP_SERVICE,
            Link::ClientApp,
            "submit",
            commands,
            ATTEMPT_TIMEOUT,
        )
        .await;
        let refused = match &answer {
            Err(_) => true,
            Ok(replies) => replies.iter().any(|reply| matches!(reply, Reply::Unavailable(_))),
        };
        if refused && apps > 1 {
            self.app.store(app + 1, std::sync::atomic::Ordering::Relaxed);
        }
        answer
    }
}

/// Whether an operation has its final answer: decided, or its key refused as reused.
fn final_answer(operation: &Operation) -> bool {
    matches!(operation.attempts.last(), Some(Attempt::Decided { .. } | Attempt::KeyReused))
}

/// An answer as an attempt, with the decision if there was one.
fn classify(answer: Result<Reply, rpc::RpcError>) -> (Attempt, Option<Decision>) {
    match answer {
        Ok(Reply::Decided { record, events, replayed }) => (Attempt::Decided { replayed }, Some((record, events))),
        Ok(Reply::KeyReused { .. }) => (Attempt::KeyReused, None),
        Ok(Reply::InFlight) => (Attempt::InFlight, None),
        Ok(Reply::Unavailable(_) | Reply::Unconfirmed { .. }) => (Attempt::Unavailable, None),
        Err(_) => (Attempt::Timeout, None),
    }
}
