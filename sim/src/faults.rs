//! The fault driver: during the fault phase it schedules the seed's discrete disruptions (crashes,
//! outages, partitions, latency spikes, clock jumps), each reverted after a drawn duration; at the
//! end of the phase it heals everything (restarts what is down, reconnects every link, restores
//! latency, stops probabilistic faults), and the liveness phase begins.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::rand::{Rng, thread_rng};
use madsim::runtime::Handle;
use madsim::task::NodeId;
use wallex_pipeline::ports::Projection;

use crate::swarm::Disruption;
use crate::world::{lock, world};

/// The nodes of a seed.
#[derive(Clone, Debug)]
pub struct Nodes {
    pub store: NodeId,
    pub broker: NodeId,
    /// The app nodes: one, or the instances of a cluster.
    pub apps: Vec<NodeId>,
    pub clients: Vec<NodeId>,
}

/// The app nodes' names, by index.
const APP_NAMES: [&str; 3] = ["app-0", "app-1", "app-2"];

/// What is currently disrupted, so that healing can undo exactly that.
#[derive(Debug, Default)]
struct Disrupted {
    down: BTreeSet<&'static str>,
    paused: BTreeSet<NodeId>,
    clogged: BTreeSet<(NodeId, NodeId)>,
    slow: bool,
}

const NORMAL_LATENCY: std::ops::Range<Duration> = Duration::from_millis(1)..Duration::from_millis(10);

pub async fn drive(nodes: Nodes) {
    let world = world();
    let disrupted = Arc::new(Mutex::new(Disrupted::default()));
    let phase = Duration::from_millis(world.swarm.fault_phase_ms);
    let interval = world.swarm.disruption_interval_ms;
    if !world.swarm.disruptions.is_empty() {
        loop {
            let gap = Duration::from_millis(thread_rng().gen_range(interval / 2..=interval * 3 / 2));
            if world.elapsed() + gap >= phase {
                break;
            }
            tokio::time::sleep(gap).await;
            let pick = thread_rng().gen_range(0..world.swarm.disruptions.len());
            let disruption = world.swarm.disruptions[pick];
            tokio::spawn(disrupt(disruption, nodes.clone(), disrupted.clone()));
        }
    }
    tokio::time::sleep(phase.saturating_sub(world.elapsed())).await;
    heal(&nodes, &disrupted);
}

fn name_of(nodes: &Nodes, node: NodeId) -> &'static str {
    if node == nodes.store {
        "store"
    } else if node == nodes.broker {
        "broker"
    } else if let Some(index) = nodes.apps.iter().position(|app| *app == node) {
        if nodes.apps.len() == 1 { "app" } else { APP_NAMES[index] }
    } else {
        "client"
    }
}

/// The node a name names (the inverse of `name_of` for stores, brokers and apps).
fn node_named(nodes: &Nodes, name: &str) -> NodeId {
    match name {
        "store" => nodes.store,
        "broker" => nodes.broker,
        "app" => nodes.apps[0],
        _ => nodes.apps[APP_NAMES.iter().position(|app| *app == name).expect("an app's name")],
    }
}

/// One app node, drawn (the only one when there is one).
fn some_app(nodes: &Nodes, rng: &mut madsim::rand::GlobalRng) -> NodeId {
    if nodes.apps.len() == 1 { nodes.apps[0] } else { nodes.apps[rng.gen_range(0..nodes.apps.len())] }
}

async fn disrupt(disruption: Disruption, nodes: Nodes, disrupted: Arc<Mutex<Disrupted>>) {
    let world = world();
    let handle = Handle::current();
    let mut rng = thread_rng();
    match disruption {
        Disruption::StoreRestart | Disruption::BrokerOutage | Disruption::AppKill => {
            let (node, kind, down_ms) = match disruption {
                Disruption::StoreRestart => (nodes.store, "store_restart", rng.gen_range(50..=2_000)),
                Disruption::BrokerOutage => (nodes.broker, "broker_outage", rng.gen_range(300..=5_000)),
                _ => (some_app(&nodes, &mut rng), "app_kill", rng.gen_range(0..=1_500)),
            };
            let name = name_of(&nodes, node);
            if !lock(&disrupted).down.insert(name) {
                return;
            }
            world.fault(kind, format_args!("{name} down for {down_ms}ms"));
            handle.kill(node);
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            if !world.is_healed() && lock(&disrupted).down.remove(name) {
                world.note(format_args!("{name} restarts"));
                if nodes.apps.contains(&node) {
                    world.correct_clock();
                }
                handle.restart(node);
            }
        }
        Disruption::AppPause => {
            // Up to three leases (2 s each): often long enough for another node to take over,
            // with the paused one holding a decided batch it will try to commit on resuming.
            let node = some_app(&nodes, &mut rng);
            if !lock(&disrupted).paused.insert(node) {
                return;
            }
            let paused_ms = rng.gen_range(500..=6_000);
            world.fault("app_pause", format_args!("{} paused for {paused_ms}ms", name_of(&nodes, node)));
            handle.pause(node);
            tokio::time::sleep(Duration::from_millis(paused_ms)).await;
            if !world.is_healed() && lock(&disrupted).paused.remove(&node) {
                world.note(format_args!("{} resumes", name_of(&nodes, node)));
                handle.resume(node);
            }
        }
        Disruption::ConsumerCrash => {
            let projection = Projection::ALL[rng.gen_range(0..Projection::ALL.len())];
            world.fault("consumer_crash", format_args!("{} rebalanced", projection.group()));
            lock(&world.broker).rebalance(projection.group());
        }
        Disruption::Partition => {
            let other = match rng.gen_range(0..3) {
                0 => nodes.store,
                1 => nodes.broker,
                _ => nodes.clients[rng.gen_range(0..nodes.clients.len())],
            };
            let app = some_app(&nodes, &mut rng);
            let pair = (app, other);
            if !lock(&disrupted).clogged.insert(pair) {
                return;
            }
            let duration_ms = rng.gen_range(200..=4_000);
            let (from, to) = (name_of(&nodes, app), name_of(&nodes, other));
            world.fault("partition", format_args!("{from} | {to} for {duration_ms}ms"));
            let net = NetSim::current();
            net.clog_link(app, other);
            net.clog_link(other, app);
            tokio::time::sleep(Duration::from_millis(duration_ms)).await;
            if !world.is_healed() && lock(&disrupted).clogged.remove(&pair) {
                net.unclog_link(app, other);
                net.unclog_link(other, app);
                world.note(format_args!("partition {from} | {to} healed"));
            }
        }
        Disruption::LatencySpike => {
            if std::mem::replace(&mut lock(&disrupted).slow, true) {
                return;
            }
            let high = rng.gen_range(50..=600);
            let duration_ms = rng.gen_range(500..=3_000);
            world.fault("latency_spike", format_args!("up to {high}ms for {duration_ms}ms"));
            NetSim::current().update_config(|config| {
                config.send_latency = Duration::from_millis(high / 4)..Duration::from_millis(high);
            });
            tokio::time::sleep(Duration::from_millis(duration_ms)).await;
            if !world.is_healed() && std::mem::replace(&mut lock(&disrupted).slow, false) {
                NetSim::current().update_config(|config| config.send_latency = NORMAL_LATENCY);
            }
        }
        Disruption::Poison => {
            let key = lock(&world.broker).poison();
            world.fault("poison_message", format_args!("{key} appended to the events topic"));
        }
        Disruption::ClockJump => {
            // The system clock steps: mostly a little ahead (past the engine's own retention),
            // sometimes back, sometimes days ahead (past the store's idempotency retention).
            let (seconds, wrong): (i64, bool) = match rng.gen_range(0..10) {
                0..=5 => (rng.gen_range(1..=300), false),
                6 | 7 => (-rng.gen_range(1..=3_600), false),
                _ => (rng.gen_range(25 * 3_600..=72 * 3_600), true),
            };
            world.fault("clock_jump", format_args!("{seconds:+}s"));
            world.jump_clock(seconds * 1_000_000, wrong);
        }
    }
}

fn heal(nodes: &Nodes, disrupted: &Mutex<Disrupted>) {
    let world = world();
    world.heal();
    let mut disrupted = lock(disrupted);
    let handle = Handle::current();
    world.correct_clock();
    for name in std::mem::take(&mut disrupted.down) {
        handle.restart(node_named(nodes, name));
    }
    for node in std::mem::take(&mut disrupted.paused) {
        handle.resume(node);
    }
    let net = NetSim::current();
    for app in &nodes.apps {
        for node in [nodes.store, nodes.broker].into_iter().chain(nodes.clients.iter().copied()) {
            net.unclog_link(*app, node);
            net.unclog_link(node, *app);
        }
    }
    disrupted.clogged.clear();
    disrupted.slow = false;
    net.update_config(|config| config.send_latency = NORMAL_LATENCY);
    world.note(format_args!("HEAL everything; liveness phase"));
}
