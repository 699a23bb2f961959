//! `lgaf train`: one process (CPU or one GPU) trained from a TOML config, with a progress
//! bar, periodic log lines and evaluations; `lgaf demo` runs the same loop.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use lgaf_store::history::{self, EvalSet, Evaluation, Outcome, RunFinished, TarAtFar};
use lgaf_telemetry::opentelemetry::KeyValue;
use lgaf_telemetry::Telemetry;
use tracing::{info, info_span};

use crate::checkpoint::StartFrom;
use crate::config::SourceKind;
use crate::eval_sets::BinEvaluator;
use crate::metrics::{Rank, WorkerMetrics};
use crate::progress::training_bar;
use crate::{StepReport, TrainConfig, Trainer};

#[derive(Args)]
pub struct TrainArgs {
    /// TOML config (every key and its default: configs/train.toml). Without it, the
    /// embedded defaults; `LGAF__SECTION__KEY` variables override either.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides train.device.
    #[arg(long)]
    device: Option<String>,
    /// Overrides train.max_steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Overrides checkpoint.dir: the checkpoint store, a directory, file:///dir or
    /// s3://bucket/prefix.
    #[arg(long, value_name = "DIR_OR_URL")]
    checkpoint_dir: Option<String>,
    /// Overrides checkpoint.run_id: the run's name in the store.
    #[arg(long)]
    run_id: Option<String>,
    /// Start from step 0 although the run holds checkpoints that do not verify (they are
    /// moved aside to runs/<run_id>/unverified/ in the store, for inspection). Without it,
    /// such a run is an error; with a checkpoint that verifies, --fresh is refused.
    #[arg(long)]
    fresh: bool,
}

pub(super) fn train(a: TrainArgs, telemetry: &mut Telemetry) -> Result<()> {
    let mut cfg = TrainConfig::load(a.config.as_deref())?;
    if let Some(d) = a.device {
        cfg.train.device = d;
    }
    if let Some(s) = a.max_steps {
        cfg.train.max_steps = s;
    }
    if let Some(dir) = a.checkpoint_dir {
        cfg.checkpoint.dir = dir;
    }
    if let Some(run_id) = a.run_id {
        cfg.checkpoint.run_id = run_id;
    }
    let synthetic = cfg.data.source == SourceKind::Synthetic;
    let from = if a.fresh {
        StartFrom::Fresh
    } else {
        StartFrom::Latest
    };
    let run_id = cfg.checkpoint.run_id.clone();
    let device = cfg.train.device.clone();
    let mut trainer = Trainer::start(cfg, from)?;
    telemetry.start_export(vec![
        KeyValue::new("lgaf.run.id", run_id),
        KeyValue::new("lgaf.device", device),
        KeyValue::new("host.name", lgaf_proto::this_host_name()),
        KeyValue::new("process.pid", i64::from(std::process::id())),
    ])?;
    let metrics = WorkerMetrics::new(&telemetry.meter("lgaf"));
    let _run = info_span!("run", run_id = trainer.config().checkpoint.run_id).entered();
    let trained = run_observed(&mut trainer, &metrics);
    if let Some(history) = trainer.history() {
        history.record(RunFinished {
            step: trainer.steps_done(),
            outcome: if trained.is_ok() {
                Outcome::Completed
            } else {
                Outcome::Failed
            },
            detail: trained.as_ref().err().map(|e| format!("{e:#}")),
            time: history::now(),
        });
    }
    trained?;
    if synthetic {
        let v = trainer.held_out().verify(trainer.model(), trainer.device());
        let every = trainer.config().eval.every_steps;
        if every == 0 || !trainer.steps_done().is_multiple_of(every) {
            // Not already recorded by the loop at this step.
            record_evaluation(&trainer, trainer.steps_done(), &v);
        }
        out!(
            "held-out synthetic identities: verification {:.2}% +- {:.2}",
            v.accuracy * 100.0,
            v.std * 100.0
        );
    }
    Ok(())
}

/// Runs the trainer with the progress bar and periodic log lines and evaluations.
pub(super) fn run_with_progress(trainer: &mut Trainer) -> Result<()> {
    let unobserved = lgaf_telemetry::opentelemetry::metrics::NoopMeterProvider::new();
    use lgaf_telemetry::opentelemetry::metrics::MeterProvider;
    run_observed(trainer, &WorkerMetrics::new(&unobserved.meter("lgaf")))
}

/// [`run_with_progress`], recording each step and evaluation in `metrics`.
pub(super) fn run_observed(trainer: &mut Trainer, metrics: &WorkerMetrics) -> Result<()> {
    let rank = Rank::default();
    metrics.joined(&rank, 0);
    let total = trainer.total_steps();
    let cfg = trainer.config().clone();
    info!(
        arch = cfg.model.arch.name(),
        fusion = cfg.model.fusion.name(),
        width = cfg.model.width,
        device = ?trainer.device(),
        steps = total,
        from_step = trainer.steps_done(),
        "training"
    );
    let bins = BinEvaluator::load(&cfg.eval.bins)?;
    let bar = training_bar(total, trainer.steps_done(), cfg.train.progress);
    let mut window = (0usize, 0.0f64); // images and seconds since the last log line
    trainer.run(|r: &StepReport, t: &Trainer| {
        metrics.record_step(&rank, r);
        window.0 += r.batch_size;
        window.1 += r.step_time.as_secs_f64();
        let speed = r.batch_size as f64 / r.step_time.as_secs_f64();
        bar.set_position(r.step);
        bar.set_message(format!(
            "loss {:.3} | {:.0} img/s | lr {:.4}",
            r.loss, speed, r.lr
        ));
        if r.step.is_multiple_of(cfg.train.log_every.max(1)) || r.step == r.total_steps {
            let (gl, gg) = r.gamma.unwrap_or((f64::NAN, f64::NAN));
            info!(
                step = r.step,
                epoch = r.epoch,
                loss = format!("{:.4}", r.loss),
                // Through f32: 0.01, not 0.010000000000000002.
                lr = format!("{}", r.lr as f32),
                samples_per_s = format!("{:.1}", window.0 as f64 / window.1),
                data_wait_ms = r.data_wait.as_millis() as u64,
                // What one loader thread can build per second: the headroom over the step.
                loader_images_per_thread_s = format!("{:.0}", r.loader.images_per_thread_s()),
                bad_records = r.loader.bad_records,
                gamma_local = format!("{gl:.3}"),
                gamma_global = format!("{gg:.3}"),
                skipped = r.skipped,
                "step"
            );
            window = (0, 0.0);
        }
        let every = cfg.eval.every_steps;
        if every > 0 && r.step.is_multiple_of(every) {
            // Held-out *synthetic* identities mean something only when training on them.
            if cfg.data.source == SourceKind::Synthetic {
                let v = info_span!("evaluation", step = r.step)
                    .in_scope(|| t.held_out().verify(t.model(), t.device()));
                metrics.record_eval(&rank, "held-out", v.accuracy);
                record_evaluation(t, r.step, &v);
                info!(
                    step = r.step,
                    accuracy = format!("{:.4}", v.accuracy),
                    std = format!("{:.4}", v.std),
                    "held-out verification"
                );
            }
            let sets = info_span!("evaluation", step = r.step)
                .in_scope(|| bins.run(t.model(), t.device(), r.step));
            record_bins(t, metrics, &rank, r.step, &sets);
        }
    })?;
    bar.finish_and_clear();
    let every = cfg.eval.every_steps;
    let evaluated_last_step = every > 0 && trainer.steps_done().is_multiple_of(every);
    if !bins.is_empty() && !evaluated_last_step {
        let step = trainer.steps_done();
        let sets = info_span!("evaluation", step)
            .in_scope(|| bins.run(trainer.model(), trainer.device(), step));
        record_bins(trainer, metrics, &rank, step, &sets);
    }
    Ok(())
}

/// An evaluation on the held-out synthetic identities, in the run's history.
fn record_evaluation(trainer: &Trainer, step: u64, v: &crate::eval::Verification) {
    if let Some(history) = trainer.history() {
        history.record(Evaluation {
            step,
            sets: vec![EvalSet {
                name: "held-out".into(),
                factor: None,
                pairs: None,
                accuracy: v.accuracy,
                std: v.std,
                threshold: v.threshold,
                tar_at_far: None,
                gamma_local: None,
                gamma_global: None,
            }],
            time: history::now(),
        });
    }
}

/// The verification `.bin` sets evaluated at `step`, in the metrics and the run's history.
fn record_bins(
    trainer: &Trainer,
    metrics: &WorkerMetrics,
    rank: &Rank,
    step: u64,
    sets: &[(String, lgaf_eval::verification::Verification)],
) {
    if sets.is_empty() {
        return;
    }
    for (name, v) in sets {
        metrics.record_eval(rank, name, v.accuracy.accuracy);
    }
    if let Some(history) = trainer.history() {
        history.record(Evaluation {
            step,
            sets: sets
                .iter()
                .map(|(name, v)| EvalSet {
                    name: name.clone(),
                    factor: None,
                    pairs: None,
                    accuracy: v.accuracy.accuracy,
                    std: v.accuracy.std,
                    threshold: v.accuracy.threshold,
                    tar_at_far: Some(TarAtFar {
                        far_target: v.tar_at_far.far_target,
                        tar: v.tar_at_far.tar,
                        tar_std: v.tar_at_far.tar_std,
                        far: v.tar_at_far.far,
                    }),
                    gamma_local: None,
                    gamma_global: None,
                })
                .collect(),
            time: history::now(),
        });
    }
}
