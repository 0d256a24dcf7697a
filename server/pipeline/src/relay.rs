//! The outbox relay: committed events to the bus, in commit order, at least once.
//!
//! Woken by every commit (and by a fallback tick, in case a wake-up is missed or the bus was down),
//! it reads unpublished outbox messages in commit order, publishes them keyed by wallet id, and marks
//! published only the prefix the broker acknowledged. A message after an unacknowledged one is
//! published again next time even if the broker took it: consumers skip the duplicate by version.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::ports::{Bus, BusMessage, Clock, EventStore, OutboxPosition};
#[cfg(madsim)]
use wallex_engine::planted::{Bug, is_planted as planted};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Most messages read and published per round.
    pub batch: usize,
    /// Fallback wake-up when no commit notifies, in milliseconds.
    pub idle_tick_ms: u64,
    /// Pause after a failed publish or store call, in milliseconds.
    pub retry_backoff_ms: u64,
    /// Most time between two marks of the published position, in milliseconds. Marking is a
    /// durable write; once per round it doubled the store's transactions. A restart republishes
    /// what was acknowledged but not yet marked (at most this long's worth), which consumers skip.
    pub mark_interval_ms: u64,
}

/// Messages read and published per round, by default.
pub const DEFAULT_BATCH: usize = 4_096;

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig { batch: DEFAULT_BATCH, idle_tick_ms: 250, retry_backoff_ms: 100, mark_interval_ms: 50 }
    }
}

impl RelayConfig {
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        if self.batch == 0 {
            return Err(crate::ConfigError::new("pipeline.relay.batch", "must be at least 1"));
        }
        if self.idle_tick_ms == 0 {
            return Err(crate::ConfigError::new("pipeline.relay.idle_tick_ms", "must be at least 1"));
        }
        Ok(())
    }
}

/// What the relay has done, for health and metrics.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub published: AtomicU64,
    pub publish_failures: AtomicU64,
    /// Commit-to-acknowledgement latency of the last acknowledged message, in microseconds.
    pub last_ack_latency_us: AtomicU64,
}

/// The relay's bookkeeping: how far the bus has acknowledged (`published`, where the next read
/// starts) and how far the store has marked (`marked`, where a restart resumes). Both only move
/// forward, and nothing is marked that the bus has not acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayCursor {
    published: Option<OutboxPosition>,
    marked: Option<OutboxPosition>,
}

impl RelayCursor {
    /// Where the next outbox read starts after (from the beginning when `None`).
    pub fn published(&self) -> Option<OutboxPosition> {
        self.published
    }

    /// The position the store should mark, if it is behind the bus.
    pub fn to_mark(&self) -> Option<OutboxPosition> {
        self.published.filter(|_| self.published != self.marked)
    }

    /// The bus acknowledged every message through `through`, in commit order.
    pub fn acknowledged(&mut self, through: OutboxPosition) {
        assert!(Some(through) > self.published, "the relay cursor never moves back (or stands still on news)");
        self.published = Some(through);
    }

    /// The store marked every message through `through` published.
    pub fn marked(&mut self, through: OutboxPosition) {
        assert!(Some(through) <= self.published, "nothing is marked before the bus acknowledged it");
        assert!(Some(through) >= self.marked, "the marked position never moves back");
        self.marked = Some(through);
    }
}

pub async fn run_relay<S: EventStore, B: Bus, C: Clock>(
    store: S,
    bus: B,
    clock: C,
    config: RelayConfig,
    committed: Arc<Notify>,
    stats: Arc<RelayStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut cursor = RelayCursor::default();
    let backoff = Duration::from_millis(config.retry_backoff_ms);
    let mark_interval = Duration::from_millis(config.mark_interval_ms);
    let mut last_mark = tokio::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            if let Some(through) = cursor.to_mark() {
                let _ = store.mark_published(through).await;
            }
            return;
        }
        if let Some(through) = cursor.to_mark().filter(|_| last_mark.elapsed() >= mark_interval) {
            // Also retries a mark that failed, even if nothing new is committed, so the backlog
            // the store reports drains (a restart would otherwise republish these).
            last_mark = tokio::time::Instant::now();
            match store.mark_published(through).await {
                Ok(()) => cursor.marked(through),
                Err(error) => tracing::warn!(%error, "relay could not mark messages published"),
            }
        }
        let messages = match store.outbox_after(cursor.published(), config.batch).await {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%error, "relay cannot read the outbox");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        if messages.is_empty() {
            tokio::select! {
                // Polled in order, not at random: the simulator replays a seed exactly.
                biased;
                () = committed.notified() => {}
                // A position still to mark wakes the relay when its interval is up.
                () = tokio::time::sleep(if cursor.to_mark().is_none() {
                    Duration::from_millis(config.idle_tick_ms)
                } else {
                    mark_interval.saturating_sub(last_mark.elapsed())
                }) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let outgoing: Vec<BusMessage> = messages
            .iter()
            .map(|message| BusMessage {
                key: message.key.to_string(),
                payload: message.payload.clone(),
                headers: vec![("transaction-id".to_owned(), message.position.transaction_id.to_string())],
            })
            .collect();
        #[cfg(madsim)]
        if planted(Bug::PublishedBeforeAck) {
            // Bypasses the cursor's own checks, which would stop this bug before the checkers do.
            let last = messages.last().expect("not empty").position;
            cursor = RelayCursor { published: Some(last), marked: Some(last) };
            let _ = store.mark_published(last).await;
            let _ = bus.publish(&outgoing).await;
            continue;
        }
        // How long the bus takes to acknowledge one round: with rounds back to back, most of the
        // commit → acknowledgement latency.
        let publish_started = tokio::time::Instant::now();
        let acknowledged = bus.publish(&outgoing).await;
        metrics::histogram!("wallex_relay_publish_seconds").record(publish_started.elapsed().as_secs_f64());
        let prefix = acknowledged.iter().take_while(|ack| ack.is_ok()).count();
        let now = clock.now().unix_micros();
        for message in &messages[..prefix] {
            // Microseconds as f64 seconds: a latency measurement, not money.
            let latency_us = now.saturating_sub(message.committed_at.unix_micros());
            metrics::histogram!("wallex_commit_to_ack_seconds").record(latency_us as f64 / 1e6);
        }
        metrics::counter!("wallex_relay_published_total").increment(prefix as u64);
        if let Some(last) = messages[..prefix].last() {
            stats.published.fetch_add(prefix as u64, Ordering::Relaxed);
            stats.last_ack_latency_us.store(now.saturating_sub(last.committed_at.unix_micros()), Ordering::Relaxed);
            // Published is published: move on; the position is marked at the top of a round once
            // the mark interval is up (a failed mark is retried there, and a restart republishes,
            // which consumers tolerate).
            cursor.acknowledged(last.position);
        }
        #[cfg(madsim)]
        if planted(Bug::OutboxCursorSkips) {
            cursor.published = messages.last().map(|message| message.position);
        }
        if prefix < messages.len() {
            metrics::counter!("wallex_relay_publish_failures_total").increment(1);
            stats.publish_failures.fetch_add(1, Ordering::Relaxed);
            if let Some(Err(error)) = acknowledged.get(prefix) {
                tracing::warn!(%error, unacknowledged = messages.len() - prefix, "broker did not acknowledge; retrying");
            }
            tokio::time::sleep(backoff).await;
        }
    }
}
