//! Charts of a run: the series a scenario draws, kept in its JSON result file (`"plot"`) and
//! drawn as SVG with plotters. Most scenarios draw two panels, latency over time and the latency
//! distribution as a percentile spectrum (p0 … p99.999); `soak` draws its samples over time.
//! Subcommand `plot` draws several result files on one chart, matching panels by title, so two
//! servers' runs can be seen side by side.
//!
//! Text is left to the SVG viewer (plotters' SVG backend writes `<text>` elements and only
//! estimates their width), so no font is loaded or needed at build time.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

/// Most points drawn per series; longer series are binned first.
const MAX_POINTS: usize = 2_000;
/// Deepest percentile drawn: 99.999 %.
const SPECTRUM_NINES: f64 = 5.0;
/// Points of a percentile spectrum.
const SPECTRUM_STEPS: u32 = 200;

const WIDTH: u32 = 1_000;
const PANEL_HEIGHT: u32 = 320;
const TITLE_HEIGHT: u32 = 36;
/// Room right of each panel for its legend.
const LEGEND_WIDTH: u32 = 250;
const LEGEND_ROW: i32 = 18;
const FONT: &str = "sans-serif";
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One line (or set of dots) of a panel: (x, y) points.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    #[serde(default)]
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

/// How a panel's x values read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XAxis {
    /// Plain numbers (seconds, minutes).
    Linear,
    /// Number of nines of a percentile: 0 = p0, 1 = p90, 2 = p99 … (see `spectrum`).
    Nines,
}

/// One chart: its axes and series.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_axis: XAxis,
    pub series: Vec<Series>,
}

/// A figure of panels stacked top to bottom, under one title.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plot {
    pub title: String,
    pub panels: Vec<Panel>,
}

impl Plot {
    /// The usual two panels: latency (ms) over time, and the latency distribution.
    pub fn latency(
        title: &str,
        time_label: &str,
        over_time: Vec<Series>,
        distribution: Vec<Series>,
    ) -> Self {
        Self {
            title: title.to_owned(),
            panels: vec![
                Panel {
                    title: "latency over time".to_owned(),
                    x_label: time_label.to_owned(),
                    y_label: "ms".to_owned(),
                    x_axis: XAxis::Linear,
                    series: over_time,
                },
                Panel {
                    title: "latency distribution".to_owned(),
                    x_label: "percentile".to_owned(),
                    y_label: "ms".to_owned(),
                    x_axis: XAxis::Nines,
                    series: distribution,
                },
            ],
        }
    }

    /// Several plots on one: each panel of the first, with the series of every plot's panel of
    /// the same title, named `<label>: <series>` (one plot keeps its names).
    pub fn merge(title: &str, plots: &[(String, Plot)]) -> Result<Self> {
        let one = plots.len() == 1;
        let Some((_, first)) = plots.first() else {
            bail!("nothing to plot");
        };
        let panels = first
            .panels
            .iter()
            .map(|panel| {
                let series = plots
                    .iter()
                    .flat_map(|(label, plot)| {
                        plot.panels
                            .iter()
                            .filter(|p| p.title == panel.title)
                            .flat_map(move |p| {
                                p.series.iter().map(move |s| Series {
                                    name: if one {
                                        s.name.clone()
                                    } else {
                                        format!("{label}: {}", s.name)
                                    },
                                    ..s.clone()
                                })
                            })
                    })
                    .collect();
                Panel {
                    series,
                    ..panel.clone()
                }
            })
            .collect();
        Ok(Self {
            title: title.to_owned(),
            panels,
        })
    }

    /// The figure as one SVG document.
    pub fn to_svg(&self) -> Result<String> {
        let panels = u32::try_from(self.panels.len().max(1)).unwrap_or(1);
        let size = (WIDTH, TITLE_HEIGHT + panels * PANEL_HEIGHT);
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
            root.fill(&WHITE)?;
            let root = root.titled(&self.title, (FONT, 18))?;
            let areas = root.split_evenly((self.panels.len().max(1), 1));
            for (panel, area) in self.panels.iter().zip(&areas) {
                draw_panel(panel, area)?;
            }
            root.present()?;
        }
        Ok(svg)
    }
}

fn draw_panel(panel: &Panel, area: &DrawingArea<SVGBackend<'_>, Shift>) -> Result<()> {
    let (width, _) = area.dim_in_pixel();
    let (chart_area, legend_area) =
        area.split_horizontally(width.saturating_sub(LEGEND_WIDTH).max(1));
    let points = panel.series.iter().flat_map(|s| s.points.iter());
    let (x_max, y_max) = points.fold((0.0f64, 0.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    // Time runs to the last sample; values start at zero and end at a round number.
    let x_max = match panel.x_axis {
        XAxis::Nines => SPECTRUM_NINES,
        XAxis::Linear if x_max > 0.0 && x_max.is_finite() => x_max,
        XAxis::Linear => 1.0,
    };
    let y_max = nice_max(y_max);
    let mut chart = ChartBuilder::on(&chart_area)
        .caption(&panel.title, (FONT, 15))
        .margin(8)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    let nines = |x: &f64| percentile_label(*x);
    let plain = |v: &f64| short(*v);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .y_label_formatter(&plain)
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .light_line_style(TRANSPARENT);
    match panel.x_axis {
        XAxis::Nines => mesh
            .x_labels(SPECTRUM_NINES as usize + 1)
            .x_label_formatter(&nines),
        XAxis::Linear => mesh.x_labels(11).x_label_formatter(&plain),
    };
    mesh.draw()?;

    for (i, series) in panel.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let points = series.points.iter().copied();
        if series.dots {
            chart.draw_series(points.map(|p| Circle::new(p, 2, color.filled())))?;
        } else {
            chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?;
        }
        let y = LEGEND_ROW * (i as i32 + 2);
        let swatch: ShapeStyle = if series.dots {
            color.filled()
        } else {
            color.stroke_width(2)
        };
        if series.dots {
            legend_area.draw(&Circle::new((16, y), 3, swatch))?;
        } else {
            legend_area.draw(&PathElement::new(vec![(6, y), (26, y)], swatch))?;
        }
        let style = TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        legend_area.draw(&Text::new(series.name.clone(), (32, y), style))?;
    }
    Ok(())
}

/// The percentile spectrum of a µs histogram: x = number of nines (0 = p0, 2 = p99), y = ms.
pub fn spectrum(name: &str, hist: &Histogram<u64>) -> Series {
    let mut points = Vec::new();
    if hist.is_empty() {
        return Series::line(name, points);
    }
    for i in 0..=SPECTRUM_STEPS {
        let nines = SPECTRUM_NINES * f64::from(i) / f64::from(SPECTRUM_STEPS);
        let quantile = 1.0 - 10f64.powf(-nines);
        points.push((nines, hist.value_at_quantile(quantile) as f64 / 1000.0));
    }
    Series::line(name, points)
}

/// Samples (seconds, ms) binned by time: p50, p99 and max per bin, as three series; a series
/// short enough to draw is kept as dots.
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

/// `0`, `90`, `99`, `99.9` … for 0, 1, 2, 3 … nines; blank between whole nines.
fn percentile_label(nines: f64) -> String {
    if (nines - nines.round()).abs() > 1e-6 {
        return String::new();
    }
    let n = nines.round() as i32;
    if n <= 0 {
        return "p0".to_owned();
    }
    let percent = 100.0 - 100.0 * 10f64.powi(-n);
    format!("p{percent:.*}", (n - 2).max(0) as usize)
}

/// An axis label: whole numbers as they are, others with up to two decimals (`0.5`, `1.25`).
fn short(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        return format!("{v:.0}");
    }
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Result files (JSON) of any scenario; their charts are drawn together, panel by panel.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Name of each file's series in the legend, in the order of the files; default: the
    /// result's `server` (belay, nchan), else the file's name.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Title of the chart; default: the first file's.
    #[arg(long)]
    title: Option<String>,
    /// SVG file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Subcommand `plot`: several result files on one chart.
pub fn run(args: &PlotArgs) -> Result<()> {
    let mut plots = Vec::new();
    for (i, path) in args.files.iter().enumerate() {
        let (server, plot) = read(path)?;
        let label = args
            .labels
            .get(i)
            .cloned()
            .or(server)
            .unwrap_or_else(|| file_stem(path));
        plots.push((label, plot));
    }
    let title = match &args.title {
        Some(title) => title.clone(),
        None => plots.first().map(|p| p.1.title.clone()).unwrap_or_default(),
    };
    let svg = Plot::merge(&title, &plots)?.to_svg()?;
    std::fs::write(&args.out, svg).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// A result file's plot, and its `server` field if it has one.
fn read(path: &Path) -> Result<(Option<String>, Plot)> {
    #[derive(Deserialize)]
    struct Saved {
        server: Option<String>,
        plot: Option<Plot>,
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let result: Saved =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let plot = result.plot.with_context(|| {
        format!(
            "{} holds no plot (written by an older belay-load?)",
            path.display()
        )
    })?;
    Ok((result.server.map(|s| s.to_lowercase()), plot))
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
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
    fn axis_labels_are_short() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(0.5), "0.5");
        assert_eq!(short(1.25), "1.25");
        assert_eq!(short(15_000.0), "15000");
        assert_eq!(short(123.4), "123");
    }

    #[test]
    fn percentiles_are_labelled_at_whole_nines_only() {
        assert_eq!(percentile_label(0.0), "p0");
        assert_eq!(percentile_label(1.0), "p90");
        assert_eq!(percentile_label(2.0), "p99");
        assert_eq!(percentile_label(3.0), "p99.9");
        assert_eq!(percentile_label(5.0), "p99.999");
        assert_eq!(percentile_label(2.5), "");
    }

    #[test]
    fn a_plot_is_one_svg_document_with_every_series_and_axis() -> Result<()> {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
        for v in 1..1000 {
            hist.record(v)?;
        }
        let plot = Plot::latency(
            "t <1>",
            "seconds",
            vec![Series::dots("all received", vec![(0.0, 1.0), (1.0, 2.0)])],
            vec![spectrum("delivery", &hist)],
        );
        let svg = plot.to_svg()?;
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("all received") && svg.contains("delivery"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("p99.9") && svg.contains("seconds"));
        Ok(())
    }

    #[test]
    fn merged_plots_keep_every_files_series_under_its_label() -> Result<()> {
        let one = |ms: f64| {
            Plot::latency(
                "fanout",
                "s",
                vec![Series::dots("all received", vec![(0.0, ms)])],
                vec![Series::line("each delivery", vec![(0.0, ms), (5.0, ms)])],
            )
        };
        let merged = Plot::merge(
            "side by side",
            &[
                ("belay".to_owned(), one(1.0)),
                ("nchan".to_owned(), one(2.0)),
            ],
        )?;
        let names: Vec<&str> = merged.panels[0]
            .series
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["belay: all received", "nchan: all received"]);
        assert_eq!(merged.panels[1].series.len(), 2);
        Ok(())
    }

    #[test]
    fn a_plot_survives_the_result_file() -> Result<()> {
        let plot = Plot::latency("x", "s", vec![Series::line("a", vec![(1.0, 2.0)])], vec![]);
        let back: Plot = serde_json::from_str(&serde_json::to_string(&plot)?)?;
        assert_eq!(back.panels.len(), 2);
        assert_eq!(back.panels[0].series[0].points, [(1.0, 2.0)]);
        assert_eq!(back.panels[1].x_axis, XAxis::Nines);
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
