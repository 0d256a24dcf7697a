//! History: a wallet's ledger entries (newest first, filterable), its events (in version order),
//! and its balance as of a past version.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use wallex_engine::Reference;

use crate::access::Caller;
use crate::extract::{Params, PathId, page_size, parse_instant, parse_wallet};
use crate::problem::{ProblemJson, store_problem};
use crate::wire::{
    BalanceJson, BalanceQuery, EventJson, EventsQuery, LedgerEntryJson, LedgerPageJson, LedgerQuery, Page,
    ReferenceJson, ReferenceQuery, SummaryJson, TRANSACTION_TYPES, TransactionEntryJson, transaction_type,
};
use crate::{MAX_PAGE, Problem, Queries, Shared};

#[utoipa::path(get, path = "/ledger/wallet/{id}", params(("id" = String, Path), ("cursor" = Option<i64>, Query, minimum = 0, description = "The last version seen"), ("limit" = Option<usize>, Query), ("type" = Option<String>, Query), ("from" = Option<String>, Query), ("to" = Option<String>, Query), ("transactionType" = Option<String>, Query, description = "The original service's type: CREDIT, DEBIT, TRANSFER_OUT, TRANSFER_IN, HOLD_CAPTURE, HOLD_CAPTURE_IN"), ("startDate" = Option<String>, Query, description = "As `from`"), ("endDate" = Option<String>, Query, description = "As `to`"), ("offset" = Option<usize>, Query, maximum = 1000, description = "Entries of the page to skip")),
    responses((status = 200, description = "Ledger entries, newest first: every entry the wallet had committed when the request arrived, unless the bounded wait for the ledger projection ran out", body = LedgerPageJson,
        headers(("wallex-behind" = u64, description = "Present when the wait ran out: how many committed versions of the wallet the answer lacks")))))]
pub(crate) async fn ledger<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    PathId(id): PathId,
    Params(query): Params<LedgerQuery>,
) -> Result<Response, Problem> {
    let wallet_id = parse_wallet("walletId", &id)?;
    state.visible(&caller, wallet_id).await?;
    let limit = page_size(query.limit)?;
    if let Some(kind) = query.transaction_type.as_deref()
        && !TRANSACTION_TYPES.contains(&kind)
    {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("transactionType is one of {}", TRANSACTION_TYPES.join(", ")),
        ));
    }
    if let Some(kind) = query.entry_type.as_deref()
        && !crate::wire::ENTRY_TYPES.contains(&kind)
    {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("type is one of {}", crate::wire::ENTRY_TYPES.join(", ")),
        ));
    }
    let offset = query.offset.unwrap_or(0);
    if offset > MAX_PAGE {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_query", format!("offset is at most {MAX_PAGE}")));
    }
    // Each bound is checked, whichever name it came by; given both ways, the narrower holds.
    let from =
        parse_instant("from", query.from.as_deref())?.max(parse_instant("startDate", query.start_date.as_deref())?);
    let to = match (parse_instant("to", query.to.as_deref())?, parse_instant("endDate", query.end_date.as_deref())?) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let behind = caught_up(&state, &wallet_id).await?;
    let read = state.store.ledger_entries(&wallet_id, query.cursor, limit + offset).await.map_err(store_problem)?;
    // `offset` skips entries of the page; the cursor still moves past everything read.
    let entries = read.get(offset..).unwrap_or_default();
    // Filters narrow the page; the cursor still moves past everything scanned.
    let shown: Vec<_> = entries
        .iter()
        .filter(|e| query.entry_type.as_deref().is_none_or(|kind| e.entry_type == kind))
        .filter(|e| query.transaction_type.as_deref().is_none_or(|kind| transaction_type(&e.entry_type) == kind))
        .filter(|e| from.is_none_or(|from| e.at.unix_micros() >= from))
        .filter(|e| to.is_none_or(|to| e.at.unix_micros() < to))
        .collect();
    let page: Page<()> = Page::of(entries, limit, |entry| entry.version.to_string(), Vec::new());
    let body = LedgerPageJson {
        wallet_id: wallet_id.to_string(),
        count: shown.len(),
        transactions: shown.iter().map(|entry| TransactionEntryJson::of(entry)).collect(),
        items: shown.iter().map(|entry| LedgerEntryJson::of(entry)).collect(),
        next_cursor: page.next_cursor,
    };
    let mut response = Json(body).into_response();
    if behind > 0 {
        response.headers_mut().insert(BEHIND, HeaderValue::from(behind));
    }
    Ok(response)
}

#[utoipa::path(get, path = "/ledger/wallet/{id}/summary", params(("id" = String, Path)),
    responses((status = 200, description = "The wallet's ledger in sums (kept as entries are written, never computed by scanning them), with every entry the wallet had committed when the request arrived unless the bounded wait ran out", body = SummaryJson,
        headers(("wallex-behind" = u64, description = "Present when the wait ran out: how many committed versions of the wallet the answer lacks")))))]
pub(crate) async fn summary<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Response, Problem> {
    let wallet_id = parse_wallet("walletId", &id)?;
    state.visible(&caller, wallet_id).await?;
    let behind = caught_up(&state, &wallet_id).await?;
    let summary = state.store.wallet_summary(&wallet_id).await.map_err(store_problem)?;
    let last = match &summary {
        Some(summary) => state.store.ledger_entry(&wallet_id, summary.last_version).await.map_err(store_problem)?,
        None => None,
    };
    let mut response = Json(SummaryJson::of(&wallet_id, summary.as_ref(), last.as_ref())).into_response();
    if behind > 0 {
        response.headers_mut().insert(BEHIND, HeaderValue::from(behind));
    }
    Ok(response)
}

#[utoipa::path(get, path = "/ledger/reference/{referenceId}", params(("referenceId" = String, Path, min_length = 1, max_length = 128, description = "A transaction's referenceId"), ("limit" = Option<usize>, Query),
        ("after" = Option<i64>, Query, minimum = 0, description = "A write's Wallex-Position: the answer includes every write committed through it (waiting, bounded, for the read side)")),
    responses((status = 200, description = "The ledger entries of the transactions with this reference (one per wallet leg), newest first; none if no transaction has it", body = ReferenceJson,
        headers(("wallex-behind" = u64, description = "Present when the bounded wait ran out")))))]
pub(crate) async fn by_reference<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    PathId(id): PathId,
    Params(query): Params<ReferenceQuery>,
) -> Result<Response, Problem> {
    let reference = Reference::parse(&id).map_err(|error| Problem::field("referenceId", &error))?;
    let limit = page_size(query.limit)?;
    let behind = crate::search::wait_for_position(&state, query.after).await;
    let mut entries = state.store.entries_by_reference(&reference, limit).await.map_err(store_problem)?;
    // An owner's key sees its own wallets' legs alone.
    if caller.owner().is_some() {
        let mut seen = Vec::with_capacity(entries.len());
        for entry in entries {
            if state.visible(&caller, entry.wallet_id).await.is_ok() {
                seen.push(entry);
            }
        }
        entries = seen;
    }
    let mut response = Json(ReferenceJson {
        reference_id: reference.to_string(),
        count: entries.len(),
        transactions: entries.iter().map(TransactionEntryJson::of).collect(),
    })
    .into_response();
    if behind > 0 {
        response.headers_mut().insert(BEHIND, HeaderValue::from(behind as u64));
    }
    Ok(response)
}

/// The header a history read carries when the bounded wait ran out: how many of the wallet's
/// committed versions the answer lacks.
pub(crate) const BEHIND: &str = "wallex-behind";

/// Waits (at most `Limits::read_wait`) until the ledger projection has every version of the
/// wallet committed when the request arrived; returns how many it still lacks (0: all of them).
async fn caught_up<S: Queries>(
    state: &crate::AppState<S>,
    wallet_id: &wallex_engine::WalletId,
) -> Result<u64, Problem> {
    let committed = state.stats.view.wallet(wallet_id).map(|view| view.version);
    let projected = state.store.wallet(wallet_id).await.map_err(store_problem)?.map(|view| view.version);
    let target = committed.max(projected).unwrap_or(0);
    let deadline = tokio::time::Instant::now() + state.limits.read_wait;
    loop {
        let applied = state.store.ledger_version(wallet_id).await.map_err(store_problem)?;
        if applied >= target {
            return Ok(0);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(target - applied);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[utoipa::path(get, path = "/wallets/{id}/events", params(("id" = String, Path), ("cursor" = Option<i64>, Query, minimum = 0, description = "The last version seen"), ("limit" = Option<usize>, Query)),
    responses((status = 200, description = "The wallet's events in version order", body = Page<EventJson>)))]
pub(crate) async fn wallet_events<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    PathId(id): PathId,
    Params(query): Params<EventsQuery>,
) -> Result<Json<Page<EventJson>>, Problem> {
    let wallet_id = parse_wallet("walletId", &id)?;
    state.visible(&caller, wallet_id).await?;
    let limit = page_size(query.limit)?;
    // The cursor is the last version seen, and a client may send any number: past the largest
    // version the page is empty, and the range ends there rather than overflowing.
    let Some(from) = query.cursor.unwrap_or(0).checked_add(1) else {
        return Ok(Json(Page { items: Vec::new(), next_cursor: None }));
    };
    let to = from.saturating_add(limit as u64 - 1);
    let events = state.store.wallet_events(&wallet_id, from, to).await.map_err(store_problem)?;
    if events.is_empty() && from == 1 {
        return Err(Problem::rejection(wallex_engine::Rejection::WalletNotFound));
    }
    let items = events.iter().map(EventJson::of).collect();
    Ok(Json(Page::of(&events, limit, |event| event.version.to_string(), items)))
}

#[utoipa::path(get, path = "/wallets/{id}/balance", params(("id" = String, Path), ("version" = i64, Query, minimum = 0)),
    responses((status = 200, description = "The balance as of that version", body = BalanceJson), (status = 404, description = "version_not_found", body = ProblemJson)))]
pub(crate) async fn balance_at<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    PathId(id): PathId,
    Params(query): Params<BalanceQuery>,
) -> Result<Json<BalanceJson>, Problem> {
    let wallet_id = parse_wallet("walletId", &id)?;
    state.visible(&caller, wallet_id).await?;
    let events = state.store.wallet_events(&wallet_id, query.version, query.version).await.map_err(store_problem)?;
    let event = events.first().ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "version_not_found",
            format!("{wallet_id} has no version {}", query.version),
        )
    })?;
    Ok(Json(BalanceJson::after(event)))
}
