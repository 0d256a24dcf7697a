//! The kill test: SIGKILL the server while clients hammer it, restart it, and prove that every
//! acknowledged operation is present exactly once.
//!
//! It runs the real `wallex serve` binary on the embedded store. 20 clients (one keep-alive
//! connection each) send 2,400 credits, debits and transfers, every one under its own
//! Idempotency-Key. Part-way through, the server gets SIGKILL. Requests that got no answer are
//! retried, with the same key and body, against the restarted server until they get one. Then the
//! balances must equal the initial balances plus exactly the acknowledged operations (so none was
//! lost and none applied twice), each wallet's event count must match, every retried key must
//! return its original transaction, and the read model must converge to the write side.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

mod load;
use load::{Operation, operations};

/// How long one attempt waits for its answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

async fn send(client: &reqwest::Client, base: &str, operation: &Operation) -> Option<(u16, Option<String>)> {
    load::send(client, base, operation, ATTEMPT_TIMEOUT).await
}

async fn balances(client: &reqwest::Client, base: &str, consistency: &str) -> Vec<(i64, u64)> {
    load::balances(client, base, consistency, WALLETS).await
}

const CLIENTS: usize = 20;
const PER_CLIENT: usize = 120;
const WALLETS: usize = 20;
const INITIAL_CENTS: i64 = 1_000_000;

struct Server {
    child: Child,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Where the server under test keeps its data and sends its events.
#[derive(Clone)]
struct Setup {
    data_dir: std::path::PathBuf,
    database: Option<String>,
    /// Brokers and a topic name unique to the test.
    kafka: Option<(String, String)>,
}

/// Starts `wallex serve` on `setup`.
async fn start(setup: &Setup, port: u16) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wallex"));
    command.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"]).arg(&setup.data_dir);
    match &setup.database {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.env_remove("DATABASE_URL"),
    };
    match &setup.kafka {
        Some((brokers, topic)) => command.env("KAFKA_BROKERS", brokers).args([
            "--kafka-topic",
            topic,
            "--kafka-dlq-topic",
            &format!("{topic}-dlq"),
            // One test broker: one replica.
            "--set",
            "bus.replication_factor=1",
            "--set",
            "bus.min_insync_replicas=1",
        ]),
        None => command.env_remove("KAFKA_BROKERS"),
    };
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(format!("{base}/health")).send().await.is_ok_and(|r| r.status().is_success()) {
            return Server { child, base };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server did not come up");
}

impl Drop for Server {
    /// A failing test must not leave a server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use wallex_testkit::services as support;

fn temp_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("wallex-kill-{}", uuid::Uuid::new_v4()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_on_the_embedded_store() {
    kill_test(Setup { data_dir: temp_dir(), database: None, kafka: None }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_on_postgres_and_kafka() {
    let database = support::postgres().await;
    let broker = support::kafka();
    let topic = format!("kill-{}", uuid::Uuid::new_v4().simple());
    kill_test(Setup {
        data_dir: temp_dir(),
        database: Some(database.url.clone()),
        kafka: Some((broker.brokers.clone(), topic)),
    })
    .await;
}

async fn kill_test(setup: Setup) {
    let data_dir = setup.data_dir.clone();
    let port = free_port();
    let mut server = start(&setup, port).await;
    let admin = reqwest::Client::new();
    for wallet in 0..WALLETS {
        let body = json!({"walletId": format!("w{wallet}"), "ownerId": "kill", "initialBalance": "10000.00"});
        let response = admin
            .post(format!("{}/wallets", server.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    }

    // Load, and SIGKILL once a third of it is answered.
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let base = server.base.clone();
        let answered = answered.clone();
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
            let mut work = operations(client, PER_CLIENT, WALLETS, "kill");
            for operation in &mut work {
                operation.answer = send(&http, &base, operation).await;
                if operation.answer.is_some() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
            work
        }));
    }
    while answered.load(Ordering::Relaxed) < CLIENTS * PER_CLIENT / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    let killed_at = answered.load(Ordering::Relaxed);
    let mut all: Vec<Operation> = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap());
    }
    let unanswered = all.iter().filter(|o| o.answer.is_none()).count();
    assert!(unanswered > 0 && killed_at < all.len(), "the kill interrupted the load ({killed_at} answered)");

    // Restart and retry every unanswered operation with its key; re-send some answered ones too.
    let server = start(&setup, port).await;
    let http = reqwest::Client::new();
    for operation in all.iter_mut().filter(|o| o.answer.is_none()) {
        for _ in 0..50 {
            operation.answer = send(&http, &server.base, operation).await;
            if operation.answer.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(operation.answer.is_some(), "{} never got an answer", operation.key);
    }
    for operation in all.iter().step_by(37) {
        let again = send(&http, &server.base, operation).await;
        assert_eq!(again, operation.answer, "{} replays its original answer", operation.key);
    }

    // Exactly the acknowledged operations, each once.
    let mut expected = [INITIAL_CENTS; WALLETS];
    let mut events = [1u64; WALLETS];
    let mut transactions = BTreeMap::new();
    for operation in &all {
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
    let strong = balances(&http, &server.base, "strong").await;
    for wallet in 0..WALLETS {
        assert_eq!(strong[wallet], (expected[wallet], events[wallet]), "w{wallet}: balance and event count");
    }
    let mut converged = false;
    // Bounded by the consumer-group session timeout: the killed consumers' partitions move on.
    for _ in 0..1_200 {
        if balances(&http, &server.base, "eventual").await == strong {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(converged, "the read model converges to the write side after the restart");
    drop(server);
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir).unwrap();
    }
}
