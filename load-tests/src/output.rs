//! What every scenario leaves behind: progress bars while it runs, and at the end a JSON result
//! file, with the data of its plot in it, and the plot as SVG beside it (`plot`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::plot::Plot;

/// Default folder of result files (git-ignored).
const RESULTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");

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

/// Writes the report as JSON, with the plot's data under `"plot"` (so `belay-load plot` can
/// draw it beside other runs), and the plot as SVG; creates the folder if needed.
pub fn write(out: Option<&Path>, name: &str, report: &impl Serialize, plot: &Plot) -> Result<()> {
    let (json_path, svg_path) = paths(out, name);
    if let Some(dir) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut json = serde_json::to_value(report).context("encoding the report")?;
    if let Some(fields) = json.as_object_mut() {
        fields.insert(
            "plot".to_owned(),
            serde_json::to_value(plot).context("encoding the plot")?,
        );
    }
    let file = std::fs::File::create(&json_path)
        .with_context(|| format!("creating {}", json_path.display()))?;
    serde_json::to_writer_pretty(std::io::BufWriter::new(file), &json)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let svg = plot.to_svg().context("drawing the plot")?;
    std::fs::write(&svg_path, svg).with_context(|| format!("writing {}", svg_path.display()))?;
    eprintln!("wrote {} and {}", json_path.display(), svg_path.display());
    Ok(())
}
