//! Access: who a request comes from (an API key, or nobody in development mode), what it may do
//! (the route's scope, the key's owner), how fast (a token bucket per key), and the audit trail.
//!
//! One middleware, [`authenticate`], runs on every route but `/health/live`, `/health/ready` and
//! `/openapi.json`. It answers 401 for missing or invalid credentials and 403 for a key without the
//! route's scope, both before the request's input is read, and 429 past the key's rate. The scope a
//! route needs is in one table, [`required_scope`]; what depends on the request's content (an owner
//! may only touch its own wallets; money entering needs `mint`) is checked by the handlers through
//! [`Caller`].
//!
//! Development mode: a server whose store holds no key at all serves every request as the
//! anonymous caller, who may do everything. The first key created (on any instance, by the command
//! line or `/admin/keys`) ends it within a second, for good: revoking every key later does not
//! reopen the server.
//!
//! Keys are read from the store and cached for at most [`KEY_TTL`], so a revocation or expiry takes
//! effect within a second on every instance. Secrets are never logged or stored: requests are
//! traced by key id and correlation id.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;
use wallex_engine::{OwnerId, Timestamp};
use wallex_pipeline::ports::{ApiKey, AuditRecord, KeyStore, Scope, StoreError};

use crate::{AppState, Problem, Queries};

/// How long a key read from the store is trusted: the bound on how late a revocation, an expiry
/// or the end of development mode is seen.
pub const KEY_TTL: Duration = Duration::from_secs(1);

/// Most key ids (known or not) kept in the cache; past it the cache starts over, so a flood of
/// made-up ids cannot grow it without bound.
const MAX_CACHED_KEYS: usize = 100_000;

/// The store's key and audit operations, as an object the state can hold without being generic
/// over a second store type.
pub trait Keys: Send + Sync + Debug {
    fn api_key<'a>(&'a self, id: &'a str) -> Boxed<'a, Option<ApiKey>>;
    fn api_keys(&self) -> Boxed<'_, Vec<ApiKey>>;
    fn create_key<'a>(&'a self, key: &'a ApiKey) -> Boxed<'a, ()>;
    fn revoke_key<'a>(&'a self, id: &'a str, at: Timestamp) -> Boxed<'a, bool>;
    fn mark_key_used<'a>(&'a self, id: &'a str, at: Timestamp) -> Boxed<'a, bool>;
    fn append_audit<'a>(&'a self, record: &'a AuditRecord) -> Boxed<'a, ()>;
    fn audit_records(&self, before: Option<u64>, limit: usize) -> Boxed<'_, Vec<AuditRecord>>;
}

/// A store call's future, boxed.
pub type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

impl<K: KeyStore + Debug> Keys for K {
    fn api_key<'a>(&'a self, id: &'a str) -> Boxed<'a, Option<ApiKey>> {
        Box::pin(KeyStore::api_key(self, id))
    }
    fn api_keys(&self) -> Boxed<'_, Vec<ApiKey>> {
        Box::pin(KeyStore::api_keys(self))
    }
    fn create_key<'a>(&'a self, key: &'a ApiKey) -> Boxed<'a, ()> {
        Box::pin(KeyStore::create_key(self, key))
    }
    fn revoke_key<'a>(&'a self, id: &'a str, at: Timestamp) -> Boxed<'a, bool> {
        Box::pin(KeyStore::revoke_key(self, id, at))
    }
    fn mark_key_used<'a>(&'a self, id: &'a str, at: Timestamp) -> Boxed<'a, bool> {
        Box::pin(KeyStore::mark_key_used(self, id, at))
    }
    fn append_audit<'a>(&'a self, record: &'a AuditRecord) -> Boxed<'a, ()> {
        Box::pin(KeyStore::append_audit(self, record))
    }
    fn audit_records(&self, before: Option<u64>, limit: usize) -> Boxed<'_, Vec<AuditRecord>> {
        Box::pin(KeyStore::audit_records(self, before, limit))
    }
}

/// A token bucket: `per_second` tokens added each second, at most `burst` held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// The default rate of a key with each scope; a key gets the most generous of its scopes'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    pub read: Rate,
    pub write: Rate,
    pub mint: Rate,
    pub admin: Rate,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits {
            read: Rate { per_second: 500, burst: 1_000 },
            write: Rate { per_second: 200, burst: 400 },
            mint: Rate { per_second: 100, burst: 200 },
            admin: Rate { per_second: 500, burst: 1_000 },
        }
    }
}

impl RateLimits {
    fn of(&self, scope: Scope) -> Rate {
        match scope {
            Scope::Read => self.read,
            Scope::Write => self.write,
            Scope::Mint => self.mint,
            Scope::Admin => self.admin,
        }
    }

    /// The quota of a key with `scopes`: the most generous of theirs (none: the read rate).
    fn quota(&self, scopes: &[Scope]) -> Rate {
        scopes.iter().map(|scope| self.of(*scope)).max_by_key(|rate| (rate.per_second, rate.burst)).unwrap_or(self.read)
    }

    /// Every rate and burst is at least 1.
    pub fn validate(&self) -> Result<(), String> {
        for scope in Scope::ALL {
            let rate = self.of(scope);
            if rate.per_second == 0 || rate.burst == 0 {
                return Err(format!("the {} rate and burst must be at least 1", scope.name()));
            }
        }
        Ok(())
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// A key as the cache holds it: the store's answer (`None`: no such key), when it was read, and
/// the key's bucket, which outlives refreshes.
#[derive(Debug)]
struct Cached {
    key: Option<Arc<ApiKey>>,
    fetched: Instant,
    limiter: Option<Arc<Limiter>>,
    rate: Rate,
}

/// Authentication and rate limiting state, shared by every request.
#[derive(Debug)]
pub struct Access {
    keys: Option<Arc<dyn Keys>>,
    /// Whether keys are required: once any key exists, for good.
    enforcing: AtomicBool,
    /// When development mode last asked the store whether a key exists.
    probed: Mutex<Option<Instant>>,
    cache: Mutex<BTreeMap<String, Cached>>,
    rates: RateLimits,
    clock: DefaultClock,
}

impl Default for Access {
    fn default() -> Access {
        Access::new(None, RateLimits::default())
    }
}

/// Who a request comes from, as the handlers see it.
#[derive(Clone, Debug)]
pub struct Caller {
    /// `None`: development mode, which may do everything.
    key: Option<Arc<ApiKey>>,
}

impl Caller {
    /// The caller of development mode.
    pub const ANONYMOUS: Caller = Caller { key: None };

    pub fn key_id(&self) -> Option<&str> {
        self.key.as_deref().map(|key| key.id.as_str())
    }

    pub fn allows(&self, scope: Scope) -> bool {
        self.key.as_deref().is_none_or(|key| key.allows(scope))
    }

    /// 403 unless the caller has `scope`.
    pub(crate) fn require(&self, scope: Scope) -> Result<(), Problem> {
        if self.allows(scope) {
            return Ok(());
        }
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this API key does not have the `{}` scope this request needs", scope.name()),
        ))
    }

    /// The only owner whose wallets the caller sees; `None`: every owner's.
    pub fn owner(&self) -> Option<OwnerId> {
        self.key.as_deref().and_then(|key| key.owner_id)
    }

    /// Whether the caller may see and move wallets of `owner`.
    pub fn sees(&self, owner: OwnerId) -> bool {
        self.owner().is_none_or(|own| own == owner)
    }

    /// The namespace of the caller's `Idempotency-Key`s: its key id (empty in development mode).
    pub(crate) fn idempotency_namespace(&self) -> &str {
        self.key_id().unwrap_or("")
    }
}

impl<St: Send + Sync> FromRequestParts<St> for Caller {
    type Rejection = Problem;

    /// The caller `authenticate` found; a route it did not run on has none, and is refused.
    async fn from_request_parts(parts: &mut Parts, _state: &St) -> Result<Caller, Problem> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| unauthenticated("no credentials were checked"))
    }
}

fn unauthenticated(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
}

fn invalid_key(code: &'static str, detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, code, detail)
}

/// What a request is refused for before it reaches its route.
#[derive(Debug)]
enum Refusal {
    Problem(Problem),
    /// The key is over its rate: retry after this long.
    Limited {
        caller: Caller,
        rate: Rate,
        wait: Duration,
    },
}

/// Where a request stands against its key's bucket, for the `RateLimit` headers.
#[derive(Clone, Copy, Debug)]
struct Budget {
    rate: Rate,
    remaining: u32,
}

impl Access {
    /// Keys from `keys` (none: development mode for good, as for tests of the API alone), limited
    /// at `rates`.
    pub fn new(keys: Option<Arc<dyn Keys>>, rates: RateLimits) -> Access {
        Access {
            keys,
            enforcing: AtomicBool::new(false),
            probed: Mutex::new(None),
            cache: Mutex::new(BTreeMap::new()),
            rates,
            clock: DefaultClock::default(),
        }
    }

    pub(crate) fn keys(&self) -> Option<&Arc<dyn Keys>> {
        self.keys.as_ref()
    }

    /// Whether requests must carry a key, asking the store at most once per [`KEY_TTL`] while
    /// they need not.
    pub async fn enforcing(&self) -> Result<bool, StoreError> {
        if self.enforcing.load(Ordering::Acquire) {
            return Ok(true);
        }
        let Some(keys) = &self.keys else { return Ok(false) };
        let now = Instant::now();
        {
            let mut probed = self.probed.lock().expect("lock");
            if probed.is_some_and(|at| now.duration_since(at) < KEY_TTL) {
                return Ok(false);
            }
            *probed = Some(now);
        }
        if !keys.api_keys().await?.is_empty() {
            self.enforce();
        }
        Ok(self.enforcing.load(Ordering::Acquire))
    }

    /// Requires keys from now on (a key was just created here).
    pub(crate) fn enforce(&self) {
        if !self.enforcing.swap(true, Ordering::AcqRel) {
            tracing::info!("an API key exists: every request now needs one");
        }
    }

    /// The key with `id`, from the cache if read within [`KEY_TTL`], else from the store; and its
    /// bucket.
    async fn key(
        &self,
        keys: &dyn Keys,
        id: &str,
    ) -> Result<(Option<Arc<ApiKey>>, Option<Arc<Limiter>>, Rate), StoreError> {
        let now = Instant::now();
        if let Some(cached) = self.cache.lock().expect("lock").get(id)
            && now.duration_since(cached.fetched) < KEY_TTL
        {
            return Ok((cached.key.clone(), cached.limiter.clone(), cached.rate));
        }
        let key = keys.api_key(id).await?.map(Arc::new);
        let mut cache = self.cache.lock().expect("lock");
        if cache.len() >= MAX_CACHED_KEYS && !cache.contains_key(id) {
            cache.clear();
        }
        let rate = key.as_deref().map_or(self.rates.read, |key| self.rates.quota(&key.scopes));
        let entry =
            cache.entry(id.to_owned()).or_insert_with(|| Cached { key: None, fetched: now, limiter: None, rate });
        entry.fetched = now;
        entry.key = key.clone();
        if key.is_some() && (entry.limiter.is_none() || entry.rate != rate) {
            entry.limiter = Some(Arc::new(limiter(rate)));
            entry.rate = rate;
        }
        Ok((key, entry.limiter.clone(), entry.rate))
    }

    /// Forgets what the cache holds of key `id`, so the next request reads it afresh (this
    /// instance revoked it).
    pub(crate) fn forget(&self, id: &str) {
        self.cache.lock().expect("lock").remove(id);
    }

    /// Who sent a request with `headers`, at `now`, and its rate budget.
    async fn caller(&self, headers: &HeaderMap, now: Timestamp) -> Result<(Caller, Option<Budget>), Refusal> {
        let problem = |problem: Problem| Refusal::Problem(problem);
        let (Some(keys), true) = (&self.keys, self.enforcing().await.map_err(|error| problem(store_refusal(error)))?)
        else {
            return Ok((Caller::ANONYMOUS, None));
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(problem(unauthenticated("this server requires an API key: Authorization: Bearer <secret>")));
        };
        let malformed = || problem(invalid_key("invalid_credentials", "the API key is not valid"));
        let text = value.to_str().map_err(|_| malformed())?;
        let (scheme, secret) = text.split_once(' ').ok_or_else(malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(malformed());
        }
        let secret = secret.trim();
        let id = crate::auth::key_id(secret).ok_or_else(malformed)?;
        let (key, limiter, rate) = self.key(keys.as_ref(), id).await.map_err(|error| problem(store_refusal(error)))?;
        let key = key.filter(|key| crate::auth::is_secret_of(key, secret)).ok_or_else(malformed)?;
        // The secret is right: saying why the key no longer works tells its holder nothing new.
        if key.revoked_at.is_some() {
            return Err(problem(invalid_key("key_revoked", "this API key was revoked")));
        }
        if key.expires_at.is_some_and(|expires| expires <= now) {
            return Err(problem(invalid_key("key_expired", "this API key has expired")));
        }
        let caller = Caller { key: Some(key) };
        let Some(limiter) = limiter else { return Ok((caller, None)) };
        match limiter.check() {
            Ok(snapshot) => Ok((caller, Some(Budget { rate, remaining: snapshot.remaining_burst_capacity() }))),
            Err(not_until) => Err(Refusal::Limited { caller, rate, wait: not_until.wait_time_from(self.clock.now()) }),
        }
    }

    /// Records a key's first use, once across every instance.
    async fn first_use(&self, key: &ApiKey, now: Timestamp, request_id: Option<&str>) {
        let Some(keys) = &self.keys else { return };
        match keys.mark_key_used(&key.id, now).await {
            Ok(true) => {
                tracing::info!(key_id = %key.id, request_id = request_id.unwrap_or(""), "API key used for the first time");
                audit(keys.as_ref(), record(now, Some(&key.id), "key_first_used", Some(&key.id), request_id, None))
                    .await;
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, key_id = %key.id, "could not record a key's first use"),
        }
        // Seen: the next request of this instance need not ask.
        if let Some(cached) = self.cache.lock().expect("lock").get_mut(&key.id)
            && let Some(cached_key) = &mut cached.key
        {
            Arc::make_mut(cached_key).first_used_at.get_or_insert(now);
        }
    }
}

fn limiter(rate: Rate) -> Limiter {
    let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst))
        .with_middleware::<StateInformationMiddleware>()
}

fn store_refusal(error: StoreError) -> Problem {
    tracing::warn!(%error, "reading API keys failed");
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "credentials cannot be checked right now")
}

/// An audit record made now.
pub(crate) fn record(
    at: Timestamp,
    actor: Option<&str>,
    action: &str,
    target: Option<&str>,
    request_id: Option<&str>,
    detail: Option<String>,
) -> AuditRecord {
    AuditRecord {
        id: 0,
        at,
        actor: actor.map(str::to_owned),
        action: action.to_owned(),
        target: target.map(str::to_owned),
        request_id: request_id.map(str::to_owned),
        detail,
    }
}

/// Appends `record` to the trail and the log. A failed append is logged, never fatal to the
/// request that caused it.
pub(crate) async fn audit(keys: &dyn Keys, record: AuditRecord) {
    tracing::info!(
        target: "wallex::audit",
        actor = record.actor.as_deref().unwrap_or("-"),
        action = %record.action,
        target_id = record.target.as_deref().unwrap_or("-"),
        request_id = record.request_id.as_deref().unwrap_or("-"),
        detail = record.detail.as_deref().unwrap_or("-"),
        "audit"
    );
    if let Err(error) = keys.append_audit(&record).await {
        tracing::error!(%error, action = %record.action, "could not append to the audit trail");
    }
}

/// What a route needs, by method and matched path: the one table of scopes. Reads need `read`
/// (the operational routes too), credits `mint`, every other write `write`, `/admin` `admin`.
pub(crate) fn required_scope(method: &Method, path: &str) -> Scope {
    if path.starts_with("/admin") {
        return Scope::Admin;
    }
    if *method == Method::GET || *method == Method::HEAD {
        return Scope::Read;
    }
    match path {
        "/wallets/{id}/credit" => Scope::Mint,
        // Creating a wallet is a write; with money or credit in it, `mint` too (see the handler).
        _ => Scope::Write,
    }
}

/// Routes an owner-bound key may not use at all: they show or change what is not one owner's.
fn whole_ledger(path: &str) -> bool {
    path.starts_with("/admin") || path.starts_with("/health") || path == "/metrics"
}

/// The request's correlation id (every request has one by the time it gets here).
pub(crate) fn request_id(headers: &HeaderMap) -> Option<&str> {
    headers.get(crate::CORRELATION_ID).and_then(|value| value.to_str().ok())
}

/// The middleware: authenticates, checks the route's scope and the key's rate, audits, and hands
/// the handlers a [`Caller`].
pub(crate) async fn authenticate<S: Queries>(
    State(state): State<Arc<AppState<S>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let now = state.now();
    let method = request.method().clone();
    // A route layer: the route matched, so its path is there (shared, not copied).
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let path = matched.as_ref().map_or("", MatchedPath::as_str);
    let request_id = request_id(request.headers()).map(str::to_owned);
    let denied = |key_id: Option<&str>, problem: Problem| {
        metrics::counter!("wallex_http_denied_total", "code" => problem.code).increment(1);
        tracing::warn!(
            key_id = key_id.unwrap_or("-"),
            request_id = request_id.as_deref().unwrap_or("-"),
            %method,
            route = %path,
            status = problem.status.as_u16(),
            code = problem.code,
            "request denied"
        );
        let unauthorized = problem.status == StatusCode::UNAUTHORIZED;
        let mut response = problem.into_response();
        if unauthorized {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    };
    let (caller, budget) = match state.access.caller(request.headers(), now).await {
        Ok(found) => found,
        Err(Refusal::Problem(problem)) => return denied(None, problem),
        Err(Refusal::Limited { caller, rate, wait }) => {
            metrics::counter!("wallex_http_rate_limited_total").increment(1);
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let mut response = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "this API key is over its rate of {} requests a second; retry after {seconds} s",
                    rate.per_second
                ),
            )
            .into_response();
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
            rate_headers(headers, rate, 0, seconds.max(1));
            tracing::info!(
                key_id = caller.key_id().unwrap_or("-"),
                request_id = request_id.as_deref().unwrap_or("-"),
                "rate limited"
            );
            return response;
        }
    };
    if let Some(key) = &caller.key {
        if let Err(problem) = caller.require(required_scope(&method, path)) {
            return denied(Some(&key.id), problem);
        }
        if key.owner_id.is_some() && whole_ledger(path) {
            let problem = Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "an API key bound to an owner cannot use this route: it concerns every owner",
            );
            return denied(Some(&key.id), problem);
        }
        if key.first_used_at.is_none() {
            state.access.first_use(key, now, request_id.as_deref()).await;
        }
    }
    request.extensions_mut().insert(caller.clone());
    let mut response = next.run(request).await;
    let status = response.status();
    if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
        metrics::counter!("wallex_http_denied_total", "code" => "handler").increment(1);
        tracing::warn!(
            key_id = caller.key_id().unwrap_or("-"),
            request_id = request_id.as_deref().unwrap_or("-"),
            %method,
            route = %path,
            status = status.as_u16(),
            "request denied"
        );
    }
    if path.starts_with("/admin")
        && let Some(keys) = state.access.keys()
    {
        let detail = Some(format!("{method} {path}: {}", status.as_u16()));
        audit(keys.as_ref(), record(now, caller.key_id(), "admin_request", Some(path), request_id.as_deref(), detail))
            .await;
    }
    if let Some(budget) = budget {
        let refill = u64::from(budget.rate.burst - budget.remaining.min(budget.rate.burst));
        let seconds = refill.div_ceil(u64::from(budget.rate.per_second.max(1)));
        rate_headers(response.headers_mut(), budget.rate, budget.remaining, seconds);
    }
    response
}

/// The IETF `RateLimit-Policy` and `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers):
/// the key's bucket as a quota of `burst` requests a window of `burst / per_second` seconds, what
/// is left of it, and in how many seconds it is whole again.
fn rate_headers(headers: &mut HeaderMap, rate: Rate, remaining: u32, reset_seconds: u64) {
    let window = u64::from(rate.burst).div_ceil(u64::from(rate.per_second.max(1))).max(1);
    let policy = format!("\"key\";q={};w={window}", rate.burst);
    let state = format!("\"key\";r={remaining};t={reset_seconds}");
    headers.insert("ratelimit-policy", HeaderValue::from_str(&policy).expect("ASCII"));
    headers.insert("ratelimit", HeaderValue::from_str(&state).expect("ASCII"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_table_gives_money_entering_to_mint_and_the_rest_by_method() {
        assert_eq!(required_scope(&Method::POST, "/wallets/{id}/credit"), Scope::Mint);
        assert_eq!(required_scope(&Method::POST, "/wallets/{id}/debit"), Scope::Write);
        assert_eq!(required_scope(&Method::POST, "/holds/{id}/capture"), Scope::Write);
        assert_eq!(required_scope(&Method::POST, "/wallets"), Scope::Write);
        assert_eq!(required_scope(&Method::GET, "/wallets/{id}"), Scope::Read);
        assert_eq!(required_scope(&Method::GET, "/admin/audit"), Scope::Admin);
        assert_eq!(required_scope(&Method::POST, "/admin/keys"), Scope::Admin);
    }

    #[test]
    fn a_key_gets_the_most_generous_rate_of_its_scopes() {
        let rates = RateLimits::default();
        assert_eq!(rates.quota(&[Scope::Read, Scope::Mint]), rates.read);
        assert_eq!(rates.quota(&[Scope::Mint]), rates.mint);
        assert_eq!(rates.quota(&[]), rates.read);
        assert!(RateLimits { mint: Rate { per_second: 0, burst: 1 }, ..rates }.validate().is_err());
    }
}
