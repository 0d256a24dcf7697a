//! The in-process bus: the embedded default's bus, and the one tests, benches and the simulated
//! broker build on. The events topic is `PARTITIONS` keyed logs with consumer groups and committed
//! offsets, and a dead-letter list. Messages live as long as the process.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::ports::{Bus, BusError, BusMessage, Consumer, Delivery};

/// Partitions of the events topic, as in production.
pub const PARTITIONS: u32 = 10;

#[derive(Debug, Default)]
struct BusState {
    partitions: Vec<Vec<(String, Vec<u8>)>>,
    dead_letters: Vec<BusMessage>,
    committed: BTreeMap<(String, u32), u64>,
    failing_publishes: u32,
    duplicate_deliveries: bool,
}

/// An in-process bus: the events topic as `PARTITIONS` keyed logs, consumer groups with committed
/// offsets, and a dead-letter list. Messages live as long as the process.
#[derive(Clone, Debug)]
pub struct InProcessBus {
    state: Arc<Mutex<BusState>>,
    arrived: Arc<Notify>,
}

impl Default for InProcessBus {
    fn default() -> InProcessBus {
        let state = BusState { partitions: vec![Vec::new(); PARTITIONS as usize], ..BusState::default() };
        InProcessBus { state: Arc::new(Mutex::new(state)), arrived: Arc::new(Notify::new()) }
    }
}

impl InProcessBus {
    pub fn new() -> InProcessBus {
        InProcessBus::default()
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

    /// Every message on the events topic, per partition, in offset order.
    pub fn log(&self) -> Vec<Vec<(String, Vec<u8>)>> {
        self.lock().partitions.clone()
    }
}

impl Bus for InProcessBus {
    type Consumer = InProcessConsumer;

    async fn publish(&self, messages: &[BusMessage]) -> Vec<Result<(), BusError>> {
        let mut state = self.lock();
        let mut results = Vec::with_capacity(messages.len());
        // Like Kafka's idempotent producer: once a message to a partition fails, the later ones to
        // that partition in the same flight fail too, so a key's messages never land out of order.
        let mut failed_partitions = [false; PARTITIONS as usize];
        for message in messages {
            let partition = InProcessBus::partition_of(&message.key) as usize;
            if failed_partitions[partition] || state.failing_publishes > 0 {
                state.failing_publishes = state.failing_publishes.saturating_sub(1);
                failed_partitions[partition] = true;
                results.push(Err(BusError("injected: broker unavailable".to_owned())));
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
                let end = state.partitions[partition as usize].len() as u64;
                end.saturating_sub(state.committed.get(&(group.to_owned(), partition)).copied().unwrap_or(0))
            })
            .sum())
    }

    async fn consumer(&self, group: &str) -> Result<InProcessConsumer, BusError> {
        let state = self.lock();
        let positions = (0..PARTITIONS)
            .map(|partition| state.committed.get(&(group.to_owned(), partition)).copied().unwrap_or(0))
            .collect();
        Ok(InProcessConsumer { bus: self.clone(), group: group.to_owned(), positions })
    }
}

/// The single member of a consumer group on the in-process bus.
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
            while deliveries.len() < max {
                let Some((key, payload)) = log.get(usize::try_from(*position).expect("offsets fit")) else { break };
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
        }
        Ok(())
    }
}
