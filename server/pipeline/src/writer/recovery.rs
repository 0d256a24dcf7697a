//! Recovery: the ledger rebuilt from the store, the latest snapshot then every journal entry after
//! it. [`Recovery`] decides and never awaits; [`recover`] drives it against a store. The writer's
//! core embeds the same `Recovery` to reload after a failed commit.

use wallex_engine::{Ledger, TransactionId};

use crate::ports::{EventStore, JournalEntry, StoreError, StoredSnapshot};
#[cfg(madsim)]
use wallex_engine::planted::{Bug, is_planted as planted};

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored journal or snapshot cannot be replayed: never start on it.
    #[error("stored state cannot be replayed: {0}")]
    Corrupt(String),
}

/// What recovery needs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryStep {
    /// The latest snapshot: answer with [`Recovery::handle_snapshot`].
    LoadSnapshot,
    /// Up to `limit` journal entries after `after`: answer with [`Recovery::handle_journal`].
    ReadJournal { after: TransactionId, limit: usize },
    /// The ledger equals the store: take it with [`Recovery::into_ledger`].
    Done,
}

/// A recovery in progress.
#[derive(Debug)]
pub struct Recovery {
    config: wallex_engine::Config,
    journal_page: usize,
    state: State,
}

#[derive(Debug)]
enum State {
    Snapshot,
    Journal(Ledger),
    Done(Ledger),
}

impl Recovery {
    pub fn new(config: wallex_engine::Config, journal_page: usize) -> Recovery {
        assert!(journal_page > 0, "a journal page holds at least one entry");
        Recovery { config, journal_page, state: State::Snapshot }
    }

    pub fn poll(&self) -> RecoveryStep {
        match &self.state {
            State::Snapshot => RecoveryStep::LoadSnapshot,
            State::Journal(ledger) => {
                RecoveryStep::ReadJournal { after: ledger.last_transaction_id(), limit: self.journal_page }
            }
            State::Done(_) => RecoveryStep::Done,
        }
    }

    pub fn handle_snapshot(&mut self, snapshot: Option<StoredSnapshot>) -> Result<(), RecoveryError> {
        assert!(matches!(self.state, State::Snapshot), "a snapshot arrived that recovery did not ask for");
        let ledger = match snapshot {
            Some(snapshot) => {
                let ledger = Ledger::restore(&snapshot.bytes, self.config)
                    .map_err(|error| RecoveryError::Corrupt(error.to_string()))?;
                if ledger.last_transaction_id() != snapshot.transaction_id {
                    return Err(RecoveryError::Corrupt("snapshot labelled with another transaction".to_owned()));
                }
                ledger
            }
            None => Ledger::new(self.config),
        };
        #[cfg(madsim)]
        if planted(Bug::RecoveryForgetsJournal) && ledger.last_transaction_id() != TransactionId(0) {
            self.state = State::Done(ledger);
            return Ok(());
        }
        self.state = State::Journal(ledger);
        Ok(())
    }

    /// Applies one page of the journal; an empty page means the ledger has caught up.
    pub fn handle_journal(&mut self, entries: &[JournalEntry]) -> Result<(), RecoveryError> {
        assert!(entries.len() <= self.journal_page, "the store returned more than a page");
        // A corrupt journal is fatal, so the state left behind on an error does not matter.
        let State::Journal(mut ledger) = std::mem::replace(&mut self.state, State::Snapshot) else {
            panic!("journal entries arrived that recovery did not ask for");
        };
        for entry in entries {
            ledger.replay(&entry.record, &entry.events).map_err(|error| RecoveryError::Corrupt(error.to_string()))?;
        }
        self.state = if entries.is_empty() { State::Done(ledger) } else { State::Journal(ledger) };
        Ok(())
    }

    /// The recovered ledger. Panics unless [`Recovery::poll`] says `Done`.
    pub fn into_ledger(self) -> Ledger {
        match self.state {
            State::Done(ledger) => ledger,
            _ => panic!("recovery is not done"),
        }
    }
}

/// Rebuilds the ledger from the store: the latest snapshot, then every journal entry after it.
pub async fn recover<S: EventStore>(
    store: &S,
    config: wallex_engine::Config,
    journal_page: usize,
) -> Result<Ledger, RecoveryError> {
    let mut recovery = Recovery::new(config, journal_page);
    loop {
        match recovery.poll() {
            RecoveryStep::LoadSnapshot => recovery.handle_snapshot(store.latest_snapshot().await?)?,
            RecoveryStep::ReadJournal { after, limit } => {
                recovery.handle_journal(&store.journal(after, limit).await?)?
            }
            RecoveryStep::Done => return Ok(recovery.into_ledger()),
        }
    }
}
