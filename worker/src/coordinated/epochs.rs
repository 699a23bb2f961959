//! The epoch loop of a generation: ask the coordinator for each epoch's plan (its end and
//! its checkpoint steps), train to it, report progress (rank 0), hand checkpoints to the
//! uploader, and stop when the heartbeat says the generation or the job is over.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lgaf_proto::v1;
use lgaf_proto::API_VERSION;
use lgaf_store::BlockingRunStore;
use tracing::{info, info_span, warn};

use super::checkpoint::{self, AckThread};
use super::heartbeat::{Heartbeat, Stopped};
use super::{Observer, Result, RunError};
use crate::coordinator_client::{bounded, Client};
use crate::trainer::{StepReport, Trainer};
use crate::WorkerError;

/// Trains `trainer` to the job's last step, epoch by epoch; returns the steps completed.
/// Every checkpoint is acknowledged before this returns, so the last one is committed
/// before Finish.
pub(super) fn train(
    trainer: &mut Trainer,
    client: &Client,
    registered: &v1::RegisterReply,
    joined: &v1::JoinReply,
    store: &BlockingRunStore,
    heartbeat: Heartbeat,
    observer: &Observer,
) -> Result<u64> {
    // Checkpoints are spans of the generation, not of the step they follow (a rank's
    // unsampled step would take them out of the trace).
    let generation_span = tracing::Span::current();
    let uploader = store.uploader(1 << 30)?;
    // The uploader's counters at the last checkpoint: each checkpoint's metrics are the
    // difference.
    let mut uploads_before = uploader.stats();
    // The thread acknowledging the newest checkpoint; it waits for the one before.
    let last_ack: Arc<Mutex<Option<AckThread>>> = Arc::default();
    let total = joined.total_steps;
    let spe = joined.steps_per_epoch.max(1);
    // The job's rate: a step is the global batch, whichever ranks hold it.
    let global_batch = trainer.config().data.batch_size * joined.data_shard_count() as usize;
    let log_every = trainer.config().train.log_every.max(1);
    let mut window = (0usize, Duration::ZERO);
    let result = (|| -> Result<()> {
        while trainer.steps_done() < total {
            let plan = epoch_plan(client, registered, joined, trainer.steps_done() / spe)?;
            let checkpoints: BTreeSet<u64> = plan.checkpoint_steps.iter().copied().collect();
            trainer.run_until(plan.end_step.min(total), |trainer, report| {
                heartbeat.record_step(report.step);
                observer.metrics.record_step(&observer.rank, report);
                if let Some(stopped) = heartbeat.stopped() {
                    return Err(WorkerError::Collective {
                        step: report.step,
                        message: stopped.to_string(),
                    });
                }
                window.0 += global_batch;
                window.1 += report.step_time;
                // Rank 0 reports every `train.log_every` steps, and the first and last; not
                // an fp16 step the loss scaler skipped (its loss is not finite, and the
                // coordinator refuses such numbers).
                let step = report.step;
                let due = step == 1 || step == total || step.is_multiple_of(log_every);
                if joined.rank == 0 && due && report.loss.is_finite() {
                    report_progress(client, registered, joined.generation, report, window);
                    window = (0, Duration::ZERO);
                }
                if checkpoints.contains(&step) {
                    let mut last_ack = last_ack.lock().expect("last_ack");
                    let earlier = last_ack.take();
                    let id = &registered.worker_id;
                    let _checkpoint =
                        info_span!(parent: &generation_span, "checkpoint", step).entered();
                    let stall_started = Instant::now();
                    let handle =
                        checkpoint::save(trainer, &uploader, client, id, joined, earlier, observer)
                            .map_err(|e| match e {
                                // A peer lost while the parts were gathered (a broadcast): that
                                // ends the generation, like any failed collective, not the job.
                                RunError::Worker(failed @ WorkerError::Collective { .. }) => failed,
                                e => WorkerError::Checkpoint {
                                    path: registered.store_url.clone().into(),
                                    message: e.to_string(),
                                },
                            })?;
                    *last_ack = Some(handle);
                    let metrics = &observer.metrics;
                    metrics.record_checkpoint_stall(&observer.rank, stall_started.elapsed());
                    let uploads = uploader.stats();
                    metrics.record_uploads(&observer.rank, &uploads_before, &uploads);
                    uploads_before = uploads;
                }
                Ok(())
            })?;
        }
        Ok(())
    })();
    if let Some(handle) = last_ack.lock().expect("last_ack").take() {
        checkpoint::joined_ack(handle)?;
    }
    let stats = uploader.stats();
    // The uploads that finished since the last checkpoint's hand-over.
    observer
        .metrics
        .record_uploads(&observer.rank, &uploads_before, &stats);
    info!(
        uploads = stats.completed,
        stall_ms = stats.stall_total.as_millis() as u64,
        upload_ms = stats.upload_total.as_millis() as u64,
        "checkpoint uploads: the training step waited only for the stall"
    );
    // The coordinator's word overrides what the loop saw: the job may be over.
    match heartbeat.stopped() {
        Some(Stopped::JobOver { why, state, error }) => {
            return Err(match state {
                v1::JobState::Finished => RunError::JobFinished(why),
                v1::JobState::Failed => RunError::JobFailed(error),
                v1::JobState::Cancelled => RunError::JobCancelled(error),
                // An older coordinator: settle asks it.
                v1::JobState::Waiting | v1::JobState::Running | v1::JobState::Unspecified => {
                    RunError::JobOver(why)
                }
            });
        }
        Some(Stopped::CoordinatorGone(why)) => return Err(RunError::CoordinatorGone(why)),
        Some(Stopped::Rejoin(_)) | None => {}
    }
    drop(heartbeat);
    result?;
    Ok(trainer.steps_done())
}

/// The coordinator's plan of `epoch`: where it ends and which steps are checkpoints.
fn epoch_plan(
    client: &Client,
    registered: &v1::RegisterReply,
    joined: &v1::JoinReply,
    epoch: u64,
) -> Result<v1::EpochPlan> {
    let request = v1::EpochPlanRequest {
        api_version: API_VERSION,
        worker_id: registered.worker_id.clone(),
        generation: joined.generation,
        epoch,
    };
    Ok(client.call("GetEpochPlan", request, |mut c, r| async move {
        c.get_epoch_plan(r).await
    })?)
}

/// Rank 0's numbers for the coordinator; `window` is (samples, time) since the last report.
/// Bounded and best-effort: a report never holds up training.
fn report_progress(
    client: &Client,
    registered: &v1::RegisterReply,
    generation: u64,
    report: &StepReport,
    window: (usize, Duration),
) {
    let (gamma_local, gamma_global) = report.gamma.unwrap_or((0.0, 0.0));
    let per_s = window.0 as f64 / window.1.as_secs_f64().max(1e-9);
    let progress = v1::ProgressReport {
        api_version: API_VERSION,
        worker_id: registered.worker_id.clone(),
        generation,
        step: report.step,
        epoch: report.epoch,
        loss: report.loss,
        lr: report.lr,
        samples_per_s: per_s,
        data_wait_ms: report.data_wait.as_secs_f64() * 1e3,
        bad_records: report.loader.bad_records,
        gamma_local,
        gamma_global,
    };
    let sent = client.rt.block_on(bounded(
        "ReportProgress",
        Duration::from_secs(5),
        client.send("ReportProgress", progress, |mut c, r| async move {
            c.report_progress(r).await
        }),
    ));
    if let Err(status) = sent {
        warn!(error = %status.message(), "progress report failed");
    }
}
