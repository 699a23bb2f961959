//! A group's accuracy as grouped bars: one cluster per evaluation set, one bar per point at
//! its mean over seeds, with a whisker from the lowest to the highest seed.

use plotters::prelude::*;

use super::summary::GroupSummary;
use crate::error::ReportError;
use crate::style;

/// Pixels of the SVG's view box.
pub const SIZE: (u32, u32) = (1100, 470);
/// The legend's strip under the chart: two rows of labels.
const LEGEND_HEIGHT: u32 = 50;

/// The group's plot as an SVG document.
pub fn svg(g: &GroupSummary) -> Result<String, ReportError> {
    let mut out = String::new();
    {
        let area = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(&area, g).map_err(|e| ReportError::Plot {
            plot: "sweep",
            reason: e.to_string(),
        })?;
    }
    Ok(out)
}

fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    g: &GroupSummary,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    area.fill(&WHITE)?;
    // The legend gets a strip of its own under the chart: the bars fill the plot.
    let (chart_area, legend_area) = area.split_vertically(SIZE.1 - LEGEND_HEIGHT);
    legend_row(&legend_area, g)?;
    let area = &chart_area;
    let sets = &g.sets;
    let bars: Vec<(usize, usize, f64, f64, f64)> = g
        .points
        .iter()
        .enumerate()
        .flat_map(|(p, point)| {
            sets.iter().enumerate().filter_map(move |(s, name)| {
                let a = point.set(name)?.accuracy;
                Some((s, p, a.mean, a.min, a.max))
            })
        })
        .collect();
    let lowest = bars.iter().map(|b| b.3).fold(f64::INFINITY, f64::min);
    let highest = bars.iter().map(|b| b.4).fold(f64::NEG_INFINITY, f64::max);
    // The bars start below the lowest seed, so differences of a point or two show.
    let span = (highest - lowest).max(1.0);
    let y = (
        (lowest - span * 0.6).max(0.0),
        (highest + span * 0.15).min(100.5),
    );
    let x = (-0.5, sets.len() as f64 - 0.5);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{}: accuracy per evaluation set", g.name),
            style::title(),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(62)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    chart
        .configure_mesh()
        .bold_line_style(style::GRID)
        .light_line_style(TRANSPARENT)
        .axis_style(style::AXIS)
        .label_style(style::label())
        .axis_desc_style(style::axis_title())
        .disable_x_mesh()
        .x_labels(sets.len() + 1)
        .x_label_formatter(&|v: &f64| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                sets.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("accuracy (%), mean over seeds; whiskers: lowest to highest seed")
        .draw()?;
    // A cluster spans 0.8 of its slot, shared by the points.
    let width = 0.8 / g.points.len().max(1) as f64;
    for p in 0..g.points.len() {
        let color = style::SERIES[p % style::SERIES.len()];
        let left = |s: usize| s as f64 - 0.4 + p as f64 * width;
        chart.draw_series(bars.iter().filter(|b| b.1 == p).map(|&(s, _, mean, _, _)| {
            Rectangle::new(
                [
                    (left(s) + width * 0.08, y.0),
                    (left(s) + width * 0.92, mean),
                ],
                color.filled(),
            )
        }))?;
        chart.draw_series(bars.iter().filter(|b| b.1 == p).map(|&(s, _, _, lo, hi)| {
            let centre = left(s) + width / 2.0;
            PathElement::new(vec![(centre, lo), (centre, hi)], style::INK.stroke_width(2))
        }))?;
    }
    area.present()
}

/// Each point's colour and label, in a row (wrapping) under the chart.
fn legend_row<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    g: &GroupSummary,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (mut x, mut y) = (80i32, 8i32);
    for (p, point) in g.points.iter().enumerate() {
        let color = style::SERIES[p % style::SERIES.len()];
        let label = &point.point.label;
        let (text_width, _) = area.estimate_text_size(label, &style::legend())?;
        if x + 24 + text_width as i32 > SIZE.0 as i32 - 20 {
            (x, y) = (80, y + 22);
        }
        area.draw(&Rectangle::new(
            [(x, y + 2), (x + 16, y + 14)],
            color.filled(),
        ))?;
        area.draw(&Text::new(label.clone(), (x + 22, y), style::legend()))?;
        x += 22 + text_width as i32 + 28;
    }
    Ok(())
}
