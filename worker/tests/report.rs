//! `lgaf report` as a user runs it: a history written through the real writer (a
//! coordinated run that loses a worker and resumes, and a rank 0 that evaluates), the real
//! binary turning it into a page and PNGs, and headless Chromium rendering the page.
//! Also its errors for a store without the run, and for a run without a history.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::processes::{wait_exit_or, Log};
use common::*;
use lgaf_store::history::{
    now, CheckpointCommitted, EvalSet, Evaluation, GenerationEnded, GenerationFormed,
    HistoryWriter, Outcome, Recovery, RunFinished, Source, StepRecord, WorkerLost,
    WorkerRegistered,
};
use lgaf_store::{RunStore, Store};

/// Headless Chromium: `LGAF_CHROMIUM` (which `make test` sets), else Debian's.
fn chromium() -> String {
    std::env::var("LGAF_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

fn pause() {
    std::thread::sleep(Duration::from_millis(4));
}

fn step(step: u64, generation: u64, world_size: u32) -> StepRecord {
    let wobble = ((step * 37) % 11) as f64 / 11.0 - 0.5;
    let step_seconds = 0.05 + 0.01 * wobble;
    StepRecord {
        step,
        epoch: (step - 1) / 40,
        total_steps: 120,
        loss: 25.0 * (-(step as f64) / 40.0).exp() + 3.0 + 0.3 * wobble,
        lr: if step <= 80 { 0.1 } else { 0.01 },
        samples_per_sec: 64.0 / step_seconds,
        step_seconds,
        data_wait_seconds: step_seconds * 0.2,
        loss_scale: None,
        skipped: false,
        gamma_local: Some(0.5 + 0.001 * step as f64),
        gamma_global: Some(0.5 - 0.001 * step as f64),
        world_size,
        generation,
        time: now(),
    }
}

fn evaluation(step: u64) -> Evaluation {
    let set = |name: &str, factor: Option<&str>, accuracy: f64, gamma: f64| EvalSet {
        name: name.into(),
        factor: factor.map(str::to_string),
        pairs: Some(300),
        accuracy,
        std: 0.02,
        threshold: 1.2,
        tar_at_far: None,
        gamma_local: Some(gamma),
        gamma_global: Some(1.0 - gamma),
    };
    let p = step as f64 / 120.0;
    Evaluation {
        step,
        sets: vec![
            set("held-out", None, 0.6 + 0.3 * p, 0.55),
            set("held-out/pose", Some("pose"), 0.55 + 0.3 * p, 0.4),
            set("held-out/blur", Some("blur"), 0.6 + 0.2 * p, 0.7),
        ],
        time: now(),
    }
}

/// A coordinated run of 120 steps: four workers, one lost after step 70 (committed at 60),
/// the next generation of three resuming from 60; checkpoints and evaluations on the way.
fn write_history(store: &Path, run_id: &str) {
    let store = Store::from_url(&store.display().to_string()).unwrap();
    let run = RunStore::new(store, run_id).unwrap();
    let coordinator = HistoryWriter::start(run.clone(), Source::Coordinator, 0, 0).unwrap();
    for i in 0..4 {
        coordinator.record(WorkerRegistered {
            worker_id: format!("w-{i}"),
            host: format!("node-{i}"),
            time: now(),
        });
    }
    pause();
    coordinator.record(GenerationFormed {
        generation: 1,
        world_size: 4,
        resume_step: 0,
        live: false,
        time: now(),
    });
    let rank0 = HistoryWriter::start(run.clone(), Source::Rank0, 1, 0).unwrap();
    for s in 1..=70 {
        rank0.record(step(s, 1, 4));
        if s % 30 == 0 {
            rank0.record(checkpoint(s));
            rank0.flush_and_wait().unwrap();
        }
        if s % 40 == 0 {
            rank0.record(evaluation(s));
        }
        pause();
    }
    rank0.flush_and_wait().unwrap();
    drop(rank0);
    let failed = now();
    coordinator.record(WorkerLost {
        worker_id: "w-2".into(),
        rank: Some(2),
        host: "node-2".into(),
        reason: "exited with signal 9".into(),
        time: failed,
    });
    coordinator.record(GenerationEnded {
        generation: 1,
        reason: "rank 2 lost".into(),
        time: now(),
    });
    std::thread::sleep(Duration::from_millis(60));
    let formed = now();
    coordinator.record(GenerationFormed {
        generation: 2,
        world_size: 3,
        resume_step: 60,
        live: false,
        time: formed,
    });
    coordinator.record(Recovery {
        generation: 2,
        seconds: (formed - failed).num_milliseconds() as f64 / 1000.0,
        time: formed,
    });
    let rank0 = HistoryWriter::start(run.clone(), Source::Rank0, 2, 60).unwrap();
    for s in 61..=120 {
        rank0.record(step(s, 2, 3));
        if s % 30 == 0 {
            rank0.record(checkpoint(s));
        }
        if s % 40 == 0 {
            rank0.record(evaluation(s));
        }
        pause();
    }
    rank0.finish().unwrap();
    coordinator.record(RunFinished {
        step: 120,
        outcome: Outcome::Completed,
        detail: None,
        time: now(),
    });
    coordinator.finish().unwrap();
}

/// Distinct colours, and the share of pixels that are neither white nor the page's
/// background (#f5f6f8).
fn content(image: &image::RgbImage) -> (usize, f64) {
    let colours: HashSet<[u8; 3]> = image.pixels().map(|p| p.0).collect();
    let inked = image
        .pixels()
        .filter(|p| p.0 != [255, 255, 255] && p.0 != [245, 246, 248])
        .count();
    (colours.len(), inked as f64 / image.pixels().count() as f64)
}

fn chromium_screenshot(page: &Path, shot: &Path, profile: &Path) {
    let chromium = chromium();
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium} is missing: this test renders the report in headless Chromium; run \
         `make test`, which installs it (Debian package chromium)"
    );
    let mut child = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1400,2400")
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chromium");
    // Read as it comes, so that Chromium never blocks on a full pipe.
    let stderr = Log::default();
    stderr.collect(child.stderr.take().expect("piped"));
    let status = wait_exit_or(&mut child, Duration::from_secs(180), || {
        format!("chromium did not finish the screenshot:\n{}", stderr.text())
    });
    assert!(
        status.success(),
        "chromium failed ({status}):\n{}",
        stderr.text()
    );
}

/// A checkpoint of `step` committed now.
fn checkpoint(step: u64) -> CheckpointCommitted {
    CheckpointCommitted {
        step,
        bytes: 40_000_000,
        seconds: 0.4,
        time: now(),
    }
}

#[test]
fn report_of_a_written_history_renders_in_chromium() {
    let dir = temp_dir("report");
    let store = dir.join("store");
    write_history(&store, "observed");
    let page = dir.join("out/report.html");
    let png_dir = dir.join("png");
    let printed = ok(&[
        "report",
        "--store",
        s(&store),
        "--run",
        "observed",
        "--out",
        s(&page),
        "--png",
        s(&png_dir),
    ]);
    // It prints what it wrote: the page, then each PNG.
    assert!(printed.contains(&page.display().to_string()), "{printed}");
    let html = std::fs::read_to_string(&page).unwrap();
    for id in [
        "timeline",
        "loss",
        "throughput",
        "step-time",
        "gamma",
        "evaluation",
        "gamma-by-factor",
    ] {
        assert!(html.contains(&format!("id=\"plot-{id}\"")), "no {id} plot");
        let png = png_dir.join(format!("{id}.png"));
        assert!(printed.contains(&png.display().to_string()), "{printed}");
        let image = image::open(&png)
            .unwrap_or_else(|e| panic!("{}: {e}", png.display()))
            .to_rgb8();
        let (colours, inked) = content(&image);
        assert!(
            colours > 30 && inked > 0.03,
            "{id}.png: {colours} colours, {inked:.3} inked"
        );
    }
    assert!(
        html.contains("exited with signal 9"),
        "the lost worker is listed"
    );
    assert!(html.contains("generation 2 formed with 3 workers, from step 60"));

    let shot = dir.join("screenshot.png");
    chromium_screenshot(&page, &shot, &dir.join("chromium-profile"));
    let image = image::open(&shot)
        .unwrap_or_else(|e| panic!("{}: {e}", shot.display()))
        .to_rgb8();
    assert_eq!(image.dimensions(), (1400, 2400));
    let (colours, inked) = content(&image);
    assert!(colours > 500, "the screenshot has only {colours} colours");
    assert!(
        inked > 0.15,
        "the screenshot is mostly blank: {inked:.3} of it drawn"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_errors_name_the_run_and_what_is_missing() {
    let dir = temp_dir("report-errors");
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let page = dir.join("report.html");
    let args = |run: &'static str| -> Vec<String> {
        [
            "report",
            "--store",
            s(&store),
            "--run",
            run,
            "--out",
            s(&page),
        ]
        .map(str::to_string)
        .to_vec()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&args)
    };
    let no_run = run(args("nobody"));
    assert!(no_run.contains("no run `nobody`"), "{no_run}");
    // A run that has a job state but no history yet.
    let job = store.join("runs/quiet/job.json");
    std::fs::create_dir_all(job.parent().unwrap()).unwrap();
    std::fs::write(&job, b"{}").unwrap();
    let no_history = run(args("quiet"));
    assert!(
        no_history.contains("run `quiet`") && no_history.contains("no history yet"),
        "{no_history}"
    );
    // A store that does not exist is named, and not created.
    let missing: PathBuf = dir.join("elsewhere");
    let err = fails(&[
        "report",
        "--store",
        s(&missing),
        "--run",
        "quiet",
        "--out",
        s(&page),
    ]);
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(!missing.exists() && !page.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sweep's page (`lgaf sweep`'s report.html), from results of two points over three
/// seeds, as a person sees it in a browser.
#[test]
fn sweep_page_renders_in_chromium() {
    use lgaf_report::sweep::{
        write_html, Attention, Group, Point, RunResult, SetKind, SetResult, SweepResults,
    };
    let dir = temp_dir("sweep-page");
    let point = |key: &str| Point {
        key: key.into(),
        label: format!("model.fusion={key}"),
        overrides: Default::default(),
    };
    let mut results = SweepResults {
        groups: vec![Group {
            name: "Table 1".into(),
            points: vec![point("lgf"), point("global")],
        }],
        ..Default::default()
    };
    for (key, base) in [("lgf", 0.92), ("global", 0.90)] {
        for seed in 0..3u64 {
            let sets = ["mixed", "clean", "missing", "deformed", "low_quality"]
                .iter()
                .enumerate()
                .map(|(i, name)| SetResult {
                    name: name.to_string(),
                    kind: if i == 0 {
                        SetKind::Mixed
                    } else {
                        SetKind::Factor
                    },
                    accuracy: base - i as f64 * 0.02 + seed as f64 * 0.004,
                    std: 0.01,
                    attention: (key == "lgf").then_some(Attention {
                        gamma_local: 0.48 + i as f64 * 0.01,
                        gamma_global: 0.52 - i as f64 * 0.01,
                        norm_local: 11.0,
                        norm_global: 10.5,
                        local_weight_vs_global_norm: Some(-0.3),
                    }),
                })
                .collect();
            results.record(RunResult {
                point: key.into(),
                label: format!("model.fusion={key}"),
                seed,
                run_id: format!("sweep-{key}-s{seed}"),
                config: serde_json::json!({}),
                steps: 186,
                train_seconds: 120.0,
                eval_seconds: 10.0,
                sets,
            });
        }
    }
    let page = dir.join("report.html");
    write_html(&results, "sweep-out", &page).unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("Table 1: accuracy per evaluation set"));
    assert!(
        html.contains("model.fusion=lgf &gt; model.fusion=global"),
        "mixed ranks them"
    );

    let shot = dir.join("screenshot.png");
    chromium_screenshot(&page, &shot, &dir.join("chromium-profile"));
    let image = image::open(&shot).unwrap().to_rgb8();
    let (colours, inked) = content(&image);
    assert!(colours > 200, "the screenshot has only {colours} colours");
    assert!(
        inked > 0.08,
        "the screenshot is mostly blank: {inked:.3} of it drawn"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
