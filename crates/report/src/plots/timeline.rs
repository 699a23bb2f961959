//! The run's timeline: steps trained against wall time, over bands of its generations (or
//! processes), with workers registered and lost, ended generations, recoveries, checkpoints,
//! evaluations and the end of the run marked where they happened.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    legend, legend_box, legend_line, mesh, step_label, stretch, value_label, Drawn, Occupancy,
};
use crate::style::{self, faint};
use crate::summary::{range, thin, Summary};
use lgaf_store::history::{Event, Time};

/// The time unit of the x axis: seconds for short runs, minutes, or hours.
fn unit(s: &Summary) -> (f64, &'static str) {
    let minutes = s.minutes(s.end);
    if minutes < 2.0 {
        (1.0 / 60.0, "s")
    } else if minutes < 180.0 {
        (1.0, "min")
    } else {
        (60.0, "h")
    }
}

pub(super) fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, s: &Summary) -> Drawn<DB> {
    let (per, unit_name) = unit(s);
    let t = |time: Time| s.minutes(time) / per;
    let h = s.history;
    let progress = thin(h.steps.iter().map(|r| (t(r.time), r.step as f64)));
    let event_steps = h.events.iter().filter_map(|e| match &e.event {
        Event::CheckpointCommitted(c) => Some(c.step as f64),
        Event::Evaluation(e) => Some(e.step as f64),
        Event::RunFinished(f) => Some(f.step as f64),
        Event::GenerationFormed(g) => Some(g.resume_step as f64),
        _ => None,
    });
    let y = range(progress.iter().map(|p| p.1).chain(event_steps), true);
    // Room above the last step for the bands' labels and the fault marks.
    let y = (y.0, y.1 + (y.1 - y.0) * 0.12);
    let x = range([0.0, t(s.end)], true);
    let (checkpoints, evaluations) = (at_step(s, "checkpoint_committed"), at_step(s, "evaluation"));
    let mut occupied = Occupancy::default();
    for points in [&progress, &checkpoints, &evaluations] {
        occupied.add(points, x, y);
    }
    let (legend_at, room) = occupied.placement();
    let y = stretch(y, room);
    let mut chart = ChartBuilder::on(area)
        .caption("Timeline", style::title())
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    mesh!(chart)
        .x_desc(format!("time since start ({unit_name})"))
        .y_desc("step")
        .x_label_formatter(&value_label(x))
        .y_label_formatter(&step_label)
        .draw()?;

    let spans = s.spans();
    let shades = [faint(style::BLUE, 0.07), faint(style::GREY, 0.12)];
    for (i, span) in spans.iter().enumerate() {
        let (from, to) = (t(span.from), t(span.to));
        chart.draw_series(std::iter::once(Rectangle::new(
            [(from, y.0), (to, y.1)],
            shades[i % 2].filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            span.label.clone(),
            (from, y.1),
            style::note().pos(Pos::new(HPos::Left, VPos::Top)),
        )))?;
    }
    if !spans.is_empty() {
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
            .label(if s.events("generation_formed").next().is_some() {
                "generation"
            } else {
                "process"
            })
            .legend(legend_box(faint(style::BLUE, 0.15)));
    }

    let recoveries: Vec<(f64, f64)> = s
        .events("recovery")
        .filter_map(|e| match e {
            Event::Recovery(r) => Some((t(r.time) - r.seconds / 60.0 / per, t(r.time))),
            _ => None,
        })
        .collect();
    if !recoveries.is_empty() {
        chart
            .draw_series(recoveries.iter().map(|&(from, to)| {
                Rectangle::new(
                    [(from, y.0), (to, y.1)],
                    faint(style::RECOVERY, 0.35).filled(),
                )
            }))?
            .label("recovery (failure to next generation)")
            .legend(legend_box(faint(style::RECOVERY, 0.35)));
    }

    let ended: Vec<f64> = s.events("generation_ended").map(|e| t(e.time())).collect();
    if !ended.is_empty() {
        for &at in &ended {
            chart.draw_series(DashedLineSeries::new(
                [(at, y.0), (at, y.1)],
                5,
                4,
                style::LOST.stroke_width(1),
            ))?;
        }
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
            .label("generation ended")
            .legend(legend_line(style::LOST, 1));
    }

    if !progress.is_empty() {
        chart
            .draw_series(LineSeries::new(progress, style::INK.stroke_width(2)))?
            .label("steps trained")
            .legend(legend_line(style::INK, 2));
    }

    let top = y.1 - (y.1 - y.0) * 0.07;
    let lost: Vec<(f64, String)> = s
        .events("worker_lost")
        .filter_map(|e| match e {
            Event::WorkerLost(w) => Some((t(w.time), w.worker_id.clone())),
            _ => None,
        })
        .collect();
    if !lost.is_empty() {
        chart
            .draw_series(lost.iter().map(|(at, worker)| {
                EmptyElement::at((*at, top))
                    + Cross::new((0, 0), 6, style::LOST.stroke_width(3))
                    + Text::new(
                        worker.clone(),
                        (10, 0),
                        style::note()
                            .color(&style::LOST)
                            .pos(Pos::new(HPos::Left, VPos::Center)),
                    )
            }))?
            .label("worker lost")
            .legend(|(x, y)| Cross::new((x + 10, y), 5, style::LOST.stroke_width(3)));
    }

    let registered: Vec<f64> = s.events("worker_registered").map(|e| t(e.time())).collect();
    if !registered.is_empty() {
        let bottom = y.0 + (y.1 - y.0) * 0.03;
        chart
            .draw_series(
                registered
                    .iter()
                    .map(|&at| TriangleMarker::new((at, bottom), 6, style::REGISTERED.filled())),
            )?
            .label("worker registered")
            .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, style::REGISTERED.filled()));
    }

    if !checkpoints.is_empty() {
        chart
            .draw_series(
                checkpoints
                    .iter()
                    .map(|&p| Circle::new(p, 5, style::CHECKPOINT.filled())),
            )?
            .label("checkpoint committed")
            .legend(|(x, y)| Circle::new((x + 10, y), 5, style::CHECKPOINT.filled()));
    }
    if !evaluations.is_empty() {
        chart
            .draw_series(
                evaluations
                    .iter()
                    .map(|&p| TriangleMarker::new(p, 7, style::EVALUATION.filled())),
            )?
            .label("evaluation")
            .legend(|(x, y)| TriangleMarker::new((x + 10, y), 7, style::EVALUATION.filled()));
    }
    for (at, step) in at_step(s, "run_finished") {
        chart.draw_series(std::iter::once(
            EmptyElement::at((at, step))
                + Rectangle::new([(-6, -6), (6, 6)], style::INK.filled())
                + Text::new(
                    "finished",
                    (0, -10),
                    style::note().pos(Pos::new(HPos::Center, VPos::Bottom)),
                ),
        ))?;
    }
    legend!(chart, legend_at)
}

/// The events of `kind` that happened at a step, as (time in the axis unit, step).
fn at_step(s: &Summary, kind: &'static str) -> Vec<(f64, f64)> {
    let per = unit(s).0;
    let t = |time: Time| s.minutes(time) / per;
    s.events(kind)
        .filter_map(|e| match e {
            Event::CheckpointCommitted(c) => Some((t(c.time), c.step as f64)),
            Event::Evaluation(v) => Some((t(v.time), v.step as f64)),
            Event::RunFinished(f) => Some((t(f.time), f.step as f64)),
            _ => None,
        })
        .collect()
}
