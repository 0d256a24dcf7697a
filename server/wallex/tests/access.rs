//! Who may do what, on both SQL stores: every route × every kind of credential, each with the
//! status the issue's rules give (written out here from those rules, not from the server's table).
//! Then: idempotency keys are per API key, a key past its rate gets 429 and recovers, a revoked
//! key stops working on another instance within a second, and the audit trail records it all.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use wallex_engine::{OwnerId, Timestamp};
use wallex_http::access::{Rate, RateLimits};
use wallex_http::{AppState, router};
use wallex_pipeline::bus::InProcessBus;
use wallex_pipeline::ports::{EventStore, KeyStore, ProjectionStore, Scope};
use wallex_pipeline::{Pipeline, PipelineConfig, SystemClock};

/// Rates no test of the table reaches.
fn generous() -> RateLimits {
    let rate = Rate { per_second: 1_000_000, burst: 1_000_000 };
    RateLimits { read: rate, write: rate, mint: rate, admin: rate }
}

struct Api {
    router: axum::Router,
    _pipeline: Pipeline,
}

async fn api<S: EventStore + ProjectionStore + KeyStore + std::fmt::Debug>(store: S, rates: RateLimits) -> Api {
    let bus = InProcessBus::new();
    let pipeline = Pipeline::start(store.clone(), bus.clone(), SystemClock, PipelineConfig::default()).await.unwrap();
    let state = AppState::new(pipeline.commands.clone(), store.clone(), pipeline.stats.clone(), "in-process")
        .with_bus(bus)
        .with_keys(store, rates);
    Api { router: router(Arc::new(state)), _pipeline: pipeline }
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        secret: Option<&str>,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(secret) = secret {
            request = request.header("authorization", format!("Bearer {secret}"));
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Body::from(body.map(|body| body.to_string()).unwrap_or_default())).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer { status, headers, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
    }
}

/// Stores a key made as the server makes them; its secret.
async fn key<S: KeyStore>(store: &S, scopes: &[Scope], owner: Option<&str>, expires_at: Option<Timestamp>) -> String {
    let owner = owner.map(|owner| OwnerId::parse(owner).unwrap());
    let made =
        wallex_http::auth::new_key(scopes.to_vec(), owner, None, expires_at, Timestamp::from_unix_micros(1)).unwrap();
    store.create_key(&made.key).await.unwrap();
    made.secret
}

/// A credential a request is sent with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Credential {
    None,
    /// Well-formed, naming a key that does not exist.
    Unknown,
    /// A real key's id with another secret.
    WrongSecret,
    Revoked,
    Expired,
    /// A key of one scope, bound to no owner, on alice's wallets.
    Unbound(Scope),
    /// A key of one scope bound to alice, on alice's wallets.
    Own(Scope),
    /// A key of one scope bound to alice, on bob's wallets.
    Other(Scope),
}

/// What a route needs, and what it answers a key that may use it.
#[derive(Clone, Copy, Debug)]
struct Route {
    method: &'static str,
    /// `{w}` is the target wallet, `{o}` its owner, `{to}` a wallet of the other owner, `{h}` a
    /// fresh hold on the target wallet, `{n}` something new.
    path: &'static str,
    body: Option<&'static str>,
    /// Every scope the request needs (`admin` has them all).
    needs: &'static [Scope],
    /// Whether it concerns every owner (operations, administration): no owner-bound key may use it.
    whole: bool,
    /// What a key that may use it gets on its own wallets, and on another owner's.
    own: u16,
    other: u16,
}

const R: &[Scope] = &[Scope::Read];
const W: &[Scope] = &[Scope::Write];
const M: &[Scope] = &[Scope::Mint];
const WM: &[Scope] = &[Scope::Write, Scope::Mint];
const A: &[Scope] = &[Scope::Admin];

#[rustfmt::skip]
const ROUTES: &[Route] = &[
    // Creating a wallet: `write`; with money in it, `mint` too. An owner's key creates its owner's only.
    Route { method: "POST", path: "/wallets", body: Some(r#"{"walletId": "{n}", "ownerId": "{o}"}"#), needs: W, whole: false, own: 201, other: 403 },
    Route { method: "POST", path: "/wallets", body: Some(r#"{"walletId": "{n}", "ownerId": "{o}", "initialBalance": 5}"#), needs: WM, whole: false, own: 201, other: 403 },
    Route { method: "POST", path: "/wallets", body: Some(r#"{"walletId": "{n}", "ownerId": "{o}", "overdraftLimit": 5}"#), needs: WM, whole: false, own: 201, other: 403 },
    Route { method: "GET", path: "/wallets?ownerId={o}", body: None, needs: R, whole: false, own: 200, other: 403 },
    Route { method: "GET", path: "/wallets", body: None, needs: R, whole: false, own: 200, other: 200 },
    Route { method: "GET", path: "/wallets/{w}", body: None, needs: R, whole: false, own: 200, other: 404 },
    Route { method: "POST", path: "/wallets/{w}/credit", body: Some(r#"{"amount": 1}"#), needs: M, whole: false, own: 201, other: 404 },
    Route { method: "POST", path: "/wallets/{w}/debit", body: Some(r#"{"amount": 1}"#), needs: W, whole: false, own: 201, other: 404 },
    Route { method: "POST", path: "/wallets/{w}/transfer", body: Some(r#"{"toWalletId": "{to}", "amount": 1}"#), needs: W, whole: false, own: 201, other: 404 },
    Route { method: "POST", path: "/wallets/{w}/holds", body: Some(r#"{"amount": 1}"#), needs: W, whole: false, own: 201, other: 404 },
    Route { method: "GET", path: "/wallets/{w}/events", body: None, needs: R, whole: false, own: 200, other: 404 },
    Route { method: "GET", path: "/wallets/{w}/balance?version=1", body: None, needs: R, whole: false, own: 200, other: 404 },
    Route { method: "GET", path: "/holds/{h}", body: None, needs: R, whole: false, own: 200, other: 404 },
    Route { method: "POST", path: "/holds/{h}/capture", body: Some("{}"), needs: W, whole: false, own: 201, other: 404 },
    Route { method: "POST", path: "/holds/{h}/void", body: None, needs: W, whole: false, own: 201, other: 404 },
    Route { method: "GET", path: "/ledger/wallet/{w}", body: None, needs: R, whole: false, own: 200, other: 404 },
    Route { method: "GET", path: "/ledger/wallet/{w}/summary", body: None, needs: R, whole: false, own: 200, other: 404 },
    Route { method: "GET", path: "/ledger/reference/ref-{w}", body: None, needs: R, whole: false, own: 200, other: 200 },
    Route { method: "GET", path: "/ledger/transactions?walletId={w}", body: None, needs: R, whole: false, own: 200, other: 404 },
    Route { method: "GET", path: "/ledger/transactions", body: None, needs: R, whole: false, own: 403, other: 403 },
    // A batch needs `write`, and each operation what its own route needs, on wallets the key may
    // see: an atomic batch answers the refused operation's status; an independent one answers 200
    // with the refusal among its results.
    Route { method: "POST", path: "/batch", body: Some(r#"{"atomic": true, "operations": [{"type": "debit", "walletId": "{w}", "amount": 1}, {"type": "transfer", "walletId": "{w}", "toWalletId": "{to}", "amount": 1}]}"#), needs: W, whole: false, own: 201, other: 404 },
    Route { method: "POST", path: "/batch", body: Some(r#"{"atomic": true, "operations": [{"type": "credit", "walletId": "{w}", "amount": 1}]}"#), needs: WM, whole: false, own: 201, other: 404 },
    Route { method: "POST", path: "/batch", body: Some(r#"{"atomic": true, "operations": [{"type": "create_wallet", "walletId": "{n}", "ownerId": "{o}"}, {"type": "place_hold", "walletId": "{w}", "holdId": "{n}", "amount": 1}]}"#), needs: W, whole: false, own: 201, other: 403 },
    Route { method: "POST", path: "/batch", body: Some(r#"{"operations": [{"type": "transfer", "walletId": "{w}", "toWalletId": "{to}", "amount": 1}]}"#), needs: W, whole: false, own: 200, other: 200 },
    Route { method: "GET", path: "/admin/keys", body: None, needs: A, whole: true, own: 200, other: 200 },
    Route { method: "POST", path: "/admin/keys", body: Some(r#"{"scopes": ["read"], "name": "made {n}"}"#), needs: A, whole: true, own: 201, other: 201 },
    Route { method: "GET", path: "/admin/audit", body: None, needs: A, whole: true, own: 200, other: 200 },
    Route { method: "GET", path: "/health", body: None, needs: R, whole: true, own: 200, other: 200 },
    Route { method: "GET", path: "/health/kafka/stats", body: None, needs: R, whole: true, own: 200, other: 200 },
    Route { method: "GET", path: "/metrics", body: None, needs: R, whole: true, own: 200, other: 200 },
];

/// Open to anyone, with or without a key.
const OPEN: &[&str] = &["/health/live", "/health/ready", "/openapi.json"];

/// The status the rules give `route` for `credential`.
fn expected(route: &Route, credential: Credential) -> u16 {
    let (scope, bound, other) = match credential {
        Credential::None
        | Credential::Unknown
        | Credential::WrongSecret
        | Credential::Revoked
        | Credential::Expired => {
            return 401;
        }
        Credential::Unbound(scope) => (scope, false, false),
        Credential::Own(scope) => (scope, true, false),
        Credential::Other(scope) => (scope, true, true),
    };
    if !route.needs.iter().all(|needed| scope == *needed || scope == Scope::Admin) {
        return 403;
    }
    if route.whole && bound {
        return 403;
    }
    // A key bound to no owner is like its owner on every wallet; the ledger-wide search needs no
    // wallet from it.
    match (bound, other) {
        (false, _) if route.path == "/ledger/transactions" => 200,
        (_, true) => route.other,
        _ => route.own,
    }
}

/// Every route with every credential, and what it changed when refused.
async fn table<S: EventStore + ProjectionStore + KeyStore + std::fmt::Debug>(store: S) {
    let api = api(store.clone(), generous()).await;
    let admin = key(&store, &[Scope::Admin], None, None).await;
    let fund = |wallet: &str, owner: &str| json!({"walletId": wallet, "ownerId": owner, "initialBalance": 1_000_000, "referenceId": format!("ref-{wallet}")});
    assert_eq!(api.call("POST", "/wallets", Some(&admin), None, Some(fund("alice-w", "alice"))).await.status, 201);
    assert_eq!(api.call("POST", "/wallets", Some(&admin), None, Some(fund("bob-w", "bob"))).await.status, 201);

    let revoked = key(&store, &Scope::ALL, None, None).await;
    let revoked_id = wallex_http::auth::key_id(&revoked).unwrap().to_owned();
    assert!(store.revoke_key(&revoked_id, Timestamp::from_unix_micros(2)).await.unwrap());
    let expired = key(&store, &Scope::ALL, None, Some(Timestamp::from_unix_micros(3))).await;
    let wrong_secret = format!("{}_{}", admin.rsplit_once('_').unwrap().0, "0".repeat(64));
    let unknown = format!("wlx_key_0123456789abcdef_{}", "1".repeat(64));
    let mut secrets = Vec::new();
    for scope in Scope::ALL {
        let unbound = key(&store, &[scope], None, None).await;
        let owned = key(&store, &[scope], Some("alice"), None).await;
        secrets.push((scope, unbound, owned));
    }

    let mut credentials = vec![
        (Credential::None, None),
        (Credential::Unknown, Some(unknown)),
        (Credential::WrongSecret, Some(wrong_secret)),
        (Credential::Revoked, Some(revoked)),
        (Credential::Expired, Some(expired)),
    ];
    for (scope, unbound, owned) in &secrets {
        credentials.push((Credential::Unbound(*scope), Some(unbound.clone())));
        credentials.push((Credential::Own(*scope), Some(owned.clone())));
        credentials.push((Credential::Other(*scope), Some(owned.clone())));
    }

    let mut checked = 0;
    let mut fresh = 0u32;
    for route in ROUTES {
        for (credential, secret) in &credentials {
            fresh += 1;
            let (wallet, owner, to) = match credential {
                Credential::Other(_) => ("bob-w", "bob", "alice-w"),
                _ => ("alice-w", "alice", "bob-w"),
            };
            // A hold of its own for each request that names one, placed by the admin.
            let hold = format!("h-{fresh}");
            if route.path.contains("{h}") {
                let body = json!({"amount": 1, "holdId": hold});
                let placed =
                    api.call("POST", &format!("/wallets/{wallet}/holds"), Some(&admin), None, Some(body)).await;
                assert_eq!(placed.status, 201, "{placed:?}");
            }
            let fill = |text: &str| {
                text.replace("{w}", wallet)
                    .replace("{o}", owner)
                    .replace("{to}", to)
                    .replace("{h}", &hold)
                    .replace("{n}", &format!("new-{fresh}"))
            };
            let body = route.body.map(|body| serde_json::from_str::<Value>(&fill(body)).unwrap());
            let before = api.call("GET", &format!("/wallets/{wallet}"), Some(&admin), None, None).await.body;
            let answer = api.call(route.method, &fill(route.path), secret.as_deref(), None, body).await;
            let want = expected(route, *credential);
            assert_eq!(
                answer.status.as_u16(),
                want,
                "{} {} with {credential:?}: {}",
                route.method,
                route.path,
                answer.body
            );
            if want >= 400 {
                assert_eq!(
                    answer.headers.get("content-type").map(|value| value.to_str().unwrap()),
                    Some("application/problem+json"),
                    "{} {} with {credential:?}",
                    route.method,
                    route.path
                );
                let after = api.call("GET", &format!("/wallets/{wallet}"), Some(&admin), None, None).await.body;
                assert_eq!(before["version"], after["version"], "a refused request changes nothing");
            }
            if want == 401 {
                assert_eq!(answer.headers.get("www-authenticate").unwrap(), "Bearer");
            }
            checked += 1;
        }
    }
    for path in OPEN {
        for (credential, secret) in &credentials {
            let answer = api.call("GET", path, secret.as_deref(), None, None).await;
            assert_eq!(answer.status, StatusCode::OK, "{path} with {credential:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, (ROUTES.len() + OPEN.len()) * credentials.len());

    // What an owner's key sees of lists is its own owner's alone.
    let (_, _, alice_read) = &secrets[0];
    let listed = api.call("GET", "/wallets?limit=1000", Some(alice_read), None, None).await;
    let owners: Vec<&str> =
        listed.body.as_array().unwrap().iter().map(|wallet| wallet["ownerId"].as_str().unwrap()).collect();
    assert!(!owners.is_empty() && owners.iter().all(|owner| *owner == "alice"), "{owners:?}");
    let all = api.call("GET", "/wallets?limit=1000", Some(&admin), None, None).await;
    assert!(all.body.as_array().unwrap().iter().any(|wallet| wallet["ownerId"] == "bob"), "the admin sees every owner");
    let legs = api.call("GET", "/ledger/reference/ref-bob-w", Some(alice_read), None, None).await;
    assert_eq!(legs.body["count"], 0, "another owner's reference shows nothing: {}", legs.body);
    let legs = api.call("GET", "/ledger/reference/ref-alice-w", Some(alice_read), None, None).await;
    assert_eq!(legs.body["count"], 1, "{}", legs.body);

    // The audit trail has the first use of each key that was used, and every admin request.
    let trail = api.call("GET", "/admin/audit?limit=1000", Some(&admin), None, None).await;
    let records = trail.body.as_array().unwrap();
    let first_uses = records.iter().filter(|record| record["action"] == "key_first_used").count();
    assert_eq!(first_uses, 1 + 2 * Scope::ALL.len(), "the admin's and every scoped key's, once each");
    assert!(records.iter().any(|record| record["action"] == "key_created"), "keys made over /admin/keys");
    assert!(records.iter().all(|record| record.to_string().find("wlx_").is_none()), "no secret in the trail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_credential_as_the_rules_say_on_sqlite() {
    let directory = std::env::temp_dir().join(format!("wallex-access-{}", uuid::Uuid::new_v4().simple()));
    let store = wallex_sql::SqliteStore::open(&directory).await.unwrap();
    table(store.clone()).await;
    store.close().await;
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_credential_as_the_rules_say_on_postgres() {
    let database = wallex_testkit::services::postgres().await;
    let store = wallex_sql::PostgresStore::connect(&database.url).await.unwrap();
    table(store.clone()).await;
    store.close().await;
}

#[tokio::test]
async fn two_keys_sending_one_idempotency_key_get_independent_effects_and_answers() {
    let store = wallex_testkit::memory::MemoryStore::new();
    let api = api(store.clone(), generous()).await;
    let first = key(&store, &[Scope::Read, Scope::Write, Scope::Mint], None, None).await;
    let second = key(&store, &[Scope::Read, Scope::Write, Scope::Mint], None, None).await;
    let create = json!({"walletId": "shared", "ownerId": "o"});
    assert_eq!(api.call("POST", "/wallets", Some(&first), Some("w-1"), Some(create)).await.status, 201);

    let credit = json!({"amount": "10.00"});
    let one = api.call("POST", "/wallets/shared/credit", Some(&first), Some("order-1"), Some(credit.clone())).await;
    let two = api.call("POST", "/wallets/shared/credit", Some(&second), Some("order-1"), Some(credit.clone())).await;
    assert_eq!((one.status, two.status), (StatusCode::CREATED, StatusCode::CREATED));
    assert!(one.headers.get("idempotent-replayed").is_none() && two.headers.get("idempotent-replayed").is_none());
    assert_ne!(one.body["transactionId"], two.body["transactionId"], "two commands, not a replay");
    assert_eq!(two.body["balance"], "20.00", "both took effect");

    // Each key's retry is its own replay; another body under the other key's name is no conflict.
    let again = api.call("POST", "/wallets/shared/credit", Some(&first), Some("order-1"), Some(credit)).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.body["transactionId"], one.body["transactionId"]);
    let other_body = json!({"amount": "3.00"});
    let third = api.call("POST", "/wallets/shared/credit", Some(&second), Some("w-1"), Some(other_body)).await;
    assert_eq!(third.status, StatusCode::CREATED, "the first key's `w-1` is not the second's: {}", third.body);
    let wallet = api.call("GET", "/wallets/shared", Some(&first), None, None).await;
    assert_eq!(wallet.body["balance"], "23.00");
}

#[tokio::test]
async fn a_key_past_its_rate_gets_429_with_the_ratelimit_headers_and_recovers() {
    let store = wallex_testkit::memory::MemoryStore::new();
    let rates = RateLimits { read: Rate { per_second: 2, burst: 3 }, ..generous() };
    let api = api(store.clone(), rates).await;
    let reader = key(&store, &[Scope::Read], None, None).await;
    let other = key(&store, &[Scope::Read], None, None).await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let answer = api.call("GET", "/wallets", Some(&reader), None, None).await;
        statuses.push(answer.status.as_u16());
        if answer.status == StatusCode::TOO_MANY_REQUESTS && limited.is_none() {
            limited = Some(answer);
        }
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "the burst passes");
    assert!(statuses[3..].contains(&429), "then the bucket is empty: {statuses:?}");
    let limited = limited.unwrap();
    assert_eq!(limited.body["code"], "rate_limited");
    let retry: u64 = limited.headers.get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(limited.headers.get("ratelimit-policy").unwrap(), "\"key\";q=3;w=2");
    assert!(limited.headers.get("ratelimit").unwrap().to_str().unwrap().starts_with("\"key\";r=0;t="));

    // Another key has its own bucket.
    let fine = api.call("GET", "/wallets", Some(&other), None, None).await;
    assert_eq!(fine.status, StatusCode::OK);
    assert!(fine.headers.get("ratelimit").unwrap().to_str().unwrap().starts_with("\"key\";r=2;"));

    // After the wait it asked for, the key is served again.
    tokio::time::sleep(Duration::from_secs(retry) + Duration::from_millis(100)).await;
    assert_eq!(api.call("GET", "/wallets", Some(&reader), None, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_revoked_key_stops_working_on_every_instance_within_a_second() {
    let store = wallex_testkit::memory::MemoryStore::new();
    let one = api(store.clone(), generous()).await;
    let two = api(store.clone(), generous()).await;
    let admin = key(&store, &[Scope::Admin], None, None).await;
    let made = one.call("POST", "/admin/keys", Some(&admin), None, Some(json!({"scopes": ["read"]}))).await;
    assert_eq!(made.status, StatusCode::CREATED);
    let secret = made.body["secret"].as_str().unwrap().to_owned();
    let id = made.body["id"].as_str().unwrap().to_owned();
    assert_eq!(two.call("GET", "/wallets", Some(&secret), None, None).await.status, StatusCode::OK, "cached by two");
    let listed = one.call("GET", "/admin/keys", Some(&admin), None, None).await;
    assert!(listed.body.to_string().find(&secret).is_none(), "a secret is shown once");

    let revoked = one.call("POST", &format!("/admin/keys/{id}/revoke"), Some(&admin), None, None).await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(revoked.body["revokedAt"].is_string());
    assert_eq!(
        one.call("GET", "/wallets", Some(&secret), None, None).await.status,
        StatusCode::UNAUTHORIZED,
        "at once here"
    );
    let started = std::time::Instant::now();
    let mut status = StatusCode::OK;
    while started.elapsed() < Duration::from_secs(3) && status == StatusCode::OK {
        status = two.call("GET", "/wallets", Some(&secret), None, None).await.status;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let answer = two.call("GET", "/wallets", Some(&secret), None, None).await;
    assert_eq!(answer.body["code"], "key_revoked");

    let trail = one.call("GET", "/admin/audit", Some(&admin), None, None).await.body;
    let revocation = trail.as_array().unwrap().iter().find(|record| record["action"] == "key_revoked").unwrap();
    assert_eq!(revocation["target"], id.as_str());
    assert_eq!(revocation["actor"], wallex_http::auth::key_id(&admin).unwrap());
    assert!(revocation["requestId"].is_string(), "with the request's correlation id");
}

#[tokio::test]
async fn without_any_key_the_server_is_open_and_the_first_key_closes_it_for_good() {
    let store = wallex_testkit::memory::MemoryStore::new();
    let api = api(store.clone(), generous()).await;
    let create = json!({"walletId": "dev", "ownerId": "o", "initialBalance": 5});
    assert_eq!(api.call("POST", "/wallets", None, None, Some(create)).await.status, StatusCode::CREATED);
    let made = api.call("POST", "/admin/keys", None, None, Some(json!({"scopes": ["admin"]}))).await;
    assert_eq!(made.status, StatusCode::CREATED, "development mode may do anything");
    let secret = made.body["secret"].as_str().unwrap().to_owned();
    assert_eq!(api.call("GET", "/wallets/dev", None, None, None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(api.call("GET", "/wallets/dev", Some(&secret), None, None).await.status, StatusCode::OK);
    let id = made.body["id"].as_str().unwrap();
    assert_eq!(api.call("POST", &format!("/admin/keys/{id}/revoke"), Some(&secret), None, None).await.status, 200);
    assert_eq!(
        api.call("GET", "/wallets/dev", None, None, None).await.status,
        StatusCode::UNAUTHORIZED,
        "revoking every key does not reopen the server"
    );
}
