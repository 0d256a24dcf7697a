//! Arbitrary bytes become a command sequence over small colliding pools of wallets and holds; the
//! engine runs it beside the auditor, which must agree on every outcome and every balance, with every
//! invariant holding after each step and replay and snapshots reproducing the ledger at the end.
//!
//! The decoding is deliberately biased toward meaningful commands (small amounts, mostly the wallet's
//! own currency, expiries near now) so the fuzzer spends its time on ledger logic, not on refusals.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use wallex_engine::testkit::{self, CURRENCIES, Draft, HOLDS, Step, WALLETS};
use wallex_engine::{Amount, Config};

/// At most this many steps per input: long enough for holds to lapse and ids to be forgotten.
const MAX_STEPS: usize = 512;

fuzz_target!(|data: &[u8]| {
    let mut input = Unstructured::new(data);
    let Ok((config, steps)) = script(&mut input) else { return };
    if let Err(divergence) = testkit::run(config, &steps) {
        panic!("engine and auditor diverge: {divergence}");
    }
});

fn script(input: &mut Unstructured<'_>) -> Result<(Config, Vec<(i64, Step)>)> {
    let config = Config { command_retention_micros: *input.choose(&[300, 5_000, Config::default().command_retention_micros])?, ..Config::default() };
    let mut steps = Vec::new();
    while !input.is_empty() && steps.len() < MAX_STEPS {
        let tick = match input.int_in_range(0..=15u8)? {
            0 => -input.int_in_range(1..=60i64)?,
            1 => input.int_in_range(200..=3_000i64)?,
            _ => input.int_in_range(0..=20i64)?,
        };
        let step = match input.int_in_range(0..=15u8)? {
            0 => Step::Retry(input.arbitrary()?),
            1 => Step::Reuse(input.arbitrary()?, draft(input)?),
            _ => Step::Fresh(draft(input)?),
        };
        steps.push((tick, step));
    }
    Ok((config, steps))
}

fn draft(input: &mut Unstructured<'_>) -> Result<Draft> {
    if input.ratio(1, 6)? {
        let legs = input.int_in_range(1..=4usize)?;
        return (0..legs).map(|_| operation(input)).collect::<Result<Vec<_>>>().map(Draft::Atomic);
    }
    operation(input)
}

fn operation(input: &mut Unstructured<'_>) -> Result<Draft> {
    let wallet = input.choose_index(WALLETS)?;
    let other = input.choose_index(WALLETS)?;
    let hold = input.choose_index(HOLDS)?;
    let currency = if input.ratio(1, 8)? { Some(input.choose_index(CURRENCIES.len())?) } else { None };
    let minor = amount(input)?;
    Ok(match input.int_in_range(0..=7u8)? {
        0 => Draft::Create { wallet, currency, initial: minor, overdraft: if input.ratio(1, 4)? { amount(input)? } else { 0 } },
        1 => Draft::Credit { wallet, currency, amount: minor, described: input.arbitrary()? },
        2 => Draft::Debit { wallet, currency, amount: minor },
        3 => Draft::Transfer { source: wallet, destination: other, currency, amount: minor },
        4 => {
            let expiry_offset = if input.ratio(3, 5)? { Some(input.int_in_range(-20..=200i64)?) } else { None };
            Draft::PlaceHold { hold, wallet, currency, amount: minor, expiry_offset }
        }
        5 => Draft::Capture {
            hold,
            amount: if input.arbitrary()? { Some(minor) } else { None },
            destination: if input.arbitrary()? { Some(other) } else { None },
        },
        6 => Draft::Void { hold },
        _ => Draft::ExpireHolds,
    })
}

fn amount(input: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match input.int_in_range(0..=15u8)? {
        0 => 0,
        1 => Amount::MAX_MINOR,
        2..=5 => input.int_in_range(200..=5_000)?,
        _ => input.int_in_range(1..=200)?,
    })
}
