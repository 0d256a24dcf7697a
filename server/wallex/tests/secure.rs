//! Secure defaults and secrets, through the real binary: without a key the server will not listen
//! beyond loopback (unless told `--insecure-allow-anonymous`); with one it requires it; and no
//! secret used in a run appears in any line it logs (at `debug`) or in any answer but the one that
//! created it.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wallex-{name}-{}", uuid::Uuid::new_v4().simple()))
}

fn wallex(data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wallex"));
    for name in ["DATABASE_URL", "KAFKA_BROKERS", "PORT", "RUST_LOG"] {
        command.env_remove(name);
    }
    command.env("WALLEX_STORE__DATA_DIR", data_dir);
    command
}

/// `wallex keys create --scope admin` on `data_dir`: the secret.
fn admin_key(data_dir: &Path) -> String {
    let output = wallex(data_dir).args(["keys", "create", "--scope", "admin"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().last().unwrap().to_owned()
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

/// Starts `wallex serve` listening on `listen`, its output to `log`, and waits until it answers.
async fn serve(data_dir: &Path, listen: &str, extra: &[&str], log: &Path) -> Server {
    let port = listen.rsplit_once(':').unwrap().1;
    let out = std::fs::File::create(log).unwrap();
    let child = wallex(data_dir)
        .env("RUST_LOG", "debug")
        .args(["serve", "--listen", listen])
        .args(extra)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let server = Server { child, base: format!("http://127.0.0.1:{port}") };
    let http = reqwest::Client::new();
    for _ in 0..400 {
        if http.get(format!("{}/health/live", server.base)).send().await.is_ok_and(|r| r.status().is_success()) {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the server did not come up: {}", std::fs::read_to_string(log).unwrap_or_default());
}

#[tokio::test]
async fn without_keys_the_server_stays_on_loopback_unless_told_and_with_keys_requires_them() {
    let data_dir = temp("secure-defaults");
    let log = temp("secure-defaults-log");

    // No key, another address: refused, saying why and what to do.
    let port = free_port();
    let mut refused = wallex(&data_dir)
        .args(["serve", "--listen", &format!("0.0.0.0:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the server started on 0.0.0.0 without keys");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    refused.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("refusing to serve") && stderr.contains("--insecure-allow-anonymous"), "{stderr}");

    // Told so, it serves anyone, saying loudly that it does.
    let listen = format!("0.0.0.0:{}", free_port());
    let server = serve(&data_dir, &listen, &["--insecure-allow-anonymous"], &log).await;
    let http = reqwest::Client::new();
    let open = http.get(format!("{}/wallets", server.base)).send().await.unwrap();
    assert_eq!(open.status(), 200);
    drop(server);
    assert!(std::fs::read_to_string(&log).unwrap().contains("DEVELOPMENT MODE"));

    // With a key it serves on any address, and only requests that carry one.
    let secret = admin_key(&data_dir);
    let server = serve(&data_dir, &format!("0.0.0.0:{}", free_port()), &[], &log).await;
    let bare = http.get(format!("{}/wallets", server.base)).send().await.unwrap();
    assert_eq!(bare.status(), 401);
    assert_eq!(bare.headers()["www-authenticate"], "Bearer");
    let keyed = http.get(format!("{}/wallets", server.base)).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(keyed.status(), 200);
    let live = http.get(format!("{}/health/live", server.base)).send().await.unwrap();
    assert_eq!(live.status(), 200, "liveness stays open");
    let metrics = http.get(format!("{}/metrics", server.base)).send().await.unwrap();
    assert_eq!(metrics.status(), 401, "metrics on the main listener need a key");
    drop(server);

    // The operational routes on a listener of their own are open there, and gone from the main one.
    let ops = free_port();
    let server =
        serve(&data_dir, &format!("127.0.0.1:{}", free_port()), &["--ops-listen", &format!("127.0.0.1:{ops}")], &log)
            .await;
    let metrics = http.get(format!("http://127.0.0.1:{ops}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let moved = http.get(format!("{}/metrics", server.base)).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(moved.status(), 404);
    drop(server);
    let _ = std::fs::remove_dir_all(&data_dir);
    let _ = std::fs::remove_file(&log);
}

#[tokio::test]
async fn no_secret_appears_in_a_log_line_or_an_error_body() {
    let data_dir = temp("secrets");
    let log = temp("secrets-log");
    let admin = admin_key(&data_dir);
    let server = serve(&data_dir, &format!("127.0.0.1:{}", free_port()), &[], &log).await;
    let http = reqwest::Client::new();
    let base = &server.base;
    let mut bodies = Vec::new();

    let made = http
        .post(format!("{base}/admin/keys"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(r#"{"scopes": ["read", "write", "mint"], "ownerId": "alice", "name": "alice's app"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let made: serde_json::Value = serde_json::from_str(&made.text().await.unwrap()).unwrap();
    let alice = made["secret"].as_str().unwrap().to_owned();
    let alice_id = made["id"].as_str().unwrap().to_owned();
    let wrong = format!("{}_{}", alice.rsplit_once('_').unwrap().0, "f".repeat(64));
    let secrets = [admin.clone(), alice.clone(), wrong.clone()];

    let create = r#"{"walletId": "alice-w", "ownerId": "alice", "initialBalance": 10}"#;
    let requests: Vec<(&str, String, &str, Option<&str>)> = vec![
        ("POST", "/wallets".to_owned(), alice.as_str(), Some(create)),
        ("POST", "/wallets/alice-w/debit".to_owned(), alice.as_str(), Some(r#"{"amount": 1000}"#)),
        ("POST", "/wallets/alice-w/debit".to_owned(), alice.as_str(), Some("{not json")),
        ("GET", "/wallets/nobody".to_owned(), alice.as_str(), None),
        ("GET", "/admin/keys".to_owned(), alice.as_str(), None),
        ("GET", "/wallets".to_owned(), wrong.as_str(), None),
        ("GET", "/admin/keys".to_owned(), admin.as_str(), None),
        ("GET", "/admin/audit".to_owned(), admin.as_str(), None),
        ("POST", format!("/admin/keys/{alice_id}/revoke"), admin.as_str(), None),
        ("GET", "/wallets/alice-w".to_owned(), alice.as_str(), None),
    ];
    let mut statuses = Vec::new();
    for (method, path, secret, body) in requests {
        let mut request = http.request(method.parse().unwrap(), format!("{base}{path}")).bearer_auth(secret);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let answer = request.send().await.unwrap();
        statuses.push(answer.status().as_u16());
        bodies.push(answer.text().await.unwrap());
    }
    assert_eq!(statuses, [201, 422, 400, 404, 403, 401, 200, 200, 200, 401], "{bodies:?}");
    // Stop it gracefully, so every line is written.
    let _ = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status();
    std::thread::sleep(Duration::from_secs(1));
    drop(server);

    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.lines().count() > 20, "a debug run logs plenty: {logged}");
    assert!(logged.contains("request denied") && logged.contains(&alice_id), "denials are logged by key id");
    for secret in &secrets {
        let random = secret.rsplit_once('_').unwrap().1;
        assert!(!logged.contains(random), "a secret in the log");
        for body in &bodies {
            assert!(!body.contains(random), "a secret in an answer: {body}");
        }
    }
    let _ = std::fs::remove_dir_all(&data_dir);
    let _ = std::fs::remove_file(&log);
}
