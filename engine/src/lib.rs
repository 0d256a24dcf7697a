//! `wallex-engine`: the pure ledger state machine of Wallex.
//!
//! The engine takes a command, the time and the state, and returns events or a rejection. It performs
//! no IO, never awaits, reads no clock, draws no random numbers and never iterates a hash map: given
//! the same commands at the same times it makes the same decisions, byte for byte, which is what
//! lets the simulator replay a failure from a seed and the server rebuild state from its journal.
//!
//! - [`Ledger::execute`] decides a [`Command`] and applies it, returning an [`Outcome`] and pushing
//!   [`Event`]s, one per touched wallet stream, all sharing one [`TransactionId`].
//! - [`Ledger::replay`] applies a recorded command and its events: replaying a journal reproduces
//!   the ledger exactly. [`Ledger::encode_snapshot`] and [`Ledger::restore`] do the same for the
//!   whole state at once.
//! - [`Ledger::check_invariants`] checks conservation, floors and hold accounting; `execute` asserts
//!   it after every command in debug and simulator builds.
//! - [`auditor`] is an independent model that predicts every outcome, for tests, fuzzing and the
//!   simulator.
//!
//! Money is integer minor units ([`Amount`]) of a [`Currency`]; decimals exist only in the parse and
//! format functions at the edge.

pub mod auditor;
mod command;
mod event;
mod ids;
mod ledger;
mod memo;
mod money;
#[cfg(madsim)]
pub mod planted;
mod rejection;
mod snapshot;
mod tables;
pub mod testkit;

pub use command::{Command, CommandKind, Description, Fingerprint, MAX_ATOMIC_LEGS};
pub use event::{Account, Event, EventKind, Posting};
pub use ids::{CommandId, HoldId, ID_MAX_BYTES, OwnerId, Timestamp, TransactionId, WalletId};
pub use ledger::{
    CommandRecord, Config, Hold, HoldStatus, InvariantViolation, Ledger, MAX_BALANCE_MINOR, MAX_EXPIRIES_PER_COMMAND,
    Outcome, ReplayError, Wallet,
};
pub use memo::{CorrelationId, Memo, Metadata, Reference};
pub use money::{Amount, Currency};
pub use rejection::{ParseError, Rejection};
pub use snapshot::{SNAPSHOT_FORMAT_VERSION, SnapshotError};
pub use tables::HashSeed;
