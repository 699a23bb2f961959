//! One run of a sweep: its training as a process of its own (`lgaf train`, or
//! `lgaf-coordinator --spawn-local` with `--workers`), which resumes from the run's newest
//! checkpoint when it was interrupted, then the evaluation of the checkpoint it committed
//! last, here.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use lgaf_report::sweep::{Attention, RunResult, SetKind, SetResult};

use super::plan::PlannedRun;
use super::SweepError;
use crate::checkpoint::load_committed_model;
use crate::config::SourceKind;
use crate::device::parse_device;
use crate::eval::{self, HeldOut};
use crate::eval_sets::BinEvaluator;

/// How the training processes are started.
#[derive(Clone, Debug)]
pub struct Launcher {
    /// `lgaf` (this binary), for `lgaf train`.
    pub lgaf: PathBuf,
    /// With `Some(n)`, `lgaf-coordinator` beside `lgaf` runs each job on n local workers.
    pub workers: Option<u32>,
    /// Intra-op threads of each training process (OMP_NUM_THREADS; with `workers`, of each
    /// worker), when processes share the machine; `None` leaves libtorch's default.
    pub threads: Option<usize>,
}

impl Launcher {
    fn command(&self, run: &PlannedRun, config: &Path) -> Command {
        let mut cmd = match self.workers {
            None => {
                let mut cmd = Command::new(&self.lgaf);
                cmd.arg("train").arg("--config").arg(config);
                cmd
            }
            Some(n) => {
                let mut cmd = Command::new(self.lgaf.with_file_name("lgaf-coordinator"));
                cmd.args(["--workers", &n.to_string()])
                    .arg("--config")
                    .arg(config)
                    .arg("--store")
                    .arg(&run.config.checkpoint.dir)
                    .args([
                        "--run-id",
                        &run.run_id,
                        "--spawn-local",
                        "--grace-secs",
                        "0",
                    ])
                    .args(["--max-steps", &run.config.train.max_steps.to_string()]);
                cmd
            }
        };
        if let Some(threads) = self.threads {
            cmd.env("OMP_NUM_THREADS", threads.to_string());
        }
        // The run's train.toml holds its resolved config; an `LGAF__...` variable would
        // change it behind the plan's back (the plan refused those that touch a swept key).
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("LGAF__") {
                cmd.env_remove(name);
            }
        }
        cmd
    }
}

/// Where a run keeps its config and log: `<out>/runs/<run_id>/`.
pub fn run_dir(out: &Path, run: &PlannedRun) -> PathBuf {
    out.join("runs").join(&run.run_id)
}

/// Trains `run` (or finishes training it) and evaluates what it committed.
pub fn train_and_evaluate(
    launcher: &Launcher,
    out: &Path,
    run: &PlannedRun,
    label: &str,
    key: &str,
) -> Result<RunResult, SweepError> {
    let dir = run_dir(out, run);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SweepError::Write { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let config_path = dir.join("train.toml");
    let text = toml::to_string(&run.config).map_err(|e| SweepError::Point {
        label: label.to_string(),
        message: format!("its config is not writable as TOML: {e}"),
    })?;
    std::fs::write(&config_path, text).map_err(io(&config_path))?;
    let log_path = dir.join("train.log");
    // Appended to: a resumed run's log keeps what the interrupted start printed.
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(&log_path))?;
    let stderr = log.try_clone().map_err(io(&log_path))?;

    let mut cmd = launcher.command(run, &config_path);
    let started = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .status()
        .map_err(|source| SweepError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    let train_seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(SweepError::RunFailed {
            run_id: run.run_id.clone(),
            status: status.to_string(),
            log_tail: tail(&log_path, 12),
            log: log_path,
        });
    }

    let started = Instant::now();
    let (steps, sets) = evaluate(run)?;
    let result = RunResult {
        point: key.to_string(),
        label: label.to_string(),
        seed: run.seed,
        run_id: run.run_id.clone(),
        config: serde_json::to_value(&run.config).expect("a config serializes"),
        steps,
        train_seconds,
        eval_seconds: started.elapsed().as_secs_f64(),
        sets,
    };
    if let Some(which) = result.non_finite() {
        return Err(SweepError::NonFinite {
            run_id: run.run_id.clone(),
            which,
        });
    }
    Ok(result)
}

/// The newest committed checkpoint of `run`, evaluated: its step and its sets.
fn evaluate(run: &PlannedRun) -> Result<(u64, Vec<SetResult>), SweepError> {
    let cfg = &run.config;
    let failed = |source| SweepError::Evaluate {
        run_id: run.run_id.clone(),
        source: Box::new(source),
    };
    let device = parse_device(&cfg.train.device).map_err(failed)?;
    let trained = load_committed_model(&cfg.checkpoint.dir, &run.run_id, &cfg.model, device)
        .map_err(failed)?;
    let mut sets = Vec::new();
    if cfg.data.source == SourceKind::Synthetic {
        let report = HeldOut::of(cfg).report(&trained.model, device);
        sets.push(set_result(
            "mixed",
            SetKind::Mixed,
            &report.overall,
            report.overall_attention,
        ));
        for f in &report.per_factor {
            sets.push(set_result(
                f.factor.name(),
                SetKind::Factor,
                &f.verification,
                f.attention,
            ));
        }
    }
    let bins = BinEvaluator::load(&cfg.eval.bins).map_err(failed)?;
    for (name, v) in bins.run(&trained.model, device, trained.step) {
        sets.push(set_result(&name, SetKind::Bin, &v.accuracy, None));
    }
    Ok((trained.step, sets))
}

fn set_result(
    name: &str,
    kind: SetKind,
    v: &eval::Verification,
    attention: Option<eval::Attention>,
) -> SetResult {
    SetResult {
        name: name.to_string(),
        kind,
        accuracy: v.accuracy,
        std: v.std,
        attention: attention.map(|a| Attention {
            gamma_local: a.gamma.0,
            gamma_global: a.gamma.1,
            norm_local: a.norms.0,
            norm_global: a.norms.1,
            local_weight_vs_global_norm: Some(a.local_weight_vs_global_norm)
                .filter(|r| r.is_finite()),
        }),
    }
}

/// The last `lines` lines of the file at `path` (what a failed run printed last).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
