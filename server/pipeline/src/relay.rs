//! The outbox relay: committed events to the bus, in commit order per wallet, at least once.
//!
//! Woken by every commit (and by a fallback tick, in case a wake-up is missed), a reader takes
//! unpublished outbox messages in commit order and hands each to the *lane* of its partition
//! (`Bus::partition`, so one wallet's events share a lane and keep their order). Each lane
//! publishes its messages in order and retries, after a pause, only the tail the broker did not
//! acknowledge; lanes run independently, so a partition whose leader is gone stalls its own wallets
//! and no one else's, and what the broker acknowledged is never sent again. The reader marks
//! published the longest prefix of the outbox every message of which is acknowledged
//! ([`RelayCursor`]), and reads at most `window` messages past it, which bounds both the memory a
//! stalled lane holds and what a restart republishes (consumers skip duplicates by version).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::ports::{Bus, BusMessage, Clock, EventStore, OutboxMessage, OutboxPosition};
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
    /// Most messages read from the outbox past the marked prefix (the first message not yet
    /// acknowledged, and everything after it). While one partition is down, the others' messages
    /// flow until this many wait behind its first unacknowledged one; it bounds what the relay
    /// holds in memory and what a restart republishes.
    pub window: usize,
}

/// Messages read and published per round, by default.
pub const DEFAULT_BATCH: usize = 4_096;

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            batch: DEFAULT_BATCH,
            idle_tick_ms: 250,
            retry_backoff_ms: 100,
            mark_interval_ms: 50,
            window: DEFAULT_WINDOW,
        }
    }
}

/// Messages read past the marked prefix, by default: sixteen rounds.
pub const DEFAULT_WINDOW: usize = 16 * DEFAULT_BATCH;

impl RelayConfig {
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        if self.batch == 0 {
            return Err(crate::ConfigError::new("pipeline.relay.batch", "must be at least 1"));
        }
        if self.idle_tick_ms == 0 {
            return Err(crate::ConfigError::new("pipeline.relay.idle_tick_ms", "must be at least 1"));
        }
        if self.window < self.batch {
            return Err(crate::ConfigError::new(
                "pipeline.relay.window",
                format!("must hold at least one round (pipeline.relay.batch = {})", self.batch),
            ));
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

/// The relay's bookkeeping: what was read from the outbox (and handed to a lane), which of it the
/// bus acknowledged, the longest acknowledged prefix, and how far the store has marked. Reads and
/// marks only move forward, every acknowledgement is of a message read and not yet acknowledged,
/// and nothing is marked that is not in the acknowledged prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayCursor {
    /// Messages read after the acknowledged prefix: whether each is acknowledged.
    window: BTreeMap<OutboxPosition, bool>,
    read: Option<OutboxPosition>,
    /// Every message up to and including this one is acknowledged.
    acknowledged: Option<OutboxPosition>,
    marked: Option<OutboxPosition>,
}

impl RelayCursor {
    /// Where the next outbox read starts after (from the beginning when `None`).
    pub fn read_through(&self) -> Option<OutboxPosition> {
        self.read
    }

    /// Messages read and not all acknowledged before them: the first unacknowledged one and
    /// everything read after it.
    pub fn in_window(&self) -> usize {
        self.window.len()
    }

    /// The end of the acknowledged prefix.
    pub fn acknowledged_through(&self) -> Option<OutboxPosition> {
        self.acknowledged
    }

    /// The position the store should mark, if it is behind the acknowledged prefix.
    pub fn to_mark(&self) -> Option<OutboxPosition> {
        self.acknowledged.filter(|_| self.acknowledged != self.marked)
    }

    /// `position`, the next message in commit order, was read and handed to its lane.
    pub fn read(&mut self, position: OutboxPosition) {
        assert!(Some(position) > self.read, "the outbox is read forward, each message once");
        self.read = Some(position);
        self.window.insert(position, false);
    }

    /// The bus acknowledged the message at `position`; the prefix grows over every message now
    /// acknowledged in a row.
    pub fn acknowledge(&mut self, position: OutboxPosition) {
        let acknowledged =
            self.window.get_mut(&position).expect("an acknowledgement of a message read and not yet acknowledged");
        assert!(!*acknowledged, "a message acknowledged twice");
        *acknowledged = true;
        while let Some(entry) = self.window.first_entry() {
            if !*entry.get() {
                break;
            }
            self.acknowledged = Some(*entry.key());
            entry.remove();
        }
    }

    /// The store marked every message through `through` published.
    pub fn marked(&mut self, through: OutboxPosition) {
        assert!(Some(through) <= self.acknowledged, "nothing is marked before the bus acknowledged it");
        assert!(Some(through) >= self.marked, "the marked position never moves back");
        self.marked = Some(through);
    }
}

/// One partition's publisher: its queue and its task.
#[derive(Debug)]
struct Lane {
    queue: mpsc::UnboundedSender<OutboxMessage>,
    task: JoinHandle<()>,
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
    let mut lanes: BTreeMap<u32, Lane> = BTreeMap::new();
    let (acknowledgements, mut acknowledged) = mpsc::unbounded_channel::<OutboxPosition>();
    let backoff = Duration::from_millis(config.retry_backoff_ms);
    let mark_interval = Duration::from_millis(config.mark_interval_ms);
    let mut last_mark = tokio::time::Instant::now();
    // The last read came back short: the outbox held nothing more then, so the next read waits
    // for a commit's notification (a permit is kept if it comes while the relay is busy) or the
    // idle tick. Reading again at once cost a store round trip per round that found nothing.
    let mut caught_up = false;
    loop {
        while let Ok(position) = acknowledged.try_recv() {
            cursor.acknowledge(position);
        }
        if *shutdown.borrow() {
            for lane in lanes.values() {
                lane.task.abort();
            }
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
        let room = config.window.saturating_sub(cursor.in_window()).min(config.batch);
        let messages = if room == 0 || caught_up {
            // A lane is stalled and the window is full: wait for acknowledgements. Or nothing was
            // left to read: wait for a commit.
            Vec::new()
        } else {
            match store.outbox_after(cursor.read_through(), room).await {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, "relay cannot read the outbox");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
        };
        if messages.is_empty() {
            let marking = cursor.to_mark().is_some();
            tokio::select! {
                // Polled in order, not at random: the simulator replays a seed exactly.
                biased;
                Some(position) = acknowledged.recv() => cursor.acknowledge(position),
                () = committed.notified(), if room > 0 => caught_up = false,
                // A position still to mark wakes the relay when its interval is up; otherwise the
                // idle tick reads again in case a notification was missed.
                () = tokio::time::sleep(if marking {
                    mark_interval.saturating_sub(last_mark.elapsed())
                } else {
                    Duration::from_millis(config.idle_tick_ms)
                }) => caught_up &= marking,
                _ = shutdown.changed() => {}
            }
            continue;
        }
        caught_up = messages.len() < room;
        #[cfg(madsim)]
        if planted(Bug::PublishedBeforeAck) {
            // Bypasses the cursor's own checks, which would stop this bug before the checkers do.
            let last = messages.last().expect("not empty").position;
            cursor = RelayCursor {
                read: Some(last),
                acknowledged: Some(last),
                marked: Some(last),
                ..RelayCursor::default()
            };
            let _ = store.mark_published(last).await;
            let outgoing: Vec<BusMessage> = messages.iter().map(bus_message).collect();
            let _ = bus.publish(&outgoing).await;
            continue;
        }
        for message in messages {
            cursor.read(message.position);
            let partition = bus.partition(message.key.as_str());
            let lane = lanes.entry(partition).or_insert_with(|| {
                let (queue, queued) = mpsc::unbounded_channel();
                let task = tokio::spawn(run_lane(
                    partition,
                    bus.clone(),
                    clock.clone(),
                    config,
                    queued,
                    acknowledgements.clone(),
                    stats.clone(),
                ));
                Lane { queue, task }
            });
            lane.queue.send(message).expect("a lane runs until the relay stops");
        }
    }
}

fn bus_message(message: &OutboxMessage) -> BusMessage {
    BusMessage {
        key: message.key.to_string(),
        payload: message.payload.clone(),
        headers: vec![("transaction-id".to_owned(), message.position.transaction_id.to_string())],
    }
}

/// Publishes one partition's messages in the order they come, at most `batch` per call; after a
/// failure, waits and sends again only the tail the broker did not acknowledge.
async fn run_lane<B: Bus, C: Clock>(
    partition: u32,
    bus: B,
    clock: C,
    config: RelayConfig,
    mut queued: mpsc::UnboundedReceiver<OutboxMessage>,
    acknowledgements: mpsc::UnboundedSender<OutboxPosition>,
    stats: Arc<RelayStats>,
) {
    let backoff = Duration::from_millis(config.retry_backoff_ms);
    let mut pending: VecDeque<OutboxMessage> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match queued.recv().await {
                Some(message) => pending.push_back(message),
                None => return,
            }
        }
        while pending.len() < config.batch {
            match queued.try_recv() {
                Ok(message) => pending.push_back(message),
                Err(_) => break,
            }
        }
        let outgoing: Vec<BusMessage> = pending.iter().take(config.batch).map(bus_message).collect();
        // How long the bus takes to acknowledge one call: with calls back to back, most of the
        // commit → acknowledgement latency.
        let publish_started = tokio::time::Instant::now();
        let results = bus.publish(&outgoing).await;
        metrics::histogram!("wallex_relay_publish_seconds").record(publish_started.elapsed().as_secs_f64());
        #[allow(unused_mut)]
        let mut prefix = results.iter().take_while(|result| result.is_ok()).count();
        #[cfg(madsim)]
        if planted(Bug::OutboxCursorSkips) {
            // Treats what the broker refused as published: those messages are never sent again.
            prefix = outgoing.len();
        }
        let now = clock.now().unix_micros();
        let commit_to_ack = metrics::histogram!("wallex_commit_to_ack_seconds");
        for message in pending.drain(..prefix) {
            // Microseconds as f64 seconds: a latency measurement, not money.
            let latency_us = now.saturating_sub(message.committed_at.unix_micros());
            commit_to_ack.record(latency_us as f64 / 1e6);
            stats.last_ack_latency_us.store(latency_us, Ordering::Relaxed);
            if acknowledgements.send(message.position).is_err() {
                return; // The relay stopped.
            }
        }
        metrics::counter!("wallex_relay_published_total").increment(prefix as u64);
        stats.published.fetch_add(prefix as u64, Ordering::Relaxed);
        if prefix < outgoing.len() {
            #[cfg(madsim)]
            if planted(Bug::LaneStallsOnFailure) {
                std::future::pending::<()>().await;
            }
            metrics::counter!("wallex_relay_publish_failures_total").increment(1);
            stats.publish_failures.fetch_add(1, Ordering::Relaxed);
            if let Some(Err(error)) = results.get(prefix) {
                tracing::warn!(partition, %error, unacknowledged = pending.len(), "broker did not acknowledge; retrying this partition");
            }
            tokio::time::sleep(backoff).await;
        }
    }
}
