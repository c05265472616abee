//! SVG charts (plotters' SVG backend: text is written as SVG `<text>`, so no font files are needed).
//!
//! - `headline.svg`: spanalloc's advantage over each peer per workload (log scale, 1 = parity; bars above
//!   the line are workloads where spanalloc is better).
//! - `latency.svg`: p50 / p99 / p99.9 of one free + alloc per contestant (log scale, ns).
//! - `page_scaling.svg`: spanalloc's 64 KiB allocation cost against the heap's address-space size.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::contestants::Id;
use crate::machine::Machine;
use crate::stats::Results;
use crate::workloads::scaling;

type Error = Box<dyn std::error::Error>;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn err<E: std::fmt::Debug>(e: E) -> Error {
    format!("plot: {e:?}").into()
}

/// Log-scale bounds around `values` (positive), padded by a factor of 1.5 and including 1 if `with_one`.
fn log_bounds(values: impl Iterator<Item = f64>, with_one: bool) -> (f64, f64) {
    let (mut lo, mut hi) = if with_one {
        (1.0, 1.0)
    } else {
        (f64::MAX, f64::MIN)
    };
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (0.1, 10.0);
    }
    (lo / 1.5, hi * 1.5)
}

/// Grouped bars: `groups[g].1[k]` is bar k of group g (None: no bar). Bars rise from `base`.
#[allow(clippy::too_many_arguments)]
fn grouped_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    groups: &[(String, Vec<Option<f64>>)],
    series: &[String],
    base: Option<f64>,
    width: u32,
) -> Result<(), Error> {
    let root = SVGBackend::new(path, (width, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let all = groups.iter().flat_map(|g| g.1.iter().flatten().copied());
    let (lo, hi) = log_bounds(all, base.is_some());
    // Headroom above the tallest bar for the legend.
    let hi = hi * 4.0;
    let base = base.unwrap_or(lo);
    let n = groups.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(190)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    let k = series.len().max(1) as f64;
    for (s, name) in series.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        let bars = groups.iter().enumerate().filter_map(|(g, (_, vals))| {
            let v = (*vals.get(s)?)?;
            let x0 = g as f64 + 0.1 + 0.8 * s as f64 / k;
            let x1 = x0 + 0.8 / k;
            Some(Rectangle::new([(x0, base), (x1, v)], color.filled()))
        });
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    if base > lo {
        chart
            .draw_series(LineSeries::new(
                [(0.0, base), (n, base)],
                BLACK.stroke_width(1),
            ))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    // Group names, rotated, under each group (plotters' own tick labels sit on round numbers).
    let style = TextStyle::from(("sans-serif", 13).into_font())
        .transform(FontTransform::Rotate90)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (g, (name, _)) in groups.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(g as f64 + 0.5, lo));
        root.draw(&Text::new(name.clone(), (px, py + 6), style.clone()))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// The headline chart: spanalloc's advantage over each peer, per workload.
pub fn headline(path: &Path, r: &Results, ids: &[Id], m: &Machine) -> Result<(), Error> {
    let peers: Vec<Id> = ids
        .iter()
        .copied()
        .filter(|&i| i != Id::Spanalloc)
        .collect();
    let rows = r.rows();
    let mut groups: Vec<(String, Vec<Option<f64>>)> = Vec::new();
    for metric in r.metrics() {
        if metric.starts_with("page_scaling") {
            continue;
        }
        let mut threads: Vec<usize> = rows
            .iter()
            .filter(|x| &x.metric == metric)
            .map(|x| x.threads)
            .collect();
        threads.dedup();
        for t in threads {
            let vals = peers
                .iter()
                .map(|&p| {
                    rows.iter()
                        .find(|x| &x.metric == metric && x.threads == t && x.id == p)
                        .and_then(|x| x.advantage)
                        .map(|a| a.median)
                })
                .collect();
            let name = if t == 1 {
                metric.clone()
            } else {
                format!("{metric} ×{t}")
            };
            groups.push((name, vals));
        }
    }
    let series: Vec<String> = peers.iter().map(|p| p.name().to_owned()).collect();
    let title = format!(
        "spanalloc's advantage over each peer (>1: spanalloc better) — {}",
        m.short_line()
    );
    let width = (groups.len() as u32 * 60).max(900);
    grouped_bars(
        path,
        &title,
        "peer cost / spanalloc cost (log)",
        &groups,
        &series,
        Some(1.0),
        width,
    )
}

/// Latency percentiles per contestant.
pub fn latency(path: &Path, r: &Results, ids: &[Id], m: &Machine) -> Result<(), Error> {
    let metrics = ["latency_p50", "latency_p99", "latency_p999"];
    let groups: Vec<(String, Vec<Option<f64>>)> = ids
        .iter()
        .map(|&id| {
            let vals = metrics
                .iter()
                .map(|metric| {
                    let v = r.values(metric, 1, id)?;
                    crate::stats::Summary::of(&v.iter().flatten().copied().collect::<Vec<_>>())
                        .map(|s| s.median)
                })
                .collect();
            (id.name().to_owned(), vals)
        })
        .collect();
    let series = vec!["p50".to_owned(), "p99".to_owned(), "p99.9".to_owned()];
    let title = format!(
        "free + alloc latency, 1024 live blocks ≤ 1 KiB — {}",
        m.short_line()
    );
    grouped_bars(path, &title, "ns (log)", &groups, &series, None, 1100)
}

/// spanalloc's page-heap cost against heap size.
pub fn page_scaling(path: &Path, r: &Results, m: &Machine) -> Result<(), Error> {
    let points = |kind: &str| -> Vec<(f64, f64)> {
        scaling::sizes(false)
            .into_iter()
            .filter_map(|b| {
                let metric = format!("page_scaling_{kind}_{}", scaling::size_label(b));
                let v = r.values(&metric, 1, Id::Spanalloc)?;
                let s =
                    crate::stats::Summary::of(&v.iter().flatten().copied().collect::<Vec<_>>())?;
                Some(((b >> 20) as f64, s.median))
            })
            .collect()
    };
    let (steady, burst) = (points("steady"), points("burst"));
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let xs = steady.iter().chain(&burst).map(|p| p.0);
    let (xlo, xhi) = log_bounds(xs, false);
    let (ylo, yhi) = log_bounds(steady.iter().chain(&burst).map(|p| p.1), false);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "spanalloc: 64 KiB alloc+free vs heap address space — {}",
                m.short_line()
            ),
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((xlo..xhi).log_scale(), (ylo..yhi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("heap size (MiB, log)")
        .y_desc("ns per alloc+free (log)")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in [
        ("steady (16 live)", steady),
        ("burst (512 then free all)", burst),
    ]
    .into_iter()
    .enumerate()
    {
        let color = COLORS[i];
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
