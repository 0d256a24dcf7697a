//! What the load tests against the real binary share: one deterministic mix of credits, debits and
//! transfers, each under its own Idempotency-Key, with the effect it has if it succeeds; one attempt
//! at an operation; and the wallets' balances as a server reads them.
//!
//! Each test binary compiles this module for itself, and not every one uses every helper.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{Value, json};

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

/// One attempt at `operation` on `base`, waiting up to `timeout`: its answer (status, transaction
/// id) if decided; `None` to retry with the same key (no answer, or 503: nothing done or outcome
/// unknown; 409: the same key is in flight).
pub async fn send(
    client: &reqwest::Client,
    base: &str,
    operation: &Operation,
    timeout: Duration,
) -> Option<(u16, Option<String>)> {
    let response = client
        .post(format!("{base}{}", operation.path))
        .header("content-type", "application/json")
        .header("idempotency-key", &operation.key)
        .body(operation.body.clone())
        .timeout(timeout)
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let body: Value = serde_json::from_str(&response.text().await.ok()?).unwrap_or(Value::Null);
    if status == 503 || status == 409 {
        return None;
    }
    Some((status, body["transactionId"].as_str().map(str::to_owned)))
}

/// Wallets `w0..w{wallets}` as `base` reads them with `consistency`: (balance in cents, version).
pub async fn balances(client: &reqwest::Client, base: &str, consistency: &str, wallets: usize) -> Vec<(i64, u64)> {
    let mut result = Vec::new();
    for wallet in 0..wallets {
        let response = client.get(format!("{base}/wallets/w{wallet}?consistency={consistency}")).send().await.unwrap();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        let balance = body["balance"].as_str().unwrap_or("-1").replace('.', "").parse::<i64>().unwrap();
        result.push((balance, body["version"].as_u64().unwrap_or(0)));
    }
    result
}
