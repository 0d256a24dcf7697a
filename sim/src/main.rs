//! `wallex-sim`: the deterministic simulator of the Wallex pipeline.
//!
//! It runs the server's pipeline, unchanged, on madsim: simulated store and broker nodes, an app
//! node, client nodes, a simulated network and clock, under faults each seed draws for itself
//! (swarm testing), then heals everything and requires convergence. Checkers verify the ledger's
//! promises on every seed; a failure prints the one command that reproduces it.
//!
//! It is built only with `RUSTFLAGS="--cfg madsim"` into its own target directory (`scripts/sim`
//! does that). A normal build produces a binary that says so and exits 2, so that a build that
//! silently lost the flag can never report success for zero seeds.

#[cfg(madsim)]
mod app;
#[cfg(madsim)]
mod broker;
#[cfg(madsim)]
mod check;
#[cfg(madsim)]
mod cli;
#[cfg(madsim)]
mod faults;
#[cfg(madsim)]
mod rpc;
#[cfg(madsim)]
mod runner;
#[cfg(madsim)]
mod store;
#[cfg(madsim)]
mod swarm;
#[cfg(madsim)]
mod workload;
#[cfg(madsim)]
mod world;

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(madsim))]
fn main() {
    eprintln!("wallex-sim must be built with RUSTFLAGS=\"--cfg madsim\" (use scripts/sim); this build runs no seeds");
    std::process::exit(2);
}
