//! A rank's checkpoints in a coordinated run: its parts handed to the background uploader
//! (the step waits only for the hand-over), then acknowledged to the coordinator, which
//! commits the checkpoint once every rank has; and resuming from a committed one.

use std::collections::BTreeSet;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lgaf_proto::v1::{self, CheckpointObject};
use lgaf_proto::API_VERSION;
use lgaf_store::{BackgroundUploader, BlockingRunStore, UploadTicket};
use tracing::{info, info_span, warn};

use super::{Observer, Result, RunError};
use crate::coordinator_client::Client;
use crate::error::WorkerError;
use crate::trainer::Trainer;

/// The thread that acknowledges one checkpoint once its uploads are done.
pub(super) type AckThread = JoinHandle<Result<()>>;

/// Fault injection for the fault tests (`worker/tests/faults.rs`): with `LGAF_FAILPOINT` set to
/// `stall-upload@S`, this worker uploads the first object of its checkpoint at step S and
/// then stops (training thread included, heartbeats not), never acknowledging it: what a
/// process killed in the middle of its upload leaves in the store.
pub const FAILPOINT_ENV: &str = "LGAF_FAILPOINT";

fn stall_upload_at() -> Option<u64> {
    std::env::var(FAILPOINT_ENV)
        .ok()?
        .strip_prefix("stall-upload@")?
        .parse()
        .ok()
}

/// Serialises this rank's checkpoint parts, hands them to the background uploader (the
/// step waits only for that hand-over) and returns a thread that acknowledges them once
/// uploaded, and once `earlier` (the thread of the checkpoint before) has. A checkpoint it
/// abandons is counted in `observer`'s metrics.
pub(super) fn save(
    trainer: &Trainer,
    uploader: &BackgroundUploader,
    client: &Client,
    worker_id: &str,
    joined: &v1::JoinReply,
    earlier: Option<AckThread>,
    observer: &Observer,
) -> Result<AckThread> {
    let step = trainer.steps_done();
    let started = Instant::now();
    let (objects, state) = trainer.checkpoint_objects()?;
    if stall_upload_at() == Some(step) {
        let (key, bytes) = objects
            .into_iter()
            .next()
            .expect("a rank writes at least one object");
        let uploaded = uploader.submit(step, &key, Bytes::from(bytes)).wait();
        warn!(
            step,
            key,
            ok = uploaded.is_ok(),
            "{FAILPOINT_ENV}: the upload of the checkpoint at step {step} stops here"
        );
        loop {
            std::thread::park();
        }
    }
    // All at once: the parts are already in host memory, so none waits for another's
    // upload (only for an earlier checkpoint's, under the uploader's limit).
    let tickets: Vec<UploadTicket> = uploader.submit_all(
        step,
        objects
            .into_iter()
            .map(|(key, bytes)| (key, Bytes::from(bytes)))
            .collect(),
    );
    let handed_over = Instant::now();
    info!(
        step,
        stall_ms = (handed_over - started).as_millis() as u64,
        "checkpoint handed to the uploader"
    );
    let worker_id = worker_id.to_string();
    let generation = joined.generation;
    let epoch = step / joined.steps_per_epoch.max(1);
    let client = client.clone_handle();
    // The run's last checkpoint is what the job ends on: it waits however long it takes.
    let deadline_secs = trainer.config().checkpoint.upload_deadline_secs;
    // Bounded by the config (a week), so the sum cannot overflow; none: no limit anyway.
    let deadline = (deadline_secs > 0 && step < joined.total_steps)
        .then(|| handed_over.checked_add(Duration::from_secs(deadline_secs)))
        .flatten();
    let history = trainer.shared_history();
    let (metrics, rank) = (observer.metrics.clone(), observer.rank.clone());
    Ok(std::thread::spawn(move || {
        // Every step up to this checkpoint is in the run's history before it can be
        // committed: rank 0 acknowledges only after flushing it (here, off the training
        // thread, which a slow or absent store would otherwise hold up).
        let uploaded = wait_for_uploads(tickets, deadline).and_then(|objects| {
            if let Some(history) = &history {
                history.flush_and_wait()?;
            }
            Ok(objects)
        });
        // Acks go in step order: a later one overtaking an earlier (either may be waiting
        // out refusals for rate) would commit first, and the earlier would then be refused
        // as older than the last commit.
        if let Some(earlier) = earlier {
            joined_ack(earlier)?;
        }
        let acked = match (uploaded, deadline) {
            (Ok(acked), _) => acked,
            (Err(e), Some(_)) => {
                // Never acknowledged, so never committed: the coordinator drops it when a
                // later checkpoint commits. Whatever of it reaches the store is not listed
                // in any manifest, so nothing ever loads it. Any error is abandoned, not
                // only a missed deadline: the store's settings were proven at the start
                // (the coordinator's lease, this rank's resume), so what fails mid-run is
                // the store's health, and the run's last checkpoint still fails loudly.
                warn!(
                    step,
                    error = %e,
                    "checkpoint abandoned: its uploads or the run's history failed (after the \
                     store's retries) or were not done within checkpoint.upload_deadline_secs \
                     ({deadline_secs} s); training goes on and the next checkpoint is tried"
                );
                metrics.record_checkpoint_abandoned(&rank);
                return Ok(());
            }
            (Err(e), None) => return Err(RunError::Worker(e)),
        };
        let ack = v1::CheckpointAckRequest {
            api_version: API_VERSION,
            worker_id,
            generation,
            step,
            epoch,
            objects: acked,
            state_json: state
                .map(|s| serde_json::to_string(&s).expect("a run state serialises"))
                .unwrap_or_default(),
        };
        let reply = client.call("CheckpointAck", ack, |mut c, r| async move {
            c.checkpoint_ack(r).await
        })?;
        if reply.committed {
            info!(step, "checkpoint committed");
        }
        Ok(())
    }))
}

/// The objects of a checkpoint once every upload is done; otherwise the first failure, or
/// [`lgaf_store::StoreError::UploadOverdue`] for one still going at `deadline`.
fn wait_for_uploads(
    tickets: Vec<UploadTicket>,
    deadline: Option<Instant>,
) -> Result<Vec<CheckpointObject>, WorkerError> {
    tickets
        .into_iter()
        .map(|ticket| {
            let info = match deadline {
                Some(deadline) => ticket.wait_until(deadline),
                None => ticket.wait(),
            }
            .map_err(WorkerError::from)?;
            Ok(CheckpointObject {
                key: info.key,
                size: info.size,
                sha256: info.sha256,
            })
        })
        .collect()
}

/// The outcome of an ack thread.
pub(super) fn joined_ack(handle: AckThread) -> Result<()> {
    handle
        .join()
        .map_err(|_| RunError::Other("a checkpoint thread panicked".into()))?
}

/// Loads the committed checkpoint at `step`: only the objects this rank needs, each
/// verified against the manifest's checksum.
pub(super) fn resume(
    trainer: &mut Trainer,
    store: &BlockingRunStore,
    step: u64,
    num_classes: u64,
) -> Result<()> {
    let manifest = store.manifest(step)?;
    let wanted: BTreeSet<String> = trainer
        .objects_to_resume(i64::from(manifest.world_size), num_classes as i64)
        .into_iter()
        .collect();
    let loaded = info_span!("download", objects = wanted.len())
        .in_scope(|| store.load_with(step, |object| wanted.contains(&object.key)))?;
    let run = store.run();
    let source = format!("{}/{}", run.store().url(), run.step_prefix(step));
    info_span!("load")
        .in_scope(|| trainer.restore_from_objects(&source, &loaded.manifest, &loaded.objects))?;
    Ok(())
}
