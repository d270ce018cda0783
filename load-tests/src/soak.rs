//! Scenario `soak`: hold many sessions on one Belay node for a long time under steady
//! broadcasts, and sample the node every interval: resident memory, open files, the open-session
//! gauge of `/metrics`, and the p99 of broadcast delivery over that interval. Whether memory and
//! files stay flat after a warm-up is what it is for. Notify and matchmaking traffic come from
//! those scenarios, run beside it by `load-tests/soak.sh`.
//!
//! The sessions are held by the worker processes of `connections`; each keeps a histogram of
//! every broadcast delivery since it started, so one interval's deliveries are the difference
//! between two readings of the merged histogram.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, value_parser};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::adapter::ServerKind;
use crate::common::{self, ErrorCount, ErrorTally, row};
use crate::output;
use crate::plot::{Panel, Plot, Series, XAxis};
use crate::procfs;
use crate::sessions::{self, SessionArgs};
use crate::worker::WorkerReport;

/// Rows of the printed table; the CSV has every sample.
const TABLE_ROWS: usize = 20;
/// Name of the open-session gauge in `/metrics`.
const SESSIONS_GAUGE: &str = "belay_sessions_open";

#[derive(Debug, Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub common: SessionArgs,
    /// Seconds to hold the sessions, once open.
    #[arg(long, default_value_t = 1_800, value_parser = value_parser!(u64).range(10..=86_400))]
    pub duration: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10, value_parser = value_parser!(u64).range(1..=3_600))]
    pub every: u64,
    /// Seconds from the start that count as warm-up: flatness is judged after it.
    #[arg(long, default_value_t = 120, value_parser = value_parser!(u64).range(0..=86_400))]
    pub warmup: u64,
    /// Broadcasts per second to every session (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub broadcast_rate: f64,
}

/// The node and the client at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    /// Seconds since the sessions were open.
    t_s: f64,
    rss_kib: u64,
    pss_kib: u64,
    /// Entries of `/proc/<pid>/fd`, summed over the server's processes.
    open_files: u64,
    /// `belay_sessions_open` from `/metrics` (-1: not read).
    sessions_gauge: i64,
    /// Sessions the client holds (opened and not ended).
    sessions_held: u64,
    broadcasts_published: u64,
    /// Broadcast deliveries in the interval ending here, and their p99 / max (ms).
    deliveries: u64,
    p99_ms: f64,
    max_ms: f64,
    /// The machine's 1-minute load average.
    load1: f64,
}

/// Samples at the start, at the end of the warm-up and at the end, and how memory moved after
/// the warm-up.
#[derive(Debug, Serialize)]
struct Summary {
    start: Sample,
    after_warmup: Sample,
    end: Sample,
    /// Least-squares slope of RSS and open files over the samples after the warm-up.
    rss_kib_per_min_after_warmup: f64,
    open_files_per_min_after_warmup: f64,
    rss_max_kib_after_warmup: u64,
    open_files_max_after_warmup: u64,
    load1_min: f64,
    load1_max: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    server: ServerKind,
    url: String,
    server_pids: Vec<u32>,
    client_processes: usize,
    sessions_requested: u32,
    sessions_opened: u64,
    open_errors: u64,
    open_wall_s: f64,
    duration_s: u64,
    every_s: u64,
    warmup_s: u64,
    broadcast_rate: f64,
    broadcasts_published: u64,
    publish_errors: Vec<ErrorCount>,
    /// Sessions that ended before the run did.
    sessions_dropped: u64,
    summary: Option<Summary>,
    samples: Vec<Sample>,
    errors: Vec<ErrorCount>,
}

pub async fn run(args: SoakArgs) -> Result<()> {
    let common = &args.common;
    if common.server != ServerKind::Belay || !common.nodes.is_empty() {
        bail!("soak runs against one Belay node");
    }
    if !(args.broadcast_rate >= 0.0 && args.broadcast_rate.is_finite()) {
        bail!("--broadcast-rate must be 0 or a positive number");
    }
    let broadcasts = (args.broadcast_rate * args.duration as f64).ceil() as u64;
    let mut opened = sessions::open_all(common, broadcasts, 0, None).await?;
    let metrics_url = format!("{}/metrics", opened.spec.base.trim_end_matches('/'));
    let pids = opened.server_pids.clone();

    let published = Arc::new(AtomicU64::new(0));
    let (spec, api, rate) = (opened.spec.clone(), opened.api.clone(), args.broadcast_rate);
    let counter = published.clone();
    let publisher = tokio::spawn(async move {
        let errors = ErrorTally::default();
        let start = tokio::time::Instant::now();
        for seq in 0..broadcasts {
            tokio::time::sleep_until(start + Duration::from_secs_f64(seq as f64 / rate)).await;
            match spec.publish(&api, seq).await {
                Ok(_) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => errors.add(format!("{err:#}")),
            }
        }
        errors.sorted()
    });

    let mut delivered = histogram()?;
    let mut samples = Vec::new();
    let start = tokio::time::Instant::now();
    let bar = output::bar(args.duration, "soak s");
    let mut tick = tokio::time::interval(Duration::from_secs(args.every));
    loop {
        tick.tick().await;
        let t_s = start.elapsed().as_secs_f64();
        let memory = procfs::memory(&pids);
        let open_files = pids.iter().map(|&pid| open_files(pid)).sum();
        let sessions_gauge = sessions_gauge(&opened.api, &metrics_url).await;
        let stats = opened.fleet.stats().await?;
        let total = merged_deliveries(&opened.fleet.reports().await?)?;
        let mut interval = total.clone();
        interval
            .subtract(&delivered)
            .context("interval of the delivery histogram")?;
        delivered = total;
        let sample = Sample {
            t_s,
            rss_kib: memory.rss_kib,
            pss_kib: memory.pss_kib,
            open_files,
            sessions_gauge,
            sessions_held: stats.opened - stats.dropped,
            broadcasts_published: published.load(Ordering::Relaxed),
            deliveries: interval.len(),
            p99_ms: interval.value_at_quantile(0.99) as f64 / 1e3,
            max_ms: interval.max() as f64 / 1e3,
            load1: load_average(),
        };
        bar.set_position(t_s as u64);
        bar.set_message(format!(
            "RSS {:.1} MiB  files {}  sessions {}  p99 {:.1} ms  load {:.2}",
            sample.rss_kib as f64 / 1024.0,
            sample.open_files,
            sample.sessions_gauge,
            sample.p99_ms,
            sample.load1
        ));
        samples.push(sample);
        if t_s >= args.duration as f64 {
            break;
        }
    }
    bar.finish();
    let publish_errors = publisher.await.context("publisher task")?;
    let stats = opened.fleet.stats().await?;
    let reports = opened.fleet.reports().await?;
    opened.fleet.stop().await;

    let report = Report {
        scenario: "soak",
        server: common.server,
        url: opened.spec.base.clone(),
        server_pids: pids,
        client_processes: opened.workers,
        sessions_requested: common.sessions,
        sessions_opened: opened.stats.opened,
        open_errors: opened.stats.failed,
        open_wall_s: opened.open_wall_s,
        duration_s: args.duration,
        every_s: args.every,
        warmup_s: args.warmup,
        broadcast_rate: args.broadcast_rate,
        broadcasts_published: published.load(Ordering::Relaxed),
        publish_errors,
        sessions_dropped: stats.dropped,
        summary: summarise(&samples, args.warmup as f64),
        samples,
        errors: crate::fleet::errors(&reports),
    };
    report.print();
    let (json_path, _) = output::paths(common.out.as_deref(), "soak");
    write_csv(&json_path.with_extension("csv"), &report.samples)?;
    output::write(Some(&json_path), "soak", &report, &report.chart())
}

fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000, 3)?)
}

/// Every worker's delivery histogram (µs) since it started, merged.
fn merged_deliveries(reports: &[WorkerReport]) -> Result<Histogram<u64>> {
    let mut hist = histogram()?;
    for report in reports {
        for &(value, count) in &report.delivery_us {
            hist.saturating_record_n(value.max(1), count);
        }
    }
    Ok(hist)
}

/// Entries of `/proc/<pid>/fd` (0 when it cannot be read).
fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count() as u64)
}

/// The open-session gauge, or -1 when `/metrics` did not answer with it.
async fn sessions_gauge(api: &reqwest::Client, url: &str) -> i64 {
    let Ok(response) = api.get(url).send().await else {
        return -1;
    };
    let Ok(text) = response.text().await else {
        return -1;
    };
    gauge_value(&text, SESSIONS_GAUGE).unwrap_or(-1)
}

/// The value of an unlabelled series in the Prometheus text format.
fn gauge_value(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(name))
        .find_map(|rest| rest.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn summarise(samples: &[Sample], warmup_s: f64) -> Option<Summary> {
    let start = *samples.first()?;
    let end = *samples.last()?;
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= warmup_s).collect();
    let after_warmup = **after.first()?;
    let per_min = |value: fn(&Sample) -> f64| {
        let points: Vec<(f64, f64)> = after.iter().map(|s| (s.t_s / 60.0, value(s))).collect();
        slope(&points)
    };
    let loads = samples.iter().map(|s| s.load1);
    Some(Summary {
        start,
        after_warmup,
        end,
        rss_kib_per_min_after_warmup: per_min(|s| s.rss_kib as f64),
        open_files_per_min_after_warmup: per_min(|s| s.open_files as f64),
        rss_max_kib_after_warmup: after.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        open_files_max_after_warmup: after.iter().map(|s| s.open_files).max().unwrap_or(0),
        load1_min: loads.clone().fold(f64::INFINITY, f64::min),
        load1_max: loads.fold(0.0, f64::max),
    })
}

/// Least-squares slope of y over x (0 for fewer than two distinct x).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for &(x, y) in points {
        cov += (x - mean_x) * (y - mean_y);
        var += (x - mean_x) * (x - mean_x);
    }
    if var > 0.0 { cov / var } else { 0.0 }
}

fn write_csv(path: &Path, samples: &[Sample]) -> Result<()> {
    let mut csv = String::from(
        "t_s,rss_kib,pss_kib,open_files,sessions_gauge,sessions_held,broadcasts_published,\
         deliveries,p99_ms,max_ms,load1\n",
    );
    for s in samples {
        csv.push_str(&format!(
            "{:.1},{},{},{},{},{},{},{},{:.3},{:.3},{:.2}\n",
            s.t_s,
            s.rss_kib,
            s.pss_kib,
            s.open_files,
            s.sessions_gauge,
            s.sessions_held,
            s.broadcasts_published,
            s.deliveries,
            s.p99_ms,
            s.max_ms,
            s.load1
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))
}

impl Report {
    fn print(&self) {
        println!();
        println!(
            "belay-load soak  url={}  client processes={}  {} s, a sample every {} s",
            self.url, self.client_processes, self.duration_s, self.every_s
        );
        row(
            "sessions",
            format!(
                "opened {} of {}  open errors {}  dropped {}  ({:.2} s to open)",
                self.sessions_opened,
                self.sessions_requested,
                self.open_errors,
                self.sessions_dropped,
                self.open_wall_s
            ),
        );
        row(
            "broadcasts",
            format!(
                "published {} at {}/s",
                self.broadcasts_published, self.broadcast_rate
            ),
        );
        for e in &self.publish_errors {
            row("publish error", format!("{}x {}", e.count, e.message));
        }
        common::error_rows(&self.errors);
        println!();
        println!(
            "  {:>7}  {:>9}  {:>9}  {:>7}  {:>8}  {:>7}  {:>9}  {:>8}  {:>5}",
            "t s", "RSS MiB", "PSS MiB", "files", "sessions", "held", "delivered", "p99 ms", "load"
        );
        let step = self.samples.len().div_ceil(TABLE_ROWS).max(1);
        let last = self.samples.len().saturating_sub(1);
        for (i, s) in self.samples.iter().enumerate() {
            if i % step == 0 || i == last {
                println!(
                    "  {:>7.0}  {:>9.1}  {:>9.1}  {:>7}  {:>8}  {:>7}  {:>9}  {:>8.2}  {:>5.2}",
                    s.t_s,
                    s.rss_kib as f64 / 1024.0,
                    s.pss_kib as f64 / 1024.0,
                    s.open_files,
                    s.sessions_gauge,
                    s.sessions_held,
                    s.deliveries,
                    s.p99_ms,
                    s.load1
                );
            }
        }
        if let Some(summary) = &self.summary {
            println!();
            for (label, s) in [
                ("start", summary.start),
                ("after warm-up", summary.after_warmup),
                ("end", summary.end),
            ] {
                row(
                    label,
                    format!(
                        "t {:.0} s  RSS {:.1} MiB  files {}  sessions {}  p99 {:.2} ms",
                        s.t_s,
                        s.rss_kib as f64 / 1024.0,
                        s.open_files,
                        s.sessions_gauge,
                        s.p99_ms
                    ),
                );
            }
            row(
                "after warm-up",
                format!(
                    "RSS {:+.1} KiB/min (max {:.1} MiB)  files {:+.2}/min (max {})",
                    summary.rss_kib_per_min_after_warmup,
                    summary.rss_max_kib_after_warmup as f64 / 1024.0,
                    summary.open_files_per_min_after_warmup,
                    summary.open_files_max_after_warmup
                ),
            );
            row(
                "load average 1 min",
                format!("{:.2} – {:.2}", summary.load1_min, summary.load1_max),
            );
        }
    }

    /// RSS, open files, sessions and delivery p99 over time, one panel each.
    fn chart(&self) -> Plot {
        let minutes = "minutes since the sessions were open";
        let over_time = |name: &str, value: fn(&Sample) -> f64| {
            Series::line(
                name,
                self.samples
                    .iter()
                    .map(|s| (s.t_s / 60.0, value(s)))
                    .collect(),
            )
        };
        let panel = |title: &str, y_label: &str, series: Vec<Series>| Panel {
            title: title.to_owned(),
            x_label: minutes.to_owned(),
            y_label: y_label.to_owned(),
            x_axis: XAxis::Linear,
            series,
        };
        Plot {
            title: format!(
                "soak: {} sessions on one node for {} min, broadcasts at {}/s",
                self.sessions_opened,
                self.duration_s / 60,
                self.broadcast_rate
            ),
            panels: vec![
                panel(
                    "server memory",
                    "MiB",
                    vec![
                        over_time("RSS", |s| s.rss_kib as f64 / 1024.0),
                        over_time("PSS", |s| s.pss_kib as f64 / 1024.0),
                    ],
                ),
                panel(
                    "server open files and sessions",
                    "count",
                    vec![
                        over_time("open files", |s| s.open_files as f64),
                        over_time("sessions (gauge)", |s| s.sessions_gauge as f64),
                        over_time("sessions held by this client", |s| s.sessions_held as f64),
                    ],
                ),
                panel(
                    "broadcast delivery, per interval",
                    "ms",
                    vec![
                        over_time("p99", |s| s.p99_ms),
                        over_time("max", |s| s.max_ms),
                    ],
                ),
                panel(
                    "machine load",
                    "1-minute load average",
                    vec![over_time("load average", |s| s.load1)],
                ),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_gauge_is_read_from_the_metrics_text() {
        let text = "# HELP belay_sessions_open Open SSE sessions\n\
                    # TYPE belay_sessions_open gauge\n\
                    belay_sessions_opened_total 20\n\
                    belay_sessions_open 15000\n";
        assert_eq!(gauge_value(text, SESSIONS_GAUGE), Some(15_000));
        assert_eq!(
            gauge_value("belay_sessions_opened_total 3\n", SESSIONS_GAUGE),
            None
        );
    }

    #[test]
    fn a_flat_series_has_no_slope_and_a_growing_one_has_its_rate() {
        assert_eq!(slope(&[(0.0, 5.0), (1.0, 5.0), (2.0, 5.0)]), 0.0);
        let growing: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 3.0 * f64::from(i)))
            .collect();
        assert!((slope(&growing) - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 2.0)]), 0.0);
    }

    #[test]
    fn one_intervals_deliveries_are_the_difference_of_two_readings() -> Result<()> {
        let report = |values: &[u64]| WorkerReport {
            delivery_us: values.iter().map(|&v| (v, 1)).collect(),
            ..WorkerReport::default()
        };
        let before = merged_deliveries(&[report(&[1_000, 2_000])])?;
        let mut now = merged_deliveries(&[report(&[1_000, 2_000, 90_000])])?;
        now.subtract(&before)?;
        assert_eq!(now.len(), 1);
        assert!(now.max() >= 89_000);
        Ok(())
    }
}
