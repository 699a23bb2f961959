//! The HTML page: a header with the run's numbers, the plots inlined as SVG, the last
//! evaluation, the events, and what the reader skipped. One self-contained file: the styles
//! are inline and nothing is fetched when it is viewed (no scripts, fonts or images from
//! elsewhere). Built with maud, which escapes every value it is given.

use lgaf_store::history::{Event, Outcome, Time};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use plotters::style::RGBColor;

use crate::plots::Plot;
use crate::style;
use crate::summary::{bytes, duration, quantile, Summary};

pub(crate) const CSS: &str = r#"
:root { --ink: #222; --muted: #666; --line: #e4e4e4; --card: #fff; --bg: #f5f6f8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; }
header, main, footer { max-width: 1400px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 22px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h1 code { font-size: 24px; background: #e9edf3; padding: 1px 8px; border-radius: 6px; }
h2 { font-size: 18px; margin: 26px 0 10px; }
.where { color: var(--muted); margin: 0 0 16px; }
.stats { display: grid; grid-template-columns: repeat(auto-fill, minmax(138px, 1fr)); gap: 10px; }
.stat { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.stat .name { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.stat .value { font-size: 19px; font-weight: bold; margin-top: 2px; white-space: nowrap; }
.stat .sub { color: var(--muted); font-size: 12px; }
.plots { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; margin-top: 18px; }
figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 8px; }
figure.wide { grid-column: 1 / -1; }
figure svg { display: block; width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 12.5px; padding: 6px 8px 2px; }
.absent { color: var(--muted); }
table { border-collapse: collapse; width: 100%; background: var(--card);
  border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #fafbfc; font-size: 12.5px; color: var(--muted); white-space: nowrap; }
th.num { text-align: right; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.time { white-space: nowrap; font-variant-numeric: tabular-nums; color: var(--muted); }
.badge { display: inline-block; color: #fff; border-radius: 10px; padding: 0 8px; font-size: 12px; white-space: nowrap; }
.problems li { margin: 4px 0; }
details summary { cursor: pointer; color: var(--muted); margin: 8px 0; }
footer { color: var(--muted); font-size: 12px; padding: 24px 20px 30px; }
"#;

/// Events listed at most; the rest are counted.
const MAX_EVENT_ROWS: usize = 2000;

/// The whole page.
pub(crate) fn page(
    s: &Summary,
    plots: &[(Plot, String)],
    absent: &[Plot],
    written: Time,
) -> String {
    let h = s.history;
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Run " (h.run_id) " · LGAF-Train report" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    h1 { "Run " code { (h.run_id) } }
                    p.where {
                        (h.url) " · " (when(s.origin)) " to " (when(s.end)) " UTC · "
                        (h.segments.len()) " history segments · report written " (when(written)) " UTC"
                    }
                    (stats(s))
                }
                main {
                    section.plots {
                        @for (plot, svg) in plots {
                            figure.wide[*plot == Plot::Timeline] id=(format!("plot-{}", plot.id())) {
                                (PreEscaped(svg))
                                figcaption { (plot.caption()) }
                            }
                        }
                    }
                    @if !absent.is_empty() {
                        p.absent {
                            "Not in this history, so not plotted: "
                            (absent.iter().map(|p| p.id()).collect::<Vec<_>>().join(", ")) "."
                        }
                    }
                    (last_evaluation(s))
                    (events(s))
                    (problems(s))
                    (segments(s))
                }
                footer { "LGAF-Train · lgaf report · read from " (h.url) }
            }
        }
    };
    markup.into_string()
}

fn when(t: Time) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `1 worker lost`, `3 workers lost`.
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn stat(name: &str, value: String, sub: String) -> Markup {
    html! {
        div.stat {
            div.name { (name) }
            div.value { (value) }
            div.sub { (sub) }
        }
    }
}

fn stats(s: &Summary) -> Markup {
    let h = s.history;
    let last = h.steps.last();
    let count = |kind| s.events(kind).count();
    let finite_losses: Vec<f64> = h
        .steps
        .iter()
        .rev()
        .map(|r| r.loss)
        .filter(|l| l.is_finite())
        .take(50)
        .collect();
    let recent_loss = finite_losses.iter().sum::<f64>() / finite_losses.len().max(1) as f64;
    let mut speeds: Vec<f64> = h
        .steps
        .iter()
        .map(|r| r.samples_per_sec)
        .filter(|v| v.is_finite())
        .collect();
    speeds.sort_by(f64::total_cmp);
    let mut waits: Vec<f64> = h
        .steps
        .iter()
        .filter(|r| r.step_seconds > 0.0)
        .map(|r| r.data_wait_seconds / r.step_seconds)
        .filter(|v| v.is_finite())
        .collect();
    waits.sort_by(f64::total_cmp);
    let generations = count("generation_formed");
    let (gen_name, gen_value) = if generations > 0 {
        ("Generations", generations)
    } else {
        ("Processes", s.spans().len())
    };
    let checkpoints: Vec<u64> = s
        .events("checkpoint_committed")
        .filter_map(|e| match e {
            Event::CheckpointCommitted(c) => Some(c.step),
            _ => None,
        })
        .collect();
    let latest_eval = s.evaluations().last().and_then(|e| {
        e.sets
            .iter()
            .find(|set| set.factor.is_none())
            .or(e.sets.first())
            .map(|set| (set.name.clone(), set.accuracy, e.step))
    });
    let finished = s.events("run_finished").last().and_then(|e| match e {
        Event::RunFinished(f) => Some(f),
        _ => None,
    });
    html! {
        div.stats {
            (stat(
                "Steps",
                last.map_or("0".into(), |r| r.step.to_string()),
                last.map_or("none recorded yet".into(), |r| {
                    format!("of {} · {} records", r.total_steps, h.steps.len())
                }),
            ))
            (stat(
                "Epoch",
                last.map_or("–".into(), |r| (r.epoch + 1).to_string()),
                "at the last step, counting from 1".into(),
            ))
            (stat("Wall time", duration(s.wall()), format!("from {}", when(s.origin))))
            (stat(
                "Final loss",
                last.map_or("–".into(), |r| format!("{:.4}", r.loss)),
                if finite_losses.is_empty() { "no finite loss".into() } else {
                    format!("mean of the last {}: {recent_loss:.4}", finite_losses.len())
                },
            ))
            (stat(
                "Throughput",
                if speeds.is_empty() { "–".into() } else { format!("{:.0} img/s", quantile(&speeds, 0.5)) },
                if waits.is_empty() { "median over steps".into() } else {
                    format!("median · data wait {:.0}% of a step", 100.0 * quantile(&waits, 0.5))
                },
            ))
            (stat(
                gen_name,
                gen_value.to_string(),
                format!(
                    "{} · {}",
                    plural(count("worker_lost"), "worker lost", "workers lost"),
                    plural(count("recovery"), "recovery", "recoveries")
                ),
            ))
            (stat(
                "Checkpoints",
                checkpoints.len().to_string(),
                checkpoints.last().map_or("none committed".into(), |s| format!("last at step {s}")),
            ))
            (stat(
                "Evaluation",
                latest_eval.as_ref().map_or("–".into(), |(_, acc, _)| {
                    format!("{:.2}%", acc * 100.0)
                }),
                latest_eval.as_ref().map_or("none recorded".into(), |(name, _, step)| {
                    format!("{name} at step {step}")
                }),
            ))
            (stat(
                "Outcome",
                finished.map_or("running".into(), |f| f.outcome.as_str().to_string()),
                finished.map_or("no end recorded (yet)".into(), |f| {
                    f.detail.clone().unwrap_or_else(|| format!("at step {}", f.step))
                }),
            ))
        }
    }
}

/// The colour of an event's badge: the colour its mark has on the timeline.
fn event_colour(event: &Event) -> RGBColor {
    match event {
        Event::GenerationFormed(_) => style::GREY,
        Event::GenerationEnded(_) | Event::WorkerLost(_) => style::LOST,
        Event::WorkerRegistered(_) => style::REGISTERED,
        Event::CheckpointCommitted(_) => style::CHECKPOINT,
        Event::Evaluation(_) => style::EVALUATION,
        Event::Recovery(_) => style::RECOVERY,
        Event::RunFinished(f) if f.outcome == Outcome::Failed => style::LOST,
        Event::RunFinished(_) => style::INK,
    }
}

fn badge_style(event: &Event) -> String {
    format!("background:{}", style::css(event_colour(event)))
}

/// An event in a sentence.
fn describe(event: &Event) -> String {
    match event {
        Event::GenerationFormed(g) => format!(
            "generation {} formed with {} worker{}, from step {}{}",
            g.generation,
            g.world_size,
            if g.world_size == 1 { "" } else { "s" },
            g.resume_step,
            if g.live {
                " (the survivors' state)"
            } else {
                ""
            }
        ),
        Event::GenerationEnded(g) => format!("generation {} ended: {}", g.generation, g.reason),
        Event::WorkerRegistered(w) => format!("worker {} registered from {}", w.worker_id, w.host),
        Event::WorkerLost(w) => {
            let rank = w.rank.map_or(String::new(), |r| format!(" (rank {r})"));
            format!(
                "worker {}{rank} on {} lost: {}",
                w.worker_id, w.host, w.reason
            )
        }
        Event::CheckpointCommitted(c) => format!(
            "checkpoint of step {} committed: {} in {:.1} s",
            c.step,
            bytes(c.bytes),
            c.seconds
        ),
        Event::Evaluation(e) => {
            let sets: Vec<String> = e
                .sets
                .iter()
                .map(|set| format!("{} {:.2}%", set.name, set.accuracy * 100.0))
                .collect();
            format!("evaluation at step {}: {}", e.step, sets.join(", "))
        }
        Event::Recovery(r) => format!(
            "generation {} formed {:.1} s after the failure",
            r.generation, r.seconds
        ),
        Event::RunFinished(f) => {
            let detail = f
                .detail
                .as_ref()
                .map_or(String::new(), |d| format!(": {d}"));
            format!("run {} at step {}{detail}", f.outcome.as_str(), f.step)
        }
    }
}

fn events(s: &Summary) -> Markup {
    let h = s.history;
    let shown = h.events.len().min(MAX_EVENT_ROWS);
    html! {
        h2 { "Events (" (h.events.len()) ")" }
        @if h.events.is_empty() {
            p.absent { "No events recorded." }
        } @else {
            table {
                thead { tr {
                    th { "time (UTC)" } th { "since start" } th { "source" } th { "event" }
                    th { "details" }
                } }
                tbody {
                    @for e in &h.events[..shown] {
                        tr {
                            td.time title=(e.event.time().to_rfc3339()) {
                                (e.event.time().format("%H:%M:%S%.3f"))
                            }
                            td.time { (duration(e.event.time() - s.origin)) }
                            td { (e.source.as_str()) }
                            td {
                                span.badge style=(badge_style(&e.event)) {
                                    (e.event.kind().replace('_', " "))
                                }
                            }
                            td { (describe(&e.event)) }
                        }
                    }
                }
            }
            @if shown < h.events.len() {
                p.absent { (h.events.len() - shown) " later events not listed." }
            }
        }
    }
}

fn last_evaluation(s: &Summary) -> Markup {
    let Some(e) = s.evaluations().last() else {
        return html! {};
    };
    let gamma = |g: Option<f64>| g.map_or("–".to_string(), |g| format!("{g:.3}"));
    html! {
        h2 { "Last evaluation (step " (e.step) ")" }
        table {
            thead { tr {
                th { "set" } th { "factor" } th.num { "pairs" } th.num { "accuracy" } th.num { "± std" }
                th.num { "threshold" } th.num { "TAR @ FAR" } th.num { "γ local" } th.num { "γ global" }
            } }
            tbody {
                @for set in &e.sets {
                    tr {
                        td { (set.name) }
                        td { (set.factor.clone().unwrap_or_else(|| "–".into())) }
                        td.num { (set.pairs.map_or("–".into(), |p| p.to_string())) }
                        td.num { (format!("{:.2}%", set.accuracy * 100.0)) }
                        td.num { (format!("{:.2}", set.std * 100.0)) }
                        td.num { (format!("{:.3}", set.threshold)) }
                        td.num {
                            (set.tar_at_far.as_ref().map_or("–".into(), |t| {
                                format!("{:.2}% @ {:.0e}", t.tar * 100.0, t.far_target)
                            }))
                        }
                        td.num { (gamma(set.gamma_local)) }
                        td.num { (gamma(set.gamma_global)) }
                    }
                }
            }
        }
    }
}

fn problems(s: &Summary) -> Markup {
    let problems = &s.history.problems;
    html! {
        @if !problems.is_empty() {
            h2 { "Skipped while reading (" (problems.len()) ")" }
            p.absent { "These lines or objects did not parse and are left out of everything above." }
            ul.problems {
                @for p in problems {
                    li {
                        code { (p.key) }
                        @if let Some(line) = p.line { " line " (line) }
                        ": " (p.reason)
                    }
                }
            }
        }
    }
}

fn segments(s: &Summary) -> Markup {
    html! {
        details {
            summary { "History segments (" (s.history.segments.len()) ")" }
            table {
                thead { tr {
                    th { "key" } th { "source" } th.num { "generation" } th.num { "part" }
                    th.num { "resumed from" } th.num { "lines" } th.num { "size" }
                } }
                tbody {
                    @for seg in &s.history.segments {
                        tr {
                            td { code { (seg.key) } }
                            td { (seg.source.as_str()) }
                            td.num { (seg.generation) }
                            td.num { (seg.part) }
                            td.num {
                                (seg.header.as_ref().map_or("–".into(), |h| {
                                    h.resumed_from_step.to_string()
                                }))
                            }
                            td.num { (seg.lines) }
                            td.num { (bytes(seg.bytes)) }
                        }
                    }
                }
            }
        }
    }
}
