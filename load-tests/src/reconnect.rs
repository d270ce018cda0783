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
use crate::common::{ErrorCount, LatencySummary, row};
use crate::fleet;
use crate::output;
use crate::procfs::{self, Memory};
use crate::sessions::{self, MemoryPerSession, SessionArgs};
use crate::worker::{ResumeSpec, Stats, WorkerReport};

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
    /// Request until the `unread` frame, and until the last missed event, per session.
    resume_latency: LatencySummary,
    caught_up_latency: LatencySummary,
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
    let (resume_hist, caught_hist, samples) = resume_latency(&reports)?;
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
        resume_latency: LatencySummary::from_micros(&resume_hist),
        caught_up_latency: LatencySummary::from_micros(&caught_hist),
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
    for e in &report.errors {
        row("error", format!("{}x {}", e.count, e.message));
    }

    let title = format!(
        "reconnect: {} sessions resume, {} missed events each",
        report.sessions_resumed, report.missed_per_user
    );
    let svg = output::plot(
        &title,
        "seconds since the first resume",
        &output::binned("caught up", &samples, 100),
        &[
            output::spectrum("unread frame", &resume_hist),
            output::spectrum("caught up", &caught_hist),
        ],
    );
    output::write(common.out.as_deref(), "reconnect", &report, &svg)
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

/// Histograms of the time to the `unread` frame and to the last missed event (µs), and the
/// catch-up time (ms) over seconds since the first resume.
fn resume_latency(reports: &[WorkerReport]) -> Result<(Histogram<u64>, Histogram<u64>, Samples)> {
    let mut opened =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).context("creating a histogram")?;
    let mut caught = opened.clone();
    let first = reports
        .iter()
        .flat_map(|r| r.resumes.iter().map(|c| c.0))
        .min()
        .unwrap_or(0);
    let mut samples = Vec::new();
    for &(start, open_us, caught_us) in reports.iter().flat_map(|r| &r.resumes) {
        opened.saturating_record(open_us.max(1));
        if caught_us > 0 {
            caught.saturating_record(caught_us);
            samples.push((
                start.saturating_sub(first) as f64 / 1e6,
                caught_us as f64 / 1e3,
            ));
        }
    }
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok((opened, caught, samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_latency_counts_only_sessions_that_caught_up() -> Result<()> {
        let report = WorkerReport {
            resumes: vec![(1_000_000, 2_000, 5_000), (1_500_000, 3_000, 0)],
            ..WorkerReport::default()
        };
        let (opened, caught, samples) = resume_latency(&[report])?;
        assert_eq!(opened.len(), 2);
        assert_eq!(caught.len(), 1);
        assert_eq!(samples, vec![(0.0, 5.0)]);
        Ok(())
    }
}
