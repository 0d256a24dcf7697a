//! The REST API: the original service's routes and camelCase bodies, plus holds, history,
//! idempotency and problem+json errors. The only module that knows JSON request shapes.
//!
//! Amounts arrive as JSON numbers or strings and are parsed exactly from their text (never through
//! `f64`), in the wallet's currency; they leave as exact decimal strings. Every POST honours an
//! `Idempotency-Key` header: the key becomes the command id, so a retry returns the original
//! status and body (with `Idempotent-Replayed: true`), other content under the same key is 422, and
//! a retry while the first is still being decided is 409.

pub mod problem;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use wallex_engine::{
    Amount, Command, CommandId, CommandKind, Currency, Description, Event, EventKind, HoldId, HoldStatus, OwnerId,
    Timestamp, WalletId,
};

pub use problem::Problem;

use wallex_pipeline::ports::{EventStore, LedgerEntry, ProjectionStore, WalletView};
use wallex_pipeline::{CommandSender, PipelineStats, Reply};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest page any list returns.
pub const MAX_PAGE: usize = 1_000;
/// Page size when `limit` is absent.
pub const DEFAULT_PAGE: usize = 50;
/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState<S> {
    pub commands: CommandSender,
    pub store: S,
    pub stats: Arc<PipelineStats>,
    /// The bus's name in health answers (`kafka`, `in-process`).
    pub bus_name: &'static str,
    /// Wallet currencies never change, so they are cached after the first lookup.
    currencies: RwLock<BTreeMap<WalletId, Currency>>,
    /// Consumer lag, when the bus is known (see `with_bus`).
    lag: Option<Arc<dyn LagProbe>>,
}

/// Asks the bus how far a consumer group is behind.
pub trait LagProbe: Send + Sync + std::fmt::Debug {
    fn lag<'a>(
        &'a self,
        group: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, wallex_pipeline::ports::BusError>> + Send + 'a>>;
}

impl<B: wallex_pipeline::ports::Bus + std::fmt::Debug> LagProbe for B {
    fn lag<'a>(
        &'a self,
        group: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, wallex_pipeline::ports::BusError>> + Send + 'a>>
    {
        Box::pin(wallex_pipeline::ports::Bus::lag(self, group))
    }
}

impl<S> AppState<S> {
    pub fn new(commands: CommandSender, store: S, stats: Arc<PipelineStats>, bus_name: &'static str) -> AppState<S> {
        AppState { commands, store, stats, bus_name, currencies: RwLock::new(BTreeMap::new()), lag: None }
    }

    /// Lets `/health/kafka/stats` report consumer lag per group from `bus`.
    pub fn with_bus(mut self, bus: impl LagProbe + 'static) -> AppState<S> {
        self.lag = Some(Arc::new(bus));
        self
    }
}

type Shared<S> = State<Arc<AppState<S>>>;

/// The router, with body limit and request tracing.
pub fn router<S: EventStore + ProjectionStore>(state: Arc<AppState<S>>) -> Router {
    Router::new()
        .route("/wallets", post(create_wallet::<S>).get(list_wallets::<S>))
        .route("/wallets/{id}", get(get_wallet::<S>))
        .route("/wallets/{id}/credit", post(credit::<S>))
        .route("/wallets/{id}/debit", post(debit::<S>))
        .route("/wallets/{id}/transfer", post(transfer::<S>))
        .route("/wallets/{id}/holds", post(place_hold::<S>))
        .route("/wallets/{id}/events", get(wallet_events::<S>))
        .route("/wallets/{id}/balance", get(balance_at::<S>))
        .route("/holds/{id}", get(get_hold::<S>))
        .route("/holds/{id}/capture", post(capture_hold::<S>))
        .route("/holds/{id}/void", post(void_hold::<S>))
        .route("/ledger/wallet/{id}", get(ledger::<S>))
        .route("/health", get(health))
        .route("/health/kafka", get(bus_health::<S>))
        .route("/health/kafka/stats", get(bus_stats::<S>))
        .route("/metrics", get(prometheus::<S>))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "route_not_found", "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Extraction: JSON bodies, path ids and headers, every failure a problem.

/// A JSON body whose every failure (syntax, unknown field, wrong type, size, content type) is a
/// problem+json 4xx.
struct Body<T>(T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequest<St> for Body<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &St) -> Result<Body<T>, Problem> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(json_problem(&rejection)),
        }
    }
}

/// Query-string parameters whose every failure is a 400 `invalid_query` problem.
struct Params<T>(T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequestParts<St> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &St) -> Result<Params<T>, Problem> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Params(value)),
            Err(rejection) => Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_query", rejection.body_text())),
        }
    }
}

fn json_problem(rejection: &JsonRejection) -> Problem {
    let detail = rejection.body_text();
    match rejection {
        JsonRejection::JsonSyntaxError(_) => Problem::new(StatusCode::BAD_REQUEST, "malformed_json", detail),
        JsonRejection::JsonDataError(_) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", detail),
        JsonRejection::MissingJsonContentType(_) => {
            Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", detail)
        }
        _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("bodies are at most {MAX_BODY_BYTES} bytes"),
        ),
        _ => Problem::new(StatusCode::BAD_REQUEST, "invalid_body", detail),
    }
}

fn parse_wallet(field: &str, text: &str) -> Result<WalletId, Problem> {
    WalletId::parse(text).map_err(|error| Problem::field(field, &error))
}

fn parse_hold(field: &str, text: &str) -> Result<HoldId, Problem> {
    HoldId::parse(text).map_err(|error| Problem::field(field, &error))
}

fn parse_description(text: Option<&str>) -> Result<Option<Description>, Problem> {
    text.map(|text| Description::parse(text).map_err(|error| Problem::field("description", &error))).transpose()
}

/// An amount from its JSON text: a number literal or a string, parsed exactly in `currency`.
fn parse_amount(field: &str, raw: &RawValue, currency: Currency, positive: bool) -> Result<Amount, Problem> {
    let text = raw.get();
    let text = if text.starts_with('"') {
        serde_json::from_str::<String>(text)
            .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "invalid_amount", format!("{field}: not a string")))?
    } else {
        text.to_owned()
    };
    let parsed = if positive { Amount::parse_positive(&text, currency) } else { Amount::parse(&text, currency) };
    parsed.map_err(|error| Problem::field(field, &error))
}

fn parse_currency(text: Option<&str>) -> Result<Option<Currency>, Problem> {
    text.map(|code| Currency::parse(code).map_err(|error| Problem::field("currency", &error))).transpose()
}

/// The command id for a request: derived from its `Idempotency-Key`, or fresh without one.
fn command_id(headers: &HeaderMap) -> Result<CommandId, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(CommandId(uuid::Uuid::new_v4().as_u128()));
    };
    let key = value.to_str().ok().filter(|key| !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_BYTES).ok_or_else(
        || {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"),
            )
        },
    )?;
    let mut input = b"wallex/idempotency-key/".to_vec();
    input.extend_from_slice(key.as_bytes());
    Ok(CommandId(xxhash_rust::xxh3::xxh3_128(&input)))
}

impl<S: EventStore + ProjectionStore> AppState<S> {
    /// The currency of an existing wallet (the write side knows every acknowledged wallet).
    async fn currency_of(&self, wallet_id: WalletId) -> Result<Currency, Problem> {
        if let Some(currency) = self.currencies.read().expect("lock").get(&wallet_id) {
            return Ok(*currency);
        }
        let wallet = self.commands.wallet(wallet_id).await.ok_or_else(unavailable)?;
        let wallet = wallet.ok_or_else(|| Problem::rejection(wallex_engine::Rejection::WalletNotFound))?;
        self.currencies.write().expect("lock").insert(wallet_id, wallet.currency);
        Ok(wallet.currency)
    }

    /// The currency a request's amount is in: the one it names, or its wallet's.
    async fn request_currency(&self, named: Option<&str>, wallet_id: WalletId) -> Result<Currency, Problem> {
        match parse_currency(named)? {
            Some(currency) => Ok(currency),
            None => self.currency_of(wallet_id).await,
        }
    }
}

fn unavailable() -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the ledger is not accepting commands right now")
}

// ---------------------------------------------------------------------------------------------
// Response shapes.

fn time(at: Timestamp) -> String {
    let micros = i64::try_from(at.unix_micros()).unwrap_or(i64::MAX);
    jiff::Timestamp::from_microsecond(micros).map_or_else(|_| micros.to_string(), |t| t.to_string())
}

/// A wallet as the API shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
pub struct WalletJson {
    pub wallet_id: String,
    pub owner_id: String,
    #[schema(value_type = String, example = "USD")]
    pub currency: &'static str,
    pub balance: String,
    pub held_balance: String,
    pub available_balance: String,
    pub overdraft_limit: String,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
}

impl WalletJson {
    fn of(view: &WalletView) -> WalletJson {
        let money = |minor: i128| view.currency.format_minor(minor);
        WalletJson {
            wallet_id: view.wallet_id.to_string(),
            owner_id: view.owner_id.to_string(),
            currency: view.currency.code(),
            balance: money(i128::from(view.balance)),
            held_balance: money(i128::from(view.held)),
            available_balance: money(i128::from(view.balance) - i128::from(view.held)),
            overdraft_limit: money(i128::from(view.overdraft_limit)),
            version: view.version,
            created_at: time(view.created_at),
            updated_at: time(view.updated_at),
        }
    }

    fn of_wallet(wallet: &wallex_engine::Wallet) -> WalletJson {
        WalletJson::of(&WalletView {
            wallet_id: wallet.id,
            owner_id: wallet.owner_id,
            currency: wallet.currency,
            balance: wallet.balance,
            held: wallet.held,
            overdraft_limit: wallet.overdraft_limit.minor(),
            version: wallet.version,
            created_at: wallet.created_at,
            updated_at: wallet.updated_at,
        })
    }
}

/// One event as the API and the history show it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
pub struct EventJson {
    pub wallet_id: String,
    pub version: u64,
    pub transaction_id: String,
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "credited")]
    pub kind: &'static str,
    #[schema(value_type = String, example = "USD")]
    pub currency: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    pub balance_after: String,
    pub held_after: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub at: String,
}

impl EventJson {
    fn of(event: &Event) -> EventJson {
        let money = |minor: i128| event.currency.format_minor(minor);
        let hold_id = match &event.kind {
            EventKind::HoldPlaced { hold_id, .. }
            | EventKind::HoldCaptured { hold_id, .. }
            | EventKind::CaptureReceived { hold_id, .. }
            | EventKind::HoldVoided { hold_id, .. }
            | EventKind::HoldExpired { hold_id, .. } => Some(hold_id.to_string()),
            _ => None,
        };
        let amount = match &event.kind {
            EventKind::HoldPlaced { amount, .. } => Some(*amount),
            EventKind::HoldVoided { released, .. } | EventKind::HoldExpired { released, .. } => Some(*released),
            _ => event.posting.map(|posting| posting.amount),
        };
        EventJson {
            wallet_id: event.wallet_id.to_string(),
            version: event.version,
            transaction_id: event.transaction_id.to_string(),
            kind: event.kind.name(),
            currency: event.currency.code(),
            amount: amount.map(|amount| amount.format(event.currency)),
            source: event.posting.map(|posting| posting.source.to_string()),
            destination: event.posting.map(|posting| posting.destination.to_string()),
            hold_id,
            balance_after: money(i128::from(event.balance_after)),
            held_after: money(i128::from(event.held_after)),
            description: event.description.as_ref().map(|d| d.as_str().to_owned()),
            at: time(event.at),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
struct TransactionJson {
    transaction_id: String,
    events: Vec<EventJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
struct HoldJson {
    hold_id: String,
    wallet_id: String,
    #[schema(value_type = String)]
    currency: &'static str,
    amount: String,
    #[schema(value_type = String, example = "active")]
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    captured_amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    placed_at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

/// The HTTP answer to a processor reply. A replay renders exactly as the original did.
fn respond(reply: Reply, created: bool, render: impl FnOnce(&[Event]) -> serde_json::Value) -> Response {
    match reply {
        Reply::Decided { record, events, replayed } => {
            let mut response = match record.result {
                Ok(()) => {
                    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
                    (status, Json(render(&events))).into_response()
                }
                Err(rejection) => {
                    let mut problem = Problem::rejection(rejection);
                    problem.transaction_id = Some(record.transaction_id.0);
                    problem.into_response()
                }
            };
            if replayed {
                response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            response
        }
        Reply::KeyReused { .. } => Problem::rejection(wallex_engine::Rejection::IdempotencyKeyReused).into_response(),
        Reply::InFlight => Problem::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_flight",
            "a request with this Idempotency-Key is still being processed",
        )
        .into_response(),
        Reply::Unavailable(reason) => {
            tracing::warn!(%reason, "command not applied");
            unavailable().into_response()
        }
        Reply::Unconfirmed { record, reason } => {
            tracing::warn!(%reason, transaction = %record.transaction_id, "original answer not read back");
            unavailable().into_response()
        }
    }
}

fn transaction_json(events: &[Event]) -> serde_json::Value {
    let transaction_id = events.first().map(|event| event.transaction_id.to_string()).unwrap_or_default();
    serde_json::to_value(TransactionJson { transaction_id, events: events.iter().map(EventJson::of).collect() })
        .expect("serializes")
}

// ---------------------------------------------------------------------------------------------
// Commands.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
struct CreateWalletBody {
    wallet_id: String,
    owner_id: String,
    currency: Option<String>,
    #[schema(value_type = Option<String>, example = "100.00")]
    initial_balance: Option<Box<RawValue>>,
    #[schema(value_type = Option<String>, example = "0")]
    overdraft_limit: Option<Box<RawValue>>,
}

#[utoipa::path(post, path = "/wallets", request_body = CreateWalletBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the original response")),
    responses((status = 201, description = "Created", body = WalletJson), (status = 409, description = "wallet_exists", body = ProblemJson),
        (status = 400, description = "Malformed", body = ProblemJson)))]
async fn create_wallet<S: EventStore + ProjectionStore>(
    State(state): Shared<S>,
    headers: HeaderMap,
    Body(body): Body<CreateWalletBody>,
) -> Result<Response, Problem> {
    let id = command_id(&headers)?;
    let wallet_id = parse_wallet("walletId", &body.wallet_id)?;
    let owner_id = OwnerId::parse(&body.owner_id).map_err(|error| Problem::field("ownerId", &error))?;
    let currency = parse_currency(body.currency.as_deref())?.unwrap_or(Currency::USD);
    let amount = |field, raw: Option<&RawValue>| match raw {
        Some(raw) if raw.get() != "null" => parse_amount(field, raw, currency, false),
        _ => Ok(Amount::ZERO),
    };
    let initial_balance = amount("initialBalance", body.initial_balance.as_deref())?;
    let overdraft_limit = amount("overdraftLimit", body.overdraft_limit.as_deref())?;
    let kind = CommandKind::CreateWallet { wallet_id, owner_id, currency, initial_balance, overdraft_limit };
    let reply = state.commands.submit(Command { id, kind }).await;
    Ok(respond(reply, true, |events| {
        let created = events.first().map(|event| {
            let view = WalletView::after(None, event).expect("the first event creates the wallet");
            WalletJson::of(&view)
        });
        serde_json::to_value(created).expect("serializes")
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
struct MoneyBody {
    /// A JSON number or a decimal string, exact in the wallet's currency.
    #[schema(value_type = String, example = "50.00")]
    amount: Box<RawValue>,
    currency: Option<String>,
    description: Option<String>,
}

#[utoipa::path(post, path = "/wallets/{id}/credit", request_body = MoneyBody, params(("id" = String, Path)),
    responses((status = 200, description = "Credited", body = TransactionJson), (status = 404, description = "wallet_not_found", body = ProblemJson)))]
async fn credit<S: EventStore + ProjectionStore>(
    state: Shared<S>,
    path: Path<String>,
    headers: HeaderMap,
    body: Body<MoneyBody>,
) -> Result<Response, Problem> {
    credit_or_debit(state, path, headers, body, true).await
}

#[utoipa::path(post, path = "/wallets/{id}/debit", request_body = MoneyBody, params(("id" = String, Path)),
    responses((status = 200, description = "Debited", body = TransactionJson), (status = 422, description = "insufficient_funds", body = ProblemJson)))]
async fn debit<S: EventStore + ProjectionStore>(
    state: Shared<S>,
    path: Path<String>,
    headers: HeaderMap,
    body: Body<MoneyBody>,
) -> Result<Response, Problem> {
    credit_or_debit(state, path, headers, body, false).await
}

async fn credit_or_debit<S: EventStore + ProjectionStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<MoneyBody>,
    is_credit: bool,
) -> Result<Response, Problem> {
    let command_id = command_id(&headers)?;
    let wallet_id = parse_wallet("walletId", &id)?;
    let description = parse_description(body.description.as_deref())?;
    let currency = state.request_currency(body.currency.as_deref(), wallet_id).await?;
    let amount = parse_amount("amount", &body.amount, currency, true)?;
    let kind = if is_credit {
        CommandKind::Credit { wallet_id, currency, amount, description }
    } else {
        CommandKind::Debit { wallet_id, currency, amount, description }
    };
    Ok(respond(state.commands.submit(Command { id: command_id, kind }).await, false, transaction_json))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
struct TransferBody {
    to_wallet_id: String,
    #[schema(value_type = String, example = "25.50")]
    amount: Box<RawValue>,
    currency: Option<String>,
    description: Option<String>,
}

#[utoipa::path(post, path = "/wallets/{id}/transfer", request_body = TransferBody, params(("id" = String, Path)),
    responses((status = 200, description = "Transferred", body = TransactionJson), (status = 422, description = "Refused", body = ProblemJson)))]
async fn transfer<S: EventStore + ProjectionStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<TransferBody>,
) -> Result<Response, Problem> {
    let command_id = command_id(&headers)?;
    let source = parse_wallet("walletId", &id)?;
    let destination = parse_wallet("toWalletId", &body.to_wallet_id)?;
    let description = parse_description(body.description.as_deref())?;
    let currency = state.request_currency(body.currency.as_deref(), source).await?;
    let amount = parse_amount("amount", &body.amount, currency, true)?;
    let kind = CommandKind::Transfer { source, destination, currency, amount, description };
    Ok(respond(state.commands.submit(Command { id: command_id, kind }).await, false, transaction_json))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
struct HoldBody {
    hold_id: Option<String>,
    #[schema(value_type = String, example = "40.00")]
    amount: Box<RawValue>,
    currency: Option<String>,
    /// RFC 3339 instant, e.g. `2030-01-01T00:00:00Z`.
    expires_at: Option<String>,
    description: Option<String>,
}

#[utoipa::path(post, path = "/wallets/{id}/holds", request_body = HoldBody, params(("id" = String, Path)),
    responses((status = 201, description = "Hold placed", body = TransactionJson), (status = 422, description = "Refused", body = ProblemJson)))]
async fn place_hold<S: EventStore + ProjectionStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<HoldBody>,
) -> Result<Response, Problem> {
    let command_id = command_id(&headers)?;
    let wallet_id = parse_wallet("walletId", &id)?;
    // Without a client hold id, derive one from the command id: a retry names the same hold.
    let hold_id = match body.hold_id.as_deref() {
        Some(text) => parse_hold("holdId", text)?,
        None => HoldId::parse(&format!("hold-{command_id}")).expect("hex ids are valid"),
    };
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|text| {
            let instant: jiff::Timestamp = text.parse().map_err(|error| {
                Problem::new(StatusCode::BAD_REQUEST, "invalid_expiry", format!("expiresAt: {error}"))
            })?;
            let micros = u64::try_from(instant.as_microsecond())
                .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "invalid_expiry", "expiresAt is before 1970"))?;
            Ok::<_, Problem>(Timestamp::from_unix_micros(micros))
        })
        .transpose()?;
    let description = parse_description(body.description.as_deref())?;
    let currency = state.request_currency(body.currency.as_deref(), wallet_id).await?;
    let amount = parse_amount("amount", &body.amount, currency, true)?;
    let kind = CommandKind::PlaceHold { hold_id, wallet_id, currency, amount, expires_at, description };
    Ok(respond(state.commands.submit(Command { id: command_id, kind }).await, true, |events| {
        let mut value = transaction_json(events);
        value["holdId"] = serde_json::Value::String(hold_id.to_string());
        value
    }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
struct CaptureBody {
    #[schema(value_type = Option<String>, example = "35.00")]
    amount: Option<Box<RawValue>>,
    to_wallet_id: Option<String>,
    description: Option<String>,
}

#[utoipa::path(post, path = "/holds/{id}/capture", request_body = CaptureBody, params(("id" = String, Path)),
    responses((status = 200, description = "Captured", body = TransactionJson), (status = 409, description = "hold_not_active or hold_expired", body = ProblemJson)))]
async fn capture_hold<S: EventStore + ProjectionStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<CaptureBody>,
) -> Result<Response, Problem> {
    let command_id = command_id(&headers)?;
    let hold_id = parse_hold("holdId", &id)?;
    let destination = body.to_wallet_id.as_deref().map(|text| parse_wallet("toWalletId", text)).transpose()?;
    let description = parse_description(body.description.as_deref())?;
    let amount = match body.amount.as_deref() {
        Some(raw) if raw.get() != "null" => {
            let hold = state.commands.hold(hold_id).await.ok_or_else(unavailable)?;
            let hold = hold.ok_or_else(|| Problem::rejection(wallex_engine::Rejection::HoldNotFound))?;
            Some(parse_amount("amount", raw, hold.currency, true)?)
        }
        _ => None,
    };
    let kind = CommandKind::CaptureHold { hold_id, amount, destination, description };
    Ok(respond(state.commands.submit(Command { id: command_id, kind }).await, false, transaction_json))
}

#[utoipa::path(post, path = "/holds/{id}/void", params(("id" = String, Path)),
    responses((status = 200, description = "Voided", body = TransactionJson), (status = 409, description = "hold_not_active or hold_expired", body = ProblemJson)))]
async fn void_hold<S: EventStore + ProjectionStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let command_id = command_id(&headers)?;
    let hold_id = parse_hold("holdId", &id)?;
    let kind = CommandKind::VoidHold { hold_id };
    Ok(respond(state.commands.submit(Command { id: command_id, kind }).await, false, transaction_json))
}

// ---------------------------------------------------------------------------------------------
// Queries.

fn store_problem(error: wallex_pipeline::ports::StoreError) -> Problem {
    tracing::warn!(%error, "read failed");
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the read model is unavailable right now")
}

fn page_size(limit: Option<usize>) -> Result<usize, Problem> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        limit @ 1..=MAX_PAGE => Ok(limit),
        _ => Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_limit", format!("limit must be 1 to {MAX_PAGE}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WalletQuery {
    consistency: Option<String>,
}

#[utoipa::path(get, path = "/wallets/{id}", params(("id" = String, Path), ("consistency" = Option<String>, Query, description = "`strong` reads the write side")),
    responses((status = 200, description = "The wallet", body = WalletJson), (status = 404, description = "wallet_not_found", body = ProblemJson)))]
async fn get_wallet<S: EventStore + ProjectionStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
    Params(query): Params<WalletQuery>,
) -> Result<Json<WalletJson>, Problem> {
    let wallet_id = parse_wallet("walletId", &id)?;
    let not_found = || Problem::rejection(wallex_engine::Rejection::WalletNotFound);
    match query.consistency.as_deref() {
        None | Some("eventual") => {
            let view = state.store.wallet(&wallet_id).await.map_err(store_problem)?.ok_or_else(not_found)?;
            Ok(Json(WalletJson::of(&view)))
        }
        Some("strong") => {
            let wallet = state.commands.wallet(wallet_id).await.ok_or_else(unavailable)?.ok_or_else(not_found)?;
            Ok(Json(WalletJson::of_wallet(&wallet)))
        }
        Some(_) => Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_query", "consistency is `strong` or `eventual`")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListQuery {
    owner_id: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/wallets", params(("ownerId" = Option<String>, Query), ("cursor" = Option<String>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, description = "A page of wallets", body = Page<WalletJson>)))]
async fn list_wallets<S: EventStore + ProjectionStore>(
    State(state): Shared<S>,
    Params(query): Params<ListQuery>,
) -> Result<Json<Page<WalletJson>>, Problem> {
    let limit = page_size(query.limit)?;
    let owner = query.owner_id.as_deref().map(OwnerId::parse).transpose().map_err(|e| Problem::field("ownerId", &e))?;
    let after = query.cursor.as_deref().map(|text| parse_wallet("cursor", text)).transpose()?;
    let views = state.store.wallets(owner.as_ref(), after.as_ref(), limit).await.map_err(store_problem)?;
    let next_cursor = (views.len() == limit).then(|| views.last().map(|v| v.wallet_id.to_string())).flatten();
    Ok(Json(Page { items: views.iter().map(WalletJson::of).collect(), next_cursor }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
struct LedgerEntryJson {
    wallet_id: String,
    transaction_id: String,
    version: u64,
    #[serde(rename = "type")]
    entry_type: String,
    #[schema(value_type = String, example = "credit")]
    direction: wallex_pipeline::ports::Direction,
    amount: String,
    balance_after: String,
    #[schema(value_type = String)]
    currency: &'static str,
    counterparty: String,
    description: Option<String>,
    created_at: String,
}

impl LedgerEntryJson {
    fn of(entry: &LedgerEntry) -> LedgerEntryJson {
        LedgerEntryJson {
            wallet_id: entry.wallet_id.to_string(),
            transaction_id: entry.transaction_id.to_string(),
            version: entry.version,
            entry_type: entry.entry_type.clone(),
            direction: entry.direction,
            amount: entry.currency.format_minor(i128::from(entry.amount)),
            balance_after: entry.currency.format_minor(i128::from(entry.balance_after)),
            currency: entry.currency.code(),
            counterparty: entry.counterparty.clone(),
            description: entry.description.clone(),
            created_at: time(entry.at),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LedgerQuery {
    cursor: Option<u64>,
    limit: Option<usize>,
    #[serde(rename = "type")]
    entry_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

#[utoipa::path(get, path = "/ledger/wallet/{id}", params(("id" = String, Path), ("cursor" = Option<u64>, Query), ("limit" = Option<usize>, Query), ("type" = Option<String>, Query), ("from" = Option<String>, Query), ("to" = Option<String>, Query)),
    responses((status = 200, description = "Ledger entries, newest first", body = Page<LedgerEntryJson>)))]
async fn ledger<S: EventStore + ProjectionStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
    Params(query): Params<LedgerQuery>,
) -> Result<Json<Page<LedgerEntryJson>>, Problem> {
    let wallet_id = parse_wallet("walletId", &id)?;
    let limit = page_size(query.limit)?;
    let instant = |name: &str, text: Option<&str>| {
        text.map(|text| {
            text.parse::<jiff::Timestamp>()
                .map(|t| u64::try_from(t.as_microsecond()).unwrap_or(0))
                .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_query", format!("{name}: {e}")))
        })
        .transpose()
    };
    let from = instant("from", query.from.as_deref())?;
    let to = instant("to", query.to.as_deref())?;
    let entries = state.store.ledger_entries(&wallet_id, query.cursor, limit).await.map_err(store_problem)?;
    // Filters narrow the page; the cursor still moves past everything scanned.
    let next_cursor = (entries.len() == limit).then(|| entries.last().map(|e| e.version.to_string())).flatten();
    let items = entries
        .iter()
        .filter(|e| query.entry_type.as_deref().is_none_or(|kind| e.entry_type == kind))
        .filter(|e| from.is_none_or(|from| e.at.unix_micros() >= from))
        .filter(|e| to.is_none_or(|to| e.at.unix_micros() < to))
        .map(LedgerEntryJson::of)
        .collect();
    Ok(Json(Page { items, next_cursor }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EventsQuery {
    cursor: Option<u64>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/wallets/{id}/events", params(("id" = String, Path), ("cursor" = Option<u64>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, description = "The wallet's events in version order", body = Page<EventJson>)))]
async fn wallet_events<S: EventStore + ProjectionStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
    Params(query): Params<EventsQuery>,
) -> Result<Json<Page<EventJson>>, Problem> {
    let wallet_id = parse_wallet("walletId", &id)?;
    let limit = page_size(query.limit)?;
    let from = query.cursor.unwrap_or(0) + 1;
    let events = state.store.wallet_events(&wallet_id, from, from + limit as u64 - 1).await.map_err(store_problem)?;
    if events.is_empty() && from == 1 {
        return Err(Problem::rejection(wallex_engine::Rejection::WalletNotFound));
    }
    let next_cursor = (events.len() == limit).then(|| events.last().map(|e| e.version.to_string())).flatten();
    Ok(Json(Page { items: events.iter().map(EventJson::of).collect(), next_cursor }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalanceQuery {
    version: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
struct BalanceJson {
    wallet_id: String,
    version: u64,
    #[schema(value_type = String)]
    currency: &'static str,
    balance: String,
    held_balance: String,
    at: String,
}

#[utoipa::path(get, path = "/wallets/{id}/balance", params(("id" = String, Path), ("version" = u64, Query)),
    responses((status = 200, description = "The balance as of that version", body = BalanceJson), (status = 404, description = "version_not_found", body = ProblemJson)))]
async fn balance_at<S: EventStore + ProjectionStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
    Params(query): Params<BalanceQuery>,
) -> Result<Json<BalanceJson>, Problem> {
    let wallet_id = parse_wallet("walletId", &id)?;
    let events = state.store.wallet_events(&wallet_id, query.version, query.version).await.map_err(store_problem)?;
    let event = events.first().ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "version_not_found",
            format!("{wallet_id} has no version {}", query.version),
        )
    })?;
    Ok(Json(BalanceJson {
        wallet_id: wallet_id.to_string(),
        version: event.version,
        currency: event.currency.code(),
        balance: event.currency.format_minor(i128::from(event.balance_after)),
        held_balance: event.currency.format_minor(i128::from(event.held_after)),
        at: time(event.at),
    }))
}

#[utoipa::path(get, path = "/holds/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "The hold", body = HoldJson), (status = 404, description = "hold_not_found", body = ProblemJson)))]
async fn get_hold<S: EventStore + ProjectionStore>(
    State(state): Shared<S>,
    Path(id): Path<String>,
) -> Result<Json<HoldJson>, Problem> {
    let hold_id = parse_hold("holdId", &id)?;
    let hold = state.commands.hold(hold_id).await.ok_or_else(unavailable)?;
    let hold = hold.ok_or_else(|| Problem::rejection(wallex_engine::Rejection::HoldNotFound))?;
    let (status, captured) = match hold.status {
        HoldStatus::Active => ("active", None),
        HoldStatus::Captured { captured } => ("captured", Some(captured.format(hold.currency))),
        HoldStatus::Voided => ("voided", None),
        HoldStatus::Expired => ("expired", None),
    };
    Ok(Json(HoldJson {
        hold_id: hold.id.to_string(),
        wallet_id: hold.wallet_id.to_string(),
        currency: hold.currency.code(),
        amount: hold.amount.format(hold.currency),
        status,
        captured_amount: captured,
        expires_at: hold.expires_at.map(time),
        placed_at: time(hold.placed_at),
    }))
}

// ---------------------------------------------------------------------------------------------
// Health.

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn bus_health<S: EventStore + ProjectionStore>(State(state): Shared<S>) -> Json<serde_json::Value> {
    let failures = state.stats.relay.publish_failures.load(std::sync::atomic::Ordering::Relaxed);
    Json(serde_json::json!({
        "status": "healthy",
        "bus": state.bus_name,
        "producer": { "connected": true, "publishFailures": failures },
    }))
}

async fn bus_stats<S: EventStore + ProjectionStore>(
    State(state): Shared<S>,
) -> Result<Json<serde_json::Value>, Problem> {
    use std::sync::atomic::Ordering::Relaxed;
    let (backlog, oldest) = state.store.outbox_backlog().await.map_err(store_problem)?;
    let now = wallex_pipeline::ports::Clock::now(&wallex_pipeline::SystemClock).unix_micros();
    let oldest_age_ms = oldest.map(|at| now.saturating_sub(at.unix_micros()) / 1_000);
    let mut consumers = serde_json::Map::new();
    let mut dead_lettered = 0;
    for projection in wallex_pipeline::ports::Projection::ALL {
        let stats = state.stats.projector(projection);
        dead_lettered += stats.dead_lettered.load(Relaxed);
        let lag = match &state.lag {
            Some(probe) => probe.lag(projection.group()).await.ok(),
            None => None,
        };
        consumers.insert(
            projection.group().to_owned(),
            serde_json::json!({
                "projected": stats.projected.load(Relaxed),
                "duplicatesSkipped": stats.duplicates.load(Relaxed),
                "heldForGaps": stats.held.load(Relaxed),
                "deadLettered": stats.dead_lettered.load(Relaxed),
                "lag": lag,
            }),
        );
    }
    Ok(Json(serde_json::json!({
        "outbox": { "backlog": backlog, "oldestUnpublishedAgeMs": oldest_age_ms },
        "relay": {
            "published": state.stats.relay.published.load(Relaxed),
            "publishFailures": state.stats.relay.publish_failures.load(Relaxed),
            "lastAckLatencyUs": state.stats.relay.last_ack_latency_us.load(Relaxed),
        },
        "consumers": consumers,
        "dlq": { "count": dead_lettered },
    })))
}

/// Upper bounds of the latency histograms' buckets, in seconds: 0.25 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.010, 0.012, 0.015, 0.020, 0.025, 0.030,
    0.040, 0.050, 0.060, 0.080, 0.100, 0.125, 0.150, 0.200, 0.250, 0.300, 0.400, 0.500, 0.750, 1.0, 2.0, 5.0, 10.0,
];

/// The process's Prometheus recorder, installed on first use.
fn recorder() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        // Latencies are histograms with fixed buckets (not summaries), so a scraper can subtract
        // two scrapes and read the percentiles of exactly the interval between them.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".to_owned()),
                LATENCY_BUCKETS,
            )
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding application's): then this
        // endpoint shows only what the scrape itself sets.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Installs the metrics recorder; `serve` calls it before the pipeline starts so nothing is missed.
pub fn install_metrics() {
    recorder();
}

/// `GET /metrics`: Prometheus text format, with the outbox backlog read at scrape time.
async fn prometheus<S: EventStore + ProjectionStore>(State(state): Shared<S>) -> Response {
    if let Ok((backlog, oldest)) = state.store.outbox_backlog().await {
        metrics::gauge!("wallex_outbox_backlog").set(backlog as f64);
        let now = wallex_pipeline::ports::Clock::now(&wallex_pipeline::SystemClock).unix_micros();
        let age_us = oldest.map_or(0, |at| now.saturating_sub(at.unix_micros()));
        metrics::gauge!("wallex_outbox_oldest_age_seconds").set(age_us as f64 / 1e6);
    }
    let mut response = recorder().render().into_response();
    response
        .headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// The shape of every error body (RFC 9457).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ProblemJson {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// Stable machine-readable code, e.g. `insufficient_funds`.
    code: String,
    transaction_id: Option<String>,
}

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
        ledger
    ),
    components(schemas(ProblemJson))
)]
struct ApiDoc;

/// `GET /openapi.json`.
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(<ApiDoc as utoipa::OpenApi>::openapi())
}
