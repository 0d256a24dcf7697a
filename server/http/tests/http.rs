//! The REST API through the axum `Router` (`oneshot`), on the in-memory store and bus.
//!
//! Covers the original routes and bodies, exact amounts in and out, the idempotency matrix
//! (replay, other body, concurrent same key), holds, history, pagination, and that bad input of
//! every kind is a 4xx problem+json that changes nothing (never a 5xx). The handlers read through
//! `Queries` and take the time from the state's clock, so one test stands a canned read side and a
//! fixed clock in for the store and the wall clock.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use wallex_engine::{Event, Reference, Timestamp, TransactionId, WalletId};
use wallex_http::{AppState, Queries, router};
use wallex_pipeline::SystemClock;
use wallex_pipeline::bus::InProcessBus;
use wallex_pipeline::ports::{
    Clock, EntryFilter, EventStore, LedgerEntry, StoreError, StoredSnapshot, WalletFilter, WalletSummary, WalletView,
};
use wallex_pipeline::{Pipeline, PipelineConfig, WriterState};
use wallex_testkit::memory::{CommitFault, MemoryStore};

struct Api {
    router: axum::Router,
    _pipeline: Pipeline,
}

async fn api() -> Api {
    let (store, bus) = (MemoryStore::new(), InProcessBus::new());
    let pipeline = Pipeline::start(store.clone(), bus.clone(), SystemClock, PipelineConfig::default()).await.unwrap();
    let state = AppState::new(pipeline.commands.clone(), store.clone(), pipeline.stats.clone(), "in-process")
        .with_bus(bus)
        .with_keys(store, wallex_http::access::RateLimits::default());
    Api { router: router(Arc::new(state)), _pipeline: pipeline }
}

struct Answer {
    status: StatusCode,
    content_type: String,
    replayed: bool,
    /// The `Link` header, if any.
    link: Option<String>,
    body: Value,
}

impl Api {
    async fn call(&self, method: &str, uri: &str, key: Option<&str>, body: Option<&str>) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Body::from(body.unwrap_or_default().to_owned())).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            content_type: headers.get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default(),
            replayed: headers.get("idempotent-replayed").is_some(),
            link: headers.get("link").map(|v| v.to_str().unwrap().to_owned()),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn post(&self, uri: &str, body: Value) -> Answer {
        self.call("POST", uri, None, Some(&body.to_string())).await
    }

    async fn get(&self, uri: &str) -> Answer {
        self.call("GET", uri, None, None).await
    }

    /// Waits (bounded) until the read model shows `wallet` at `version`.
    async fn projected(&self, wallet: &str, version: u64) -> Value {
        for _ in 0..300 {
            let answer = self.get(&format!("/wallets/{wallet}")).await;
            if answer.status == StatusCode::OK && answer.body["version"] == version {
                return answer.body;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{wallet} never reached version {version} in the read model");
    }
}

fn problem(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "{:?}", answer.body);
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.body["code"], code, "{:?}", answer.body);
    assert_eq!(answer.body["status"], status.as_u16());
}

#[tokio::test]
async fn the_original_routes_move_money_exactly() {
    let api = api().await;
    let created =
        api.post("/wallets", json!({"walletId": "wallet-123", "ownerId": "user-456", "initialBalance": 100.00})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["balance"], "100.00");
    assert_eq!(created.body["currency"], "USD", "USD by default");
    api.post("/wallets", json!({"walletId": "wallet-789", "ownerId": "user-1"})).await;

    let credit =
        api.post("/wallets/wallet-123/credit", json!({"amount": 50.10, "description": "Deposit from bank"})).await;
    assert_eq!(credit.status, StatusCode::CREATED, "{:?}", credit.body);
    assert_eq!(credit.body["events"][0]["balanceAfter"], "150.10");
    // The wallet after the credit, as the original answered, beside the transaction.
    assert_eq!((credit.body["id"].as_str(), credit.body["balance"].as_str()), (Some("wallet-123"), Some("150.10")));
    assert_eq!((credit.body["version"].as_u64(), credit.body["ownerId"].as_str()), (Some(2), Some("user-456")));
    assert_eq!(credit.body["transactionId"], credit.body["events"][0]["transactionId"]);
    let debit =
        api.post("/wallets/wallet-123/debit", json!({"amount": "30.05", "description": "ATM withdrawal"})).await;
    assert_eq!(debit.body["events"][0]["balanceAfter"], "120.05");
    let transfer = api
        .post(
            "/wallets/wallet-123/transfer",
            json!({"toWalletId": "wallet-789", "amount": 25, "description": "Payment"}),
        )
        .await;
    assert_eq!(transfer.status, StatusCode::CREATED, "{:?}", transfer.body);
    assert_eq!(transfer.body["events"].as_array().unwrap().len(), 2);
    assert_eq!(
        (transfer.body["fromWallet"]["id"].as_str(), transfer.body["fromWallet"]["balance"].as_str()),
        (Some("wallet-123"), Some("95.05"))
    );
    assert_eq!(
        (transfer.body["toWallet"]["id"].as_str(), transfer.body["toWallet"]["balance"].as_str()),
        (Some("wallet-789"), Some("25.00"))
    );
    assert_eq!(transfer.body["toWallet"]["version"], 2);

    let wallet = api.projected("wallet-123", 4).await;
    assert_eq!((wallet["balance"].as_str(), wallet["ownerId"].as_str()), (Some("95.05"), Some("user-456")));
    assert_eq!(api.projected("wallet-789", 2).await["balance"], "25.00");
    let strong = api.get("/wallets/wallet-123?consistency=strong").await;
    assert_eq!(strong.body["balance"], "95.05");

    // The ledger: newest first, exact decimal strings, one entry per posting.
    for _ in 0..300 {
        if api.get("/ledger/wallet/wallet-123").await.body["items"].as_array().unwrap().len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ledger = api.get("/ledger/wallet/wallet-123").await;
    let items = ledger.body["items"].as_array().unwrap();
    let kinds: Vec<_> = items.iter().map(|e| (e["type"].as_str().unwrap(), e["direction"].as_str().unwrap())).collect();
    assert_eq!(
        kinds,
        [("transfer_sent", "debit"), ("debited", "debit"), ("credited", "credit"), ("wallet_created", "credit")]
    );
    assert_eq!(items[0]["amount"], "25.00");
    assert_eq!(items[0]["balanceAfter"], "95.05");
    assert_eq!(items[0]["counterparty"], "wallet-789");
    let page = api.get("/ledger/wallet/wallet-123?limit=2").await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 2);
    let next = page.body["nextCursor"].as_str().unwrap().to_owned();
    let rest = api.get(&format!("/ledger/wallet/wallet-123?limit=2&cursor={next}")).await;
    assert_eq!(rest.body["items"][0]["type"], "credited", "the cursor continues where the page ended");
    let credits = api.get("/ledger/wallet/wallet-123?type=credited").await;
    assert_eq!(credits.body["items"].as_array().unwrap().len(), 1);

    // History and balance at a past version.
    let events = api.get("/wallets/wallet-123/events").await;
    assert_eq!(events.body["items"].as_array().unwrap().len(), 4);
    let past = api.get("/wallets/wallet-123/balance?version=2").await;
    assert_eq!(past.body["balance"], "150.10");
    problem(&api.get("/wallets/wallet-123/balance?version=99").await, StatusCode::NOT_FOUND, "version_not_found");

    // The list is a JSON array, as the original answered; a full page links the next (RFC 8288).
    let list = api.get("/wallets?ownerId=user-456").await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    assert_eq!(list.link, None, "a short page is the last");
    let first = api.get("/wallets?limit=1").await;
    assert_eq!(first.body[0]["walletId"], "wallet-123");
    let next = first.link.as_deref().expect("a full page links the next one");
    assert_eq!(next, r#"</wallets?limit=1&cursor=wallet-123>; rel="next""#);
    let second = api.get("/wallets?limit=1&cursor=wallet-123").await;
    assert_eq!(second.body[0]["walletId"], "wallet-789");
}

#[tokio::test]
async fn rejections_are_problems_with_stable_codes() {
    let api = api().await;
    api.post("/wallets", json!({"walletId": "a", "ownerId": "o", "initialBalance": "10"})).await;
    api.post("/wallets", json!({"walletId": "yen", "ownerId": "o", "currency": "JPY"})).await;
    problem(
        &api.post("/wallets/a/debit", json!({"amount": "10.01"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    );
    problem(&api.post("/wallets/ghost/debit", json!({"amount": 1})).await, StatusCode::NOT_FOUND, "wallet_not_found");
    problem(
        &api.post("/wallets", json!({"walletId": "a", "ownerId": "o"})).await,
        StatusCode::CONFLICT,
        "wallet_exists",
    );
    problem(
        &api.post("/wallets/a/transfer", json!({"toWalletId": "a", "amount": 1})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "same_wallet_transfer",
    );
    problem(
        &api.post("/wallets/a/transfer", json!({"toWalletId": "yen", "amount": 1})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "currency_mismatch",
    );
    problem(
        &api.post("/wallets/a/transfer", json!({"toWalletId": "zzz", "amount": 1})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "destination_wallet_not_found",
    );
    let strong = api.get("/wallets/a?consistency=strong").await;
    assert_eq!(strong.body["balance"], "10.00", "nothing changed");
}

#[tokio::test]
async fn bad_input_is_a_4xx_problem_that_changes_nothing() {
    let api = api().await;
    api.post("/wallets", json!({"walletId": "a", "ownerId": "o", "initialBalance": 5})).await;
    let cases: Vec<(&str, &str, StatusCode, &str)> = vec![
        ("/wallets/a/credit", "{not json", StatusCode::BAD_REQUEST, "malformed_json"),
        // Malformed input is a 400, whatever is wrong with it.
        ("/wallets/a/credit", r#"{"amount": 1, "extra": true}"#, StatusCode::BAD_REQUEST, "invalid_body"),
        ("/wallets/a/credit", r#"{"amount": true}"#, StatusCode::BAD_REQUEST, "invalid_amount"),
        ("/wallets/a/credit", r#"{"description": "no amount"}"#, StatusCode::BAD_REQUEST, "invalid_body"),
        ("/wallets/a/credit", r#"{"amount": -5}"#, StatusCode::BAD_REQUEST, "invalid_amount"),
        ("/wallets/a/credit", r#"{"amount": 0}"#, StatusCode::BAD_REQUEST, "invalid_amount"),
        ("/wallets/a/credit", r#"{"amount": 0e7}"#, StatusCode::BAD_REQUEST, "invalid_amount"),
        ("/wallets/a/credit", r#"{"amount": "12abc"}"#, StatusCode::BAD_REQUEST, "invalid_amount"),
        ("/wallets/a/credit", r#"{"amount": " 5"}"#, StatusCode::BAD_REQUEST, "invalid_amount"),
        ("/wallets/a/credit", r#"{"amount": "5."}"#, StatusCode::BAD_REQUEST, "invalid_amount"),
        ("/wallets/a/credit", r#"{"amount": ".5"}"#, StatusCode::BAD_REQUEST, "invalid_amount"),
        ("/wallets/a/credit", r#"{"amount": "1e3"}"#, StatusCode::BAD_REQUEST, "invalid_amount"),
        ("/wallets/a/credit", r#"{"amount": "-0"}"#, StatusCode::BAD_REQUEST, "invalid_amount"),
        ("/wallets/a/credit", r#"{"amount": 1, "currency": "XYZ"}"#, StatusCode::BAD_REQUEST, "unknown_currency"),
        ("/wallets/bad%20id/credit", r#"{"amount": 1}"#, StatusCode::BAD_REQUEST, "invalid_id"),
        ("/wallets", r#"{"walletId": "", "ownerId": "o"}"#, StatusCode::BAD_REQUEST, "invalid_id"),
        ("/wallets", r#"{"walletId": ".", "ownerId": "o"}"#, StatusCode::BAD_REQUEST, "invalid_id"),
        ("/wallets", r#"{"walletId": "..", "ownerId": "o"}"#, StatusCode::BAD_REQUEST, "invalid_id"),
        ("/wallets", r#"[]"#, StatusCode::BAD_REQUEST, "invalid_body"),
        // A well-formed amount the wallet's currency cannot carry is refused by its rules: 422.
        ("/wallets/a/credit", r#"{"amount": 0.001}"#, StatusCode::UNPROCESSABLE_ENTITY, "amount_precision"),
        ("/wallets/a/credit", r#"{"amount": "0.001"}"#, StatusCode::UNPROCESSABLE_ENTITY, "amount_precision"),
        ("/wallets/a/credit", r#"{"amount": 1e-300}"#, StatusCode::UNPROCESSABLE_ENTITY, "amount_precision"),
        (
            "/wallets/a/credit",
            r#"{"amount": 99999999999999999999999999999}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount_too_large",
        ),
        ("/wallets/a/credit", r#"{"amount": 1e300}"#, StatusCode::UNPROCESSABLE_ENTITY, "amount_too_large"),
        (
            "/wallets/a/credit",
            r#"{"amount": "10000000000000.01"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount_too_large",
        ),
        (
            "/wallets",
            r#"{"walletId": "x", "ownerId": "o", "initialBalance": 1.5, "currency": "JPY"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount_precision",
        ),
    ];
    for (uri, body, status, code) in cases {
        let answer = api.call("POST", uri, None, Some(body)).await;
        assert_eq!(
            (answer.status, answer.body["code"].as_str()),
            (status, Some(code)),
            "{uri} {body}: {:?}",
            answer.body
        );
        assert_eq!(answer.content_type, "application/problem+json");
    }
    let huge = format!(r#"{{"amount": 1, "description": "{}"}}"#, "x".repeat(70_000));
    problem(
        &api.call("POST", "/wallets/a/credit", None, Some(&huge)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    let no_type = api
        .router
        .clone()
        .oneshot(Request::post("/wallets/a/credit").body(Body::from(r#"{"amount":1}"#)).unwrap())
        .await
        .unwrap();
    assert_eq!(no_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    problem(&api.get("/nope").await, StatusCode::NOT_FOUND, "route_not_found");
    problem(&api.get("/wallets?limit=0").await, StatusCode::BAD_REQUEST, "invalid_limit");
    problem(&api.get("/wallets/a?consistency=sometimes").await, StatusCode::BAD_REQUEST, "invalid_query");
    let key = "k".repeat(300);
    problem(
        &api.call("POST", "/wallets/a/credit", Some(&key), Some(r#"{"amount":1}"#)).await,
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
    );
    problem(
        &api.call("POST", "/wallets/a/credit", Some("with space"), Some(r#"{"amount":1}"#)).await,
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
    );
    assert_eq!(api.get("/wallets/a?consistency=strong").await.body["balance"], "5.00", "nothing changed");
}

#[tokio::test]
async fn every_well_formed_amount_is_exact_whatever_its_form() {
    let api = api().await;
    api.post("/wallets", json!({"walletId": "a", "ownerId": "o"})).await;
    // (body, cents added): exponents, leading and trailing zeros, all exact.
    let cases = [
        (r#"{"amount": 1e3}"#, 100_000),
        (r#"{"amount": 1.5E+2}"#, 15_000),
        (r#"{"amount": 25e-1}"#, 250),
        (r#"{"amount": 1e-2}"#, 1),
        (r#"{"amount": 0.10}"#, 10),
        (r#"{"amount": "007.50"}"#, 750),
        (r#"{"amount": "3.000"}"#, 300),
        (r#"{"amount": "10000000000000.00"}"#, 1_000_000_000_000_000),
    ];
    let mut cents: i64 = 0;
    for (body, added) in cases {
        let answer = api.call("POST", "/wallets/a/debit", None, Some(body)).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: a debit of an empty wallet is refused");
        let answer = api.call("POST", "/wallets/a/credit", None, Some(body)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{body}: {:?}", answer.body);
        cents += added;
        let balance = api.get("/wallets/a?consistency=strong").await.body["balance"].as_str().unwrap().to_owned();
        assert_eq!(balance, format!("{}.{:02}", cents / 100, cents % 100), "after {body}");
        api.call("POST", "/wallets/a/debit", None, Some(body)).await;
        cents -= added;
    }
}

#[tokio::test]
async fn a_capture_with_a_null_body_captures_the_whole_hold() {
    let api = api().await;
    api.post("/wallets", json!({"walletId": "a", "ownerId": "o", "initialBalance": 10})).await;
    let placed = api.post("/wallets/a/holds", json!({"holdId": "h", "amount": 4})).await;
    assert_eq!(placed.status, StatusCode::CREATED);
    let captured = api.call("POST", "/holds/h/capture", None, Some("null")).await;
    assert_eq!(captured.status, StatusCode::CREATED, "{:?}", captured.body);
    assert_eq!(api.get("/wallets/a?consistency=strong").await.body["balance"], "6.00");
}

#[tokio::test]
async fn the_idempotency_matrix() {
    let api = api().await;
    api.post("/wallets", json!({"walletId": "a", "ownerId": "o", "initialBalance": 100})).await;
    let body = r#"{"amount": "10.00"}"#;
    let first = api.call("POST", "/wallets/a/debit", Some("key-1"), Some(body)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed);
    // Replay: the original status and body, flagged.
    let replay = api.call("POST", "/wallets/a/debit", Some("key-1"), Some(body)).await;
    assert_eq!((replay.status, &replay.body), (first.status, &first.body));
    assert!(replay.replayed);
    // Same key, other body: 422, nothing changes.
    let other = api.call("POST", "/wallets/a/debit", Some("key-1"), Some(r#"{"amount": "11.00"}"#)).await;
    problem(&other, StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
    // A rejection is replayed too, even after funds arrive.
    let refused = api.call("POST", "/wallets/a/debit", Some("key-2"), Some(r#"{"amount": 500}"#)).await;
    problem(&refused, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds");
    api.post("/wallets/a/credit", json!({"amount": 1000})).await;
    let again = api.call("POST", "/wallets/a/debit", Some("key-2"), Some(r#"{"amount": 500}"#)).await;
    assert_eq!((again.status, &again.body), (refused.status, &refused.body));
    assert!(again.replayed);
    // Creation replays as 201.
    let create = r#"{"walletId": "b", "ownerId": "o"}"#;
    let made = api.call("POST", "/wallets", Some("key-3"), Some(create)).await;
    let remade = api.call("POST", "/wallets", Some("key-3"), Some(create)).await;
    assert_eq!((made.status, remade.status), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(made.body, remade.body);

    // Concurrent requests with one key: exactly one effect; the others replay or see 409.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let router = api.router.clone();
        tasks.push(tokio::spawn(async move {
            let request = Request::post("/wallets/a/credit")
                .header("content-type", "application/json")
                .header("idempotency-key", "key-concurrent")
                .body(Body::from(r#"{"amount": "1.00"}"#))
                .unwrap();
            router.oneshot(request).await.unwrap().status()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT), "{statuses:?}");
    assert!(statuses.contains(&StatusCode::CREATED));
    let balance = api.get("/wallets/a?consistency=strong").await.body["balance"].clone();
    assert_eq!(balance, "1091.00", "100 - 10 + 1000 + exactly one 1.00");
}

#[tokio::test]
async fn holds_reserve_capture_and_void() {
    let api = api().await;
    api.post("/wallets", json!({"walletId": "guest", "ownerId": "o", "initialBalance": 300})).await;
    api.post("/wallets", json!({"walletId": "hotel", "ownerId": "o"})).await;
    let placed = api
        .post("/wallets/guest/holds", json!({"holdId": "h1", "amount": "200", "expiresAt": "2999-01-01T00:00:00Z"}))
        .await;
    assert_eq!(placed.status, StatusCode::CREATED, "{:?}", placed.body);
    assert_eq!(placed.body["holdId"], "h1");
    problem(
        &api.post("/wallets/guest/debit", json!({"amount": 150})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    );
    let hold = api.get("/holds/h1").await;
    assert_eq!((hold.body["status"].as_str(), hold.body["amount"].as_str()), (Some("active"), Some("200.00")));
    let captured = api.post("/holds/h1/capture", json!({"amount": "120.50", "toWalletId": "hotel"})).await;
    assert_eq!(captured.status, StatusCode::CREATED, "{:?}", captured.body);
    assert_eq!(api.get("/holds/h1").await.body["capturedAmount"], "120.50");
    problem(&api.post("/holds/h1/void", json!({})).await, StatusCode::CONFLICT, "hold_not_active");
    let strong = api.get("/wallets/guest?consistency=strong").await;
    assert_eq!((strong.body["balance"].as_str(), strong.body["heldBalance"].as_str()), (Some("179.50"), Some("0.00")));
    assert_eq!(api.get("/wallets/hotel?consistency=strong").await.body["balance"], "120.50");

    let second = api.post("/wallets/guest/holds", json!({"amount": 50})).await;
    let hold_id = second.body["holdId"].as_str().unwrap().to_owned();
    let voided = api.call("POST", &format!("/holds/{hold_id}/void"), None, None).await;
    assert_eq!(voided.status, StatusCode::CREATED, "{:?}", voided.body);
    // Every field of a capture is optional, so no body at all captures the whole hold (out of the
    // system), as void takes no body; a body that is there must still be JSON.
    let third = api.post("/wallets/guest/holds", json!({"amount": 30})).await;
    let hold_id = third.body["holdId"].as_str().unwrap().to_owned();
    let not_json = api.router.clone().oneshot(
        Request::post(format!("/holds/{hold_id}/capture"))
            .header("content-type", "text/plain")
            .body(Body::from("x"))
            .unwrap(),
    );
    assert_eq!(not_json.await.unwrap().status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let captured = api.call("POST", &format!("/holds/{hold_id}/capture"), None, None).await;
    assert_eq!(captured.status, StatusCode::CREATED, "{:?}", captured.body);
    assert_eq!(api.get(&format!("/holds/{hold_id}")).await.body["capturedAmount"], "30.00");
    let strong = api.get("/wallets/guest?consistency=strong").await;
    assert_eq!(strong.body["balance"], "149.50", "captured out of the system");
    problem(&api.get("/holds/nope").await, StatusCode::NOT_FOUND, "hold_not_found");
    problem(
        &api.post("/wallets/guest/holds", json!({"amount": 1, "expiresAt": "2000-01-01T00:00:00Z"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_expiry",
    );
}

#[tokio::test]
async fn health_answers_with_outbox_and_consumer_figures() {
    let api = api().await;
    assert_eq!(api.get("/health").await.body["status"], "ok");
    assert_eq!(api.get("/health/kafka").await.body["status"], "healthy");
    api.post("/wallets", json!({"walletId": "a", "ownerId": "o", "initialBalance": 1})).await;
    api.projected("a", 1).await;
    let stats = api.get("/health/kafka/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
    assert!(stats.body["outbox"]["backlog"].is_u64());
    assert!(stats.body["consumers"]["read-model-projector"]["projected"].as_u64().unwrap() >= 1);
    assert!(stats.body["consumers"]["ledger-projector"]["lag"].is_u64(), "{:?}", stats.body);
    assert_eq!(stats.body["dlq"]["count"], 0);
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_text() {
    let api = api().await;
    wallex_http::install_metrics();
    api.post("/wallets", json!({"walletId": "m", "ownerId": "o", "initialBalance": 1})).await;
    api.projected("m", 1).await;
    let response = api.router.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    for name in
        ["wallex_commands_total", "wallex_group_commit_seconds", "wallex_outbox_backlog", "wallex_projected_total"]
    {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let api = api().await;
    let document = api.get("/openapi.json").await;
    assert_eq!(document.status, StatusCode::OK);
    let paths = document.body["paths"].as_object().unwrap();
    for path in [
        "/wallets",
        "/wallets/{id}",
        "/wallets/{id}/credit",
        "/wallets/{id}/transfer",
        "/holds/{id}/capture",
        "/ledger/wallet/{id}",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    assert!(document.body["components"]["schemas"]["WalletJson"].is_object());
}

#[tokio::test]
async fn versions_and_cursors_past_what_a_store_holds_are_invalid_queries_not_panics() {
    let api = api().await;
    api.post("/wallets", json!({"walletId": "w", "ownerId": "o"})).await;
    // Each of these crashed a handler on the SQL stores (an overflow, or a version that does not
    // fit a signed 64-bit column): the client got a reset connection.
    for path in [
        "/wallets/w/events?cursor=18446744073709551615",
        "/wallets/w/events?cursor=18446744073709551600",
        "/wallets/w/balance?version=9223372036854775808",
        "/ledger/wallet/w?cursor=9223372036854775808",
        "/wallets/w/events?cursor=99999999999999999999999",
        "/ledger/wallet/w?cursor=-1",
    ] {
        problem(&api.get(path).await, StatusCode::BAD_REQUEST, "invalid_query");
    }
    // The largest version a store can hold is a valid cursor: the page after it is empty.
    let page = api.get("/wallets/w/events?cursor=9223372036854775807").await;
    assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
    assert_eq!(page.body, json!({"items": [], "nextCursor": null}));
    let page = api.get("/ledger/wallet/w?cursor=9223372036854775807").await;
    assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
}

/// Reads that panic, as a bug in a store or a handler would.
#[derive(Debug)]
struct Panicking;

impl Queries for Panicking {
    async fn wallet(&self, _: &WalletId) -> Result<Option<WalletView>, StoreError> {
        panic!("a planted bug in a read")
    }

    async fn search_wallets(&self, _: &WalletFilter, _: usize) -> Result<Vec<WalletView>, StoreError> {
        panic!("a planted bug in a read")
    }

    async fn search_entries(&self, _: &EntryFilter, _: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        panic!("a planted bug in a read")
    }

    async fn ledger_entries(&self, _: &WalletId, _: Option<u64>, _: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        panic!("a planted bug in a read")
    }

    async fn ledger_version(&self, _: &WalletId) -> Result<u64, StoreError> {
        panic!("a planted bug in a read")
    }

    async fn wallet_events(&self, _: &WalletId, _: u64, _: u64) -> Result<Vec<Event>, StoreError> {
        panic!("a planted bug in a read")
    }

    async fn entries_by_reference(&self, _: &Reference, _: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        panic!("a planted bug in a read")
    }

    async fn ledger_entry(&self, _: &WalletId, _: u64) -> Result<Option<LedgerEntry>, StoreError> {
        panic!("a planted bug in a read")
    }

    async fn wallet_summary(&self, _: &WalletId) -> Result<Option<WalletSummary>, StoreError> {
        panic!("a planted bug in a read")
    }

    async fn outbox_backlog(&self) -> Result<(u64, Option<Timestamp>), StoreError> {
        panic!("a planted bug in a read")
    }

    async fn reachable(&self) -> Result<(), StoreError> {
        panic!("a planted bug in a read")
    }
}

#[tokio::test]
async fn a_handler_that_panics_answers_a_500_problem_not_a_reset_connection() {
    let pipeline =
        Pipeline::start(MemoryStore::new(), InProcessBus::new(), SystemClock, PipelineConfig::default()).await.unwrap();
    let state = AppState::new(pipeline.commands.clone(), Panicking, pipeline.stats.clone(), "in-process");
    let api = Api { router: router(Arc::new(state)), _pipeline: pipeline };
    for path in [
        "/wallets/w",
        "/wallets",
        "/ledger/wallet/w",
        "/ledger/wallet/w/summary",
        "/ledger/reference/r",
        "/ledger/transactions",
        "/wallets/w/events",
        "/health/kafka/stats",
    ] {
        problem(&api.get(path).await, StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
    }
    // The router still serves after the panics.
    problem(&api.get("/no/such/route").await, StatusCode::NOT_FOUND, "route_not_found");
}

#[tokio::test]
async fn a_path_that_is_not_utf8_and_a_method_a_route_lacks_are_problems_too() {
    let api = api().await;
    // `%FF` decodes to a byte that is not UTF-8: axum's own rejection would be plain text.
    problem(&api.get("/wallets/%FF").await, StatusCode::BAD_REQUEST, "invalid_id");
    problem(
        &api.call("POST", "/wallets/%FF/credit", None, Some(r#"{"amount": 1}"#)).await,
        StatusCode::BAD_REQUEST,
        "invalid_id",
    );
    let answer = api.call("DELETE", "/wallets/a", None, None).await;
    problem(&answer, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let response =
        api.router.clone().oneshot(Request::get("/wallets/a/credit").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST", "the allowed methods are still named");
}

/// When the one unpublished outbox message of `OneUnpublished` was committed.
const COMMITTED_AT_MICROS: u64 = 1_700_000_000_000_000;

/// A read side holding nothing but one unpublished outbox message.
#[derive(Debug)]
struct OneUnpublished;

impl Queries for OneUnpublished {
    async fn wallet(&self, _: &WalletId) -> Result<Option<WalletView>, StoreError> {
        Ok(None)
    }

    async fn search_wallets(&self, _: &WalletFilter, _: usize) -> Result<Vec<WalletView>, StoreError> {
        Ok(Vec::new())
    }

    async fn search_entries(&self, _: &EntryFilter, _: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        Ok(Vec::new())
    }

    async fn ledger_entries(&self, _: &WalletId, _: Option<u64>, _: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        Ok(Vec::new())
    }

    async fn ledger_version(&self, _: &WalletId) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn wallet_events(&self, _: &WalletId, _: u64, _: u64) -> Result<Vec<Event>, StoreError> {
        Ok(Vec::new())
    }

    async fn entries_by_reference(&self, _: &Reference, _: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        Ok(Vec::new())
    }

    async fn ledger_entry(&self, _: &WalletId, _: u64) -> Result<Option<LedgerEntry>, StoreError> {
        Ok(None)
    }

    async fn wallet_summary(&self, _: &WalletId) -> Result<Option<WalletSummary>, StoreError> {
        Ok(None)
    }

    async fn outbox_backlog(&self) -> Result<(u64, Option<Timestamp>), StoreError> {
        Ok((1, Some(Timestamp::from_unix_micros(COMMITTED_AT_MICROS))))
    }

    /// The store does not answer.
    async fn reachable(&self) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("connection refused".to_owned()))
    }
}

/// A clock that always reads the same instant.
#[derive(Clone, Copy, Debug)]
struct FixedClock(Timestamp);

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.0
    }
}

#[tokio::test]
async fn the_outbox_age_is_measured_by_the_injected_clock() {
    // The pipeline only supplies the command sender and the stats; reads go to the canned side.
    let pipeline =
        Pipeline::start(MemoryStore::new(), InProcessBus::new(), SystemClock, PipelineConfig::default()).await.unwrap();
    let clock = FixedClock(Timestamp::from_unix_micros(COMMITTED_AT_MICROS + 1_500_999));
    let state = AppState::new(pipeline.commands.clone(), OneUnpublished, pipeline.stats.clone(), "in-process")
        .with_clock(clock);
    let api = Api { router: router(Arc::new(state)), _pipeline: pipeline };
    let stats = api.get("/health/kafka/stats").await;
    assert_eq!(stats.status, StatusCode::OK, "{:?}", stats.body);
    assert_eq!(stats.body["outbox"], json!({"backlog": 1, "oldestUnpublishedAgeMs": 1_500}), "whole milliseconds");
}

#[tokio::test]
async fn readiness_tells_the_truth_about_the_writer_and_the_store() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::new());
    let pipeline = Pipeline::start(store.clone(), bus.clone(), SystemClock, PipelineConfig::default()).await.unwrap();
    let stats = pipeline.stats.clone();
    let state = AppState::new(pipeline.commands.clone(), store.clone(), stats.clone(), "in-process").with_bus(bus);
    let api = Api { router: router(Arc::new(state)), _pipeline: pipeline };
    assert_eq!(api.get("/health/live").await.status, StatusCode::OK);
    let ready = api.get("/health/ready").await;
    assert_eq!((ready.status, ready.body["status"].as_str()), (StatusCode::OK, Some("ready")), "{:?}", ready.body);
    assert_eq!(api.get("/health").await.body["status"], "ok");

    // The writer dies: its next reload meets a snapshot it cannot restore.
    let garbage = StoredSnapshot { transaction_id: TransactionId(1_000_000), bytes: vec![7; 16] };
    store.save_snapshot(&garbage).await.unwrap();
    store.fail_commits(&[CommitFault::Lost]);
    let refused = api.post("/wallets", json!({"walletId": "w", "ownerId": "o"})).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", refused.body);
    for _ in 0..100 {
        if stats.writer.state() == WriterState::Stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats.writer.state(), WriterState::Stopped);
    let ready = api.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", ready.body);
    assert_eq!(ready.body["checks"]["writer"]["status"], "stopped");
    let health = api.get("/health").await;
    assert_eq!((health.status, health.body["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")));
    assert_eq!(api.get("/health/live").await.status, StatusCode::OK, "the process still serves");
}

#[tokio::test]
async fn readiness_fails_when_the_store_does_not_answer() {
    let pipeline =
        Pipeline::start(MemoryStore::new(), InProcessBus::new(), SystemClock, PipelineConfig::default()).await.unwrap();
    let state = AppState::new(pipeline.commands.clone(), OneUnpublished, pipeline.stats.clone(), "in-process");
    let api = Api { router: router(Arc::new(state)), _pipeline: pipeline };
    let ready = api.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["checks"]["store"]["status"], "unavailable");
    assert_eq!(ready.body["checks"]["writer"]["status"], "running");
    assert_eq!(api.get("/health").await.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_server_requiring_idempotency_keys_refuses_posts_without_one() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::new());
    let pipeline = Pipeline::start(store.clone(), bus.clone(), SystemClock, PipelineConfig::default()).await.unwrap();
    let state = AppState::new(pipeline.commands.clone(), store, pipeline.stats.clone(), "in-process")
        .with_bus(bus)
        .requiring_idempotency_keys(true);
    let api = Api { router: router(Arc::new(state)), _pipeline: pipeline };
    let create = r#"{"walletId": "w", "ownerId": "o", "initialBalance": 10}"#;
    problem(
        &api.call("POST", "/wallets", None, Some(create)).await,
        StatusCode::PRECONDITION_REQUIRED,
        "idempotency_key_required",
    );
    assert_eq!(api.call("POST", "/wallets", Some("create-w"), Some(create)).await.status, StatusCode::CREATED);
    for (path, body) in [
        ("/wallets/w/credit", r#"{"amount": 1}"#),
        ("/wallets/w/debit", r#"{"amount": 1}"#),
        ("/wallets/w/transfer", r#"{"toWalletId": "w", "amount": 1}"#),
        ("/wallets/w/holds", r#"{"amount": 1}"#),
        ("/holds/h/capture", "{}"),
        ("/holds/h/void", "{}"),
    ] {
        problem(
            &api.call("POST", path, None, Some(body)).await,
            StatusCode::PRECONDITION_REQUIRED,
            "idempotency_key_required",
        );
    }
    // Nothing was applied by the refused requests: the balance is the initial one.
    assert_eq!(api.get("/wallets/w?consistency=strong").await.body["balance"], "10.00");
    // Reads need no key.
    assert_eq!(api.get("/wallets/w").await.status, StatusCode::OK);
}

#[tokio::test]
async fn every_documented_operation_is_served_with_its_problems_as_problem_json() {
    let api = api().await;
    let document = api.get("/openapi.json").await.body;
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 19, "{} paths", paths.len());
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let uri = path.replace("{id}", "nobody");
            let body = (method == "post").then_some("{}");
            let answer = api.call(&method.to_uppercase(), &uri, None, body).await;
            let code = answer.body["code"].as_str();
            assert!(
                !matches!(code, Some("route_not_found" | "method_not_allowed")),
                "{method} {path} is documented but not served"
            );
            let status = answer.status.as_str().to_owned();
            assert!(operation["responses"].get(&status).is_some(), "{method} {path} answered an undocumented {status}");
            for (status, response) in operation["responses"].as_object().unwrap() {
                if let Some(content) = response["content"].as_object()
                    && content.values().any(|media| media["schema"]["$ref"] == "#/components/schemas/ProblemJson")
                {
                    assert!(content.contains_key("application/problem+json"), "{method} {path} {status}");
                    assert!(!content.contains_key("application/json"), "{method} {path} {status}");
                }
            }
        }
    }
}

#[tokio::test]
async fn requests_beyond_the_limits_are_refused_at_once_and_a_timed_out_write_is_retried_by_its_key() {
    let (store, bus) = (MemoryStore::new(), InProcessBus::new());
    let pipeline = Pipeline::start(store.clone(), bus.clone(), SystemClock, PipelineConfig::default()).await.unwrap();
    let limits = wallex_http::Limits {
        max_concurrent: 1,
        timeout: Duration::from_millis(300),
        ..wallex_http::Limits::default()
    };
    let state = AppState::new(pipeline.commands.clone(), store.clone(), pipeline.stats.clone(), "in-process")
        .with_bus(bus)
        .with_limits(limits);
    let api = Arc::new(Api { router: router(Arc::new(state)), _pipeline: pipeline });
    let create = r#"{"walletId": "slow", "ownerId": "o", "initialBalance": 10}"#;

    // The store stops answering commits: the one request allowed waits in the writer.
    let pause = store.pause_commits().await;
    let waiting = {
        let api = api.clone();
        tokio::spawn(async move { api.call("POST", "/wallets", Some("create-slow"), Some(create)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A second request is not queued behind it: 503 overloaded at once, with Retry-After.
    let shed = api.get("/wallets/slow").await;
    problem(&shed, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    // Probes are outside the limits.
    assert_eq!(api.get("/health/live").await.status, StatusCode::OK);
    // The waiting write times out: its outcome is unknown, and it says how to find out.
    let timed_out = waiting.await.unwrap();
    problem(&timed_out, StatusCode::SERVICE_UNAVAILABLE, "timeout");
    assert!(timed_out.body["detail"].as_str().unwrap().contains("same Idempotency-Key"), "{:?}", timed_out.body);

    // The store answers again; the retry with the same key finds the command decided once.
    drop(pause);
    let retried = api.call("POST", "/wallets", Some("create-slow"), Some(create)).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{:?}", retried.body);
    let again = api.call("POST", "/wallets", Some("create-slow"), Some(create)).await;
    assert_eq!((again.status, again.replayed), (StatusCode::CREATED, true));
    assert_eq!(store.all_events().len(), 1, "created once");
}

#[tokio::test]
async fn the_available_balance_is_exactly_what_the_ledger_lets_the_wallet_spend() {
    // balance 10.00, 3.00 held, overdraft 5.00: 12.00 may still be spent, and not a cent more.
    let api = api().await;
    let created = api
        .post("/wallets", json!({"walletId": "od", "ownerId": "o", "initialBalance": "10", "overdraftLimit": "5"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(api.post("/wallets/od/holds", json!({"amount": "3"})).await.status, StatusCode::CREATED);
    let wallet = api.get("/wallets/od?consistency=strong").await;
    assert_eq!(wallet.body["availableBalance"], "12.00", "{:?}", wallet.body);
    let refused = api.post("/wallets/od/debit", json!({"amount": "12.01"})).await;
    problem(&refused, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds");
    // The numbers: what the wallet may spend, what was asked, in what currency.
    assert_eq!(
        (refused.body["available"].as_str(), refused.body["requested"].as_str(), refused.body["currency"].as_str()),
        (Some("12.00"), Some("12.01"), Some("USD")),
        "{:?}",
        refused.body
    );
    assert_eq!(api.post("/wallets/od/debit", json!({"amount": "12.00"})).await.status, StatusCode::CREATED);
    let after = api.get("/wallets/od?consistency=strong").await;
    assert_eq!(
        (after.body["balance"].as_str(), after.body["availableBalance"].as_str()),
        (Some("-2.00"), Some("0.00"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_the_last_acknowledged_write_shows_it_on_any_connection() {
    // 50 credits and debits at once on one wallet; the read model is slow on purpose (a long
    // linger): the read issued after the last acknowledgement must still show the final balance
    // and version, and must not ask the writer (its queue holds the writes only).
    let (store, bus) = (MemoryStore::new(), InProcessBus::new());
    let mut config = PipelineConfig::default();
    config.projector.linger_ms = 2_000;
    let pipeline = Pipeline::start(store.clone(), bus.clone(), SystemClock, config).await.unwrap();
    let state = AppState::new(pipeline.commands.clone(), store, pipeline.stats.clone(), "in-process").with_bus(bus);
    let api = Arc::new(Api { router: router(Arc::new(state)), _pipeline: pipeline });
    let created = api.post("/wallets", json!({"walletId": "hot", "ownerId": "o", "initialBalance": "100"})).await;
    assert_eq!(created.status, StatusCode::CREATED);
    for round in 0u64..3 {
        let mut writes = Vec::new();
        for n in 0..50 {
            let api = api.clone();
            writes.push(tokio::spawn(async move {
                let (path, amount) = if n % 2 == 0 { ("credit", "1.25") } else { ("debit", "0.50") };
                let key = format!("rw-{round}-{n}");
                let body = json!({ "amount": amount }).to_string();
                let answer = api.call("POST", &format!("/wallets/hot/{path}"), Some(&key), Some(&body)).await;
                assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
            }));
        }
        for write in writes {
            write.await.unwrap();
        }
        // 25 credits of 1.25 and 25 debits of 0.50 per round.
        let cents = 10_000 + (round + 1) * 1_875;
        let expected = format!("{}.{:02}", cents / 100, cents % 100);
        let read = api.get("/wallets/hot").await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(
            (read.body["balance"].as_str(), read.body["version"].as_u64()),
            (Some(expected.as_str()), Some(1 + 50 * (round + 1))),
            "round {round}: the read shows every acknowledged write"
        );
    }
    let eventual = api.get("/wallets/hot?consistency=eventual").await;
    assert!(eventual.body["version"].as_u64() <= Some(151), "the read model alone may be behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_read_after_acknowledged_writes_lists_every_one_of_them() {
    // The projectors linger (a slow read side): the ledger read waits, bounded, for the wallet's
    // committed version instead of answering an old page.
    let (store, bus) = (MemoryStore::new(), InProcessBus::new());
    let mut config = PipelineConfig::default();
    config.projector.linger_ms = 300;
    let pipeline = Pipeline::start(store.clone(), bus.clone(), SystemClock, config).await.unwrap();
    let state = AppState::new(pipeline.commands.clone(), store, pipeline.stats.clone(), "in-process").with_bus(bus);
    let api = Api { router: router(Arc::new(state)), _pipeline: pipeline };
    api.post("/wallets", json!({"walletId": "led", "ownerId": "o", "initialBalance": "10"})).await;
    for n in 0..20 {
        let key = format!("led-{n}");
        let body = json!({"amount": "1"}).to_string();
        assert_eq!(api.call("POST", "/wallets/led/credit", Some(&key), Some(&body)).await.status, StatusCode::CREATED);
        if n % 5 == 4 {
            let page = api.get("/ledger/wallet/led?limit=100").await;
            let entries = page.body["items"].as_array().map_or(0, Vec::len);
            assert_eq!(entries, n + 2, "the creation and every credit so far: {:?}", page.body);
        }
    }
}

#[tokio::test]
async fn the_original_clients_find_the_fields_they_read() {
    // The original service answered a wallet with `id`, and errors with NestJS's `statusCode`,
    // `message` and `error`: Wallex answers those beside its own.
    let api = api().await;
    let created = api.post("/wallets", json!({"walletId": "orig", "ownerId": "o", "initialBalance": 5})).await;
    assert_eq!((created.body["id"].as_str(), created.body["walletId"].as_str()), (Some("orig"), Some("orig")));
    assert_eq!(api.get("/wallets/orig").await.body["id"], "orig");
    let missing = api.get("/wallets/nobody").await;
    problem(&missing, StatusCode::NOT_FOUND, "wallet_not_found");
    assert_eq!(missing.body["statusCode"], 404);
    assert_eq!(missing.body["error"], "Not Found");
    assert_eq!(missing.body["message"], missing.body["detail"]);
    let refused = api.post("/wallets/orig/debit", json!({"amount": 50})).await;
    assert_eq!(
        (refused.body["statusCode"].as_u64(), refused.body["code"].as_str()),
        (Some(422), Some("insufficient_funds"))
    );
}

#[tokio::test]
async fn the_correlation_id_is_echoed_or_made() {
    let api = api().await;
    let echoed = api
        .router
        .clone()
        .oneshot(Request::get("/wallets/none").header("x-correlation-id", "order-7781").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-correlation-id"], "order-7781");
    let made = api.router.clone().oneshot(Request::get("/health/live").body(Body::empty()).unwrap()).await.unwrap();
    let id = made.headers()["x-correlation-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "a fresh id when the client sent none: {id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_after_a_writes_position_includes_that_write() {
    // A slow read model: the list without `after` may miss the new wallet; with the position the
    // create answered, it waits (bounded) until the read model has it.
    let (store, bus) = (MemoryStore::new(), InProcessBus::new());
    let mut config = PipelineConfig::default();
    config.projector.linger_ms = 300;
    let pipeline = Pipeline::start(store.clone(), bus.clone(), SystemClock, config).await.unwrap();
    let state = AppState::new(pipeline.commands.clone(), store, pipeline.stats.clone(), "in-process").with_bus(bus);
    let router = router(Arc::new(state));
    for n in 0..5 {
        let body = json!({"walletId": format!("pos-{n}"), "ownerId": "lister"}).to_string();
        let created = router
            .clone()
            .oneshot(
                Request::post("/wallets").header("content-type", "application/json").body(Body::from(body)).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
        let position: u64 = created.headers()["wallex-position"].to_str().unwrap().parse().unwrap();
        let listed = router
            .clone()
            .oneshot(Request::get(format!("/wallets?ownerId=lister&after={position}")).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(listed.headers().get("wallex-behind").is_none(), "the wait did not run out");
        let body: Value = serde_json::from_slice(&listed.into_body().collect().await.unwrap().to_bytes()).unwrap();
        let ids: Vec<&str> = body.as_array().unwrap().iter().map(|w| w["walletId"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), n + 1, "every wallet created so far: {ids:?}");
    }
}

#[tokio::test]
async fn the_ledger_answers_the_original_shape_and_filters() {
    let api = api().await;
    api.post("/wallets", json!({"walletId": "la", "ownerId": "o", "initialBalance": "100"})).await;
    api.post("/wallets", json!({"walletId": "lb", "ownerId": "o"})).await;
    api.post("/wallets/la/credit", json!({"amount": "5", "description": "top-up"})).await;
    api.post("/wallets/la/transfer", json!({"toWalletId": "lb", "amount": "30"})).await;
    let ledger = api.get("/ledger/wallet/la").await;
    assert_eq!(ledger.status, StatusCode::OK, "{:?}", ledger.body);
    assert_eq!((ledger.body["walletId"].as_str(), ledger.body["count"].as_u64()), (Some("la"), Some(3)));
    let newest = &ledger.body["transactions"][0];
    assert_eq!(newest["transactionType"], "TRANSFER_OUT");
    assert_eq!((newest["balanceBefore"].as_str(), newest["balanceAfter"].as_str()), (Some("105.00"), Some("75.00")));
    assert_eq!((newest["amount"].as_str(), newest["relatedWalletId"].as_str()), (Some("30.00"), Some("lb")));
    assert_eq!(ledger.body["transactions"][1]["transactionType"], "CREDIT");
    assert_eq!(ledger.body["transactions"][1]["description"], "top-up");
    assert_eq!(ledger.body["items"].as_array().map(Vec::len), Some(3), "Wallex's own items stay");
    let credits = api.get("/ledger/wallet/la?transactionType=CREDIT").await;
    assert_eq!(credits.body["count"], 2, "the opening balance and the top-up: {:?}", credits.body);
    let skipped = api.get("/ledger/wallet/la?offset=1&limit=1").await;
    assert_eq!(skipped.body["transactions"][0]["transactionType"], "CREDIT", "offset skips the newest");
    let received = api.get("/ledger/wallet/lb").await;
    assert_eq!(received.body["transactions"][0]["transactionType"], "TRANSFER_IN");
    assert_eq!(received.body["transactions"][0]["balanceBefore"], "0.00");
    // Each date is checked whichever name it comes by, even beside the other name's.
    for query in ["to=2030-01-01T00:00:00Z&endDate=", "startDate=x&from=2020-01-01T00:00:00Z", "type=null"] {
        problem(&api.get(&format!("/ledger/wallet/la?{query}")).await, StatusCode::BAD_REQUEST, "invalid_query");
    }
    let none = api.get("/ledger/wallet/la?from=2020-01-01T00:00:00Z&startDate=2999-01-01T00:00:00Z").await;
    assert_eq!(none.body["count"], 0, "the narrower bound holds");
}

#[tokio::test]
async fn references_metadata_and_correlation_ids_are_stored_and_found_and_summaries_add_up() {
    let api = api().await;
    api.post("/wallets", json!({"walletId": "ra", "ownerId": "o", "initialBalance": "100"})).await;
    api.post("/wallets", json!({"walletId": "rb", "ownerId": "o"})).await;
    let request = Request::post("/wallets/ra/transfer")
        .header("content-type", "application/json")
        .header("x-correlation-id", "corr-42")
        .body(Body::from(
            json!({"toWalletId": "rb", "amount": "30", "referenceId": "INV 2026/7", "metadata": {"order": "7"}})
                .to_string(),
        ))
        .unwrap();
    let response = api.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    for event in body["events"].as_array().unwrap() {
        assert_eq!(
            (event["referenceId"].as_str(), event["metadata"]["order"].as_str(), event["correlationId"].as_str()),
            (Some("INV 2026/7"), Some("7"), Some("corr-42")),
            "{event:?}"
        );
    }
    // A reference is unique among each wallet's transactions; bad metadata changes nothing.
    let again = api.post("/wallets/ra/debit", json!({"amount": "1", "referenceId": "INV 2026/7"})).await;
    problem(&again, StatusCode::CONFLICT, "reference_exists");
    let bad = api.post("/wallets/ra/credit", json!({"amount": "1", "metadata": {"bad key": "x"}})).await;
    problem(&bad, StatusCode::BAD_REQUEST, "invalid_metadata");
    let nested = api.post("/wallets/ra/credit", json!({"amount": "1", "metadata": {"k": {"deep": 1}}})).await;
    problem(&nested, StatusCode::BAD_REQUEST, "invalid_body");
    api.post("/wallets/ra/credit", json!({"amount": "5.50"})).await;

    // The ledger read waits for every committed entry, so these see the transfer and the credit.
    let ledger = api.get("/ledger/wallet/ra").await;
    let transfer = &ledger.body["transactions"][1];
    assert_eq!(
        (transfer["transactionType"].as_str(), transfer["referenceId"].as_str()),
        (Some("TRANSFER_OUT"), Some("INV 2026/7"))
    );
    assert_eq!(
        (transfer["metadata"]["order"].as_str(), transfer["correlationId"].as_str()),
        (Some("7"), Some("corr-42"))
    );
    let found = api.get("/ledger/reference/INV%202026%2F7?after=1").await;
    assert_eq!(found.status, StatusCode::OK, "{:?}", found.body);
    assert_eq!(found.body["count"], 2, "both legs: {:?}", found.body);
    let wallets: Vec<&str> =
        found.body["transactions"].as_array().unwrap().iter().map(|t| t["walletId"].as_str().unwrap()).collect();
    assert_eq!(wallets, ["rb", "ra"]);
    assert_eq!(api.get("/ledger/reference/none").await.body["count"], 0);

    let summary = api.get("/ledger/wallet/ra/summary").await;
    assert_eq!(summary.status, StatusCode::OK, "{:?}", summary.body);
    assert_eq!(
        (
            summary.body["totalCredits"].as_str(),
            summary.body["totalDebits"].as_str(),
            summary.body["transactionCount"].as_u64()
        ),
        (Some("105.50"), Some("30.00"), Some(3)),
        "{:?}",
        summary.body
    );
    assert_eq!(summary.body["lastTransaction"]["amount"], "5.50");
    assert_eq!(summary.body["lastTransaction"]["transactionType"], "CREDIT");
    let empty = api.get("/ledger/wallet/nobody/summary").await;
    assert_eq!((empty.body["transactionCount"].as_u64(), empty.body["lastTransaction"].is_null()), (Some(0), true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_ledger_and_events_reads_include_every_write_acknowledged_before_them() {
    // Writers credit four wallets at once while readers read their ledgers and events; the read
    // side lingers on purpose. Each read must include every version acknowledged before it began.
    let (store, bus) = (MemoryStore::new(), InProcessBus::new());
    let mut config = PipelineConfig::default();
    config.projector.linger_ms = 50;
    let pipeline = Pipeline::start(store.clone(), bus.clone(), SystemClock, config).await.unwrap();
    let state = AppState::new(pipeline.commands.clone(), store, pipeline.stats.clone(), "in-process").with_bus(bus);
    let api = Arc::new(Api { router: router(Arc::new(state)), _pipeline: pipeline });
    const WALLETS: usize = 4;
    for w in 0..WALLETS {
        // Funded, so that the creation is a ledger entry too: entries and versions count alike.
        let created =
            api.post("/wallets", json!({"walletId": format!("load-{w}"), "ownerId": "o", "initialBalance": "1"})).await;
        assert_eq!(created.status, StatusCode::CREATED);
    }
    let acked: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..WALLETS).map(|_| std::sync::atomic::AtomicU64::new(1)).collect());
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let (api, acked) = (api.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..25 {
                let w = (writer + n) % WALLETS;
                let answer = api.post(&format!("/wallets/load-{w}/credit"), json!({"amount": "1"})).await;
                assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
                let version = answer.body["version"].as_u64().expect("the wallet after the credit");
                acked[w].fetch_max(version, std::sync::atomic::Ordering::SeqCst);
            }
            0usize
        }));
    }
    for reader in 0..4 {
        let (api, acked) = (api.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut checked = 0;
            for n in 0..30 {
                let w = (reader + n) % WALLETS;
                let before = acked[w].load(std::sync::atomic::Ordering::SeqCst);
                let ledger = api.get(&format!("/ledger/wallet/load-{w}?limit=1000")).await;
                let newest = ledger.body["transactions"][0]["id"].as_str().map(str::to_owned).unwrap_or_default();
                let count = ledger.body["count"].as_u64().unwrap();
                assert!(count >= before, "ledger of load-{w}: {count} entries, {before} acknowledged ({newest})");
                let events = api.get(&format!("/wallets/load-{w}/events?limit=1000")).await;
                let seen = events.body["items"].as_array().unwrap().len() as u64;
                assert!(seen >= before, "events of load-{w}: {seen}, {before} acknowledged");
                checked += 1;
            }
            checked
        }));
    }
    let mut reads = 0;
    for task in tasks {
        reads += task.await.unwrap();
    }
    assert_eq!(reads, 120, "every reader checked every read");
    let total: u64 = acked.iter().map(|version| version.load(std::sync::atomic::Ordering::SeqCst)).sum();
    assert_eq!(total, (WALLETS as u64) + 200, "every credit acknowledged once");
}

#[tokio::test]
async fn the_search_the_original_delegated_to_elasticsearch() {
    let api = api().await;
    let create = |id: &str, currency: &str, initial: &str, tier: &str| {
        json!({"walletId": id, "ownerId": "searcher", "currency": currency, "initialBalance": initial,
               "metadata": {"tier": tier}})
    };
    for (id, currency, initial, tier) in [
        ("q1", "USD", "500", "gold"),
        ("q2", "EUR", "0", "silver"),
        ("q3", "USD", "50", "gold"),
        ("q4", "USD", "7", "iron"),
    ] {
        assert_eq!(api.post("/wallets", create(id, currency, initial, tier)).await.status, StatusCode::CREATED);
    }
    let credit = json!({"amount": "23.45", "description": "Coffee at Blue Bottle", "referenceId": "r-9", "metadata": {"channel": "web"}});
    api.post("/wallets/q1/credit", credit).await;
    api.post("/wallets/q3/debit", json!({"amount": "10", "description": "ATM withdrawal"})).await;
    let rent =
        json!({"toWalletId": "q3", "amount": "100", "description": "Rent for March", "metadata": {"channel": "app"}});
    let transfer = api.post("/wallets/q1/transfer", rent).await;
    let position = transfer.body["transactionId"].as_str().unwrap().to_owned();

    // Wallets: by metadata, by currency and balance range, in balance order, page by page.
    let ids = |answer: &Answer| -> Vec<String> {
        answer.body.as_array().unwrap().iter().map(|w| w["id"].as_str().unwrap().to_owned()).collect()
    };
    let gold = api.get(&format!("/wallets?metadata=tier:gold&after={position}")).await;
    assert_eq!(ids(&gold), ["q1", "q3"], "{:?}", gold.body);
    assert_eq!(gold.body[0]["metadata"]["tier"], "gold", "a wallet shows its creation's metadata");
    let ranged = api.get("/wallets?ownerId=searcher&currency=USD&minBalance=100&maxBalance=140.00").await;
    assert_eq!(ids(&ranged), ["q3"], "140.00 is within its bounds");
    let richest = api.get("/wallets?ownerId=searcher&currency=USD&sort=balance&order=desc&limit=2").await;
    assert_eq!(ids(&richest), ["q1", "q3"], "423.45, then 140.00");
    let link = richest.link.clone().expect("a full page links the next");
    let next = link.trim_start_matches('<').split('>').next().unwrap().to_owned();
    assert!(next.contains("sort=balance") && next.contains("ownerId=searcher"), "{next}");
    assert_eq!(ids(&api.get(&next).await), ["q4"], "the Link header's page continues the order");
    let newest = api.get("/wallets?ownerId=searcher&sort=createdAt&order=desc").await;
    assert_eq!(ids(&newest), ["q4", "q3", "q2", "q1"]);
    problem(&api.get("/wallets?minBalance=1").await, StatusCode::UNPROCESSABLE_ENTITY, "currency_required");
    problem(&api.get("/wallets?sort=balance&cursor=q1").await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_cursor");
    problem(&api.get("/wallets?sort=size").await, StatusCode::BAD_REQUEST, "invalid_query");

    // The ledger: every filter alone and together, newest first, page by page.
    let legs = |answer: &Answer| -> Vec<String> {
        let transactions = answer.body["transactions"].as_array().unwrap();
        assert_eq!(answer.body["count"].as_u64(), Some(transactions.len() as u64));
        transactions.iter().map(|t| t["id"].as_str().unwrap().to_owned()).collect()
    };
    let search = |query: &str| format!("/ledger/transactions?{query}&after={position}");
    assert_eq!(legs(&api.get(&search("walletId=q1")).await), ["q1:3", "q1:2", "q1:1"]);
    assert_eq!(legs(&api.get(&search("description=blue%20BOT")).await), ["q1:2"]);
    assert_eq!(legs(&api.get(&search("description=rent")).await), ["q3:3", "q1:3"]);
    assert_eq!(legs(&api.get(&search("metadata=channel:app")).await), ["q3:3", "q1:3"]);
    assert_eq!(legs(&api.get(&search("referenceId=r-9")).await), ["q1:2"]);
    assert_eq!(legs(&api.get(&search("transactionType=DEBIT")).await), ["q3:2"]);
    assert_eq!(legs(&api.get(&search("type=transfer_received")).await), ["q3:3"]);
    assert_eq!(legs(&api.get(&search("currency=USD&minAmount=23.45&maxAmount=23.45")).await), ["q1:2"]);
    assert_eq!(legs(&api.get(&search("walletId=q3&description=rent")).await), ["q3:3"], "filters combine");
    let first = api.get(&search("metadata=tier:gold&limit=1")).await;
    assert_eq!(legs(&first), ["q3:1"]);
    let cursor = first.body["nextCursor"].as_str().expect("a full page has a next cursor").to_owned();
    let rest = api.get(&search(&format!("metadata=tier:gold&cursor={cursor}"))).await;
    assert_eq!(legs(&rest), ["q1:1"], "the cursor continues newest first");
    assert!(first.link.as_deref().is_some_and(|link| link.contains("metadata=tier%3Agold")), "{:?}", first.link);
    let window = api.get("/ledger/transactions?startDate=2000-01-01T00:00:00Z&endDate=2000-01-02T00:00:00Z").await;
    assert_eq!(legs(&window), Vec::<String>::new());
    problem(&api.get("/ledger/transactions?minAmount=1").await, StatusCode::UNPROCESSABLE_ENTITY, "currency_required");
    problem(&api.get("/ledger/transactions?description=ab").await, StatusCode::BAD_REQUEST, "invalid_query");
}
