//! The simulated broker: the Kafka semantics the pipeline relies on, which madsim-rdkafka's
//! simulator lacks. Key-hashed partitions (the server's own partitioner), per-partition logs and
//! consumer-group offsets that survive a broker restart, explicit offset commits, a group
//! generation that a consumer crash bumps (the member must rejoin and resumes from the committed
//! offsets, so everything after them is delivered again), and duplicate appends when a produce
//! request is applied but its acknowledgement is lost or times out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use madsim::net::Endpoint;
use madsim::rand::{Rng, thread_rng};
use wallex_pipeline::bus::{InProcessBus, PARTITIONS};
use wallex_pipeline::codec::decode_event;
use wallex_pipeline::ports::{Bus, BusError, BusMessage, Consumer, Delivery, Projection};

use crate::rpc::{self, BROKER_SERVICE};
use crate::swarm::Link;
use crate::world::{lock, world};

const BROKER_TIMEOUT: Duration = Duration::from_millis(1_000);

/// The broker's durable state.
#[derive(Debug, Default)]
pub struct BrokerDisk {
    /// The events topic, one log per partition.
    pub partitions: BTreeMap<u32, Vec<BusMessage>>,
    pub dead_letters: Vec<BusMessage>,
    /// Committed offsets: the next offset each group will read, per partition.
    pub committed: BTreeMap<(String, u32), u64>,
    /// Each group's generation; a member from an older one must rejoin.
    pub generations: BTreeMap<String, u64>,
    /// Keys of the undecodable messages injected into the events topic.
    pub poisoned: Vec<String>,
    /// Messages the broker acknowledged and lost: the checkers excuse them from the bus, never
    /// from the projections.
    pub lost: Vec<BusMessage>,
    /// Offset commits that passed a message whose event the group's projection did not have yet:
    /// a crash then would skip it for good.
    pub premature_commits: Vec<String>,
}

impl BrokerDisk {
    fn log(&mut self, partition: u32) -> &mut Vec<BusMessage> {
        self.partitions.entry(partition).or_default()
    }

    /// A consumer crash: the group rebalances, its member must rejoin.
    pub fn rebalance(&mut self, group: &str) {
        *self.generations.entry(group.to_owned()).or_default() += 1;
    }

    /// Appends a message no consumer can decode; the projectors must dead-letter it.
    pub fn poison(&mut self) -> String {
        let key = format!("poison-{}", self.poisoned.len());
        let partition = InProcessBus::partition_of(&key);
        let message = BusMessage {
            key: key.clone(),
            payload: b"{\"schemaVersion\":1,\"event\":42}".to_vec(),
            headers: Vec::new(),
        };
        self.log(partition).push(message);
        self.poisoned.push(key.clone());
        key
    }

    pub fn lag(&self, group: &str) -> u64 {
        (0..PARTITIONS)
            .map(|partition| {
                let end = self.partitions.get(&partition).map_or(0, Vec::len) as u64;
                end.saturating_sub(self.committed.get(&(group.to_owned(), partition)).copied().unwrap_or(0))
            })
            .sum()
    }
}

#[derive(Debug)]
enum Request {
    Produce(Vec<BusMessage>),
    DeadLetter(BusMessage),
    Join(String),
    Fetch { group: String, generation: u64, positions: Vec<u64>, max: usize },
    Commit { group: String, generation: u64, offsets: Vec<(u32, u64)> },
    Lag(String),
}

#[derive(Debug)]
enum Response {
    Produced(Vec<Result<(), BusError>>),
    Done(Result<(), BusError>),
    Joined { generation: u64, positions: Vec<u64> },
    Fetched(Result<Vec<Delivery>, BusError>),
    Lag(u64),
}

pub async fn run_node() {
    let endpoint = Arc::new(Endpoint::bind(rpc::broker_addr()).await.expect("the broker's address is free"));
    world().note(format_args!("broker node up"));
    rpc::serve(endpoint, BROKER_SERVICE, |request: Request| handle(request)).await;
}

async fn handle(request: Request) -> Option<Response> {
    let latency_us = thread_rng().gen_range(50..1_500);
    tokio::time::sleep(Duration::from_micros(latency_us)).await;
    let world = world();
    let mut disk = lock(&world.broker);
    let response = match request {
        Request::Produce(messages) => {
            let mut acks = Vec::with_capacity(messages.len());
            let lose =
                world.chance(world.swarm.produce_loss_permille).then(|| thread_rng().gen_range(0..messages.len()));
            let refuse =
                world.chance(world.swarm.produce_reorder_permille).then(|| thread_rng().gen_range(0..messages.len()));
            for (index, message) in messages.into_iter().enumerate() {
                let partition = InProcessBus::partition_of(&message.key);
                if refuse == Some(index) {
                    // Not appended, while the messages after it are: a retry lands it after them.
                    world
                        .fault("produce_reorder", format_args!("p{partition} key {} refused mid-request", message.key));
                    acks.push(Err(BusError("not leader for partition".to_owned())));
                    continue;
                }
                if lose == Some(index) {
                    world.fault("acked_loss", format_args!("p{partition} key {} acknowledged and lost", message.key));
                    disk.lost.push(message);
                    acks.push(Ok(()));
                    continue;
                }
                let log = disk.log(partition);
                world.note(format_args!("broker append p{partition}@{} key {}", log.len(), message.key));
                log.push(message);
                acks.push(Ok(()));
            }
            if world.chance(world.swarm.produce_duplicate_permille) {
                let acknowledged = thread_rng().gen_range(0..acks.len());
                world.fault(
                    "produce_timeout",
                    format_args!(
                        "{} of {} appended messages reported timed out",
                        acks.len() - acknowledged,
                        acks.len()
                    ),
                );
                for ack in &mut acks[acknowledged..] {
                    *ack = Err(BusError("request timed out".to_owned()));
                }
            }
            Response::Produced(acks)
        }
        Request::DeadLetter(message) => {
            world.note(format_args!("broker dead letter key {}", message.key));
            disk.dead_letters.push(message);
            Response::Done(Ok(()))
        }
        Request::Join(group) => {
            disk.rebalance(&group);
            let generation = disk.generations[&group];
            let positions = (0..PARTITIONS)
                .map(|partition| disk.committed.get(&(group.clone(), partition)).copied().unwrap_or(0))
                .collect();
            world.note(format_args!("broker {group} joined, generation {generation}"));
            Response::Joined { generation, positions }
        }
        Request::Fetch { group, generation, positions, max } => {
            if disk.generations.get(&group).copied().unwrap_or(0) != generation {
                Response::Fetched(Err(BusError(format!("{group}: generation {generation} is stale; rejoin"))))
            } else {
                let mut deliveries = Vec::new();
                for (partition, start) in (0..PARTITIONS).zip(positions) {
                    let Some(log) = disk.partitions.get(&partition) else { continue };
                    let start = usize::try_from(start).expect("small offsets");
                    for (offset, message) in log.iter().enumerate().skip(start).take(max - deliveries.len()) {
                        deliveries.push(Delivery {
                            partition,
                            offset: offset as u64,
                            key: message.key.clone(),
                            payload: message.payload.clone(),
                        });
                    }
                }
                if !deliveries.is_empty() {
                    let first = &deliveries[0];
                    world.note(format_args!(
                        "broker deliver {group} {} messages from p{}@{}",
                        deliveries.len(),
                        first.partition,
                        first.offset
                    ));
                }
                Response::Fetched(Ok(deliveries))
            }
        }
        Request::Commit { group, generation, offsets } => {
            if disk.generations.get(&group).copied().unwrap_or(0) == generation {
                let projection = Projection::ALL.into_iter().find(|projection| projection.group() == group);
                if let Some(projection) = projection {
                    let tables = lock(&world.projections);
                    let mut premature = Vec::new();
                    for (partition, offset) in &offsets {
                        let from = disk.committed.get(&(group.clone(), *partition)).copied().unwrap_or(0);
                        let log = disk.partitions.get(partition).map_or(&[][..], Vec::as_slice);
                        let end = usize::try_from(*offset).unwrap_or(usize::MAX).min(log.len());
                        let start = usize::try_from(from).unwrap_or(usize::MAX).min(end);
                        for (at, message) in log.iter().enumerate().take(end).skip(start) {
                            let Ok(event) = decode_event(&message.payload) else { continue };
                            if tables.tables.projected_version(projection, &event.wallet_id) < event.version {
                                premature.push(format!(
                                    "{group} committed p{partition} to {offset} past p{partition}@{at} ({} version {}), \
                                     which it had not applied",
                                    event.wallet_id, event.version
                                ));
                            }
                        }
                    }
                    disk.premature_commits.extend(premature);
                }
                for (partition, offset) in &offsets {
                    disk.committed.insert((group.clone(), *partition), *offset);
                }
                world.note(format_args!("broker {group} committed {offsets:?}"));
                Response::Done(Ok(()))
            } else {
                Response::Done(Err(BusError(format!("{group}: commit from stale generation {generation}"))))
            }
        }
        Request::Lag(group) => Response::Lag(disk.lag(&group)),
    };
    Some(response)
}

/// The app node's handle on the broker.
#[derive(Clone)]
pub struct SimBus {
    endpoint: Arc<Endpoint>,
}

impl SimBus {
    pub fn new(endpoint: Arc<Endpoint>) -> SimBus {
        SimBus { endpoint }
    }
}

async fn call(endpoint: &Endpoint, request: Request, what: &str) -> Result<Response, BusError> {
    rpc::call(endpoint, rpc::broker_addr(), BROKER_SERVICE, Link::AppBroker, what, request, BROKER_TIMEOUT)
        .await
        .map_err(|error| BusError(format!("{what}: {error}")))
}

impl Bus for SimBus {
    type Consumer = SimConsumer;

    fn partition(&self, key: &str) -> u32 {
        InProcessBus::partition_of(key)
    }

    async fn publish(&self, messages: &[BusMessage]) -> Vec<Result<(), BusError>> {
        match call(&self.endpoint, Request::Produce(messages.to_vec()), "produce").await {
            Ok(Response::Produced(acks)) => acks,
            Ok(other) => panic!("broker answered {other:?} to produce"),
            Err(error) => vec![Err(error); messages.len()],
        }
    }

    async fn publish_dead_letter(&self, message: BusMessage) -> Result<(), BusError> {
        match call(&self.endpoint, Request::DeadLetter(message), "dead_letter").await? {
            Response::Done(result) => result,
            other => panic!("broker answered {other:?} to a dead letter"),
        }
    }

    async fn consumer(&self, group: &str) -> Result<SimConsumer, BusError> {
        let mut consumer = SimConsumer {
            endpoint: self.endpoint.clone(),
            group: group.to_owned(),
            generation: 0,
            positions: Vec::new(),
        };
        consumer.join().await?;
        Ok(consumer)
    }

    async fn lag(&self, group: &str) -> Result<u64, BusError> {
        match call(&self.endpoint, Request::Lag(group.to_owned()), "lag").await? {
            Response::Lag(lag) => Ok(lag),
            other => panic!("broker answered {other:?} to lag"),
        }
    }
}

/// A consumer-group member: its generation and its fetch position per partition.
pub struct SimConsumer {
    endpoint: Arc<Endpoint>,
    group: String,
    generation: u64,
    /// Empty until joined.
    positions: Vec<u64>,
}

impl SimConsumer {
    async fn join(&mut self) -> Result<(), BusError> {
        match call(&self.endpoint, Request::Join(self.group.clone()), "join").await? {
            Response::Joined { generation, positions } => {
                self.generation = generation;
                self.positions = positions;
                Ok(())
            }
            other => panic!("broker answered {other:?} to join"),
        }
    }
}

impl Consumer for SimConsumer {
    async fn poll(&mut self, max: usize, timeout_ms: u64) -> Result<Vec<Delivery>, BusError> {
        if self.positions.is_empty() {
            self.join().await?;
        }
        let request = Request::Fetch {
            group: self.group.clone(),
            generation: self.generation,
            positions: self.positions.clone(),
            max,
        };
        let deliveries = match call(&self.endpoint, request, "fetch").await? {
            Response::Fetched(Ok(deliveries)) => deliveries,
            Response::Fetched(Err(error)) => {
                // Rebalanced: rejoin next time, from the committed offsets.
                self.positions.clear();
                return Err(error);
            }
            other => panic!("broker answered {other:?} to fetch"),
        };
        if deliveries.is_empty() {
            tokio::time::sleep(Duration::from_millis(timeout_ms)).await;
        }
        for delivery in &deliveries {
            let position = &mut self.positions[delivery.partition as usize];
            *position = (*position).max(delivery.offset + 1);
        }
        Ok(deliveries)
    }

    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), BusError> {
        let request =
            Request::Commit { group: self.group.clone(), generation: self.generation, offsets: offsets.to_vec() };
        match call(&self.endpoint, request, "commit").await? {
            Response::Done(result) => result,
            other => panic!("broker answered {other:?} to commit"),
        }
    }
}

impl std::fmt::Debug for SimBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimBus")
    }
}

impl std::fmt::Debug for SimConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConsumer").field("group", &self.group).field("generation", &self.generation).finish()
    }
}
