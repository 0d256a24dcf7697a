//! Hash flooding: ids chosen to collide under an unkeyed hash must cost what random ids cost.
//!
//! The colliding ids are real: 32-byte wallet ids (four 8-byte words) that FxHash, the engine's
//! earlier index hash, maps to one value. FxHash folds the words as `h = (h + w) * K`, so two ids
//! collide when their byte differences `d` satisfy `Σ d[i][j] · 256^j · K^(3-i) ≡ 0 (mod 2^64)`.
//! The 16 difference vectors below are short solutions of that congruence, found once by lattice
//! reduction (fpylll's BKZ on the 32-dimensional kernel lattice); adding any subset of them to a
//! base id of 'n's keeps every byte a letter in most cases and keeps the FxHash value. The test
//! checks that claim itself before it measures anything.

use std::hash::BuildHasher;
use std::hint::black_box;
use std::time::{Duration, Instant};

use super::{CommandMemory, HashSeed, WalletTable};
use crate::ledger::{CommandRecord, Wallet};
use crate::{Amount, CommandId, Currency, Fingerprint, OwnerId, Timestamp, TransactionId, WalletId};

const IDS: usize = 50_000;

const DIFFERENCES: [[i8; 32]; 16] = [
    [0, 0, 0, 0, 0, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1],
    [0, 0, 0, 0, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 1, -2],
    [0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, -2, -2, 1, 0, 0, 0, 0, 0, -2, 1, -1, 0, 0, 0, 0, 0, -1, -2, 1],
    [0, 0, 0, 0, -1, 0, -1, 0, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 0, 0, 2, 1, -1, -1, 0, 0, 0, 0, 1, -2, 2, -2],
    [0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, -2, -2, 0, 0, 0, 0, 0, 0, -2, -1, 1, 1, 0, 0, 0, 0, -1, 2, -2, 2, 0],
    [0, 0, 0, 0, -1, -2, 0, -2, 0, 0, 0, 0, 2, 2, -1, 0, 0, 0, 0, 0, 2, -1, 1, -2, 0, 0, 0, 0, 1, 2, -1, 0],
    [0, 0, 1, 0, 1, 0, 0, -1, 0, 0, -2, -2, 0, 0, 0, -1, 0, 0, -2, -1, 1, 1, 0, -1, 0, 0, -1, 2, -2, 2, 0, -2],
    [0, -1, 0, -1, 0, 0, 2, 1, 0, 2, 2, 0, 0, 0, -1, -1, 0, 2, 1, -1, -1, 0, -1, -1, 0, 1, -2, 2, -2, 0, 1, 0],
    [1, 0, 1, 0, 0, -2, 0, 1, -2, -2, 0, 0, 0, 1, -1, 1, -2, -1, 1, 1, 0, 1, -1, 0, -1, 2, -2, 2, 0, -1, -1, 0],
    [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, -2, 0, 0, 0, 0, 0, 0, 0, 2],
    [0, 0, 0, 0, 0, 0, -1, -1, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, -3, 0, 0, 0, 0, 0, 0, 1, 1],
    [0, 0, 0, 0, 0, -1, -3, 0, 0, 0, 0, 0, 0, 2, -1, 1, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 1, 0, -1],
    [0, 0, 0, 0, 0, 1, -1, -1, 0, 0, 0, 0, 0, -2, 0, 2, 0, 0, 0, 0, 0, -2, 1, 0, 0, 0, 0, 0, 0, -1, 3, 0],
    [0, 0, 0, 0, 1, 3, 0, -1, 0, 0, 0, 0, -2, 1, -1, -1, 0, 0, 0, 0, -2, -1, 0, -2, 0, 0, 0, 0, -1, 0, 1, 0],
    [0, 0, 0, 1, 3, 0, -1, 1, 0, 0, 0, -2, 1, -1, -1, 0, 0, 0, 0, -2, -1, 0, -2, -1, 0, 0, 0, -1, 0, 1, 0, -1],
    [0, 0, 1, 3, 0, -1, 1, -3, 0, 0, -2, 1, -1, -1, 0, 0, 0, 0, -2, -1, 0, -2, -1, 1, 0, 0, -1, 0, 1, 0, -1, 0],
];

/// `IDS` distinct 32-letter wallet ids with one FxHash value.
fn colliding_wallet_ids() -> Vec<WalletId> {
    let mut ids = Vec::with_capacity(IDS);
    for subset in 0u32..(1 << DIFFERENCES.len()) {
        let mut bytes = [b'n'; 32];
        let mut letters = true;
        for (position, byte) in bytes.iter_mut().enumerate() {
            let delta: i32 = (0..DIFFERENCES.len())
                .filter(|vector| subset >> vector & 1 == 1)
                .map(|vector| i32::from(DIFFERENCES[vector][position]))
                .sum();
            match u8::try_from(i32::from(*byte) + delta) {
                Ok(shifted) if shifted.is_ascii_lowercase() => *byte = shifted,
                _ => letters = false,
            }
        }
        if letters {
            ids.push(WalletId::parse(std::str::from_utf8(&bytes).expect("ASCII")).expect("a valid id"));
            if ids.len() == IDS {
                return ids;
            }
        }
    }
    panic!("the difference vectors give fewer than {IDS} letter-only ids");
}

/// `IDS` command ids with one FxHash value: FxHash folds a `u128` as its two halves, so
/// `high = c - low · K` collides for every `low`.
fn colliding_command_ids() -> Vec<CommandId> {
    const K: u64 = 0xf1357aea2e62a9c5;
    (1..=IDS as u64)
        .map(|low| CommandId(u128::from(0u64.wrapping_sub(low.wrapping_mul(K))) << 64 | u128::from(low)))
        .collect()
}

/// A small deterministic generator (SplitMix64) for the random ids the colliding ones are compared
/// with.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn random_wallet_ids() -> Vec<WalletId> {
    let mut state = 7;
    (0..IDS)
        .map(|_| {
            let bytes: Vec<u8> = (0..32).map(|_| b'a' + (splitmix(&mut state) % 26) as u8).collect();
            WalletId::parse(std::str::from_utf8(&bytes).expect("ASCII")).expect("a valid id")
        })
        .collect()
}

fn random_command_ids() -> Vec<CommandId> {
    let mut state = 11;
    (0..IDS).map(|_| CommandId(u128::from(splitmix(&mut state)) << 64 | u128::from(splitmix(&mut state)))).collect()
}

fn wallet(id: WalletId) -> Wallet {
    Wallet {
        id,
        owner_id: OwnerId::parse("owner").expect("a valid id"),
        currency: Currency::USD,
        balance: 0,
        held: 0,
        overdraft_limit: Amount::ZERO,
        version: 1,
        created_at: Timestamp::ZERO,
        updated_at: Timestamp::ZERO,
        memo: None,
    }
}

fn record(command_id: CommandId, sequence: usize) -> CommandRecord {
    CommandRecord {
        command_id,
        fingerprint: Fingerprint(0),
        at: Timestamp::ZERO,
        transaction_id: TransactionId(sequence as u64 + 1),
        result: Ok(()),
        refused_leg: None,
    }
}

/// Creates every wallet one by one, looks each up, then rebuilds the table as a restore does.
fn create_and_restore_wallets(seed: HashSeed, ids: &[WalletId]) -> Duration {
    let started = Instant::now();
    let mut table = WalletTable::new(seed);
    for id in ids {
        table.push(wallet(*id)).expect("distinct ids");
    }
    assert!(ids.iter().all(|id| table.contains(id)));
    let restored = WalletTable::from_wallets(seed, table.as_slice().to_vec()).expect("distinct ids");
    black_box(restored);
    started.elapsed()
}

/// Remembers every command one by one, looks each up, then rebuilds the memory as a restore does.
fn remember_and_restore_commands(seed: HashSeed, ids: &[CommandId]) -> Duration {
    let started = Instant::now();
    let mut memory = CommandMemory::new(seed);
    for (sequence, id) in ids.iter().enumerate() {
        memory.remember(record(*id, sequence));
    }
    assert!(ids.iter().all(|id| memory.get(id).is_some()));
    let restored = CommandMemory::from_records(seed, memory.iter().cloned().collect()).expect("distinct ids");
    black_box(restored);
    started.elapsed()
}

/// The fastest of five interleaved runs of each, so a busy machine slows both alike.
fn best_of_five(seed: HashSeed, mut run: impl FnMut(HashSeed, bool) -> Duration) -> (Duration, Duration) {
    let (mut random, mut colliding) = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        random = random.min(run(seed, false));
        colliding = colliding.min(run(seed, true));
    }
    (random, colliding)
}

#[test]
fn the_colliding_ids_collide_under_fxhash() {
    let fx = rustc_hash::FxBuildHasher;
    let wallets = colliding_wallet_ids();
    let first = fx.hash_one(wallets[0]);
    assert!(wallets.iter().all(|id| fx.hash_one(id) == first));
    assert_eq!(wallets.iter().collect::<std::collections::BTreeSet<_>>().len(), IDS, "all distinct");
    let commands = colliding_command_ids();
    let first = fx.hash_one(commands[0]);
    assert!(commands.iter().all(|id| fx.hash_one(id) == first));
    assert_eq!(commands.iter().collect::<std::collections::BTreeSet<_>>().len(), IDS, "all distinct");
}

#[test]
fn ids_that_collide_under_fxhash_cost_what_random_ids_cost() {
    let seed = HashSeed::new(0x5eed_0001, 0x5eed_0002);
    let (colliding, random) = (colliding_wallet_ids(), random_wallet_ids());
    let (random_time, colliding_time) = best_of_five(seed, |seed, collide| {
        create_and_restore_wallets(seed, if collide { &colliding } else { &random })
    });
    assert!(
        colliding_time <= 2 * random_time,
        "{IDS} colliding wallet ids took {colliding_time:?}, random ones {random_time:?}"
    );

    let (colliding, random) = (colliding_command_ids(), random_command_ids());
    let (random_time, colliding_time) = best_of_five(seed, |seed, collide| {
        remember_and_restore_commands(seed, if collide { &colliding } else { &random })
    });
    assert!(
        colliding_time <= 2 * random_time,
        "{IDS} colliding command ids took {colliding_time:?}, random ones {random_time:?}"
    );
}
