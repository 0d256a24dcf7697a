//! The cluster test: three real `wallex serve` processes on one PostgreSQL and one broker, one
//! writer lease between them, load spread over all three, and the writer lost twice.
//!
//! 1. SIGKILL the writer under load: a follower takes the lease within the documented bound
//!    (`pipeline.lease.lease_ms` + `poll_ms` + recovery), and clients retry on any instance with
//!    the same keys.
//! 2. SIGSTOP the new writer past its lease: the third instance takes over. SIGCONT it: whatever
//!    it was about to commit is fenced off (its epoch is no longer the lease's), it steps down and
//!    follows, and nothing is doubled.
//!
//! Then every acknowledged operation is present exactly once: each wallet's balance and event
//! count are the initial ones plus exactly the acknowledged operations, every success has its own
//! transaction, retries on any instance replay the first answer, and the read model converges.
//! The takeover times are printed (`takeover after SIGKILL: … ms`) for `docs/OPERATIONS.md`.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod load;
use load::{Operation, operations};

/// How long one attempt waits for its answer before the client moves to the next instance.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

async fn send(client: &reqwest::Client, base: &str, operation: &Operation) -> Option<(u16, Option<String>)> {
    load::send(client, base, operation, ATTEMPT_TIMEOUT).await
}

async fn balances(client: &reqwest::Client, base: &str, consistency: &str) -> Vec<(i64, u64)> {
    load::balances(client, base, consistency, WALLETS).await
}

use wallex_testkit::services as support;

const CLIENTS: usize = 20;
const PER_CLIENT: usize = 90;
const WALLETS: usize = 20;
const INITIAL_CENTS: i64 = 1_000_000;
/// The lease the instances run with (the default), and the bound a takeover must meet: the lease
/// lapses, a follower's next poll takes it, and it recovers the ledger.
const LEASE_MS: u64 = 2_000;
const TAKEOVER_BOUND: Duration = Duration::from_secs(8);

struct Instance {
    child: Child,
    base: String,
    name: &'static str,
}

impl Drop for Instance {
    /// A failing test must not leave a server running (nor stopped: SIGKILL ends a stopped one).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(name: &'static str, database: &str, brokers: &str, topic: &str) -> Instance {
    let port = free_port();
    let data_dir = std::env::temp_dir().join(format!("wallex-cluster-{}", uuid::Uuid::new_v4()));
    let child = Command::new(env!("CARGO_BIN_EXE_wallex"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data_dir)
        .env("DATABASE_URL", database)
        .env("KAFKA_BROKERS", brokers)
        .env("WALLEX_CLUSTER__NODE_ID", name)
        .args(["--kafka-topic", topic, "--kafka-dlq-topic", &format!("{topic}-dlq")])
        .args(["--set", "bus.replication_factor=1", "--set", "bus.min_insync_replicas=1"])
        .args(["--set", &format!("pipeline.lease.lease_ms={LEASE_MS}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Instance { child, base: format!("http://127.0.0.1:{port}"), name }
}

fn signal(instance: &Instance, signal: &str) {
    let status = Command::new("kill").args([signal, &instance.child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill {signal} {}", instance.name);
}

/// What `/health/ready` says of an instance's writer: `running`, `follower`, …; `None` if it does
/// not answer.
async fn writer_status(client: &reqwest::Client, base: &str) -> Option<String> {
    let response = client.get(format!("{base}/health/ready")).timeout(Duration::from_secs(3)).send().await.ok()?;
    let body: Value = serde_json::from_str(&response.text().await.ok()?).ok()?;
    body["checks"]["writer"]["status"].as_str().map(str::to_owned)
}

/// Waits until one of `candidates` is the writer; its index.
async fn await_writer(client: &reqwest::Client, candidates: &[&Instance], within: Duration) -> Option<usize> {
    let started = Instant::now();
    while started.elapsed() < within {
        for (index, instance) in candidates.iter().enumerate() {
            if writer_status(client, &instance.base).await.as_deref() == Some("running") {
                return Some(index);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// How long an operation may go undecided: a PostgreSQL failover takes Patroni's `ttl` (20 s).
const SETTLE_WITHIN: Duration = Duration::from_secs(120);

/// Sends `operation` until it is decided, moving to the next instance after every failure.
async fn settle(
    client: &reqwest::Client,
    bases: &[String],
    start: usize,
    operation: &Operation,
) -> (u16, Option<String>) {
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut at = start;
    loop {
        if let Some(answer) = send(client, &bases[at % bases.len()], operation).await {
            return answer;
        }
        assert!(Instant::now() < deadline, "{} got no answer from any instance in {SETTLE_WITHIN:?}", operation.key);
        at += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every acknowledged operation is present exactly once, as every instance in `live` reads it:
/// balances and event counts are the initial ones plus exactly the acknowledged operations, and
/// every success has a transaction of its own; then the shared read model converges to them.
async fn exactly_once(http: &reqwest::Client, all: &[Operation], live: &[String]) {
    let mut expected = [INITIAL_CENTS; WALLETS];
    let mut events = [1u64; WALLETS];
    let mut transactions = BTreeMap::new();
    for operation in all {
        let (status, transaction) = operation.answer.clone().unwrap();
        if status == 201 {
            for (wallet, cents) in &operation.effect {
                expected[*wallet] += cents;
                events[*wallet] += 1;
            }
            let transaction = transaction.expect("successes carry their transaction");
            assert!(transactions.insert(transaction, operation.key.clone()).is_none(), "one transaction per operation");
        } else {
            assert_eq!(status, 422, "{}: only insufficient funds may refuse", operation.key);
        }
    }
    for base in live {
        let strong = balances(http, base, "strong").await;
        for wallet in 0..WALLETS {
            assert_eq!(strong[wallet], (expected[wallet], events[wallet]), "w{wallet} on {base}: balance and events");
        }
    }
    let strong = balances(http, &live[0], "strong").await;
    let mut converged = false;
    for _ in 0..1_200 {
        if balances(http, &live[live.len() - 1], "eventual").await == strong {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(converged, "the read model every instance shares converges to the write side");
}

/// Creates the test's wallets through `base`.
async fn create_wallets(http: &reqwest::Client, base: &str) -> Vec<reqwest::Response> {
    let mut answers = Vec::new();
    for wallet in 0..WALLETS {
        let body = json!({"walletId": format!("w{wallet}"), "ownerId": "cluster", "initialBalance": "10000.00"});
        let response = http
            .post(format!("{base}/wallets"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201, "w{wallet} is created");
        answers.push(response);
    }
    answers
}

/// Starts the load: `CLIENTS` clients, each spreading its operations over `bases`; returns their
/// tasks and the count of decided operations.
fn start_load(bases: &[String]) -> (Vec<tokio::task::JoinHandle<Vec<Operation>>>, Arc<AtomicUsize>) {
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let bases = bases.to_vec();
        let answered = answered.clone();
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
            let mut work = operations(client, PER_CLIENT, WALLETS, "cluster");
            for (n, operation) in work.iter_mut().enumerate() {
                operation.answer = Some(settle(&http, &bases, client + n, operation).await);
                answered.fetch_add(1, Ordering::Relaxed);
            }
            work
        }));
    }
    (clients, answered)
}

async fn until_answered(answered: &AtomicUsize, count: usize) {
    while answered.load(Ordering::Relaxed) < count {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A counter's total in an instance's Prometheus text, over all its label sets.
async fn counter(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_survive_a_killed_and_a_paused_writer_with_every_operation_once() {
    let database = support::postgres().await;
    let broker = support::kafka();
    let topic = format!("cluster-{}", uuid::Uuid::new_v4().simple());
    let http = reqwest::Client::new();

    // The first instance takes the lease; the others start once it holds it, and follow.
    let a = spawn("node-a", &database.url, &broker.brokers, &topic);
    assert_eq!(await_writer(&http, &[&a], Duration::from_secs(30)).await, Some(0), "node-a takes the lease");
    let b = spawn("node-b", &database.url, &broker.brokers, &topic);
    let c = spawn("node-c", &database.url, &broker.brokers, &topic);
    for follower in [&b, &c] {
        let started = Instant::now();
        while writer_status(&http, &follower.base).await.as_deref() != Some("follower") {
            assert!(started.elapsed() < Duration::from_secs(30), "{} comes up as a follower", follower.name);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let bases: Vec<String> = [&a, &b, &c].iter().map(|instance| instance.base.clone()).collect();
    // Through the followers: they forward to the writer.
    for response in create_wallets(&http, &bases[1]).await {
        assert_eq!(response.headers()["wallex-served-by"], "node-a", "a follower forwards to the writer");
    }

    // Load over all three instances; each failure moves a client to the next instance.
    let (clients, answered) = start_load(&bases);
    let total = CLIENTS * PER_CLIENT;

    // 1. SIGKILL the writer.
    until_answered(&answered, total / 4).await;
    signal(&a, "-KILL");
    let killed = Instant::now();
    let next = await_writer(&http, &[&b, &c], TAKEOVER_BOUND).await;
    let after_kill = killed.elapsed();
    println!("takeover after SIGKILL: {} ms", after_kill.as_millis());
    let next = next.unwrap_or_else(|| panic!("no follower took over within {TAKEOVER_BOUND:?} of the SIGKILL"));
    let (paused, other) = if next == 0 { (&b, &c) } else { (&c, &b) };

    // 2. SIGSTOP the new writer past its lease; the other follower takes over; SIGCONT it.
    until_answered(&answered, total / 2).await;
    signal(paused, "-STOP");
    let stopped = Instant::now();
    let taken = await_writer(&http, &[other], TAKEOVER_BOUND).await;
    let after_stop = stopped.elapsed();
    println!("takeover after SIGSTOP: {} ms", after_stop.as_millis());
    assert!(taken.is_some(), "{} took over from the paused {} within {TAKEOVER_BOUND:?}", other.name, paused.name);
    tokio::time::sleep(Duration::from_millis(LEASE_MS / 2)).await;
    signal(paused, "-CONT");
    let resumed = Instant::now();
    loop {
        if writer_status(&http, &paused.base).await.as_deref() == Some("follower") {
            break;
        }
        assert!(resumed.elapsed() < Duration::from_secs(10), "{} steps down after SIGCONT", paused.name);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let step_downs = counter(&http, &paused.base, "wallex_writer_step_downs_total").await;
    let fenced = counter(&http, &paused.base, "wallex_writer_fenced_total").await;
    println!("{} after SIGCONT: {step_downs} step-downs, {fenced} commits fenced off", paused.name);
    assert!(step_downs >= 1.0, "the resumed writer stepped down");
    assert_eq!(writer_status(&http, &other.base).await.as_deref(), Some("running"), "one writer: {}", other.name);

    let mut all: Vec<Operation> = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap());
    }
    let live = [paused.base.clone(), other.base.clone()];

    // Retries on any live instance replay the first answer.
    for (n, operation) in all.iter().enumerate().step_by(29) {
        let again = settle(&http, &live, n, operation).await;
        assert_eq!(Some(again), operation.answer, "{} replays its original answer", operation.key);
    }

    exactly_once(&http, &all, &live).await;
    assert!(after_kill < TAKEOVER_BOUND && after_stop < TAKEOVER_BOUND);
}

/// The reference deployment (`scripts/cluster`): two Wallex instances on PostgreSQL under Patroni
/// (synchronous replication, HAProxy in front of the primary) and a broker. Stopped on drop.
struct Deployment {
    dir: String,
    urls: Vec<String>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = Command::new(script("cluster")).args(["stop", &self.dir]).status();
    }
}

fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts").join(name)
}

fn cluster(action: &str, dir: &str) -> String {
    let output = Command::new(script("cluster")).args([action, dir]).output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_failover_under_load_loses_no_acknowledged_operation() {
    let output = Command::new(script("cluster"))
        .args(["start", "2"])
        .env("WALLEX_BIN", env!("CARGO_BIN_EXE_wallex"))
        .output()
        .expect("scripts/cluster runs");
    assert!(output.status.success(), "scripts/cluster start: {}", String::from_utf8_lossy(&output.stderr));
    let exports = support::parse_exports(&String::from_utf8(output.stdout).unwrap());
    let deployment = Deployment {
        dir: exports["WALLEX_CLUSTER_DIR"].clone(),
        urls: exports["WALLEX_URLS"].split(',').map(str::to_owned).collect(),
    };
    let http = reqwest::Client::new();
    create_wallets(&http, &deployment.urls[1]).await;
    let (clients, answered) = start_load(&deployment.urls);
    let total = CLIENTS * PER_CLIENT;

    // Kill the primary (its Patroni and its PostgreSQL: the machine is gone) under load.
    until_answered(&answered, total / 4).await;
    let before = answered.load(Ordering::Relaxed);
    let first = cluster("primary", &deployment.dir);
    let killed = cluster("kill-primary", &deployment.dir);
    assert_eq!(first, killed);
    let at = Instant::now();
    let mut promoted = None;
    while at.elapsed() < Duration::from_secs(90) {
        let primary = cluster("primary", &deployment.dir);
        if !primary.is_empty() && primary != killed {
            promoted = Some(at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = promoted.expect("Patroni promotes the standby");
    println!("standby promoted {} ms after the primary was killed", promoted.as_millis());
    // Wallex carries on by itself: operations are acknowledged again.
    let during = answered.load(Ordering::Relaxed);
    while answered.load(Ordering::Relaxed) < during + CLIENTS {
        assert!(at.elapsed() < Duration::from_secs(120), "Wallex acknowledges operations again after the failover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "writes acknowledged again {} ms after the primary was killed ({} answered before it)",
        at.elapsed().as_millis(),
        before
    );

    let mut all: Vec<Operation> = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap());
    }
    for (n, operation) in all.iter().enumerate().step_by(29) {
        let again = settle(&http, &deployment.urls, n, operation).await;
        assert_eq!(Some(again), operation.answer, "{} replays its original answer", operation.key);
    }
    exactly_once(&http, &all, &deployment.urls).await;
}
