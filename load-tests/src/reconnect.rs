//! Scenario `reconnect` (Belay): N sessions open, every one of them goes away at once (as after
//! a node restart or a network blip), each user gets `--missed` stored notifications meanwhile,
//! and all sessions come back at once with their `Last-Event-ID`. It reports how fast the storm
//! of resumes is answered, how long until every session has every event it missed, and checks
//! what the resumed streams carried: each missed event once and in cursor order, and an `unread`
//! frame that counts them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, value_parser};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::adapter::ServerKind;
use crate::common::{self, ErrorCount, LatencySummary, row, verdict};
use crate::fleet;
use crate::output;
use crate::plot::{self, Plot};
use crate::procfs::{self, Memory};
use crate::sessions::{self, MemoryPerSession, SessionArgs};
use crate::worker::{Resume, ResumeSpec, Stats, WorkerReport};

/// How often progress is polled from the workers.
const POLL: Duration = Duration::from_millis(100);
/// Pause before reading memory, so frees and socket buffers settle.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct ReconnectArgs {
    #[command(flatten)]
    pub common: SessionArgs,
    /// Stored notifications each user gets while away (likes of distinct posts, so none
    /// collapses); the resumed stream must replay every one.
    #[arg(long, default_value_t = 5, value_parser = value_parser!(u32).range(0..=100))]
    pub missed: u32,
}

#[derive(Debug, Serialize)]
struct ReconnectReport {
    scenario: &'static str,
    url: String,
    server_pids: Vec<u32>,
    client_processes: usize,
    sessions_requested: u32,
    sessions_opened: u64,
    open_errors: u64,
    missed_per_user: u32,
    /// Sessions closed, and the stored notifications written while they were away.
    sessions_away: u64,
    store_wall_s: f64,
    /// The storm: every session asks to resume at once.
    sessions_resumed: u64,
    resume_errors: u64,
    sessions_caught_up: u64,
    resume_wall_s: f64,
    resume_rate_per_s: f64,
    /// Per session: request until the `unread` frame, and until the last missed event; storm
    /// start until the last missed event (this one also counts the wait for a turn to reopen,
    /// `--open-concurrency` per client process).
    resume_latency: LatencySummary,
    caught_up_latency: LatencySummary,
    since_storm_latency: LatencySummary,
    events_replayed: u64,
    events_expected: u64,
    replayed_per_s: f64,
    duplicates: u64,
    skipped: u64,
    unread_mismatches: u64,
    server_cpu_resume_s: f64,
    client_cpu_resume_s: f64,
    server_cpu_per_resume_us: f64,
    server_memory_idle: Memory,
    server_memory_connected: MemoryPerSession,
    /// With every session away and the missed events stored: SQLite's page caches now hold
    /// what was written, so this, not the idle figure, is the base the resumed sessions add to.
    server_memory_away: Memory,
    server_memory_resumed: MemoryPerSession,
    /// (RSS after the resume − RSS while away) / sessions resumed.
    resumed_rss_kib_per_session_over_away: f64,
    errors: Vec<ErrorCount>,
}

pub async fn run(args: ReconnectArgs) -> Result<()> {
    let common = &args.common;
    if common.server != ServerKind::Belay {
        bail!("reconnect needs Belay: it resumes with Last-Event-ID and checks stored events");
    }
    let resume = ResumeSpec {
        missed: args.missed,
    };
    let mut opened = sessions::open_all(common, 0, 0, Some(resume)).await?;
    tokio::time::sleep(SETTLE).await;
    let sessions = opened.stats.opened;
    let connected = MemoryPerSession::new(
        procfs::memory(&opened.server_pids),
        opened.memory_idle,
        sessions,
    );

    // Every session closes its stream; wait until all have.
    opened.fleet.away().await?;
    let away = wait(
        &mut opened.fleet,
        "away",
        sessions,
        Duration::from_secs(60),
        |s| s.away + s.dropped,
    )
    .await?;

    // What they miss, stored while they are away.
    let store_started = Instant::now();
    sessions::store_likes(
        &opened.api,
        &opened.spec,
        &opened.run,
        common.sessions,
        args.missed,
        "missed",
    )
    .await?;
    let store_wall_s = store_started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let memory_away = procfs::memory(&opened.server_pids);

    // The storm: every session resumes at once.
    let server_cpu = procfs::cpu_seconds_sum(&opened.server_pids);
    let client_cpu = opened.fleet.cpu_seconds();
    let started = Instant::now();
    opened.fleet.back().await?;
    let done = wait(
        &mut opened.fleet,
        "resuming",
        away.away,
        Duration::from_secs(common.drain + common.open_timeout),
        |s| s.caught_up + s.resume_failed,
    )
    .await?;
    let resume_wall_s = started.elapsed().as_secs_f64();
    let server_cpu_resume_s = procfs::cpu_seconds_sum(&opened.server_pids) - server_cpu;
    let client_cpu_resume_s = opened.fleet.cpu_seconds() - client_cpu;
    tokio::time::sleep(SETTLE).await;
    let resumed_memory = MemoryPerSession::new(
        procfs::memory(&opened.server_pids),
        opened.memory_idle,
        done.resumed,
    );

    let reports = opened.fleet.reports().await?;
    let stats = opened.fleet.stats().await?;
    opened.fleet.stop().await;
    let times = storm_times(&reports)?;
    let expected = away.away * u64::from(args.missed);
    let report = ReconnectReport {
        scenario: "reconnect",
        url: opened.spec.base.clone(),
        server_pids: opened.server_pids.clone(),
        client_processes: opened.workers,
        sessions_requested: common.sessions,
        sessions_opened: sessions,
        open_errors: opened.stats.failed,
        missed_per_user: args.missed,
        sessions_away: away.away,
        store_wall_s,
        sessions_resumed: stats.resumed,
        resume_errors: stats.resume_failed,
        sessions_caught_up: stats.caught_up,
        resume_wall_s,
        resume_rate_per_s: stats.resumed as f64 / resume_wall_s.max(1e-9),
        resume_latency: LatencySummary::from_micros(&times.to_unread),
        caught_up_latency: LatencySummary::from_micros(&times.to_caught_up),
        since_storm_latency: LatencySummary::from_micros(&times.since_storm),
        events_replayed: stats.replayed,
        events_expected: expected,
        replayed_per_s: stats.replayed as f64 / resume_wall_s.max(1e-9),
        duplicates: stats.replay_duplicates,
        skipped: stats.replay_skipped,
        unread_mismatches: stats.unread_mismatches,
        server_cpu_resume_s,
        client_cpu_resume_s,
        server_cpu_per_resume_us: server_cpu_resume_s * 1e6 / (stats.resumed.max(1) as f64),
        server_memory_idle: opened.memory_idle,
        server_memory_connected: connected,
        server_memory_away: memory_away,
        resumed_rss_kib_per_session_over_away: (resumed_memory.memory.rss_kib as f64
            - memory_away.rss_kib as f64)
            / (done.resumed.max(1) as f64),
        server_memory_resumed: resumed_memory,
        errors: fleet::errors(&reports),
    };

    println!();
    println!(
        "belay-load reconnect  url={}  client processes={}",
        report.url, report.client_processes
    );
    row(
        "sessions",
        format!(
            "opened {} of {}  open errors {}  away {}",
            report.sessions_opened,
            report.sessions_requested,
            report.open_errors,
            report.sessions_away
        ),
    );
    row(
        "missed while away",
        format!(
            "{} per user, {} stored in {:.2} s",
            report.missed_per_user, report.events_expected, report.store_wall_s
        ),
    );
    row(
        "resumed",
        format!(
            "{} of {}  errors {}  caught up {}  ({:.0} sessions/s over {:.2} s)",
            report.sessions_resumed,
            report.sessions_away,
            report.resume_errors,
            report.sessions_caught_up,
            report.resume_rate_per_s,
            report.resume_wall_s
        ),
    );
    row("to the unread frame ms", report.resume_latency.display());
    row("to the last missed ms", report.caught_up_latency.display());
    row(
        "storm to last missed ms",
        report.since_storm_latency.display(),
    );
    row(
        "replayed",
        format!(
            "{} of {}  ({:.0} events/s)  duplicates {}  skipped {}  unread frames wrong {}",
            report.events_replayed,
            report.events_expected,
            report.replayed_per_s,
            report.duplicates,
            report.skipped,
            report.unread_mismatches
        ),
    );
    row(
        "CPU while resuming",
        format!(
            "server {:.2} s ({:.0} µs per session)  client {:.2} s",
            report.server_cpu_resume_s, report.server_cpu_per_resume_us, report.client_cpu_resume_s
        ),
    );
    row("memory connected", report.server_memory_connected.display());
    row(
        "memory away, stored",
        format!(
            "RSS {:.1} MiB  (SQLite's caches hold what was written)",
            report.server_memory_away.rss_kib as f64 / 1024.0
        ),
    );
    row(
        "memory resumed",
        format!(
            "{}; over the away figure {:.2} KiB/session",
            report.server_memory_resumed.display(),
            report.resumed_rss_kib_per_session_over_away
        ),
    );
    common::error_rows(&report.errors);

    let title = format!(
        "reconnect: {} sessions resume, {} missed events each",
        report.sessions_resumed, report.missed_per_user
    );
    let plot = Plot::latency(
        &title,
        "seconds since the storm began (when each session asked to reopen)",
        plot::binned("storm to caught up", &times.samples, 100),
        vec![
            plot::spectrum("request to unread frame", &times.to_unread),
            plot::spectrum("request to caught up", &times.to_caught_up),
            plot::spectrum("storm to caught up", &times.since_storm),
        ],
    );
    output::write(common.out.as_deref(), "reconnect", &report, &plot)?;
    verdict(&[
        (
            "missed events not replayed",
            report
                .events_expected
                .saturating_sub(report.events_replayed),
        ),
        ("events replayed twice", report.duplicates),
        ("wrong unread frames", report.unread_mismatches),
        ("sessions that did not resume", report.resume_errors),
    ])
}

/// Polls the workers until `count(stats)` reaches `target` (or stops moving for `patience`).
async fn wait(
    fleet: &mut fleet::Fleet,
    label: &str,
    target: u64,
    patience: Duration,
    count: impl Fn(&Stats) -> u64,
) -> Result<Stats> {
    let bar = output::bar(target, label);
    let mut last = (0, Instant::now());
    loop {
        let stats = fleet.stats().await?;
        let now = count(&stats);
        bar.set_position(now);
        if now >= target {
            bar.finish();
            return Ok(stats);
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > patience {
            bar.abandon();
            eprintln!("{label}: stuck at {now} of {target} for {patience:?}; reporting as is");
            return Ok(stats);
        }
        tokio::time::sleep(POLL).await;
    }
}

type Samples = Vec<(f64, f64)>;

/// Per-session times of a storm, µs: request to `unread` frame, request to the last missed
/// event, and storm start to the last missed event (which also counts the wait for a turn to
/// reopen); and that last time (ms) over seconds since the storm began.
struct StormTimes {
    to_unread: Histogram<u64>,
    to_caught_up: Histogram<u64>,
    since_storm: Histogram<u64>,
    samples: Samples,
}

fn storm_times(reports: &[WorkerReport]) -> Result<StormTimes> {
    let hist = || Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3);
    let mut times = StormTimes {
        to_unread: hist().context("creating a histogram")?,
        to_caught_up: hist().context("creating a histogram")?,
        since_storm: hist().context("creating a histogram")?,
        samples: Vec::new(),
    };
    let resumes: Vec<&Resume> = reports.iter().flat_map(|r| &r.resumes).collect();
    let storm = resumes.iter().map(|r| r.storm_us).min().unwrap_or(0);
    for r in resumes {
        times.to_unread.saturating_record(r.to_unread_us.max(1));
        if r.caught_up_us > 0 {
            times
                .to_caught_up
                .saturating_record(r.caught_up_us.saturating_sub(r.asked_us).max(1));
            let since = r.caught_up_us.saturating_sub(storm).max(1);
            times.since_storm.saturating_record(since);
            times.samples.push((
                r.asked_us.saturating_sub(storm) as f64 / 1e6,
                since as f64 / 1e3,
            ));
        }
    }
    times.samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storm_times_count_from_the_request_and_from_the_storm() -> Result<()> {
        let at = |asked_us, to_unread_us, caught_up_us| Resume {
            storm_us: 1_000_000,
            asked_us,
            to_unread_us,
            caught_up_us,
        };
        let report = WorkerReport {
            resumes: vec![
                at(1_000_000, 2_000, 1_005_000),
                at(1_500_000, 3_000, 1_520_000),
                at(1_600_000, 3_000, 0),
            ],
            ..WorkerReport::default()
        };
        let times = storm_times(&[report])?;
        assert_eq!(times.to_unread.len(), 3);
        assert_eq!(times.to_caught_up.len(), 2, "only those that caught up");
        let max = |h: &Histogram<u64>, want| h.equivalent(h.max(), want);
        assert!(max(&times.to_caught_up, 20_000), "from its own request");
        assert!(max(&times.since_storm, 520_000), "from the storm's start");
        assert_eq!(times.samples, vec![(0.0, 5.0), (0.5, 520.0)]);
        Ok(())
    }
}
