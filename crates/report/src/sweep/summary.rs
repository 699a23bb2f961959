//! What a sweep's results say: per group, per point and per evaluation set, the accuracy's
//! mean and spread over seeds, the attention means, and the ranking of the points with
//! whether each step of it is larger than the seeds' spread. Rendered as Markdown tables
//! (the terminal, README-ready) here, and as the page in `page`.

use std::fmt::Write;

use super::results::{Group, Point, RunResult, SetKind, SweepResults};

/// Mean and spread of one quantity over a point's seeds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub mean: f64,
    /// Sample standard deviation over the seeds (0 with one seed).
    pub spread: f64,
    pub min: f64,
    pub max: f64,
    pub seeds: usize,
}

impl Stat {
    /// Of `values` (not empty).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let spread = if values.len() > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Stat {
            mean,
            spread,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            seeds: values.len(),
        }
    }
}

/// One evaluation set of one point, over its seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct SetSummary {
    pub name: String,
    pub kind: SetKind,
    /// Accuracy in percent.
    pub accuracy: Stat,
    /// Means over seeds of gamma_local, gamma_global, ||local||, ||global|| and the
    /// correlation of gamma_local with ||global|| (over the seeds that have one; NaN when
    /// none has), when the runs measured them.
    pub attention: Option<[f64; 5]>,
}

/// One point over its finished seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct PointSummary<'a> {
    pub point: &'a Point,
    pub seeds: Vec<u64>,
    pub steps: u64,
    pub train_seconds: f64,
    pub sets: Vec<SetSummary>,
}

impl PointSummary<'_> {
    pub fn set(&self, name: &str) -> Option<&SetSummary> {
        self.sets.iter().find(|s| s.name == name)
    }
}

/// The points of a group ordered by their mean accuracy on one set, best first.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranking {
    pub set: String,
    /// (point label, accuracy).
    pub order: Vec<(String, Stat)>,
    /// For each neighbouring pair of `order`: whether the gap between their means is larger
    /// than the larger of their spreads over seeds (with one seed per point, never).
    pub separated: Vec<bool>,
}

/// One table of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSummary<'a> {
    pub name: &'a str,
    /// Points with at least one finished seed, in the grid's order.
    pub points: Vec<PointSummary<'a>>,
    /// Points of the group with no finished run yet.
    pub pending: Vec<&'a Point>,
    /// Set names in column order: mixed, the factors, the .bin files.
    pub sets: Vec<String>,
    pub rankings: Vec<Ranking>,
}

pub fn summarize(results: &SweepResults) -> Vec<GroupSummary<'_>> {
    results
        .groups
        .iter()
        .map(|g| group(g, &results.runs, &results.seeds))
        .collect()
}

/// `seeds`: the runs counted (all when empty).
fn group<'a>(g: &'a Group, runs: &'a [RunResult], seeds: &[u64]) -> GroupSummary<'a> {
    let mut points = Vec::new();
    let mut pending = Vec::new();
    for point in &g.points {
        let mine: Vec<&RunResult> = runs
            .iter()
            .filter(|r| r.point == point.key && (seeds.is_empty() || seeds.contains(&r.seed)))
            .collect();
        if mine.is_empty() {
            pending.push(point);
        } else {
            points.push(point_summary(point, &mine));
        }
    }
    let mut sets: Vec<(String, SetKind)> = Vec::new();
    for p in &points {
        for s in &p.sets {
            if !sets.iter().any(|(name, _)| *name == s.name) {
                sets.push((s.name.clone(), s.kind));
            }
        }
    }
    // Stable: mixed first, then the factors in their order, then the files.
    sets.sort_by_key(|(_, kind)| *kind as u8);
    let rankings = sets.iter().map(|(set, _)| ranking(set, &points)).collect();
    GroupSummary {
        name: &g.name,
        points,
        pending,
        sets: sets.into_iter().map(|(name, _)| name).collect(),
        rankings,
    }
}

fn point_summary<'a>(point: &'a Point, runs: &[&RunResult]) -> PointSummary<'a> {
    let mut sets = Vec::new();
    for template in &runs[0].sets {
        let of_set: Vec<_> = runs
            .iter()
            .filter_map(|r| r.sets.iter().find(|s| s.name == template.name))
            .collect();
        let accuracy: Vec<f64> = of_set.iter().map(|s| s.accuracy * 100.0).collect();
        let attention: Vec<[f64; 5]> = of_set
            .iter()
            .filter_map(|s| s.attention)
            .map(|a| {
                [
                    a.gamma_local,
                    a.gamma_global,
                    a.norm_local,
                    a.norm_global,
                    a.local_weight_vs_global_norm.unwrap_or(f64::NAN),
                ]
            })
            .collect();
        sets.push(SetSummary {
            name: template.name.clone(),
            kind: template.kind,
            accuracy: Stat::of(&accuracy),
            attention: (!attention.is_empty()).then(|| {
                std::array::from_fn(|i| {
                    let known: Vec<f64> = attention
                        .iter()
                        .map(|a| a[i])
                        .filter(|v| !v.is_nan())
                        .collect();
                    known.iter().sum::<f64>() / known.len() as f64
                })
            }),
        });
    }
    let mut seeds: Vec<u64> = runs.iter().map(|r| r.seed).collect();
    seeds.sort_unstable();
    PointSummary {
        point,
        seeds,
        steps: runs.iter().map(|r| r.steps).max().unwrap_or(0),
        train_seconds: runs.iter().map(|r| r.train_seconds).sum::<f64>() / runs.len() as f64,
        sets,
    }
}

fn ranking(set: &str, points: &[PointSummary]) -> Ranking {
    let mut order: Vec<(String, Stat)> = points
        .iter()
        .filter_map(|p| Some((p.point.label.clone(), p.set(set)?.accuracy)))
        .collect();
    order.sort_by(|a, b| b.1.mean.total_cmp(&a.1.mean));
    let separated = order
        .windows(2)
        .map(|w| {
            let (a, b) = (w[0].1, w[1].1);
            a.seeds > 1 && b.seeds > 1 && a.mean - b.mean > a.spread.max(b.spread)
        })
        .collect();
    Ranking {
        set: set.to_string(),
        order,
        separated,
    }
}

/// `93.12 ± 0.41`: mean and spread over seeds, in percent.
pub fn mean_spread(s: &Stat) -> String {
    format!("{:.2} ± {:.2}", s.mean, s.spread)
}

/// The ranking on one line: `lgf > add ≈ local`, where `>` is a gap larger than the seeds'
/// spread and `≈` one that is not.
pub fn ranking_line(r: &Ranking) -> String {
    let mut line = String::new();
    for (i, (label, _)) in r.order.iter().enumerate() {
        if i > 0 {
            line.push_str(if r.separated[i - 1] { " > " } else { " ≈ " });
        }
        line.push_str(label);
    }
    line
}

/// The summary as Markdown: per group, an accuracy table (mean ± spread over seeds, in
/// percent), the ranking per set, and the attention table of the points that have one.
pub fn markdown(groups: &[GroupSummary]) -> String {
    let mut md = String::new();
    for g in groups {
        let _ = writeln!(md, "### {}\n", g.name);
        if g.points.is_empty() {
            let _ = writeln!(md, "No finished runs yet.\n");
            continue;
        }
        let _ = write!(md, "| point | seeds | steps | train min |");
        for set in &g.sets {
            let _ = write!(md, " {set} (%) |");
        }
        let _ = write!(md, "\n|---|---:|---:|---:|");
        md.push_str(&"---:|".repeat(g.sets.len()));
        md.push('\n');
        for p in &g.points {
            let _ = write!(
                md,
                "| {} | {} | {} | {:.1} |",
                p.point.label,
                p.seeds.len(),
                p.steps,
                p.train_seconds / 60.0
            );
            for set in &g.sets {
                match p.set(set) {
                    Some(s) => {
                        let _ = write!(md, " {} |", mean_spread(&s.accuracy));
                    }
                    None => md.push_str(" - |"),
                }
            }
            md.push('\n');
        }
        if !g.pending.is_empty() {
            let labels: Vec<&str> = g.pending.iter().map(|p| p.label.as_str()).collect();
            let _ = writeln!(md, "\nNot run yet: {}.", labels.join(", "));
        }
        let _ = writeln!(
            md,
            "\nRanking by mean accuracy (`>`: the gap is larger than both points' spread over \
             seeds; `≈`: it is not):\n"
        );
        for r in &g.rankings {
            let _ = writeln!(md, "- {}: {}", r.set, ranking_line(r));
        }
        md.push('\n');
        attention_table(&mut md, g);
    }
    md
}

/// gamma and norms per set, for the points whose runs measured them (LGF fusion).
fn attention_table(md: &mut String, g: &GroupSummary) {
    let with: Vec<&PointSummary> = g
        .points
        .iter()
        .filter(|p| p.sets.iter().any(|s| s.attention.is_some()))
        .collect();
    if with.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "LGF attention on the held-out images (means over seeds; r: correlation over the \
         images of γ_local with ‖global‖):\n"
    );
    let _ = writeln!(
        md,
        "| point | set | γ_local | γ_global | ‖local‖ | ‖global‖ | r(γ_local, ‖global‖) |\n\
         |---|---|---:|---:|---:|---:|---:|"
    );
    for p in with {
        for s in p.sets.iter() {
            if let Some([gl, gg, nl, ng, r]) = s.attention {
                let _ = writeln!(
                    md,
                    "| {} | {} | {gl:.4} | {gg:.4} | {nl:.2} | {ng:.2} | {r:+.3} |",
                    p.point.label, s.name
                );
            }
        }
    }
    md.push('\n');
}
