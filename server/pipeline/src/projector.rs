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
use crate::ports::{Applied, Bus, BusMessage, Clock, Consumer, Delivery, EventStore, Projection, ProjectionStore};
#[cfg(madsim)]
use wallex_engine::planted::{Bug, is_planted as planted};

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
    /// How long a gap (a wallet's version held while an earlier one has not arrived) may last
    /// before the missing versions are fetched from the event store and applied, in milliseconds.
    pub repair_after_ms: u64,
    /// How often reconciliation compares the projections' checkpoints with the journal and
    /// repairs what they lack, in milliseconds; each round checks what the writer had committed
    /// by the round before.
    pub reconcile_interval_ms: u64,
}

impl Default for ProjectorConfig {
    fn default() -> ProjectorConfig {
        ProjectorConfig {
            batch: 4_096,
            poll_timeout_ms: 100,
            retry_backoff_ms: 100,
            max_held: 100_000,
            linger_ms: 50,
            repair_after_ms: 2_000,
            reconcile_interval_ms: 60_000,
        }
    }
}

impl ProjectorConfig {
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        if self.batch == 0 {
            return Err(crate::ConfigError::new("pipeline.projector.batch", "must be at least 1"));
        }
        if self.reconcile_interval_ms == 0 {
            return Err(crate::ConfigError::new("pipeline.projector.reconcile_interval_ms", "must be at least 1"));
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
    /// Events fetched from the event store to fill a gap, and applied.
    pub repaired: AtomicU64,
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
    /// of it was held already (a duplicate delivery): the copy at the lower offset is the one held,
    /// so no offset is committed past any copy of an event not yet applied.
    pub fn hold(&mut self, event: Event, partition: u32, offset: u64) -> bool {
        assert!(self.delivered.get(&partition).is_some_and(|next| offset < *next), "held before it was delivered");
        match self.held.entry((event.wallet_id, event.version)) {
            std::collections::btree_map::Entry::Vacant(vacant) => {
                vacant.insert(HeldEvent { event, partition, offset });
                true
            }
            std::collections::btree_map::Entry::Occupied(mut held) => {
                let held = held.get_mut();
                if (partition, offset) < (held.partition, held.offset) {
                    (held.partition, held.offset) = (partition, offset);
                }
                false
            }
        }
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
        #[cfg(madsim)]
        if planted(Bug::OffsetsPastHeld) {
            // Bypasses the check below, which would stop this bug before the checkers do.
            self.uncommitted.extend(next);
            return self.uncommitted.iter().map(|(partition, offset)| (*partition, *offset)).collect();
        }
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

/// Wallets whose next version has not arrived while a later one waits, and since when: what gap
/// repair fetches from the event store once a gap has lasted `repair_after_ms`.
#[derive(Debug, Default)]
struct Gaps {
    /// Per wallet: the version the projection has, the first version held after the gap, and
    /// since when the gap has been open at that projected version.
    open: BTreeMap<WalletId, (u64, u64, tokio::time::Instant)>,
}

impl Gaps {
    /// After an apply: `current` is every wallet still waiting, with (projected, first held). A gap
    /// whose projected version moved counts from now again.
    fn update(&mut self, current: BTreeMap<WalletId, (u64, u64)>) {
        let now = tokio::time::Instant::now();
        let open = std::mem::take(&mut self.open);
        for (wallet, (projected, first_held)) in current {
            let since = match open.get(&wallet) {
                Some((was, _, since)) if *was == projected => *since,
                _ => now,
            };
            self.open.insert(wallet, (projected, first_held, since));
        }
    }

    /// The gaps open for at least `after`, at most `limit` of them: (wallet, first missing, last
    /// missing).
    fn due(&self, after: Duration, limit: usize) -> Vec<(WalletId, u64, u64)> {
        self.open
            .iter()
            .filter(|(_, (_, _, since))| since.elapsed() >= after)
            .take(limit)
            .map(|(wallet, (projected, first_held, _))| (*wallet, projected + 1, first_held - 1))
            .collect()
    }

    /// A repair of `wallets` was attempted: their gaps, if still open, count from now.
    fn retried(&mut self, wallets: impl IntoIterator<Item = WalletId>) {
        let now = tokio::time::Instant::now();
        for wallet in wallets {
            if let Some((_, _, since)) = self.open.get_mut(&wallet) {
                *since = now;
            }
        }
    }

    /// How long until the oldest gap is due, if any is open.
    fn next_due(&self, after: Duration) -> Option<Duration> {
        self.open.values().map(|(_, _, since)| after.saturating_sub(since.elapsed())).min()
    }
}

/// Where a projector reports what it applied: its counters and, for the read model, the committed
/// view (which then drops the wallets the read model has caught up on).
#[derive(Clone, Debug, Default)]
pub struct ProjectorOutputs {
    pub stats: Arc<ProjectorStats>,
    pub view: Option<Arc<crate::view::CommittedView>>,
}

/// Most wallets one repair round fetches from the event store.
const REPAIRS_PER_ROUND: usize = 256;

pub async fn run_projector<S: EventStore + ProjectionStore, B: Bus, C: Clock>(
    projection: Projection,
    store: S,
    bus: B,
    clock: C,
    config: ProjectorConfig,
    outputs: ProjectorOutputs,
    mut shutdown: watch::Receiver<bool>,
) {
    let stats = outputs.stats.clone();
    let backoff = Duration::from_millis(config.retry_backoff_ms);
    let repair_after = Duration::from_millis(config.repair_after_ms);
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
    let mut gaps = Gaps::default();
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
        let mut arrived = false;
        if offsets.held_count() < config.max_held {
            let deliveries = match consumer.poll(config.batch, config.poll_timeout_ms).await {
                Ok(deliveries) => deliveries,
                Err(error) => {
                    tracing::warn!(group = projection.group(), %error, "poll failed");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            // Decode; the undecodable go to the dead-letter topic (retried until it acknowledges).
            for delivery in deliveries {
                arrived = true;
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
        } else {
            // Consuming more would only hold more: repair what is due, or wait until it is.
            let held = offsets.held_count();
            tracing::error!(group = projection.group(), held, "events held for gaps; repairing from the event store");
            let wait = gaps.next_due(repair_after).unwrap_or(backoff).max(Duration::from_millis(1));
            tokio::select! {
                // Polled in order, not at random: the simulator replays a seed exactly.
                biased;
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
        if arrived {
            last_apply = Some(tokio::time::Instant::now());
            apply_held(projection, &store, &clock, &mut offsets, &mut gaps, &outputs, backoff).await;
        }
        // A gap that lasted: the message was lost or skipped on the way. The write side has
        // every version: fetch the missing ones from the event store and apply them.
        let due = gaps.due(repair_after, REPAIRS_PER_ROUND);
        #[cfg(madsim)]
        let due = if planted(Bug::RepairSkipped) { Vec::new() } else { due };
        if !due.is_empty() {
            let repaired = repair(projection, &store, &due, "gap").await.applied;
            stats.repaired.fetch_add(repaired, Ordering::Relaxed);
            // A gap still open after this (a failed read, say) waits a whole period again.
            gaps.retried(due.iter().map(|(wallet, _, _)| *wallet));
            // Even when nothing was applied here, something else (reconciliation, another
            // instance) may have filled the gap: the held events are tried again either way.
            apply_held(projection, &store, &clock, &mut offsets, &mut gaps, &outputs, backoff).await;
        }
        let held = offsets.held_count();
        stats.held.store(held as u64, Ordering::Relaxed);
        metrics::gauge!("wallex_projection_held_events", "group" => projection.group()).set(held as f64);
        commit_offsets(&mut consumer, projection, &mut offsets).await;
    }
}

/// Applies the held events, pass after pass while one fills a gap for another; notes the gaps
/// left open.
async fn apply_held<S: ProjectionStore, C: Clock>(
    projection: Projection,
    store: &S,
    clock: &C,
    offsets: &mut Offsets,
    gaps: &mut Gaps,
    outputs: &ProjectorOutputs,
    backoff: Duration,
) {
    let (stats, view) = (&outputs.stats, outputs.view.as_deref());
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
        let mut open = BTreeMap::new();
        let now = clock.now().unix_micros();
        // The metrics' handles once per batch: each `counter!` is a registry lookup.
        let projected = metrics::counter!("wallex_projected_total", "group" => projection.group());
        let lag = metrics::histogram!("wallex_projection_lag_seconds", "group" => projection.group());
        for (event, verdict) in batch.iter().zip(verdicts) {
            match verdict {
                Applied::Projected => {
                    projected.increment(1);
                    // From the ledger's decision to the read side having it; microseconds as
                    // f64 seconds: a latency measurement, not money.
                    let lag_us = now.saturating_sub(event.at.unix_micros());
                    lag.record(lag_us as f64 / 1e6);
                    stats.projected.fetch_add(1, Ordering::Relaxed);
                    offsets.settled(event);
                    if let Some(view) = view {
                        match projection {
                            Projection::ReadModel => view.projected(&event.wallet_id, event.version),
                            Projection::Ledger => view.ledger_projected(&event.wallet_id, event.version),
                        }
                    }
                    progressed = true;
                }
                Applied::Duplicate => {
                    metrics::counter!("wallex_projection_duplicates_total", "group" => projection.group()).increment(1);
                    stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    offsets.settled(event);
                }
                #[cfg(madsim)]
                Applied::Gap { .. } if planted(Bug::GapDropped) => offsets.settled(event),
                Applied::Gap { projected_version } => {
                    // Held events come in version order: the first is the lowest held.
                    open.entry(event.wallet_id).or_insert((projected_version, event.version));
                }
            }
        }
        // Events of one wallet are in version order in the batch, so one pass applies every
        // contiguous run; another pass is needed only if a gap filled mid-way.
        if !progressed || offsets.held_count() == 0 {
            gaps.update(open);
            return;
        }
    }
}

/// What one repair round did.
#[derive(Clone, Copy, Debug, Default)]
struct Repaired {
    /// Events applied from the event store.
    applied: u64,
    /// Some wallet could not be repaired now (a store call failed): try again later.
    incomplete: bool,
}

/// Fetches each of `missing` (wallet, first, last version) from the event store and applies it to
/// `projection`. Each repair is logged and counted.
async fn repair<S: EventStore + ProjectionStore>(
    projection: Projection,
    store: &S,
    missing: &[(WalletId, u64, u64)],
    cause: &'static str,
) -> Repaired {
    let mut repaired = Repaired::default();
    for (wallet, first, last) in missing {
        let events = match store.wallet_events(wallet, *first, *last).await {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(group = projection.group(), %wallet, %error, "repair cannot read the event store");
                repaired.incomplete = true;
                continue;
            }
        };
        if events.is_empty() {
            continue;
        }
        match store.project(projection, &events).await {
            Ok(verdicts) => {
                let applied = verdicts.iter().filter(|verdict| **verdict == Applied::Projected).count() as u64;
                if applied > 0 {
                    tracing::warn!(
                        group = projection.group(),
                        %wallet,
                        first,
                        last,
                        applied,
                        cause,
                        "projection repaired from the event store"
                    );
                    metrics::counter!("wallex_projection_repaired_total", "group" => projection.group(), "cause" => cause)
                        .increment(applied);
                }
                repaired.applied += applied;
            }
            Err(error) => {
                tracing::warn!(group = projection.group(), %wallet, %error, "repair failed; retrying later");
                repaired.incomplete = true;
            }
        }
    }
    repaired
}

/// Reconciliation: every `reconcile_interval_ms`, compares each projection's checkpoints with the
/// journal, and repairs what a projection lacks. It walks the journal forward (from the start,
/// once per process, then only what is new), each round only as far as the writer had committed
/// one round earlier, so it does not chase what the projectors are applying right now: whatever it
/// finds missing then was lost or skipped, and it applies it from the event store (the projection's
/// own rule skips what arrived meanwhile). No clock is involved, so a clock step cannot make it
/// skip or rush a stretch.
pub async fn run_reconciliation<S: EventStore + ProjectionStore>(
    store: S,
    writer: Arc<crate::WriterHealth>,
    config: ProjectorConfig,
    stats: Arc<ReconciliationStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    const STRETCH: u64 = 10_000;
    let interval = Duration::from_millis(config.reconcile_interval_ms);
    let mut checked = wallex_engine::TransactionId(0);
    let mut committed_before = None;
    loop {
        tokio::select! {
            // Polled in order, not at random: the simulator replays a seed exactly.
            biased;
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        // What was committed a round ago has had a whole round to reach the projections.
        let due = committed_before.replace(writer.committed_through());
        let Some(due) = due else { continue };
        while checked < due {
            if *shutdown.borrow() {
                return;
            }
            let through = wallex_engine::TransactionId(due.0.min(checked.0.saturating_add(STRETCH)));
            if !reconcile(&store, checked, through, &stats).await {
                break;
            }
            checked = through;
            stats.checked_through.store(checked.0, Ordering::Relaxed);
        }
    }
}

/// Reconciles the transactions `after + 1 ..= through`; `false` if a store call failed (the
/// stretch is tried again next round).
async fn reconcile<S: EventStore + ProjectionStore>(
    store: &S,
    after: wallex_engine::TransactionId,
    through: wallex_engine::TransactionId,
    stats: &ReconciliationStats,
) -> bool {
    let heads = match store.stream_heads(after, through).await {
        Ok(heads) => heads,
        Err(error) => {
            tracing::warn!(%error, "reconciliation cannot read the journal; retrying next round");
            return false;
        }
    };
    let wallets: Vec<WalletId> = heads.iter().map(|(wallet, _)| *wallet).collect();
    for projection in Projection::ALL {
        let versions = match store.projected_versions(projection, &wallets).await {
            Ok(versions) => versions,
            Err(error) => {
                tracing::warn!(%error, "reconciliation cannot read the checkpoints; retrying next round");
                return false;
            }
        };
        let missing: Vec<(WalletId, u64, u64)> = heads
            .iter()
            .zip(versions)
            .filter(|((_, head), projected)| projected < head)
            .map(|((wallet, head), projected)| (*wallet, projected + 1, *head))
            .collect();
        if !missing.is_empty() {
            let repaired = repair(projection, store, &missing, "reconciliation").await;
            stats.repaired.fetch_add(repaired.applied, Ordering::Relaxed);
            if repaired.incomplete {
                return false;
            }
        }
    }
    true
}

/// What reconciliation has done.
#[derive(Debug, Default)]
pub struct ReconciliationStats {
    /// The journal is checked through this transaction.
    pub checked_through: AtomicU64,
    /// Events it found missing from a projection and applied.
    pub repaired: AtomicU64,
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
