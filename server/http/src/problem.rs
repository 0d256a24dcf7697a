//! RFC 9457 problem details: every error the API returns, with a stable `code`.
//!
//! `Problem::rejection` is the one place a ledger rejection becomes an HTTP status. `ProblemBody` is
//! what is sent and `ProblemJson` what the OpenAPI document says is sent; they sit together here so
//! they change together.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use wallex_engine::{ParseError, Rejection};

/// What a 503 tells a client to wait before retrying, in seconds: the writer reloads and retries a
/// failed commit within about this long.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// A problem response: `application/problem+json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// The transaction a rejected command was recorded as, if it was.
    pub transaction_id: Option<u64>,
    /// More members of the body, e.g. `insufficient_funds`'s `available`, `requested` and
    /// `currency`.
    pub members: std::collections::BTreeMap<&'static str, serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction_id: Option<String>,
    /// The original service's error members (NestJS): the status, the message and the reason
    /// phrase, so its clients' error handling keeps working.
    status_code: u16,
    message: &'a str,
    error: &'a str,
    #[serde(flatten)]
    members: &'a std::collections::BTreeMap<&'static str, serde_json::Value>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
            transaction_id: None,
            members: std::collections::BTreeMap::new(),
        }
    }

    /// The HTTP form of a ledger rejection: the single mapping from rejection to status.
    pub fn rejection(rejection: Rejection) -> Problem {
        let status = match rejection {
            Rejection::WalletNotFound | Rejection::HoldNotFound => StatusCode::NOT_FOUND,
            Rejection::WalletExists
            | Rejection::HoldExists
            | Rejection::HoldNotActive
            | Rejection::HoldExpired
            | Rejection::ReferenceExists => StatusCode::CONFLICT,
            Rejection::IdempotencyKeyReused
            | Rejection::InvalidAmount
            | Rejection::SameWalletTransfer
            | Rejection::DestinationWalletNotFound
            | Rejection::CurrencyMismatch
            | Rejection::InvalidExpiry
            | Rejection::CaptureExceedsHold
            | Rejection::InsufficientFunds
            | Rejection::BalanceLimitExceeded
            | Rejection::QuotaExceeded
            | Rejection::InvalidAtomicGroup => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Problem::new(status, rejection.code(), describe(rejection))
    }

    /// A field that does not parse: 400 with a code naming what was wrong, or, for a well-formed
    /// amount the currency cannot carry (more decimal places than it has, more than the largest
    /// amount in its minor units), 422: whether such an amount is acceptable depends on the
    /// wallet's currency, not on the request's form.
    pub fn field(field: &str, error: &ParseError) -> Problem {
        let (status, code) = match error {
            ParseError::IdLength { .. } | ParseError::IdCharset { .. } | ParseError::IdDotSegment { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_id")
            }
            ParseError::UnknownCurrency => (StatusCode::BAD_REQUEST, "unknown_currency"),
            ParseError::AmountSyntax | ParseError::AmountNegative | ParseError::AmountNotPositive => {
                (StatusCode::BAD_REQUEST, "invalid_amount")
            }
            ParseError::AmountPrecision { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "amount_precision"),
            ParseError::AmountTooLarge => (StatusCode::UNPROCESSABLE_ENTITY, "amount_too_large"),
            ParseError::DescriptionTooLong { .. } | ParseError::DescriptionControl => {
                (StatusCode::BAD_REQUEST, "invalid_description")
            }
            ParseError::ReferenceLength { .. } | ParseError::ReferenceControl => {
                (StatusCode::BAD_REQUEST, "invalid_reference")
            }
            ParseError::MetadataEntries { .. } | ParseError::MetadataKey { .. } | ParseError::MetadataValue { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_metadata")
            }
            ParseError::CorrelationId { .. } => (StatusCode::BAD_REQUEST, "invalid_correlation_id"),
        };
        Problem::new(status, code, format!("{field}: {error}"))
    }

    pub fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }
}

/// The writer is not taking commands (stopping, or its queue is gone): 503, retry soon.
pub(crate) fn unavailable() -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the ledger is not accepting commands right now")
}

/// A store read failed: 503, retry soon. The cause is logged, not shown to the client.
pub(crate) fn store_problem(error: wallex_pipeline::ports::StoreError) -> Problem {
    tracing::warn!(%error, "read failed");
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the read model is unavailable right now")
}

fn describe(rejection: Rejection) -> &'static str {
    match rejection {
        Rejection::IdempotencyKeyReused => "this Idempotency-Key was already used for a different request",
        Rejection::InvalidAmount => "the amount must be greater than zero",
        Rejection::SameWalletTransfer => "source and destination are the same wallet",
        Rejection::WalletExists => "a wallet with this id already exists",
        Rejection::HoldExists => "a hold with this id already exists",
        Rejection::WalletNotFound => "no wallet with this id",
        Rejection::HoldNotFound => "no hold with this id",
        Rejection::DestinationWalletNotFound => "the destination wallet does not exist",
        Rejection::CurrencyMismatch => "the currencies do not match",
        Rejection::HoldNotActive => "the hold was already captured or voided",
        Rejection::HoldExpired => "the hold has expired",
        Rejection::InvalidExpiry => "the expiry must be in the future",
        Rejection::CaptureExceedsHold => "the capture exceeds the held amount",
        Rejection::InsufficientFunds => "the available balance is too low",
        Rejection::BalanceLimitExceeded => "the balance would exceed its limit",
        Rejection::ReferenceExists => "a transaction of this wallet already has this referenceId",
        Rejection::QuotaExceeded => "the owner already has as many wallets, or active holds, as one owner may",
        Rejection::InvalidAtomicGroup => "an atomic batch has 1 to the configured maximum of operations",
    }
}

impl Problem {
    /// The body as JSON: what `into_response` sends, for answers that carry problems inside them
    /// (a batch's results).
    pub(crate) fn body_json(&self) -> serde_json::Value {
        serde_json::to_value(self.body()).expect("problems serialize")
    }

    fn body(&self) -> ProblemBody<'_> {
        ProblemBody {
            kind: format!("/problems/{}", self.code),
            title: self.title(),
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
            transaction_id: self.transaction_id.map(|id| id.to_string()),
            status_code: self.status.as_u16(),
            message: &self.detail,
            error: self.title(),
            members: &self.members,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let bytes = serde_json::to_vec(&self.body()).expect("problems serialize");
        let mut response = (self.status, bytes).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

// What the OpenAPI document says every error body is; `ProblemBody` above is what is sent.
/// The shape of every error body (RFC 9457).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProblemJson {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// Stable machine-readable code, e.g. `insufficient_funds`.
    code: String,
    transaction_id: Option<String>,
    /// The original service's members: `statusCode` = `status`, `message` = `detail`, `error` =
    /// `title`.
    status_code: u16,
    message: String,
    error: String,
    /// `insufficient_funds` only: what the wallet may spend when the answer was made
    /// (`balance - heldBalance + overdraftLimit`), as a decimal string.
    available: Option<String>,
    /// `insufficient_funds` only: the amount the request asked for.
    requested: Option<String>,
    /// `insufficient_funds` only: the currency of `available` and `requested`.
    currency: Option<String>,
}

/// What the request limits ([`crate::Limits`]) answer: 503 `overloaded` when too many requests
/// run at once (nothing was done), 503 `timeout` when one took too long. A timed-out command may
/// still be decided after the answer left, so its outcome is unknown: the client retries with the
/// same `Idempotency-Key` and gets the outcome, whichever it was.
pub(crate) async fn limited(error: tower::BoxError) -> Problem {
    if error.is::<tower::load_shed::error::Overloaded>() {
        metrics::counter!("wallex_http_shed_total").increment(1);
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests are in progress; nothing was done: retry shortly",
        )
    } else if error.is::<tower::timeout::error::Elapsed>() {
        metrics::counter!("wallex_http_timeouts_total").increment(1);
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; its outcome is unknown: retry with the same Idempotency-Key",
        )
    } else {
        tracing::error!(%error, "a request failed in the request limits");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the server failed to answer this request")
    }
}

/// What a panic in a handler becomes: a logged 500 problem, never a reset connection. A panic is a
/// bug (an invariant broke), so it is logged as an error with its message.
pub(crate) fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    tracing::error!(panic = %message, "a request handler panicked");
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the server failed to answer this request")
        .into_response()
}
