//! `belay-load`: load generator for the Belay notification server (one subcommand per scenario),
//! and a simulator of its matchmaking pool.

mod adapter;
mod common;
mod compare;
mod fakefcm;
mod fleet;
mod lean;
mod matchmaking;
mod notify;
mod output;
mod pair;
mod plot;
mod procfs;
mod push;
mod reconnect;
mod sessions;
mod simulate;
mod soak;
mod worker;

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
    /// Open N SSE sessions (several client processes when needed), hold them, send a burst of
    /// broadcasts; report connect rate, errors and server memory per session.
    Connections(sessions::ConnectionsArgs),
    /// With N sessions open, broadcast events back to back or at a fixed rate; report the time
    /// until every session has each event, frames per second and server CPU per frame.
    Fanout(sessions::FanoutArgs),
    /// With N sessions open, close them all, store --missed notifications per user, then resume
    /// them all at once with Last-Event-ID; report the resume rate, the time until each session
    /// has every missed event, and any event lost, repeated or out of order.
    Reconnect(reconnect::ReconnectArgs),
    /// Many climbers with open streams join the queue at once, take match_found, press ready
    /// and take match_confirmed; report times, matches per second and double matches.
    Matchmaking(matchmaking::MatchmakingArgs),
    /// Hold N sessions on one node for a long time under steady broadcasts; sample the
    /// server's memory, open files and session gauge, and the delivery p99, every interval.
    Soak(soak::SoakArgs),
    /// Open one SSE session per user, publish post_liked notifications at a fixed rate,
    /// and measure delivery latency, loss and ordering.
    Notify(notify::NotifyArgs),
    /// Time pairing through HTTP when a compatible opponent is already waiting: the join's
    /// answer and the waiting climber's match_found frame.
    Pair(pair::PairArgs),
    /// Feed the pairing pool (no server) with simulated arrivals and compare Belay's default
    /// policy with grid-searched linear and step policies, FIFO and a 15-second batch.
    Simulate(simulate::SimulateArgs),
    /// Offline climbers with one FCM device each get a wave of events; report pushes per second
    /// at the fake FCM, event-to-push latency, server memory, and the live SSE latency of
    /// online users during the wave.
    Push(push::PushArgs),
    /// Run a fake OAuth token endpoint and a fake FCM on a loopback port (for `push`).
    FakeFcm(fakefcm::FakeFcmArgs),
    /// Print Belay / Nchan ratios from `connections` and `fanout` result files.
    Compare(compare::CompareArgs),
    /// Draw several result files on one chart (SVG), e.g. Belay's and Nchan's fan-out.
    Plot(plot::PlotArgs),
    /// One client process of a multi-process run (started by the scenarios themselves).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Belay's reqwest build has no default TLS provider: install it before any client is built.
    belay::push::install_tls_provider();
    let result = match cli.scenario {
        // A worker runs one thread of its own: the parallelism comes from several processes.
        Scenario::Worker(args) => worker::main(args),
        // CPU-bound and single-shot: no runtime needed.
        Scenario::Simulate(args) => simulate::run(args),
        Scenario::Compare(args) => compare::run(&args),
        Scenario::Plot(args) => plot::run(&args),
        // Runs its own actix system for the fake's HTTP server.
        Scenario::FakeFcm(args) => fakefcm::run(args),
        scenario => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(run(scenario))),
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

async fn run(scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::Notify(args) => notify::run(args).await,
        Scenario::Pair(args) => pair::run(args).await,
        Scenario::Connections(args) => sessions::connections(args).await,
        Scenario::Fanout(args) => sessions::fanout(args).await,
        Scenario::Reconnect(args) => reconnect::run(args).await,
        Scenario::Matchmaking(args) => matchmaking::run(args).await,
        Scenario::Push(args) => push::run(args).await,
        Scenario::Soak(args) => soak::run(args).await,
        Scenario::Simulate(_)
        | Scenario::Compare(_)
        | Scenario::Plot(_)
        | Scenario::Worker(_)
        | Scenario::FakeFcm(_) => {
            anyhow::bail!("not an async scenario")
        }
    }
}
