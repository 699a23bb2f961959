//! `lgaf sweep` end to end on a tiny model: real training processes (`lgaf train`, and
//! `lgaf-coordinator` with its workers), results.json per point and seed, the summary and
//! the page, resuming without retraining, and errors that name the point or the run.

mod common;

use std::path::{Path, PathBuf};

use common::{fails, s, temp_dir};
use lgaf_report::sweep::{SetKind, SweepResults};

const BASE: &str = r#"
[model]
arch = "r18"
width = 0.125
embedding_size = 32
[data]
batch_size = 16
workers = 1
[data.synthetic]
identities = 16
images_per_identity = 4
[train]
device = "cpu"
epochs = 1
log_every = 1
[checkpoint]
every_steps = 2
[eval]
identities = 10
pairs = 40
"#;

fn setup(name: &str, grid: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let base = dir.join("base.toml");
    std::fs::write(&base, BASE).unwrap();
    let grid_path = dir.join("grid.toml");
    std::fs::write(&grid_path, grid).unwrap();
    let out = dir.join("out");
    (dir, base, grid_path, out)
}

/// Runs the sweep as a user would: the training processes log at `info` (into the runs'
/// logs), so the environment's `RUST_LOG` is not passed on.
fn sweep(base: &Path, grid: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "sweep",
        "--config",
        s(base),
        "--grid",
        s(grid),
        "--out",
        s(out),
    ];
    args.extend(extra);
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_lgaf"))
        .args(&args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "lgaf {args:?} failed:\n{text}");
    text
}

const TWO_TABLES: &str = "[[grid]]\nname = \"fusion\"\nmodel.fusion = [\"lgf\", \"global\"]\n\
                          [[grid]]\nname = \"heads\"\nmodel.heads = [4, 2]\n";

#[test]
fn a_sweep_trains_each_point_and_seed_once_and_resumes() {
    let (dir, base, grid, out) = setup("sweep", TWO_TABLES);
    let said = sweep(&base, &grid, &out, &["--seeds", "2"]);
    // lgf with 4 heads is in both tables: 3 points, 6 runs.
    assert!(
        said.contains("3 grid points in 2 table(s), 2 seed(s) each: 6 runs"),
        "{said}"
    );
    assert!(said.contains("estimated run time:"), "{said}");
    assert!(said.contains("[6/6]"), "{said}");

    let results = SweepResults::load(&out.join("results.json")).unwrap();
    assert_eq!(results.runs.len(), 6);
    assert_eq!(results.groups[1].points[0].label, "model.heads=4");
    assert_eq!(
        results.groups[0].points[0].key,
        results.groups[1].points[0].key
    );
    for run in &results.runs {
        // 64 images, batch 16: 4 steps, committed at 2 and 4.
        assert_eq!(run.steps, 4, "{}", run.run_id);
        let names: Vec<&str> = run.sets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["mixed", "clean", "missing", "deformed", "low_quality"]
        );
        assert!(run.sets.iter().all(|s| (0.0..=1.0).contains(&s.accuracy)));
        assert_eq!(run.sets[1].kind, SetKind::Factor);
        let lgf = run.config["model"]["fusion"] == "lgf";
        assert_eq!(run.sets[0].attention.is_some(), lgf, "{}", run.run_id);
        assert!(out
            .join("runs")
            .join(&run.run_id)
            .join("train.log")
            .exists());
    }
    // The seeds differ, and so do their weights (LGF's attention on the same images).
    let lgf = &results.groups[0].points[0].key;
    let attention = |seed| results.run(lgf, seed).unwrap().sets[0].attention.unwrap();
    assert_ne!(attention(0), attention(1));
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("### fusion") && md.contains("| model.fusion=global | 2 | 4 |"),
        "{md}"
    );
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(page.contains("<svg") && page.contains("heads: accuracy per evaluation set"));

    // Again: nothing to run, nothing changes.
    let said = sweep(&base, &grid, &out, &["--seeds", "2"]);
    assert!(said.contains("6 finished, 0 to run"), "{said}");
    assert_eq!(
        SweepResults::load(&out.join("results.json")).unwrap(),
        results
    );

    // A run whose result was lost after training (the sweep stopped before recording it) is
    // evaluated again from its committed checkpoint, not retrained.
    let mut lost = results.clone();
    let gone = lost.runs.remove(2);
    lost.save(&out.join("results.json")).unwrap();
    let log_path = out.join("runs").join(&gone.run_id).join("train.log");
    let trained_log = std::fs::read_to_string(&log_path).unwrap();
    assert!(trained_log.contains("from_step=0") && trained_log.contains("step step=4"));
    let said = sweep(&base, &grid, &out, &["--seeds", "2", "--no-estimate"]);
    assert!(
        said.contains("5 finished, 1 to run") && said.contains("[1/1]"),
        "{said}"
    );
    let again = SweepResults::load(&out.join("results.json")).unwrap();
    let redone = again.run(&gone.point, gone.seed).unwrap();
    assert_eq!(
        redone.sets, gone.sets,
        "the same checkpoint evaluates the same"
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    let resumed = &log[trained_log.len()..];
    assert!(
        resumed.contains("from_step=4") && !resumed.contains("step step="),
        "{resumed}"
    );

    // A third seed adds only its runs.
    let said = sweep(&base, &grid, &out, &["--seeds", "3", "--dry-run"]);
    assert!(said.contains("9 runs, 6 finished, 3 to run"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sweep_runs_coordinated_jobs_with_workers() {
    let (dir, base, grid, out) = setup("sweep-workers", "model.fusion = [\"lgf\"]\n");
    let said = sweep(&base, &grid, &out, &["--workers", "2", "--no-estimate"]);
    assert!(said.contains("[1/1] model.fusion=lgf seed 0"), "{said}");
    let results = SweepResults::load(&out.join("results.json")).unwrap();
    // Two ranks of 16: a global batch of 32, 2 steps an epoch.
    assert_eq!(results.runs[0].steps, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mistakes_name_the_point_or_the_run() {
    let (dir, base, grid, out) = setup("sweep-mistakes", "model.heads = [4, 3]\n");
    let mut args = vec![
        "sweep",
        "--config",
        s(&base),
        "--grid",
        s(&grid),
        "--out",
        s(&out),
    ];
    let err = fails(&args);
    assert!(
        err.contains("grid point `model.heads=3`") && err.contains("heads"),
        "{err}"
    );
    assert!(!out.join("results.json").exists());

    std::fs::write(&grid, "model.heads = 4\n").unwrap();
    let err = fails(&args);
    assert!(
        err.contains("grid.toml") && err.contains("must be a list"),
        "{err}"
    );

    // A run that fails in training: the sweep stops, naming the run and its log.
    std::fs::write(&grid, "eval.bins = [[\"/nonexistent/lfw.bin\"]]\n").unwrap();
    args.push("--no-estimate");
    let err = fails(&args);
    assert!(err.contains("failed") && err.contains("train.log"), "{err}");
    assert!(err.contains("lfw.bin"), "the log's tail is quoted: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_jobs_a_failed_run_stops_the_sweep_but_not_the_runs_in_flight() {
    // Two points at once; the second fails (its .bin file does not exist) soon after it starts.
    let grid = "eval.bins = [[], [\"/nonexistent/lfw.bin\"]]\n";
    let (dir, base, grid, out) = setup("sweep-jobs", grid);
    let args = [
        "sweep",
        "--config",
        s(&base),
        "--grid",
        s(&grid),
        "--out",
        s(&out),
        "--jobs",
        "2",
        "--no-estimate",
    ];
    let err = fails(&args);
    assert!(
        err.contains("lfw.bin") && err.contains("train.log"),
        "{err}"
    );
    let results = SweepResults::load(&out.join("results.json")).unwrap();
    assert_eq!(
        results.runs.len(),
        1,
        "the run in flight finished and was recorded"
    );
    assert_eq!(results.runs[0].label, "eval.bins=[]");
    // A second sweep on the same folder while one holds it is refused.
    let held = std::fs::File::open(out.join(".lock")).unwrap();
    let _held = nix::fcntl::Flock::lock(held, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let err = fails(&args);
    assert!(err.contains("another lgaf sweep"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
