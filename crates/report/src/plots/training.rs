//! The plots of the step records: loss and learning rate, throughput and data wait, the
//! distribution of step times, and the LGF attention weights.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    legend, legend_box, legend_line, mesh, step_label, stretch, value_label, Drawn, Occupancy,
};
use crate::style::{self, faint};
use crate::summary::{quantile, range, smooth, thin, Summary};

/// The x range of a step axis over the recorded steps.
fn step_range(s: &Summary) -> (f64, f64) {
    let first = s
        .history
        .steps
        .first()
        .map_or(0, |r| r.step.saturating_sub(1));
    let last = s.history.steps.last().map_or(1, |r| r.step).max(first + 1);
    (first as f64, last as f64)
}

/// Loss (left axis, faint raw and bold smoothed) and learning rate (right axis), with the
/// steps resumed from and the skipped steps marked.
pub(super) fn loss<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, s: &Summary) -> Drawn<DB> {
    let steps = &s.history.steps;
    let raw = thin(steps.iter().map(|r| (r.step as f64, r.loss)));
    let trend = smooth(&raw);
    let lr = thin(steps.iter().map(|r| (r.step as f64, r.lr)));
    let x = step_range(s);
    let y = range(raw.iter().map(|p| p.1), false);
    let y_lr = range(lr.iter().map(|p| p.1), true);
    let mut occupied = Occupancy::default();
    occupied.add(&raw, x, y);
    occupied.add(&lr, x, y_lr);
    let (legend_at, room) = occupied.placement();
    let (y, y_lr) = (stretch(y, room), stretch(y_lr, room));
    let mut chart = ChartBuilder::on(area)
        .caption("Loss and learning rate", style::title())
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(62)
        .right_y_label_area_size(70)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?
        .set_secondary_coord(x.0..x.1, y_lr.0..y_lr.1);
    mesh!(chart)
        .x_desc("step")
        .y_desc("loss")
        .x_label_formatter(&step_label)
        .y_label_formatter(&value_label(y))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("learning rate")
        .axis_style(style::AXIS)
        .label_style(style::label())
        .axis_desc_style(style::axis_title())
        .y_label_formatter(&value_label(y_lr))
        .draw()?;
    for (step, _) in s.resumes() {
        let at = step as f64;
        chart.draw_series(DashedLineSeries::new(
            [(at, y.0), (at, y.1)],
            6,
            4,
            style::GREY.stroke_width(1),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("resumed from {step}"),
            (at, y.1),
            style::note().pos(Pos::new(HPos::Left, VPos::Top)),
        )))?;
    }
    chart
        .draw_series(LineSeries::new(
            raw,
            faint(style::LOSS, 0.3).stroke_width(1),
        ))?
        .label("loss, every step")
        .legend(legend_box(faint(style::LOSS, 0.3)));
    chart
        .draw_series(LineSeries::new(trend, style::LOSS.stroke_width(3)))?
        .label("loss, moving average")
        .legend(legend_line(style::LOSS, 3));
    let skipped: Vec<f64> = steps
        .iter()
        .filter(|r| r.skipped)
        .map(|r| r.step as f64)
        .collect();
    if !skipped.is_empty() {
        let mark = y.0 + (y.1 - y.0) * 0.02;
        chart
            .draw_series(
                skipped
                    .iter()
                    .map(|&at| Cross::new((at, mark), 4, style::SKIPPED.stroke_width(2))),
            )?
            .label(format!("skipped update ({})", skipped.len()))
            .legend(|(x, y)| Cross::new((x + 10, y), 4, style::SKIPPED.stroke_width(2)));
    }
    chart
        .draw_secondary_series(LineSeries::new(lr, style::LR.stroke_width(2)))?
        .label("learning rate")
        .legend(legend_line(style::LR, 2));
    legend!(chart, legend_at)
}

/// Images per second (left axis) and the share of the step spent waiting for data (right
/// axis, 0 to 100%).
pub(super) fn throughput<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    s: &Summary,
) -> Drawn<DB> {
    let steps = &s.history.steps;
    let raw = thin(steps.iter().map(|r| (r.step as f64, r.samples_per_sec)));
    let trend = smooth(&raw);
    let wait = thin(steps.iter().filter(|r| r.step_seconds > 0.0).map(|r| {
        (
            r.step as f64,
            100.0 * (r.data_wait_seconds / r.step_seconds).clamp(0.0, 1.0),
        )
    }));
    let wait = smooth(&wait);
    let x = step_range(s);
    let y = range(raw.iter().map(|p| p.1), true);
    let mut occupied = Occupancy::default();
    occupied.add(&raw, x, y);
    occupied.add_filled(&wait, 0.0, x, (0.0, 100.0));
    // The data wait keeps its 0-100% axis: it lies low, under the legend's headroom.
    let (legend_at, room) = occupied.placement();
    let y = stretch(y, room);
    let mut chart = ChartBuilder::on(area)
        .caption("Throughput and data wait", style::title())
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .right_y_label_area_size(62)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?
        .set_secondary_coord(x.0..x.1, 0.0..100.0);
    mesh!(chart)
        .x_desc("step")
        .y_desc("images / s")
        .x_label_formatter(&step_label)
        .y_label_formatter(&|v: &f64| format!("{v:.0}"))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("data wait (% of step)")
        .axis_style(style::AXIS)
        .label_style(style::label())
        .axis_desc_style(style::axis_title())
        .y_label_formatter(&|v: &f64| format!("{v:.0}%"))
        .draw()?;
    chart
        .draw_secondary_series(AreaSeries::new(
            wait,
            0.0,
            faint(style::DATA_WAIT, 0.18).filled(),
        ))?
        .label("data wait share, moving average")
        .legend(legend_box(faint(style::DATA_WAIT, 0.35)));
    chart
        .draw_series(LineSeries::new(
            raw,
            faint(style::THROUGHPUT, 0.3).stroke_width(1),
        ))?
        .label("images / s, every step")
        .legend(legend_box(faint(style::THROUGHPUT, 0.3)));
    chart
        .draw_series(LineSeries::new(trend, style::THROUGHPUT.stroke_width(3)))?
        .label("images / s, moving average")
        .legend(legend_line(style::THROUGHPUT, 3));
    legend!(chart, legend_at)
}

/// A histogram of step times in milliseconds, up to a little past the 99th percentile (the
/// rest is counted in the last bar, labelled as such), with the median and 95th percentile.
pub(super) fn step_time<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    s: &Summary,
) -> Drawn<DB> {
    let mut ms: Vec<f64> = s
        .history
        .steps
        .iter()
        .map(|r| r.step_seconds * 1000.0)
        .filter(|v| v.is_finite() && *v >= 0.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    let (median, p95, p99) = (quantile(&ms, 0.5), quantile(&ms, 0.95), quantile(&ms, 0.99));
    let fastest = quantile(&ms, 0.0);
    let hi = (p99 + (p99 - fastest) * 0.05).max(fastest + 1e-3);
    let lo = (fastest - (hi - fastest) * 0.05).max(0.0);
    let bins = 40usize;
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u64; bins];
    let mut beyond = 0u64;
    for v in &ms {
        let bin = ((v - lo) / width).floor();
        if bin >= bins as f64 {
            beyond += 1;
            counts[bins - 1] += 1;
        } else {
            counts[bin.max(0.0) as usize] += 1;
        }
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.15;
    let mut occupied = Occupancy::default();
    let bars: Vec<(f64, f64)> = counts
        .iter()
        .enumerate()
        .map(|(i, &c)| (lo + (i as f64 + 0.5) * width, c as f64))
        .collect();
    occupied.add_filled(&bars, 0.0, (lo, hi), (0.0, top));
    let (legend_at, room) = occupied.placement();
    let top = stretch((0.0, top), room).1;
    let mut chart = ChartBuilder::on(area)
        .caption("Step time", style::title())
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(62)
        .build_cartesian_2d(lo..hi, 0.0..top)?;
    mesh!(chart)
        .x_desc("step time (ms)")
        .y_desc("steps")
        .x_label_formatter(&value_label((lo, hi)))
        .y_label_formatter(&|v: &f64| format!("{v:.0}"))
        .draw()?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &count)| {
            let x0 = lo + i as f64 * width;
            Rectangle::new(
                [(x0 + width * 0.06, 0.0), (x0 + width * 0.94, count as f64)],
                faint(style::STEP_TIME, 0.75).filled(),
            )
        }))?
        .label(format!("{} steps", ms.len()))
        .legend(legend_box(faint(style::STEP_TIME, 0.75)));
    if beyond > 0 {
        chart.draw_series(std::iter::once(Text::new(
            format!("{beyond} ≥ {hi:.0} ms"),
            (hi, counts[bins - 1] as f64),
            style::note().pos(Pos::new(HPos::Right, VPos::Bottom)),
        )))?;
    }
    for (value, name, color) in [
        (median, "median", style::INK),
        (p95, "95th percentile", style::RED),
    ] {
        chart
            .draw_series(DashedLineSeries::new(
                [(value, 0.0), (value, top)],
                6,
                4,
                color.stroke_width(2),
            ))?
            .label(format!("{name} {value:.1} ms"))
            .legend(legend_line(color, 2));
    }
    legend!(chart, legend_at)
}

/// gamma_local and gamma_global against the step (moving averages over faint raw lines).
pub(super) fn gamma<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, s: &Summary) -> Drawn<DB> {
    let steps = &s.history.steps;
    let local = thin(
        steps
            .iter()
            .filter_map(|r| r.gamma_local.map(|g| (r.step as f64, g))),
    );
    let global = thin(
        steps
            .iter()
            .filter_map(|r| r.gamma_global.map(|g| (r.step as f64, g))),
    );
    let x = step_range(s);
    let y = range(local.iter().chain(&global).map(|p| p.1), false);
    let mut occupied = Occupancy::default();
    occupied.add(&local, x, y);
    occupied.add(&global, x, y);
    let (legend_at, room) = occupied.placement();
    let y = stretch(y, room);
    let mut chart = ChartBuilder::on(area)
        .caption("LGF attention weights", style::title())
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(62)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    mesh!(chart)
        .x_desc("step")
        .y_desc("γ (batch mean)")
        .x_label_formatter(&step_label)
        .y_label_formatter(&value_label(y))
        .draw()?;
    for (points, name, color) in [
        (local, "γ local", style::GAMMA_LOCAL),
        (global, "γ global", style::GAMMA_GLOBAL),
    ] {
        if points.is_empty() {
            continue;
        }
        let trend = smooth(&points);
        chart.draw_series(LineSeries::new(points, faint(color, 0.3).stroke_width(1)))?;
        chart
            .draw_series(LineSeries::new(trend, color.stroke_width(3)))?
            .label(name)
            .legend(legend_line(color, 3));
    }
    legend!(chart, legend_at)
}
