use std::collections::BTreeMap;

use super::*;

fn point(key: &str, label: &str) -> Point {
    Point {
        key: key.into(),
        label: label.into(),
        overrides: BTreeMap::new(),
    }
}

fn run(point: &str, seed: u64, mixed: f64, missing: f64, attention: bool) -> RunResult {
    let set = |name: &str, kind, accuracy| SetResult {
        name: name.into(),
        kind,
        accuracy,
        std: 0.01,
        attention: attention.then_some(Attention {
            gamma_local: 0.6,
            gamma_global: 0.4,
            norm_local: 20.0,
            norm_global: 15.0,
            local_weight_vs_global_norm: Some(-0.5),
        }),
    };
    RunResult {
        point: point.into(),
        label: point.into(),
        seed,
        run_id: format!("{point}-s{seed}"),
        config: serde_json::json!({}),
        steps: 100,
        train_seconds: 60.0,
        eval_seconds: 5.0,
        sets: vec![
            set("mixed", SetKind::Mixed, mixed),
            set("missing", SetKind::Factor, missing),
        ],
    }
}

/// Three seeds each: `a` leads clearly on mixed, `a` and `b` overlap on missing.
fn results() -> SweepResults {
    let mut r = SweepResults {
        groups: vec![Group {
            name: "fusion".into(),
            points: vec![
                point("a", "fusion=lgf"),
                point("b", "fusion=add"),
                point("c", "fusion=local"),
            ],
        }],
        ..Default::default()
    };
    for (seed, (ma, mb)) in [(0.90, 0.80), (0.91, 0.81), (0.92, 0.79)]
        .into_iter()
        .enumerate()
    {
        r.record(run("a", seed as u64, ma, 0.70 + seed as f64 * 0.02, true));
        r.record(run("b", seed as u64, mb, 0.725 - seed as f64 * 0.02, false));
    }
    r
}

#[test]
fn stat_is_mean_and_sample_spread() {
    let s = Stat::of(&[1.0, 2.0, 3.0]);
    assert_eq!(
        (s.mean, s.spread, s.min, s.max, s.seeds),
        (2.0, 1.0, 1.0, 3.0, 3)
    );
    assert_eq!(Stat::of(&[5.0]).spread, 0.0);
}

#[test]
fn ranking_separates_only_gaps_larger_than_the_spread() {
    let r = results();
    let groups = summarize(&r);
    let g = &groups[0];
    assert_eq!(g.sets, ["mixed", "missing"]);
    assert_eq!(g.pending.len(), 1, "c has no runs");
    let mixed = &g.rankings[0];
    assert_eq!(mixed.order[0].0, "fusion=lgf");
    assert_eq!(mixed.separated, [true]);
    assert_eq!(ranking_line(mixed), "fusion=lgf > fusion=add");
    let missing = &g.rankings[1];
    assert_eq!(missing.separated, [false], "{missing:?}");
    assert!(ranking_line(missing).contains(" ≈ "));
}

#[test]
fn only_the_planned_seeds_are_counted() {
    let mut r = results();
    r.seeds = vec![0, 1];
    let groups = summarize(&r);
    assert_eq!(groups[0].points[0].seeds, [0, 1]);
    assert_eq!(groups[0].points[0].sets[0].accuracy.mean, 90.5);
}

#[test]
fn a_missing_correlation_is_left_out_of_the_mean() {
    let mut r = results();
    for run in r.runs.iter_mut().filter(|run| run.seed == 0) {
        for set in &mut run.sets {
            if let Some(a) = &mut set.attention {
                a.local_weight_vs_global_norm = None;
            }
        }
    }
    let groups = summarize(&r);
    let attention = groups[0].points[0].sets[0].attention.unwrap();
    assert_eq!(attention[4], -0.5);
}

#[test]
fn non_finite_numbers_are_named() {
    let mut run = run("a", 0, 0.9, 0.8, true);
    assert_eq!(run.non_finite(), None);
    run.sets[1].attention.as_mut().unwrap().norm_global = f64::NAN;
    assert_eq!(
        run.non_finite().as_deref(),
        Some("sets[missing].attention.norm_global = NaN")
    );
}

#[test]
fn one_seed_is_never_separated() {
    let mut r = results();
    r.runs.retain(|run| run.seed == 0);
    let groups = summarize(&r);
    assert!(groups[0].rankings.iter().all(|r| r.separated == [false]));
}

#[test]
fn markdown_has_the_tables_and_the_pending_points() {
    let md = markdown(&summarize(&results()));
    assert!(
        md.contains("| fusion=lgf | 3 | 100 | 1.0 | 91.00 ± 1.00 |"),
        "{md}"
    );
    assert!(md.contains("Not run yet: fusion=local."), "{md}");
    assert!(
        md.contains("| fusion=lgf | missing | 0.6000 | 0.4000 | 20.00 | 15.00 | -0.500 |"),
        "{md}"
    );
    assert!(
        !md.contains("| fusion=add | missing |"),
        "add has no attention: {md}"
    );
}

#[test]
fn record_replaces_the_same_point_and_seed() {
    let mut r = results();
    let n = r.runs.len();
    r.record(run("a", 0, 0.5, 0.5, true));
    assert_eq!(r.runs.len(), n);
    assert_eq!(r.run("a", 0).unwrap().sets[0].accuracy, 0.5);
}

#[test]
fn results_round_trip_and_refuse_other_formats() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.json");
    assert_eq!(SweepResults::load(&path).unwrap(), SweepResults::default());
    let r = results();
    r.save(&path).unwrap();
    assert_eq!(SweepResults::load(&path).unwrap(), r);
    assert!(!dir.path().join("results.json.partial").exists());

    let text =
        std::fs::read_to_string(&path)
            .unwrap()
            .replacen("\"format\": 1", "\"format\": 9", 1);
    std::fs::write(&path, text).unwrap();
    let e = SweepResults::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("results format 9") && e.contains("move it aside"),
        "{e}"
    );

    std::fs::write(&path, "{\"format\": 1, \"groups\": [], \"runs\": [{}]}").unwrap();
    let e = SweepResults::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("results.json") && e.contains("missing field"),
        "{e}"
    );
}

#[test]
fn the_page_holds_a_plot_and_tables_per_group() {
    let page = html(&results(), "out").unwrap();
    assert!(page.contains("<svg") && page.contains("fusion: accuracy per evaluation set"));
    assert!(page.contains("91.00 ± 1.00") && page.contains("fusion=lgf &gt; fusion=add"));
    assert!(page.contains("r(γ_local, ‖global‖)"));
}
