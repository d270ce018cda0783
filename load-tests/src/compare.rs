//! `compare`: reads `connections`, `fanout` and cross-node `notify` result files of Belay and
//! Nchan runs and prints, per metric, each server's range over its runs and the ratio
//! Belay / Nchan of the medians.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Result files written by `connections`, `fanout` and `notify` (any order, several runs
    /// each); of `notify`, only cross-node runs count (published to another node than the
    /// sessions').
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// A compared number: which results it comes from, where it is, and the goal for the ratio.
struct Metric {
    label: &'static str,
    scenario: &'static str,
    /// `mode` of fanout results, or None.
    mode: Option<&'static str>,
    pointer: &'static str,
    goal: &'static str,
}

const METRICS: [Metric; 11] = [
    Metric {
        label: "memory/session connected KiB",
        scenario: "connections",
        mode: None,
        pointer: "/server_memory_connected/rss_kib_per_session",
        goal: "",
    },
    Metric {
        label: "memory/session after burst KiB",
        scenario: "connections",
        mode: None,
        pointer: "/server_memory_after_burst/rss_kib_per_session",
        goal: "<= 0.5 (and <= 5 KiB)",
    },
    Metric {
        label: "connect rate sessions/s",
        scenario: "connections",
        mode: None,
        pointer: "/connect_rate_per_s",
        goal: "",
    },
    Metric {
        label: "back to back: frames/s",
        scenario: "fanout",
        mode: Some("back-to-back"),
        pointer: "/fanout/frames_per_sec",
        goal: ">= 1",
    },
    Metric {
        label: "back to back: server µs/frame",
        scenario: "fanout",
        mode: Some("back-to-back"),
        pointer: "/fanout/server_cpu_per_frame_us",
        goal: "<= 1",
    },
    Metric {
        label: "back to back: client µs/frame",
        scenario: "fanout",
        mode: Some("back-to-back"),
        pointer: "/fanout/client_cpu_per_frame_us",
        goal: "",
    },
    Metric {
        label: "paced: all received p99 ms",
        scenario: "fanout",
        mode: Some("paced"),
        pointer: "/fanout/all_received/p99_ms",
        goal: "<= 0.75",
    },
    Metric {
        label: "cross-node: delivered events/s",
        scenario: "notify",
        mode: None,
        pointer: "/achieved_rate_eps",
        goal: "",
    },
    Metric {
        label: "cross-node: p50 ms",
        scenario: "notify",
        mode: None,
        pointer: "/latency/p50_ms",
        goal: "",
    },
    Metric {
        label: "cross-node: p99 ms",
        scenario: "notify",
        mode: None,
        pointer: "/latency/p99_ms",
        goal: "<= 1",
    },
    Metric {
        label: "cross-node: p99.9 ms",
        scenario: "notify",
        mode: None,
        pointer: "/latency/p999_ms",
        goal: "",
    },
];

/// Whether a result counts for `metric`: its scenario and mode, and for `notify` a run that
/// published to another node than the one holding the sessions.
fn counts(metric: &Metric, result: &Value) -> bool {
    result["scenario"] == metric.scenario
        && metric.mode.is_none_or(|m| result["mode"] == m)
        && (metric.scenario != "notify" || result["url"] != result["publish_url"])
}

pub fn run(args: &CompareArgs) -> Result<()> {
    let mut results = Vec::new();
    for path in &args.files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        results.push(value);
    }
    println!(
        "{:<32} {:>26} {:>26} {:>12}  goal",
        "metric", "belay (min..max, runs)", "nchan (min..max, runs)", "belay/nchan"
    );
    for metric in &METRICS {
        let values = |server: &str| -> Vec<f64> {
            let mut v: Vec<f64> = results
                .iter()
                .filter(|r| counts(metric, r) && r["server"] == server)
                .filter_map(|r| r.pointer(metric.pointer).and_then(Value::as_f64))
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (belay, nchan) = (values("belay"), values("nchan"));
        if belay.is_empty() && nchan.is_empty() {
            continue;
        }
        let ratio = match (median(&belay), median(&nchan)) {
            (Some(b), Some(n)) if n != 0.0 => format!("{:.2}", b / n),
            _ => "-".to_owned(),
        };
        println!(
            "{:<32} {:>26} {:>26} {:>12}  {}",
            metric.label,
            range(&belay),
            range(&nchan),
            ratio,
            metric.goal
        );
    }
    Ok(())
}

fn median(sorted: &[f64]) -> Option<f64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn range(sorted: &[f64]) -> String {
    match (sorted.first(), sorted.last()) {
        (Some(lo), Some(hi)) => format!("{}..{} ({})", short(*lo), short(*hi), sorted.len()),
        _ => "-".to_owned(),
    }
}

fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_lists() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, 5.0, 9.0]), Some(5.0));
        assert_eq!(median(&[1.0, 3.0]), Some(2.0));
    }
}
