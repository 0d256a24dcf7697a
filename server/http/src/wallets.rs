//! Wallets: create, read (from the read model, or strongly from the write side), list, and move
//! money (credit, debit, transfer).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use wallex_engine::{Amount, Command, CommandKind, Currency, OwnerId};
use wallex_pipeline::ports::WalletView;

use crate::extract::{
    Body, Params, PathId, command_id, page_size, parse_amount, parse_currency, parse_description, parse_wallet,
};
use crate::problem::{ProblemJson, store_problem};
use crate::reply::respond;
use crate::wire::{
    CreateWalletBody, ListQuery, MoneyBody, Page, TransactionJson, TransferBody, WalletJson, WalletQuery,
};
use crate::{AppState, Problem, Queries, Shared};

#[utoipa::path(post, path = "/wallets", request_body = CreateWalletBody,
    responses((status = 201, description = "Created", body = WalletJson), (status = 409, description = "wallet_exists", body = ProblemJson),
        (status = 400, description = "Malformed", body = ProblemJson)))]
pub(crate) async fn create_wallet<S: Queries>(
    State(state): Shared<S>,
    headers: HeaderMap,
    Body(body): Body<CreateWalletBody>,
) -> Result<Response, Problem> {
    let id = command_id(&headers, state.require_idempotency_key)?;
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

#[utoipa::path(get, path = "/wallets", params(("ownerId" = Option<String>, Query), ("cursor" = Option<String>, Query), ("limit" = Option<usize>, Query), ("after" = Option<i64>, Query, minimum = 0, description = "A write's Wallex-Position: the list includes every write committed through it (waiting, bounded, for the read side)")),
    responses((status = 200, description = "A page of wallets", body = Page<WalletJson>,
        headers(("wallex-behind" = u64, description = "Present when the bounded wait ran out: how many wallets the list may show before that position")))))]
pub(crate) async fn list_wallets<S: Queries>(
    State(state): Shared<S>,
    Params(query): Params<ListQuery>,
) -> Result<Response, Problem> {
    let limit = page_size(query.limit)?;
    let mut behind = 0;
    if let Some(position) = query.after {
        let position = wallex_engine::TransactionId(position);
        let deadline = tokio::time::Instant::now() + state.limits.read_wait;
        loop {
            behind = state.stats.view.pending_through(position);
            if behind == 0 || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let owner = query.owner_id.as_deref().map(OwnerId::parse).transpose().map_err(|e| Problem::field("ownerId", &e))?;
    let after = query.cursor.as_deref().map(|text| parse_wallet("cursor", text)).transpose()?;
    let views = state.store.wallets(owner.as_ref(), after.as_ref(), limit).await.map_err(store_problem)?;
    let items = views.iter().map(WalletJson::of).collect();
    let mut response = Json(Page::of(&views, limit, |view| view.wallet_id.to_string(), items)).into_response();
    if behind > 0 {
        response.headers_mut().insert(crate::ledger::BEHIND, axum::http::HeaderValue::from(behind as u64));
    }
    Ok(response)
}

#[utoipa::path(get, path = "/wallets/{id}", params(("id" = String, Path), ("consistency" = Option<String>, Query, description = "By default (and `strong`) the wallet after every write acknowledged before the request; `eventual` the read model alone, which may be behind")),
    responses((status = 200, description = "The wallet", body = WalletJson), (status = 404, description = "wallet_not_found", body = ProblemJson)))]
pub(crate) async fn get_wallet<S: Queries>(
    State(state): Shared<S>,
    PathId(id): PathId,
    Params(query): Params<WalletQuery>,
) -> Result<Json<WalletJson>, Problem> {
    let wallet_id = parse_wallet("walletId", &id)?;
    let not_found = || Problem::rejection(wallex_engine::Rejection::WalletNotFound);
    match query.consistency.as_deref() {
        // Every write acknowledged before this request: the read model, or the committed view
        // where the read model is behind. Neither waits for nor queues at the writer.
        None | Some("strong") => {
            // A wallet in the view is there at its newest acknowledged version (the read model
            // may at most hold a version not acknowledged yet): no store read needed.
            if let Some(committed) = state.stats.view.wallet(&wallet_id) {
                return Ok(Json(WalletJson::of(&committed)));
            }
            // Not in the view: the read model has every acknowledged write of it.
            let projected = state.store.wallet(&wallet_id).await.map_err(store_problem)?.ok_or_else(not_found)?;
            Ok(Json(WalletJson::of(&projected)))
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
    responses((status = 200, description = "Credited", body = TransactionJson), (status = 404, description = "wallet_not_found", body = ProblemJson)))]
pub(crate) async fn credit<S: Queries>(
    State(state): Shared<S>,
    PathId(id): PathId,
    headers: HeaderMap,
    Body(body): Body<MoneyBody>,
) -> Result<Response, Problem> {
    credit_or_debit(&state, &id, &headers, body, true).await
}

#[utoipa::path(post, path = "/wallets/{id}/debit", request_body = MoneyBody, params(("id" = String, Path)),
    responses((status = 200, description = "Debited", body = TransactionJson), (status = 422, description = "insufficient_funds", body = ProblemJson)))]
pub(crate) async fn debit<S: Queries>(
    State(state): Shared<S>,
    PathId(id): PathId,
    headers: HeaderMap,
    Body(body): Body<MoneyBody>,
) -> Result<Response, Problem> {
    credit_or_debit(&state, &id, &headers, body, false).await
}

/// Credit and debit take the same body and differ only in the command they submit.
async fn credit_or_debit<S: Queries>(
    state: &Arc<AppState<S>>,
    id: &str,
    headers: &HeaderMap,
    body: MoneyBody,
    is_credit: bool,
) -> Result<Response, Problem> {
    let command_id = command_id(headers, state.require_idempotency_key)?;
    let wallet_id = parse_wallet("walletId", id)?;
    let description = parse_description(body.description.as_deref())?;
    let currency = state.request_currency(body.currency.as_deref(), wallet_id).await?;
    let amount = parse_amount("amount", &body.amount, currency, true)?;
    let kind = if is_credit {
        CommandKind::Credit { wallet_id, currency, amount, description }
    } else {
        CommandKind::Debit { wallet_id, currency, amount, description }
    };
    Ok(respond(state.commands.submit(Command { id: command_id, kind }).await, false, TransactionJson::value))
}

#[utoipa::path(post, path = "/wallets/{id}/transfer", request_body = TransferBody, params(("id" = String, Path)),
    responses((status = 200, description = "Transferred", body = TransactionJson), (status = 422, description = "Refused", body = ProblemJson)))]
pub(crate) async fn transfer<S: Queries>(
    State(state): Shared<S>,
    PathId(id): PathId,
    headers: HeaderMap,
    Body(body): Body<TransferBody>,
) -> Result<Response, Problem> {
    let command_id = command_id(&headers, state.require_idempotency_key)?;
    let source = parse_wallet("walletId", &id)?;
    let destination = parse_wallet("toWalletId", &body.to_wallet_id)?;
    let description = parse_description(body.description.as_deref())?;
    let currency = state.request_currency(body.currency.as_deref(), source).await?;
    let amount = parse_amount("amount", &body.amount, currency, true)?;
    let kind = CommandKind::Transfer { source, destination, currency, amount, description };
    Ok(respond(state.commands.submit(Command { id: command_id, kind }).await, false, TransactionJson::value))
}
