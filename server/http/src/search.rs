//! Search: `GET /wallets` (by owner, currency, balance range, creation range and one metadata
//! key=value of the wallet's creation; by id, creation or balance, either way) and
//! `GET /ledger/transactions` (by wallet, type, date range, amount range, reference, description
//! text and one metadata key=value; newest first). Every filter is index-backed in every store
//! (`docs/SEARCH.md` shows the plans); pages continue by an opaque cursor, also given as an RFC 8288
//! `Link` header; `?after=<position>` answers once the read side has every write through it.

use std::str::FromStr;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use wallex_engine::{Currency, Metadata, OwnerId, Reference, Timestamp, TransactionId};
use wallex_pipeline::ports::{EntryCursor, EntryFilter, WalletCursor, WalletFilter, WalletOrder};

use crate::access::Caller;
use crate::extract::{Params, page_size, parse_currency, parse_instant, parse_wallet};
use crate::problem::{ProblemJson, store_problem};
use crate::wire::{
    ENTRY_TYPES, ListQuery, TRANSACTION_TYPES, TransactionEntryJson, TransactionsJson, TransactionsQuery, WalletJson,
    entry_types,
};
use crate::{AppState, Problem, Queries, Shared};

/// The shortest text a description search takes: trigram indexes need three characters.
pub(crate) const MIN_DESCRIPTION_SEARCH: usize = 3;
/// The longest.
pub(crate) const MAX_DESCRIPTION_SEARCH: usize = 100;

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_query", detail)
}

/// Waits, at most `Limits::read_wait`, until the read side has every write committed through
/// `position`; how many wallets may still lack one (0: none).
pub(crate) async fn wait_for_position<S>(state: &AppState<S>, position: Option<u64>) -> usize {
    let Some(position) = position else { return 0 };
    let position = TransactionId(position);
    let deadline = tokio::time::Instant::now() + state.limits.read_wait;
    loop {
        let behind = state.stats.view.pending_through(position);
        if behind == 0 || tokio::time::Instant::now() >= deadline {
            return behind;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// `key:value`, one metadata entry.
fn parse_metadata(text: Option<&str>) -> Result<Option<(String, String)>, Problem> {
    let Some(text) = text else { return Ok(None) };
    let (key, value) = text.split_once(':').ok_or_else(|| invalid("metadata is key:value"))?;
    Metadata::check_key(key)
        .and_then(|()| Metadata::check_value(value))
        .map_err(|error| invalid(format!("metadata: {error}")))?;
    Ok(Some((key.to_owned(), value.to_owned())))
}

/// Which way a bound rounds an amount finer than the currency's minor unit: a lower bound up, an
/// upper bound down, so the bound keeps its exact meaning.
#[derive(Clone, Copy)]
enum Bound {
    Lower,
    Upper,
}

/// A money bound of a query (`minBalance=-12.5`): a decimal in `currency`, exact, in minor units.
fn parse_bound(
    field: &str,
    text: Option<&str>,
    currency: Option<Currency>,
    bound: Bound,
) -> Result<Option<i64>, Problem> {
    let Some(text) = text else { return Ok(None) };
    let currency = currency.ok_or_else(|| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "currency_required",
            format!("{field} needs currency, the currency of its amount"),
        )
    })?;
    let syntax = text.strip_prefix('-').unwrap_or(text);
    let plain = |part: &str| !part.is_empty() && part.len() <= 20 && part.bytes().all(|b| b.is_ascii_digit());
    let well_formed = match syntax.split_once('.') {
        Some((int, frac)) => plain(int) && plain(frac),
        None => plain(syntax),
    };
    let value = Decimal::from_str(text)
        .ok()
        .filter(|_| well_formed)
        .ok_or_else(|| invalid(format!("{field} is a decimal number")))?;
    let scaled = value.checked_mul(Decimal::from(10i64.pow(currency.scale())));
    let minor = scaled.map(|scaled| match bound {
        Bound::Lower => scaled.ceil(),
        Bound::Upper => scaled.floor(),
    });
    // Past what a balance can hold: the bound admits everything or nothing, as its sign says.
    let saturated = if value.is_sign_negative() { i64::MIN } else { i64::MAX };
    Ok(Some(minor.and_then(|minor| minor.to_i64()).unwrap_or(saturated)))
}

/// Parses the instants of a range.
fn parse_time(field: &str, text: Option<&str>) -> Result<Option<Timestamp>, Problem> {
    Ok(parse_instant(field, text)?.map(Timestamp::from_unix_micros))
}

/// The `Link` header of a page whose next one starts after `cursor`: the same filters (those
/// given), form-encoded, and the cursor.
fn link<'a>(path: &str, filters: impl IntoIterator<Item = (&'a str, Option<String>)>, cursor: String) -> HeaderValue {
    let pairs: Vec<(&str, String)> = filters
        .into_iter()
        .filter_map(|(key, value)| value.map(|value| (key, value)))
        .chain([("cursor", cursor)])
        .collect();
    let query = serde_urlencoded::to_string(pairs).expect("string pairs always encode");
    HeaderValue::from_str(&format!("<{path}?{query}>; rel=\"next\"")).expect("encoded links are visible ASCII")
}

#[utoipa::path(get, path = "/wallets", params(
        ("ownerId" = Option<String>, Query),
        ("currency" = Option<String>, Query),
        ("minBalance" = Option<String>, Query, description = "Balance at least this decimal, in `currency` (required with it); may be negative"),
        ("maxBalance" = Option<String>, Query, description = "Balance at most this decimal, in `currency` (required with it)"),
        ("createdFrom" = Option<String>, Query, description = "Created at or after this RFC 3339 instant"),
        ("createdTo" = Option<String>, Query, description = "Created before this RFC 3339 instant"),
        ("metadata" = Option<String>, Query, description = "`key:value`: one entry of the metadata the wallet was created with"),
        ("sort" = Option<String>, Query, description = "`walletId` (default), `createdAt` or `balance`; ties by wallet id"),
        ("order" = Option<String>, Query, description = "`asc` (default) or `desc`"),
        ("cursor" = Option<String>, Query, description = "Where the previous page ended, as the `Link` header's next page names it"),
        ("limit" = Option<usize>, Query),
        ("after" = Option<i64>, Query, minimum = 0, description = "A write's Wallex-Position: the list includes every write committed through it (waiting, bounded, for the read side)")),
    responses((status = 200, description = "Wallets as a JSON array (as the original service answered); a full page links the next one", body = Vec<WalletJson>,
        headers(("link" = String, description = "RFC 8288: `<…>; rel=\"next\"` when there may be more wallets"),
            ("wallex-behind" = u64, description = "Present when the bounded wait ran out: how many wallets the list may show before that position"))),
        (status = 422, description = "currency_required (a balance bound without its currency) or invalid_cursor (a cursor of a list in another order)", body = ProblemJson)))]
pub(crate) async fn list_wallets<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    Params(query): Params<ListQuery>,
) -> Result<Response, Problem> {
    let limit = page_size(query.limit)?;
    let owner_id =
        query.owner_id.as_deref().map(OwnerId::parse).transpose().map_err(|error| Problem::field("ownerId", &error))?;
    // An owner's key lists its own wallets: the filter is its owner, and naming another is 403.
    let owner_id = match (caller.owner(), owner_id) {
        (Some(own), Some(named)) if own != named => {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this API key lists its own owner's wallets only",
            ));
        }
        (Some(own), _) => Some(own),
        (None, named) => named,
    };
    let currency = parse_currency(query.currency.as_deref())?;
    let order = match query.sort.as_deref() {
        None | Some("walletId") => WalletOrder::Id,
        Some("createdAt") => WalletOrder::CreatedAt,
        Some("balance") => WalletOrder::Balance,
        Some(_) => return Err(invalid("sort is walletId, createdAt or balance")),
    };
    let descending = match query.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(invalid("order is asc or desc")),
    };
    let after = match query.cursor.as_deref() {
        None => None,
        Some(text) if order == WalletOrder::Id => {
            Some(WalletCursor { key: 0, wallet_id: parse_wallet("cursor", text)? })
        }
        Some(text) => {
            // Well formed, but of another order (a wallet id alone): the cursor and the sort
            // disagree.
            let mismatch = || {
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_cursor",
                    "this cursor belongs to a list in another order",
                )
            };
            let (key, wallet) = text.split_once(':').ok_or_else(mismatch)?;
            let key = key.parse::<i64>().map_err(|_| mismatch())?;
            Some(WalletCursor { key, wallet_id: parse_wallet("cursor", wallet).map_err(|_| mismatch())? })
        }
    };
    let filter = WalletFilter {
        owner_id,
        currency,
        min_balance: parse_bound("minBalance", query.min_balance.as_deref(), currency, Bound::Lower)?,
        max_balance: parse_bound("maxBalance", query.max_balance.as_deref(), currency, Bound::Upper)?,
        created_from: parse_time("createdFrom", query.created_from.as_deref())?,
        created_to: parse_time("createdTo", query.created_to.as_deref())?,
        metadata: parse_metadata(query.metadata.as_deref())?,
        order,
        descending,
        after,
    };
    let behind = wait_for_position(&state, query.after).await;
    let views = state.store.search_wallets(&filter, limit).await.map_err(store_problem)?;
    let items: Vec<WalletJson> = views.iter().map(WalletJson::of).collect();
    let mut response = Json(items).into_response();
    // A full page may have more after it: link the next one, with the same filters.
    if views.len() == limit
        && let Some(last) = views.last()
    {
        let cursor = match order {
            WalletOrder::Id => last.wallet_id.to_string(),
            _ => format!("{}:{}", filter.key(last), last.wallet_id),
        };
        let filters = [
            ("ownerId", query.owner_id),
            ("currency", query.currency),
            ("minBalance", query.min_balance),
            ("maxBalance", query.max_balance),
            ("createdFrom", query.created_from),
            ("createdTo", query.created_to),
            ("metadata", query.metadata),
            ("sort", query.sort),
            ("order", query.order),
            ("limit", Some(limit.to_string())),
        ];
        response.headers_mut().insert(header::LINK, link("/wallets", filters, cursor));
    }
    if behind > 0 {
        response.headers_mut().insert(crate::ledger::BEHIND, HeaderValue::from(behind as u64));
    }
    Ok(response)
}

#[utoipa::path(get, path = "/ledger/transactions", params(
        ("walletId" = Option<String>, Query),
        ("transactionType" = Option<String>, Query, description = "The original service's type: CREDIT, DEBIT, TRANSFER_OUT, TRANSFER_IN, HOLD_CAPTURE, HOLD_CAPTURE_IN"),
        ("type" = Option<String>, Query, description = "Wallex's entry type: wallet_created, credited, debited, transfer_sent, transfer_received, hold_captured, capture_received"),
        ("startDate" = Option<String>, Query, description = "At or after this RFC 3339 instant"),
        ("endDate" = Option<String>, Query, description = "Before this RFC 3339 instant"),
        ("currency" = Option<String>, Query, description = "Entries in this currency; required with an amount bound"),
        ("minAmount" = Option<String>, Query, description = "Amount at least this decimal, in `currency`"),
        ("maxAmount" = Option<String>, Query, description = "Amount at most this decimal, in `currency`"),
        ("referenceId" = Option<String>, Query),
        ("description" = Option<String>, Query, description = "The description contains this text, whatever its case (3 to 100 characters)"),
        ("metadata" = Option<String>, Query, description = "`key:value`: one entry of the transaction's metadata"),
        ("cursor" = Option<String>, Query, description = "Where the previous page ended (`nextCursor`)"),
        ("limit" = Option<usize>, Query),
        ("after" = Option<i64>, Query, minimum = 0, description = "A write's Wallex-Position: the search includes every write committed through it (waiting, bounded, for the read side)")),
    responses((status = 200, description = "Ledger entries, newest first (by time, then transaction, then wallet)", body = TransactionsJson,
        headers(("link" = String, description = "RFC 8288: `<…>; rel=\"next\"` when there may be more"),
            ("wallex-behind" = u64, description = "Present when the bounded wait ran out"))),
        (status = 422, description = "currency_required: an amount bound without its currency", body = ProblemJson)))]
pub(crate) async fn transactions<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    Params(query): Params<TransactionsQuery>,
) -> Result<Response, Problem> {
    let limit = page_size(query.limit)?;
    // An owner's key searches one of its own wallets at a time: every filter stays index-backed
    // and no page holds another owner's entry.
    if caller.owner().is_some() {
        let Some(text) = query.wallet_id.as_deref() else {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "an API key bound to an owner searches one of its wallets at a time: walletId is required",
            ));
        };
        state.visible(&caller, parse_wallet("walletId", text)?).await?;
    }
    let mut types: Vec<&'static str> = Vec::new();
    if let Some(kind) = query.transaction_type.as_deref() {
        types.extend(
            entry_types(kind)
                .ok_or_else(|| invalid(format!("transactionType is one of {}", TRANSACTION_TYPES.join(", "))))?,
        );
    }
    if let Some(kind) = query.entry_type.as_deref() {
        let kind = ENTRY_TYPES
            .iter()
            .find(|known| **known == kind)
            .ok_or_else(|| invalid(format!("type is one of {}", ENTRY_TYPES.join(", "))))?;
        // Both given: entries of both (an intersection).
        if query.transaction_type.is_some() {
            types.retain(|known| known == kind);
            if types.is_empty() {
                types.push("none");
            }
        } else {
            types.push(kind);
        }
    }
    let currency = parse_currency(query.currency.as_deref())?;
    let minimum = parse_bound("minAmount", query.min_amount.as_deref(), currency, Bound::Lower)?;
    let maximum = parse_bound("maxAmount", query.max_amount.as_deref(), currency, Bound::Upper)?;
    let description = match query.description.as_deref() {
        None => None,
        Some(text) => {
            let chars = text.chars().count();
            if !(MIN_DESCRIPTION_SEARCH..=MAX_DESCRIPTION_SEARCH).contains(&chars) || text.chars().any(char::is_control)
            {
                return Err(invalid(format!(
                    "description is {MIN_DESCRIPTION_SEARCH} to {MAX_DESCRIPTION_SEARCH} characters, no control characters"
                )));
            }
            Some(text.to_owned())
        }
    };
    let before = match query.cursor.as_deref() {
        None => None,
        Some(text) => {
            let malformed = || invalid("cursor is not one this search gave");
            let mut parts = text.splitn(3, ':');
            let at = parts.next().and_then(|part| part.parse::<u64>().ok()).ok_or_else(malformed)?;
            let transaction = parts.next().and_then(|part| part.parse::<u64>().ok()).ok_or_else(malformed)?;
            let wallet = parts.next().ok_or_else(malformed)?;
            if at > crate::wire::MAX_QUERY_VERSION || transaction > crate::wire::MAX_QUERY_VERSION {
                return Err(malformed());
            }
            Some(EntryCursor {
                at: Timestamp::from_unix_micros(at),
                transaction_id: TransactionId(transaction),
                wallet_id: parse_wallet("cursor", wallet)?,
            })
        }
    };
    let filter = EntryFilter {
        wallet_id: query.wallet_id.as_deref().map(|text| parse_wallet("walletId", text)).transpose()?,
        entry_types: types,
        from: parse_time("startDate", query.start_date.as_deref())?,
        to: parse_time("endDate", query.end_date.as_deref())?,
        currency,
        // An amount is never negative: a negative lower bound is no bound, a negative upper one
        // admits nothing.
        min_amount: minimum.map(|minor| u64::try_from(minor).unwrap_or(0)),
        max_amount: maximum.map(|minor| u64::try_from(minor.max(-1)).unwrap_or(0)),
        reference: query
            .reference_id
            .as_deref()
            .map(Reference::parse)
            .transpose()
            .map_err(|error| Problem::field("referenceId", &error))?,
        description,
        metadata: parse_metadata(query.metadata.as_deref())?,
        before,
    };
    let filter = match maximum {
        // No entry has a negative amount.
        Some(maximum) if maximum < 0 => EntryFilter { entry_types: vec!["none"], ..filter },
        _ => filter,
    };
    let behind = wait_for_position(&state, query.after).await;
    let entries = state.store.search_entries(&filter, limit).await.map_err(store_problem)?;
    let next_cursor = (entries.len() == limit)
        .then(|| entries.last())
        .flatten()
        .map(|last| format!("{}:{}:{}", last.at.unix_micros(), last.transaction_id.0, last.wallet_id));
    let body = TransactionsJson {
        count: entries.len(),
        transactions: entries.iter().map(TransactionEntryJson::of).collect(),
        next_cursor: next_cursor.clone(),
    };
    let mut response = Json(body).into_response();
    if let Some(cursor) = next_cursor {
        let filters = [
            ("walletId", query.wallet_id),
            ("transactionType", query.transaction_type),
            ("type", query.entry_type),
            ("startDate", query.start_date),
            ("endDate", query.end_date),
            ("currency", query.currency),
            ("minAmount", query.min_amount),
            ("maxAmount", query.max_amount),
            ("referenceId", query.reference_id),
            ("description", query.description),
            ("metadata", query.metadata),
            ("limit", Some(limit.to_string())),
        ];
        response.headers_mut().insert(header::LINK, link("/ledger/transactions", filters, cursor));
    }
    if behind > 0 {
        response.headers_mut().insert(crate::ledger::BEHIND, HeaderValue::from(behind as u64));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_bounds_are_exact_and_round_inward() {
        let usd = Some(Currency::USD);
        assert_eq!(parse_bound("b", Some("12.5"), usd, Bound::Lower).unwrap(), Some(1_250));
        assert_eq!(parse_bound("b", Some("-0.001"), usd, Bound::Lower).unwrap(), Some(0));
        assert_eq!(parse_bound("b", Some("-0.001"), usd, Bound::Upper).unwrap(), Some(-1));
        assert_eq!(parse_bound("b", Some("0.001"), usd, Bound::Lower).unwrap(), Some(1));
        assert_eq!(parse_bound("b", Some("0.001"), usd, Bound::Upper).unwrap(), Some(0));
        assert_eq!(parse_bound("b", Some("99999999999999999999"), usd, Bound::Upper).unwrap(), Some(i64::MAX));
        assert!(parse_bound("b", Some("1e3"), usd, Bound::Lower).is_err());
        assert!(parse_bound("b", Some("1."), usd, Bound::Lower).is_err());
        let without = parse_bound("b", Some("1"), None, Bound::Lower).unwrap_err();
        assert_eq!((without.status, without.code), (StatusCode::UNPROCESSABLE_ENTITY, "currency_required"));
    }
}
