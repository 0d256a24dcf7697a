//! Swarm testing: each seed draws which faults are on and how often (TigerBeetle's VOPR
//! `options_swarm`). A profile narrows the draw to one family of faults, or to none.

use madsim::rand::{Rng, thread_rng};

/// Which faults a seed may draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Profile {
    /// Every kind of fault, each switched on or off per seed.
    Swarm,
    /// No faults: the pipeline under latency only.
    Calm,
    /// Store faults: ambiguous commits, restarts, a lossy or partitioned app↔store link.
    Store,
    /// Broker faults: outages, produce timeouts with duplicate appends, consumer crashes.
    Bus,
    /// Network faults on every link: losses, partitions, latency spikes.
    Net,
    /// Crashes: the app, the store, the broker and consumers, plus clock jumps.
    Crash,
    /// Two or three app nodes under one writer lease: writers killed, paused past the lease and
    /// cut off from the store, takeovers, and store faults beside them.
    Cluster,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Swarm => "swarm",
            Profile::Calm => "calm",
            Profile::Store => "store",
            Profile::Bus => "bus",
            Profile::Net => "net",
            Profile::Crash => "crash",
            Profile::Cluster => "cluster",
        }
    }
}

/// A network link between two kinds of node (both directions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Link {
    ClientApp = 0,
    AppStore = 1,
    AppBroker = 2,
}

impl Link {
    pub const ALL: [Link; 3] = [Link::ClientApp, Link::AppStore, Link::AppBroker];

    pub fn name(self) -> &'static str {
        match self {
            Link::ClientApp => "client<->app",
            Link::AppStore => "app<->store",
            Link::AppBroker => "app<->broker",
        }
    }
}

/// A discrete fault the fault driver schedules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Disruption {
    StoreRestart,
    BrokerOutage,
    ConsumerCrash,
    AppKill,
    /// An app node stops (a GC pause, a stopped VM) for up to three leases, then resumes.
    AppPause,
    Partition,
    LatencySpike,
    ClockJump,
    /// An undecodable message on the events topic.
    Poison,
}

/// What one seed drew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Swarm {
    /// App nodes on the store (one writer among them).
    pub apps: usize,
    pub clients: usize,
    pub wallets: usize,
    /// How long clients submit new operations while faults are injected.
    pub fault_phase_ms: u64,
    /// Longest pause between one client's operations.
    pub think_ms: u64,
    /// Per link (indexed by `Link`), the chance in 1,000 that a request is lost.
    pub request_loss_permille: [u32; 3],
    /// Per link, the chance in 1,000 that a response is lost.
    pub response_loss_permille: [u32; 3],
    /// Chance in 1,000 that the store commits and the reply is lost.
    pub ambiguous_commit_permille: u32,
    /// Chance in 1,000 that a commit waits past the writer's timeout and then lands.
    pub late_commit_permille: u32,
    /// Chance in 1,000 that the broker appends a produce request and reports a timeout.
    pub produce_duplicate_permille: u32,
    /// Chance in 1,000 that the broker acknowledges one message of a produce request and loses it
    /// (an unclean leader election): a gap the projectors must repair from the event store.
    pub produce_loss_permille: u32,
    /// Chance in 1,000 that one message of a produce request fails while the later ones are
    /// appended: retried, it lands after its successors (a reordering across retries).
    pub produce_reorder_permille: u32,
    /// The discrete faults switched on.
    pub disruptions: Vec<Disruption>,
    /// Mean pause between discrete faults.
    pub disruption_interval_ms: u64,
    /// The relay's `mark_interval_ms`: how much a restart may republish.
    pub relay_mark_interval_ms: u64,
    /// The projectors' `linger_ms`: how far apart their transactions start.
    pub projector_linger_ms: u64,
}

impl Swarm {
    /// Draws a seed's swarm from the runtime's seeded generator.
    pub fn draw(profile: Profile) -> Swarm {
        let mut rng = thread_rng();
        let mut swarm = Swarm {
            apps: 1,
            clients: rng.gen_range(2..=8),
            wallets: rng.gen_range(3..=8),
            fault_phase_ms: rng.gen_range(5_000..=30_000),
            think_ms: rng.gen_range(0..=150),
            request_loss_permille: [0; 3],
            response_loss_permille: [0; 3],
            ambiguous_commit_permille: 0,
            produce_duplicate_permille: 0,
            late_commit_permille: 0,
            produce_loss_permille: 0,
            produce_reorder_permille: 0,
            disruptions: Vec::new(),
            disruption_interval_ms: rng.gen_range(300..=2_500),
            relay_mark_interval_ms: 0,
            projector_linger_ms: 0,
        };
        let on = |rng: &mut madsim::rand::GlobalRng| profile != Profile::Swarm || rng.gen_bool(0.5);
        let rate = |rng: &mut madsim::rand::GlobalRng, max: u32| rng.gen_range(1..=max);
        let links: &[Link] = match profile {
            Profile::Swarm | Profile::Net => &Link::ALL,
            Profile::Store | Profile::Cluster => &[Link::AppStore],
            Profile::Bus => &[Link::AppBroker],
            Profile::Calm | Profile::Crash => &[],
        };
        for link in links {
            if on(&mut rng) {
                swarm.request_loss_permille[*link as usize] = rate(&mut rng, 60);
            }
            if on(&mut rng) {
                swarm.response_loss_permille[*link as usize] = rate(&mut rng, 60);
            }
        }
        if matches!(profile, Profile::Swarm | Profile::Store | Profile::Cluster) && on(&mut rng) {
            swarm.ambiguous_commit_permille = rate(&mut rng, 150);
        }
        if matches!(profile, Profile::Swarm | Profile::Bus) && on(&mut rng) {
            swarm.produce_duplicate_permille = rate(&mut rng, 150);
        }
        let candidates: &[Disruption] = match profile {
            Profile::Swarm => &[
                Disruption::StoreRestart,
                Disruption::BrokerOutage,
                Disruption::ConsumerCrash,
                Disruption::AppKill,
                Disruption::Partition,
                Disruption::LatencySpike,
                Disruption::ClockJump,
                Disruption::Poison,
            ],
            Profile::Calm => &[],
            Profile::Store => &[Disruption::StoreRestart, Disruption::Partition],
            Profile::Bus => {
                &[Disruption::BrokerOutage, Disruption::ConsumerCrash, Disruption::Partition, Disruption::Poison]
            }
            Profile::Net => &[Disruption::Partition, Disruption::LatencySpike],
            Profile::Crash => &[
                Disruption::AppKill,
                Disruption::StoreRestart,
                Disruption::BrokerOutage,
                Disruption::ConsumerCrash,
                Disruption::ClockJump,
            ],
            Profile::Cluster => &[
                Disruption::AppKill,
                Disruption::AppPause,
                Disruption::Partition,
                Disruption::StoreRestart,
                Disruption::ConsumerCrash,
            ],
        };
        for disruption in candidates {
            if on(&mut rng) {
                swarm.disruptions.push(*disruption);
            }
        }
        // Pacing knobs, drawn last so the draws above stay what they were for every seed.
        swarm.relay_mark_interval_ms = [0, 10, 50, 250][rng.gen_range(0..4)];
        swarm.projector_linger_ms = [0, 10, 50][rng.gen_range(0..3)];
        if matches!(profile, Profile::Swarm | Profile::Bus) && on(&mut rng) {
            swarm.produce_loss_permille = rate(&mut rng, 30);
        }
        if matches!(profile, Profile::Swarm | Profile::Bus) && on(&mut rng) {
            swarm.produce_reorder_permille = rate(&mut rng, 60);
        }
        if matches!(profile, Profile::Swarm | Profile::Store | Profile::Cluster) && on(&mut rng) {
            swarm.late_commit_permille = rate(&mut rng, 40);
        }
        if profile == Profile::Cluster {
            swarm.apps = rng.gen_range(2..=3);
            // Every seed of the profile pauses writers: that is what the lease is for.
            if !swarm.disruptions.contains(&Disruption::AppPause) {
                swarm.disruptions.push(Disruption::AppPause);
            }
        }
        swarm
    }

    /// One line for the trace.
    pub fn describe(&self) -> String {
        format!(
            "apps={} clients={} wallets={} fault_phase_ms={} think_ms={} request_loss‰={:?} response_loss‰={:?} \
             ambiguous_commit‰={} produce_duplicate‰={} produce_loss‰={} produce_reorder‰={} late_commit‰={} disruptions={:?} \
             every~{}ms relay_mark_ms={} projector_linger_ms={}",
            self.apps,
            self.clients,
            self.wallets,
            self.fault_phase_ms,
            self.think_ms,
            self.request_loss_permille,
            self.response_loss_permille,
            self.ambiguous_commit_permille,
            self.produce_duplicate_permille,
            self.produce_loss_permille,
            self.produce_reorder_permille,
            self.late_commit_permille,
            self.disruptions,
            self.disruption_interval_ms,
            self.relay_mark_interval_ms,
            self.projector_linger_ms
        )
    }
}
