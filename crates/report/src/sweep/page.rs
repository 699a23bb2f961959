//! The sweep's HTML page: per group, the plot, the accuracy table, the ranking and the
//! attention table; self-contained like the run report's page (inline styles and SVG).

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::plot;
use super::summary::{mean_spread, ranking_line, GroupSummary};
use crate::error::ReportError;

pub fn page(title: &str, groups: &[GroupSummary], written: &str) -> Result<String, ReportError> {
    let plots = groups
        .iter()
        .map(|g| {
            if g.points.is_empty() {
                Ok(None)
            } else {
                plot::svg(g).map(Some)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sweep " (title) " · LGAF-Train" }
                style { (PreEscaped(crate::page::CSS)) }
            }
            body {
                header {
                    h1 { "Sweep " code { (title) } }
                    p.where {
                        "Accuracy in percent: mean ± spread (sample standard deviation) over \
                         seeds. Written " (written) " UTC."
                    }
                }
                main {
                    @for (g, svg) in groups.iter().zip(&plots) {
                        (group(g, svg.as_deref()))
                    }
                }
                footer { "LGAF-Train · lgaf sweep" }
            }
        }
    };
    Ok(markup.into_string())
}

fn group(g: &GroupSummary, svg: Option<&str>) -> Markup {
    html! {
        h2 { (g.name) }
        @if let Some(svg) = svg {
            figure { (PreEscaped(svg)) }
        }
        @if g.points.is_empty() {
            p.absent { "No finished runs yet." }
        } @else {
            table {
                tr {
                    th { "point" } th.num { "seeds" } th.num { "steps" } th.num { "train min" }
                    @for set in &g.sets { th.num { (set) } }
                }
                @for p in &g.points {
                    tr {
                        td { code { (p.point.label) } }
                        td.num { (p.seeds.len()) }
                        td.num { (p.steps) }
                        td.num { (format!("{:.1}", p.train_seconds / 60.0)) }
                        @for set in &g.sets {
                            td.num { (p.set(set).map_or("–".into(), |s| mean_spread(&s.accuracy))) }
                        }
                    }
                }
            }
            @if !g.pending.is_empty() {
                p.absent {
                    "Not run yet: "
                    (g.pending.iter().map(|p| p.label.as_str()).collect::<Vec<_>>().join(", "))
                }
            }
            h3 { "Ranking" }
            p.absent {
                "“>”: the gap is larger than both points' spread over seeds; “≈”: it is not."
            }
            ul {
                @for r in &g.rankings { li { b { (r.set) } ": " (ranking_line(r)) } }
            }
            (attention(g))
        }
    }
}

fn attention(g: &GroupSummary) -> Markup {
    let rows: Vec<(&str, &str, [f64; 5])> = g
        .points
        .iter()
        .flat_map(|p| {
            p.sets
                .iter()
                .filter_map(move |s| Some((p.point.label.as_str(), s.name.as_str(), s.attention?)))
        })
        .collect();
    html! {
        @if !rows.is_empty() {
            h3 { "LGF attention on held-out images" }
            table {
                tr {
                    th { "point" } th { "set" } th.num { "γ_local" } th.num { "γ_global" }
                    th.num { "‖local‖" } th.num { "‖global‖" } th.num { "r(γ_local, ‖global‖)" }
                }
                @for (label, set, [gl, gg, nl, ng, r]) in rows {
                    tr {
                        td { code { (label) } } td { (set) }
                        td.num { (format!("{gl:.4}")) } td.num { (format!("{gg:.4}")) }
                        td.num { (format!("{nl:.2}")) } td.num { (format!("{ng:.2}")) }
                        td.num { (format!("{r:+.3}")) }
                    }
                }
            }
        }
    }
}
