//! Projectors: bus deliveries into the read model and the ledger entries.
//!
//! Each projection is its own consumer group. A delivered event is applied only if it is its
//! wallet's next version, in the same store transaction as the projection's per-wallet checkpoint
//! (the store checks the version under the row it updates): a redelivered or duplicated event is
//! skipped, and an event that arrives before an earlier version is held back until the gap fills.
//! Offsets are committed to the bus only after the projection transaction, and never past a held
//! event, so a crash at any point redelivers instead of losing. A message that cannot be decoded
//! goes to the dead-letter topic with the reason in its headers and is counted; it is never
//! silently dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use wallex_engine::{Event, WalletId};

use crate::codec::decode_event;
use crate::ports::{Applied, Bus, BusMessage, Clock, Consumer, Delivery, Projection, ProjectionStore};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectorConfig {
    /// Most deliveries taken per poll.
    pub batch: usize,
    /// How long one poll waits for messages, in milliseconds.
    pub poll_timeout_ms: u64,
    /// Pause after a failed store or bus call, in milliseconds.
    pub retry_backoff_ms: u64,
    /// Most events held back waiting for a gap to fill; beyond it the projector stops consuming
    /// (it does not drop) until the gap fills.
    pub max_held: usize,
    /// Least time between the starts of two store transactions, in milliseconds: what arrives
    /// meanwhile joins the next one. Under load this trades tens of milliseconds of projection lag
    /// for far fewer, larger transactions (and fetches from the broker); docs/PERFORMANCE.md has
    /// the measurements behind the default.
    pub linger_ms: u64,
}

impl Default for ProjectorConfig {
    fn default() -> ProjectorConfig {
        ProjectorConfig { batch: 4_096, poll_timeout_ms: 100, retry_backoff_ms: 100, max_held: 100_000, linger_ms: 50 }
    }
}

impl ProjectorConfig {
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        if self.batch == 0 {
            return Err(crate::ConfigError::new("pipeline.projector.batch", "must be at least 1"));
        }
        if self.max_held < self.batch {
            return Err(crate::ConfigError::new(
                "pipeline.projector.max_held",
                format!("must be at least pipeline.projector.batch ({}): one poll may hold a whole batch", self.batch),
            ));
        }
        Ok(())
    }
}

/// What a projector has done, for health and metrics.
#[derive(Debug, Default)]
pub struct ProjectorStats {
    pub projected: AtomicU64,
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub held: AtomicU64,
}

/// An event waiting for an earlier version, with where it came from.
#[derive(Debug)]
struct HeldEvent {
    event: Event,
    partition: u32,
    offset: u64,
}

/// A projector's bookkeeping between the bus and the store: the events held for a gap, how far
/// each partition was delivered, and the offsets decided but not yet acknowledged by the bus. No
/// offset is ever committed past a held event, so a restart redelivers every event not projected.
#[derive(Debug, Default)]
pub struct Offsets {
    held: BTreeMap<(WalletId, u64), HeldEvent>,
    /// Per partition, the offset after the last message delivered so far (over every poll): once
    /// a held event is applied, its partition's offset may move up to here even if no new message
    /// arrives on it.
    delivered: BTreeMap<u32, u64>,
    /// Partitions whose offset may have moved since the last `offsets_to_commit`.
    touched: BTreeSet<u32>,
    /// Offsets decided but not yet acknowledged by the bus: retried every round (an idle one
    /// too), or a partition with no new messages would keep its lag and redeliver after a restart.
    uncommitted: BTreeMap<u32, u64>,
}

impl Offsets {
    /// A message arrived (decoded or not: a dead-lettered one is done with once delivered).
    pub fn delivered(&mut self, partition: u32, offset: u64) {
        self.touched.insert(partition);
        let next = self.delivered.entry(partition).or_insert(0);
        *next = (*next).max(offset + 1);
    }

    /// Holds `event` until it is projected (or found to be a duplicate). Returns `false` if a copy
    /// of it was held already (a duplicate delivery; the later copy is kept).
    pub fn hold(&mut self, event: Event, partition: u32, offset: u64) -> bool {
        assert!(self.delivered.get(&partition).is_some_and(|next| offset < *next), "held before it was delivered");
        self.held.insert((event.wallet_id, event.version), HeldEvent { event, partition, offset }).is_none()
    }

    /// Every held event, in wallet and version order: what the next projection batch tries.
    pub fn held_events(&self) -> Vec<Event> {
        self.held.values().map(|item| item.event.clone()).collect()
    }

    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// The projection has `event` (applied now, or before): it is no longer held.
    pub fn settled(&mut self, event: &Event) {
        if let Some(item) = self.held.remove(&(event.wallet_id, event.version)) {
            self.touched.insert(item.partition);
        }
    }

    /// The offsets to commit now: every touched partition's delivered offset, held back to the
    /// first held event of the partition, with whatever an earlier commit left unacknowledged.
    pub fn offsets_to_commit(&mut self) -> Vec<(u32, u64)> {
        let mut next: BTreeMap<u32, u64> = std::mem::take(&mut self.touched)
            .into_iter()
            .map(|partition| (partition, self.delivered[&partition]))
            .collect();
        for item in self.held.values() {
            next.entry(item.partition).and_modify(|offset| *offset = (*offset).min(item.offset));
        }
        self.uncommitted.extend(next);
        for item in self.held.values() {
            let committed = self.uncommitted.get(&item.partition).copied().unwrap_or(0);
            assert!(committed <= item.offset, "an offset committed past a held event");
        }
        self.uncommitted.iter().map(|(partition, offset)| (*partition, *offset)).collect()
    }

    /// The bus acknowledged the offsets last returned.
    pub fn committed(&mut self) {
        self.uncommitted.clear();
    }
}

pub async fn run_projector<S: ProjectionStore, B: Bus, C: Clock>(
    projection: Projection,
    store: S,
    bus: B,
    clock: C,
    config: ProjectorConfig,
    stats: Arc<ProjectorStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let backoff = Duration::from_millis(config.retry_backoff_ms);
    let mut consumer = loop {
        match bus.consumer(projection.group()).await {
            Ok(consumer) => break consumer,
            Err(error) => {
                tracing::warn!(group = projection.group(), %error, "cannot join the consumer group; retrying");
                if *shutdown.borrow() {
                    return;
                }
                tokio::time::sleep(backoff).await;
            }
        }
    };
    let mut offsets = Offsets::default();
    let linger = Duration::from_millis(config.linger_ms);
    let mut last_apply: Option<tokio::time::Instant> = None;
    while !*shutdown.borrow() {
        if let Some(wait) = last_apply.map(|at| linger.saturating_sub(at.elapsed())).filter(|wait| !wait.is_zero()) {
            tokio::select! {
                // Polled in order, not at random: the simulator replays a seed exactly.
                biased;
                // Stopping: go on to the poll, which returns, and the loop's check ends it.
                _ = shutdown.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        if offsets.held_count() >= config.max_held {
            let held = offsets.held_count();
            tracing::error!(group = projection.group(), held, "events held for a gap that does not fill");
            tokio::select! {
                // Polled in order, not at random: the simulator replays a seed exactly.
                biased;
                () = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let deliveries = match consumer.poll(config.batch, config.poll_timeout_ms).await {
            Ok(deliveries) => deliveries,
            Err(error) => {
                tracing::warn!(group = projection.group(), %error, "poll failed");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        if deliveries.is_empty() {
            commit_offsets(&mut consumer, projection, &mut offsets).await;
            continue;
        }
        // Decode; the undecodable go to the dead-letter topic (retried until it acknowledges).
        for delivery in deliveries {
            offsets.delivered(delivery.partition, delivery.offset);
            match decode_event(&delivery.payload) {
                Ok(event) => {
                    if !offsets.hold(event, delivery.partition, delivery.offset) {
                        metrics::counter!("wallex_projection_duplicates_total", "group" => projection.group())
                            .increment(1);
                        stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(error) => dead_letter(&bus, projection, &delivery, &error.to_string(), &stats, backoff).await,
            }
        }
        // Apply the new events together with any held ones, until nothing more applies.
        last_apply = Some(tokio::time::Instant::now());
        loop {
            let batch = offsets.held_events();
            let verdicts = loop {
                match store.project(projection, &batch).await {
                    Ok(verdicts) => break verdicts,
                    Err(error) => {
                        tracing::warn!(group = projection.group(), %error, "projection failed; retrying");
                        tokio::time::sleep(backoff).await;
                    }
                }
            };
            let mut progressed = false;
            let now = clock.now().unix_micros();
            for (event, verdict) in batch.iter().zip(verdicts) {
                match verdict {
                    Applied::Projected => {
                        metrics::counter!("wallex_projected_total", "group" => projection.group()).increment(1);
                        // From the ledger's decision to the read side having it; microseconds as
                        // f64 seconds: a latency measurement, not money.
                        let lag_us = now.saturating_sub(event.at.unix_micros());
                        metrics::histogram!("wallex_projection_lag_seconds", "group" => projection.group())
                            .record(lag_us as f64 / 1e6);
                        stats.projected.fetch_add(1, Ordering::Relaxed);
                        offsets.settled(event);
                        progressed = true;
                    }
                    Applied::Duplicate => {
                        metrics::counter!("wallex_projection_duplicates_total", "group" => projection.group())
                            .increment(1);
                        stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        offsets.settled(event);
                    }
                    Applied::Gap { .. } => {}
                }
            }
            // Events of one wallet are in version order in the batch, so one pass applies every
            // contiguous run; another pass is needed only if a gap filled mid-way.
            if !progressed || offsets.held_count() == 0 {
                break;
            }
        }
        let held = offsets.held_count();
        stats.held.store(held as u64, Ordering::Relaxed);
        metrics::gauge!("wallex_projection_held_events", "group" => projection.group()).set(held as f64);
        commit_offsets(&mut consumer, projection, &mut offsets).await;
    }
}

/// Commits what `offsets` says is due; keeps it to retry if the bus does not acknowledge.
async fn commit_offsets<C: Consumer>(consumer: &mut C, projection: Projection, offsets: &mut Offsets) {
    let due = offsets.offsets_to_commit();
    if due.is_empty() {
        return;
    }
    match consumer.commit(&due).await {
        Ok(()) => offsets.committed(),
        Err(error) => tracing::warn!(group = projection.group(), %error, "offset commit failed; retrying next round"),
    }
}

async fn dead_letter<B: Bus>(
    bus: &B,
    projection: Projection,
    delivery: &Delivery,
    reason: &str,
    stats: &ProjectorStats,
    backoff: Duration,
) {
    tracing::warn!(
        group = projection.group(),
        partition = delivery.partition,
        offset = delivery.offset,
        reason,
        "poison message to the dead-letter topic"
    );
    let message = BusMessage {
        key: delivery.key.clone(),
        payload: delivery.payload.clone(),
        headers: vec![
            ("dlq-reason".to_owned(), reason.to_owned()),
            ("dlq-group".to_owned(), projection.group().to_owned()),
            ("dlq-partition".to_owned(), delivery.partition.to_string()),
            ("dlq-offset".to_owned(), delivery.offset.to_string()),
        ],
    };
    while let Err(error) = bus.publish_dead_letter(message.clone()).await {
        tracing::warn!(%error, "dead-letter publish failed; retrying");
        tokio::time::sleep(backoff).await;
    }
    stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("wallex_dead_lettered_total", "group" => projection.group()).increment(1);
}
