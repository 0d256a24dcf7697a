//! The REST API: the original service's routes and camelCase bodies, plus holds, history,
//! idempotency and problem+json errors. The only crate that knows JSON request shapes.
//!
//! Amounts arrive as JSON numbers or strings and are parsed exactly from their text (never through
//! `f64`), in the wallet's currency; they leave as exact decimal strings. Every POST honours an
//! `Idempotency-Key` header: the key becomes the command id, so a retry returns the original
//! status and body (with `Idempotent-Replayed: true`), other content under the same key is 422, and
//! a retry while the first is still being decided is 409.
//!
//! The crate is cut by resource: `wallets`, `holds` and `ledger` hold each route beside its
//! OpenAPI annotation, `operations` the health and metrics routes, `openapi` the document. Handlers
//! read through the narrow `Queries` port and take the time from the state's clock; `extract`
//! turns requests into typed values, `wire` holds every JSON shape, `reply` turns a command's
//! outcome into a response and `problem` every error into RFC 9457 problem details.

pub mod access;
mod admin;
pub mod auth;
pub mod batch;
pub mod cluster;
mod extract;
mod holds;
mod ledger;
mod openapi;
mod operations;
pub mod problem;
mod queries;
mod reply;
mod search;
mod wallets;
mod wire;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use wallex_engine::{Currency, OwnerId, Timestamp, WalletId};
use wallex_pipeline::ports::{Bus, BusError, Clock};
use wallex_pipeline::{CommandSender, PipelineStats, SystemClock};

pub use operations::install_metrics;
pub use problem::Problem;
pub use queries::Queries;
pub use wire::{EventJson, WalletJson, time as rfc3339};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest page any list returns.
pub const MAX_PAGE: usize = 1_000;
/// Page size when `limit` is absent.
pub const DEFAULT_PAGE: usize = 50;
/// The header that carries a write's commit position (its transaction id); list reads accept it
/// back as `?after=`.
pub const POSITION: &str = "wallex-position";
/// The header that carries a request's correlation id, in and out.
pub const CORRELATION_ID: &str = "x-correlation-id";
/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState<S> {
    pub commands: CommandSender,
    /// Every read the handlers make of the store goes through `Queries`.
    pub store: S,
    pub stats: Arc<PipelineStats>,
    /// The bus's name in health answers (`kafka`, `in-process`).
    pub bus_name: &'static str,
    /// A wallet's currency and owner never change, so they are cached after the first lookup.
    facts: RwLock<BTreeMap<WalletId, (Currency, OwnerId)>>,
    /// Consumer lag, when the bus is known (see `with_bus`).
    lag: Option<Arc<dyn LagProbe>>,
    /// The time for answers that depend on it (outbox age); the wall clock unless `with_clock`.
    clock: Arc<dyn TimeSource>,
    /// Refuse (428) a command POST without an `Idempotency-Key`; see `requiring_idempotency_keys`.
    require_idempotency_key: bool,
    /// How many API requests run at once, and how long one may take; see `with_limits`.
    limits: Limits,
    /// API keys, rate limits and the audit trail; development mode without `with_keys`.
    access: access::Access,
    /// The most operations one `POST /batch` may hold; see `with_max_batch_operations`.
    max_batch_operations: usize,
    /// This instance's place in a cluster, if it has one; see `with_cluster`.
    cluster: Option<cluster::Cluster>,
}

/// Bounds on the API's requests, so that overload is refused early instead of queueing without
/// end: requests beyond `max_concurrent` are answered 503 `overloaded` at once (with
/// `Retry-After`), and one that takes longer than `timeout` is answered 503 `timeout`. The
/// operational routes (`/health…`, `/metrics`, `/openapi.json`) are outside both, so probes still
/// answer under overload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_concurrent: usize,
    pub timeout: std::time::Duration,
    /// How long a history read waits for the ledger projection to reach the wallet's committed
    /// version; past it, the answer says how far behind it is (`Wallex-Behind`).
    pub read_wait: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_concurrent: 1_024,
            timeout: std::time::Duration::from_secs(10),
            read_wait: std::time::Duration::from_secs(2),
        }
    }
}

/// Asks the bus how far a consumer group is behind.
pub trait LagProbe: Send + Sync + Debug {
    fn lag<'a>(&'a self, group: &'a str) -> Pin<Box<dyn Future<Output = Result<u64, BusError>> + Send + 'a>>;
}

impl<B: Bus + Debug> LagProbe for B {
    fn lag<'a>(&'a self, group: &'a str) -> Pin<Box<dyn Future<Output = Result<u64, BusError>> + Send + 'a>> {
        Box::pin(Bus::lag(self, group))
    }
}

/// A `Clock` behind a pointer: `Clock` requires `Clone`, so it cannot be a trait object itself, and
/// erasing it keeps `AppState` (and so `router`) generic over the store alone.
trait TimeSource: Send + Sync + Debug {
    fn now(&self) -> Timestamp;
}

impl<C: Clock + Debug> TimeSource for C {
    fn now(&self) -> Timestamp {
        Clock::now(self)
    }
}

impl<S> AppState<S> {
    pub fn new(commands: CommandSender, store: S, stats: Arc<PipelineStats>, bus_name: &'static str) -> AppState<S> {
        AppState {
            commands,
            store,
            stats,
            bus_name,
            facts: RwLock::new(BTreeMap::new()),
            lag: None,
            clock: Arc::new(SystemClock),
            require_idempotency_key: false,
            limits: Limits::default(),
            access: access::Access::default(),
            max_batch_operations: batch::DEFAULT_BATCH_OPERATIONS,
            cluster: None,
        }
    }

    /// Takes part in a cluster: while another instance holds the writer lease, what only the
    /// writer can answer is forwarded to it (see [`cluster`]).
    pub fn with_cluster(mut self, cluster: cluster::Cluster) -> AppState<S> {
        self.cluster = Some(cluster);
        self
    }

    /// The most operations one `POST /batch` may hold (1 to [`batch::MAX_BATCH_OPERATIONS`]; a
    /// larger number is taken as that).
    pub fn with_max_batch_operations(mut self, max: usize) -> AppState<S> {
        self.max_batch_operations = max.clamp(1, batch::MAX_BATCH_OPERATIONS);
        self
    }

    /// Checks API keys from `keys` (the ledger's store), limiting each key at `rates`. Until the
    /// store holds a key the server stays in development mode (see [`access`]).
    pub fn with_keys(mut self, keys: impl access::Keys + 'static, rates: access::RateLimits) -> AppState<S> {
        self.access = access::Access::new(Some(Arc::new(keys)), rates);
        self
    }

    /// Whether requests must carry an API key now (the store holds one).
    pub async fn requires_keys(&self) -> Result<bool, wallex_pipeline::ports::StoreError> {
        self.access.enforcing().await
    }

    /// Bounds concurrency and time per API request (see [`Limits`]).
    pub fn with_limits(mut self, limits: Limits) -> AppState<S> {
        self.limits = limits;
        self
    }

    /// With `true`, every POST that submits a command must carry an `Idempotency-Key` (428
    /// `idempotency_key_required` otherwise): a client that cannot retry safely cannot move money.
    /// Off by default, because the original service's clients send none.
    pub fn requiring_idempotency_keys(mut self, required: bool) -> AppState<S> {
        self.require_idempotency_key = required;
        self
    }

    /// Lets `/health/kafka/stats` report consumer lag per group from `bus`.
    pub fn with_bus(mut self, bus: impl LagProbe + 'static) -> AppState<S> {
        self.lag = Some(Arc::new(bus));
        self
    }

    /// Takes the time from `clock` instead of the wall clock: the simulator's, or a test's.
    pub fn with_clock(mut self, clock: impl Clock + Debug) -> AppState<S> {
        self.clock = Arc::new(clock);
        self
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

impl<S: Queries> AppState<S> {
    /// The wallet after every write acknowledged before this call: the committed view where the
    /// read model is behind, else the read model (which then has every acknowledged write of it).
    /// Neither waits for nor queues at the writer.
    pub(crate) async fn committed_wallet(
        &self,
        wallet_id: &WalletId,
    ) -> Result<Option<wallex_pipeline::ports::WalletView>, Problem> {
        // A wallet in the view is there at its newest acknowledged version (the read model may at
        // most hold a version not acknowledged yet): no store read needed.
        if let Some(committed) = self.stats.view.wallet(wallet_id) {
            return Ok(Some(committed));
        }
        self.store.wallet(wallet_id).await.map_err(problem::store_problem)
    }
}

/// The router, with every route on one listener: the API, and the operational routes (those but
/// `/health/live`, `/health/ready` and `/openapi.json` need a key with `read` once keys exist).
pub fn router<S: Queries>(state: Arc<AppState<S>>) -> Router {
    let ops = operational(&state);
    let authenticated = ops.route_layer(axum::middleware::from_fn_with_state(state.clone(), access::authenticate::<S>));
    finish(api(&state).merge(authenticated).merge(open()), state)
}

/// The API and the open probes for the main listener, and the operational routes (all open) for a
/// listener of their own (`http.ops_listen`), which only the operators' network should reach.
pub fn split_routers<S: Queries>(state: Arc<AppState<S>>) -> (Router, Router) {
    let main = finish(api(&state).merge(open()), state.clone());
    let ops = finish(operational(&state).merge(open()), state);
    (main, ops)
}

/// The API routes, authenticated and bounded (see [`Limits`]).
fn api<S: Queries>(state: &Arc<AppState<S>>) -> Router<Arc<AppState<S>>> {
    let limits = state.limits;
    Router::new()
        .route("/wallets", post(wallets::create_wallet::<S>).get(search::list_wallets::<S>))
        .route("/wallets/{id}", get(wallets::get_wallet::<S>))
        .route("/wallets/{id}/credit", post(wallets::credit::<S>))
        .route("/wallets/{id}/debit", post(wallets::debit::<S>))
        .route("/wallets/{id}/transfer", post(wallets::transfer::<S>))
        .route("/wallets/{id}/holds", post(holds::place_hold::<S>))
        .route("/wallets/{id}/events", get(ledger::wallet_events::<S>))
        .route("/wallets/{id}/balance", get(ledger::balance_at::<S>))
        .route("/holds/{id}", get(holds::get_hold::<S>))
        .route("/holds/{id}/capture", post(holds::capture_hold::<S>))
        .route("/holds/{id}/void", post(holds::void_hold::<S>))
        // A batch body may be larger than any other.
        .route("/batch", post(batch::batch::<S>).layer(DefaultBodyLimit::max(batch::MAX_BATCH_BODY_BYTES)))
        .route("/ledger/wallet/{id}", get(ledger::ledger::<S>))
        .route("/ledger/wallet/{id}/summary", get(ledger::summary::<S>))
        .route("/ledger/reference/{id}", get(ledger::by_reference::<S>))
        .route("/ledger/transactions", get(search::transactions::<S>))
        .route("/admin/keys", get(admin::list_keys::<S>).post(admin::create_key::<S>))
        .route("/admin/keys/{id}/revoke", post(admin::revoke_key::<S>))
        .route("/admin/audit", get(admin::audit_trail::<S>))
        // Inside the limits: a request is authenticated (and its scope and rate checked) before
        // its route reads anything.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), access::authenticate::<S>))
        // Outside authentication: a follower relays the caller's own credentials, and the writer
        // checks them (one rate limit per key for the whole cluster).
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), cluster::forward::<S>))
        // Outermost first: an overloaded or timed-out request becomes a problem; beyond
        // `max_concurrent` running requests a new one is shed at once, never queued.
        .route_layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(problem::limited))
                .load_shed()
                // One semaphore for every route: the layer is applied to each route separately.
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(limits.max_concurrent))
                .timeout(limits.timeout),
        )
}

/// The operational routes that show the whole service: health in detail, the bus, metrics.
fn operational<S: Queries>(_state: &Arc<AppState<S>>) -> Router<Arc<AppState<S>>> {
    Router::new()
        .route("/health", get(operations::health::<S>))
        .route("/health/kafka", get(operations::bus_health::<S>))
        .route("/health/kafka/stats", get(operations::bus_stats::<S>))
        .route("/metrics", get(operations::prometheus::<S>))
}

/// What any listener answers without credentials: liveness, readiness and the API's document.
fn open<S: Queries>() -> Router<Arc<AppState<S>>> {
    Router::new()
        .route("/health/live", get(operations::live))
        .route("/health/ready", get(operations::ready::<S>))
        .route("/openapi.json", get(openapi::openapi))
}

/// The fallbacks, body limit, panic guard, tracing and correlation ids every listener has.
fn finish<S: Queries>(routes: Router<Arc<AppState<S>>>, state: Arc<AppState<S>>) -> Router {
    routes
        // Added after the routes, since it applies to the routes registered so far; axum still
        // sets the `Allow` header on the answer.
        .method_not_allowed_fallback(|| async {
            Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not accept that method")
        })
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "route_not_found", "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Inside the trace layer, so the trace records the 500 a panic became.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(problem::panicked))
        // Every request's trace carries its correlation id (never its credentials).
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
            let correlation = request.headers().get(CORRELATION_ID).and_then(|value| value.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %request.method(), uri = %request.uri(), correlation_id = %correlation)
        }))
        // The original service's `x-correlation-id`: the client's, or a fresh one when it sent
        // none, echoed on the answer.
        .layer(tower_http::request_id::PropagateRequestIdLayer::new(axum::http::HeaderName::from_static(CORRELATION_ID)))
        .layer(tower_http::request_id::SetRequestIdLayer::new(
            axum::http::HeaderName::from_static(CORRELATION_ID),
            tower_http::request_id::MakeRequestUuid,
        ))
        .with_state(state)
}

/// The state as handlers extract it.
type Shared<S> = axum::extract::State<Arc<AppState<S>>>;
