//! `belay-load`: load generator for the Belay notification server (one subcommand per scenario),
//! and a simulator of its matchmaking pool.

mod common;
mod notify;
mod pair;
mod simulate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Load generator for a local Belay server (loopback URLs only).
#[derive(Debug, Parser)]
#[command(name = "belay-load", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open one SSE session per user, publish post_liked notifications at a fixed rate,
    /// and measure delivery latency, loss and ordering.
    Notify(notify::NotifyArgs),
    /// Time pairing through HTTP when a compatible opponent is already waiting: the join's
    /// answer and the waiting climber's match_found frame.
    Pair(pair::PairArgs),
    /// Feed the pairing pool (no server) with simulated arrivals and compare Belay's default
    /// policy with grid-searched linear and step policies, FIFO and a 15-second batch.
    Simulate(simulate::SimulateArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Notify(args) => notify::run(args).await,
        Scenario::Pair(args) => pair::run(args).await,
        // CPU-bound and single-shot: nothing else runs on the runtime meanwhile.
        Scenario::Simulate(args) => simulate::run(args),
    };
    // Print the context chain on one line, not anyhow's Debug form: with RUST_BACKTRACE set
    // that adds a stack trace the operator does not need for "server not running".
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
