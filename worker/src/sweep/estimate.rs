//! The sweep's run time, estimated before it starts: each pending point's training speed is
//! measured here on a few steps, and its runs' images are divided by it.
//!
//! What it assumes: the machine trains as many images per second in the sweep as in this
//! process now, however many runs or workers share it (true on the CPU, where they share
//! the cores; an overestimate for `--workers` on several GPUs); evaluation runs
//! forward-only at three times the training speed; each process takes a few seconds to
//! start. A pending run counts whole even when it resumes part-trained, and evaluation on
//! `.bin` files is not counted.

use std::time::Duration;

use lgaf_data::synth::Factor;

use super::plan::{Plan, PlannedRun};
use super::SweepError;
use crate::checkpoint::StartFrom;
use crate::config::SourceKind;
use crate::Trainer;

/// Steps timed per point; the first (allocations, caches) is left out.
const CALIBRATION_STEPS: u64 = 3;
/// Starting a training process and loading the evaluation's checkpoint.
const START_SECONDS: f64 = 3.0;
/// Forward-only evaluation against a training step's forward and backward.
const EVAL_SPEEDUP: f64 = 3.0;

/// One point's estimate.
#[derive(Clone, Debug)]
pub struct PointEstimate {
    pub label: String,
    /// Its runs not finished yet.
    pub runs: usize,
    /// Steps of one run.
    pub steps: u64,
    /// Training images per second, measured.
    pub images_per_second: f64,
    /// Training, evaluation and start-up of one run.
    pub seconds_per_run: f64,
}

#[derive(Clone, Debug)]
pub struct Estimate {
    pub points: Vec<PointEstimate>,
}

impl Estimate {
    pub fn total(&self) -> Duration {
        Duration::from_secs_f64(
            self.points
                .iter()
                .map(|p| p.runs as f64 * p.seconds_per_run)
                .sum(),
        )
    }
}

/// Times a few steps of each point that has `pending` runs. `workers`: the world size of
/// each job (`None`: one process).
pub fn estimate(
    plan: &Plan,
    pending: &[&PlannedRun],
    workers: Option<u32>,
) -> Result<Estimate, SweepError> {
    let scratch = tempfile::tempdir().map_err(|source| SweepError::Write {
        path: std::env::temp_dir(),
        source,
    })?;
    let mut points = Vec::new();
    for (index, planned) in plan.points.iter().enumerate() {
        let runs = pending.iter().filter(|r| r.point == index).count();
        if runs == 0 {
            continue;
        }
        let mut cfg = planned.config.clone();
        cfg.train.progress = false;
        cfg.checkpoint.dir = scratch.path().join(index.to_string()).display().to_string();
        cfg.checkpoint.run_id = "calibration".into();
        let failed = |source| SweepError::Calibrate {
            label: planned.point.label.clone(),
            source: Box::new(source),
        };
        let mut trainer = Trainer::start(cfg.clone(), StartFrom::Fresh).map_err(failed)?;
        let batch = cfg.data.batch_size as f64;
        let world = f64::from(workers.unwrap_or(1));
        let steps = match workers {
            None => trainer.total_steps(),
            // As the coordinator's schedule: each rank's share of the samples in batches.
            Some(w) => {
                let per_epoch =
                    (trainer.num_samples() as u64 / u64::from(w)) / cfg.data.batch_size as u64;
                let all = per_epoch.saturating_mul(cfg.train.epochs as u64);
                match cfg.train.max_steps {
                    0 => all,
                    max => max.min(all),
                }
            }
        };
        let mut times = Vec::new();
        trainer
            .run_until(CALIBRATION_STEPS.min(trainer.total_steps()), |_, r| {
                times.push(r.step_time.as_secs_f64());
                Ok(())
            })
            .map_err(failed)?;
        let timed = if times.len() > 1 {
            &times[1..]
        } else {
            &times[..]
        };
        let step_seconds = timed.iter().sum::<f64>() / timed.len().max(1) as f64;
        let images_per_second = batch / step_seconds.max(1e-9);
        let train = steps as f64 * batch * world / images_per_second;
        let eval_images = if cfg.data.source == SourceKind::Synthetic {
            // The mixed set and one per factor; two images a pair, each also flipped.
            (Factor::ALL.len() + 1) as f64 * cfg.eval.pairs as f64 * 2.0 * 2.0
        } else {
            0.0
        };
        let eval = eval_images / (images_per_second * EVAL_SPEEDUP);
        points.push(PointEstimate {
            label: planned.point.label.clone(),
            runs,
            steps,
            images_per_second,
            seconds_per_run: train + eval + START_SECONDS,
        });
    }
    Ok(Estimate { points })
}
