//! Extraction: JSON bodies, query strings, path ids and headers into typed values, every failure a
//! problem. Ids, amounts, currencies, descriptions and instants are parsed here, and the
//! `Idempotency-Key` header becomes the command id.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use wallex_engine::{
    Amount, CommandId, CorrelationId, Currency, Description, HoldId, Memo, Metadata, OwnerId, ParseError, Reference,
    Timestamp, WalletId,
};

use crate::access::Caller;
use crate::{AppState, DEFAULT_PAGE, MAX_BODY_BYTES, MAX_IDEMPOTENCY_KEY_BYTES, MAX_PAGE, Problem};

/// A JSON body whose every failure (syntax, unknown field, wrong type, size, content type) is a
/// problem+json 4xx.
pub(crate) struct Body<T>(pub(crate) T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequest<St> for Body<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &St) -> Result<Body<T>, Problem> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(json_problem(&rejection)),
        }
    }
}

/// A JSON body whose every field is optional, so no body at all (or `null`) means the defaults; a
/// body that is there is read as [`Body`] reads it.
pub(crate) struct OptionalBody<T>(pub(crate) T);

impl<T: DeserializeOwned + Default, St: Send + Sync> FromRequest<St> for OptionalBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &St) -> Result<OptionalBody<T>, Problem> {
        let headers = request.headers();
        let declared_empty = headers
            .get(axum::http::header::CONTENT_LENGTH)
            .is_none_or(|length| length.to_str().is_ok_and(|length| length.trim() == "0"));
        if declared_empty && !headers.contains_key(axum::http::header::CONTENT_TYPE) {
            let bytes = axum::body::Bytes::from_request(request, state)
                .await
                .map_err(|rejection| Problem::new(rejection.status(), "invalid_body", rejection.body_text()))?;
            if bytes.is_empty() {
                return Ok(OptionalBody(T::default()));
            }
            return Err(Problem::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "a request body must be application/json",
            ));
        }
        // A JSON `null` body says "no body" as well.
        Body::<Option<T>>::from_request(request, state).await.map(|Body(value)| OptionalBody(value.unwrap_or_default()))
    }
}

/// Query-string parameters whose every failure is a 400 `invalid_query` problem.
pub(crate) struct Params<T>(pub(crate) T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequestParts<St> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Params<T>, Problem> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Params(value)),
            Err(rejection) => Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_query", rejection.body_text())),
        }
    }
}

/// The `{id}` segment of a path, as text. Its one failure, a segment that is not UTF-8 once
/// percent-decoded, is a 400 `invalid_id` problem: axum's own rejection is plain text. Handlers
/// parse the text themselves, so the order of the checks (and of their problems) stays theirs.
pub(crate) struct PathId(pub(crate) String);

impl<St: Send + Sync> FromRequestParts<St> for PathId {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<PathId, Problem> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(PathId(id)),
            Err(rejection) => Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_id", rejection.body_text())),
        }
    }
}

fn json_problem(rejection: &JsonRejection) -> Problem {
    let detail = rejection.body_text();
    match rejection {
        JsonRejection::JsonSyntaxError(_) => Problem::new(StatusCode::BAD_REQUEST, "malformed_json", detail),
        // A field of the wrong type, a missing or unknown field: malformed input, like every other
        // 400. A 422 means a well-formed request the ledger's rules refuse.
        JsonRejection::JsonDataError(_) => Problem::new(StatusCode::BAD_REQUEST, "invalid_body", detail),
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

pub(crate) fn parse_wallet(field: &str, text: &str) -> Result<WalletId, Problem> {
    WalletId::parse(text).map_err(|error| Problem::field(field, &error))
}

pub(crate) fn parse_hold(field: &str, text: &str) -> Result<HoldId, Problem> {
    HoldId::parse(text).map_err(|error| Problem::field(field, &error))
}

pub(crate) fn parse_description(text: Option<&str>) -> Result<Option<Description>, Problem> {
    text.map(|text| Description::parse(text).map_err(|error| Problem::field("description", &error))).transpose()
}

/// What a command carries besides its content: the body's `referenceId` and `metadata`, and the
/// request's correlation id (the client's `x-correlation-id`, or the one made for it; one that is
/// not 1 to 128 visible ASCII characters is echoed but not stored).
pub(crate) fn parse_memo(
    headers: &HeaderMap,
    reference: Option<&str>,
    metadata: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<Memo, Problem> {
    let reference = reference.map(|text| Reference::parse(text).map_err(|error| Problem::field("referenceId", &error)));
    let metadata = match metadata {
        Some(map) => Metadata::parse(map.iter().map(|(key, value)| (key.as_str(), value.as_str())))
            .map_err(|error| Problem::field("metadata", &error))?,
        None => Metadata::default(),
    };
    let correlation_id = headers
        .get(crate::CORRELATION_ID)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| CorrelationId::parse(text).ok());
    Ok(Memo { reference: reference.transpose()?, metadata, correlation_id })
}

/// An amount from its JSON text: a decimal string (digits, one optional point with digits after
/// it) or a JSON number (exponents too: `1.5e2` is exactly 150), parsed exactly in `currency`.
///
/// Every well-formed amount is parsed, or refused as more precise than the currency or larger than
/// the largest amount (422), never as malformed (400): the OpenAPI document states the grammar, and
/// the currency's limits are known only once the wallet is.
pub(crate) fn parse_amount(field: &str, raw: &RawValue, currency: Currency, positive: bool) -> Result<Amount, Problem> {
    let refused = |error: ParseError| Problem::field(field, &error);
    let text = raw.get();
    let plain = if text.starts_with('"') {
        let text = serde_json::from_str::<String>(text)
            .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "invalid_amount", format!("{field}: not a string")))?;
        if text.starts_with('-') {
            return Err(refused(ParseError::AmountNegative));
        }
        significant(&text, currency).map_err(refused)?
    } else if text.starts_with(|first: char| first == '-' || first.is_ascii_digit()) {
        // serde_json checked the number's grammar: `-?int(.frac)?([eE][+-]?exp)?`.
        let (negative, unsigned) = text.strip_prefix('-').map_or((false, text), |rest| (true, rest));
        let plain = significant(&shift_exponent(unsigned, currency).map_err(refused)?, currency).map_err(refused)?;
        if negative && plain != "0" {
            return Err(refused(ParseError::AmountNegative));
        }
        plain
    } else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_amount",
            format!("{field}: not a number or a string"),
        ));
    };
    let parsed = if positive { Amount::parse_positive(&plain, currency) } else { Amount::parse(&plain, currency) };
    parsed.map_err(refused)
}

/// The most digits an amount can have before or after its point in any currency, with room.
const AMOUNT_DIGITS: usize = 20;

/// `int(.frac)?` reduced to its significant digits (`007.50` is `7.5`): too many decimal places
/// for the currency or too many integer digits for any amount are refused here, before the exact
/// parse, so a long but well-formed amount is never mistaken for a malformed one.
fn significant(text: &str, currency: Currency) -> Result<String, ParseError> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (text.contains('.') && frac.is_empty()) {
        return Err(ParseError::AmountSyntax);
    }
    let (int, frac) = (int.trim_start_matches('0'), frac.trim_end_matches('0'));
    if frac.len() > currency.scale() as usize {
        return Err(ParseError::AmountPrecision { currency, scale: currency.scale() });
    }
    if int.len() > AMOUNT_DIGITS {
        return Err(ParseError::AmountTooLarge);
    }
    let int = if int.is_empty() { "0" } else { int };
    Ok(if frac.is_empty() { int.to_owned() } else { format!("{int}.{frac}") })
}

/// An unsigned JSON number with its exponent applied by moving the point: exact, no float.
fn shift_exponent(number: &str, currency: Currency) -> Result<String, ParseError> {
    let Some((mantissa, exponent)) = number.split_once(['e', 'E']) else { return Ok(number.to_owned()) };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    if digits.bytes().all(|byte| byte == b'0') {
        return Ok("0".to_owned());
    }
    // A non-zero mantissa moved further than this is too large or too precise for any currency.
    let bound = 2 * AMOUNT_DIGITS;
    let exponent = exponent.strip_prefix('+').unwrap_or(exponent);
    let (shrink, magnitude) = exponent.strip_prefix('-').map_or((false, exponent), |rest| (true, rest));
    let magnitude = match magnitude.parse::<usize>() {
        Ok(magnitude) if magnitude <= bound => magnitude,
        _ if shrink => return Err(ParseError::AmountPrecision { currency, scale: currency.scale() }),
        _ => return Err(ParseError::AmountTooLarge),
    };
    // Where the point lands, counted in digits from the left; may be before the first one.
    Ok(if shrink && magnitude >= int.len() {
        format!("0.{}{digits}", "0".repeat(magnitude - int.len()))
    } else if shrink {
        let point = int.len() - magnitude;
        format!("{}.{}", &digits[..point], &digits[point..])
    } else if int.len() + magnitude >= digits.len() {
        format!("{digits}{}", "0".repeat(int.len() + magnitude - digits.len()))
    } else {
        let point = int.len() + magnitude;
        format!("{}.{}", &digits[..point], &digits[point..])
    })
}

pub(crate) fn parse_currency(text: Option<&str>) -> Result<Option<Currency>, Problem> {
    text.map(|code| Currency::parse(code).map_err(|error| Problem::field("currency", &error))).transpose()
}

/// A hold's `expiresAt`: an RFC 3339 instant, not before 1970 (the ledger's time is unsigned).
pub(crate) fn parse_expiry(text: Option<&str>) -> Result<Option<Timestamp>, Problem> {
    text.map(|text| {
        let instant: jiff::Timestamp = text
            .parse()
            .map_err(|error| Problem::new(StatusCode::BAD_REQUEST, "invalid_expiry", format!("expiresAt: {error}")))?;
        let micros = u64::try_from(instant.as_microsecond())
            .map_err(|_| Problem::rejection(wallex_engine::Rejection::InvalidExpiry))?;
        Ok(Timestamp::from_unix_micros(micros))
    })
    .transpose()
}

/// A query's RFC 3339 instant as microseconds since 1970; one before 1970 counts as 1970, which
/// every ledger entry is at or after.
pub(crate) fn parse_instant(name: &str, text: Option<&str>) -> Result<Option<u64>, Problem> {
    text.map(|text| {
        text.parse::<jiff::Timestamp>()
            .map(|t| u64::try_from(t.as_microsecond()).unwrap_or(0))
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_query", format!("{name}: {e}")))
    })
    .transpose()
}

/// The page size a list asks for: `DEFAULT_PAGE` when absent, at most `MAX_PAGE`.
pub(crate) fn page_size(limit: Option<usize>) -> Result<usize, Problem> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        limit @ 1..=MAX_PAGE => Ok(limit),
        _ => Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_limit", format!("limit must be 1 to {MAX_PAGE}"))),
    }
}

/// The command id of a POST: from its `Idempotency-Key` in the caller's namespace (its key id), or a
/// fresh random one when it has none and the server does not require one (`required`: 428 without
/// it, so no client can send a money movement it could not safely retry). Two keys sending the
/// same `Idempotency-Key` send two commands: neither can read or block the other's.
pub(crate) fn command_id(headers: &HeaderMap, required: bool, caller: &Caller) -> Result<CommandId, Problem> {
    match header_key(headers)? {
        Some(key) => Ok(key_command_id(caller, IdSource::Key(key))),
        None if required => Err(key_required()),
        None => Ok(random_command_id()),
    }
}

/// 428: this server requires an `Idempotency-Key`.
pub(crate) fn key_required() -> Problem {
    Problem::new(
        StatusCode::PRECONDITION_REQUIRED,
        "idempotency_key_required",
        "this server requires an Idempotency-Key on every POST that moves money or creates a wallet",
    )
}

/// A command id no retry can name.
pub(crate) fn random_command_id() -> CommandId {
    CommandId(uuid::Uuid::new_v4().as_u128())
}

/// The request's `Idempotency-Key`, if it has one; 400 if it is not 1 to 255 visible characters.
pub(crate) fn header_key(headers: &HeaderMap) -> Result<Option<&str>, Problem> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    value.to_str().ok().filter(|key| is_valid_key(key)).map(Some).ok_or_else(|| invalid_key("Idempotency-Key"))
}

/// Whether `key` may be an idempotency key: 1 to 255 visible ASCII characters.
pub(crate) fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_BYTES && key.bytes().all(|byte| byte.is_ascii_graphic())
}

/// 400 `invalid_idempotency_key`, naming where the key was.
pub(crate) fn invalid_key(what: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
        format!("{what} must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters, no spaces"),
    )
}

/// What a command id is derived from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum IdSource<'a> {
    /// A client's key: a single route's `Idempotency-Key`, or a batch operation's
    /// `idempotencyKey` (the same key names the same command on either).
    Key(&'a str),
    /// The operation at this index of a batch whose request carries this `Idempotency-Key`.
    BatchItem(&'a str, usize),
}

/// The command id of `source` in the caller's namespace (its key id). Two API keys sending the
/// same key send two commands: neither can read or block the other's. Keys are visible ASCII, so
/// the NUL and the tag byte below keep the two kinds of source apart.
pub(crate) fn key_command_id(caller: &Caller, source: IdSource<'_>) -> CommandId {
    // Development mode's namespace is empty, which keeps the ids clients had before keys. A key's
    // ends in a NUL, which no header value holds, so no namespace is a prefix of another's input.
    let mut input = b"wallex/idempotency-key/".to_vec();
    let namespace = caller.idempotency_namespace();
    if !namespace.is_empty() {
        input.extend_from_slice(namespace.as_bytes());
        input.push(0);
    }
    match source {
        IdSource::Key(key) => input.extend_from_slice(key.as_bytes()),
        IdSource::BatchItem(key, index) => {
            input.push(1);
            input.extend_from_slice(key.as_bytes());
            input.push(0);
            input.extend_from_slice(&(index as u64).to_le_bytes());
        }
    }
    CommandId(xxhash_rust::xxh3::xxh3_128(&input))
}

impl<S: crate::Queries> AppState<S> {
    /// The currency and owner of an existing wallet (`None`: no such wallet): every acknowledged
    /// wallet is in the committed view or the read model, and neither fact ever changes, so they
    /// are cached after the first lookup.
    pub(crate) async fn facts_of(&self, wallet_id: WalletId) -> Result<Option<(Currency, OwnerId)>, Problem> {
        if let Some(facts) = self.facts.read().expect("lock").get(&wallet_id) {
            return Ok(Some(*facts));
        }
        let Some(wallet) = self.committed_wallet(&wallet_id).await? else { return Ok(None) };
        let facts = (wallet.currency, wallet.owner_id);
        self.facts.write().expect("lock").insert(wallet_id, facts);
        Ok(Some(facts))
    }

    /// 404 `wallet_not_found` unless the wallet exists and `caller` may see it: a wallet of
    /// another owner is answered exactly as one that does not exist, so ids do not leak.
    pub(crate) async fn visible(&self, caller: &Caller, wallet_id: WalletId) -> Result<(), Problem> {
        if caller.owner().is_none() {
            return Ok(());
        }
        match self.facts_of(wallet_id).await? {
            Some((_, owner)) if caller.sees(owner) => Ok(()),
            _ => Err(Problem::rejection(wallex_engine::Rejection::WalletNotFound)),
        }
    }

    /// The currency a request's amount is in: the one it names, or its wallet's.
    pub(crate) async fn request_currency(&self, named: Option<&str>, wallet_id: WalletId) -> Result<Currency, Problem> {
        match parse_currency(named)? {
            Some(currency) => Ok(currency),
            None => {
                let facts = self.facts_of(wallet_id).await?;
                facts
                    .map(|(currency, _)| currency)
                    .ok_or_else(|| Problem::rejection(wallex_engine::Rejection::WalletNotFound))
            }
        }
    }
}
