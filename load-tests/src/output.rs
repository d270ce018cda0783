//! What every scenario leaves behind: progress bars while it runs, and at the end a JSON result
//! file with an SVG plot beside it (latency over time, and the latency distribution as a
//! percentile spectrum). The SVG is written by hand: two line charts do not need a plotting crate.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Default folder of result files (git-ignored).
const RESULTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");
/// Most points drawn per series; longer series are binned first.
const MAX_POINTS: usize = 2_000;
/// Deepest percentile drawn: 99.999 %.
const SPECTRUM_NINES: f64 = 5.0;

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 320.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 180.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// A bar of `len` steps on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("{prefix:>12} [{bar:32}] {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The JSON path the user asked for, or `load-tests/results/<name>-<unix time>.json`; the plot
/// goes beside it with `.svg`.
pub fn paths(out: Option<&Path>, name: &str) -> (PathBuf, PathBuf) {
    let json = out.map(Path::to_path_buf).unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        Path::new(RESULTS_DIR).join(format!("{name}-{stamp}.json"))
    });
    let svg = json.with_extension("svg");
    (json, svg)
}

/// Writes the report as JSON and the plot as SVG, creating the folder if needed.
pub fn write(out: Option<&Path>, name: &str, report: &impl Serialize, svg: &str) -> Result<()> {
    let (json_path, svg_path) = paths(out, name);
    if let Some(dir) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = std::fs::File::create(&json_path)
        .with_context(|| format!("creating {}", json_path.display()))?;
    serde_json::to_writer_pretty(std::io::BufWriter::new(file), report)
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&svg_path, svg).with_context(|| format!("writing {}", svg_path.display()))?;
    eprintln!("wrote {} and {}", json_path.display(), svg_path.display());
    Ok(())
}

/// One line (or set of dots) of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dots: bool,
}

impl Series {
    pub fn line(name: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.to_owned(),
            points,
            dots: false,
        }
    }

    pub fn dots(name: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.to_owned(),
            points,
            dots: true,
        }
    }
}

/// The percentile spectrum of a µs histogram: x = number of nines (0 = p0, 2 = p99), y = ms.
pub fn spectrum(name: &str, hist: &Histogram<u64>) -> Series {
    let mut points = Vec::new();
    if hist.is_empty() {
        return Series::line(name, points);
    }
    let steps = 200;
    for i in 0..=steps {
        let nines = SPECTRUM_NINES * f64::from(i) / f64::from(steps);
        let quantile = 1.0 - 10f64.powf(-nines);
        points.push((nines, hist.value_at_quantile(quantile) as f64 / 1000.0));
    }
    Series::line(name, points)
}

/// Samples (seconds, ms) binned by time: p50, p99 and max per bin, as three series.
pub fn binned(label: &str, samples: &[(f64, f64)], bins: usize) -> Vec<Series> {
    if samples.len() <= MAX_POINTS {
        return vec![Series::dots(label, samples.to_vec())];
    }
    let end = samples.iter().map(|s| s.0).fold(0.0, f64::max);
    let width = (end / bins.max(1) as f64).max(1e-3);
    let mut buckets: Vec<Vec<f64>> = vec![Vec::new(); bins.max(1) + 1];
    for &(t, v) in samples {
        let index = ((t / width) as usize).min(buckets.len() - 1);
        buckets[index].push(v);
    }
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut max = Vec::new();
    for (i, bucket) in buckets.iter_mut().enumerate() {
        if bucket.is_empty() {
            continue;
        }
        bucket.sort_by(f64::total_cmp);
        let at = |q: f64| bucket[((bucket.len() - 1) as f64 * q).round() as usize];
        let t = (i as f64 + 0.5) * width;
        p50.push((t, at(0.5)));
        p99.push((t, at(0.99)));
        max.push((t, at(1.0)));
    }
    vec![
        Series::line(&format!("{label} p50"), p50),
        Series::line(&format!("{label} p99"), p99),
        Series::line(&format!("{label} max"), max),
    ]
}

/// Two panels: latency over time, then the distribution.
pub fn plot(
    title: &str,
    time_label: &str,
    over_time: &[Series],
    distribution: &[Series],
) -> String {
    let height = 2.0 * PANEL_HEIGHT + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
        WIDTH / 2.0,
        escape(title)
    );
    panel(
        &mut svg,
        30.0,
        "latency over time",
        time_label,
        over_time,
        None,
    );
    panel(
        &mut svg,
        30.0 + PANEL_HEIGHT,
        "latency distribution",
        "percentile",
        distribution,
        Some(&[
            (0.0, "0"),
            (1.0, "90"),
            (2.0, "99"),
            (3.0, "99.9"),
            (4.0, "99.99"),
            (5.0, "99.999"),
        ]),
    );
    svg.push_str("</svg>\n");
    svg
}

fn panel(
    svg: &mut String,
    top: f64,
    title: &str,
    x_label: &str,
    series: &[Series],
    x_ticks: Option<&[(f64, &str)]>,
) {
    let left = MARGIN_LEFT;
    let right = WIDTH - MARGIN_RIGHT;
    let plot_top = top + MARGIN_TOP;
    let bottom = top + PANEL_HEIGHT - MARGIN_BOTTOM;
    let points = series.iter().flat_map(|s| s.points.iter());
    let (x_max, y_max) = points.fold((0.0f64, 0.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let x_max = match x_ticks {
        Some(ticks) => ticks.last().map_or(1.0, |t| t.0),
        None => nice_max(x_max),
    };
    let y_max = nice_max(y_max);
    let sx = |x: f64| left + (x / x_max) * (right - left);
    let sy = |y: f64| bottom - (y / y_max) * (bottom - plot_top);

    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"13\" text-anchor=\"middle\">{}</text>",
        (left + right) / 2.0,
        plot_top - 10.0,
        escape(title)
    );
    let _ = writeln!(
        svg,
        "<rect x=\"{left}\" y=\"{plot_top}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>",
        right - left,
        bottom - plot_top
    );
    for i in 0..=5 {
        let y = y_max * f64::from(i) / 5.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{right}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#eee\"/>\
             <text x=\"{1}\" y=\"{2:.1}\" text-anchor=\"end\">{3}</text>",
            sy(y),
            left - 6.0,
            sy(y) + 4.0,
            short(y)
        );
    }
    let ticks: Vec<(f64, String)> = match x_ticks {
        Some(ticks) => ticks.iter().map(|(x, l)| (*x, (*l).to_owned())).collect(),
        None => (0..=5)
            .map(|i| {
                let x = x_max * f64::from(i) / 5.0;
                (x, short(x))
            })
            .collect(),
    };
    for (x, label) in ticks {
        let _ = writeln!(
            svg,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{plot_top}\" y2=\"{bottom}\" stroke=\"#eee\"/>\
             <text x=\"{0:.1}\" y=\"{1}\" text-anchor=\"middle\">{2}</text>",
            sx(x),
            bottom + 16.0,
            escape(&label)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">ms</text>",
        (left + right) / 2.0,
        bottom + 36.0,
        escape(x_label),
        (plot_top + bottom) / 2.0,
        (plot_top + bottom) / 2.0
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        if s.dots {
            for &(x, y) in &s.points {
                let _ = write!(
                    svg,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.6\" fill=\"{color}\"/>",
                    sx(x),
                    sy(y)
                );
            }
            svg.push('\n');
        } else if !s.points.is_empty() {
            let path: Vec<String> = s
                .points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
                path.join(" ")
            );
        }
        let ly = plot_top + 14.0 + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"4\" fill=\"{color}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            right + 12.0,
            ly - 4.0,
            right + 30.0,
            ly,
            escape(&s.name)
        );
    }
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_max(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * power)
}

fn short(v: f64) -> String {
    if v == 0.0 {
        "0".to_owned()
    } else if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_max_rounds_up_to_1_2_5() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(17.0), 20.0);
        assert_eq!(nice_max(100.0), 100.0);
    }

    #[test]
    fn plot_is_one_svg_document_with_every_series() -> Result<()> {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
        for v in 1..1000 {
            hist.record(v)?;
        }
        let svg = plot(
            "t <1>",
            "s",
            &[Series::dots("all received", vec![(0.0, 1.0), (1.0, 2.0)])],
            &[spectrum("delivery", &hist)],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("all received") && svg.contains("delivery"));
        assert!(svg.contains("t &lt;1&gt;"));
        Ok(())
    }

    #[test]
    fn long_series_are_binned() {
        let samples: Vec<(f64, f64)> = (0..10_000).map(|i| (f64::from(i) / 1000.0, 1.0)).collect();
        let series = binned("x", &samples, 50);
        assert_eq!(series.len(), 3);
        assert!(series.iter().all(|s| s.points.len() <= 51));
    }
}
