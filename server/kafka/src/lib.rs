//! The production bus on Kafka (rdkafka, bundled librdkafka).
//!
//! The producer is idempotent (`enable.idempotence=true`, `acks=all`): a message is acknowledged
//! only once every in-sync replica has it, and retries never reorder or duplicate within a
//! partition. Events are keyed by wallet id, so one wallet's events share a partition and keep
//! their order. Topics are created through the admin API when missing. Consumers belong to a group,
//! never auto-commit, and commit offsets only when the projector says the projection transaction
//! is done.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

use wallex_pipeline::ports::{Bus, BusError, BusMessage, Consumer, Delivery};

/// Where and how to talk to Kafka; every field has a default but the brokers.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub partitions: i32,
    pub dead_letter_topic: String,
    pub dead_letter_partitions: i32,
    pub client_id: String,
    /// Replicas of each partition when Wallex creates a topic: 3 in production, so a broker can
    /// be lost without losing an acknowledged message; 1 only for a single test broker.
    pub replication_factor: i32,
    /// The topics' `min.insync.replicas`: with `acks=all`, a write is acknowledged only once this
    /// many replicas have it (2 of 3: one broker may be down, no acknowledged write has one copy).
    pub min_insync_replicas: i32,
    /// How long a produce may wait for its acknowledgement, in milliseconds.
    pub message_timeout_ms: u64,
    /// How long the group waits for a silent consumer (a crashed process) before giving its
    /// partitions to another, in milliseconds: the bound on projection stalls after a crash.
    pub session_timeout_ms: u64,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            topic: "wallet-events".to_owned(),
            partitions: 10,
            dead_letter_topic: "wallet-events-dlq".to_owned(),
            dead_letter_partitions: 5,
            client_id: "wallex".to_owned(),
            replication_factor: 3,
            min_insync_replicas: 2,
            message_timeout_ms: 30_000,
            session_timeout_ms: 6_000,
        }
    }
}

/// How long topic creation at start may take before it counts as failed.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dead letter may wait in the producer's queue (it is retried until acknowledged).
pub const DEAD_LETTER_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the consumer-lag probe waits for the broker's answer.
pub const LAG_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages the producer may hold unacknowledged (librdkafka's `queue.buffering.max.messages`): one
/// relay round (`pipeline.relay.batch`) is published in one flight and must fit.
pub const PRODUCER_QUEUE_MESSAGES: usize = 100_000;

fn bus_error(error: impl std::fmt::Display) -> BusError {
    BusError(error.to_string())
}

#[derive(Clone)]
pub struct KafkaBus {
    config: KafkaConfig,
    producer: FutureProducer,
    /// The events topic's partitions, as the broker reports them (an existing topic keeps its own).
    partitions: u32,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus").field("config", &self.config).finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// Connects the producer and creates the topics if they are missing.
    pub async fn connect(config: KafkaConfig) -> Result<KafkaBus, BusError> {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &config.brokers).create().map_err(bus_error)?;
        let min_insync = config.min_insync_replicas.to_string();
        let topics = [
            NewTopic::new(&config.topic, config.partitions, TopicReplication::Fixed(config.replication_factor))
                .set("min.insync.replicas", &min_insync),
            NewTopic::new(
                &config.dead_letter_topic,
                config.dead_letter_partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
            .set("min.insync.replicas", &min_insync),
        ];
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        for result in admin.create_topics(&topics, &options).await.map_err(bus_error)? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(BusError(format!("creating topic {topic}: {code}"))),
            }
        }
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("client.id", &config.client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("queue.buffering.max.messages", PRODUCER_QUEUE_MESSAGES.to_string())
            .set("message.timeout.ms", config.message_timeout_ms.to_string())
            .create()
            .map_err(bus_error)?;
        // The partition count of the topic as it is (created now, or long ago with another
        // count): every message is sent to the partition `partition` names, never one the topic
        // lacks. The call blocks, so it runs off the async threads.
        let probe = producer.clone();
        let topic = config.topic.clone();
        let partitions = tokio::task::spawn_blocking(move || {
            let metadata = probe.client().fetch_metadata(Some(&topic), ADMIN_TIMEOUT).map_err(bus_error)?;
            let count = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
            u32::try_from(count).map_err(bus_error)
        })
        .await
        .map_err(bus_error)??;
        if partitions == 0 {
            return Err(BusError(format!("topic {} has no partitions", config.topic)));
        }
        tracing::info!(topic = %config.topic, partitions, "events topic");
        Ok(KafkaBus { config, producer, partitions })
    }

    /// Waits until every produced message is acknowledged or failed (at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.producer.flush(timeout).map_err(bus_error)
    }

    /// librdkafka's default partitioner for keyed messages (`consistent_random`: CRC-32 of the key
    /// modulo the partition count), computed here so the relay knows each message's partition
    /// before it sends it, and so a topic written by an earlier release keeps each key where it was.
    fn partition_of(&self, key: &str) -> u32 {
        crc32fast::hash(key.as_bytes()) % self.partitions
    }

    fn record<'a>(topic: &'a str, message: &'a BusMessage) -> FutureRecord<'a, str, [u8]> {
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (key, value) in &message.headers {
            headers = headers.insert(Header { key, value: Some(value.as_str()) });
        }
        FutureRecord::to(topic).key(message.key.as_str()).payload(message.payload.as_slice()).headers(headers)
    }
}

impl Bus for KafkaBus {
    type Consumer = KafkaConsumer;

    fn partition(&self, key: &str) -> u32 {
        self.partition_of(key)
    }

    async fn publish(&self, messages: &[BusMessage]) -> Vec<Result<(), BusError>> {
        // Enqueue everything first (so the producer batches), then collect acknowledgements in order.
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let partition = i32::try_from(self.partition_of(&message.key)).expect("a partition count fits i32");
            let record = KafkaBus::record(&self.config.topic, message).partition(partition);
            pending.push(self.producer.send_result(record));
        }
        let mut results = Vec::with_capacity(messages.len());
        for delivery in pending {
            results.push(match delivery {
                Ok(future) => match future.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((error, _))) => Err(bus_error(error)),
                    Err(_canceled) => Err(BusError("producer dropped the message".to_owned())),
                },
                Err((error, _)) => Err(bus_error(error)),
            });
        }
        results
    }

    async fn publish_dead_letter(&self, message: BusMessage) -> Result<(), BusError> {
        let record = KafkaBus::record(&self.config.dead_letter_topic, &message);
        self.producer.send(record, DEAD_LETTER_QUEUE_TIMEOUT).await.map(|_| ()).map_err(|(error, _)| bus_error(error))
    }

    async fn lag(&self, group: &str) -> Result<u64, BusError> {
        // A separate, unsubscribed consumer: asking a subscribed one for its committed offsets can
        // hang its shutdown. The calls block, so they run off the async threads.
        let brokers = self.config.brokers.clone();
        let topic = self.config.topic.clone();
        let partitions = i32::try_from(self.partitions).map_err(bus_error)?;
        let group = group.to_owned();
        tokio::task::spawn_blocking(move || {
            let probe: rdkafka::consumer::BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()
                .map_err(bus_error)?;
            let timeout = LAG_PROBE_TIMEOUT;
            let mut list = TopicPartitionList::new();
            for partition in 0..partitions {
                list.add_partition(&topic, partition);
            }
            let committed = probe.committed_offsets(list, timeout).map_err(bus_error)?;
            let mut lag = 0u64;
            for element in committed.elements() {
                let (_, high) = probe.fetch_watermarks(&topic, element.partition(), timeout).map_err(bus_error)?;
                let done = match element.offset() {
                    Offset::Offset(offset) => offset,
                    _ => 0,
                };
                lag += u64::try_from(high.saturating_sub(done)).unwrap_or(0);
            }
            Ok(lag)
        })
        .await
        .map_err(bus_error)?
    }

    async fn consumer(&self, group: &str) -> Result<KafkaConsumer, BusError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.config.brokers)
            .set("group.id", group)
            .set("client.id", &self.config.client_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.config.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", (self.config.session_timeout_ms / 4).max(500).to_string())
            // The broker answers a fetch once it has this much data or after this long. The
            // defaults (1 byte, 500 ms) meant a fetch per few messages under load and a quarter of
            // a second of projection lag when quiet; 10 ms tripled the broker's CPU.
            .set("fetch.min.bytes", "65536")
            .set("fetch.wait.max.ms", "50")
            .create()
            .map_err(bus_error)?;
        consumer.subscribe(&[&self.config.topic]).map_err(bus_error)?;
        Ok(KafkaConsumer { consumer: Arc::new(consumer), topic: self.config.topic.clone() })
    }
}

/// One member of a consumer group on the events topic.
pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer>,
    topic: String,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, timeout_ms: u64) -> Result<Vec<Delivery>, BusError> {
        let consumer = &self.consumer;
        collect(max, Duration::from_millis(timeout_ms), || async {
            let message = consumer.recv().await.map_err(bus_error)?;
            Ok(Delivery {
                partition: u32::try_from(message.partition()).map_err(bus_error)?,
                offset: u64::try_from(message.offset()).map_err(bus_error)?,
                key: message.key().map(|key| String::from_utf8_lossy(key).into_owned()).unwrap_or_default(),
                payload: message.payload().unwrap_or_default().to_vec(),
            })
        })
        .await
    }

    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), BusError> {
        let mut list = TopicPartitionList::with_capacity(offsets.len());
        for (partition, next) in offsets {
            let partition = i32::try_from(*partition).map_err(bus_error)?;
            let next = i64::try_from(*next).map_err(bus_error)?;
            list.add_partition_offset(&self.topic, partition, Offset::Offset(next)).map_err(bus_error)?;
        }
        // A synchronous commit waits for the broker: off the async threads, or it stalls every
        // request sharing the worker (two on this machine) for a round trip.
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .map_err(bus_error)?
            .map_err(bus_error)
    }
}

/// Up to `max` deliveries from `receive`: waits up to `first_wait` for the first, then takes only
/// what is already there. An error after some deliveries ends the poll with those deliveries (they
/// were received: dropping them would skip them until a restart); the error is logged and the next
/// poll meets it again if it persists. An error before any delivery is the poll's error.
async fn collect<F, Fut>(max: usize, first_wait: Duration, mut receive: F) -> Result<Vec<Delivery>, BusError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Delivery, BusError>>,
{
    let mut deliveries = Vec::new();
    let mut wait = first_wait;
    while deliveries.len() < max {
        let Ok(received) = tokio::time::timeout(wait, receive()).await else { break };
        match received {
            Ok(delivery) => deliveries.push(delivery),
            Err(error) if deliveries.is_empty() => return Err(error),
            Err(error) => {
                tracing::warn!(%error, received = deliveries.len(), "consumer error after some messages; keeping them");
                break;
            }
        }
        // After the first message, take only what is already there.
        wait = NEXT_MESSAGE_WAIT;
    }
    Ok(deliveries)
}

/// How long a poll waits for each message after the first: only for what is already there.
const NEXT_MESSAGE_WAIT: Duration = Duration::from_millis(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(offset: u64) -> Delivery {
        Delivery { partition: 0, offset, key: "w".to_owned(), payload: Vec::new() }
    }

    /// A scripted consumer: each call answers the next result.
    async fn poll(script: Vec<Result<Delivery, BusError>>, max: usize) -> Result<Vec<Delivery>, BusError> {
        let script = std::sync::Mutex::new(std::collections::VecDeque::from(script));
        collect(max, Duration::from_millis(50), || {
            let next = script.lock().unwrap().pop_front();
            async move {
                match next {
                    Some(result) => result,
                    // Nothing more arrives within the poll.
                    None => std::future::pending().await,
                }
            }
        })
        .await
    }

    #[tokio::test]
    async fn an_error_after_some_messages_keeps_the_messages() {
        let failure = BusError("broker transport failure".to_owned());
        let error = || Err(failure.clone());
        let got = poll(vec![Ok(delivery(1)), Ok(delivery(2)), error(), Ok(delivery(3))], 10).await;
        assert_eq!(got, Ok(vec![delivery(1), delivery(2)]), "what arrived before the error is returned");
        assert_eq!(
            poll(vec![error(), Ok(delivery(1))], 10).await,
            Err(failure.clone()),
            "an error first is the poll's error"
        );
        assert_eq!(poll(vec![Ok(delivery(1)), Ok(delivery(2))], 1).await, Ok(vec![delivery(1)]), "at most max");
        assert_eq!(poll(Vec::new(), 10).await, Ok(Vec::new()), "nothing within the wait: empty");
    }
}
