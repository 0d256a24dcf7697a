//! `POST /batch`: up to `http.max_batch_operations` operations of any kind in one request.
//!
//! - `"atomic": false` (the default): the operations are decided in order, each on its own, in
//!   one group commit; each gets the result its single route would have given (status, and the
//!   body or the problem). One that does not parse or may not be done gets its own 4xx; the others
//!   go ahead.
//! - `"atomic": true`: one command, [`CommandKind::Atomic`], decided as one transaction: every
//!   operation takes effect, under one transaction id, or none does. The first refused operation
//!   carries its own problem and every other one `424 linked_operation_failed` (TigerBeetle's
//!   linked events); the answer's status is the refused operation's.
//!
//! Idempotency: an operation's `idempotencyKey` names the same command as that key on its single
//! route. Without one, an operation of a request with an `Idempotency-Key` gets an id derived from
//! the request's key and its index, so resending the whole request answers every operation as the
//! first time. An atomic batch is one command: the request's `Idempotency-Key` names it, or,
//! without one, its operations' keys (all of them, or none) do.
//!
//! The request's shape (its JSON, the fields each operation type takes) is checked first and a
//! malformed request is refused whole (400); the values (ids, amounts, wallets, scopes) are checked
//! per operation.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use wallex_engine::{
    Amount, Command, CommandId, CommandKind, Currency, Event, HoldId, Memo, OwnerId, TransactionId, WalletId,
};
use wallex_pipeline::Reply;
use wallex_pipeline::ports::Scope;

use crate::access::Caller;
use crate::extract::{
    Body, IdSource, header_key, invalid_key, is_valid_key, key_command_id, key_required, parse_amount, parse_currency,
    parse_description, parse_expiry, parse_hold, parse_memo, parse_wallet, random_command_id,
};
use crate::problem::ProblemJson;
use crate::reply::{Answer, Render, Rendered, Requested, answer, refusal, rendered, undecided};
use crate::{AppState, Problem, Queries, Shared};

/// The most operations a batch may hold: TigerBeetle's batch, and under the writer's group
/// commit limit.
pub const MAX_BATCH_OPERATIONS: usize = wallex_engine::MAX_ATOMIC_LEGS;

/// The default of `http.max_batch_operations`.
pub const DEFAULT_BATCH_OPERATIONS: usize = 1_000;

/// The largest batch body: room for the largest batch of ordinary operations.
pub const MAX_BATCH_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A batch request.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct BatchBody {
    /// All operations or none, as one transaction (default `false`: each on its own).
    #[serde(default)]
    pub(crate) atomic: bool,
    /// 1 to `http.max_batch_operations` (default 1,000, at most 8,189) operations.
    pub(crate) operations: Vec<OperationBody>,
    /// Atomic batches only: the transaction's reference, unique among the transactions of every
    /// wallet it touches.
    pub(crate) reference_id: Option<String>,
    /// Atomic batches only: the transaction's metadata.
    pub(crate) metadata: Option<BTreeMap<String, String>>,
}

/// One operation: `type` says which, and which of the other fields it takes (exactly those its
/// single route takes, with the path's id as `walletId` or `holdId`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct OperationBody {
    #[serde(rename = "type")]
    pub(crate) kind: OperationType,
    /// Names the operation's command as `Idempotency-Key` names a single route's (independent
    /// batches only: an atomic batch is one command, named by the request's `Idempotency-Key`).
    pub(crate) idempotency_key: Option<String>,
    /// The wallet created, credited, debited, transferred from, or held on.
    pub(crate) wallet_id: Option<String>,
    pub(crate) owner_id: Option<String>,
    pub(crate) currency: Option<String>,
    #[schema(value_type = Option<String>, example = "100.00")]
    pub(crate) initial_balance: Option<Box<RawValue>>,
    #[schema(value_type = Option<String>, example = "0")]
    pub(crate) overdraft_limit: Option<Box<RawValue>>,
    #[schema(value_type = Option<String>, example = "25.00")]
    pub(crate) amount: Option<Box<RawValue>>,
    pub(crate) description: Option<String>,
    pub(crate) to_wallet_id: Option<String>,
    pub(crate) hold_id: Option<String>,
    pub(crate) expires_at: Option<String>,
    pub(crate) reference_id: Option<String>,
    pub(crate) metadata: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OperationType {
    CreateWallet,
    Credit,
    Debit,
    Transfer,
    PlaceHold,
    CaptureHold,
    VoidHold,
}

impl OperationType {
    pub(crate) const ALL: [OperationType; 7] = [
        OperationType::CreateWallet,
        OperationType::Credit,
        OperationType::Debit,
        OperationType::Transfer,
        OperationType::PlaceHold,
        OperationType::CaptureHold,
        OperationType::VoidHold,
    ];

    pub(crate) const fn name(self) -> &'static str {
        match self {
            OperationType::CreateWallet => "create_wallet",
            OperationType::Credit => "credit",
            OperationType::Debit => "debit",
            OperationType::Transfer => "transfer",
            OperationType::PlaceHold => "place_hold",
            OperationType::CaptureHold => "capture_hold",
            OperationType::VoidHold => "void_hold",
        }
    }

    /// The fields this type requires, and the ones it may have besides (`type` and
    /// `idempotencyKey` go with every type).
    pub(crate) const fn fields(self) -> (&'static [&'static str], &'static [&'static str]) {
        const MEMO: [&str; 2] = ["referenceId", "metadata"];
        match self {
            OperationType::CreateWallet => {
                (&["walletId", "ownerId"], &["currency", "initialBalance", "overdraftLimit", MEMO[0], MEMO[1]])
            }
            OperationType::Credit | OperationType::Debit => {
                (&["walletId", "amount"], &["currency", "description", MEMO[0], MEMO[1]])
            }
            OperationType::Transfer => {
                (&["walletId", "toWalletId", "amount"], &["currency", "description", MEMO[0], MEMO[1]])
            }
            OperationType::PlaceHold => {
                (&["walletId", "holdId", "amount"], &["currency", "expiresAt", "description", MEMO[0], MEMO[1]])
            }
            OperationType::CaptureHold => (&["holdId"], &["amount", "toWalletId", "description", MEMO[0], MEMO[1]]),
            OperationType::VoidHold => (&["holdId"], &[]),
        }
    }
}

impl OperationBody {
    /// The fields present (not absent, not `null`), by their JSON names.
    fn present(&self) -> Vec<&'static str> {
        let raw = |value: &Option<Box<RawValue>>| value.as_deref().is_some_and(|raw| raw.get() != "null");
        [
            ("walletId", self.wallet_id.is_some()),
            ("ownerId", self.owner_id.is_some()),
            ("currency", self.currency.is_some()),
            ("initialBalance", raw(&self.initial_balance)),
            ("overdraftLimit", raw(&self.overdraft_limit)),
            ("amount", raw(&self.amount)),
            ("description", self.description.is_some()),
            ("toWalletId", self.to_wallet_id.is_some()),
            ("holdId", self.hold_id.is_some()),
            ("expiresAt", self.expires_at.is_some()),
            ("referenceId", self.reference_id.is_some()),
            ("metadata", self.metadata.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect()
    }
}

/// A batch's answer: one result per operation, in order.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BatchJson {
    pub(crate) atomic: bool,
    /// Atomic batches: the transaction every operation took effect in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) transaction_id: Option<String>,
    pub(crate) results: Vec<ResultJson>,
}

/// One operation's result: what its single route would have answered.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResultJson {
    /// The HTTP status the single route would have answered (201 when it took effect).
    pub(crate) status: u16,
    /// The problem's code when it did not take effect; `linked_operation_failed` for the other
    /// operations of a refused atomic batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) code: Option<&'static str>,
    /// The command was decided before under this id: this is the original answer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) replayed: bool,
    /// The single route's body: the wallet(s) and transaction, or the problem.
    #[schema(value_type = Object)]
    pub(crate) body: ResultBody,
}

/// A result's body, serialized as it is: a thousand results went through a `serde_json::Value`
/// tree each (built, written, dropped: 12 % of the server's CPU in batches of a thousand).
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum ResultBody {
    Rendered(Rendered),
    Problem(serde_json::Value),
}

impl ResultJson {
    fn of(answer: Answer) -> ResultJson {
        let status = answer.status().as_u16();
        match answer.result {
            Ok(rendered) => {
                ResultJson { status, code: None, replayed: answer.replayed, body: ResultBody::Rendered(rendered) }
            }
            Err(problem) => ResultJson::problem(&problem, answer.replayed),
        }
    }

    fn problem(problem: &Problem, replayed: bool) -> ResultJson {
        ResultJson {
            status: problem.status.as_u16(),
            code: Some(problem.code),
            replayed,
            body: ResultBody::Problem(problem.body_json()),
        }
    }

    fn linked() -> ResultJson {
        ResultJson::problem(&linked_operation_failed(), false)
    }
}

/// What every operation of a refused atomic batch but the refused one answers.
fn linked_operation_failed() -> Problem {
    Problem::new(
        StatusCode::FAILED_DEPENDENCY,
        "linked_operation_failed",
        "not applied: another operation of this atomic batch was refused, so none took effect",
    )
}

#[utoipa::path(post, path = "/batch", request_body = BatchBody,
    responses(
        (status = 200, description = "A non-atomic batch: every operation's result, in order", body = BatchJson),
        (status = 201, description = "An atomic batch took effect: one transaction, every operation's result", body = BatchJson),
        (status = 400, description = "Malformed: the JSON, an operation's fields, or its keys", body = ProblemJson),
        (status = 404, description = "An atomic batch whose refused operation names a wallet or hold that does not exist; `results` holds every operation's result", body = ProblemJson),
        (status = 409, description = "An atomic batch refused for a conflict (e.g. `reference_exists`, `hold_not_active`), or its key is in flight; `results` as above", body = ProblemJson),
        (status = 422, description = "An atomic batch refused (e.g. `insufficient_funds`; the other operations' results are 424 `linked_operation_failed`), too many operations, or a repeated idempotencyKey; `results` as above", body = ProblemJson)))]
pub(crate) async fn batch<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    headers: HeaderMap,
    Body(body): Body<BatchBody>,
) -> Result<Response, Problem> {
    let count = body.operations.len();
    if count == 0 || count > state.max_batch_operations {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_batch",
            format!("a batch has 1 to {} operations, not {count}", state.max_batch_operations),
        ));
    }
    check_shape(&body)?;
    for (index, operation) in body.operations.iter().enumerate() {
        well_formed(&headers, operation).map_err(|mut problem| {
            problem.detail = format!("operations[{index}]: {}", problem.detail);
            problem
        })?;
    }
    let request_key = header_key(&headers)?;
    if body.atomic {
        atomic(&state, &caller, &headers, request_key, body).await
    } else {
        independent(&state, &caller, &headers, request_key, body).await
    }
}

/// The request is well formed: each operation has the fields its type requires and no other,
/// its key (if any) is valid, and memos sit where the mode wants them.
fn check_shape(body: &BatchBody) -> Result<(), Problem> {
    let malformed = |index: usize, detail: String| {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_body", format!("operations[{index}]: {detail}"))
    };
    if !body.atomic && (body.reference_id.is_some() || body.metadata.is_some()) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "referenceId and metadata belong to each operation of a non-atomic batch, not to the batch",
        ));
    }
    let mut keys = std::collections::BTreeSet::new();
    for (index, operation) in body.operations.iter().enumerate() {
        let (required, optional) = operation.kind.fields();
        let present = operation.present();
        if let Some(missing) = required.iter().find(|field| !present.contains(field)) {
            return Err(malformed(index, format!("a {} needs {missing}", operation.kind.name())));
        }
        if let Some(extra) = present.iter().find(|field| !required.contains(field) && !optional.contains(field)) {
            return Err(malformed(index, format!("a {} takes no {extra}", operation.kind.name())));
        }
        if body.atomic && (operation.reference_id.is_some() || operation.metadata.is_some()) {
            return Err(malformed(
                index,
                "in an atomic batch, referenceId and metadata belong to the batch (one transaction)".to_owned(),
            ));
        }
        if body.atomic && operation.idempotency_key.is_some() {
            return Err(malformed(
                index,
                "an atomic batch is one transaction, named by the request's Idempotency-Key: its operations take no idempotencyKey"
                    .to_owned(),
            ));
        }
        if let Some(key) = &operation.idempotency_key {
            if !is_valid_key(key) {
                return Err(invalid_key(&format!("operations[{index}].idempotencyKey")));
            }
            if !keys.insert(key.as_str()) {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "duplicate_idempotency_key",
                    format!("operations[{index}]: another operation of this batch has the same idempotencyKey"),
                ));
            }
        }
    }
    Ok(())
}

/// What the earlier operations of this batch create, so later ones can name them: the wallets
/// (currency, owner) and holds (currency, wallet).
#[derive(Default)]
struct Earlier {
    wallets: BTreeMap<WalletId, (Currency, OwnerId)>,
    holds: BTreeMap<HoldId, Currency>,
}

/// An operation ready to submit.
struct Prepared {
    kind: CommandKind,
    memo: Memo,
    render: Render,
    requested: Option<Requested>,
}

impl Prepared {
    /// How many events the operation's command emits when it is accepted (a group's events are
    /// its legs', in order).
    fn events(&self) -> usize {
        match &self.kind {
            CommandKind::Transfer { .. } => 2,
            CommandKind::CaptureHold { destination, .. } => 1 + usize::from(destination.is_some()),
            _ => 1,
        }
    }
}

/// Whether every field of an operation is well formed, apart from what depends on a wallet (an
/// amount's precision or size in its currency): a malformed operation (400, or an amount too large
/// for any currency) refuses the request whole, before anything is looked up or submitted, in
/// either mode.
fn well_formed(headers: &HeaderMap, operation: &OperationBody) -> Result<(), Problem> {
    parse_description(operation.description.as_deref())?;
    parse_memo(headers, operation.reference_id.as_deref(), operation.metadata.as_ref())?;
    for (field, value) in [("walletId", &operation.wallet_id), ("toWalletId", &operation.to_wallet_id)] {
        if let Some(text) = value {
            parse_wallet(field, text)?;
        }
    }
    if let Some(text) = &operation.owner_id {
        OwnerId::parse(text).map_err(|error| Problem::field("ownerId", &error))?;
    }
    if let Some(text) = &operation.hold_id {
        parse_hold("holdId", text)?;
    }
    parse_currency(operation.currency.as_deref())?;
    parse_expiry(operation.expires_at.as_deref())?;
    let amounts = [
        ("amount", &operation.amount, true),
        ("initialBalance", &operation.initial_balance, false),
        ("overdraftLimit", &operation.overdraft_limit, false),
    ];
    for (field, raw, positive) in amounts {
        let Some(raw) = raw.as_deref().filter(|raw| raw.get() != "null") else { continue };
        // The grammar is every currency's, and an amount too large without decimals is too large
        // in every currency; only the precision depends on the wallet's.
        match parse_amount(field, raw, Currency::JPY, positive) {
            Err(problem) if problem.code != "amount_precision" => return Err(problem),
            _ => {}
        }
    }
    Ok(())
}

/// Parses and checks one operation (ids, amounts, currency, scope, the caller's visibility), as
/// its single route does before submitting.
async fn prepare<S: Queries>(
    state: &AppState<S>,
    caller: &Caller,
    headers: &HeaderMap,
    operation: &OperationBody,
    earlier: &mut Earlier,
) -> Result<Prepared, Problem> {
    let text = |value: &Option<String>| value.as_deref().unwrap_or_default().to_owned();
    let description = parse_description(operation.description.as_deref())?;
    let memo = parse_memo(headers, operation.reference_id.as_deref(), operation.metadata.as_ref())?;
    // A wallet of this batch, or one that exists and the caller may see.
    let wallet = |field: &'static str, value: &Option<String>| parse_wallet(field, &text(value));
    match operation.kind {
        OperationType::CreateWallet => {
            let wallet_id = wallet("walletId", &operation.wallet_id)?;
            let owner_id =
                OwnerId::parse(&text(&operation.owner_id)).map_err(|error| Problem::field("ownerId", &error))?;
            if !caller.sees(owner_id) {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this API key creates wallets of its own owner only: ownerId must be the key's",
                ));
            }
            let currency = parse_currency(operation.currency.as_deref())?.unwrap_or(Currency::USD);
            let amount = |field, raw: &Option<Box<RawValue>>| match raw.as_deref() {
                Some(raw) if raw.get() != "null" => parse_amount(field, raw, currency, false),
                _ => Ok(Amount::ZERO),
            };
            let initial_balance = amount("initialBalance", &operation.initial_balance)?;
            let overdraft_limit = amount("overdraftLimit", &operation.overdraft_limit)?;
            if initial_balance != Amount::ZERO || overdraft_limit != Amount::ZERO {
                caller.require(Scope::Mint)?;
            }
            earlier.wallets.entry(wallet_id).or_insert((currency, owner_id));
            let kind = CommandKind::CreateWallet { wallet_id, owner_id, currency, initial_balance, overdraft_limit };
            Ok(Prepared { kind, memo, render: Render::Wallet, requested: None })
        }
        OperationType::Credit | OperationType::Debit => {
            let is_credit = operation.kind == OperationType::Credit;
            if is_credit {
                caller.require(Scope::Mint)?;
            }
            let wallet_id = wallet("walletId", &operation.wallet_id)?;
            let currency = currency_of(state, caller, earlier, operation.currency.as_deref(), wallet_id).await?;
            let amount = parse_amount("amount", operation.amount.as_deref().expect("checked"), currency, true)?;
            let kind = if is_credit {
                CommandKind::Credit { wallet_id, currency, amount, description }
            } else {
                CommandKind::Debit { wallet_id, currency, amount, description }
            };
            let requested = (!is_credit).then_some(Requested { wallet_id, amount, currency });
            Ok(Prepared { kind, memo, render: Render::Wallet, requested })
        }
        OperationType::Transfer => {
            let source = wallet("walletId", &operation.wallet_id)?;
            let currency = currency_of(state, caller, earlier, operation.currency.as_deref(), source).await?;
            let destination = wallet("toWalletId", &operation.to_wallet_id)?;
            let amount = parse_amount("amount", operation.amount.as_deref().expect("checked"), currency, true)?;
            let kind = CommandKind::Transfer { source, destination, currency, amount, description };
            let requested = Some(Requested { wallet_id: source, amount, currency });
            Ok(Prepared { kind, memo, render: Render::Transfer, requested })
        }
        OperationType::PlaceHold => {
            let wallet_id = wallet("walletId", &operation.wallet_id)?;
            let currency = currency_of(state, caller, earlier, operation.currency.as_deref(), wallet_id).await?;
            // Required in a batch (`fields`), so later operations and retries can name it.
            let hold_id = parse_hold("holdId", &text(&operation.hold_id))?;
            let expires_at = parse_expiry(operation.expires_at.as_deref())?;
            let amount = parse_amount("amount", operation.amount.as_deref().expect("checked"), currency, true)?;
            earlier.holds.entry(hold_id).or_insert(currency);
            let kind = CommandKind::PlaceHold { hold_id, wallet_id, currency, amount, expires_at, description };
            let requested = Some(Requested { wallet_id, amount, currency });
            Ok(Prepared { kind, memo, render: Render::Transaction(Some(hold_id)), requested })
        }
        OperationType::CaptureHold | OperationType::VoidHold => {
            let hold_id = parse_hold("holdId", &text(&operation.hold_id))?;
            // A hold of this batch is on a wallet the caller may see (its place_hold checked).
            let known = earlier.holds.get(&hold_id).copied();
            let needs_hold = known.is_none()
                && (caller.owner().is_some() || operation.amount.as_deref().is_some_and(|raw| raw.get() != "null"));
            let hold = match needs_hold {
                true => Some(crate::holds::visible_hold(state, caller, hold_id).await?),
                false => None,
            };
            if operation.kind == OperationType::VoidHold {
                let kind = CommandKind::VoidHold { hold_id };
                return Ok(Prepared { kind, memo, render: Render::Transaction(None), requested: None });
            }
            let destination =
                operation.to_wallet_id.as_deref().map(|text| parse_wallet("toWalletId", text)).transpose()?;
            let amount = match operation.amount.as_deref() {
                Some(raw) if raw.get() != "null" => {
                    let currency = known.or(hold.map(|hold| hold.currency)).expect("looked up above");
                    Some(parse_amount("amount", raw, currency, true)?)
                }
                _ => None,
            };
            let kind = CommandKind::CaptureHold { hold_id, amount, destination, description };
            Ok(Prepared { kind, memo, render: Render::Transaction(None), requested: None })
        }
    }
}

/// The currency of an operation's amount: the one it names, or its wallet's (a wallet this batch
/// creates, or one the caller may see).
async fn currency_of<S: Queries>(
    state: &AppState<S>,
    caller: &Caller,
    earlier: &Earlier,
    named: Option<&str>,
    wallet_id: WalletId,
) -> Result<Currency, Problem> {
    if let Some((currency, _)) = earlier.wallets.get(&wallet_id) {
        return Ok(parse_currency(named)?.unwrap_or(*currency));
    }
    state.visible(caller, wallet_id).await?;
    state.request_currency(named, wallet_id).await
}

/// A non-atomic batch: every operation that parses is submitted, in order, as its own command;
/// every operation gets its own result.
async fn independent<S: Queries>(
    state: &AppState<S>,
    caller: &Caller,
    headers: &HeaderMap,
    request_key: Option<&str>,
    body: BatchBody,
) -> Result<Response, Problem> {
    if state.require_idempotency_key
        && request_key.is_none()
        && body.operations.iter().any(|operation| operation.idempotency_key.is_none())
    {
        return Err(key_required());
    }
    let mut earlier = Earlier::default();
    let mut prepared: Vec<Result<Prepared, Problem>> = Vec::with_capacity(body.operations.len());
    let mut commands = Vec::with_capacity(body.operations.len());
    for (index, operation) in body.operations.iter().enumerate() {
        let result = prepare(state, caller, headers, operation, &mut earlier).await;
        if let Ok(ready) = &result {
            let id = match (&operation.idempotency_key, request_key) {
                (Some(key), _) => key_command_id(caller, IdSource::Key(key)),
                (None, Some(key)) => key_command_id(caller, IdSource::BatchItem(key, index)),
                (None, None) => random_command_id(),
            };
            commands.push(Command { id, kind: ready.kind.clone(), memo: ready.memo.clone() });
        }
        prepared.push(result);
    }
    let mut replies = state.commands.submit_all(commands).await.into_iter();
    let mut results = Vec::with_capacity(prepared.len());
    let mut position: Option<TransactionId> = None;
    for prepared in prepared {
        let answer = match prepared {
            Err(problem) => Answer::problem(problem),
            Ok(ready) => {
                let reply = replies.next().unwrap_or_else(|| Reply::Unavailable("no reply".to_owned()));
                answer(state, reply, ready.render, ready.requested).await
            }
        };
        position = position.max(answer.position);
        results.push(ResultJson::of(answer));
    }
    let mut response =
        (StatusCode::OK, Json(BatchJson { atomic: false, transaction_id: None, results })).into_response();
    if let Some(position) = position {
        response.headers_mut().insert(crate::POSITION, HeaderValue::from(position.0));
    }
    Ok(response)
}

/// An atomic batch: one command whose legs are the operations.
async fn atomic<S: Queries>(
    state: &AppState<S>,
    caller: &Caller,
    headers: &HeaderMap,
    request_key: Option<&str>,
    body: BatchBody,
) -> Result<Response, Problem> {
    let id: CommandId = match request_key {
        Some(key) => key_command_id(caller, IdSource::Key(key)),
        None if state.require_idempotency_key => return Err(key_required()),
        None => random_command_id(),
    };
    let memo = parse_memo(headers, body.reference_id.as_deref(), body.metadata.as_ref())?;
    let count = body.operations.len();
    let mut earlier = Earlier::default();
    let mut legs = Vec::with_capacity(count);
    for (index, operation) in body.operations.iter().enumerate() {
        match prepare(state, caller, headers, operation, &mut earlier).await {
            Ok(ready) => legs.push(ready),
            // Nothing was submitted: this operation's problem, and every other one linked.
            Err(problem) => return Ok(refused(problem, index, count, None)),
        }
    }
    let kind = CommandKind::Atomic(legs.iter().map(|leg| leg.kind.clone()).collect());
    let reply = state.commands.submit(Command { id, kind, memo }).await;
    let Reply::Decided { record, events, replayed } = reply else {
        return Err(undecided(reply));
    };
    let transaction = record.transaction_id;
    let mut response = match record.result {
        Ok(()) => {
            let mut results = Vec::with_capacity(count);
            let mut rest: &[Event] = &events;
            for leg in &legs {
                let (own, after) = rest.split_at(leg.events().min(rest.len()));
                rest = after;
                let body = ResultBody::Rendered(rendered(state, own, leg.render).await);
                results.push(ResultJson { status: StatusCode::CREATED.as_u16(), code: None, replayed, body });
            }
            debug_assert!(rest.is_empty(), "every event of the group belongs to a leg");
            let json = BatchJson { atomic: true, transaction_id: Some(transaction.to_string()), results };
            (StatusCode::CREATED, Json(json)).into_response()
        }
        Err(rejection) => {
            let leg = record.refused_leg.map(usize::from);
            let requested = leg.and_then(|leg| legs.get(leg)).and_then(|leg| leg.requested);
            let mut problem = refusal(state, rejection, transaction, requested).await;
            // The journal shows the wallet before the group, not what the earlier operations
            // left it with when the refused one was decided: no `available` that could mislead.
            problem.members.remove("available");
            match leg {
                Some(leg) if leg < count => refused(problem, leg, count, Some(replayed)),
                // Refused as a whole (`reference_exists`): every operation is linked to it.
                _ => refused_whole(problem, count),
            }
        }
    };
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response.headers_mut().insert(crate::POSITION, HeaderValue::from(transaction.0));
    Ok(response)
}

/// A refused atomic batch: the problem of operation `index` as the answer, with every
/// operation's result in `results`.
fn refused(problem: Problem, index: usize, count: usize, replayed: Option<bool>) -> Response {
    let results: Vec<ResultJson> = (0..count)
        .map(|other| match other == index {
            true => ResultJson::problem(&problem, replayed.unwrap_or(false)),
            false => ResultJson::linked(),
        })
        .collect();
    with_results(problem, results)
}

/// An atomic batch refused as a whole: the problem, and every operation linked to it.
fn refused_whole(problem: Problem, count: usize) -> Response {
    let results = (0..count).map(|_| ResultJson::linked()).collect();
    with_results(problem, results)
}

fn with_results(mut problem: Problem, results: Vec<ResultJson>) -> Response {
    problem.members.insert("results", serde_json::to_value(results).expect("results serialize"));
    problem.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_type_names_its_fields_once_and_only_fields_the_body_has() {
        let known = [
            "walletId",
            "ownerId",
            "currency",
            "initialBalance",
            "overdraftLimit",
            "amount",
            "description",
            "toWalletId",
            "holdId",
            "expiresAt",
            "referenceId",
            "metadata",
        ];
        for kind in OperationType::ALL {
            let (required, optional) = kind.fields();
            let mut all: Vec<_> = required.iter().chain(optional).collect();
            assert!(all.iter().all(|field| known.contains(field)), "{kind:?}");
            all.sort();
            all.dedup();
            assert_eq!(all.len(), required.len() + optional.len(), "{kind:?} names a field twice");
        }
    }
}
