//! The wire: every JSON request body and response shape of the API, the query strings beside
//! them, and how ledger values render into them (exact decimal strings, RFC 3339 instants). No
//! other module (and no other crate) knows a JSON field name; the problem body is the one
//! exception and lives with `Problem`.
//!
//! The `ToSchema` derives feed the OpenAPI document, so a doc comment on a shape or a field here
//! is part of the published document.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

use wallex_engine::{Event, EventKind, Hold, HoldStatus, Memo, Timestamp};
use wallex_pipeline::ports::{Direction, LedgerEntry, WalletSummary, WalletView};

/// An instant as RFC 3339 in UTC, to the microsecond.
pub fn time(at: Timestamp) -> String {
    let micros = i64::try_from(at.unix_micros()).unwrap_or(i64::MAX);
    jiff::Timestamp::from_microsecond(micros).map_or_else(|_| micros.to_string(), |t| t.to_string())
}

// ---------------------------------------------------------------------------------------------
// Request bodies.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(crate) struct CreateWalletBody {
    pub(crate) wallet_id: String,
    pub(crate) owner_id: String,
    pub(crate) currency: Option<String>,
    #[schema(value_type = Option<String>, example = "100.00")]
    pub(crate) initial_balance: Option<Box<RawValue>>,
    #[schema(value_type = Option<String>, example = "0")]
    pub(crate) overdraft_limit: Option<Box<RawValue>>,
    /// The client's reference, unique among each wallet's transactions (a second transaction
    /// with it is 409 `reference_exists`); stored on the events and shown by every read.
    pub(crate) reference_id: Option<String>,
    /// Flat string metadata (at most 16 entries), stored on the events and shown by every read.
    pub(crate) metadata: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(crate) struct MoneyBody {
    /// A JSON number or a decimal string, exact in the wallet's currency.
    #[schema(value_type = String, example = "50.00")]
    pub(crate) amount: Box<RawValue>,
    pub(crate) currency: Option<String>,
    pub(crate) description: Option<String>,
    /// The client's reference, unique among each wallet's transactions (a second transaction
    /// with it is 409 `reference_exists`); stored on the events and shown by every read.
    pub(crate) reference_id: Option<String>,
    /// Flat string metadata (at most 16 entries), stored on the events and shown by every read.
    pub(crate) metadata: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(crate) struct TransferBody {
    pub(crate) to_wallet_id: String,
    #[schema(value_type = String, example = "25.50")]
    pub(crate) amount: Box<RawValue>,
    pub(crate) currency: Option<String>,
    pub(crate) description: Option<String>,
    /// The client's reference, unique among each wallet's transactions (a second transaction
    /// with it is 409 `reference_exists`); stored on the events and shown by every read.
    pub(crate) reference_id: Option<String>,
    /// Flat string metadata (at most 16 entries), stored on the events and shown by every read.
    pub(crate) metadata: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(crate) struct HoldBody {
    pub(crate) hold_id: Option<String>,
    #[schema(value_type = String, example = "40.00")]
    pub(crate) amount: Box<RawValue>,
    pub(crate) currency: Option<String>,
    /// RFC 3339 instant, e.g. `2030-01-01T00:00:00Z`.
    pub(crate) expires_at: Option<String>,
    pub(crate) description: Option<String>,
    /// The client's reference, unique among each wallet's transactions (a second transaction
    /// with it is 409 `reference_exists`); stored on the events and shown by every read.
    pub(crate) reference_id: Option<String>,
    /// Flat string metadata (at most 16 entries), stored on the events and shown by every read.
    pub(crate) metadata: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(crate) struct CaptureBody {
    #[schema(value_type = Option<String>, example = "35.00")]
    pub(crate) amount: Option<Box<RawValue>>,
    pub(crate) to_wallet_id: Option<String>,
    pub(crate) description: Option<String>,
    /// The client's reference, unique among each wallet's transactions (a second transaction
    /// with it is 409 `reference_exists`); stored on the events and shown by every read.
    pub(crate) reference_id: Option<String>,
    /// Flat string metadata (at most 16 entries), stored on the events and shown by every read.
    pub(crate) metadata: Option<std::collections::BTreeMap<String, String>>,
}

// ---------------------------------------------------------------------------------------------
// Query strings.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WalletQuery {
    pub(crate) consistency: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListQuery {
    pub(crate) owner_id: Option<String>,
    pub(crate) currency: Option<String>,
    pub(crate) min_balance: Option<String>,
    pub(crate) max_balance: Option<String>,
    pub(crate) created_from: Option<String>,
    pub(crate) created_to: Option<String>,
    pub(crate) metadata: Option<String>,
    pub(crate) sort: Option<String>,
    pub(crate) order: Option<String>,
    pub(crate) cursor: Option<String>,
    pub(crate) limit: Option<usize>,
    /// A commit position (a write's `Wallex-Position`): answer once the read side has every
    /// write committed through it.
    #[serde(default, deserialize_with = "optional_version")]
    pub(crate) after: Option<u64>,
}

/// The largest version or cursor a query may name: stores keep them as signed 64-bit integers, so a
/// larger one names nothing that can exist and is refused as a bad query.
pub const MAX_QUERY_VERSION: u64 = i64::MAX.unsigned_abs();

fn version<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = u64::deserialize(deserializer)?;
    if value > MAX_QUERY_VERSION {
        return Err(serde::de::Error::custom(format!("{value} is past the largest version, {MAX_QUERY_VERSION}")));
    }
    Ok(value)
}

fn optional_version<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    version(deserializer).map(Some)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct LedgerQuery {
    #[serde(default, deserialize_with = "optional_version")]
    pub(crate) cursor: Option<u64>,
    pub(crate) limit: Option<usize>,
    #[serde(rename = "type")]
    pub(crate) entry_type: Option<String>,
    pub(crate) from: Option<String>,
    pub(crate) to: Option<String>,
    /// The original service's filters: its transaction type (`CREDIT`, `DEBIT`, `TRANSFER_OUT`,
    /// `TRANSFER_IN`, …), `startDate` and `endDate` (as `from` and `to`), and `offset` (entries
    /// of the page skipped).
    pub(crate) transaction_type: Option<String>,
    pub(crate) start_date: Option<String>,
    pub(crate) end_date: Option<String>,
    pub(crate) offset: Option<usize>,
}

/// `GET /ledger/transactions`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TransactionsQuery {
    pub(crate) wallet_id: Option<String>,
    pub(crate) transaction_type: Option<String>,
    #[serde(rename = "type")]
    pub(crate) entry_type: Option<String>,
    pub(crate) start_date: Option<String>,
    pub(crate) end_date: Option<String>,
    pub(crate) currency: Option<String>,
    pub(crate) min_amount: Option<String>,
    pub(crate) max_amount: Option<String>,
    pub(crate) reference_id: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) metadata: Option<String>,
    pub(crate) cursor: Option<String>,
    pub(crate) limit: Option<usize>,
    #[serde(default, deserialize_with = "optional_version")]
    pub(crate) after: Option<u64>,
}

/// A page of the ledger search, newest first: the original's `count` and `transactions`, and the
/// cursor of the next page (also in the `Link` header).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TransactionsJson {
    pub(crate) count: usize,
    pub(crate) transactions: Vec<TransactionEntryJson>,
    pub(crate) next_cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct EventsQuery {
    #[serde(default, deserialize_with = "optional_version")]
    pub(crate) cursor: Option<u64>,
    pub(crate) limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BalanceQuery {
    #[serde(deserialize_with = "version")]
    pub(crate) version: u64,
}

// ---------------------------------------------------------------------------------------------
// Response shapes.

/// A wallet as the API shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
pub struct WalletJson {
    /// The wallet's id, as the original service named it; the same as `walletId`.
    pub id: String,
    pub wallet_id: String,
    pub owner_id: String,
    #[schema(value_type = String, example = "USD")]
    pub currency: &'static str,
    pub balance: String,
    pub held_balance: String,
    /// What the wallet may still spend or reserve: `balance - heldBalance + overdraftLimit`, the
    /// amount the ledger checks every debit, transfer and hold against (one minor unit more is
    /// `insufficient_funds`). With no overdraft it is the balance less holds.
    pub available_balance: String,
    pub overdraft_limit: String,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    /// The reference the wallet was created with, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_id: Option<String>,
    /// The metadata the wallet was created with (an empty object when none).
    pub metadata: BTreeMap<String, String>,
}

impl WalletJson {
    pub(crate) fn of(view: &WalletView) -> WalletJson {
        let money = |minor: i128| view.currency.format_minor(minor);
        WalletJson {
            id: view.wallet_id.to_string(),
            wallet_id: view.wallet_id.to_string(),
            owner_id: view.owner_id.to_string(),
            currency: view.currency.code(),
            balance: money(i128::from(view.balance)),
            held_balance: money(i128::from(view.held)),
            // What the wallet may still spend or reserve, exactly as the ledger decides
            // `insufficient_funds`: an amount up to it is accepted, one minor unit more refused.
            available_balance: money(
                i128::from(view.balance) - i128::from(view.held) + i128::from(view.overdraft_limit),
            ),
            overdraft_limit: money(i128::from(view.overdraft_limit)),
            version: view.version,
            created_at: time(view.created_at),
            updated_at: time(view.updated_at),
            reference_id: view.memo.reference.as_ref().map(ToString::to_string),
            metadata: metadata(&view.memo),
        }
    }
}

/// One event as the API and the history show it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
pub struct EventJson {
    pub wallet_id: String,
    pub version: u64,
    pub transaction_id: String,
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "credited")]
    pub kind: &'static str,
    #[schema(value_type = String, example = "USD")]
    pub currency: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    pub balance_after: String,
    pub held_after: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The client's reference for the transaction, if it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_id: Option<String>,
    /// The transaction's metadata, if any.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The correlation id of the request that made the transaction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    pub at: String,
}

/// A memo's metadata as a JSON object.
fn metadata(memo: &Memo) -> BTreeMap<String, String> {
    memo.metadata.iter().map(|(key, value)| (key.to_owned(), value.to_owned())).collect()
}

impl EventJson {
    pub(crate) fn of(event: &Event) -> EventJson {
        let money = |minor: i128| event.currency.format_minor(minor);
        let hold_id = match &event.kind {
            EventKind::HoldPlaced { hold_id, .. }
            | EventKind::HoldCaptured { hold_id, .. }
            | EventKind::CaptureReceived { hold_id, .. }
            | EventKind::HoldVoided { hold_id, .. }
            | EventKind::HoldExpired { hold_id, .. } => Some(hold_id.to_string()),
            _ => None,
        };
        let amount = match &event.kind {
            EventKind::HoldPlaced { amount, .. } => Some(*amount),
            EventKind::HoldVoided { released, .. } | EventKind::HoldExpired { released, .. } => Some(*released),
            _ => event.posting.map(|posting| posting.amount),
        };
        EventJson {
            wallet_id: event.wallet_id.to_string(),
            version: event.version,
            transaction_id: event.transaction_id.to_string(),
            kind: event.kind.name(),
            currency: event.currency.code(),
            amount: amount.map(|amount| amount.format(event.currency)),
            source: event.posting.map(|posting| posting.source.to_string()),
            destination: event.posting.map(|posting| posting.destination.to_string()),
            hold_id,
            balance_after: money(i128::from(event.balance_after)),
            held_after: money(i128::from(event.held_after)),
            description: event.description.as_ref().map(|d| d.as_str().to_owned()),
            reference_id: event.memo.reference.as_ref().map(ToString::to_string),
            metadata: metadata(&event.memo),
            correlation_id: event.memo.correlation_id.as_ref().map(|id| id.as_str().to_owned()),
            at: time(event.at),
        }
    }
}

/// A hold command's answer: its transaction, and the hold's id when it placed one.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
pub(crate) struct TransactionJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hold_id: Option<String>,
    pub(crate) transaction_id: String,
    pub(crate) events: Vec<EventJson>,
}

/// The answer to a wallet's creation, credit or debit, as the original service gave it: the wallet
/// after the command (every field of `Wallet`), with the command's `transactionId` and `events`.
/// (Should the read side be unreachable at that moment, the answer carries the transaction alone.)
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
pub(crate) struct WalletOperationJson {
    #[serde(flatten)]
    pub(crate) wallet: Option<WalletJson>,
    pub(crate) transaction_id: String,
    pub(crate) events: Vec<EventJson>,
}

/// The answer to a transfer, as the original service gave it: both wallets after it, with the
/// command's `transactionId` and `events`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
pub(crate) struct TransferJson {
    pub(crate) from_wallet: Option<WalletJson>,
    pub(crate) to_wallet: Option<WalletJson>,
    pub(crate) transaction_id: String,
    pub(crate) events: Vec<EventJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
pub(crate) struct HoldJson {
    hold_id: String,
    wallet_id: String,
    #[schema(value_type = String)]
    currency: &'static str,
    amount: String,
    #[schema(value_type = String, example = "active")]
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    captured_amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    placed_at: String,
}

impl HoldJson {
    pub(crate) fn of(hold: &Hold) -> HoldJson {
        let (status, captured) = match hold.status {
            HoldStatus::Active => ("active", None),
            HoldStatus::Captured { captured } => ("captured", Some(captured.format(hold.currency))),
            HoldStatus::Voided => ("voided", None),
            HoldStatus::Expired => ("expired", None),
        };
        HoldJson {
            hold_id: hold.id.to_string(),
            wallet_id: hold.wallet_id.to_string(),
            currency: hold.currency.code(),
            amount: hold.amount.format(hold.currency),
            status,
            captured_amount: captured,
            expires_at: hold.expires_at.map(time),
            placed_at: time(hold.placed_at),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    pub(crate) next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page of `items`, shown from the rows `read` with page size `limit`. A full read may have
    /// more rows after it, so its last row's cursor comes along; a short read ends the list. The
    /// cursor follows the rows read, not the items shown, which a filter may have thinned.
    pub(crate) fn of<R>(read: &[R], limit: usize, cursor: impl Fn(&R) -> String, items: Vec<T>) -> Page<T> {
        let next_cursor = (read.len() == limit).then(|| read.last().map(cursor)).flatten();
        Page { items, next_cursor }
    }
}

/// A page of a wallet's ledger: Wallex's `items` and `nextCursor`, and beside them the original
/// service's `walletId`, `count` and `transactions` (the same entries, under its names).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LedgerPageJson {
    pub(crate) wallet_id: String,
    pub(crate) count: usize,
    pub(crate) transactions: Vec<TransactionEntryJson>,
    pub(crate) items: Vec<LedgerEntryJson>,
    pub(crate) next_cursor: Option<String>,
}

/// One ledger entry as the original service showed it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TransactionEntryJson {
    /// `walletId:version`, unique per entry.
    id: String,
    wallet_id: String,
    /// `CREDIT`, `DEBIT`, `TRANSFER_OUT`, `TRANSFER_IN`, `HOLD_CAPTURE` or `HOLD_CAPTURE_IN`.
    transaction_type: &'static str,
    amount: String,
    balance_before: String,
    balance_after: String,
    description: Option<String>,
    /// The client's reference for the transaction, or null.
    reference_id: Option<String>,
    /// The other wallet of a transfer or capture.
    related_wallet_id: Option<String>,
    /// The transaction's metadata (an empty object when it has none).
    metadata: BTreeMap<String, String>,
    /// The correlation id of the request that made the transaction, or null.
    correlation_id: Option<String>,
    transaction_id: String,
    created_at: String,
}

/// Every transaction type the original service's filter accepts.
pub(crate) const TRANSACTION_TYPES: [&str; 6] =
    ["CREDIT", "DEBIT", "TRANSFER_OUT", "TRANSFER_IN", "HOLD_CAPTURE", "HOLD_CAPTURE_IN"];

/// The Wallex entry types of the original service's transaction type (`transaction_type` read
/// backwards), or `None` for a type it does not have.
pub(crate) fn entry_types(original: &str) -> Option<Vec<&'static str>> {
    TRANSACTION_TYPES
        .contains(&original)
        .then(|| ENTRY_TYPES.into_iter().filter(|entry_type| transaction_type(entry_type) == original).collect())
}

/// Every Wallex entry type (a ledger entry is a posting's side).
pub(crate) const ENTRY_TYPES: [&str; 7] = [
    "wallet_created",
    "credited",
    "debited",
    "transfer_sent",
    "transfer_received",
    "hold_captured",
    "capture_received",
];

/// The original service's name for an entry of this Wallex type.
pub(crate) fn transaction_type(entry_type: &str) -> &'static str {
    match entry_type {
        "wallet_created" | "credited" => "CREDIT",
        "debited" => "DEBIT",
        "transfer_sent" => "TRANSFER_OUT",
        "transfer_received" => "TRANSFER_IN",
        "hold_captured" => "HOLD_CAPTURE",
        "capture_received" => "HOLD_CAPTURE_IN",
        _ => "OTHER",
    }
}

impl TransactionEntryJson {
    pub(crate) fn of(entry: &LedgerEntry) -> TransactionEntryJson {
        let amount = i128::from(entry.amount);
        let after = i128::from(entry.balance_after);
        let before = match entry.direction {
            Direction::Credit => after - amount,
            Direction::Debit => after + amount,
        };
        TransactionEntryJson {
            id: format!("{}:{}", entry.wallet_id, entry.version),
            wallet_id: entry.wallet_id.to_string(),
            transaction_type: transaction_type(&entry.entry_type),
            amount: entry.currency.format_minor(amount),
            balance_before: entry.currency.format_minor(before),
            balance_after: entry.currency.format_minor(after),
            description: entry.description.clone(),
            reference_id: entry.memo.reference.as_ref().map(ToString::to_string),
            related_wallet_id: (!entry.counterparty.starts_with('@')).then(|| entry.counterparty.clone()),
            metadata: metadata(&entry.memo),
            correlation_id: entry.memo.correlation_id.as_ref().map(|id| id.as_str().to_owned()),
            transaction_id: entry.transaction_id.to_string(),
            created_at: time(entry.at),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
pub(crate) struct LedgerEntryJson {
    wallet_id: String,
    transaction_id: String,
    version: u64,
    #[serde(rename = "type")]
    entry_type: String,
    #[schema(value_type = String, example = "credit")]
    direction: Direction,
    amount: String,
    balance_after: String,
    #[schema(value_type = String)]
    currency: &'static str,
    counterparty: String,
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference_id: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
    created_at: String,
}

impl LedgerEntryJson {
    pub(crate) fn of(entry: &LedgerEntry) -> LedgerEntryJson {
        LedgerEntryJson {
            wallet_id: entry.wallet_id.to_string(),
            transaction_id: entry.transaction_id.to_string(),
            version: entry.version,
            entry_type: entry.entry_type.clone(),
            direction: entry.direction,
            amount: entry.currency.format_minor(i128::from(entry.amount)),
            balance_after: entry.currency.format_minor(i128::from(entry.balance_after)),
            currency: entry.currency.code(),
            counterparty: entry.counterparty.clone(),
            description: entry.description.clone(),
            reference_id: entry.memo.reference.as_ref().map(ToString::to_string),
            metadata: metadata(&entry.memo),
            created_at: time(entry.at),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(utoipa::ToSchema)]
pub(crate) struct BalanceJson {
    wallet_id: String,
    version: u64,
    #[schema(value_type = String)]
    currency: &'static str,
    balance: String,
    held_balance: String,
    at: String,
}

impl BalanceJson {
    /// The wallet's balances right after `event`.
    pub(crate) fn after(event: &Event) -> BalanceJson {
        BalanceJson {
            wallet_id: event.wallet_id.to_string(),
            version: event.version,
            currency: event.currency.code(),
            balance: event.currency.format_minor(i128::from(event.balance_after)),
            held_balance: event.currency.format_minor(i128::from(event.held_after)),
            at: time(event.at),
        }
    }
}

/// `GET /ledger/wallet/{id}/summary`, in the original service's shape.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SummaryJson {
    wallet_id: String,
    #[schema(value_type = Option<String>)]
    currency: Option<&'static str>,
    /// Everything credited over the wallet's life (its opening balance too), as a decimal string.
    total_credits: String,
    /// Everything debited over the wallet's life.
    total_debits: String,
    /// Ledger entries: movements of money.
    transaction_count: u64,
    /// The newest entry, or null before the first.
    last_transaction: Option<TransactionEntryJson>,
}

impl SummaryJson {
    pub(crate) fn of(
        wallet_id: &wallex_engine::WalletId,
        summary: Option<&WalletSummary>,
        last: Option<&LedgerEntry>,
    ) -> SummaryJson {
        let money = |minor: u64| summary.map_or_else(|| "0".to_owned(), |s| s.currency.format_minor(i128::from(minor)));
        SummaryJson {
            wallet_id: wallet_id.to_string(),
            currency: summary.map(|summary| summary.currency.code()),
            total_credits: money(summary.map_or(0, |summary| summary.total_credits)),
            total_debits: money(summary.map_or(0, |summary| summary.total_debits)),
            transaction_count: summary.map_or(0, |summary| summary.transaction_count),
            last_transaction: last.map(TransactionEntryJson::of),
        }
    }
}

/// `GET /ledger/reference/{referenceId}`: every ledger entry of the reference's transactions.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReferenceJson {
    pub(crate) reference_id: String,
    pub(crate) count: usize,
    pub(crate) transactions: Vec<TransactionEntryJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ReferenceQuery {
    pub(crate) limit: Option<usize>,
    #[serde(default, deserialize_with = "optional_version")]
    pub(crate) after: Option<u64>,
}
