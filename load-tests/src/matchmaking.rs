//! Scenario `matchmaking`: many climbers, each with an open stream, join one open queue at the
//! same moment, take `match_found`, press ready and take `match_confirmed`. Reports the time to
//! each, climbers and matches per second, errors, and checks that nobody was matched twice, with
//! themself, or into a match the opponent does not share.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::{Args, value_parser};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::adapter::{ServerKind, ServerSpec};
use crate::common::{self, ErrorCount, LatencySummary, Target, row};
use crate::fleet::{self, Fleet};
use crate::output;
use crate::plot::{self, Plot};
use crate::procfs;
use crate::worker::{ClimbSpec, Climber};

/// How often progress is polled from the workers.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Args)]
pub struct MatchmakingArgs {
    /// Belay base URL; plain http on loopback only.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// More nodes of the same cluster, repeatable: client process *i* opens its streams and sends
    /// its requests to node *i* mod the number of nodes (`--url` first), so climbers on
    /// different nodes are paired with each other. Loopback only.
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// Climbers, each with one stream; all join at once.
    #[arg(long, default_value_t = 2_000, value_parser = value_parser!(u32).range(2..=200_000))]
    climbers: u32,
    /// Climbers per client process (at most 18,000: streams plus the request pool must stay
    /// under the 20,000 open files of a process).
    #[arg(long, default_value_t = 5_000, value_parser = value_parser!(u32).range(1..=18_000))]
    per_worker: u32,
    /// Streams being opened at the same time, per client process.
    #[arg(long, default_value_t = 64, value_parser = value_parser!(u32).range(1..=10_000))]
    open_concurrency: u32,
    /// Seconds each stream may take to open.
    #[arg(long, default_value_t = 60, value_parser = value_parser!(u64).range(1..=600))]
    open_timeout: u64,
    /// Join and ready requests in flight per client process.
    #[arg(long, default_value_t = 64, value_parser = value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// Stop at match_found: do not press ready.
    #[arg(long)]
    no_ready: bool,
    /// After match_confirmed, both climbers report the same winner and take match_result, so
    /// every match ends (a long run would otherwise leave them all awaiting results).
    #[arg(long, conflicts_with = "no_ready")]
    settle: bool,
    /// Discipline of the queue (its scope is unique to the run).
    #[arg(long, default_value = "boulder")]
    discipline: String,
    /// Host API key (for dev tokens when the server guards them); default as for `notify`.
    #[arg(long)]
    api_key: Option<String>,
    /// Server process id for CPU, repeatable; default: the process listening on the --url port.
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Seconds to wait for every climber to be confirmed.
    #[arg(long, default_value_t = 60, value_parser = value_parser!(u64).range(1..=3_600))]
    timeout: u64,
    /// JSON result file (the SVG plot goes beside it); default: load-tests/results/.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// What the double-match check found.
#[derive(Debug, Default, Serialize)]
struct Integrity {
    /// Climbers who saw more than one match_found.
    matched_twice: u64,
    /// Matches that are not exactly two climbers naming each other.
    inconsistent_matches: u64,
    /// Climbers paired with themself.
    self_matches: u64,
    /// Distinct match ids seen.
    matches: u64,
}

#[derive(Debug, Serialize)]
struct MatchmakingReport {
    scenario: &'static str,
    url: String,
    server_pids: Vec<u32>,
    client_processes: usize,
    climbers: u32,
    streams_opened: u64,
    open_errors: u64,
    open_wall_s: f64,
    joined: u64,
    found: u64,
    confirmed: u64,
    /// Climbers whose match ended with the result they reported (`--settle`).
    settled: u64,
    climb_errors: u64,
    /// First join to last match_found.
    found_window_s: f64,
    climbers_found_per_s: f64,
    /// First join to last match_confirmed.
    confirmed_window_s: f64,
    matches_confirmed_per_s: f64,
    time_to_match_found: LatencySummary,
    time_to_match_confirmed: LatencySummary,
    integrity: Integrity,
    server_cpu_s: f64,
    client_cpu_s: f64,
    wall_s: f64,
    errors: Vec<ErrorCount>,
}

pub async fn run(args: MatchmakingArgs) -> Result<()> {
    if !args.climbers.is_multiple_of(2) {
        bail!("--climbers must be even: climbers are paired");
    }
    let target = Target::loopback(&args.url)?;
    let api = common::api_client(Duration::from_secs(30), 4)?;
    let spec = ServerSpec::resolve(
        ServerKind::Belay,
        &target,
        &api,
        args.api_key.as_deref(),
        "unused",
    )
    .await?;
    let server_pids = fleet::server_pids(&args.server_pids, spec.dest.port())?;
    let run = common::run_tag();
    let climb = ClimbSpec {
        discipline: args.discipline.clone(),
        scope: format!("lt{run}"),
        concurrency: args.concurrency,
        ready: !args.no_ready,
        settle: args.settle,
    };
    let shared = fleet::Shared {
        server: spec.clone(),
        run: run.clone(),
        open_concurrency: args.open_concurrency,
        open_timeout_s: args.open_timeout,
        seqs: 0,
        climb: Some(climb.clone()),
        resume: None,
    };
    let mut specs = fleet::specs(&shared, args.climbers, args.per_worker)?;
    if !args.nodes.is_empty() {
        let mut servers = vec![spec.clone()];
        for url in &args.nodes {
            let node = Target::loopback(url)?;
            servers.push(
                ServerSpec::resolve(
                    ServerKind::Belay,
                    &node,
                    &api,
                    args.api_key.as_deref(),
                    "unused",
                )
                .await?,
            );
        }
        for worker in &mut specs {
            worker.server = servers[worker.index % servers.len()].clone();
        }
    }
    eprintln!(
        "run {run}: {} climbers over {} client processes, queue {}/{}",
        args.climbers,
        specs.len(),
        climb.discipline,
        climb.scope
    );
    let opening = Instant::now();
    let mut fleet = Fleet::spawn(&specs)?;
    let bar = output::bar(u64::from(args.climbers), "streams");
    let opened = fleet.wait_open(&bar).await?;
    bar.finish();
    let open_wall_s = opening.elapsed().as_secs_f64();
    if opened.opened < 2 {
        fleet.stop().await;
        bail!("fewer than two streams opened");
    }

    let server_cpu = procfs::cpu_seconds_sum(&server_pids);
    let client_cpu = fleet.cpu_seconds() + common::process_cpu_seconds().unwrap_or(0.0);
    let started = Instant::now();
    let goal = |s: &crate::worker::Stats| match (args.no_ready, args.settle) {
        (true, _) => s.found,
        (false, false) => s.confirmed,
        (false, true) => s.settled,
    };
    let bar = output::bar(
        opened.opened,
        match (args.no_ready, args.settle) {
            (true, _) => "found",
            (false, false) => "confirmed",
            (false, true) => "settled",
        },
    );
    let mut stats = fleet.go().await?;
    let deadline = started + Duration::from_secs(args.timeout);
    while goal(&stats) + stats.climb_errors < opened.opened && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        stats = fleet.stats().await?;
        bar.set_position(goal(&stats));
        bar.set_message(format!(
            "joined {}  found {}  errors {}",
            stats.joined, stats.found, stats.climb_errors
        ));
    }
    bar.finish();
    let wall_s = started.elapsed().as_secs_f64();
    let server_cpu_s = procfs::cpu_seconds_sum(&server_pids) - server_cpu;
    let client_cpu_s =
        fleet.cpu_seconds() + common::process_cpu_seconds().unwrap_or(0.0) - client_cpu;
    // Late or second match_found frames would show up now: give them a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reports = fleet.reports().await?;
    fleet.stop().await;

    let climbers: Vec<&Climber> = reports.iter().flat_map(|r| r.climbers.iter()).collect();
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3);
    let (mut found_hist, mut confirmed_hist) = (new_hist()?, new_hist()?);
    let first_join = climbers
        .iter()
        .map(|c| c.joined_us)
        .filter(|&j| j > 0)
        .min()
        .unwrap_or(0);
    let (mut last_found, mut last_confirmed) = (0u64, 0u64);
    let mut samples = Vec::new();
    for c in &climbers {
        if let Some(us) = c.found_after_us {
            found_hist.saturating_record(us.max(1));
            last_found = last_found.max(c.joined_us + us);
            samples.push((
                c.joined_us.saturating_sub(first_join) as f64 / 1e6,
                us as f64 / 1e3,
            ));
        }
        if let Some(us) = c.confirmed_after_us {
            confirmed_hist.saturating_record(us.max(1));
            last_confirmed = last_confirmed.max(c.joined_us + us);
        }
    }
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let found_window_s = last_found.saturating_sub(first_join) as f64 / 1e6;
    let confirmed_window_s = last_confirmed.saturating_sub(first_join) as f64 / 1e6;
    let per_s = |n: f64, window: f64| if window > 0.0 { n / window } else { 0.0 };
    let report = MatchmakingReport {
        scenario: "matchmaking",
        url: spec.base.clone(),
        server_pids,
        client_processes: specs.len(),
        climbers: args.climbers,
        streams_opened: opened.opened,
        open_errors: opened.failed,
        open_wall_s,
        joined: stats.joined,
        found: stats.found,
        confirmed: stats.confirmed,
        settled: stats.settled,
        climb_errors: stats.climb_errors,
        found_window_s,
        climbers_found_per_s: per_s(found_hist.len() as f64, found_window_s),
        confirmed_window_s,
        matches_confirmed_per_s: per_s(confirmed_hist.len() as f64 / 2.0, confirmed_window_s),
        time_to_match_found: LatencySummary::from_micros(&found_hist),
        time_to_match_confirmed: LatencySummary::from_micros(&confirmed_hist),
        integrity: integrity(&climbers),
        server_cpu_s,
        client_cpu_s,
        wall_s,
        errors: fleet::errors(&reports),
    };

    println!();
    println!(
        "belay-load matchmaking  url={}  client processes={}",
        report.url, report.client_processes
    );
    row(
        "streams",
        format!(
            "opened {} of {}  open errors {}  ({:.2} s)",
            report.streams_opened, report.climbers, report.open_errors, report.open_wall_s
        ),
    );
    row(
        "climbers",
        format!(
            "joined {}  found {}  confirmed {}  settled {}  errors {}",
            report.joined, report.found, report.confirmed, report.settled, report.climb_errors
        ),
    );
    row(
        "join -> match_found",
        format!(
            "{:.0} climbers/s  (over {:.2} s)",
            report.climbers_found_per_s, report.found_window_s
        ),
    );
    row(
        "matches confirmed",
        format!(
            "{:.0} matches/s  (over {:.2} s)",
            report.matches_confirmed_per_s, report.confirmed_window_s
        ),
    );
    row("to match_found ms", report.time_to_match_found.display());
    row(
        "to match_confirmed ms",
        report.time_to_match_confirmed.display(),
    );
    let i = &report.integrity;
    row(
        "double matches",
        format!(
            "matched twice {}  inconsistent matches {}  self matches {}  (of {} matches)",
            i.matched_twice, i.inconsistent_matches, i.self_matches, i.matches
        ),
    );
    row(
        "CPU server / client",
        format!(
            "{:.2} s / {:.2} s over {:.2} s",
            report.server_cpu_s, report.client_cpu_s, report.wall_s
        ),
    );
    common::error_rows(&report.errors);

    let plot = Plot::latency(
        &format!("matchmaking: {} climbers", report.climbers),
        "seconds since the first join",
        plot::binned("to match_found", &samples, 100),
        vec![
            plot::spectrum("to match_found", &found_hist),
            plot::spectrum("to match_confirmed", &confirmed_hist),
        ],
    );
    output::write(args.out.as_deref(), "matchmaking", &report, &plot)?;
    let i = &report.integrity;
    common::verdict(&[
        ("climbers matched twice", i.matched_twice),
        ("inconsistent matches", i.inconsistent_matches),
        ("self matches", i.self_matches),
    ])
}

fn integrity(climbers: &[&Climber]) -> Integrity {
    let mut result = Integrity::default();
    let mut by_match: HashMap<&str, Vec<&Climber>> = HashMap::new();
    let by_user: HashMap<&str, &Climber> = climbers.iter().map(|c| (c.user.as_str(), *c)).collect();
    for c in climbers {
        if c.found_frames > 1 {
            result.matched_twice += 1;
        }
        if c.opponent.as_deref() == Some(c.user.as_str()) {
            result.self_matches += 1;
        }
        if let Some(id) = c.match_id.as_deref() {
            by_match.entry(id).or_default().push(c);
        }
    }
    result.matches = by_match.len() as u64;
    for players in by_match.values() {
        let consistent = match players.as_slice() {
            [a, b] => {
                a.opponent.as_deref() == Some(b.user.as_str())
                    && b.opponent.as_deref() == Some(a.user.as_str())
            }
            // One side missing is fine only if that climber is not ours or did not get there.
            [a] => a.opponent.as_deref().is_some_and(|o| {
                by_user
                    .get(o)
                    .is_none_or(|b| b.match_id.is_none() && b.error.is_some())
            }),
            _ => false,
        };
        if !consistent {
            result.inconsistent_matches += 1;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn climber(user: &str, id: Option<&str>, opponent: Option<&str>, frames: u32) -> Climber {
        Climber {
            user: user.to_owned(),
            match_id: id.map(str::to_owned),
            opponent: opponent.map(str::to_owned),
            found_frames: frames,
            ..Climber::default()
        }
    }

    #[test]
    fn a_clean_pairing_passes_the_check() {
        let all = [
            climber("a", Some("m1"), Some("b"), 1),
            climber("b", Some("m1"), Some("a"), 1),
        ];
        let refs: Vec<&Climber> = all.iter().collect();
        let i = integrity(&refs);
        assert_eq!(
            (
                i.matched_twice,
                i.inconsistent_matches,
                i.self_matches,
                i.matches
            ),
            (0, 0, 0, 1)
        );
    }

    #[test]
    fn double_and_inconsistent_matches_are_caught() {
        let all = [
            climber("a", Some("m1"), Some("b"), 2),
            climber("b", Some("m1"), Some("c"), 1),
            climber("c", Some("m2"), Some("c"), 1),
            climber("d", Some("m1"), Some("a"), 1),
        ];
        let refs: Vec<&Climber> = all.iter().collect();
        let i = integrity(&refs);
        assert_eq!(i.matched_twice, 1);
        assert_eq!(i.self_matches, 1);
        assert_eq!(i.inconsistent_matches, 2);
    }
}
