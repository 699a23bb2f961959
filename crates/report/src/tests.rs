//! The report of a made-up coordinated run with every kind of record: the page holds every
//! plot and nothing from elsewhere, escapes what it quotes, and every PNG decodes to a
//! picture with content.

use chrono::TimeDelta;
use lgaf_store::history::{
    CheckpointCommitted, EvalSet, Evaluation, Event, GenerationEnded, GenerationFormed, Outcome,
    Recovery, RunFinished, SegmentHeader, Source, StepRecord, TarAtFar, Time, WorkerLost,
    WorkerRegistered,
};
use lgaf_store::history::{SegmentSummary, SourcedEvent};
use lgaf_store::History;

use super::*;

fn t0() -> Time {
    "2024-06-01T12:00:00Z".parse().unwrap()
}

fn at(seconds: f64) -> Time {
    t0() + TimeDelta::milliseconds((seconds * 1000.0) as i64)
}

fn segment(source: Source, generation: u64, resumed: u64, started: f64) -> SegmentSummary {
    SegmentSummary {
        key: format!("runs/sample/history/{generation:06}-{source}-0000.jsonl"),
        source,
        generation,
        part: 0,
        header: Some(SegmentHeader {
            source,
            generation,
            resumed_from_step: resumed,
            part: 0,
            started: at(started),
        }),
        lines: 100,
        bytes: 40_000,
    }
}

fn eval_set(name: &str, factor: Option<&str>, accuracy: f64, gamma: Option<f64>) -> EvalSet {
    EvalSet {
        name: name.into(),
        factor: factor.map(str::to_string),
        pairs: Some(600),
        accuracy,
        std: 0.012,
        threshold: 1.32,
        tar_at_far: factor.is_none().then_some(TarAtFar {
            far_target: 1e-3,
            tar: accuracy - 0.1,
            tar_std: 0.02,
            far: 0.001,
        }),
        gamma_local: gamma,
        gamma_global: gamma.map(|g| 1.0 - g),
    }
}

/// 300 steps over two generations (a worker lost after step 130, resumed from 120), with
/// checkpoints, evaluations per set and per factor, and a skipped step.
pub(crate) fn sample() -> History {
    let coordinator = |event: Event| SourcedEvent {
        source: Source::Coordinator,
        event,
    };
    let mut events = Vec::new();
    for (i, host) in ["node-a", "node-b", "node-c", "node-d"].iter().enumerate() {
        events.push(coordinator(
            WorkerRegistered {
                worker_id: format!("w-{i}"),
                host: host.to_string(),
                time: at(0.5 + i as f64 * 0.2),
            }
            .into(),
        ));
    }
    events.push(coordinator(
        GenerationFormed {
            generation: 1,
            world_size: 4,
            resume_step: 0,
            live: false,
            time: at(2.0),
        }
        .into(),
    ));
    let mut steps = Vec::new();
    let time_of = |step: u64| {
        if step <= 120 {
            3.0 + step as f64 * 0.5
        } else {
            // The second generation starts after the failure at 68 s and a recovery.
            80.0 + (step - 120) as f64 * 0.6
        }
    };
    for step in 1..=300u64 {
        let generation = if step <= 120 { 1 } else { 2 };
        let noise = ((step * 7919) % 97) as f64 / 97.0 - 0.5;
        let step_seconds = if generation == 1 { 0.5 } else { 0.6 } + noise * 0.08;
        steps.push(StepRecord {
            step,
            epoch: step / 100,
            total_steps: 300,
            loss: 30.0 * (-(step as f64) / 90.0).exp() + 4.0 + noise,
            lr: if step < 150 {
                0.1
            } else if step < 250 {
                0.01
            } else {
                0.001
            },
            samples_per_sec: 256.0 / step_seconds,
            step_seconds,
            data_wait_seconds: step_seconds * (0.1 + 0.05 * noise),
            loss_scale: Some(65536.0),
            skipped: step == 77,
            gamma_local: Some(0.5 + 0.2 * (1.0 - (-(step as f64) / 100.0).exp()) + 0.02 * noise),
            gamma_global: Some(0.5 - 0.2 * (1.0 - (-(step as f64) / 100.0).exp()) - 0.02 * noise),
            world_size: if generation == 1 { 4 } else { 3 },
            generation,
            time: at(time_of(step)),
        });
        if step % 50 == 0 {
            events.push(coordinator(
                CheckpointCommitted {
                    step,
                    bytes: 1_200_000_000,
                    seconds: 2.5,
                    time: at(time_of(step) + 2.5),
                }
                .into(),
            ));
        }
        if step % 100 == 0 {
            let p = step as f64 / 300.0;
            let mut sets = vec![
                eval_set("lfw", None, 0.80 + 0.18 * p, None),
                eval_set("cfp_fp", None, 0.70 + 0.2 * p, None),
                eval_set("held-out", None, 0.75 + 0.2 * p, Some(0.6)),
            ];
            for (factor, g) in [
                ("pose", 0.35),
                ("blur", 0.72),
                ("occlusion", 0.28),
                ("illumination", 0.55),
            ] {
                sets.push(eval_set(
                    &format!("held-out/{factor}"),
                    Some(factor),
                    0.7 + 0.2 * p,
                    Some(g),
                ));
            }
            events.push(SourcedEvent {
                source: Source::Rank0,
                event: Evaluation {
                    step,
                    sets,
                    time: at(time_of(step) + 1.0),
                }
                .into(),
            });
        }
    }
    events.push(coordinator(
        WorkerLost {
            worker_id: "w-3".into(),
            rank: Some(3),
            host: "node-d".into(),
            reason: "silent past the heartbeat deadline <10 s>".into(),
            time: at(68.0),
        }
        .into(),
    ));
    events.push(coordinator(
        GenerationEnded {
            generation: 1,
            reason: "rank 3 lost".into(),
            time: at(68.1),
        }
        .into(),
    ));
    events.push(coordinator(
        GenerationFormed {
            generation: 2,
            world_size: 3,
            resume_step: 120,
            live: false,
            time: at(78.0),
        }
        .into(),
    ));
    events.push(coordinator(
        Recovery {
            generation: 2,
            seconds: 10.0,
            time: at(78.0),
        }
        .into(),
    ));
    events.push(coordinator(
        RunFinished {
            step: 300,
            outcome: Outcome::Completed,
            detail: None,
            time: at(time_of(300) + 4.0),
        }
        .into(),
    ));
    events.sort_by_key(|e| e.event.time());
    History {
        run_id: "sample<run>".into(),
        url: "file:///tmp/store".into(),
        segments: vec![
            segment(Source::Coordinator, 1, 0, 0.0),
            segment(Source::Rank0, 1, 0, 2.5),
            segment(Source::Rank0, 2, 120, 79.0),
        ],
        steps,
        events,
        problems: vec![lgaf_store::history::Problem {
            key: "runs/sample/history/000002-rank0-0000.jsonl".into(),
            line: Some(17),
            reason: "skipped (the last line, without its newline: a torn tail)".into(),
        }],
    }
}

#[test]
fn the_page_has_every_plot_and_fetches_nothing() {
    let page = html(&sample()).unwrap();
    for plot in Plot::ALL {
        assert!(
            page.contains(&format!("id=\"plot-{}\"", plot.id())),
            "{} missing",
            plot.id()
        );
    }
    assert_eq!(page.matches("<svg").count(), Plot::ALL.len());
    assert!(page.contains("Loss and learning rate"));
    assert!(page.contains("rank 3 lost"));
    assert!(page.contains("torn tail"));
    // Nothing is loaded from elsewhere: no scripts, no remote sources, links or styles.
    let lower = page.to_ascii_lowercase();
    for attribute in ["src=", "href="] {
        for quote in ["\"", "'", ""] {
            for scheme in ["http://", "https://", "//"] {
                let remote = format!("{attribute}{quote}{scheme}");
                assert!(!lower.contains(&remote), "the page refers to {remote}");
            }
        }
    }
    assert!(!lower.contains("<script"), "the page has a script");
    assert!(!lower.contains("@import") && !lower.contains("url("));
    // What the history quotes is escaped.
    assert!(page.contains("sample&lt;run&gt;"));
    assert!(!page.contains("<run>") && !page.contains("<10 s>"));
}

#[test]
fn plots_without_data_are_left_out_and_named() {
    let mut history = sample();
    for step in &mut history.steps {
        step.gamma_local = None;
        step.gamma_global = None;
    }
    history.events.retain(|e| e.event.kind() != "evaluation");
    let page = html(&history).unwrap();
    assert!(!page.contains("id=\"plot-gamma\""));
    assert!(!page.contains("id=\"plot-evaluation\""));
    assert!(
        page.contains("Not in this history, so not plotted: gamma, evaluation, gamma-by-factor.")
    );
    assert_eq!(page.matches("<svg").count(), 4);
}

#[test]
fn a_history_without_records_still_makes_a_page() {
    let mut history = sample();
    history.steps.clear();
    history.events.clear();
    let page = html(&history).unwrap();
    assert_eq!(page.matches("<svg").count(), 0);
    assert!(page.contains("none recorded yet"));
    assert!(pngs(&history).unwrap().is_empty());
}

#[test]
fn every_png_decodes_to_a_picture_with_content() {
    let pngs = pngs(&sample()).unwrap();
    assert_eq!(
        pngs.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        Plot::ALL.to_vec()
    );
    for (plot, bytes) in pngs {
        let image = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .unwrap_or_else(|e| panic!("{}: {e}", plot.id()))
            .to_rgb8();
        assert_eq!(image.dimensions(), plot.size(), "{}", plot.id());
        let pixels = image.pixels().count();
        let white = image.pixels().filter(|p| p.0 == [255, 255, 255]).count();
        let colours: std::collections::HashSet<[u8; 3]> = image.pixels().map(|p| p.0).collect();
        assert!(
            white < pixels * 97 / 100,
            "{}: {white} of {pixels} pixels are white",
            plot.id()
        );
        assert!(
            colours.len() > 30,
            "{}: {} colours",
            plot.id(),
            colours.len()
        );
    }
}

#[test]
fn write_puts_the_page_and_the_pngs_where_asked() {
    let dir = tempfile::tempdir().unwrap();
    let html_path = dir.path().join("out/report.html");
    let png_dir = dir.path().join("png");
    let written = write(&sample(), &html_path, Some(&png_dir)).unwrap();
    assert_eq!(written.html, html_path);
    assert_eq!(written.pngs.len(), Plot::ALL.len());
    assert!(std::fs::read_to_string(&html_path)
        .unwrap()
        .starts_with("<!DOCTYPE html>"));
    for png in &written.pngs {
        assert!(
            png.starts_with(&png_dir) && png.is_file(),
            "{}",
            png.display()
        );
    }
    // A page that cannot be written names its path.
    let blocked = dir.path().join("file");
    std::fs::write(&blocked, b"x").unwrap();
    let e = write(&sample(), &blocked.join("report.html"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&blocked.display().to_string()), "{e}");
}

#[test]
fn a_single_process_run_shows_its_processes() {
    let mut history = sample();
    history.segments.retain(|s| s.source == Source::Rank0);
    history.events.retain(|e| e.source == Source::Rank0);
    let s = Summary::new(&history);
    let labels: Vec<String> = s.spans().into_iter().map(|span| span.label).collect();
    assert_eq!(labels, ["process 1", "process 2 · from step 120"]);
    assert_eq!(s.resumes().len(), 1);
    let page = html(&history).unwrap();
    assert!(page.contains("Processes"), "the header counts processes");
    assert!(page.contains("id=\"plot-timeline\""));
}
