//! `POST /batch` through the axum `Router`, on the in-memory store and bus: both modes, every
//! operation type, per-operation and per-request idempotency, and that an atomic batch with one
//! refused operation changes nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use wallex_http::{AppState, router};
use wallex_pipeline::bus::InProcessBus;
use wallex_pipeline::{Pipeline, PipelineConfig, SystemClock};
use wallex_testkit::memory::MemoryStore;

struct Api {
    router: axum::Router,
    _pipeline: Pipeline,
}

async fn api(max_batch_operations: usize) -> Api {
    let (store, bus) = (MemoryStore::new(), InProcessBus::new());
    let pipeline = Pipeline::start(store.clone(), bus.clone(), SystemClock, PipelineConfig::default()).await.unwrap();
    let state = AppState::new(pipeline.commands.clone(), store.clone(), pipeline.stats.clone(), "in-process")
        .with_bus(bus)
        .with_keys(store, wallex_http::access::RateLimits::default())
        .with_max_batch_operations(max_batch_operations);
    Api { router: router(Arc::new(state)), _pipeline: pipeline }
}

struct Answer {
    status: StatusCode,
    content_type: String,
    replayed: bool,
    position: Option<u64>,
    body: Value,
}

impl Api {
    async fn call(&self, method: &str, uri: &str, key: Option<&str>, body: Option<String>) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Body::from(body.unwrap_or_default())).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            content_type: headers.get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default(),
            replayed: headers.get("idempotent-replayed").is_some(),
            position: headers.get("wallex-position").map(|v| v.to_str().unwrap().parse().unwrap()),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn batch(&self, key: Option<&str>, body: Value) -> Answer {
        self.call("POST", "/batch", key, Some(body.to_string())).await
    }

    async fn post(&self, uri: &str, key: Option<&str>, body: Value) -> Answer {
        self.call("POST", uri, key, Some(body.to_string())).await
    }

    /// The wallet's balance and version as a strong read answers them; `None` if there is none.
    async fn wallet(&self, id: &str) -> Option<(String, u64)> {
        let answer = self.call("GET", &format!("/wallets/{id}"), None, None).await;
        (answer.status == StatusCode::OK)
            .then(|| (answer.body["balance"].as_str().unwrap().to_owned(), answer.body["version"].as_u64().unwrap()))
    }

    async fn hold_status(&self, id: &str) -> Option<String> {
        let answer = self.call("GET", &format!("/holds/{id}"), None, None).await;
        (answer.status == StatusCode::OK).then(|| answer.body["status"].as_str().unwrap().to_owned())
    }
}

fn codes(answer: &Answer) -> Vec<(u64, String)> {
    answer.body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {:?}", answer.body))
        .iter()
        .map(|result| (result["status"].as_u64().unwrap(), result["code"].as_str().unwrap_or("").to_owned()))
        .collect()
}

fn owned(pairs: &[(u64, &str)]) -> Vec<(u64, String)> {
    pairs.iter().map(|(status, code)| (*status, (*code).to_owned())).collect()
}

#[tokio::test]
async fn a_batch_decides_every_kind_of_operation_in_order_each_answered_as_its_single_route() {
    let api = api(1_000).await;
    let body = json!({ "operations": [
        { "type": "create_wallet", "walletId": "a", "ownerId": "o1", "initialBalance": "100.00" },
        { "type": "create_wallet", "walletId": "b", "ownerId": "o2", "currency": "USD" },
        { "type": "credit", "walletId": "a", "amount": 5, "description": "top-up", "referenceId": "r-1" },
        { "type": "debit", "walletId": "a", "amount": "1.50", "metadata": { "order": "7" } },
        { "type": "transfer", "walletId": "a", "toWalletId": "b", "amount": "10" },
        { "type": "place_hold", "walletId": "a", "holdId": "h1", "amount": "20" },
        { "type": "capture_hold", "holdId": "h1", "amount": "12.25", "toWalletId": "b" },
        { "type": "place_hold", "walletId": "b", "holdId": "h2", "amount": "1" },
        { "type": "void_hold", "holdId": "h2" },
        { "type": "debit", "walletId": "a", "amount": "1000" },
        { "type": "credit", "walletId": "nobody", "amount": "1" },
        { "type": "credit", "walletId": "a", "amount": "0.001" },
        { "type": "transfer", "walletId": "b", "toWalletId": "a", "amount": "0.25" },
    ]});
    let answer = api.batch(None, body).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.body["atomic"], false);
    assert_eq!(
        codes(&answer),
        owned(&[
            (201, ""),
            (201, ""),
            (201, ""),
            (201, ""),
            (201, ""),
            (201, ""),
            (201, ""),
            (201, ""),
            (201, ""),
            (422, "insufficient_funds"),
            (404, "wallet_not_found"),
            (422, "amount_precision"),
            (201, ""),
        ])
    );
    let results = answer.body["results"].as_array().unwrap();
    // Each body is what the single route answers: the wallet after the credit, the transfer's two
    // wallets, the hold's id.
    assert_eq!(results[0]["body"]["balance"], "100.00");
    assert_eq!(
        (results[2]["body"]["balance"].as_str(), results[2]["body"]["version"].as_u64()),
        (Some("105.00"), Some(2))
    );
    assert_eq!(results[2]["body"]["events"][0]["referenceId"], "r-1");
    assert_eq!(results[3]["body"]["balance"], "103.50");
    assert_eq!(results[4]["body"]["fromWallet"]["balance"], "93.50");
    assert_eq!(results[4]["body"]["toWallet"]["balance"], "10.00");
    assert_eq!(results[5]["body"]["holdId"], "h1");
    assert_eq!(results[6]["body"]["events"].as_array().unwrap().len(), 2, "the capture's two sides");
    assert_eq!(results[9]["body"]["available"], "81.25", "insufficient_funds carries its numbers");
    assert_eq!(results[9]["body"]["requested"], "1000.00");
    assert!(results[9]["body"]["transactionId"].is_string(), "a refusal is recorded");
    assert_eq!(results[12]["body"]["toWallet"]["balance"], "81.50");
    let transactions: Vec<u64> = results
        .iter()
        .filter_map(|result| result["body"]["transactionId"].as_str())
        .map(|id| id.parse().unwrap())
        .collect();
    assert!(transactions.windows(2).all(|pair| pair[0] < pair[1]), "decided in order: {transactions:?}");
    assert_eq!(answer.position, transactions.last().copied(), "the position is the batch's last commit");

    assert_eq!(api.wallet("a").await, Some(("81.50".to_owned(), 7)));
    assert_eq!(api.wallet("b").await, Some(("22.00".to_owned(), 6)));
    assert_eq!(api.hold_status("h1").await.as_deref(), Some("captured"));
    assert_eq!(api.hold_status("h2").await.as_deref(), Some("voided"));
}

#[tokio::test]
async fn a_resent_batch_answers_every_operation_as_the_first_time_and_an_operations_key_is_its_single_routes() {
    let api = api(1_000).await;
    api.batch(
        None,
        json!({ "operations": [
            { "type": "create_wallet", "walletId": "a", "ownerId": "o1", "initialBalance": "50" },
            { "type": "create_wallet", "walletId": "b", "ownerId": "o1" },
        ]}),
    )
    .await;
    let body = json!({ "operations": [
        { "type": "credit", "walletId": "a", "amount": "1" },
        { "type": "transfer", "walletId": "a", "toWalletId": "b", "amount": "2", "idempotencyKey": "t-1" },
        { "type": "debit", "walletId": "b", "amount": "100" },
    ]});
    let first = api.batch(Some("batch-1"), body.clone()).await;
    assert_eq!(codes(&first), owned(&[(201, ""), (201, ""), (422, "insufficient_funds")]));
    let again = api.batch(Some("batch-1"), body.clone()).await;
    let results = again.body["results"].as_array().unwrap();
    assert!(results.iter().all(|result| result["replayed"] == true), "{results:?}");
    for (first, again) in first.body["results"].as_array().unwrap().iter().zip(results) {
        assert_eq!(first["body"], again["body"], "the original answer, exactly");
    }
    assert_eq!(api.wallet("a").await, Some(("49.00".to_owned(), 3)), "once");

    // The operation's key names the same command as on its route: the transfer again, by itself.
    let single = api.post("/wallets/a/transfer", Some("t-1"), json!({ "toWalletId": "b", "amount": "2" })).await;
    assert_eq!(single.status, StatusCode::CREATED, "{:?}", single.body);
    assert!(single.replayed);
    assert_eq!(single.body["transactionId"], first.body["results"][1]["body"]["transactionId"]);
    // Other content under the request's key: each operation says so, nothing changes.
    let changed = json!({ "operations": [{ "type": "credit", "walletId": "a", "amount": "3" }] });
    let reused = api.batch(Some("batch-1"), changed).await;
    assert_eq!(codes(&reused), owned(&[(422, "idempotency_key_reused")]));
    // Without any key, the same body is new work.
    let fresh = api.batch(None, json!({ "operations": [{ "type": "credit", "walletId": "a", "amount": "1" }] })).await;
    assert_eq!(codes(&fresh), owned(&[(201, "")]));
    assert_eq!(api.wallet("a").await, Some(("50.00".to_owned(), 4)));
}

#[tokio::test]
async fn an_atomic_batch_is_one_transaction_and_one_refused_operation_changes_nothing() {
    let api = api(1_000).await;
    api.batch(
        None,
        json!({ "operations": [
            { "type": "create_wallet", "walletId": "a", "ownerId": "o1", "initialBalance": "100" },
            { "type": "create_wallet", "walletId": "fees", "ownerId": "house" },
            { "type": "place_hold", "walletId": "a", "holdId": "h0", "amount": "5" },
        ]}),
    )
    .await;
    // A payment and its fee, into a wallet created on the way, paid out of a hold.
    let payment = json!({ "atomic": true, "referenceId": "order-1", "metadata": { "order": "1" }, "operations": [
        { "type": "create_wallet", "walletId": "shop", "ownerId": "o2" },
        { "type": "place_hold", "walletId": "a", "holdId": "h1", "amount": "30" },
        { "type": "capture_hold", "holdId": "h1", "amount": "29", "toWalletId": "shop" },
        { "type": "transfer", "walletId": "a", "toWalletId": "fees", "amount": "1" },
        { "type": "void_hold", "holdId": "h0" },
        { "type": "credit", "walletId": "fees", "amount": "0.50" },
        { "type": "debit", "walletId": "shop", "amount": "4" },
    ]});
    let paid = api.batch(Some("pay-1"), payment.clone()).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{:?}", paid.body);
    assert_eq!(codes(&paid), owned(&[(201, ""); 7]));
    let transaction = paid.body["transactionId"].as_str().unwrap().to_owned();
    let results = paid.body["results"].as_array().unwrap();
    for result in results {
        assert_eq!(result["body"]["transactionId"], transaction.as_str(), "one transaction");
        assert!(result["body"]["events"].as_array().unwrap().iter().all(|event| event["referenceId"] == "order-1"));
    }
    let events = |index: usize| results[index]["body"]["events"].as_array().unwrap().len();
    assert_eq!((0..7).map(events).collect::<Vec<_>>(), [1, 1, 2, 2, 1, 1, 1], "each operation's own events");
    assert_eq!(results[6]["body"]["balance"], "25.00", "the wallet after its own operation");
    assert_eq!(paid.position, Some(transaction.parse().unwrap()));
    let again = api.batch(Some("pay-1"), payment).await;
    assert_eq!((again.status, again.replayed), (StatusCode::CREATED, true));
    assert_eq!(again.body["transactionId"], transaction.as_str());
    assert_eq!(api.wallet("a").await, Some(("70.00".to_owned(), 6)));
    assert_eq!(api.wallet("shop").await, Some(("25.00".to_owned(), 3)));
    assert_eq!(api.wallet("fees").await, Some(("1.50".to_owned(), 3)));

    // A second payment whose fifth operation overdraws: nothing happens, not even the wallet.
    let before = (api.wallet("a").await, api.wallet("fees").await, api.hold_status("h1").await);
    let refused = json!({ "atomic": true, "operations": [
        { "type": "create_wallet", "walletId": "shop2", "ownerId": "o2" },
        { "type": "transfer", "walletId": "a", "toWalletId": "shop2", "amount": "60" },
        { "type": "place_hold", "walletId": "a", "holdId": "h2", "amount": "5" },
        { "type": "credit", "walletId": "fees", "amount": "1" },
        { "type": "debit", "walletId": "a", "amount": "5.01" },
        { "type": "transfer", "walletId": "shop2", "toWalletId": "fees", "amount": "1" },
    ]});
    let answer = api.batch(Some("pay-2"), refused.clone()).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", answer.body);
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.body["code"], "insufficient_funds");
    let linked = (424, "linked_operation_failed");
    assert_eq!(codes(&answer), owned(&[linked, linked, linked, linked, (422, "insufficient_funds"), linked]));
    assert_eq!(answer.body["results"][4]["body"]["requested"], "5.01");
    // What the wallet had before the batch is not what the refused operation saw: no `available`.
    assert_eq!(answer.body["results"][4]["body"].get("available"), None);
    assert_eq!(api.wallet("shop2").await, None, "the created wallet is not there");
    assert_eq!((api.wallet("a").await, api.wallet("fees").await, api.hold_status("h1").await), before);
    assert_eq!(api.hold_status("h2").await, None);
    // The request's key names the group: sent again, the same refusal, replayed.
    let again = api.batch(Some("pay-2"), refused).await;
    assert_eq!((again.status, again.replayed), (StatusCode::UNPROCESSABLE_ENTITY, true));
    assert_eq!(codes(&again), codes(&answer));
    assert_eq!(again.body["results"][4]["body"], answer.body["results"][4]["body"], "the original problem");
    assert_eq!(again.body["results"][4]["replayed"], true);

    // An operation that does not parse refuses the batch before anything is submitted.
    let unparsed = api
        .batch(
            None,
            json!({ "atomic": true, "operations": [
                { "type": "credit", "walletId": "a", "amount": "1" },
                { "type": "credit", "walletId": "a", "amount": "0.001" },
            ]}),
        )
        .await;
    assert_eq!(unparsed.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(codes(&unparsed), owned(&[linked, (422, "amount_precision")]));
    // A reference the batch's wallets already used refuses it as a whole.
    let reused = api
        .batch(
            None,
            json!({ "atomic": true, "referenceId": "order-1", "operations": [
                { "type": "create_wallet", "walletId": "late", "ownerId": "o3" },
                { "type": "transfer", "walletId": "a", "toWalletId": "late", "amount": "1" },
            ]}),
        )
        .await;
    assert_eq!((reused.status, reused.body["code"].as_str()), (StatusCode::CONFLICT, Some("reference_exists")));
    assert_eq!(codes(&reused), owned(&[linked, linked]));
    assert_eq!(api.wallet("late").await, None);
    assert_eq!((api.wallet("a").await, api.wallet("fees").await), (before.0, before.1));
}

#[tokio::test]
async fn malformed_batches_are_refused_whole_and_change_nothing() {
    let api = api(3).await;
    api.batch(
        None,
        json!({ "operations": [{ "type": "create_wallet", "walletId": "a", "ownerId": "o", "initialBalance": "10" }]}),
    )
    .await;
    let credit = json!({ "type": "credit", "walletId": "a", "amount": "1" });
    let cases: Vec<(Value, Option<&str>, StatusCode, &str)> = vec![
        (json!({ "operations": [] }), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_batch"),
        (
            json!({ "operations": [credit, credit, credit, credit] }),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_batch",
        ),
        (json!({ "operations": [{ "type": "mint", "walletId": "a" }] }), None, StatusCode::BAD_REQUEST, "invalid_body"),
        (
            json!({ "operations": [{ "type": "credit", "walletId": "a" }] }),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({ "operations": [{ "type": "credit", "walletId": "a", "amount": "1", "ownerId": "o" }] }),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (json!({ "operations": [credit], "extra": 1 }), None, StatusCode::BAD_REQUEST, "invalid_body"),
        (json!({ "operations": [credit], "referenceId": "r" }), None, StatusCode::BAD_REQUEST, "invalid_body"),
        (
            json!({ "atomic": true, "operations": [{ "type": "credit", "walletId": "a", "amount": "1", "referenceId": "r" }] }),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({ "operations": [
                { "type": "credit", "walletId": "a", "amount": "1", "idempotencyKey": "same" },
                { "type": "debit", "walletId": "a", "amount": "1", "idempotencyKey": "same" },
            ]}),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "duplicate_idempotency_key",
        ),
        (
            json!({ "operations": [{ "type": "credit", "walletId": "a", "amount": "1", "idempotencyKey": "has space" }] }),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
        ),
        (
            json!({ "atomic": true, "operations": [
                { "type": "credit", "walletId": "a", "amount": "1", "idempotencyKey": "k" },
                { "type": "credit", "walletId": "a", "amount": "1" },
            ]}),
            Some("group"),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (json!({ "operations": [credit] }), Some("bad key"), StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
        (json!({ "operations": "many" }), None, StatusCode::BAD_REQUEST, "invalid_body"),
        // One malformed operation makes the request malformed: refused whole, even the credit
        // before it, and before any lookup (the wallet does not exist either).
        (
            json!({ "operations": [credit, { "type": "debit", "walletId": "no such/wallet", "amount": "1" }] }),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            json!({ "operations": [credit, { "type": "transfer", "walletId": "nobody", "toWalletId": "a", "amount": "1.2.3" }] }),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_amount",
        ),
        (
            json!({ "operations": [{ "type": "place_hold", "walletId": "a", "amount": "1" }] }),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
    ];
    for (body, key, status, code) in cases {
        let answer = api.batch(key, body.clone()).await;
        assert_eq!((answer.status, answer.body["code"].as_str()), (status, Some(code)), "{body}: {:?}", answer.body);
        assert_eq!(answer.content_type, "application/problem+json");
    }
    assert_eq!(api.wallet("a").await, Some(("10.00".to_owned(), 1)), "nothing changed");
    // A batch needs a body of JSON, like any POST.
    let text = api.call("POST", "/batch", None, None).await;
    assert!(text.status.is_client_error(), "{:?}", text.status);
    tokio::time::sleep(Duration::from_millis(1)).await;
}
