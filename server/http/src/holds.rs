//! Holds: place one on a wallet, read it, capture it (in full or in part, optionally to another
//! wallet) or void it. Holds are read from the write side, which alone knows their status.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use wallex_engine::{Command, CommandKind, Hold, HoldId};

use crate::access::Caller;
use crate::extract::{
    Body, OptionalBody, PathId, command_id, parse_amount, parse_description, parse_expiry, parse_hold, parse_memo,
    parse_wallet,
};
use crate::problem::{ProblemJson, unavailable};
use crate::reply::{Render, Requested, respond};
use crate::wire::{CaptureBody, HoldBody, HoldJson, TransactionJson};
use crate::{AppState, Problem, Queries, Shared};

#[utoipa::path(post, path = "/wallets/{id}/holds", request_body = HoldBody, params(("id" = String, Path)),
    responses((status = 201, description = "Hold placed", body = TransactionJson), (status = 409, description = "hold_exists", body = ProblemJson),
        (status = 422, description = "Refused", body = ProblemJson)))]
pub(crate) async fn place_hold<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
    Body(body): Body<HoldBody>,
) -> Result<Response, Problem> {
    let command_id = command_id(&headers, state.require_idempotency_key, &caller)?;
    let wallet_id = parse_wallet("walletId", &id)?;
    state.visible(&caller, wallet_id).await?;
    // Without a client hold id, derive one from the command id: a retry names the same hold.
    let hold_id = match body.hold_id.as_deref() {
        Some(text) => parse_hold("holdId", text)?,
        None => HoldId::parse(&format!("hold-{command_id}")).expect("hex ids are valid"),
    };
    let expires_at = parse_expiry(body.expires_at.as_deref())?;
    let description = parse_description(body.description.as_deref())?;
    let memo = parse_memo(&headers, body.reference_id.as_deref(), body.metadata.as_ref())?;
    let currency = state.request_currency(body.currency.as_deref(), wallet_id).await?;
    let amount = parse_amount("amount", &body.amount, currency, true)?;
    let kind = CommandKind::PlaceHold { hold_id, wallet_id, currency, amount, expires_at, description };
    let reply = state.commands.submit(Command { id: command_id, kind, memo }).await;
    Ok(respond(&state, reply, Render::Transaction(Some(hold_id)), Some(Requested { wallet_id, amount, currency }))
        .await)
}

#[utoipa::path(get, path = "/holds/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "The hold", body = HoldJson), (status = 404, description = "hold_not_found", body = ProblemJson)))]
pub(crate) async fn get_hold<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<HoldJson>, Problem> {
    let hold_id = parse_hold("holdId", &id)?;
    let hold = visible_hold(&state, &caller, hold_id).await?;
    Ok(Json(HoldJson::of(&hold)))
}

#[utoipa::path(post, path = "/holds/{id}/capture", request_body(content = Option<CaptureBody>, description = "Optional: without a body the whole hold is captured out of the system"), params(("id" = String, Path)),
    responses((status = 201, description = "Captured", body = TransactionJson), (status = 409, description = "hold_not_active or hold_expired", body = ProblemJson)))]
pub(crate) async fn capture_hold<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
    OptionalBody(body): OptionalBody<CaptureBody>,
) -> Result<Response, Problem> {
    let command_id = command_id(&headers, state.require_idempotency_key, &caller)?;
    let hold_id = parse_hold("holdId", &id)?;
    if caller.owner().is_some() {
        visible_hold(&state, &caller, hold_id).await?;
    }
    let destination = body.to_wallet_id.as_deref().map(|text| parse_wallet("toWalletId", text)).transpose()?;
    let description = parse_description(body.description.as_deref())?;
    let memo = parse_memo(&headers, body.reference_id.as_deref(), body.metadata.as_ref())?;
    // A partial amount is in the hold's currency, which only the write side knows.
    let amount = match body.amount.as_deref() {
        Some(raw) if raw.get() != "null" => {
            let hold = state.commands.hold(hold_id).await.ok_or_else(unavailable)?;
            let hold = hold.ok_or_else(|| Problem::rejection(wallex_engine::Rejection::HoldNotFound))?;
            Some(parse_amount("amount", raw, hold.currency, true)?)
        }
        _ => None,
    };
    let kind = CommandKind::CaptureHold { hold_id, amount, destination, description };
    let reply = state.commands.submit(Command { id: command_id, kind, memo }).await;
    Ok(respond(&state, reply, Render::Transaction(None), None).await)
}

#[utoipa::path(post, path = "/holds/{id}/void", params(("id" = String, Path)),
    responses((status = 201, description = "Voided", body = TransactionJson), (status = 409, description = "hold_not_active or hold_expired", body = ProblemJson)))]
pub(crate) async fn void_hold<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let command_id = command_id(&headers, state.require_idempotency_key, &caller)?;
    let hold_id = parse_hold("holdId", &id)?;
    if caller.owner().is_some() {
        visible_hold(&state, &caller, hold_id).await?;
    }
    let kind = CommandKind::VoidHold { hold_id };
    let memo = parse_memo(&headers, None, None)?;
    let reply = state.commands.submit(Command { id: command_id, kind, memo }).await;
    Ok(respond(&state, reply, Render::Transaction(None), None).await)
}

/// The hold, if it exists and is on a wallet `caller` may see (404 `hold_not_found` otherwise,
/// exactly as for a hold that does not exist). A hold's wallet never changes, so checking before
/// submitting a capture or void cannot be raced.
pub(crate) async fn visible_hold<S: Queries>(
    state: &AppState<S>,
    caller: &Caller,
    hold_id: HoldId,
) -> Result<Hold, Problem> {
    let not_found = || Problem::rejection(wallex_engine::Rejection::HoldNotFound);
    let hold = state.commands.hold(hold_id).await.ok_or_else(unavailable)?.ok_or_else(not_found)?;
    if caller.owner().is_some() {
        state.visible(caller, hold.wallet_id).await.map_err(|_| not_found())?;
    }
    Ok(hold)
}
