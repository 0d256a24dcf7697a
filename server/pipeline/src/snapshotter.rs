//! The snapshotter: snapshots of the ledger, taken off the writer's path.
//!
//! A snapshot of a million wallets takes about a hundred milliseconds to encode and a second to
//! store; inside the single writer that was a stall of every command. Instead, this task keeps a
//! replica of the ledger, follows the journal the writer commits (by polling, after the writer's
//! committed position moves), replays it with the same `Ledger::replay` recovery uses, and saves a
//! snapshot every `snapshot_every_events` events. The replica costs a second copy of the ledger's
//! memory; the writer never waits for a snapshot. A snapshot is of the store's own journal, so it
//! is right whatever the writer does meanwhile.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wallex_engine::Ledger;

use crate::WriterConfig;
use crate::ports::{EventStore, StoredSnapshot};
use crate::writer::WriterHealth;

/// How often the snapshotter looks for newly committed transactions.
const POLL: Duration = Duration::from_millis(200);

pub async fn run_snapshotter<S: EventStore>(
    store: S,
    mut ledger: Ledger,
    config: WriterConfig,
    writer: Arc<WriterHealth>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut since_snapshot = 0u64;
    loop {
        tokio::select! {
            // Polled in order, not at random: the simulator replays a seed exactly.
            biased;
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        while ledger.last_transaction_id() < writer.committed_through() {
            let entries = match store.journal(ledger.last_transaction_id(), config.journal_page).await {
                Ok(entries) if entries.is_empty() => break,
                Ok(entries) => entries,
                Err(error) => {
                    tracing::warn!(%error, "snapshotter cannot read the journal; retrying");
                    break;
                }
            };
            for entry in &entries {
                if let Err(error) = ledger.replay(&entry.record, &entry.events) {
                    // The writer's own recovery would meet the same journal and stop the process.
                    tracing::error!(%error, transaction = %entry.record.transaction_id, "snapshotter cannot replay the journal; it stops");
                    return;
                }
                since_snapshot += entry.events.len() as u64;
            }
        }
        if since_snapshot >= config.snapshot_every_events {
            let started = tokio::time::Instant::now();
            let snapshot =
                StoredSnapshot { transaction_id: ledger.last_transaction_id(), bytes: ledger.encode_snapshot() };
            match store.save_snapshot(&snapshot).await {
                Ok(()) => {
                    since_snapshot = 0;
                    metrics::histogram!("wallex_snapshot_seconds").record(started.elapsed().as_secs_f64());
                    tracing::debug!(transaction = %snapshot.transaction_id, bytes = snapshot.bytes.len(), "snapshot saved");
                }
                Err(error) => tracing::warn!(%error, "snapshot not saved; recovery replays a longer journal"),
            }
        }
    }
}
