//! Real faults on real processes: the `wallex serve` binary under load while PostgreSQL crashes
//! (`pg_ctl stop -m immediate`, then started again), while the Kafka broker is gone for longer than
//! the producer's message timeout (and comes back empty), and while the embedded store's disk is
//! full (a small tmpfs filled to the last byte, then freed).
//!
//! Each time, clients keep sending credits, debits and transfers under their own Idempotency-Keys
//! and retry every undecided answer (503, 409, a dropped connection) with the same key and body.
//! Then: what the fault should do to writes happened while it lasted (503 on a dead store or a full
//! disk; nothing at all on a dead broker, whose events wait in the outbox), writes recovered by
//! themselves, the balances equal the initial ones plus exactly the acknowledged operations (none
//! lost, none applied twice), every wallet has exactly one event per acknowledged operation, a
//! retried key answers its original transaction, and the read side converges to the write side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wallex_testkit::services::parse_exports;

mod load;
use load::{Operation, operations};

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 150;
const WALLETS: usize = 10;
const INITIAL_CENTS: i64 = 1_000_000;
/// How long a client keeps retrying one operation before the test fails.
const PATIENCE: Duration = Duration::from_secs(90);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts").join(name)
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A PostgreSQL cluster of the test's own (the shared one must not crash under other tests).
struct Postgres {
    url: String,
    dir: String,
}

impl Postgres {
    fn start() -> Postgres {
        let found = parse_exports(&run(Command::new(script("postgres")).arg("start")));
        Postgres { url: found["DATABASE_URL"].clone(), dir: found["WALLEX_PG_DIR"].clone() }
    }

    fn crash(&self) {
        run(Command::new(script("postgres")).args(["crash", &self.dir]));
    }

    fn resume(&self) {
        run(Command::new(script("postgres")).args(["resume", &self.dir]));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(script("postgres")).args(["stop", &self.dir]).status();
    }
}

/// A broker of the test's own, on a port it keeps across a restart.
struct Broker {
    port: u16,
    dir: Option<String>,
}

impl Broker {
    fn start(port: u16) -> Broker {
        let found = parse_exports(&run(Command::new(script("kafka")).args(["start", &port.to_string()])));
        Broker { port, dir: Some(found["WALLEX_KAFKA_DIR"].clone()) }
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(dir) = self.dir.take() {
            run(Command::new(script("kafka")).args(["stop", &dir]));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A small tmpfs: a disk that fills up.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> SmallDisk {
        let path = std::env::temp_dir().join(format!("wallex-disk-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).unwrap();
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={megabytes}M"), "tmpfs"]).arg(&path));
        SmallDisk { path }
    }

    /// Writes a file until the disk refuses another byte.
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.path.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match filler.write(&block) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let mut byte = [0u8; 1];
        while filler.write(&byte).is_ok_and(|written| written == 1) {
            byte[0] = 0;
        }
        let _ = filler.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `wallex serve` with these environment variables and settings.
async fn serve(data_dir: &Path, database: Option<&str>, brokers: Option<&str>, settings: &[&str]) -> Server {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_wallex"));
    command.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"]).arg(data_dir);
    match database {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.env_remove("DATABASE_URL"),
    };
    match brokers {
        Some(brokers) => command.env("KAFKA_BROKERS", brokers),
        None => command.env_remove("KAFKA_BROKERS"),
    };
    // Repairs and reconciliation in seconds, so a test sees them.
    for setting in ["pipeline.projector.repair_after_ms=500", "pipeline.projector.reconcile_interval_ms=1000"]
        .iter()
        .chain(settings)
    {
        command.args(["--set", setting]);
    }
    let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let server = Server { child, base: format!("http://127.0.0.1:{port}") };
    let http = reqwest::Client::new();
    for _ in 0..400 {
        if http.get(format!("{}/health/live", server.base)).send().await.is_ok_and(|r| r.status().is_success()) {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the server did not come up");
}

/// One attempt: the decided answer, or `Err(status)` (0 for no answer) when it must be retried.
async fn attempt(http: &reqwest::Client, base: &str, operation: &Operation) -> Result<(u16, Option<String>), u16> {
    let response = http
        .post(format!("{base}{}", operation.path))
        .header("content-type", "application/json")
        .header("idempotency-key", &operation.key)
        .body(operation.body.clone())
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .map_err(|_| 0u16)?;
    let status = response.status().as_u16();
    let body: Value = serde_json::from_str(&response.text().await.map_err(|_| 0u16)?).unwrap_or(Value::Null);
    match status {
        503 | 409 => Err(status),
        500..=599 => panic!("{} answered {status}: {body}", operation.key),
        _ => Ok((status, body["transactionId"].as_str().map(str::to_owned))),
    }
}

/// What the clients saw while the fault lasted.
#[derive(Default)]
struct Observed {
    during_fault: AtomicBool,
    unavailable_during_fault: AtomicUsize,
    decided_during_fault: AtomicUsize,
    decided: AtomicUsize,
}

/// Runs the clients until every operation is decided; `fault` runs beside them once a quarter of
/// the load is answered.
async fn load<F, Fut>(base: &str, tag: &str, fault: F) -> (Vec<Operation>, Arc<Observed>)
where
    F: FnOnce(Arc<Observed>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let admin = reqwest::Client::new();
    for wallet in 0..WALLETS {
        let body = json!({"walletId": format!("w{wallet}"), "ownerId": tag, "initialBalance": "10000.00"});
        let response = admin
            .post(format!("{base}/wallets"))
            .header("content-type", "application/json")
            .header("idempotency-key", format!("{tag}-create-{wallet}"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201, "{}", response.text().await.unwrap());
    }
    let observed = Arc::new(Observed::default());
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (base, observed, tag) = (base.to_owned(), observed.clone(), tag.to_owned());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
            let mut work = operations(client, PER_CLIENT, WALLETS, &tag);
            for operation in &mut work {
                let started = Instant::now();
                loop {
                    let result = attempt(&http, &base, operation).await;
                    let during = observed.during_fault.load(Ordering::SeqCst);
                    match result {
                        Ok(answer) => {
                            operation.answer = Some(answer);
                            observed.decided.fetch_add(1, Ordering::SeqCst);
                            if during {
                                observed.decided_during_fault.fetch_add(1, Ordering::SeqCst);
                            }
                            break;
                        }
                        Err(status) => {
                            if during && status == 503 {
                                observed.unavailable_during_fault.fetch_add(1, Ordering::SeqCst);
                            }
                            assert!(started.elapsed() < PATIENCE, "{} undecided after {PATIENCE:?}", operation.key);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
            work
        }));
    }
    while observed.decided.load(Ordering::SeqCst) < CLIENTS * PER_CLIENT / 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fault(observed.clone()).await;
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap());
    }
    (all, observed)
}

/// A wallet's balance in cents and its version, as the write side (`strong`) or the read model
/// (`eventual`) has it.
async fn wallet(http: &reqwest::Client, base: &str, index: usize, consistency: &str) -> Option<(i64, u64)> {
    let response = http.get(format!("{base}/wallets/w{index}?consistency={consistency}")).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: Value = serde_json::from_str(&response.text().await.ok()?).ok()?;
    let balance = body["balance"].as_str()?.replace('.', "").parse::<i64>().ok()?;
    Some((balance, body["version"].as_u64()?))
}

/// Exactly the acknowledged operations, each once, on the write side; the read side converges to
/// it; retried keys answer their original transactions.
async fn check(base: &str, operations: &[Operation]) {
    let http = reqwest::Client::new();
    let mut expected = [INITIAL_CENTS; WALLETS];
    let mut versions = [1u64; WALLETS];
    let mut transactions = BTreeMap::new();
    for operation in operations {
        let (status, transaction) = operation.answer.clone().expect("every operation was decided");
        if status == 201 {
            for (wallet, cents) in &operation.effect {
                expected[*wallet] += cents;
                versions[*wallet] += 1;
            }
            let transaction = transaction.expect("a success carries its transaction");
            assert!(transactions.insert(transaction, operation.key.clone()).is_none(), "one transaction, one key");
        } else {
            assert_eq!(status, 422, "{}: only a refusal is not a success", operation.key);
        }
    }
    for index in 0..WALLETS {
        let strong = wallet(&http, base, index, "strong").await.expect("the write side answers");
        assert_eq!(strong, (expected[index], versions[index]), "w{index}: exactly the acknowledged operations");
    }
    for operation in operations.iter().step_by(23) {
        let again = attempt(&http, base, operation).await.expect("a decided key answers again");
        assert_eq!(Some(again), operation.answer, "{} answers its original transaction", operation.key);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for index in 0..WALLETS {
        loop {
            if wallet(&http, base, index, "eventual").await == Some((expected[index], versions[index])) {
                break;
            }
            assert!(Instant::now() < deadline, "w{index}: the read model did not converge");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sends fresh writes (one-cent credits to w0) until one is answered 503, within `within`: the
/// fault is visible to clients. Returns the probes: each may have taken effect (a 503 says the
/// outcome is unknown), so each is settled with its key afterwards and counted like the rest.
async fn expect_unavailable(base: &str, tag: &str, within: Duration) -> Vec<Operation> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + within;
    let mut probes = Vec::new();
    for n in 0.. {
        let mut probe = Operation {
            key: format!("{tag}-probe-{n}"),
            path: "/wallets/w0/credit".to_owned(),
            body: json!({"amount": "0.01"}).to_string(),
            effect: vec![(0, 1)],
            answer: None,
        };
        let result = attempt(&http, base, &probe).await;
        let unavailable = result == Err(503);
        probe.answer = result.clone().ok();
        probes.push(probe);
        if unavailable {
            return probes;
        }
        assert!(Instant::now() < deadline, "writes still answer {result:?} during the fault");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

/// Retries every undecided operation with its key until it is decided.
async fn settle(base: &str, operations: &mut [Operation]) {
    let http = reqwest::Client::new();
    for operation in operations.iter_mut().filter(|operation| operation.answer.is_none()) {
        let started = Instant::now();
        while operation.answer.is_none() {
            operation.answer = attempt(&http, base, operation).await.ok();
            assert!(started.elapsed() < PATIENCE, "{} undecided after {PATIENCE:?}", operation.key);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashing_under_load_answers_503_recovers_and_loses_nothing() {
    let postgres = Postgres::start();
    let data_dir = std::env::temp_dir().join(format!("wallex-faults-{}", uuid::Uuid::new_v4()));
    let server = serve(&data_dir, Some(&postgres.url), None, &[]).await;
    let mut probes = Vec::new();
    let (base, crashing, found) = (&server.base, &postgres, &mut probes);
    let (mut operations, observed) = load(&server.base, "pg", move |observed| async move {
        observed.during_fault.store(true, Ordering::SeqCst);
        crashing.crash();
        *found = expect_unavailable(base, "pg", Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        crashing.resume();
        observed.during_fault.store(false, Ordering::SeqCst);
    })
    .await;
    assert!(observed.unavailable_during_fault.load(Ordering::SeqCst) > 0, "clients saw 503 while it was down");
    settle(&server.base, &mut probes).await;
    operations.extend(probes);
    check(&server.base, &operations).await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_gone_past_the_message_timeout_loses_nothing_and_the_read_side_repairs() {
    let database = wallex_testkit::services::postgres().await;
    // The first broker, and the address its replacement will have (a port in TIME_WAIT cannot be
    // bound again for a minute): both are bootstrap servers from the start, as in production.
    let (first_port, second_port) = (free_port(), free_port());
    let mut broker = Broker::start(first_port);
    let brokers = format!("127.0.0.1:{first_port},127.0.0.1:{second_port}");
    let topic = format!("faults-{}", uuid::Uuid::new_v4().simple());
    let settings = [
        &format!("bus.topic={topic}")[..],
        &format!("bus.dead_letter_topic={topic}-dlq"),
        "bus.replication_factor=1",
        "bus.min_insync_replicas=1",
        "bus.message_timeout_ms=1500",
    ];
    let data_dir = std::env::temp_dir().join(format!("wallex-faults-{}", uuid::Uuid::new_v4()));
    let server = serve(&data_dir, Some(&database.url), Some(&brokers), &settings).await;
    let (operations, observed) = load(&server.base, "bus", |observed| {
        let (broker, topic) = (&mut broker, &topic);
        async move {
            observed.during_fault.store(true, Ordering::SeqCst);
            broker.stop();
            // Longer than the producer's message timeout: what was in flight fails, and retries.
            tokio::time::sleep(Duration::from_secs(4)).await;
            // A replacement comes up empty (the test broker keeps nothing): every message the old
            // one held is gone, acknowledged or not. The topics are provisioned again, as an
            // operator does; the read side must repair what it never received.
            *broker = Broker::start(second_port);
            let mut config = wallex_kafka::KafkaConfig::new(broker.brokers());
            config.topic.clone_from(topic);
            config.dead_letter_topic = format!("{topic}-dlq");
            config.replication_factor = 1;
            config.min_insync_replicas = 1;
            drop(wallex_kafka::KafkaBus::connect(config).await.expect("the topics are created again"));
            observed.during_fault.store(false, Ordering::SeqCst);
        }
    })
    .await;
    // The outbox is the buffer: a dead broker does not stop a single write.
    assert_eq!(observed.unavailable_during_fault.load(Ordering::SeqCst), 0, "no 503 while the broker was gone");
    assert!(observed.decided_during_fault.load(Ordering::SeqCst) > 0, "writes went on without the broker");
    check(&server.base, &operations).await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_load_answers_503_recovers_when_freed_and_loses_nothing() {
    let disk = SmallDisk::mount(64);
    let server = serve(&disk.path.join("data"), None, None, &[]).await;
    let mut probes = Vec::new();
    let (base, full, found) = (&server.base, &disk, &mut probes);
    let (mut operations, observed) = load(&server.base, "disk", move |observed| async move {
        observed.during_fault.store(true, Ordering::SeqCst);
        full.fill();
        *found = expect_unavailable(base, "disk", Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        full.free();
        observed.during_fault.store(false, Ordering::SeqCst);
    })
    .await;
    assert!(observed.unavailable_during_fault.load(Ordering::SeqCst) > 0, "clients saw 503 while the disk was full");
    settle(&server.base, &mut probes).await;
    operations.extend(probes);
    check(&server.base, &operations).await;
}
