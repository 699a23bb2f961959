//! The plots of the evaluation records: accuracy per set against the step, and the LGF
//! attention weights per nuisance factor at the last evaluation that measured them.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{legend, legend_box, mesh, step_label, stretch, value_label, Drawn, Occupancy};
use crate::style::{self, faint};
use crate::summary::{range, Summary};
use lgaf_store::history::EvalSet;

/// One set's accuracy against the step: points (step, accuracy %, std %).
struct Series {
    name: String,
    points: Vec<(f64, f64, f64)>,
}

/// The sets for which `wanted` holds, in order of first appearance, each with its points.
fn series_of(s: &Summary, wanted: impl Fn(&EvalSet) -> bool) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for evaluation in s.evaluations() {
        for set in evaluation.sets.iter().filter(|set| wanted(set)) {
            let point = (
                evaluation.step as f64,
                set.accuracy * 100.0,
                set.std * 100.0,
            );
            if !point.1.is_finite() {
                continue;
            }
            match series.iter_mut().find(|s| s.name == set.name) {
                Some(found) => found.points.push(point),
                None => series.push(Series {
                    name: set.name.clone(),
                    points: vec![point],
                }),
            }
        }
    }
    series
}

/// Verification accuracy (%) of each set against the step, with ±std whiskers. The sets of
/// one nuisance factor are left to the per-factor plot, unless they are all there is.
pub(super) fn accuracy<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    s: &Summary,
) -> Drawn<DB> {
    let mut series = series_of(s, |set| set.factor.is_none());
    if series.is_empty() {
        series = series_of(s, |_| true);
    }
    let all = series.iter().flat_map(|s| s.points.iter());
    let (x_lo, x_hi) = range(all.clone().map(|p| p.0), true);
    let y = range(all.flat_map(|p| [p.1 - p.2, (p.1 + p.2).min(100.0)]), false);
    let y = (y.0.max(0.0), y.1.min(100.5));
    let mut occupied = Occupancy::default();
    for Series { points, .. } in &series {
        let line: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.1)).collect();
        occupied.add(&line, (x_lo, x_hi), y);
    }
    let (legend_at, room) = occupied.placement();
    let y = stretch(y, room);
    let mut chart = ChartBuilder::on(area)
        .caption("Evaluation accuracy", style::title())
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(62)
        .build_cartesian_2d(x_lo..x_hi, y.0..y.1)?;
    let digits = value_label(y);
    mesh!(chart)
        .x_desc("step")
        .y_desc("accuracy (%)")
        .x_label_formatter(&step_label)
        // Headroom for the legend may reach past 100%, which no accuracy does.
        .y_label_formatter(&|v: &f64| {
            if *v > 100.0 + 1e-9 {
                String::new()
            } else {
                format!("{}%", digits(v))
            }
        })
        .draw()?;
    for (i, Series { name, points }) in series.iter().enumerate() {
        let color = style::SERIES[i % style::SERIES.len()];
        chart.draw_series(points.iter().map(|&(x, acc, std)| {
            PathElement::new(
                vec![(x, (acc - std).max(y.0)), (x, (acc + std).min(y.1))],
                faint(color, 0.6).stroke_width(2),
            )
        }))?;
        chart.draw_series(LineSeries::new(
            points.iter().map(|&(x, acc, _)| (x, acc)),
            color.stroke_width(2),
        ))?;
        let last = points.last().map_or(0.0, |p| p.1);
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, acc, _)| Circle::new((x, acc), 4, color.filled())),
            )?
            .label(format!("{name} (last {last:.2}%)"))
            .legend(move |(x, y)| {
                EmptyElement::at((x + 10, y))
                    + PathElement::new(vec![(-10, 0), (10, 0)], color.stroke_width(2))
                    + Circle::new((0, 0), 4, color.filled())
            });
    }
    legend!(chart, legend_at)
}

/// The attention weights on one nuisance factor's held-out pairs.
pub(crate) struct FactorGamma {
    pub factor: String,
    pub local: f64,
    pub global: f64,
}

/// The newest evaluation whose per-factor sets carry gammas: its step and those gammas.
pub(crate) fn factor_gammas(s: &Summary) -> Option<(u64, Vec<FactorGamma>)> {
    s.evaluations()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find_map(|e| {
            let bars: Vec<FactorGamma> = e
                .sets
                .iter()
                .filter_map(|set| {
                    Some(FactorGamma {
                        factor: set.factor.clone()?,
                        local: set.gamma_local.filter(|g| g.is_finite())?,
                        global: set.gamma_global.filter(|g| g.is_finite())?,
                    })
                })
                .collect();
            (!bars.is_empty()).then_some((e.step, bars))
        })
}

/// gamma_local and gamma_global per nuisance factor, side by side, each bar labelled.
pub(super) fn gamma_by_factor<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    s: &Summary,
) -> Drawn<DB> {
    let Some((step, bars)) = factor_gammas(s) else {
        return Ok(());
    };
    let n = bars.len();
    let top = bars
        .iter()
        .map(|b| b.local.max(b.global))
        .fold(0.0f64, f64::max)
        .max(1e-6)
        * 1.3;
    let x = (-0.5, n as f64 - 0.5);
    let names: Vec<String> = bars.iter().map(|b| b.factor.clone()).collect();
    // Factor i is centred on x = i; its bars stand left and right of the centre.
    let (width, gap) = (0.36, 0.02);
    let rects: Vec<(f64, f64, f64, RGBColor)> = bars
        .iter()
        .enumerate()
        .flat_map(|(i, b)| {
            let c = i as f64;
            [
                (c - gap - width, c - gap, b.local, style::GAMMA_LOCAL),
                (c + gap, c + gap + width, b.global, style::GAMMA_GLOBAL),
            ]
        })
        .collect();
    let mut occupied = Occupancy::default();
    let tops: Vec<(f64, f64)> = rects
        .iter()
        .flat_map(|&(x0, x1, v, _)| [(x0, v), ((x0 + x1) / 2.0, v), (x1, v)])
        .collect();
    occupied.add_filled(&tops, 0.0, x, (0.0, top));
    let (legend_at, room) = occupied.placement();
    let top = stretch((0.0, top), room).1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("LGF attention per nuisance factor (step {step})"),
            style::title(),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(62)
        .build_cartesian_2d(x.0..x.1, 0.0..top)?;
    mesh!(chart)
        .disable_x_mesh()
        .x_labels(n + 1)
        .x_desc("nuisance factor")
        .y_desc("γ (mean over the set)")
        .x_label_formatter(&|v: &f64| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&value_label((0.0, top)))
        .draw()?;
    chart.draw_series(
        rects.iter().map(|&(x0, x1, value, color)| {
            Rectangle::new([(x0, 0.0), (x1, value)], color.filled())
        }),
    )?;
    chart.draw_series(rects.iter().map(|&(x0, x1, value, _)| {
        Text::new(
            format!("{value:.2}"),
            ((x0 + x1) / 2.0, value),
            style::note().pos(Pos::new(HPos::Center, VPos::Bottom)),
        )
    }))?;
    // Legend entries for the two colours, through empty series.
    for (name, color) in [
        ("γ local", style::GAMMA_LOCAL),
        ("γ global", style::GAMMA_GLOBAL),
    ] {
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
            .label(name)
            .legend(legend_box(faint(color, 1.0)));
    }
    legend!(chart, legend_at)
}
