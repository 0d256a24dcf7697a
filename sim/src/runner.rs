//! One seed, start to verdict: build the world, start the nodes, run the workload under the fault
//! driver, heal, wait for convergence (bounded), and run the checkers. Any panic inside the
//! simulation (an engine assertion, a node that cannot recover, madsim's time limit) fails the seed
//! with its message; nothing escapes to the caller.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use madsim::runtime::{Handle, Runtime};
use wallex_engine::planted::{self, Bug};

use crate::check::{self, Violation};
use crate::faults::{self, Nodes};
use crate::swarm::Profile;
use crate::workload::{self, Operation};
use crate::world::World;
use crate::{app, broker, rpc, store};

/// How long the read side may take to converge once every client is done, in simulated time.
const CONVERGENCE_MS: u64 = 30_000;
/// madsim aborts a seed that runs longer than this in simulated time.
const SIMULATED_TIME_LIMIT: Duration = Duration::from_secs(300);

/// What one seed did.
#[derive(Clone, Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub verdict: Result<(), Violation>,
    pub trace_hash: u64,
    pub trace: Vec<String>,
    pub faults: BTreeMap<&'static str, u64>,
    pub operations: u64,
    pub acknowledged: u64,
    pub checks: u64,
    pub simulated: Duration,
}

struct Finished {
    operations: Vec<Operation>,
    checks: Result<u64, Violation>,
    simulated: Duration,
}

/// Runs `seed` and reports. Deterministic: the same arguments give the same report.
///
/// Each seed runs on a thread of its own: std's `HashMap` keys are seeded once per thread (madsim
/// seeds them from the seed on the first use), so a second seed on the same thread would see other
/// keys, and madsim's internal maps would iterate in another order.
pub fn run_seed(seed: u64, profile: Profile, bug: Option<Bug>, keep_trace: bool) -> SeedReport {
    std::thread::scope(|scope| {
        scope
            .spawn(|| run_seed_on_this_thread(seed, profile, bug, keep_trace))
            .join()
            .expect("the runner catches every panic of a seed")
    })
}

fn run_seed_on_this_thread(seed: u64, profile: Profile, bug: Option<Bug>, keep_trace: bool) -> SeedReport {
    let mut runtime = Runtime::with_seed_and_config(seed, madsim::Config::default());
    runtime.set_time_limit(SIMULATED_TIME_LIMIT);
    planted::plant(bug);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async move {
            let world = World::enter(seed, profile, bug, keep_trace);
            let finished = simulate().await;
            (world, finished)
        })
    }));
    planted::plant(None);
    let report = match outcome {
        Ok((world, finished)) => {
            let acknowledged = finished.operations.iter().filter(|operation| operation.decided.is_some()).count();
            let (verdict, checks) = match finished.checks {
                Ok(checks) => (Ok(()), checks),
                Err(violation) => (Err(violation), 0),
            };
            SeedReport {
                seed,
                verdict,
                trace_hash: world.trace_hash(),
                trace: world.trace_lines(),
                faults: world.faults(),
                operations: finished.operations.len() as u64,
                acknowledged: acknowledged as u64,
                checks,
                simulated: finished.simulated,
            }
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                .unwrap_or_else(|| "a panic without a message".to_owned());
            let world = crate::world::try_world();
            if let Some(world) = &world {
                world.note_unstamped(format_args!("VERDICT panic: {message}"));
            }
            SeedReport {
                seed,
                verdict: Err(Violation { promise: "panic", detail: message }),
                trace_hash: world.as_ref().map_or(0, |world| world.trace_hash()),
                trace: world.as_ref().map(|world| world.trace_lines()).unwrap_or_default(),
                faults: world.as_ref().map(|world| world.faults()).unwrap_or_default(),
                operations: 0,
                acknowledged: 0,
                checks: 0,
                simulated: Duration::ZERO,
            }
        }
    };
    World::leave();
    report
}

async fn simulate() -> Finished {
    let world = crate::world::world();
    world.note(format_args!(
        "seed {} profile {} bug {}: {}",
        world.seed,
        world.profile.name(),
        world.bug.map_or("none", Bug::name),
        world.swarm.describe()
    ));
    let handle = Handle::current();
    let store = handle.create_node().name("store").ip(rpc::store_addr().ip()).init(store::run_node).build();
    let broker = handle.create_node().name("broker").ip(rpc::broker_addr().ip()).init(broker::run_node).build();
    let apps: Vec<_> = (0..world.swarm.apps)
        .map(|index| {
            let name = if world.swarm.apps == 1 { "app".to_owned() } else { format!("app-{index}") };
            handle.create_node().name(name).ip(rpc::app_addr_of(index).ip()).init(move || app::run_node(index)).build()
        })
        .collect();
    let mut clients = Vec::new();
    let mut running = Vec::new();
    for index in 0..world.swarm.clients {
        let node = handle.create_node().name(format!("client-{index}")).ip(rpc::client_addr(index).ip()).build();
        running.push(node.spawn(workload::run_client(index)));
        clients.push(node.id());
    }
    let nodes =
        Nodes { store: store.id(), broker: broker.id(), apps: apps.iter().map(|app| app.id()).collect(), clients };
    let driver = tokio::spawn(faults::drive(nodes));
    let mut operations = Vec::new();
    for client in running {
        operations.extend(client.await.expect("a client runs to the end"));
    }
    driver.await.expect("the fault driver runs to the end");
    world.note(format_args!("clients done: {} operations", operations.len()));

    // Liveness: the read side converges within a bound once everything is healed.
    let deadline = world.elapsed() + Duration::from_millis(CONVERGENCE_MS);
    let mut last_difference = None;
    let commands = check::commands(&operations);
    let engine = app::pipeline_config().writer.engine();
    while world.elapsed() < deadline {
        let journal = check::journal(&world).await;
        last_difference = check::divergence(&world, &journal, &commands, engine).await;
        if last_difference.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match &last_difference {
        None => world.note(format_args!("converged")),
        Some(difference) => world.note(format_args!("not converged after {CONVERGENCE_MS}ms: {difference}")),
    }
    let checks = check::verify(&world, &operations, app::pipeline_config().writer.engine()).await;
    match &checks {
        Ok(count) => world.note(format_args!("VERDICT pass: {count} checks")),
        Err(violation) => world.note(format_args!("VERDICT {violation}")),
    }
    Finished { operations, checks, simulated: world.elapsed() }
}
