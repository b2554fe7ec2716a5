//! The plots: a latency CDF per mode and containerd version, and relist
//! cost against N with the floor. PNGs through plotters' bitmap backend;
//! text through ab_glyph with DejaVu Sans from Debian's fonts-dejavu-core.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

use crate::daemon::Mode;
use crate::{RunResult, Scenario};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT).map_err(|e| {
            format!("reading the font {FONT} ({e}); install Debian's fonts-dejavu-core")
        })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT} is not a font ab_glyph can read"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Draws every plot into `out`; returns their file names.
pub fn all(out: &Path, results: &[RunResult]) -> Result<Vec<String>> {
    register_font()?;
    let mut files = Vec::new();
    let mut versions: Vec<&str> = Vec::new();
    for r in results {
        if !versions.contains(&r.version.as_str()) {
            versions.push(&r.version);
        }
    }
    for v in &versions {
        for mode in Mode::ALL {
            let name = format!("latency-cdf-{}-{v}.png", mode.name());
            if latency_cdf(&out.join(&name), results, v, mode)? {
                files.push(name);
            }
        }
    }
    let name = "relist-cost.png".to_string();
    if relist_cost(&out.join(&name), results, &versions)? {
        files.push(name);
    }
    Ok(files)
}

fn cdf(values: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = values.iter().map(|x| x.max(0.01)).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.iter()
        .enumerate()
        .map(|(i, x)| (*x, (i + 1) as f64 / n))
        .collect()
}

fn latency_cdf(path: &Path, results: &[RunResult], version: &str, mode: Mode) -> Result<bool> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in results
        .iter()
        .filter(|r| r.version == version && r.mode == mode && r.error.is_none())
    {
        if r.scenario == Scenario::Steady {
            continue;
        }
        let truth = if r.scenario == Scenario::Restart {
            &r.latencies.truth_live_ms
        } else {
            &r.latencies.truth_ms
        };
        if !truth.is_empty() {
            series.push((
                format!("{} (from ground truth)", r.scenario.name()),
                cdf(truth),
            ));
        }
        if !r.latencies.own_ms.is_empty() && r.scenario == Scenario::Churn {
            series.push((
                format!("{} own (from CRI created_at)", r.scenario.name()),
                cdf(&r.latencies.own_ms),
            ));
        }
    }
    if series.is_empty() {
        return Ok(false);
    }
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Event latency, {}, containerd {version}", mode.name()),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((0.01f64..30_000f64).log_scale(), 0f64..1f64)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log; values ≤ 0.01 drawn at 0.01)")
        .y_desc("fraction of events")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (label, points)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// A line: its label, its points, whether it is the floor.
type Series = (String, Vec<(f64, f64)>, bool);

fn relist_cost(path: &Path, results: &[RunResult], versions: &[&str]) -> Result<bool> {
    let steady: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.scenario == Scenario::Steady && r.error.is_none())
        .collect();
    if steady.is_empty() {
        return Ok(false);
    }
    let mut series: Vec<Series> = Vec::new();
    let mut top: f64 = 0.1;
    let mut max_n: f64 = 10.0;
    for v in versions {
        let mut relist = Vec::new();
        let mut rpc = Vec::new();
        let mut own = Vec::new();
        let mut floor = Vec::new();
        let mut ns: Vec<usize> = steady
            .iter()
            .filter(|r| r.version == *v)
            .map(|r| r.pods)
            .collect();
        ns.sort_unstable();
        ns.dedup();
        for n in ns {
            let x = n as f64;
            max_n = max_n.max(x);
            let runs: Vec<&&RunResult> = steady
                .iter()
                .filter(|r| r.version == *v && r.pods == n)
                .collect();
            // Relist figures from the generic modes (evented rarely relists).
            let mut push = |to: &mut Vec<(f64, f64)>, value: Option<f64>| {
                if let Some(y) = value {
                    top = top.max(y);
                    to.push((x, y));
                }
            };
            let generic = runs.iter().find(|r| r.mode == Mode::Generic1s);
            push(&mut relist, generic.and_then(|r| r.relist.mean_ms));
            push(&mut rpc, generic.and_then(|r| r.relist.rpc_ms));
            push(&mut own, generic.and_then(|r| r.relist.own_ms));
            let mut all: Vec<f64> = runs
                .iter()
                .flat_map(|r| r.floor_ms.iter().copied())
                .collect();
            all.sort_by(f64::total_cmp);
            push(&mut floor, all.get(all.len() / 2).copied());
        }
        series.push((format!("{v}: pleg relist (generic 1 s)"), relist, false));
        series.push((format!("{v}: runtime RPCs in it"), rpc, false));
        series.push((format!("{v}: pleg's own"), own, false));
        series.push((format!("{v}: floor (bare List×2)"), floor, true));
    }
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Relist cost against pods (1 sandbox + 2 containers each)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_n * 1.05, 0f64..top * 1.15)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("pods")
        .y_desc("ms per relist")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (label, points, dashed)) in series.into_iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        let style = color.stroke_width(if dashed { 1 } else { 2 });
        chart
            .draw_series(LineSeries::new(points.clone(), style))
            .map_err(|e| anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}
