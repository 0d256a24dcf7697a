//! Shared workload builders for the Wallex benches.
//!
//! The engine workload reproduces the original service's load-test mix: one third credits of 10 to
//! 500, one third debits of 10 to 200 and one third transfers of 10 to 300 (whole dollars), over a
//! fixed set of funded USD wallets. Generation is seeded, so every run measures the same commands.

use std::collections::BTreeMap;

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
            memo: Default::default(),
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
            Command::new(CommandId(first_id + index as u128), kind)
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

/// Cumulative Prometheus histograms from one scrape: series (name and labels other than `le`) →
/// (bucket upper bound in seconds, observations at or below it), in bound order.
pub type Histograms = BTreeMap<String, Vec<(f64, u64)>>;

/// Parses the `_bucket` lines of a Prometheus text exposition whose names start with `prefix`.
pub fn parse_histograms(text: &str, prefix: &str) -> Histograms {
    let mut histograms = Histograms::new();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Some((name, labels)) = series.split_once("_bucket{") else { continue };
        if !name.starts_with(prefix) {
            continue;
        }
        let labels = labels.trim_end_matches('}');
        let mut le = None;
        let mut rest = Vec::new();
        for label in labels.split(',').filter(|label| !label.is_empty()) {
            match label.strip_prefix("le=") {
                Some(bound) => le = Some(bound.trim_matches('"').to_owned()),
                None => rest.push(label),
            }
        }
        // Bucket counts are integers.
        let (Some(le), Ok(count)) = (le, value.parse::<u64>()) else { continue };
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
        let key = if rest.is_empty() { name.to_owned() } else { format!("{name}{{{}}}", rest.join(",")) };
        histograms.entry(key).or_default().push((bound, count));
    }
    for buckets in histograms.values_mut() {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    histograms
}

/// Observations made between two scrapes, per series (bucket counts subtracted).
pub fn histogram_delta(before: &Histograms, after: &Histograms) -> Histograms {
    after
        .iter()
        .map(|(series, buckets)| {
            let earlier = before.get(series);
            let delta = buckets
                .iter()
                .map(|&(bound, count)| {
                    let old =
                        earlier.and_then(|old| old.iter().find(|(b, _)| *b == bound)).map_or(0, |&(_, count)| count);
                    (bound, count.saturating_sub(old))
                })
                .collect();
            (series.clone(), delta)
        })
        .collect()
}

/// The upper bound, in seconds, of the bucket holding the `quantile` observation (`None` with no
/// observations): "at most this", to the buckets' resolution.
pub fn bucket_quantile(buckets: &[(f64, u64)], quantile: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    // The quantile is in [0, 1], so the rank is in 1..=total: no truncation, no sign.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = (quantile.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
    buckets.iter().find(|(_, count)| *count >= rank).map(|(bound, _)| *bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "\
# TYPE wallex_commit_to_ack_seconds histogram
wallex_commit_to_ack_seconds_bucket{le=\"0.005\"} 10
wallex_commit_to_ack_seconds_bucket{le=\"0.01\"} 90
wallex_commit_to_ack_seconds_bucket{le=\"0.05\"} 100
wallex_commit_to_ack_seconds_bucket{le=\"+Inf\"} 100
wallex_commit_to_ack_seconds_sum 0.5
wallex_projection_lag_seconds_bucket{group=\"ledger-projector\",le=\"0.1\"} 3
wallex_projection_lag_seconds_bucket{group=\"ledger-projector\",le=\"+Inf\"} 4
other_seconds_bucket{le=\"1\"} 7
";

    #[test]
    fn histograms_parse_subtract_and_answer_quantiles() {
        let after = parse_histograms(SCRAPE, "wallex_");
        assert_eq!(after.len(), 2, "only the prefix's histograms: {after:?}");
        let ack = &after["wallex_commit_to_ack_seconds"];
        assert_eq!(ack, &vec![(0.005, 10), (0.01, 90), (0.05, 100), (f64::INFINITY, 100)]);
        assert_eq!(bucket_quantile(ack, 0.5), Some(0.01));
        assert_eq!(bucket_quantile(ack, 0.99), Some(0.05));
        assert_eq!(bucket_quantile(ack, 0.05), Some(0.005));
        let lag = &after["wallex_projection_lag_seconds{group=\"ledger-projector\"}"];
        assert_eq!(bucket_quantile(lag, 0.99), Some(f64::INFINITY), "beyond the last finite bucket");

        let before = parse_histograms(&SCRAPE.replace("} 90", "} 85").replace("} 100", "} 95"), "wallex_");
        let delta = histogram_delta(&before, &after);
        assert_eq!(delta["wallex_commit_to_ack_seconds"], vec![(0.005, 0), (0.01, 5), (0.05, 5), (f64::INFINITY, 5)]);
        assert_eq!(bucket_quantile(&delta["wallex_commit_to_ack_seconds"], 0.5), Some(0.01));
        assert_eq!(bucket_quantile(&[(0.1, 0), (f64::INFINITY, 0)], 0.5), None, "no observations");
    }
}
