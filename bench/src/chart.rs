//! `--chart DIR`: SVG charts of a run (plotters, SVG backend: no fonts or system libraries to
//! install), and the progress bar on stderr.

use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::io::{IsTerminal, Write};
use std::path::Path;

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart of `series` into `dir/file`.
pub fn lines(dir: &Path, file: &str, title: &str, axes: (&str, &str), series: &[Series]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(file);
    let all = || series.iter().flat_map(|s| s.points.iter().copied());
    let x_max = all().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let y_max = all().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.05;
    let root = SVGBackend::new(&path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart.configure_mesh().x_desc(axes.0).y_desc(axes.1).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("chart: {}", path.display());
    Ok(())
}

/// A latency histogram (µs) as a percentile curve: x in nines (1 = p90, 2 = p99, 3 = p99.9),
/// y in milliseconds, up to the largest value recorded.
pub fn percentiles(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = (0..=80)
        .map(|k| {
            let nines = k as f64 * 0.05;
            (nines, h.value_at_quantile(1.0 - 10f64.powf(-nines)) as f64 / 1000.0)
        })
        .filter(|(nines, _)| *nines <= (h.len().max(1) as f64).log10())
        .collect();
    let top = points.last().map_or(0.0, |p| p.0) + 0.05;
    points.push((top, h.max() as f64 / 1000.0));
    points
}

/// A progress bar on stderr, drawn only when stderr is a terminal (logs and pipes stay clean,
/// and stdout's last line stays the JSON).
pub struct Progress {
    label: String,
    total: usize,
    shown: bool,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: usize) -> Progress {
        let p = Progress { label: label.into(), total: total.max(1), shown: std::io::stderr().is_terminal() };
        p.set(0);
        p
    }

    pub fn set(&self, done: usize) {
        if !self.shown {
            return;
        }
        let width = 30;
        let filled = (done.min(self.total) * width) / self.total;
        let mut e = std::io::stderr().lock();
        let _ =
            write!(e, "\r{} [{}{}] {done}/{}", self.label, "#".repeat(filled), ".".repeat(width - filled), self.total);
        let _ = e.flush();
    }

    pub fn finish(&self) {
        if self.shown {
            let _ = writeln!(std::io::stderr());
        }
    }
}
