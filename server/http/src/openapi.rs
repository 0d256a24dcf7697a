//! The OpenAPI document (`ApiDoc`), assembled from the routes' annotations and then made exact
//! (`exact`), and `/openapi.json`.
//!
//! The annotations say what each route is for and what it answers on success and on its own
//! refusals. `exact` adds what is true of every route alike, from the same constants the
//! extractors enforce, so the document and the server cannot drift apart on them:
//!
//! - every problem is `application/problem+json`, and every route declares the statuses every route
//!   can answer (400 malformed input, 500 a bug, 503 unavailable with `Retry-After`, 404 where it
//!   names a wallet or a hold), every POST also 409, 413, 415, 422 and 428 and the
//!   `Idempotency-Key` header;
//! - every id (in a path, a query or a body) has the id grammar, every amount the amount grammar,
//!   every currency the currency list, every description its length and characters, every page
//!   size and version its range;
//! - the operational routes (health, metrics, this document) are described too.
//!
//! The test command runs schemathesis against this document (`scripts/api-fuzz`): a schema-valid
//! request the server refuses, or a schema-invalid one it accepts, fails the suite.

use std::sync::OnceLock;

use axum::Json;
use serde_json::{Value, json};
use wallex_engine::{Currency, Description, ID_MAX_BYTES, Metadata, Reference};

// utoipa tags each operation with the module path it is named by in `paths(...)`; naming the
// handlers' generated path types directly keeps the operations untagged, as published.
use crate::admin::{__path_audit_trail, __path_create_key, __path_list_keys, __path_revoke_key};
use crate::batch::__path_batch;
use crate::holds::{__path_capture_hold, __path_get_hold, __path_place_hold, __path_void_hold};
use crate::ledger::{__path_balance_at, __path_by_reference, __path_ledger, __path_summary, __path_wallet_events};
use crate::problem::{ProblemJson, RETRY_AFTER_SECONDS};
use crate::search::{__path_list_wallets, __path_transactions};
use crate::wallets::{__path_create_wallet, __path_credit, __path_debit, __path_get_wallet, __path_transfer};
use crate::wire::MAX_QUERY_VERSION;
use crate::{MAX_IDEMPOTENCY_KEY_BYTES, MAX_PAGE};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Wallex", description = "An exact, event-sourced wallet ledger. Amounts are decimal strings."),
    paths(
        create_wallet,
        list_wallets,
        get_wallet,
        credit,
        debit,
        transfer,
        place_hold,
        wallet_events,
        balance_at,
        get_hold,
        capture_hold,
        void_hold,
        batch,
        ledger,
        summary,
        by_reference,
        transactions,
        list_keys,
        create_key,
        revoke_key,
        audit_trail
    ),
    components(schemas(ProblemJson))
)]
pub(crate) struct ApiDoc;

/// `GET /openapi.json`.
pub(crate) async fn openapi() -> Json<Value> {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    Json(DOCUMENT.get_or_init(document).clone())
}

/// The published document.
pub fn document() -> Value {
    let mut document = serde_json::to_value(<ApiDoc as utoipa::OpenApi>::openapi()).expect("the document serializes");
    exact(&mut document);
    document
}

/// An id: 1 to 64 of `[A-Za-z0-9._:-]`, and not `.` or `..`, which no URL path can carry as a
/// segment (clients remove them as dot segments).
fn id_schema() -> Value {
    let chars = "A-Za-z0-9._:-";
    let max = ID_MAX_BYTES;
    json!({
        "type": "string",
        "pattern": format!(
            "^([A-Za-z0-9_:-][{chars}]{{0,{}}}|\\.[A-Za-z0-9_:-][{chars}]{{0,{}}}|\\.\\.[{chars}]{{1,{}}})$",
            max - 1, max - 2, max - 2
        ),
        "minLength": 1,
        "maxLength": max,
    })
}

/// The id grammar without anchors, for patterns that embed an id.
fn id_pattern() -> String {
    let pattern = id_schema()["pattern"].as_str().expect("a pattern").to_owned();
    pattern.trim_start_matches('^').trim_end_matches('$').to_owned()
}

/// A wallet list's cursor: a wallet id (ordered by id) or `key:walletId` (ordered by creation or
/// balance). One of the other order is refused as 422 `invalid_cursor`.
fn wallet_cursor_schema() -> Value {
    json!({
        "anyOf": [id_schema(), { "type": "string", "pattern": format!("^-?[0-9]{{1,18}}:{}$", id_pattern()) }],
        "description": "As the `Link` header's next page names it",
    })
}

/// The ledger search's cursor: `at:transactionId:walletId`.
fn entry_cursor_schema() -> Value {
    json!({
        "type": "string",
        "pattern": format!("^[0-9]{{1,18}}:[0-9]{{1,18}}:{}$", id_pattern()),
        "description": "`nextCursor` of the previous page",
    })
}

/// A money bound of a search, exact in the search's `currency`; finer than its minor unit, a
/// lower bound rounds up and an upper one down.
fn bound_schema() -> Value {
    json!({ "type": "string", "pattern": "^-?[0-9]{1,18}(\\.[0-9]{1,10})?$" })
}

fn currency_schema() -> Value {
    let codes: Vec<&str> = Currency::ALL.iter().map(|currency| currency.code()).collect();
    json!({ "type": "string", "enum": codes, "description": "ISO 4217 code, upper case" })
}

/// An amount: a decimal string (digits, one optional point) or a JSON number, exact in the
/// currency. More decimal places than the currency has, or more than the largest amount, is a 422
/// (`amount_precision`, `amount_too_large`): that depends on the wallet's currency.
fn amount_schema(positive: bool) -> Value {
    // Digits with an optional fraction; a positive amount has a non-zero digit.
    let (pattern, number) = if positive {
        (
            "^([0-9]*[1-9][0-9]*(\\.[0-9]+)?|[0-9]+\\.[0-9]*[1-9][0-9]*)$",
            json!({ "type": "number", "exclusiveMinimum": 0, "maximum": 1e15 }),
        )
    } else {
        ("^[0-9]+(\\.[0-9]+)?$", json!({ "type": "number", "minimum": 0, "maximum": 1e15 }))
    };
    json!({
        "oneOf": [{ "type": "string", "pattern": pattern }, number],
        "description": "A decimal string or a JSON number, exact in the wallet's currency",
        "example": "50.00",
    })
}

fn description_schema() -> Value {
    json!({
        "type": "string",
        "maxLength": Description::MAX_CHARS,
        "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
        "description": "Free text without control characters",
    })
}

fn nullable(mut schema: Value) -> Value {
    if let Some(kind) = schema.get("type").cloned() {
        schema["type"] = json!([kind, "null"]);
        if let Some(values) = schema.get_mut("enum").and_then(Value::as_array_mut) {
            values.push(Value::Null);
        }
    } else if let Some(choices) = schema.get_mut("oneOf").and_then(Value::as_array_mut) {
        choices.push(json!({ "type": "null" }));
    }
    schema
}

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/ProblemJson" } } },
    })
}

/// The schema of a request-body property or a parameter, by its name: each name means one thing
/// across the API. `None` leaves the annotation's schema.
/// The exact schema of a field named `name`, in a body or (`query`) a query string.
fn field_schema(name: &str, query: bool) -> Option<Value> {
    Some(match name {
        "id" | "walletId" | "ownerId" | "toWalletId" | "holdId" => id_schema(),
        "currency" => currency_schema(),
        "amount" => amount_schema(true),
        "initialBalance" | "overdraftLimit" => amount_schema(false),
        "metadata" if query => json!({
            "type": "string",
            "pattern": format!(
                "^[A-Za-z0-9_.-]{{1,{}}}:[^\\u0000-\\u001f\\u007f-\\u009f]{{0,{}}}$",
                Metadata::MAX_KEY_BYTES,
                Metadata::MAX_VALUE_CHARS
            ),
            "description": "`key:value`",
        }),
        "description" if query => json!({
            "type": "string",
            "pattern": format!(
                "^[^\\u0000-\\u001f\\u007f-\\u009f]{{{},{}}}$",
                crate::search::MIN_DESCRIPTION_SEARCH,
                crate::search::MAX_DESCRIPTION_SEARCH
            ),
        }),
        "description" => description_schema(),
        "referenceId" => json!({
            "type": "string",
            "minLength": 1,
            "maxLength": Reference::MAX_CHARS,
            "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$",
            "description": "The client's reference: unique among each wallet's transactions, no control characters",
        }),
        "metadata" => json!({
            "type": "object",
            "maxProperties": Metadata::MAX_ENTRIES,
            "propertyNames": { "pattern": format!("^[A-Za-z0-9_.-]{{1,{}}}$", Metadata::MAX_KEY_BYTES) },
            "additionalProperties": {
                "type": "string",
                "maxLength": Metadata::MAX_VALUE_CHARS,
                "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
            },
            "description": "Flat string metadata",
        }),
        "scopes" => json!({
            "type": "array",
            "minItems": 1,
            "items": { "type": "string", "enum": ["read", "write", "mint", "admin"] },
        }),
        "name" => {
            json!({ "type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$" })
        }
        "before" => json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX }),
        "expiresAt" | "from" | "to" | "startDate" | "endDate" => json!({ "type": "string", "format": "date-time" }),
        "transactionType" => json!({ "type": "string", "enum": crate::wire::TRANSACTION_TYPES }),
        "type" => json!({ "type": "string", "enum": crate::wire::ENTRY_TYPES }),
        "minBalance" | "maxBalance" | "minAmount" | "maxAmount" => bound_schema(),
        "createdFrom" | "createdTo" => json!({ "type": "string", "format": "date-time" }),
        "sort" => json!({ "type": "string", "enum": ["walletId", "createdAt", "balance"] }),
        "order" => json!({ "type": "string", "enum": ["asc", "desc"] }),
        "offset" => json!({ "type": "integer", "minimum": 0, "maximum": MAX_PAGE }),
        "after" => json!({ "type": "integer", "minimum": 0, "maximum": MAX_QUERY_VERSION }),
        "limit" => json!({ "type": "integer", "minimum": 1, "maximum": MAX_PAGE }),
        "version" => json!({ "type": "integer", "minimum": 0, "maximum": MAX_QUERY_VERSION }),
        "consistency" => json!({ "type": "string", "enum": ["strong", "eventual"] }),
        _ => return None,
    })
}

/// `POST /batch`'s body, exact: an independent batch (`atomic` false or absent; each operation may
/// carry its `idempotencyKey`, `referenceId` and `metadata`), or an atomic one (`atomic: true`;
/// the transaction's `referenceId` and `metadata` on the batch, none on its operations, which take
/// no key: the request's `Idempotency-Key` names the transaction). Each operation is one of a
/// schema per `type`, with the fields it requires and the ones it may have, and no other.
fn batch_schema() -> Value {
    use crate::batch::OperationType;
    let operation = |kind: OperationType, atomic: bool| {
        let (required, optional) = kind.fields();
        let mut properties = serde_json::Map::new();
        properties.insert("type".to_owned(), json!({ "type": "string", "const": kind.name() }));
        if !atomic {
            properties.insert(
                "idempotencyKey".to_owned(),
                json!({ "type": ["string", "null"], "pattern": format!("^[!-~]{{1,{MAX_IDEMPOTENCY_KEY_BYTES}}}$") }),
            );
        }
        for field in required {
            properties.insert((*field).to_owned(), field_schema(field, false).expect("a known field"));
        }
        for field in optional {
            if atomic && matches!(*field, "referenceId" | "metadata") {
                continue;
            }
            properties.insert((*field).to_owned(), nullable(field_schema(field, false).expect("a known field")));
        }
        let mut names = vec!["type"];
        names.extend_from_slice(required);
        json!({
            "type": "object",
            "title": kind.name(),
            "additionalProperties": false,
            "required": names,
            "properties": properties,
        })
    };
    let operations = |atomic: bool| {
        let each: Vec<Value> = OperationType::ALL.iter().map(|kind| operation(*kind, atomic)).collect();
        json!({
            "type": "array",
            "minItems": 1,
            "maxItems": crate::batch::MAX_BATCH_OPERATIONS,
            "description": "1 to `http.max_batch_operations` (default 1,000, at most 8,189) operations, decided in order",
            "items": { "oneOf": each },
        })
    };
    json!({
        "description": "Operations of any kind in one request: each decided on its own (`atomic` false, the default), \
                        or all together as one transaction (`atomic: true`)",
        "oneOf": [
            {
                "type": "object",
                "title": "independent",
                "additionalProperties": false,
                "required": ["operations"],
                "properties": {
                    "atomic": { "type": "boolean", "const": false },
                    "operations": operations(false),
                },
            },
            {
                "type": "object",
                "title": "atomic",
                "additionalProperties": false,
                "required": ["atomic", "operations"],
                "properties": {
                    "atomic": { "type": "boolean", "const": true },
                    "referenceId": nullable(field_schema("referenceId", false).expect("a known field")),
                    "metadata": nullable(field_schema("metadata", false).expect("a known field")),
                    "operations": operations(true),
                },
            },
        ],
    })
}

fn exact(document: &mut Value) {
    let schemas = document["components"]["schemas"].as_object_mut().expect("components");
    for (name, schema) in schemas.iter_mut() {
        if !name.ends_with("Body") {
            continue;
        }
        let required: Vec<String> = schema["required"]
            .as_array()
            .map(|names| names.iter().filter_map(|name| name.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let Some(properties) = schema["properties"].as_object_mut() else { continue };
        for (property, value) in properties.iter_mut() {
            if let Some(exact) = field_schema(property, false) {
                *value = if required.contains(property) { exact } else { nullable(exact) };
            }
        }
    }

    // A batch's operations: exactly the fields each type takes (a schema per type), which the
    // derived schema (every field optional) cannot say.
    schemas.insert("BatchBody".to_owned(), batch_schema());
    schemas.remove("OperationBody");
    schemas.remove("OperationType");

    let key = json!({
        "name": "Idempotency-Key",
        "in": "header",
        "required": false,
        "description": "The request's identity: a retry with the same key and body answers the first outcome \
                        (`Idempotent-Replayed: true`), with another body 422 `idempotency_key_reused`",
        "schema": { "type": "string", "pattern": format!("^[!-~]{{1,{MAX_IDEMPOTENCY_KEY_BYTES}}}$") },
    });
    let mut unavailable = problem(
        "unavailable (outcome unknown), outcome_unconfirmed (decided, unread), overloaded (too many requests \
         in progress, nothing done), no_writer (an instance of a cluster knows no writer to forward to, nothing \
         done) or timeout (outcome unknown): retry with the same Idempotency-Key",
    );
    unavailable["headers"] = json!({
        "Retry-After": { "description": "Seconds to wait", "schema": { "type": "integer", "const": RETRY_AFTER_SECONDS } },
    });

    let mut limited = problem("rate_limited: the key is over its rate; nothing was done");
    limited["headers"] = json!({
        "Retry-After": { "description": "Seconds to wait", "schema": { "type": "integer", "minimum": 1 } },
        "RateLimit-Policy": { "description": "The key's bucket: `\"key\";q=<burst>;w=<seconds>`", "schema": { "type": "string" } },
        "RateLimit": { "description": "What is left of it: `\"key\";r=<remaining>;t=<seconds>`", "schema": { "type": "string" } },
    });

    let paths = document["paths"].as_object_mut().expect("paths");
    for (path, item) in paths.iter_mut() {
        // Every route that names a wallet or a hold answers 404 when there is none, except the
        // ledger, whose page for an unknown wallet is empty.
        let names_one = path.contains("{id}") && !path.starts_with("/ledger/");
        for (method, operation) in item.as_object_mut().expect("a path item").iter_mut() {
            // A POST that submits a command (not the administration's).
            let post = method == "post" && !path.starts_with("/admin");
            let parameters = operation["parameters"].as_array_mut().map(std::mem::take).unwrap_or_default();
            let mut parameters: Vec<Value> = parameters
                .into_iter()
                .map(|mut parameter| {
                    let query = parameter["in"] == "query";
                    if let Some(exact) = parameter["name"].as_str().and_then(|name| field_schema(name, query)) {
                        parameter["schema"] = exact;
                    }
                    if parameter["in"] == "path" && parameter["name"] == "referenceId" {
                        // No URL path can carry `.` or `..` as a segment: clients remove them.
                        parameter["schema"]["not"] = json!({ "enum": [".", ".."] });
                    }
                    if parameter["name"] == "cursor" {
                        // The search's own cursors, else the last version seen.
                        parameter["schema"] = match path.as_str() {
                            "/wallets" => wallet_cursor_schema(),
                            "/ledger/transactions" => entry_cursor_schema(),
                            _ => field_schema("version", true).expect("a known name"),
                        };
                    }
                    parameter
                })
                .collect();
            if post {
                parameters.push(key.clone());
            }
            operation["parameters"] = Value::Array(parameters);

            let has_body = operation.get("requestBody").is_some();
            let responses = operation["responses"].as_object_mut().expect("responses");
            for response in responses.values_mut() {
                let content = &mut response["content"];
                if content["application/json"]["schema"]["$ref"] == "#/components/schemas/ProblemJson" {
                    *content = json!({ "application/problem+json": content["application/json"].take() });
                }
            }
            let mut common = vec![
                ("400", problem("Malformed input: invalid_id, invalid_query, invalid_limit, invalid_body, …")),
                ("500", problem("internal_error: a bug, logged")),
                ("503", unavailable.clone()),
            ];
            if names_one {
                common.push(("404", problem("wallet_not_found or hold_not_found")));
            }
            if method == "post" && !post && has_body {
                common.extend([
                    ("413", problem("payload_too_large")),
                    ("415", problem("unsupported_media_type: a body must be application/json")),
                ]);
            }
            if post {
                common.extend([
                    ("409", problem("idempotency_key_in_flight: the same key is being applied; retry")),
                    ("413", problem("payload_too_large")),
                    ("415", problem("unsupported_media_type: a body must be application/json")),
                    ("422", problem("Refused by the ledger's rules (idempotency_key_reused, amount_precision, …)")),
                    ("428", problem("idempotency_key_required, when the server requires keys")),
                ]);
            }
            common.extend(credentials(limited.clone()));
            for (status, response) in common {
                responses.entry(status).or_insert(response);
            }
            operation["security"] = json!([{ "bearer": [] }]);
        }
    }
    links(paths);
    operational_routes(paths, &limited);
    document["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key's secret (`wallex keys create`, `POST /admin/keys`). A server whose store \
                            holds no key runs in development mode, on loopback only, and needs none.",
        },
    });
}

/// What every route that needs a key may answer besides its own.
fn credentials(limited: Value) -> [(&'static str, Value); 3] {
    let mut unauthenticated = problem("unauthenticated (no key), invalid_credentials, key_revoked or key_expired");
    unauthenticated["headers"] = json!({
        "WWW-Authenticate": { "description": "`Bearer`", "schema": { "type": "string" } },
    });
    [
        ("401", unauthenticated),
        ("403", problem("forbidden: the key lacks the scope, or the owner, this request needs")),
        ("429", limited),
    ]
}

/// What a created wallet or hold leads to, for clients and for schemathesis' stateful phase.
fn links(paths: &mut serde_json::Map<String, Value>) {
    let to = |operations: &[&str], id: &str| -> Value {
        operations
            .iter()
            .map(|operation| ((*operation).to_owned(), json!({ "operationId": operation, "parameters": { "id": id } })))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let wallet = ["get_wallet", "credit", "debit", "transfer", "place_hold", "wallet_events", "ledger"];
    paths["/wallets"]["post"]["responses"]["201"]["links"] = to(&wallet, "$response.body#/walletId");
    let hold = ["get_hold", "capture_hold", "void_hold"];
    paths["/wallets/{id}/holds"]["post"]["responses"]["201"]["links"] = to(&hold, "$response.body#/events/0/holdId");
}

/// Health, metrics and this document. Liveness, readiness and this document are open; the rest need
/// a key with `read` bound to no owner (unless served on `http.ops_listen`, where all are open).
fn operational_routes(paths: &mut serde_json::Map<String, Value>, limited: &Value) {
    let object = |description: &str| json!({ "description": description, "content": { "application/json": { "schema": { "type": "object" } } } });
    let check = |summary: &str, ok: &str| {
        json!({ "get": {
            "summary": summary,
            "responses": { "200": object(ok), "503": object("Not ready: the failing checks") },
        } })
    };
    paths.insert("/health".to_owned(), check("The original service's health check, truthful", "{\"status\": \"ok\"}"));
    paths.insert("/health/ready".to_owned(), check("Ready to take writes", "Writer running, store and bus answering"));
    paths.insert("/health/kafka".to_owned(), check("The bus's health", "The bus answers"));
    paths.insert(
        "/health/live".to_owned(),
        json!({ "get": { "summary": "The process serves requests", "responses": { "200": object("Alive") } } }),
    );
    paths.insert(
        "/health/kafka/stats".to_owned(),
        json!({ "get": {
            "summary": "Outbox, relay and consumer figures",
            "responses": { "200": object("The figures"), "503": problem("unavailable") },
        } }),
    );
    paths.insert(
        "/metrics".to_owned(),
        json!({ "get": {
            "summary": "Prometheus metrics",
            "responses": { "200": {
                "description": "Prometheus text format 0.0.4",
                "content": { "text/plain": { "schema": { "type": "string" } } },
            } },
        } }),
    );
    paths.insert(
        "/openapi.json".to_owned(),
        json!({ "get": { "summary": "This document", "responses": { "200": object("OpenAPI 3.1") } } }),
    );
    for (path, item) in paths.iter_mut() {
        let open = matches!(path.as_str(), "/health/live" | "/health/ready" | "/openapi.json");
        if !(path.starts_with("/health") || path == "/metrics" || open) {
            continue;
        }
        let operation = &mut item["get"];
        if open {
            operation["security"] = json!([]);
            continue;
        }
        operation["security"] = json!([{ "bearer": [] }]);
        let responses = operation["responses"].as_object_mut().expect("responses");
        for (status, response) in credentials(limited.clone()) {
            responses.entry(status).or_insert(response);
        }
    }
}
