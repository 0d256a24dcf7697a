//! The in-process bus: the embedded default's bus, and the one tests, benches and the simulated
//! broker build on. The events topic is `PARTITIONS` keyed logs with consumer groups and committed
//! offsets, and a dead-letter list.
//!
//! A message is kept until every consumer group the bus knows (the projections' groups from the
//! start, and any that joined) has committed past it, then dropped: the retained log is what some
//! group has not committed yet, not everything ever published (at thousands of operations a second
//! that would be gigabytes an hour). A group unknown until it joins starts at the oldest retained
//! message.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::ports::{Bus, BusError, BusMessage, Consumer, Delivery, Projection};

/// Partitions of the events topic, as in production.
pub const PARTITIONS: u32 = 10;

/// One partition's retained messages: offsets `base..base + messages.len()`.
#[derive(Clone, Debug, Default)]
struct Partition {
    base: u64,
    messages: VecDeque<(String, Vec<u8>)>,
}

impl Partition {
    fn end(&self) -> u64 {
        self.base + self.messages.len() as u64
    }

    fn push(&mut self, message: (String, Vec<u8>)) {
        self.messages.push_back(message);
    }

    /// Drops every message before `offset`.
    fn truncate_before(&mut self, offset: u64) {
        while self.base < offset && self.messages.pop_front().is_some() {
            self.base += 1;
        }
    }
}

#[derive(Debug, Default)]
struct BusState {
    partitions: Vec<Partition>,
    dead_letters: Vec<BusMessage>,
    /// Every group that ever joined: a message is dropped only once all of them committed past it.
    groups: BTreeSet<String>,
    committed: BTreeMap<(String, u32), u64>,
    /// Keep every message, for tests that inspect the whole log.
    recording: bool,
    failing_publishes: u32,
    /// Partitions whose leader is gone: every publish to them fails until healed.
    down: BTreeSet<u32>,
    /// The next this many messages are acknowledged and never appended (a broker that loses
    /// acknowledged data, as an unclean leader election does).
    losing: u32,
    duplicate_deliveries: bool,
}

/// An in-process bus: the events topic as `PARTITIONS` keyed logs, consumer groups with committed
/// offsets, and a dead-letter list. It retains what some group has not committed.
#[derive(Clone, Debug)]
pub struct InProcessBus {
    state: Arc<Mutex<BusState>>,
    arrived: Arc<Notify>,
}

impl Default for InProcessBus {
    /// A bus for the pipeline: it retains messages for both projections' groups from the start,
    /// whichever joins first (a group the bus had not yet seen would lose what another committed).
    fn default() -> InProcessBus {
        InProcessBus::with_groups(&Projection::ALL.map(Projection::group))
    }
}

impl InProcessBus {
    pub fn new() -> InProcessBus {
        InProcessBus::default()
    }

    /// A bus that retains every message until each of `groups` (and any group that joins later)
    /// has committed past it.
    pub fn with_groups(groups: &[&str]) -> InProcessBus {
        let state = BusState {
            partitions: vec![Partition::default(); PARTITIONS as usize],
            groups: groups.iter().map(|group| (*group).to_owned()).collect(),
            ..BusState::default()
        };
        InProcessBus { state: Arc::new(Mutex::new(state)), arrived: Arc::new(Notify::new()) }
    }

    /// A bus that keeps every message, so a test can read the whole log with [`InProcessBus::log`].
    #[cfg(feature = "faults")]
    pub fn recording() -> InProcessBus {
        let bus = InProcessBus::default();
        bus.lock().recording = true;
        bus
    }

    /// How many messages the events topic retains, over all partitions.
    pub fn retained(&self) -> u64 {
        self.lock().partitions.iter().map(|partition| partition.messages.len() as u64).sum()
    }

    fn lock(&self) -> MutexGuard<'_, BusState> {
        self.state.lock().expect("the bus lock is never poisoned")
    }

    /// The partition of a key: a fixed hash, so one wallet's events always share a partition.
    pub fn partition_of(key: &str) -> u32 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        u32::try_from(hasher.finish() % u64::from(PARTITIONS)).expect("below PARTITIONS")
    }

    #[cfg(feature = "faults")]
    /// The next `count` publishes are refused (not appended).
    pub fn fail_publishes(&self, count: u32) {
        self.lock().failing_publishes += count;
    }

    #[cfg(feature = "faults")]
    /// The next `count` published messages are acknowledged but lost: never delivered.
    pub fn lose_next(&self, count: u32) {
        self.lock().losing += count;
    }

    #[cfg(feature = "faults")]
    /// Takes `partition` down (every publish to it fails, the others go on) or brings it back.
    pub fn partition_down(&self, partition: u32, down: bool) {
        let mut state = self.lock();
        if down {
            state.down.insert(partition);
        } else {
            state.down.remove(&partition);
        }
    }

    #[cfg(feature = "faults")]
    /// Appends every published message twice from now on (a producer retrying after a lost ack).
    pub fn duplicate_deliveries(&self, on: bool) {
        self.lock().duplicate_deliveries = on;
    }

    #[cfg(feature = "faults")]
    /// Appends raw bytes to the events topic, bypassing the pipeline (to test poison messages).
    pub fn inject(&self, key: &str, payload: Vec<u8>) {
        self.lock().partitions[InProcessBus::partition_of(key) as usize].push((key.to_owned(), payload));
        self.arrived.notify_waiters();
    }

    pub fn dead_letters(&self) -> Vec<BusMessage> {
        self.lock().dead_letters.clone()
    }

    /// Every retained message on the events topic, per partition, in offset order: all of them on
    /// a [`InProcessBus::recording`] bus.
    pub fn log(&self) -> Vec<Vec<(String, Vec<u8>)>> {
        self.lock().partitions.iter().map(|partition| partition.messages.iter().cloned().collect()).collect()
    }
}

impl Bus for InProcessBus {
    type Consumer = InProcessConsumer;

    fn partition(&self, key: &str) -> u32 {
        InProcessBus::partition_of(key)
    }

    async fn publish(&self, messages: &[BusMessage]) -> Vec<Result<(), BusError>> {
        let mut state = self.lock();
        let mut results = Vec::with_capacity(messages.len());
        // Like Kafka's idempotent producer: once a message to a partition fails, the later ones to
        // that partition in the same flight fail too, so a key's messages never land out of order.
        let mut failed_partitions = [false; PARTITIONS as usize];
        for message in messages {
            let key_partition = InProcessBus::partition_of(&message.key);
            let partition = key_partition as usize;
            if failed_partitions[partition] || state.failing_publishes > 0 || state.down.contains(&key_partition) {
                state.failing_publishes = state.failing_publishes.saturating_sub(1);
                failed_partitions[partition] = true;
                results.push(Err(BusError("injected: broker unavailable".to_owned())));
                continue;
            }
            if state.losing > 0 {
                state.losing -= 1;
                results.push(Ok(()));
                continue;
            }
            let copies = if state.duplicate_deliveries { 2 } else { 1 };
            for _ in 0..copies {
                state.partitions[partition].push((message.key.clone(), message.payload.clone()));
            }
            results.push(Ok(()));
        }
        drop(state);
        self.arrived.notify_waiters();
        results
    }

    async fn publish_dead_letter(&self, message: BusMessage) -> Result<(), BusError> {
        self.lock().dead_letters.push(message);
        Ok(())
    }

    async fn lag(&self, group: &str) -> Result<u64, BusError> {
        let state = self.lock();
        Ok((0..PARTITIONS)
            .map(|partition| {
                let end = state.partitions[partition as usize].end();
                end.saturating_sub(state.committed.get(&(group.to_owned(), partition)).copied().unwrap_or(0))
            })
            .sum())
    }

    async fn consumer(&self, group: &str) -> Result<InProcessConsumer, BusError> {
        let mut state = self.lock();
        state.groups.insert(group.to_owned());
        // From the group's committed offset, or the oldest message still retained.
        let positions = (0..PARTITIONS)
            .map(|partition| {
                let committed = state.committed.get(&(group.to_owned(), partition)).copied().unwrap_or(0);
                committed.max(state.partitions[partition as usize].base)
            })
            .collect();
        Ok(InProcessConsumer { bus: self.clone(), group: group.to_owned(), positions })
    }
}

/// A member of a consumer group on the in-process bus. Every member is given every partition;
/// a member behind what its group committed skips to it.
#[derive(Debug)]
pub struct InProcessConsumer {
    bus: InProcessBus,
    group: String,
    /// Next offset to deliver, per partition.
    positions: Vec<u64>,
}

impl InProcessConsumer {
    fn take(&mut self, max: usize) -> Vec<Delivery> {
        let state = self.bus.lock();
        let mut deliveries = Vec::new();
        for (partition, log) in state.partitions.iter().enumerate() {
            let position = &mut self.positions[partition];
            // Behind what is retained only if another member of the group (a second instance on
            // the same bus) committed past it: what the group committed is done for the group,
            // so this member resumes there, as a Kafka member does after a rebalance.
            *position = (*position).max(log.base);
            while deliveries.len() < max {
                let index = usize::try_from(*position - log.base).expect("offsets fit");
                let Some((key, payload)) = log.messages.get(index) else { break };
                deliveries.push(Delivery {
                    partition: u32::try_from(partition).expect("few partitions"),
                    offset: *position,
                    key: key.clone(),
                    payload: payload.clone(),
                });
                *position += 1;
            }
        }
        deliveries
    }
}

impl Consumer for InProcessConsumer {
    async fn poll(&mut self, max: usize, timeout_ms: u64) -> Result<Vec<Delivery>, BusError> {
        let arrived = self.bus.arrived.clone();
        let notified = arrived.notified();
        let deliveries = self.take(max);
        if !deliveries.is_empty() {
            return Ok(deliveries);
        }
        let _ = tokio::time::timeout(Duration::from_millis(timeout_ms), notified).await;
        Ok(self.take(max))
    }

    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), BusError> {
        let mut state = self.bus.lock();
        for (partition, next) in offsets {
            state.committed.insert((self.group.clone(), *partition), *next);
            if state.recording {
                continue;
            }
            // What every group committed past is delivered everywhere it will ever be needed.
            let everyone = state
                .groups
                .iter()
                .map(|group| state.committed.get(&(group.clone(), *partition)).copied().unwrap_or(0))
                .min()
                .unwrap_or(0);
            state.partitions[*partition as usize].truncate_before(everyone);
        }
        Ok(())
    }
}
