//! `wallex-sim`: the deterministic simulator of the Wallex pipeline.
//!
//! The simulator runs the server's pipeline on madsim, with simulated store and broker nodes under
//! seeded swarm faults, and checks the ledger's promises on every seed. It is built only with
//! `RUSTFLAGS="--cfg madsim"` into its own target directory; a normal build produces this binary,
//! which explains how to get the real one instead of silently running zero seeds.

fn main() {
    if cfg!(madsim) {
        eprintln!("wallex-sim: the simulation harness is not built yet (see docs/ARCHITECTURE.md)");
    } else {
        eprintln!("wallex-sim must be built with RUSTFLAGS=\"--cfg madsim\" into target/sim; this build ran no seeds");
    }
    std::process::exit(2);
}
