//! What the ledger decided: events on wallet streams, each carrying its postings.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Amount, CommandId, Currency, Description, HoldId, Memo, OwnerId, Timestamp, TransactionId, WalletId};

/// A place money can be: a wallet, or the system account through which a currency enters and leaves
/// the ledger (`@world:USD`). The system account's balance is minus the sum of all wallets in that
/// currency, so every currency always sums to zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Account {
    Wallet(WalletId),
    World(Currency),
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::Wallet(wallet_id) => write!(f, "{wallet_id}"),
            Account::World(currency) => write!(f, "@world:{currency}"),
        }
    }
}

/// One movement of money: `amount` leaves `source` and arrives at `destination`, in one currency.
/// A posting sums to zero by construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub source: Account,
    pub destination: Account,
    pub currency: Currency,
    pub amount: Amount,
}

/// One event on one wallet's stream.
///
/// All events of a transaction share its `transaction_id` and carry the same `posting` (a transfer's
/// posting appears on both streams). Every transaction in this ledger moves money along at most one
/// posting; holds reserve money without moving it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The stream: one per wallet.
    pub wallet_id: WalletId,
    /// Position in the stream: 1 for `WalletCreated`, then contiguous.
    pub version: u64,
    pub transaction_id: TransactionId,
    pub command_id: CommandId,
    pub at: Timestamp,
    pub currency: Currency,
    pub kind: EventKind,
    pub posting: Option<Posting>,
    pub description: Option<Description>,
    /// The wallet's balance after this event, in minor units (negative only within an overdraft).
    pub balance_after: i64,
    /// The sum of the wallet's active holds after this event, in minor units.
    pub held_after: u64,
    /// What the command carried besides its content (reference, metadata, correlation id); the
    /// same on every event of the transaction.
    #[serde(default, skip_serializing_if = "Memo::is_empty")]
    pub memo: Memo,
}

impl Event {
    /// The wallet's available balance after this event: balance minus holds, in minor units.
    pub fn available_after(&self) -> i128 {
        i128::from(self.balance_after) - i128::from(self.held_after)
    }
}

/// What happened to the stream's wallet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// Always version 1. The posting, if any, is the initial balance from `@world`.
    WalletCreated {
        owner_id: OwnerId,
        overdraft_limit: Amount,
    },
    Credited,
    Debited,
    TransferSent {
        destination: WalletId,
    },
    TransferReceived {
        source: WalletId,
    },
    HoldPlaced {
        hold_id: HoldId,
        amount: Amount,
        expires_at: Option<Timestamp>,
    },
    /// The hold's wallet paid `captured` (to `destination`, or out of the system) and got `released` back.
    HoldCaptured {
        hold_id: HoldId,
        captured: Amount,
        released: Amount,
        destination: Option<WalletId>,
    },
    /// The destination's side of a capture.
    CaptureReceived {
        hold_id: HoldId,
        source: WalletId,
    },
    HoldVoided {
        hold_id: HoldId,
        released: Amount,
    },
    HoldExpired {
        hold_id: HoldId,
        released: Amount,
    },
}

impl EventKind {
    /// A stable snake_case name, used as the event type in the API, the bus and the ledger entries.
    pub const fn name(&self) -> &'static str {
        match self {
            EventKind::WalletCreated { .. } => "wallet_created",
            EventKind::Credited => "credited",
            EventKind::Debited => "debited",
            EventKind::TransferSent { .. } => "transfer_sent",
            EventKind::TransferReceived { .. } => "transfer_received",
            EventKind::HoldPlaced { .. } => "hold_placed",
            EventKind::HoldCaptured { .. } => "hold_captured",
            EventKind::CaptureReceived { .. } => "capture_received",
            EventKind::HoldVoided { .. } => "hold_voided",
            EventKind::HoldExpired { .. } => "hold_expired",
        }
    }
}
