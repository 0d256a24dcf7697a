//! A command's outcome as an HTTP answer, shared by every POST route: the status (201 for every
//! success, as the original service answered), the body, the `Idempotent-Replayed` and
//! `Wallex-Position` headers, and the problems for a refused, conflicting or unconfirmed command.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use wallex_engine::{Amount, Currency, Event, Rejection, TransactionId, WalletId};
use wallex_pipeline::Reply;
use wallex_pipeline::ports::WalletView;

use crate::wire::{EventJson, TransactionJson, TransferJson, WalletJson, WalletOperationJson};
use crate::{AppState, Problem, Queries};

/// What a successful command's body shows besides its transaction.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Render {
    /// The wallet after the command (create, credit, debit), with `transactionId` and `events`.
    Wallet,
    /// `fromWallet` and `toWallet` after the transfer, with `transactionId` and `events`.
    Transfer,
    /// `transactionId` and `events` alone (holds), and the hold's id when it has one.
    Transaction(Option<wallex_engine::HoldId>),
}

/// What the request asked to move, for the numbers of an `insufficient_funds` answer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Requested {
    pub(crate) wallet_id: WalletId,
    pub(crate) amount: Amount,
    pub(crate) currency: Currency,
}

/// A command's answer before it becomes a response: what a single route sends, and what a batch
/// puts in each of its results.
pub(crate) struct Answer {
    pub(crate) result: Result<Rendered, Problem>,
    /// The id was seen before: this is the original answer.
    pub(crate) replayed: bool,
    /// The command's commit position (its transaction), when it has one.
    pub(crate) position: Option<TransactionId>,
}

impl Answer {
    pub(crate) fn problem(problem: Problem) -> Answer {
        Answer { result: Err(problem), replayed: false, position: None }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match &self.result {
            Ok(_) => StatusCode::CREATED,
            Err(problem) => problem.status,
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = match self.result {
            Ok(rendered) => (StatusCode::CREATED, Json(rendered)).into_response(),
            Err(problem) => problem.into_response(),
        };
        if self.replayed {
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        if let Some(position) = self.position {
            // The command's commit position: a list read with `?after=` it reflects this write.
            response.headers_mut().insert(crate::POSITION, HeaderValue::from(position.0));
        }
        response
    }
}

/// A successful command's body, its fields in their declared order.
#[derive(serde::Serialize)]
#[serde(untagged)]
pub(crate) enum Rendered {
    /// Boxed, as the transfer: a wallet makes these several times the size of a transaction.
    Wallet(Box<WalletOperationJson>),
    Transfer(Box<TransferJson>),
    Transaction(TransactionJson),
}

/// The HTTP answer to a writer reply. A replay renders exactly as the original did: a wallet's
/// balances and version come from the command's own events, and the rest of it (owner, currency,
/// overdraft limit, creation time) never changes.
pub(crate) async fn respond<S: Queries>(
    state: &AppState<S>,
    reply: Reply,
    render: Render,
    requested: Option<Requested>,
) -> Response {
    answer(state, reply, render, requested).await.into_response()
}

/// [`respond`], before it becomes a response.
pub(crate) async fn answer<S: Queries>(
    state: &AppState<S>,
    reply: Reply,
    render: Render,
    requested: Option<Requested>,
) -> Answer {
    match reply {
        Reply::Decided { record, events, replayed } => {
            let result = match record.result {
                Ok(()) => Ok(rendered(state, &events, render).await),
                Err(rejection) => Err(refusal(state, rejection, record.transaction_id, requested).await),
            };
            Answer { result, replayed, position: Some(record.transaction_id) }
        }
        other => Answer::problem(undecided(other)),
    }
}

/// The problem of a refused command, with the numbers of an `insufficient_funds`.
pub(crate) async fn refusal<S: Queries>(
    state: &AppState<S>,
    rejection: Rejection,
    transaction: TransactionId,
    requested: Option<Requested>,
) -> Problem {
    let mut problem = Problem::rejection(rejection);
    problem.transaction_id = Some(transaction.0);
    if let (Rejection::InsufficientFunds, Some(requested)) = (rejection, requested) {
        problem = with_funds(state, problem, requested, transaction).await;
    }
    problem
}

/// The problem of a reply that is not a decision: a reused or in-flight id, or a command the
/// writer could not make durable or confirm.
pub(crate) fn undecided(reply: Reply) -> Problem {
    match reply {
        Reply::Decided { record, .. } => {
            unreachable!("transaction {} was decided", record.transaction_id)
        }
        Reply::KeyReused { .. } => Problem::rejection(Rejection::IdempotencyKeyReused),
        Reply::InFlight => Problem::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_flight",
            "a request with this Idempotency-Key is still being processed",
        ),
        Reply::Unavailable(reason) => {
            tracing::warn!(%reason, "command not applied");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "not applied: the ledger could not make it durable right now; retry with the same Idempotency-Key",
            )
        }
        Reply::Unconfirmed { record, reason } => {
            tracing::warn!(%reason, transaction = %record.transaction_id, "original answer not read back");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unconfirmed",
                "this request was decided before, but its answer cannot be read right now; retry with the same \
                 Idempotency-Key for it",
            )
        }
    }
}

/// A successful command's body from its events.
pub(crate) async fn rendered<S: Queries>(state: &AppState<S>, events: &[Event], render: Render) -> Rendered {
    let transaction_id = events.first().map(|event| event.transaction_id.to_string()).unwrap_or_default();
    let events_json = events.iter().map(EventJson::of).collect();
    match render {
        Render::Wallet => {
            let wallet = match events.first() {
                Some(event) => wallet_after(state, event).await,
                None => None,
            };
            Rendered::Wallet(Box::new(WalletOperationJson { wallet, transaction_id, events: events_json }))
        }
        Render::Transfer => {
            // A transfer's events: the source's, then the destination's.
            let mut wallets = Vec::with_capacity(2);
            for event in events.iter().take(2) {
                wallets.push(wallet_after(state, event).await);
            }
            let mut wallets = wallets.into_iter();
            let (from_wallet, to_wallet) = (wallets.next().flatten(), wallets.next().flatten());
            Rendered::Transfer(Box::new(TransferJson { from_wallet, to_wallet, transaction_id, events: events_json }))
        }
        Render::Transaction(hold_id) => Rendered::Transaction(TransactionJson {
            hold_id: hold_id.map(|hold_id| hold_id.to_string()),
            transaction_id,
            events: events_json,
        }),
    }
}

/// The wallet right after `event`: its balances and version from the event, everything else from
/// the wallet as committed (none of it changes after creation). `None` only if the store cannot be
/// read right now; the answer then carries the transaction alone.
async fn wallet_after<S: Queries>(state: &AppState<S>, event: &Event) -> Option<WalletJson> {
    let facts = match WalletView::after(None, event) {
        Some(created) => created,
        None => match state.committed_wallet(&event.wallet_id).await {
            Ok(Some(wallet)) => wallet,
            Ok(None) | Err(_) => return None,
        },
    };
    WalletView::after(Some(&facts), event).map(|wallet| WalletJson::of(&wallet))
}

/// An `insufficient_funds` answer with its numbers: what was asked, what the wallet could spend
/// when the command was decided, and the currency of both. The available balance is read from the
/// wallet's journal as it stood before the refused transaction (a refusal changes nothing), so a
/// replay answers exactly the same numbers as the first answer.
async fn with_funds<S: Queries>(
    state: &AppState<S>,
    mut problem: Problem,
    requested: Requested,
    transaction: TransactionId,
) -> Problem {
    problem.members.insert("requested", serde_json::Value::String(requested.amount.format(requested.currency)));
    problem.members.insert("currency", serde_json::Value::String(requested.currency.code().to_owned()));
    if let Some(available) = available_before(state, &requested.wallet_id, transaction).await {
        problem.members.insert("available", serde_json::Value::String(requested.currency.format_minor(available)));
    }
    problem
}

/// How many events a step back through a wallet's journal reads.
const JOURNAL_STEP: u64 = 64;

/// The wallet's available balance just before `transaction`: from its newest event of an earlier
/// transaction, walking back from its committed version. `None` if the store cannot be read.
async fn available_before<S: Queries>(
    state: &AppState<S>,
    wallet_id: &WalletId,
    transaction: TransactionId,
) -> Option<i128> {
    let wallet = state.committed_wallet(wallet_id).await.ok()??;
    let mut to = wallet.version;
    while to > 0 {
        let from = to.saturating_sub(JOURNAL_STEP - 1).max(1);
        let events = state.store.wallet_events(wallet_id, from, to).await.ok()?;
        if let Some(event) = events.iter().rev().find(|event| event.transaction_id < transaction) {
            return Some(event.available_after() + i128::from(wallet.overdraft_limit));
        }
        to = from - 1;
    }
    None
}
