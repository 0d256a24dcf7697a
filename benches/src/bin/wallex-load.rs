//! `wallex-load`: the HTTP load generator.
//!
//! It reproduces the original service's load test (`--wallets 1000 --operations 20000 --workers 20`:
//! one third credits of 10–500, one third debits of 10–200, one third transfers of 10–300, integer
//! amounts, every request with its own Idempotency-Key), closed loop by default or open loop at
//! `--rate`, for a count of operations or a `--duration`. It records latency per operation type in
//! HDR histograms (open loop measures from each request's scheduled time, so a stall is not hidden),
//! counts outcomes by status and problem `code` (insufficient funds is an answer, not a failure), and
//! afterwards checks through the API that the balances add up to the initial balances plus the
//! acknowledged credits minus the acknowledged debits. It also reads the server's own latency
//! histograms from `/metrics` before and after the run (after the read side settles) and prints
//! their percentiles for the run alone: commit → broker acknowledgement, projection lag per
//! projection, group commit time. `--json` prints one JSON object last.
//!
//! `--batch N` sends the same mix N operations to a `POST /batch` request (`--atomic`: all or
//! nothing each), `--http2` speaks h2c so each connection multiplexes its requests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use wallex_benches::{Histograms, bucket_quantile, histogram_delta, parse_histograms};

#[derive(Debug, Parser)]
#[command(name = "wallex-load", about = "HTTP load generator for Wallex")]
struct Args {
    /// The server.
    #[arg(long, default_value = "http://localhost:3000")]
    url: String,
    /// Other instances of the same cluster: the operations go to `--url` and these in turn
    /// (setup, reads and the final check use `--url` alone).
    #[arg(long, value_delimiter = ',')]
    spread: Vec<String>,
    /// Wallets to create before the run.
    #[arg(long, default_value_t = 1_000)]
    wallets: usize,
    /// Operations to send (ignored with --duration).
    #[arg(long, default_value_t = 20_000)]
    operations: u64,
    /// Run for this many seconds instead of a count.
    #[arg(long)]
    duration: Option<u64>,
    /// Concurrent workers (closed loop) or the most requests in flight (open loop).
    #[arg(long, default_value_t = 20)]
    workers: usize,
    /// Keep-alive connections to open (defaults to --workers).
    #[arg(long)]
    connections: Option<usize>,
    /// Open loop: send this many operations per second regardless of answers.
    #[arg(long)]
    rate: Option<u64>,
    /// Each wallet's initial balance, in whole units.
    #[arg(long, default_value_t = 1_000)]
    initial_balance: i64,
    /// Seed of the operation mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// While the writes run, also read `GET /wallets/{id}` (the default, read-your-writes
    /// consistency) at this many requests per second, open loop, and report them apart: what
    /// reads cost the writes.
    #[arg(long)]
    read_rate: Option<u64>,
    /// An API key's secret, sent as `Authorization: Bearer` on every request (a server whose
    /// store holds keys needs one with read, write and mint, or admin); also `WALLEX_API_KEY`.
    #[arg(long, env = "WALLEX_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Send the operations N to a request, through `POST /batch` (1: one per request, on the
    /// single-operation routes). `--operations` and `--rate` still count operations.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=8_189))]
    batch: u64,
    /// Make each batch atomic: its operations take effect together or not at all (one refused
    /// debit refuses the batch). Implies `POST /batch` even for `--batch 1`.
    #[arg(long)]
    atomic: bool,
    /// Speak HTTP/2 without TLS (h2c, prior knowledge): every worker's requests share one
    /// connection, multiplexed.
    #[arg(long)]
    http2: bool,
    /// Also report the CPU time `WHO` spent per operation during the run: `NAME=PID`, or
    /// `NAME=COMM` for every process whose name (`/proc/PID/comm`) is `COMM` (PostgreSQL's
    /// backends: `postgres=postgres`). Repeatable; the load generator's own is always reported.
    #[arg(long = "cpu", value_name = "NAME=PID|COMM")]
    cpu: Vec<String>,
}

/// CPU time (user + system, in clock ticks) per process of `who` (a pid, or a process name).
fn cpu_ticks(who: &str) -> BTreeMap<u32, u64> {
    let of = |pid: u32| -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command name (which may hold spaces) ")": utime is the 12th, stime
        // the 13th of them.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    let mut ticks = BTreeMap::new();
    if let Ok(pid) = who.parse::<u32>() {
        if let Some(used) = of(pid) {
            ticks.insert(pid, used);
        }
        return ticks;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return ticks };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == who
            && let Some(used) = of(pid)
        {
            ticks.insert(pid, used);
        }
    }
    ticks
}

/// Each `--cpu` process (and the load generator itself), with its ticks now.
fn cpu_snapshot(targets: &[(String, String)]) -> Vec<(String, BTreeMap<u32, u64>)> {
    let mut snapshot: Vec<(String, BTreeMap<u32, u64>)> =
        targets.iter().map(|(name, who)| (name.clone(), cpu_ticks(who))).collect();
    snapshot.push(("load".to_owned(), cpu_ticks(&std::process::id().to_string())));
    snapshot
}

/// Microseconds of CPU per operation, per name, between two snapshots (a process that started in
/// between counts whole; one that exited is lost).
fn cpu_per_operation(
    before: &[(String, BTreeMap<u32, u64>)],
    after: &[(String, BTreeMap<u32, u64>)],
    operations: u64,
) -> Vec<(String, f64)> {
    let hertz = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    before
        .iter()
        .zip(after)
        .map(|((name, was), (_, now))| {
            let used: u64 = now.iter().map(|(pid, ticks)| ticks.saturating_sub(*was.get(pid).unwrap_or(&0))).sum();
            (name.clone(), used as f64 / hertz * 1e6 / operations.max(1) as f64)
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Credit,
    Debit,
    Transfer,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Credit, Kind::Debit, Kind::Transfer];

    fn name(self) -> &'static str {
        match self {
            Kind::Credit => "credit",
            Kind::Debit => "debit",
            Kind::Transfer => "transfer",
        }
    }
}

/// What one run observed.
struct Tally {
    latency_us: BTreeMap<Kind, Histogram<u64>>,
    /// (operation, outcome) → count; outcome is `ok`, a problem code, `http_NNN` or `transport`.
    outcomes: BTreeMap<(Kind, String), u64>,
    /// Net effect of acknowledged operations on the sum of balances, in whole units.
    net: i64,
    /// HTTP requests sent (one per operation, or per batch).
    requests: u64,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        let mut latency_us = BTreeMap::new();
        for kind in Kind::ALL {
            latency_us.insert(kind, Histogram::new_with_bounds(1, 120_000_000, 3)?);
        }
        Ok(Tally { latency_us, outcomes: BTreeMap::new(), net: 0, requests: 0 })
    }
}

struct Run {
    args: Args,
    client: reqwest::Client,
    run_id: String,
    tally: Mutex<Tally>,
    /// Requests sent (or scheduled) so far.
    sent: AtomicU64,
    /// Operations to send at most (`u64::MAX` with `--duration`).
    limit: u64,
}

impl Run {
    /// The instance request `sequence` goes to: `--url` and the `--spread` ones in turn.
    fn target(&self, sequence: u64) -> &str {
        let count = 1 + self.args.spread.len() as u64;
        match usize::try_from(sequence % count).expect("few instances") {
            0 => &self.args.url,
            other => &self.args.spread[other - 1],
        }
    }
}

fn wallet(run: &Run, index: usize) -> String {
    format!("load-{}-{index}", run.run_id)
}

/// One operation of the mix: (kind, path, body, net effect on the sum of balances).
fn operation(run: &Run, rng: &mut StdRng) -> (Kind, String, String, i64) {
    let source = rng.random_range(0..run.args.wallets);
    match rng.random_range(0..3) {
        0 => {
            let amount = rng.random_range(10..=500);
            (
                Kind::Credit,
                format!("/wallets/{}/credit", wallet(run, source)),
                json!({"amount": amount}).to_string(),
                amount,
            )
        }
        1 => {
            let amount = rng.random_range(10..=200);
            (
                Kind::Debit,
                format!("/wallets/{}/debit", wallet(run, source)),
                json!({"amount": amount}).to_string(),
                -amount,
            )
        }
        _ => {
            let mut destination = rng.random_range(0..run.args.wallets);
            if destination == source {
                destination = (destination + 1) % run.args.wallets;
            }
            let amount = rng.random_range(10..=300);
            let body = json!({"toWalletId": wallet(run, destination), "amount": amount}).to_string();
            (Kind::Transfer, format!("/wallets/{}/transfer", wallet(run, source)), body, 0)
        }
    }
}

/// Whether operations go through `POST /batch`.
fn batched(args: &Args) -> bool {
    args.batch > 1 || args.atomic
}

/// How many requests carry `operations` operations.
fn requests_for(args: &Args, operations: u64) -> u64 {
    if operations == u64::MAX { u64::MAX } else { operations.div_ceil(args.batch) }
}

/// Sends request `sequence`: one operation on its own route, or a batch; `since` is when it should
/// have started (open loop) or now.
async fn send(run: &Run, sequence: u64, since: Instant) {
    if batched(&run.args) {
        send_batch(run, sequence, since).await;
    } else {
        send_one(run, sequence, since).await;
    }
}

/// Operation `sequence` as a `POST /batch` item, with its kind and effect.
fn batch_item(run: &Run, sequence: u64) -> (Kind, Value, i64) {
    let mut rng = StdRng::seed_from_u64(run.args.seed ^ sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (kind, path, body, effect) = operation(run, &mut rng);
    let mut item: Value = serde_json::from_str(&body).expect("the operation's body is JSON");
    let wallet_id = path.split('/').nth(2).expect("/wallets/{id}/...").to_owned();
    item["type"] = json!(kind.name());
    item["walletId"] = json!(wallet_id);
    if !run.args.atomic {
        item["idempotencyKey"] = json!(format!("load-{}-{sequence}", run.run_id));
    }
    (kind, item, effect)
}

/// Sends the operations of batch `sequence` in one `POST /batch` and tallies each one's result.
async fn send_batch(run: &Run, sequence: u64, since: Instant) {
    let first = sequence * run.args.batch;
    let last = (first + run.args.batch).min(run.limit);
    let items: Vec<(Kind, Value, i64)> = (first..last).map(|index| batch_item(run, index)).collect();
    let body =
        json!({"atomic": run.args.atomic, "operations": items.iter().map(|(_, item, _)| item).collect::<Vec<_>>()});
    let answer = run
        .client
        .post(format!("{}/batch", run.target(sequence)))
        .header("content-type", "application/json")
        .header("idempotency-key", format!("load-{}-batch-{sequence}", run.run_id))
        .body(body.to_string())
        .send()
        .await;
    // Each operation's outcome: from `results` (every batch answer that was decided has one),
    // else the batch's own problem code for all of them.
    let outcomes: Vec<String> = match answer {
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            match body["results"].as_array() {
                Some(results) if results.len() == items.len() => results
                    .iter()
                    .map(|result| match result["status"].as_u64() {
                        Some(200..=299) => "ok".to_owned(),
                        other => result["code"]
                            .as_str()
                            .map_or_else(|| format!("http_{}", other.unwrap_or(0)), str::to_owned),
                    })
                    .collect(),
                _ => {
                    let outcome = body["code"].as_str().map_or_else(|| format!("http_{status}"), str::to_owned);
                    vec![outcome; items.len()]
                }
            }
        }
        Err(_) => vec!["transport".to_owned(); items.len()],
    };
    let elapsed_us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
    let mut tally = run.tally.lock().await;
    tally.requests += 1;
    for ((kind, _, effect), outcome) in items.into_iter().zip(outcomes) {
        if outcome == "ok" {
            tally.net += effect;
        }
        tally.latency_us.get_mut(&kind).expect("every kind").saturating_record(elapsed_us);
        *tally.outcomes.entry((kind, outcome)).or_default() += 1;
    }
}

/// Sends operation `sequence` on its own route.
async fn send_one(run: &Run, sequence: u64, since: Instant) {
    let mut rng = StdRng::seed_from_u64(run.args.seed ^ sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (kind, path, body, effect) = operation(run, &mut rng);
    let answer = run
        .client
        .post(format!("{}{path}", run.target(sequence)))
        .header("content-type", "application/json")
        .header("idempotency-key", format!("load-{}-{sequence}", run.run_id))
        .body(body)
        .send()
        .await;
    let outcome = match answer {
        Ok(response) if response.status().is_success() => "ok".to_owned(),
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            body["code"].as_str().map_or_else(|| format!("http_{status}"), str::to_owned)
        }
        Err(_) => "transport".to_owned(),
    };
    let elapsed_us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
    let mut tally = run.tally.lock().await;
    tally.requests += 1;
    if outcome == "ok" {
        tally.net += effect;
    }
    tally.latency_us.get_mut(&kind).expect("every kind").saturating_record(elapsed_us);
    *tally.outcomes.entry((kind, outcome)).or_default() += 1;
}

async fn setup(run: &Run) -> anyhow::Result<()> {
    let mut created = 0;
    for index in 0..run.args.wallets {
        let body =
            json!({"walletId": wallet(run, index), "ownerId": "load", "initialBalance": run.args.initial_balance});
        let response = run
            .client
            .post(format!("{}/wallets", run.args.url))
            .header("content-type", "application/json")
            .header("idempotency-key", format!("load-{}-create-{index}", run.run_id))
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("creating wallets at {}", run.args.url))?;
        if response.status().as_u16() != 201 {
            bail!("creating {} answered {}", wallet(run, index), response.status());
        }
        created += 1;
    }
    eprintln!("created {created} wallets");
    Ok(())
}

/// The sum of every run wallet's balance, from the write side, in whole units (amounts are whole).
async fn balance_sum(run: &Run) -> anyhow::Result<i64> {
    let mut sum = 0i64;
    for index in 0..run.args.wallets {
        let url = format!("{}/wallets/{}?consistency=strong", run.args.url, wallet(run, index));
        let body: Value = serde_json::from_str(&run.client.get(url).send().await?.text().await?)?;
        let balance = body["balance"].as_str().context("a balance")?;
        let whole = balance.split('.').next().unwrap_or(balance);
        sum += whole.parse::<i64>()?;
    }
    Ok(sum)
}

/// Sum of a counter's series (every label set) in a Prometheus scrape.
fn counter_total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Waits (at most 60 s) until the outbox is empty and both projections stopped moving, then returns
/// the server's latency histograms from that last scrape of `/metrics` (none when it has none), so
/// they hold every event committed so far.
async fn settled_histograms(run: &Run) -> Histograms {
    let url = format!("{}/metrics", run.args.url);
    let mut last = f64::NAN;
    let mut text = String::new();
    for _ in 0..300 {
        let Ok(response) = run.client.get(&url).send().await else { break };
        text = response.text().await.unwrap_or_default();
        let projected = counter_total(&text, "wallex_projected_total");
        if counter_total(&text, "wallex_outbox_backlog") == 0.0 && projected == last {
            break;
        }
        last = projected;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    parse_histograms(&text, "wallex_")
}

fn percentile_ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1_000.0
}

/// Reads random wallets at `rate` per second (open loop, at most 256 in flight) until the writes
/// are done: how many, how many failed, and their latency in microseconds.
async fn read_load(
    run: Arc<Run>,
    rate: u64,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<(u64, u64, Histogram<u64>)> {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = Instant::now();
    let mut sent = 0u64;
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep_until((started + interval * u32::try_from(sent).unwrap_or(u32::MAX)).into()).await;
        let permit = in_flight.clone().acquire_owned().await?;
        let (run, latency, failed) = (run.clone(), latency.clone(), failed.clone());
        let index = usize::try_from(sent.wrapping_mul(0x9E37_79B9) % run.args.wallets as u64)?;
        sent += 1;
        tasks.spawn(async move {
            let began = Instant::now();
            let answer = run.client.get(format!("{}/wallets/{}", run.args.url, wallet(&run, index))).send().await;
            if answer.is_ok_and(|response| response.status().is_success()) {
                let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                let _ = latency.lock().await.record(micros.max(1));
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let latency = latency.lock().await.clone();
    Ok((sent, failed.load(Ordering::Relaxed), latency))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.wallets < 2 {
        bail!("--wallets must be at least 2 (transfers need two)");
    }
    let connections = args.connections.unwrap_or(args.workers).max(1);
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(secret) = &args.api_key {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {secret}"))?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let mut client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30))
        .default_headers(headers);
    if args.http2 {
        client = client.http2_prior_knowledge();
    }
    let client = client.build()?;
    let run_id = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros());
    let limit = if args.duration.is_some() { u64::MAX } else { args.operations };
    let run = Arc::new(Run { args, client, run_id, tally: Mutex::new(Tally::new()?), sent: AtomicU64::new(0), limit });
    setup(&run).await?;
    let server_before = settled_histograms(&run).await;

    let deadline = run.args.duration.map(|seconds| Instant::now() + Duration::from_secs(seconds));
    let limit = requests_for(&run.args, limit);
    let cpu_targets: Vec<(String, String)> = run
        .args
        .cpu
        .iter()
        .map(|spec| {
            spec.split_once('=')
                .map(|(name, who)| (name.to_owned(), who.to_owned()))
                .with_context(|| format!("--cpu {spec}: NAME=PID or NAME=COMM"))
        })
        .collect::<anyhow::Result<_>>()?;
    let cpu_before = cpu_snapshot(&cpu_targets);
    let started = Instant::now();
    let writes_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = run.args.read_rate.map(|rate| tokio::spawn(read_load(run.clone(), rate, writes_done.clone())));
    match run.args.rate {
        None => {
            let mut workers = Vec::new();
            for _ in 0..run.args.workers.max(1) {
                let run = run.clone();
                workers.push(tokio::spawn(async move {
                    loop {
                        let sequence = run.sent.fetch_add(1, Ordering::Relaxed);
                        if sequence >= limit || deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                            return;
                        }
                        send(&run, sequence, Instant::now()).await;
                    }
                }));
            }
            for worker in workers {
                worker.await?;
            }
        }
        Some(rate) => {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(run.args.workers.max(1)));
            let mut tasks = tokio::task::JoinSet::new();
            // `--rate` counts operations: a batch of N leaves every N / rate seconds.
            let interval = Duration::from_secs_f64(run.args.batch as f64 / rate.max(1) as f64);
            for sequence in 0..limit {
                let scheduled = started + interval * u32::try_from(sequence).unwrap_or(u32::MAX);
                if deadline.is_some_and(|deadline| scheduled >= deadline) {
                    break;
                }
                tokio::time::sleep_until(scheduled.into()).await;
                let permit = in_flight.clone().acquire_owned().await?;
                let run = run.clone();
                run.sent.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(async move {
                    send(&run, sequence, scheduled).await;
                    drop(permit);
                });
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let elapsed = started.elapsed();
    let cpu_after = cpu_snapshot(&cpu_targets);
    writes_done.store(true, Ordering::Relaxed);
    let reads = match reader {
        Some(reader) => Some(reader.await??),
        None => None,
    };

    let tally = run.tally.lock().await;
    let total: u64 = tally.outcomes.values().sum();
    let server_errors: u64 = tally
        .outcomes
        .iter()
        .filter(|((_, outcome), _)| outcome.starts_with("http_5") || outcome == "unavailable")
        .map(|(_, n)| n)
        .sum();
    let transport: u64 = tally.outcomes.iter().filter(|((_, outcome), _)| outcome == "transport").map(|(_, n)| n).sum();
    let mut all = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    for histogram in tally.latency_us.values() {
        all.add(histogram)?;
    }
    let ops_per_sec = total as f64 / elapsed.as_secs_f64();
    let server = histogram_delta(&server_before, &settled_histograms(&run).await);

    // The books must balance: initial + acknowledged credits − acknowledged debits.
    let expected = run.args.initial_balance * i64::try_from(run.args.wallets)? + tally.net;
    let actual = balance_sum(&run).await?;
    let balanced = expected == actual;

    println!("operations: {total} in {:.2} s = {ops_per_sec:.0} ops/s", elapsed.as_secs_f64());
    println!(
        "requests: {} ({}{}{})",
        tally.requests,
        if batched(&run.args) { format!("POST /batch of {}", run.args.batch) } else { "one operation each".to_owned() },
        if run.args.atomic { ", atomic" } else { "" },
        if run.args.http2 { ", HTTP/2" } else { ", HTTP/1.1" }
    );
    for ((kind, outcome), count) in &tally.outcomes {
        println!("  {:<9} {outcome:<24} {count}", kind.name());
    }
    println!("server errors: {server_errors}, transport errors: {transport}");
    for (name, histogram) in tally.latency_us.iter().map(|(k, h)| (k.name(), h)).chain([("all", &all)]) {
        println!(
            "  latency {name:<9} p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            percentile_ms(histogram, 0.50),
            percentile_ms(histogram, 0.95),
            percentile_ms(histogram, 0.99),
            percentile_ms(histogram, 0.999),
            histogram.max() as f64 / 1_000.0
        );
    }
    println!("balances: expected {expected}, found {actual}: {}", if balanced { "ok" } else { "MISMATCH" });
    let cpu = cpu_per_operation(&cpu_before, &cpu_after, total);
    let cpu_total: f64 = cpu.iter().map(|(_, micros)| micros).sum();
    let shown: Vec<String> = cpu.iter().map(|(name, micros)| format!("{name} {micros:.1} µs")).collect();
    println!("cpu per operation: {} = {cpu_total:.1} µs", shown.join(" + "));
    // Bucket upper bounds: "p99 ≤ this".
    let bound_ms = |buckets: &[(f64, u64)], quantile: f64| bucket_quantile(buckets, quantile).map(|s| s * 1_000.0);
    let shown = |bound: Option<f64>| bound.map_or_else(|| "-".to_owned(), |ms| format!("≤ {ms} ms"));
    for (series, buckets) in &server {
        let observations = buckets.last().map_or(0, |&(_, count)| count);
        if observations > 0 {
            println!(
                "  server {series}: {observations} observations, p50 {}, p99 {}, p99.9 {}",
                shown(bound_ms(buckets, 0.50)),
                shown(bound_ms(buckets, 0.99)),
                shown(bound_ms(buckets, 0.999))
            );
        }
    }
    if let Some((count, failed, latency)) = &reads {
        println!(
            "reads: {count} in {:.2} s = {:.0} reads/s, {failed} failed; latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            elapsed.as_secs_f64(),
            *count as f64 / elapsed.as_secs_f64(),
            percentile_ms(latency, 0.5),
            percentile_ms(latency, 0.99),
            latency.max() as f64 / 1_000.0
        );
    }
    if run.args.json {
        let mut operations = serde_json::Map::new();
        for ((kind, outcome), count) in &tally.outcomes {
            let entry = operations.entry(kind.name()).or_insert_with(|| json!({}));
            entry[outcome] = json!(count);
        }
        let latency = |h: &Histogram<u64>| {
            json!({"p50": percentile_ms(h, 0.5), "p95": percentile_ms(h, 0.95), "p99": percentile_ms(h, 0.99),
                   "p999": percentile_ms(h, 0.999), "max": h.max() as f64 / 1_000.0})
        };
        // Server-side latencies of the run (bucket upper bounds; null without observations).
        let server_json: serde_json::Map<String, Value> = server
            .iter()
            .filter(|(_, buckets)| buckets.last().is_some_and(|&(_, count)| count > 0))
            .map(|(series, buckets)| {
                let finite = |q| bound_ms(buckets, q).filter(|ms: &f64| ms.is_finite());
                (
                    series.clone(),
                    json!({"count": buckets.last().map_or(0, |b| b.1),
                    "p50": finite(0.5), "p99": finite(0.99), "p999": finite(0.999)}),
                )
            })
            .collect();
        let per_kind: serde_json::Map<String, Value> =
            tally.latency_us.iter().map(|(k, h)| (k.name().to_owned(), latency(h))).collect();
        println!(
            "{}",
            json!({
                "ops_per_sec": ops_per_sec, "operations_total": total, "server_errors": server_errors,
                "transport_errors": transport, "operations": operations, "latency_ms": latency(&all),
                "latency_ms_by_operation": per_kind, "balances_ok": balanced, "elapsed_s": elapsed.as_secs_f64(),
                "server_ms": server_json, "requests": tally.requests, "batch": run.args.batch,
                "atomic": run.args.atomic, "http2": run.args.http2,
                "cpu_us_per_op": cpu.iter().map(|(name, micros)| (name.clone(), json!(micros))).collect::<serde_json::Map<_, _>>(),
                "reads": reads.as_ref().map(|(count, failed, latency)| json!({
                    "count": count, "failed": failed, "per_sec": *count as f64 / elapsed.as_secs_f64(),
                    "p50_ms": percentile_ms(latency, 0.5), "p99_ms": percentile_ms(latency, 0.99),
                })),
            })
        );
    }
    if !balanced || server_errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}
