//! Bugs planted on purpose, compiled only into simulator builds (`--cfg madsim`).
//!
//! The simulator's canary plants each of these, one at a time, and fails unless its checkers catch
//! every one: a harness that cannot fail proves nothing. Production builds contain none of this
//! code. The switch is per thread because the simulator runs each seed on one thread.

use std::cell::Cell;

/// A bug the simulator can plant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bug {
    /// The writer replies to a command before its group commit is durable.
    AckBeforeCommit,
    /// The relay marks messages published before the broker acknowledged them.
    PublishedBeforeAck,
    /// The projection store writes the checkpoint in one transaction and the rows in another.
    CheckpointOutsideTransaction,
    /// The writer skips the stored idempotency lookup for ids the engine has forgotten.
    IdempotencyLookupSkipped,
    /// The relay's cursor moves past messages the broker did not acknowledge, as a `bigserial`
    /// cursor moves past rows that commit out of order.
    OutboxCursorSkips,
    /// The engine lets a wallet spend one minor unit more than it has.
    OverdraftOffByOne,
    /// `ExpireHolds` releases every active hold, due or not.
    ExpiryIgnoresNow,
    /// Recovery loads the latest snapshot and forgets the journal after it.
    RecoveryForgetsJournal,
    /// Projectors never fetch a gap's missing versions from the event store.
    RepairSkipped,
    /// A projector commits its delivered offsets past events it still holds for a gap.
    OffsetsPastHeld,
    /// A projector drops an event that arrived before its predecessor instead of holding it.
    GapDropped,
    /// A relay lane whose publish failed waits forever instead of retrying: its partition stalls.
    LaneStallsOnFailure,
    /// The read model shows every wallet with nothing held.
    ReadModelHeldZero,
    /// A refused atomic group leaves the legs before the refused one applied in the ledger,
    /// though no event records them.
    GroupPartlyUndone,
    /// The store commits a batch whatever epoch it names: a writer that lost the lease (paused,
    /// cut off) still commits beside the one that took it over.
    CommitWithoutEpochCheck,
}

impl Bug {
    pub const ALL: [Bug; 15] = [
        Bug::AckBeforeCommit,
        Bug::PublishedBeforeAck,
        Bug::CheckpointOutsideTransaction,
        Bug::IdempotencyLookupSkipped,
        Bug::OutboxCursorSkips,
        Bug::OverdraftOffByOne,
        Bug::ExpiryIgnoresNow,
        Bug::RecoveryForgetsJournal,
        Bug::RepairSkipped,
        Bug::OffsetsPastHeld,
        Bug::GapDropped,
        Bug::LaneStallsOnFailure,
        Bug::ReadModelHeldZero,
        Bug::GroupPartlyUndone,
        Bug::CommitWithoutEpochCheck,
    ];

    /// The name the command line uses.
    pub const fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeCommit => "ack_before_commit",
            Bug::PublishedBeforeAck => "published_before_ack",
            Bug::CheckpointOutsideTransaction => "checkpoint_outside_transaction",
            Bug::IdempotencyLookupSkipped => "idempotency_lookup_skipped",
            Bug::OutboxCursorSkips => "outbox_cursor_skips",
            Bug::OverdraftOffByOne => "overdraft_off_by_one",
            Bug::ExpiryIgnoresNow => "expiry_ignores_now",
            Bug::RecoveryForgetsJournal => "recovery_forgets_journal",
            Bug::RepairSkipped => "repair_skipped",
            Bug::OffsetsPastHeld => "offsets_past_held",
            Bug::GapDropped => "gap_dropped",
            Bug::LaneStallsOnFailure => "lane_stalls_on_failure",
            Bug::ReadModelHeldZero => "read_model_held_zero",
            Bug::GroupPartlyUndone => "group_partly_undone",
            Bug::CommitWithoutEpochCheck => "commit_without_epoch_check",
        }
    }

    pub fn parse(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}

impl std::fmt::Display for Bug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

thread_local! {
    static PLANTED: Cell<Option<Bug>> = const { Cell::new(None) };
}

/// Plants `bug` (or none) for the current thread.
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|planted| planted.set(bug));
}

/// Whether `bug` is planted on the current thread.
pub fn is_planted(bug: Bug) -> bool {
    PLANTED.with(|planted| planted.get() == Some(bug))
}
