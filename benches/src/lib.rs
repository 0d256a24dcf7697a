//! Shared workload builders for the Wallex benches.
//!
//! The engine workload reproduces the original service's load-test mix: one third credits of 10 to
//! 500, one third debits of 10 to 200 and one third transfers of 10 to 300 (whole dollars), over a
//! fixed set of funded USD wallets. Generation is seeded, so every run measures the same commands.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wallex_engine::{Amount, Command, CommandId, CommandKind, Config, Currency, Ledger, OwnerId, Timestamp, WalletId};

/// Minor units per dollar.
const CENTS: u64 = 100;

/// Every wallet starts with this many dollars.
pub const INITIAL_BALANCE_DOLLARS: u64 = 1_000;

pub fn wallet_id(index: usize) -> WalletId {
    WalletId::parse(&format!("wallet-{index}")).expect("a valid wallet id")
}

fn dollars(amount: u64) -> Amount {
    Amount::from_minor(amount * CENTS).expect("bench amounts are small")
}

/// The commands that create `wallets` funded wallets, ids `1..=wallets`.
pub fn create_wallets(wallets: usize) -> Vec<Command> {
    (0..wallets)
        .map(|index| Command {
            id: CommandId(index as u128 + 1),
            kind: CommandKind::CreateWallet {
                wallet_id: wallet_id(index),
                owner_id: OwnerId::parse(&format!("owner-{}", index % 1_000)).expect("a valid owner id"),
                currency: Currency::USD,
                initial_balance: dollars(INITIAL_BALANCE_DOLLARS),
                overdraft_limit: Amount::ZERO,
            },
        })
        .collect()
}

/// `count` commands of the credit/debit/transfer mix over `wallets` wallets, with ids starting at
/// `first_id`.
pub fn mix(wallets: usize, count: usize, first_id: u128, seed: u64) -> Vec<Command> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|index| {
            let wallet = wallet_id(rng.random_range(0..wallets));
            let kind = match rng.random_range(0..3) {
                0 => CommandKind::Credit {
                    wallet_id: wallet,
                    currency: Currency::USD,
                    amount: dollars(rng.random_range(10..=500)),
                    description: None,
                },
                1 => CommandKind::Debit {
                    wallet_id: wallet,
                    currency: Currency::USD,
                    amount: dollars(rng.random_range(10..=200)),
                    description: None,
                },
                _ => {
                    let mut destination = rng.random_range(0..wallets);
                    if wallet_id(destination) == wallet {
                        destination = (destination + 1) % wallets;
                    }
                    CommandKind::Transfer {
                        source: wallet,
                        destination: wallet_id(destination),
                        currency: Currency::USD,
                        amount: dollars(rng.random_range(10..=300)),
                        description: None,
                    }
                }
            };
            Command { id: CommandId(first_id + index as u128), kind }
        })
        .collect()
}

/// A ledger with `wallets` funded wallets, all created at time 1.
pub fn funded_ledger(config: Config, wallets: usize) -> Ledger {
    let mut ledger = Ledger::new(config);
    let mut events = Vec::new();
    for command in create_wallets(wallets) {
        let outcome = ledger.execute(Timestamp::from_unix_micros(1), &command, &mut events);
        assert!(outcome.result().is_ok(), "creating bench wallets succeeds");
        events.clear();
    }
    ledger
}
