//! The command line: `run`, `repro`, `canary`, `conformance`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use wallex_engine::planted::Bug;

use crate::runner::{SeedReport, run_seed};
use crate::swarm::Profile;

#[derive(Debug, Parser)]
#[command(name = "wallex-sim", about = "Deterministic simulation of the Wallex pipeline under swarm faults")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs many seeds and summarizes; prints the reproduction of every failure.
    Run {
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Seeds run in parallel (one thread each); defaults to the number of cores.
        #[arg(long)]
        jobs: Option<usize>,
        #[arg(long, value_enum, default_value_t = Profile::Swarm)]
        profile: Profile,
        /// Plant a known bug (see `canary`).
        #[arg(long, value_parser = parse_bug)]
        bug: Option<Bug>,
        /// Runs each seed twice and fails if the two traces differ.
        #[arg(long)]
        check_determinism: bool,
    },
    /// Replays one seed exactly.
    Repro {
        #[arg(long)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = Profile::Swarm)]
        profile: Profile,
        #[arg(long, value_parser = parse_bug)]
        bug: Option<Bug>,
        /// Prints the whole trace: faults, commands, commits, publishes, deliveries, verdicts.
        #[arg(long)]
        trace: bool,
        #[arg(long)]
        check_determinism: bool,
    },
    /// Plants each known bug in turn and fails unless some seed catches every one.
    Canary {
        /// Most seeds tried per bug.
        #[arg(long, default_value_t = 1_000)]
        max_seeds: u64,
        #[arg(long)]
        jobs: Option<usize>,
        #[arg(long, value_enum, default_value_t = Profile::Swarm)]
        profile: Profile,
    },
    /// Runs the server's store conformance suite against the simulated store, over the network.
    Conformance,
}

fn parse_bug(name: &str) -> Result<Bug, String> {
    Bug::parse(name).ok_or_else(|| {
        let names: Vec<&str> = Bug::ALL.iter().map(|bug| bug.name()).collect();
        format!("unknown bug `{name}`; known: {}", names.join(", "))
    })
}

pub fn main() -> ExitCode {
    // Failing seeds panic on purpose (assertions, time limits); the runner reports them.
    std::panic::set_hook(Box::new(|_| {}));
    match Cli::parse().command {
        Command::Run { seeds, start, jobs, profile, bug, check_determinism } => {
            run(seeds, start, jobs_or_cores(jobs), profile, bug, check_determinism)
        }
        Command::Repro { seed, profile, bug, trace, check_determinism } => {
            repro(seed, profile, bug, trace, check_determinism)
        }
        Command::Canary { max_seeds, jobs, profile } => canary(max_seeds, jobs_or_cores(jobs), profile),
        Command::Conformance => conformance(),
    }
}

fn jobs_or_cores(jobs: Option<usize>) -> usize {
    jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)).max(1)
}

/// The one line that reproduces a seed, in the syntax `repro` parses.
fn reproduction(seed: u64, profile: Profile, bug: Option<Bug>) -> String {
    let bug = bug.map(|bug| format!(" --bug {bug}")).unwrap_or_default();
    format!("wallex-sim repro --seed {seed} --profile {}{bug}", profile.name())
}

/// Runs `seeds` on `jobs` threads; calls `each` on the calling thread as reports arrive.
fn run_parallel(
    seeds: Vec<u64>,
    jobs: usize,
    profile: Profile,
    bug: Option<Bug>,
    check_determinism: bool,
    mut each: impl FnMut(&SeedReport) -> bool,
) -> Vec<SeedReport> {
    let next = AtomicU64::new(0);
    let (sender, receiver) = mpsc::channel();
    let mut reports = Vec::with_capacity(seeds.len());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(seeds.len().max(1)) {
            let sender = sender.clone();
            let (next, seeds, stop) = (&next, &seeds, &stop);
            scope.spawn(move || {
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let index = usize::try_from(next.fetch_add(1, Ordering::Relaxed)).expect("small");
                    let Some(&seed) = seeds.get(index) else { return };
                    let mut report = run_seed(seed, profile, bug, false);
                    if check_determinism {
                        let again = run_seed(seed, profile, bug, false);
                        if again.trace_hash != report.trace_hash && report.verdict.is_ok() {
                            report.verdict = Err(crate::check::Violation {
                                promise: "determinism",
                                detail: format!(
                                    "two runs traced {:016x} and {:016x}",
                                    report.trace_hash, again.trace_hash
                                ),
                            });
                        }
                    }
                    if sender.send(report).is_err() {
                        return;
                    }
                }
            });
        }
        drop(sender);
        for report in receiver {
            if !each(&report) {
                stop.store(true, Ordering::Relaxed);
            }
            reports.push(report);
        }
    });
    reports.sort_by_key(|report| report.seed);
    reports
}

fn progress(length: u64) -> ProgressBar {
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(length);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} seeds, {per_sec} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::hidden())
    }
}

fn run(seeds: u64, start: u64, jobs: usize, profile: Profile, bug: Option<Bug>, check_determinism: bool) -> ExitCode {
    if seeds == 0 {
        eprintln!("wallex-sim: --seeds 0 runs nothing; refusing to report success");
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let bar = progress(seeds);
    let plain = bar.is_hidden();
    let mut failures = 0u64;
    let mut done = 0u64;
    let reports = run_parallel((start..start + seeds).collect(), jobs, profile, bug, check_determinism, |report| {
        done += 1;
        bar.inc(1);
        if let Err(violation) = &report.verdict {
            failures += 1;
            bar.println(format!("seed {} FAILED: {violation}", report.seed));
            bar.println(format!("  reproduce: {}", reproduction(report.seed, profile, bug)));
        }
        bar.set_message(format!("{failures} failed"));
        if plain && (done.is_multiple_of((seeds / 10).max(1)) || done == seeds) {
            eprintln!("{done}/{seeds} seeds, {failures} failed, {:.1}s", started.elapsed().as_secs_f64());
        }
        true
    });
    bar.finish_and_clear();
    summarize(&reports, started.elapsed(), profile, bug, check_determinism);
    if reports.len() as u64 != seeds {
        eprintln!("wallex-sim: ran {} of {seeds} seeds", reports.len());
        return ExitCode::FAILURE;
    }
    if failures > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn summarize(reports: &[SeedReport], elapsed: Duration, profile: Profile, bug: Option<Bug>, determinism: bool) {
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    for report in reports {
        for (kind, count) in &report.faults {
            *faults.entry(kind).or_default() += count;
        }
    }
    let failed: Vec<&SeedReport> = reports.iter().filter(|report| report.verdict.is_err()).collect();
    let simulated: Duration = reports.iter().map(|report| report.simulated).sum();
    println!("wallex-sim run: profile {}{}", profile.name(), bug.map(|bug| format!(", bug {bug}")).unwrap_or_default());
    println!("  seeds:          {} ({} failed)", reports.len(), failed.len());
    println!(
        "  operations:     {} submitted, {} acknowledged",
        reports.iter().map(|report| report.operations).sum::<u64>(),
        reports.iter().map(|report| report.acknowledged).sum::<u64>()
    );
    println!("  checks passed:  {}", reports.iter().map(|report| report.checks).sum::<u64>());
    let total: u64 = faults.values().sum();
    let listed: Vec<String> = faults.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
    println!("  faults:         {total} ({})", listed.join(", "));
    println!(
        "  time:           {:.1}s wall, {:.0}s simulated, {:.1} seeds/s{}",
        elapsed.as_secs_f64(),
        simulated.as_secs_f64(),
        reports.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        if determinism { " (each seed run twice)" } else { "" }
    );
    for report in failed.iter().take(20) {
        if let Err(violation) = &report.verdict {
            println!("  FAILED seed {}: {violation}", report.seed);
            println!("    reproduce: {}", reproduction(report.seed, profile, bug));
        }
    }
}

fn repro(seed: u64, profile: Profile, bug: Option<Bug>, trace: bool, check_determinism: bool) -> ExitCode {
    let report = run_seed(seed, profile, bug, trace);
    if trace {
        for line in &report.trace {
            println!("{line}");
        }
    }
    println!("trace hash {:016x}", report.trace_hash);
    let mut ok = report.verdict.is_ok();
    if check_determinism {
        let again = run_seed(seed, profile, bug, false);
        if again.trace_hash == report.trace_hash {
            println!("determinism: the second run traced the same hash");
        } else {
            println!("determinism: FAILED, the second run traced {:016x}", again.trace_hash);
            ok = false;
        }
    }
    match &report.verdict {
        Ok(()) => println!(
            "seed {seed} passed: {} operations, {} acknowledged, {} checks, faults {:?}",
            report.operations, report.acknowledged, report.checks, report.faults
        ),
        Err(violation) => {
            println!("seed {seed} FAILED: {violation}\n  reproduce: {}", reproduction(seed, profile, bug))
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn canary(max_seeds: u64, jobs: usize, profile: Profile) -> ExitCode {
    let started = Instant::now();
    let mut uncaught = Vec::new();
    println!("wallex-sim canary: each planted bug must be caught within {max_seeds} seeds");
    for bug in Bug::ALL {
        // A bug only several writers can show is hunted among clusters.
        let profile = if bug == Bug::CommitWithoutEpochCheck { Profile::Cluster } else { profile };
        let bug_started = Instant::now();
        let mut caught: Option<SeedReport> = None;
        let mut tried = 0u64;
        // In rounds of `jobs` seeds, so the first catch stops the search quickly.
        let mut next = 0u64;
        while caught.is_none() && next < max_seeds {
            let round: Vec<u64> = (next..(next + jobs as u64 * 4).min(max_seeds)).collect();
            next += round.len() as u64;
            let reports = run_parallel(round, jobs, profile, Some(bug), false, |report| report.verdict.is_ok());
            tried += reports.len() as u64;
            caught = reports.into_iter().find(|report| report.verdict.is_err());
        }
        match caught {
            Some(report) => {
                let violation = report.verdict.as_ref().expect_err("a failing seed");
                println!(
                    "  {:<32} caught by seed {:>4}: {:>4} seeds to catch ({tried} run, {:.1}s), by {}",
                    bug.name(),
                    report.seed,
                    report.seed + 1,
                    bug_started.elapsed().as_secs_f64(),
                    violation.promise
                );
                println!("  {:<32} {}", "", reproduction(report.seed, profile, Some(bug)));
            }
            None => {
                println!("  {:<32} NOT CAUGHT in {max_seeds} seeds", bug.name());
                uncaught.push(bug);
            }
        }
    }
    println!(
        "canary: {} of {} planted bugs caught in {:.1}s",
        Bug::ALL.len() - uncaught.len(),
        Bug::ALL.len(),
        started.elapsed().as_secs_f64()
    );
    if uncaught.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn conformance() -> ExitCode {
    let runtime = madsim::runtime::Runtime::with_seed_and_config(1, madsim::Config::default());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            crate::world::World::enter(1, Profile::Calm, None, false);
            let handle = madsim::runtime::Handle::current();
            handle.create_node().name("store").ip(crate::rpc::store_addr().ip()).init(crate::store::run_node).build();
            let app = handle.create_node().name("app").ip(crate::rpc::app_addr().ip()).build();
            app.spawn(async {
                let endpoint = madsim::net::Endpoint::bind(crate::rpc::app_addr()).await.expect("a free address");
                wallex_testkit::conformance::run(crate::store::SimStore::new(std::sync::Arc::new(endpoint))).await;
            })
            .await
            .expect("the suite runs to the end");
        });
    }));
    crate::world::World::leave();
    match result {
        Ok(()) => {
            println!("conformance: the simulated store passes the store conformance suite");
            ExitCode::SUCCESS
        }
        Err(panic) => {
            let message = panic.downcast_ref::<String>().cloned().unwrap_or_else(|| "a panic".to_owned());
            println!("conformance: FAILED: {message}");
            ExitCode::FAILURE
        }
    }
}
