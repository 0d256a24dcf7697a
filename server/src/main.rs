//! The `wallex` binary.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "wallex", version, about = "Wallex: an exact, event-sourced wallet ledger")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Runs a short tour of the ledger engine in memory and prints what it decided.
    Demo,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Commands::Demo => print!("{}", wallex_server::demo::run()?),
    }
    Ok(())
}
