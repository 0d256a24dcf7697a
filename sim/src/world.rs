//! One seed's world: the swarm it drew, the durable state of the simulated store and broker (their
//! "disks", which survive a node's restart), the fault switches, and the trace.
//!
//! Every node of the seed runs on the one thread that runs the seed, so the world is reached
//! through a thread-local set for the seed's duration. Nothing here iterates a hash map: the trace
//! and every decision must come out the same for the same seed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use madsim::rand::{Rng, thread_rng};
use wallex_engine::Timestamp;
use wallex_engine::planted::Bug;
use wallex_testkit::memory::MemoryStore;
use xxhash_rust::xxh3::Xxh3;

use crate::broker::BrokerDisk;
use crate::store::ProjectionTables;
use crate::swarm::{Link, Profile, Swarm};

/// The simulated epoch: 2026-01-01T00:00:00Z, in microseconds.
const EPOCH_MICROS: u64 = 1_767_225_600_000_000;

/// Everything one seed shares between its nodes and its checkers.
pub struct World {
    pub seed: u64,
    pub profile: Profile,
    pub bug: Option<Bug>,
    pub swarm: Swarm,
    /// The store's durable write side: committed data only (a commit applies atomically or not at
    /// all), with the PostgreSQL schema's unique constraints.
    pub store: MemoryStore,
    /// The store's durable read side.
    pub projections: Mutex<ProjectionTables>,
    pub broker: Mutex<BrokerDisk>,
    /// The wall clock's steps so far (forward and back), in microseconds.
    clock_jump_micros: AtomicI64,
    /// The part of those steps that is an error past the idempotency retention, which is corrected
    /// before the app restarts: a server does not come back on a clock wrong by more than the
    /// retention (nothing could tell it from a real outage; see `RetentionClock`).
    wrong_by_micros: AtomicI64,
    /// Once set, no more probabilistic faults are injected (the liveness phase).
    healed: AtomicBool,
    started: tokio::time::Instant,
    trace: Mutex<Trace>,
    faults: Mutex<BTreeMap<&'static str, u64>>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("seed", &self.seed).field("profile", &self.profile).finish_non_exhaustive()
    }
}

/// The trace: every notable step, hashed as it is written, kept only when asked for.
struct Trace {
    hasher: Xxh3,
    lines: Option<Vec<String>>,
    count: u64,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<World>>> = const { RefCell::new(None) };
}

impl World {
    /// Builds the world of `seed` (inside its runtime) and makes it current for this thread.
    pub fn enter(seed: u64, profile: Profile, bug: Option<Bug>, keep_trace: bool) -> Arc<World> {
        let swarm = Swarm::draw(profile);
        let world = Arc::new(World {
            seed,
            profile,
            bug,
            swarm,
            store: MemoryStore::new(),
            projections: Mutex::new(ProjectionTables::default()),
            broker: Mutex::new(BrokerDisk::default()),
            clock_jump_micros: AtomicI64::new(0),
            wrong_by_micros: AtomicI64::new(0),
            healed: AtomicBool::new(false),
            started: tokio::time::Instant::now(),
            trace: Mutex::new(Trace { hasher: Xxh3::new(), lines: keep_trace.then(Vec::new), count: 0 }),
            faults: Mutex::new(BTreeMap::new()),
        });
        CURRENT.with(|current| *current.borrow_mut() = Some(world.clone()));
        world
    }

    /// Forgets the current world (at the end of a seed).
    pub fn leave() {
        CURRENT.with(|current| current.borrow_mut().take());
    }

    /// Simulated time since the seed started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The ledger's clock: the simulated epoch plus simulated time plus every clock jump.
    pub fn now(&self) -> Timestamp {
        let elapsed = u64::try_from(self.elapsed().as_micros()).unwrap_or(u64::MAX);
        let wall = (EPOCH_MICROS + elapsed).saturating_add_signed(self.clock_jump_micros.load(Ordering::Relaxed));
        Timestamp::from_unix_micros(wall)
    }

    /// Steps the wall clock by `micros` (back when negative); `wrong` marks a step to be corrected
    /// before the app restarts.
    pub fn jump_clock(&self, micros: i64, wrong: bool) {
        self.clock_jump_micros.fetch_add(micros, Ordering::Relaxed);
        if wrong {
            self.wrong_by_micros.fetch_add(micros, Ordering::Relaxed);
        }
    }

    /// Corrects the wall clock's outstanding error (as NTP or an operator does), before the app
    /// restarts.
    pub fn correct_clock(&self) {
        let wrong = self.wrong_by_micros.swap(0, Ordering::Relaxed);
        if wrong != 0 {
            self.clock_jump_micros.fetch_sub(wrong, Ordering::Relaxed);
            self.fault("clock_correction", format_args!("{:+}s", -wrong / 1_000_000));
        }
    }

    pub fn heal(&self) {
        self.healed.store(true, Ordering::Relaxed);
    }

    pub fn is_healed(&self) -> bool {
        self.healed.load(Ordering::Relaxed)
    }

    /// Writes one trace line, stamped with simulated time.
    pub fn note(&self, line: std::fmt::Arguments<'_>) {
        self.note_unstamped(format_args!("{:>9.3}s {line}", self.elapsed().as_secs_f64()));
    }

    /// Writes one trace line as it is (outside the runtime, where there is no simulated time).
    pub fn note_unstamped(&self, line: std::fmt::Arguments<'_>) {
        let line = line.to_string();
        let mut trace = lock(&self.trace);
        trace.hasher.update(line.as_bytes());
        trace.hasher.update(b"\n");
        trace.count += 1;
        if let Some(lines) = &mut trace.lines {
            lines.push(line);
        }
    }

    /// Counts an injected fault of `kind` and traces it.
    pub fn fault(&self, kind: &'static str, detail: std::fmt::Arguments<'_>) {
        *lock(&self.faults).entry(kind).or_default() += 1;
        self.note(format_args!("FAULT {kind} {detail}"));
    }

    /// Draws whether a probabilistic fault fires: never once healed.
    pub fn chance(&self, permille: u32) -> bool {
        permille > 0 && !self.is_healed() && thread_rng().gen_range(0..1000) < permille
    }

    /// Whether to drop a request on `link` (counted and traced when it does).
    pub fn drop_request(&self, link: Link, what: &str) -> bool {
        let dropped = self.chance(self.swarm.request_loss_permille[link as usize]);
        if dropped {
            self.fault("request_lost", format_args!("{} {what}", link.name()));
        }
        dropped
    }

    /// Whether to drop a response on `link` (counted and traced when it does).
    pub fn drop_response(&self, link: Link, what: &str) -> bool {
        let dropped = self.chance(self.swarm.response_loss_permille[link as usize]);
        if dropped {
            self.fault("response_lost", format_args!("{} {what}", link.name()));
        }
        dropped
    }

    pub fn trace_hash(&self) -> u64 {
        lock(&self.trace).hasher.digest()
    }

    pub fn trace_lines(&self) -> Vec<String> {
        lock(&self.trace).lines.clone().unwrap_or_default()
    }

    pub fn faults(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.faults).clone()
    }
}

/// The current seed's world. Panics outside a seed: a node was started by something else.
pub fn world() -> Arc<World> {
    CURRENT.with(|current| current.borrow().clone()).expect("a simulated node runs inside a seed")
}

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Traces a line in the current world.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => { $crate::world::world().note(format_args!($($arg)*)) };
}

/// The current seed's world, if a seed is running on this thread.
pub fn try_world() -> Option<Arc<World>> {
    CURRENT.with(|current| current.borrow().clone())
}
