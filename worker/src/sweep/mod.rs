//! `lgaf sweep`: one training job per point of a grid over config keys, for several seeds,
//! each evaluated on the held-out synthetic identities per nuisance factor (and on the
//! config's `.bin` files); the results in `<out>/results.json`, summarised over seeds as
//! Markdown (`results.md`) and as a page (`report.html`).
//!
//! Resumable by construction: a run's result is in `results.json` once it is evaluated, so
//! it is not run again; a run interrupted in training resumes from its newest checkpoint in
//! `<out>/store`, because its training process does (`lgaf train` and the coordinator both
//! resume a run id they find in their store).
//!
//! Files: `grid` (the grid file), `plan` (points resolved into configs and runs), `estimate`
//! (the run time before starting), `run` (one training process and its evaluation).

mod estimate;
pub mod grid;
mod plan;
mod run;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use lgaf_report::sweep::{RunResult, SweepResults};
use lgaf_report::ReportError;

pub use estimate::{Estimate, PointEstimate};
pub use plan::{Plan, PlannedPoint, PlannedRun};
pub use run::Launcher;

use crate::error::WorkerError;
use crate::TrainConfig;

/// What can stop a sweep; each names the file, point or run.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("grid file {path}: {message}")]
    Grid { path: PathBuf, message: String },

    #[error("base config: {0}")]
    Base(#[source] Box<WorkerError>),

    #[error("grid point `{label}`: {message}")]
    Point { label: String, message: String },

    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "cannot start {program}: {source} (lgaf-coordinator is looked for beside lgaf: `make \
         build` puts both in target/release)"
    )]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "run {run_id} failed ({status}); its log is {log}, which ends:\n{log_tail}\nMend what \
         the log names, then run the sweep again: finished runs are kept, and this one \
         resumes from its newest checkpoint"
    )]
    RunFailed {
        run_id: String,
        status: String,
        log: PathBuf,
        log_tail: String,
    },

    #[error("timing grid point `{label}` for the estimate: {source}")]
    Calibrate {
        label: String,
        #[source]
        source: Box<WorkerError>,
    },

    #[error("evaluating run {run_id}: {source}")]
    Evaluate {
        run_id: String,
        #[source]
        source: Box<WorkerError>,
    },

    #[error(
        "run {run_id}: its newest checkpoint, of step {step}, does not verify ({why}); it is \
         not evaluated in place of the run's end. Move the run's folder out of <out>/store/runs \
         to train it again"
    )]
    LastCheckpointUnverified {
        run_id: String,
        step: u64,
        why: String,
    },

    #[error(
        "run {run_id}: the evaluation gave {which}, which results.json cannot hold; the run \
         probably diverged (its log says)"
    )]
    NonFinite { run_id: String, which: String },

    #[error(
        "another lgaf sweep is writing {path} (its lock is held); wait for it, or give this \
         one another --out"
    )]
    Busy { path: PathBuf },

    #[error(transparent)]
    Results(#[from] ReportError),
}

/// What a sweep is asked to do.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// The base config (`None`: the embedded defaults); grid points override its keys.
    pub base: Option<PathBuf>,
    pub grid: PathBuf,
    pub out: PathBuf,
    /// Runs per point, with seeds `train.seed`, `train.seed + 1`, ...
    pub seeds: u32,
    pub launcher: Launcher,
    /// Runs in flight at once.
    pub jobs: usize,
}

/// A sweep ready to run: its plan, and the results so far.
pub struct Sweep {
    options: SweepOptions,
    plan: Plan,
    results: SweepResults,
    /// `<out>/.lock`, held while this sweep lives: one sweep per folder, since two would
    /// train the same runs into the same store and overwrite each other's results.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Sweep {
    /// Reads the base config, the grid and the results so far; checks every point's config.
    pub fn prepare(options: SweepOptions) -> Result<Self, SweepError> {
        // The page is written after the runs: a missing font is found before the first.
        lgaf_report::ensure_font()?;
        let base = TrainConfig::load(options.base.as_deref())
            .map_err(|e| SweepError::Base(Box::new(e)))?;
        let groups = grid::load(&options.grid)?;
        std::fs::create_dir_all(&options.out).map_err(|source| SweepError::Write {
            path: options.out.clone(),
            source,
        })?;
        let lock = lock(&options.out)?;
        let out = std::path::absolute(&options.out).map_err(|source| SweepError::Write {
            path: options.out.clone(),
            source,
        })?;
        let plan = Plan::new(&base, &groups, options.seeds.max(1), &out.join("store"))?;
        let mut results = SweepResults::load(&results_path(&options.out))?;
        results.groups = plan.groups.clone();
        results.seeds = plan.seeds.clone();
        Ok(Sweep {
            options,
            plan,
            results,
            _lock: lock,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Runs without a result yet, in plan order.
    pub fn pending(&self) -> Vec<&PlannedRun> {
        self.plan
            .runs
            .iter()
            .filter(|r| {
                let key = &self.plan.points[r.point].point.key;
                self.results.run(key, r.seed).is_none()
            })
            .collect()
    }

    /// The time the pending runs will take, measured on a few steps of each point.
    pub fn estimate(&self) -> Result<Estimate, SweepError> {
        estimate::estimate(&self.plan, &self.pending(), self.options.launcher.workers)
    }

    /// Trains and evaluates every pending run, `jobs` at a time, saving the results after
    /// each; `on_finished` hears of each run as it is saved. After a failure no new run
    /// starts, those in flight finish, and the first error is returned.
    pub fn run(&mut self, on_finished: impl Fn(&RunResult) + Sync) -> Result<(), SweepError> {
        let queue: Mutex<VecDeque<PlannedRun>> =
            Mutex::new(self.pending().into_iter().cloned().collect());
        let results = Mutex::new(std::mem::take(&mut self.results));
        let failure: Mutex<Option<SweepError>> = Mutex::new(None);
        let stop = AtomicBool::new(false);
        let (options, plan) = (&self.options, &self.plan);
        let one_job = || {
            while !stop.load(Ordering::SeqCst) {
                let Some(run) = queue.lock().expect("queue").pop_front() else {
                    break;
                };
                let point = &plan.points[run.point].point;
                let finished = run::train_and_evaluate(
                    &options.launcher,
                    &options.out,
                    &run,
                    &point.label,
                    &point.key,
                )
                .and_then(|result| {
                    let mut all = results.lock().expect("results");
                    all.record(result.clone());
                    all.save(&results_path(&options.out))?;
                    on_finished(&result);
                    Ok(())
                });
                if let Err(e) = finished {
                    stop.store(true, Ordering::SeqCst);
                    failure.lock().expect("failure").get_or_insert(e);
                }
            }
        };
        std::thread::scope(|s| {
            for _ in 0..options.jobs.max(1) {
                s.spawn(one_job);
            }
        });
        self.results = results.into_inner().expect("results");
        match failure.into_inner().expect("failure") {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Writes `results.json` (with the grid's groups), `results.md` and `report.html`, and
    /// returns the Markdown.
    pub fn write_summary(&self) -> Result<String, SweepError> {
        let out = &self.options.out;
        self.results.save(&results_path(out))?;
        let markdown = lgaf_report::sweep::markdown(&lgaf_report::sweep::summarize(&self.results));
        let md_path = out.join("results.md");
        std::fs::write(&md_path, &markdown).map_err(|source| SweepError::Write {
            path: md_path,
            source,
        })?;
        let title = out.display().to_string();
        lgaf_report::sweep::write_html(&self.results, &title, &out.join("report.html"))?;
        Ok(markdown)
    }
}

/// Takes `<out>/.lock`, or says who holds it.
fn lock(out: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, SweepError> {
    let path = out.join(".lock");
    let file = std::fs::File::create(&path).map_err(|source| SweepError::Write {
        path: path.clone(),
        source,
    })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        SweepError::Busy {
            path: out.to_path_buf(),
        }
    })
}

/// `<out>/results.json`.
pub fn results_path(out: &Path) -> PathBuf {
    out.join("results.json")
}
