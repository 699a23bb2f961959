//! Text documents from outside: the store's checkpoint manifests, rank 0's run state, the
//! coordinator's saved job (`job.json`), and the training config (TOML).

use lgaf_coordinator::job::{CommittedCheckpoint, Job, JobSnapshot};
use std::sync::OnceLock;

use lgaf_store::{Manifest, RunState};

/// The first byte picks the document; the rest is its bytes.
pub fn store_documents(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => manifest(bytes),
        1 => {
            if let Ok(text) = std::str::from_utf8(bytes) {
                let _ = RunState::from_json(text);
            }
        }
        _ => job_snapshot(bytes),
    }
}

/// A manifest, and a job resumed from the checkpoint it describes, as a coordinator
/// starting on the run does.
fn manifest(bytes: &[u8]) {
    let Ok(manifest) = Manifest::from_json(bytes) else {
        return;
    };
    let _ = manifest.total_bytes();
    let from = CommittedCheckpoint {
        step: manifest.step,
        epoch: manifest.epoch,
        steps_per_epoch: manifest.state.steps_per_epoch,
        manifest: "MANIFEST.json".into(),
        folder_step: 0,
    };
    // With the saved job of a run that trained under the same settings, so that the
    // schedule is recomputed and the manifest's step mapped onto it.
    if let Ok(job) = Job::resume(crate::seeds::job_settings(), from, Some(finished_job())) {
        let _ = job.status(1);
    }
}

/// The job of the seeds' finished session: made once, the same for every input.
fn finished_job() -> &'static Job {
    static FINISHED: OnceLock<Job> = OnceLock::new();
    FINISHED.get_or_init(|| crate::seeds::finished_session().job)
}

/// A saved job, as the previous job of a coordinator resuming the run with the same
/// settings (so that its facts and schedule are taken).
fn job_snapshot(bytes: &[u8]) {
    let Ok(snapshot) = serde_json::from_slice::<JobSnapshot>(bytes) else {
        return;
    };
    // The checkpoint it last committed, as the store would list it.
    let from = snapshot
        .job
        .last_commit()
        .cloned()
        .unwrap_or(CommittedCheckpoint {
            step: 1,
            epoch: 0,
            steps_per_epoch: 0,
            manifest: "MANIFEST.json".into(),
            folder_step: 0,
        });
    let settings = snapshot.job.settings().clone();
    if let Ok(job) = Job::resume(settings, from, Some(&snapshot.job)) {
        let _ = job.status(snapshot.saved_at_ms);
    }
}

/// A training config, as `--config` or the coordinator's hand-over gives it.
pub fn config_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lgaf_worker::TrainConfig::from_toml_str(text);
    }
}
