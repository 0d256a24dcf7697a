//! The writer's seat: which instance of a cluster decides.
//!
//! Every instance on one store runs a seat. Exactly one holds the writer lease (a row in the
//! store with an epoch that only grows); it runs the writer, the relay, the snapshotter, the
//! idempotency cleanup and reconciliation, and renews the lease every `renew_ms`. The others
//! follow: they watch the lease, refuse what reaches their own queue (the service layer forwards
//! writes to the writer's address), and run only the projectors.
//!
//! Safety never rests on timing. Every group commit names the epoch it was decided under, and the
//! store checks it in the same transaction (`StoreError::Fenced`), so a writer that lost the lease
//! (paused past it, cut off from the store, slow) can never commit again, whatever it believes.
//! Timing decides only liveness: a follower takes the lease once it has lapsed (`lease_ms`
//! without renewal), bumps the epoch, recovers the ledger from the store (snapshot plus journal:
//! every commit of an earlier epoch finished before the bump, or is refused after it) and serves.
//! A writer whose commit is fenced off, or whose renewal finds a later epoch, steps down: its
//! queued commands are answered "unavailable" (not applied; the client retries with the same key
//! on the new writer) and it follows.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use wallex_engine::Ledger;

use crate::ports::{Bus, Clock, Epoch, EventStore, Lease, ProjectionStore};
use crate::writer::{Queue, TermEnd, Writer, WriterState, recover};
use crate::{ConfigError, PipelineConfig, PipelineStats, RecoveryError, RetentionClock};

/// The writer lease's timing; safety does not depend on it, only how soon a lost writer is
/// replaced: within `lease_ms + poll_ms` plus the new writer's recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseConfig {
    /// How long the lease lasts without renewal, in milliseconds, by the store's clock.
    pub lease_ms: u64,
    /// How often the writer renews it, in milliseconds; well within `lease_ms`, so that a renewal
    /// or two may be late or lost without the lease lapsing.
    pub renew_ms: u64,
    /// How often a follower reads the lease to learn the writer's address, or that it lapsed.
    pub poll_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> LeaseConfig {
        LeaseConfig { lease_ms: 2_000, renew_ms: 400, poll_ms: 200 }
    }
}

impl LeaseConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = |name: &str| format!("pipeline.lease.{name}");
        if self.lease_ms == 0 {
            return Err(ConfigError::new(field("lease_ms"), "must be at least 1"));
        }
        if self.renew_ms == 0 || self.renew_ms.saturating_mul(2) > self.lease_ms {
            return Err(ConfigError::new(
                field("renew_ms"),
                format!(
                    "must be 1..={} (at most half of pipeline.lease.lease_ms, {}), not {}: one late renewal \
                     would let the lease lapse under a live writer",
                    self.lease_ms / 2,
                    self.lease_ms,
                    self.renew_ms
                ),
            ));
        }
        if self.poll_ms == 0 {
            return Err(ConfigError::new(field("poll_ms"), "must be at least 1"));
        }
        Ok(())
    }
}

/// This instance, as its cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Unique among the instances on one store, and the same across restarts of one instance (a
    /// restarted writer takes its own lease back at once instead of waiting for it to lapse).
    pub id: String,
    /// Where this instance takes forwarded requests (`http://host:port`); empty: nowhere.
    pub address: String,
}

impl Node {
    /// A node alone on its store (the embedded default, tests).
    pub fn alone() -> Node {
        Node { id: "local".to_owned(), address: String::new() }
    }
}

/// What this instance is in its cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// It holds the lease under `epoch` and decides.
    Writer { epoch: Epoch },
    /// Another instance decides: `writer` holds a live lease, if one is known (none: the lease
    /// has lapsed and no one has taken it yet, or the store cannot be read).
    Follower { writer: Option<Holder> },
}

/// Who holds a live writer lease, and where it takes forwarded requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub epoch: Epoch,
    pub node: String,
    pub address: String,
}

impl Holder {
    fn of(lease: Lease) -> Holder {
        Holder { epoch: lease.epoch, node: lease.holder, address: lease.address }
    }
}

const NOT_THE_WRITER: &str = "this instance does not hold the writer lease: retry";

/// What a term needs from the pipeline that started the seat.
pub(crate) struct Seat<S, B, C> {
    pub store: S,
    pub bus: B,
    pub clock: C,
    pub config: PipelineConfig,
    pub node: Node,
    pub stats: Arc<PipelineStats>,
    pub committed: Arc<Notify>,
    pub role: watch::Sender<Role>,
}

/// A writer's term: its tasks, and how to end them.
pub(crate) struct Term {
    epoch: Epoch,
    /// One stop signal per task, sent in this order. Never one channel for all: tokio's `watch`
    /// wakes several waiting receivers in an order drawn from a process-wide counter, which
    /// would make the simulator's runs of one seed differ within a process.
    stops: Vec<watch::Sender<bool>>,
    writer: JoinHandle<TermEnd>,
    workers: Vec<JoinHandle<()>>,
    /// A renewal found the lease gone and stopped the writer: the step-down is counted, however
    /// many renewals fail again, or a commit is fenced, before the writer ends.
    lease_lost: bool,
}

impl<S, B, C> Seat<S, B, C>
where
    S: EventStore + ProjectionStore,
    B: Bus,
    C: Clock,
{
    /// Takes the lease if it is free. `Ok(None)`: another node holds it.
    pub async fn try_take(&self) -> Result<Option<Lease>, RecoveryError> {
        Ok(self.store.acquire_lease(&self.node.id, &self.node.address, self.config.lease.lease_ms).await?)
    }

    /// Starts a term under `lease`: recovers the ledger from the store (every commit of an
    /// earlier epoch is in it, or will be refused), seeds the committed view, and starts the
    /// writer and the work only a writer does.
    pub async fn begin(&self, lease: &Lease, queue: Queue) -> Result<Term, (RecoveryError, Queue)> {
        let writer_store = self.store.writer_handle();
        let config = self.config;
        let ledger = match recover(&writer_store, config.writer.engine(), config.writer.journal_page).await {
            Ok(ledger) => ledger,
            Err(error) => return Err((error, queue)),
        };
        self.stats.view.clear();
        if let Err(error) = crate::seed_view(&self.store, &ledger, &self.stats.view).await {
            return Err((error, queue));
        }
        let mut stops = Vec::new();
        let mut stopped = || {
            let (stop, stopped) = watch::channel(false);
            stops.push(stop);
            stopped
        };
        let clock_for_cleanup = RetentionClock::new(self.clock.clone(), ledger.clock());
        // The snapshotter keeps its own copy of the ledger, so snapshots never stall the writer.
        let replica = ledger.clone();
        let writer = Writer::new(
            writer_store,
            self.clock.clone(),
            config.writer,
            ledger,
            lease.epoch,
            queue,
            self.committed.clone(),
            self.stats.writer.clone(),
            self.stats.view.clone(),
        );
        let writer = tokio::spawn(writer.run(stopped()));
        let mut workers = vec![tokio::spawn(crate::relay::run_relay(
            self.store.clone(),
            self.bus.clone(),
            self.clock.clone(),
            config.relay,
            self.committed.clone(),
            self.stats.relay.clone(),
            stopped(),
        ))];
        workers.push(tokio::spawn(crate::run_cleanup(
            self.store.clone(),
            clock_for_cleanup,
            config.writer.idempotency_retention_micros,
            config.writer.idempotency_cleanup_interval_ms,
            stopped(),
        )));
        workers.push(tokio::spawn(crate::snapshotter::run_snapshotter(
            // Background work: the shared connections, never the writer's own.
            self.store.clone(),
            replica,
            config.writer,
            self.stats.writer.clone(),
            stopped(),
        )));
        workers.push(tokio::spawn(crate::projector::run_reconciliation(
            self.store.clone(),
            self.stats.writer.clone(),
            config.projector,
            self.stats.reconciliation.clone(),
            stopped(),
        )));
        metrics::counter!("wallex_writer_terms_total").increment(1);
        tracing::info!(epoch = %lease.epoch, node = %self.node.id, "holding the writer lease: deciding");
        let _ = self.role.send(Role::Writer { epoch: lease.epoch });
        Ok(Term { epoch: lease.epoch, stops, writer, workers, lease_lost: false })
    }

    /// Runs the seat until the pipeline shuts down; returns the ledger if it was the writer then.
    pub async fn run(
        self,
        mut term: Option<Term>,
        mut queue: Option<Queue>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<Ledger> {
        let mut poll = tokio::time::interval(Duration::from_millis(self.config.lease.poll_ms));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew = tokio::time::interval(Duration::from_millis(self.config.lease.renew_ms));
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // False once the pipeline's handle is gone without a shutdown: nothing will signal one,
        // and a closed channel must not wake the loop forever.
        let mut watching = true;
        loop {
            if let Some(current) = term.as_mut() {
                tokio::select! {
                    // Polled in order, not at random: the simulator replays a seed exactly.
                    biased;
                    ended = &mut current.writer => {
                        let current = term.take().expect("a term is running");
                        match ended {
                            Ok(TermEnd::Closed(ledger)) => {
                                // Every sender is gone: the pipeline is shutting down.
                                let epoch = current.epoch;
                                self.end(current).await;
                                self.release(epoch).await;
                                return Some(*ledger);
                            }
                            Ok(TermEnd::SteppedDown { queue: returned, fenced_by }) => {
                                tracing::warn!(epoch = %current.epoch, ?fenced_by, "stepping down: another instance holds the writer lease");
                                if fenced_by.is_some() && !current.lease_lost {
                                    // A lost renewal counted its own step-down when it stopped the writer.
                                    metrics::counter!("wallex_writer_step_downs_total", "reason" => "fenced").increment(1);
                                }
                                // Followers' rules first (the service layer forwards from now on),
                                // then wait for the term's tasks, which may be in a slow call.
                                self.follow(None);
                                queue = Some(returned);
                                self.end(current).await;
                            }
                            Err(error) => {
                                // The writer panicked (a journal it cannot replay): the instance
                                // stops (`writer_stopped`), as a lone writer would.
                                tracing::error!(%error, "the writer failed");
                                self.end(current).await;
                                self.stats.writer.set(WriterState::Stopped);
                                return None;
                            }
                        }
                    }
                    _ = renew.tick() => {
                        let epoch = current.epoch;
                        match self.store.renew_lease(epoch, self.config.lease.lease_ms).await {
                            Ok(true) => {}
                            // Already stepping down: the writer is finishing a commit in flight.
                            Ok(false) if current.lease_lost => {}
                            Ok(false) => {
                                // Another instance took over: stop deciding now. A commit already
                                // on its way is fenced off by the store.
                                tracing::warn!(%epoch, "the writer lease passed to another instance; stepping down");
                                metrics::counter!("wallex_writer_step_downs_total", "reason" => "lease_lost").increment(1);
                                current.lease_lost = true;
                                // The writer's own signal, the first: it stops deciding now.
                                let _ = current.stops[0].send(true);
                            }
                            // The store is out of reach: so are commits. A takeover meanwhile would
                            // fence them; the next renewal that reaches the store says which.
                            Err(error) => tracing::warn!(%epoch, %error, "the writer lease could not be renewed"),
                        }
                    }
                    changed = shutdown.changed(), if watching => {
                        // The pipeline's sender is dropped before this: the writer drains and
                        // returns `Closed` through the branch above.
                        watching = changed.is_ok();
                    }
                }
                continue;
            }
            let waiting = queue.as_mut().expect("a follower holds the queue");
            tokio::select! {
                biased;
                changed = shutdown.changed(), if watching => {
                    watching = changed.is_ok();
                    if watching && *shutdown.borrow() {
                        return None;
                    }
                }
                more = waiting.refuse_next(NOT_THE_WRITER) => {
                    if !more {
                        return None;
                    }
                }
                _ = poll.tick() => {
                    match self.store.lease().await {
                        Ok(Some(lease)) if lease.is_live() && lease.holder != self.node.id => {
                            self.follow(Some(Holder::of(lease)));
                        }
                        Ok(_) => match self.try_take().await {
                            Ok(Some(lease)) => {
                                let taken = queue.take().expect("a follower holds the queue");
                                match self.begin(&lease, taken).await {
                                    Ok(started) => term = Some(started),
                                    Err((error, returned)) => {
                                        // It holds a lease it cannot use: let it lapse at once so
                                        // another instance may try.
                                        tracing::warn!(%error, "took the writer lease but could not recover; releasing it");
                                        self.release(lease.epoch).await;
                                        queue = Some(returned);
                                    }
                                }
                            }
                            Ok(None) => {}
                            Err(error) => tracing::warn!(%error, "the writer lease could not be taken"),
                        },
                        Err(error) => {
                            tracing::warn!(%error, "the writer lease could not be read");
                            self.follow(None);
                        }
                    }
                }
            }
        }
    }

    /// Follows `writer` (none known: requests are refused until one is).
    pub fn follow(&self, writer: Option<Holder>) {
        self.stats.writer.set(WriterState::Follower);
        let role = Role::Follower { writer };
        self.role.send_if_modified(|current| {
            let changed = *current != role;
            if changed {
                *current = role;
            }
            changed
        });
    }

    /// Ends a term: stops its tasks and waits for them.
    async fn end(&self, term: Term) {
        let Term { stops, writer, workers, .. } = term;
        for stop in &stops {
            let _ = stop.send(true);
        }
        drop(writer);
        for worker in workers {
            let _ = worker.await;
        }
        self.stats.view.clear();
    }

    async fn release(&self, epoch: Epoch) {
        if let Err(error) = self.store.release_lease(epoch).await {
            tracing::warn!(%epoch, %error, "the writer lease could not be released; it lapses by itself");
        }
    }
}
