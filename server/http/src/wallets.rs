//! Wallets: create, read (from the read model, or strongly from the write side), list, and move
//! money (credit, debit, transfer).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::value::RawValue;
use wallex_engine::{Amount, Command, CommandKind, Currency, OwnerId};
use wallex_pipeline::ports::Scope;

use crate::access::Caller;
use crate::extract::{
    Body, Params, PathId, command_id, parse_amount, parse_currency, parse_description, parse_memo, parse_wallet,
};
use crate::problem::{ProblemJson, store_problem};
use crate::reply::{Render, Requested, respond};
use crate::wire::{
    CreateWalletBody, MoneyBody, TransferBody, TransferJson, WalletJson, WalletOperationJson, WalletQuery,
};
use crate::{AppState, Problem, Queries, Shared};

#[utoipa::path(post, path = "/wallets", request_body = CreateWalletBody,
    responses((status = 201, description = "Created: the wallet, its transaction and its events", body = WalletOperationJson), (status = 409, description = "wallet_exists", body = ProblemJson),
        (status = 400, description = "Malformed", body = ProblemJson)))]
pub(crate) async fn create_wallet<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    headers: HeaderMap,
    Body(body): Body<CreateWalletBody>,
) -> Result<Response, Problem> {
    let id = command_id(&headers, state.require_idempotency_key, &caller)?;
    let wallet_id = parse_wallet("walletId", &body.wallet_id)?;
    let owner_id = OwnerId::parse(&body.owner_id).map_err(|error| Problem::field("ownerId", &error))?;
    if !caller.sees(owner_id) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this API key creates wallets of its own owner only: ownerId must be the key's",
        ));
    }
    let currency = parse_currency(body.currency.as_deref())?.unwrap_or(Currency::USD);
    let amount = |field, raw: Option<&RawValue>| match raw {
        Some(raw) if raw.get() != "null" => parse_amount(field, raw, currency, false),
        _ => Ok(Amount::ZERO),
    };
    let initial_balance = amount("initialBalance", body.initial_balance.as_deref())?;
    let overdraft_limit = amount("overdraftLimit", body.overdraft_limit.as_deref())?;
    // Money in a new wallet, or credit extended to it, enters the ledger: `mint`.
    if initial_balance != Amount::ZERO || overdraft_limit != Amount::ZERO {
        caller.require(Scope::Mint)?;
    }
    let memo = parse_memo(&headers, body.reference_id.as_deref(), body.metadata.as_ref())?;
    let kind = CommandKind::CreateWallet { wallet_id, owner_id, currency, initial_balance, overdraft_limit };
    let reply = state.commands.submit(Command { id, kind, memo }).await;
    Ok(respond(&state, reply, Render::Wallet, None).await)
}

#[utoipa::path(get, path = "/wallets/{id}", params(("id" = String, Path), ("consistency" = Option<String>, Query, description = "By default (and `strong`) the wallet after every write acknowledged before the request; `eventual` the read model alone, which may be behind")),
    responses((status = 200, description = "The wallet", body = WalletJson), (status = 404, description = "wallet_not_found", body = ProblemJson)))]
pub(crate) async fn get_wallet<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    PathId(id): PathId,
    Params(query): Params<WalletQuery>,
) -> Result<Json<WalletJson>, Problem> {
    let wallet_id = parse_wallet("walletId", &id)?;
    let not_found = || Problem::rejection(wallex_engine::Rejection::WalletNotFound);
    state.visible(&caller, wallet_id).await?;
    match query.consistency.as_deref() {
        // Every write acknowledged before this request: the read model, or the committed view
        // where the read model is behind. Neither waits for nor queues at the writer.
        None | Some("strong") => {
            let committed = state.committed_wallet(&wallet_id).await?.ok_or_else(not_found)?;
            Ok(Json(WalletJson::of(&committed)))
        }
        // The read model alone: the cheapest read, possibly behind the last acknowledged write.
        Some("eventual") => {
            let view = state.store.wallet(&wallet_id).await.map_err(store_problem)?.ok_or_else(not_found)?;
            Ok(Json(WalletJson::of(&view)))
        }
        Some(_) => Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_query", "consistency is `strong` or `eventual`")),
    }
}

#[utoipa::path(post, path = "/wallets/{id}/credit", request_body = MoneyBody, params(("id" = String, Path)),
    responses((status = 201, description = "Credited: the wallet after the credit, the transaction and its events", body = WalletOperationJson), (status = 422, description = "Refused", body = ProblemJson), (status = 404, description = "wallet_not_found", body = ProblemJson)))]
pub(crate) async fn credit<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
    Body(body): Body<MoneyBody>,
) -> Result<Response, Problem> {
    credit_or_debit(&state, &caller, &id, &headers, body, true).await
}

#[utoipa::path(post, path = "/wallets/{id}/debit", request_body = MoneyBody, params(("id" = String, Path)),
    responses((status = 201, description = "Debited: the wallet after the debit, the transaction and its events", body = WalletOperationJson), (status = 404, description = "wallet_not_found", body = ProblemJson), (status = 422, description = "insufficient_funds (with available, requested and currency) or another refusal", body = ProblemJson)))]
pub(crate) async fn debit<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
    Body(body): Body<MoneyBody>,
) -> Result<Response, Problem> {
    credit_or_debit(&state, &caller, &id, &headers, body, false).await
}

/// Credit and debit take the same body and differ only in the command they submit.
async fn credit_or_debit<S: Queries>(
    state: &Arc<AppState<S>>,
    caller: &Caller,
    id: &str,
    headers: &HeaderMap,
    body: MoneyBody,
    is_credit: bool,
) -> Result<Response, Problem> {
    let command_id = command_id(headers, state.require_idempotency_key, caller)?;
    let wallet_id = parse_wallet("walletId", id)?;
    state.visible(caller, wallet_id).await?;
    let description = parse_description(body.description.as_deref())?;
    let memo = parse_memo(headers, body.reference_id.as_deref(), body.metadata.as_ref())?;
    let currency = state.request_currency(body.currency.as_deref(), wallet_id).await?;
    let amount = parse_amount("amount", &body.amount, currency, true)?;
    let kind = if is_credit {
        CommandKind::Credit { wallet_id, currency, amount, description }
    } else {
        CommandKind::Debit { wallet_id, currency, amount, description }
    };
    let reply = state.commands.submit(Command { id: command_id, kind, memo }).await;
    Ok(respond(state, reply, Render::Wallet, (!is_credit).then_some(Requested { wallet_id, amount, currency })).await)
}

#[utoipa::path(post, path = "/wallets/{id}/transfer", request_body = TransferBody, params(("id" = String, Path)),
    responses((status = 201, description = "Transferred: both wallets after it, the transaction and its events", body = TransferJson), (status = 404, description = "wallet_not_found", body = ProblemJson), (status = 422, description = "insufficient_funds (with available, requested and currency) or another refusal", body = ProblemJson)))]
pub(crate) async fn transfer<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
    Body(body): Body<TransferBody>,
) -> Result<Response, Problem> {
    let command_id = command_id(&headers, state.require_idempotency_key, &caller)?;
    let source = parse_wallet("walletId", &id)?;
    // Out of the key's own wallets only; to any wallet.
    state.visible(&caller, source).await?;
    let destination = parse_wallet("toWalletId", &body.to_wallet_id)?;
    let description = parse_description(body.description.as_deref())?;
    let memo = parse_memo(&headers, body.reference_id.as_deref(), body.metadata.as_ref())?;
    let currency = state.request_currency(body.currency.as_deref(), source).await?;
    let amount = parse_amount("amount", &body.amount, currency, true)?;
    let kind = CommandKind::Transfer { source, destination, currency, amount, description };
    let reply = state.commands.submit(Command { id: command_id, kind, memo }).await;
    Ok(respond(&state, reply, Render::Transfer, Some(Requested { wallet_id: source, amount, currency })).await)
}
