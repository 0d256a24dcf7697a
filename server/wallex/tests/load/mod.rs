//! What the load tests against the real binary share: one deterministic mix of credits, debits and
//! transfers, each under its own Idempotency-Key, with the effect it has if it succeeds.

use serde_json::json;

/// One operation: its key, route and body, what it moves if it succeeds, and its answer once
/// decided.
#[derive(Clone, Debug)]
pub struct Operation {
    pub key: String,
    pub path: String,
    pub body: String,
    /// Cents moved per wallet if it succeeded.
    pub effect: Vec<(usize, i64)>,
    /// (status, transaction id) once decided.
    pub answer: Option<(u16, Option<String>)>,
}

/// Client `client`'s `count` operations over wallets `w0..w{wallets}`, keyed `{tag}-{client}-{n}`.
pub fn operations(client: usize, count: usize, wallets: usize, tag: &str) -> Vec<Operation> {
    (0..count)
        .map(|n| {
            let seed = client * 7_919 + n * 104_729;
            let wallet = seed % wallets;
            let other = (wallet + 1 + seed / 7 % (wallets - 1)) % wallets;
            let cents = i64::try_from(100 + seed % 5_000).unwrap();
            let amount = format!("{}.{:02}", cents / 100, cents % 100);
            let (path, body, effect) = match n % 3 {
                0 => (format!("/wallets/w{wallet}/credit"), json!({"amount": amount}), vec![(wallet, cents)]),
                1 => (format!("/wallets/w{wallet}/debit"), json!({"amount": amount}), vec![(wallet, -cents)]),
                _ => (
                    format!("/wallets/w{wallet}/transfer"),
                    json!({"toWalletId": format!("w{other}"), "amount": amount}),
                    vec![(wallet, -cents), (other, cents)],
                ),
            };
            Operation { key: format!("{tag}-{client}-{n}"), path, body: body.to_string(), effect, answer: None }
        })
        .collect()
}
