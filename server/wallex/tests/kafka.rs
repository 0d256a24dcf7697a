//! The production setup end to end: PostgreSQL and a real Kafka-protocol broker.
//!
//! Commands go through the pipeline; the test then reads the events topic with its own consumer
//! group and checks that every committed event reached Kafka, keyed by wallet, in per-wallet version
//! order; that both projections equal the write model; that a duplicated delivery changes nothing;
//! and that a poison message lands in the dead-letter topic with its reason and shows in the stats.

use wallex_testkit::services as support;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Headers;
use wallex_engine::{Amount, Command, CommandId, CommandKind, Currency, OwnerId, WalletId};
use wallex_kafka::{KafkaBus, KafkaConfig};
use wallex_pipeline::SystemClock;
use wallex_pipeline::ports::{Bus, BusMessage, Projection, ProjectionStore};
use wallex_pipeline::writer::recover;
use wallex_pipeline::{Pipeline, PipelineConfig, Reply, codec};
use wallex_sql::PostgresStore;

const WALLETS: usize = 6;

fn wallet(index: usize) -> WalletId {
    WalletId::parse(&format!("k{index}")).unwrap()
}

/// Every message of `topic`, read from the start by a fresh group, until `expected` arrived.
async fn read_topic(brokers: &str, topic: &str, expected: usize) -> Vec<(i32, String, Vec<u8>, Vec<(String, String)>)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while messages.len() < expected && tokio::time::Instant::now() < deadline {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await else { continue };
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        messages.push((
            message.partition(),
            String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            message.payload().unwrap_or_default().to_vec(),
            headers,
        ));
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_kafka_carry_every_event_in_order_to_both_projections() {
    let database = support::postgres().await;
    let broker = support::kafka();
    let store = PostgresStore::connect(&database.url).await.unwrap();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let mut config = KafkaConfig::new(&broker.brokers);
    // One test broker: one replica.
    config.replication_factor = 1;
    config.min_insync_replicas = 1;
    config.topic = format!("wallet-events-{suffix}");
    config.dead_letter_topic = format!("wallet-events-dlq-{suffix}");
    let bus = KafkaBus::connect(config.clone()).await.unwrap();
    let mut pipeline_config = PipelineConfig::default();
    pipeline_config.projector.poll_timeout_ms = 200;
    let pipeline = Pipeline::start(store.clone(), bus.clone(), SystemClock, pipeline_config).await.unwrap();

    let mut submitted = 0u128;
    let mut submit = |kind: CommandKind| {
        submitted += 1;
        let sender = pipeline.commands.clone();
        async move { sender.submit(Command::new(CommandId(submitted), kind)).await }
    };
    for index in 0..WALLETS {
        let kind = CommandKind::CreateWallet {
            wallet_id: wallet(index),
            owner_id: OwnerId::parse("kafka").unwrap(),
            currency: Currency::USD,
            initial_balance: Amount::from_minor(100_000).unwrap(),
            overdraft_limit: Amount::ZERO,
        };
        assert!(matches!(submit(kind).await, Reply::Decided { .. }));
    }
    for round in 0..60usize {
        let source = round % WALLETS;
        let kind = match round % 3 {
            0 => CommandKind::Credit {
                wallet_id: wallet(source),
                currency: Currency::USD,
                amount: Amount::from_minor(500 + round as u64).unwrap(),
                description: None,
            },
            1 => CommandKind::Debit {
                wallet_id: wallet(source),
                currency: Currency::USD,
                amount: Amount::from_minor(300).unwrap(),
                description: None,
            },
            _ => CommandKind::Transfer {
                source: wallet(source),
                destination: wallet((source + 1) % WALLETS),
                currency: Currency::USD,
                amount: Amount::from_minor(1_000).unwrap(),
                description: None,
            },
        };
        assert!(matches!(submit(kind).await, Reply::Decided { .. }));
    }

    // The write model, and both projections converging to it.
    let ledger = recover(&store, wallex_engine::Config::default(), 1_000).await.unwrap();
    let total_events: u64 = ledger.wallets().iter().map(|w| w.version).sum();
    let mut converged = false;
    for _ in 0..300 {
        let mut done = true;
        for wallet in ledger.wallets() {
            for projection in Projection::ALL {
                done &= store.projected_version(projection, &wallet.id).await.unwrap() == wallet.version;
            }
        }
        if done {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(converged, "both projections reach the write model through Kafka");
    for wallet in ledger.wallets() {
        let view = store.wallet(&wallet.id).await.unwrap().unwrap();
        assert_eq!((view.balance, view.version), (wallet.balance, wallet.version));
    }

    // Kafka holds every event, keyed by wallet, in version order per wallet.
    let topic = read_topic(&broker.brokers, &config.topic, usize::try_from(total_events).unwrap()).await;
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut partitions: BTreeMap<String, i32> = BTreeMap::new();
    for (partition, key, payload, _) in &topic {
        let event = codec::decode_event(payload).unwrap();
        assert_eq!(key, &event.wallet_id.to_string());
        assert_eq!(*partitions.entry(key.clone()).or_insert(*partition), *partition, "one partition per wallet");
        versions.entry(key.clone()).or_default().push(event.version);
    }
    for wallet in ledger.wallets() {
        let seen = &versions[wallet.id.as_str()];
        let expected: Vec<u64> = (1..=wallet.version).collect();
        assert_eq!(seen, &expected, "{}: every version once, in order", wallet.id);
    }

    // A duplicated delivery changes nothing.
    let (_, key, payload, _) = topic[0].clone();
    let duplicate = BusMessage { key, payload, headers: Vec::new() };
    assert!(bus.publish(&[duplicate]).await.iter().all(Result::is_ok));
    // A poison message goes to the dead-letter topic with its reason.
    let poison = BusMessage { key: "k0".to_owned(), payload: b"{poison".to_vec(), headers: Vec::new() };
    assert!(bus.publish(&[poison]).await.iter().all(Result::is_ok));
    let dead = read_topic(&broker.brokers, &config.dead_letter_topic, 2).await;
    assert_eq!(dead.len(), 2, "each projector dead-letters the poison once");
    for (_, _, payload, headers) in &dead {
        assert_eq!(payload, b"{poison");
        assert!(headers.iter().any(|(name, value)| name == "dlq-reason" && value.contains("not an event envelope")));
    }
    let mut skipped = 0;
    for _ in 0..100 {
        skipped = Projection::ALL
            .iter()
            .map(|p| pipeline.stats.projector(*p).duplicates.load(std::sync::atomic::Ordering::Relaxed))
            .sum::<u64>();
        if skipped >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(skipped, 2, "both projectors skipped the duplicate");
    let dead_lettered: u64 = Projection::ALL
        .iter()
        .map(|p| pipeline.stats.projector(*p).dead_lettered.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(dead_lettered, 2, "and the stats show the dead letters");
    // ... as /health/kafka/stats reports them.
    let state = std::sync::Arc::new(
        wallex_http::AppState::new(pipeline.commands.clone(), store.clone(), pipeline.stats.clone(), "kafka")
            .with_bus(bus.clone()),
    );
    let request = axum::http::Request::get("/health/kafka/stats").body(axum::body::Body::empty()).unwrap();
    let response = tower::ServiceExt::oneshot(wallex_http::router(state), request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    let stats: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(stats["dlq"]["count"], 2, "{stats}");
    assert_eq!(stats["outbox"]["backlog"], 0, "{stats}");
    for group in ["read-model-projector", "ledger-projector"] {
        assert!(stats["consumers"][group]["lag"].is_u64(), "{group} lag is reported: {stats}");
    }
    for wallet in ledger.wallets() {
        let view = store.wallet(&wallet.id).await.unwrap().unwrap();
        assert_eq!((view.balance, view.version), (wallet.balance, wallet.version), "nothing changed");
    }
    pipeline.shutdown().await;
    bus.flush(Duration::from_secs(5)).unwrap();
    store.close().await;
}
