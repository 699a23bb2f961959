//! Where commits and job snapshots go. The service only sees the two traits;
//! [`lgaf_store::RunStore`] implements both, so the store is whatever
//! [`lgaf_store::Store::from_url`] opens: a local directory (`file:///abs/dir` or a plain
//! path) or S3 (`s3://bucket/prefix`, configured by the `AWS_*` environment variables).
//!
//! Layout (that of `lgaf-store`):
//!
//! ```text
//! runs/<run_id>/job.json                          the coordinator's JobSnapshot
//! runs/<run_id>/ckpt/<step:012>/<key>             objects, uploaded by the ranks
//! runs/<run_id>/ckpt/<step:012>/MANIFEST.json     the commit, written last by the coordinator
//! ```
//!
//! Key convention: a rank uploads each object with [`RunStore::put_object`]`(step, key, ..)`
//! where `key` is relative to the step folder (`model.safetensors`,
//! `classifier/rank-00001.safetensors`), and acknowledges exactly that `key` (the
//! [`lgaf_store::ObjectInfo::key`] `put_object` returns) with its size and SHA-256. The
//! manifest lists those keys as they are; `RunStore::commit` checks each one exists at
//! `runs/<run_id>/ckpt/<step:012>/<key>` with the acknowledged size.

use std::future::Future;

use bytes::Bytes;
use lgaf_store::{Manifest, ManifestObject, ManifestSummary, RunStore};
use tracing::warn;

use crate::job::{CommitRequest, CommittedCheckpoint, JobSnapshot, SNAPSHOT_FORMAT};

pub use lgaf_store::MANIFEST;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object store refused or failed: an object missing or of another size (the
    /// checkpoint is not committed), a backend error, a bad key or URL.
    #[error(transparent)]
    Store(#[from] lgaf_store::StoreError),
    /// Rank 0's run state is missing or not a valid run state: no manifest is written.
    #[error("cannot commit step {step} of run `{run_id}`: rank 0's state_json {problem}")]
    BadState {
        run_id: String,
        step: u64,
        problem: String,
    },
    /// The saved job state cannot be read back.
    #[error("job state `{key}` in {url}: {problem}")]
    BadJobState {
        url: String,
        key: String,
        problem: String,
    },
}

/// Commits checkpoints: writes the manifest of `commit` (every object with its size and
/// checksum, rank 0's state) after checking every object is there, and returns the
/// manifest's key, which workers later receive as `resume_manifest`.
pub trait CheckpointCommitter: Send + Sync + 'static {
    fn commit(
        &self,
        commit: CommitRequest,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;
}

/// Saves the job, and reads back what an earlier coordinator of the run saved.
pub trait JobStatePersistence: Send + Sync + 'static {
    fn save(&self, snapshot: JobSnapshot) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn load(
        &self,
        run_id: &str,
    ) -> impl Future<Output = Result<Option<JobSnapshot>, StoreError>> + Send;
}

/// `run` itself, or the same store for another run id.
fn for_run(run: &RunStore, run_id: &str) -> Result<RunStore, StoreError> {
    if run.run_id() == run_id {
        Ok(run.clone())
    } else {
        Ok(RunStore::new(run.store().clone(), run_id)?)
    }
}

/// The manifest of a commit: the acknowledged objects as they are (keys relative to the
/// step folder) and rank 0's state parsed as JSON.
pub fn manifest_of(c: &CommitRequest) -> Result<Manifest, StoreError> {
    let bad_state = |problem: String| StoreError::BadState {
        run_id: c.run_id.clone(),
        step: c.step,
        problem,
    };
    if c.state_json.trim().is_empty() {
        return Err(bad_state("is missing".into()));
    }
    let state = lgaf_store::RunState::from_json(&c.state_json)
        .map_err(|e| bad_state(format!("is not a valid run state: {e}")))?;
    let objects = c
        .objects
        .iter()
        .map(|o| ManifestObject {
            key: o.key.clone(),
            size: o.size,
            sha256: o.sha256.clone(),
            rank: o.rank,
        })
        .collect();
    Ok(Manifest::new(
        c.run_id.clone(),
        c.step,
        c.epoch,
        c.world_size,
        objects,
        state,
    ))
}

/// Runs `f` to completion on the current tokio runtime, from a blocking thread.
///
/// `RunStore::commit` and `RunStore::prune` return futures that are `Send`, but rustc cannot
/// prove it (their `buffer_unordered` streams of closures over references run into
/// rust-lang/rust#102211, "implementation of `FnOnce` is not general enough"), and the
/// service needs `Send` futures. `Handle::block_on` does not ask for `Send`, and the future
/// still runs on the runtime's I/O and timers; the blocking thread only waits.
async fn without_send_bound<T, Fut>(
    f: impl FnOnce() -> Fut + Send + 'static,
) -> Result<T, StoreError>
where
    T: Send + 'static,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let handle = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || handle.block_on(f())).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl CheckpointCommitter for RunStore {
    /// Writes the manifest with [`RunStore::commit`] (which refuses, naming the object, if
    /// an acknowledged object was not uploaded or has another size), then prunes to the
    /// facts' `keep_last` (0: keep every committed checkpoint). Either way the prune removes
    /// the folders of older checkpoints that were never committed: abandoned uploads (which
    /// may land after their rank gave up on them) and those of ended generations. A failed
    /// prune is logged, not returned: the checkpoint is committed, and the next commit
    /// prunes again.
    async fn commit(&self, c: CommitRequest) -> Result<String, StoreError> {
        let run = for_run(self, &c.run_id)?;
        let manifest = manifest_of(&c)?;
        without_send_bound(move || async move {
            run.commit(&manifest).await?;
            let keep = match c.keep_last {
                0 => usize::MAX,
                n => usize::try_from(n).unwrap_or(usize::MAX),
            };
            if let Err(e) = run.prune(keep).await {
                warn!(
                    "checkpoint at step {} committed, but pruning the older checkpoints \
                     failed: {e}",
                    c.step
                );
            }
            Ok(run.manifest_key(c.step))
        })
        .await
    }
}

impl JobStatePersistence for RunStore {
    async fn save(&self, snapshot: JobSnapshot) -> Result<(), StoreError> {
        let run = for_run(self, &snapshot.job.settings().run_id)?;
        let json = serde_json::to_vec_pretty(&snapshot).expect("a job serialises");
        run.put_job_state(Bytes::from(json)).await?;
        Ok(())
    }

    async fn load(&self, run_id: &str) -> Result<Option<JobSnapshot>, StoreError> {
        let run = for_run(self, run_id)?;
        let Some(bytes) = run.get_job_state().await? else {
            return Ok(None);
        };
        let bad = |problem: String| StoreError::BadJobState {
            url: run.store().url().to_string(),
            key: run.job_key(),
            problem,
        };
        let snapshot: JobSnapshot =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a job snapshot: {e}")))?;
        if snapshot.format != SNAPSHOT_FORMAT {
            return Err(bad(format!(
                "format {:?}, this coordinator reads {SNAPSHOT_FORMAT:?}",
                snapshot.format
            )));
        }
        Ok(Some(snapshot))
    }
}

/// What a coordinator starting on a run finds in the store.
#[derive(Clone, Debug, Default)]
pub struct StoredRun {
    /// The newest committed checkpoint: the job resumes from it.
    pub resume: Option<CommittedCheckpoint>,
    /// Every committed checkpoint, ascending by step.
    pub committed: Vec<ManifestSummary>,
    /// What the previous coordinator of the run saved, when it can be read (an unreadable
    /// job.json is logged and left out: the checkpoints are what resuming needs).
    pub previous: Option<JobSnapshot>,
}

/// Reads the run's committed checkpoints and its job state. The run resumes from the
/// newest checkpoint whose every object verifies against its manifest
/// ([`RunStore::verify_latest`]: sizes first, then each object hashed as it streams past,
/// so a coordinator needs a few MiB however large the checkpoint, and holds none of it);
/// newer ones that do not (a corrupted or missing object) are logged, naming the object,
/// and passed over, so all ranks load the same good one.
pub async fn stored_run(run: &RunStore) -> Result<StoredRun, StoreError> {
    let committed = run.committed().await?;
    let resume = match committed.is_empty() {
        true => None,
        false => {
            let loaded = run.verify_latest().await?;
            loaded.map(|l| {
                for (step, why) in &l.skipped {
                    warn!(step, "not resuming from checkpoint {step}: {why}");
                }
                let m = &l.manifest;
                CommittedCheckpoint {
                    step: m.step,
                    epoch: m.epoch,
                    steps_per_epoch: m.state.steps_per_epoch,
                    manifest: run.manifest_key(m.step),
                    folder_step: 0,
                }
            })
        }
    };
    let previous = match JobStatePersistence::load(run, run.run_id()).await {
        Ok(p) => p,
        Err(e) => {
            warn!("ignoring the run's saved job state: {e}");
            None
        }
    };
    Ok(StoredRun {
        resume,
        committed,
        previous,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{CheckpointObject, Job, JobSettings};
    use lgaf_store::{sha256_hex, Store};

    fn run_store(dir: &std::path::Path, run: &str) -> RunStore {
        RunStore::new(Store::from_url(dir.to_str().unwrap()).unwrap(), run).unwrap()
    }

    /// Rank 0's state of a run on `world_size` ranks.
    fn state_json(world_size: u32) -> String {
        let state = lgaf_store::RunState::new(world_size, 10, 1.0, 0, serde_json::json!({}));
        serde_json::to_string(&state).unwrap()
    }

    fn commit(
        run: &str,
        step: u64,
        objects: Vec<CheckpointObject>,
        keep_last: u64,
    ) -> CommitRequest {
        CommitRequest {
            run_id: run.into(),
            generation: 1,
            step,
            epoch: step / 10,
            world_size: 2,
            objects,
            state_json: state_json(2),
            keep_last,
        }
    }

    /// Uploads `bytes` as a rank does and returns what it acknowledges.
    async fn upload(
        run: &RunStore,
        step: u64,
        rank: u32,
        key: &str,
        bytes: &[u8],
    ) -> CheckpointObject {
        let info = run
            .put_object(step, key, Bytes::copy_from_slice(bytes))
            .await
            .unwrap();
        assert_eq!(
            info.key, key,
            "put_object answers the key relative to the step"
        );
        CheckpointObject {
            rank,
            key: info.key,
            size: info.size,
            sha256: info.sha256,
        }
    }

    async fn objects(run: &RunStore, step: u64) -> Vec<CheckpointObject> {
        vec![
            upload(
                run,
                step,
                0,
                "model.safetensors",
                format!("model {step}").as_bytes(),
            )
            .await,
            upload(
                run,
                step,
                1,
                "classifier/rank-00001.safetensors",
                format!("classes {step}").as_bytes(),
            )
            .await,
        ]
    }

    #[tokio::test]
    async fn a_commit_writes_a_manifest_that_lgaf_store_loads_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_store(dir.path(), "r");
        let objects = objects(&run, 10).await;
        let key = CheckpointCommitter::commit(&run, commit("r", 10, objects, 0))
            .await
            .unwrap();
        assert_eq!(key, "runs/r/ckpt/000000000010/MANIFEST.json");
        assert_eq!(key, run.manifest_key(10));

        let loaded = run.load(10).await.unwrap();
        let m = &loaded.manifest;
        assert_eq!(m.format, lgaf_store::FORMAT);
        assert_eq!((m.run_id.as_str(), m.step, m.epoch), ("r", 10, 1));
        assert_eq!(m.world_size, 2);
        assert_eq!(m.state.loss_scale, 1.0);
        assert_eq!(m.state.steps_per_epoch, 10);
        let keys: Vec<(u32, &str)> = m.objects.iter().map(|o| (o.rank, o.key.as_str())).collect();
        assert_eq!(
            keys,
            [
                (0, "model.safetensors"),
                (1, "classifier/rank-00001.safetensors")
            ]
        );
        assert_eq!(
            m.objects[1].sha256,
            sha256_hex(b"classes 10"),
            "the acknowledged checksum"
        );
        assert_eq!(&loaded.objects["model.safetensors"][..], b"model 10");
        let latest = run.load_latest().await.unwrap().unwrap();
        assert_eq!(latest.manifest.step, 10);
        // The objects lie where the layout says.
        assert!(dir
            .path()
            .join("runs/r/ckpt/000000000010/classifier/rank-00001.safetensors")
            .is_file());
    }

    #[tokio::test]
    async fn an_object_that_was_not_uploaded_is_refused_and_nothing_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_store(dir.path(), "r");
        let model = upload(&run, 5, 0, "model.safetensors", b"abc").await;
        let classes = b"rank one's classes";
        let missing = CheckpointObject {
            rank: 1,
            key: "classifier/rank-00001.safetensors".into(),
            size: classes.len() as u64,
            sha256: sha256_hex(classes),
        };
        let request = commit("r", 5, vec![model.clone(), missing.clone()], 0);
        let e = CheckpointCommitter::commit(&run, request.clone())
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("runs/r/ckpt/000000000005/classifier/rank-00001.safetensors")
                && msg.contains("was not uploaded"),
            "{msg}"
        );
        assert!(run.committed().await.unwrap().is_empty());
        assert!(run.get_job_state().await.unwrap().is_none());

        // A wrong size is refused too.
        let mut wrong = model.clone();
        wrong.size = 4;
        let e = CheckpointCommitter::commit(&run, commit("r", 5, vec![wrong], 0))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("has 3 bytes, the manifest lists 4"),
            "{e}"
        );

        // Once it is uploaded, the same request commits.
        upload(&run, 5, 1, &missing.key, classes).await;
        CheckpointCommitter::commit(&run, request).await.unwrap();
        let steps: Vec<u64> = run
            .committed()
            .await
            .unwrap()
            .iter()
            .map(|c| c.step)
            .collect();
        assert_eq!(steps, [5]);
        run.load(5).await.unwrap();
    }

    #[tokio::test]
    async fn state_json_must_be_a_run_state() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_store(dir.path(), "r");
        let objects = objects(&run, 3).await;
        let no_spe = state_json(2).replace(r#""steps_per_epoch":10,"#, "");
        for (state, problem) in [
            ("{loss", "is not a valid run state"),
            ("", "is missing"),
            (no_spe.as_str(), "missing field `steps_per_epoch`"),
        ] {
            let mut c = commit("r", 3, objects.clone(), 0);
            c.state_json = state.into();
            let e = CheckpointCommitter::commit(&run, c).await.unwrap_err();
            assert!(matches!(e, StoreError::BadState { .. }), "{e}");
            assert!(
                e.to_string().contains("rank 0's state_json") && e.to_string().contains(problem),
                "{e}"
            );
        }
        assert!(run.committed().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn commits_prune_to_keep_last() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_store(dir.path(), "r");
        for step in [10, 20, 30, 40] {
            let objects = objects(&run, step).await;
            CheckpointCommitter::commit(&run, commit("r", step, objects, 2))
                .await
                .unwrap();
        }
        let steps: Vec<u64> = run
            .committed()
            .await
            .unwrap()
            .iter()
            .map(|c| c.step)
            .collect();
        assert_eq!(steps, [30, 40]);
        assert!(!dir.path().join("runs/r/ckpt/000000000020").exists());
        // keep_last 0 keeps every committed checkpoint, and removes the objects of an older
        // one that was never committed (an abandoned upload that landed late).
        upload(&run, 45, 0, "model.safetensors", b"abandoned").await;
        let objects = objects(&run, 50).await;
        CheckpointCommitter::commit(&run, commit("r", 50, objects, 0))
            .await
            .unwrap();
        assert_eq!(run.committed().await.unwrap().len(), 3);
        assert!(!dir.path().join("runs/r/ckpt/000000000045").exists());
    }

    #[tokio::test]
    async fn a_commit_of_another_run_goes_to_that_run() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_store(dir.path(), "r");
        let other = run_store(dir.path(), "other");
        let objects = objects(&other, 4).await;
        let key = CheckpointCommitter::commit(&run, commit("other", 4, objects, 0))
            .await
            .unwrap();
        assert_eq!(key, "runs/other/ckpt/000000000004/MANIFEST.json");
        assert!(run.committed().await.unwrap().is_empty());
        assert_eq!(other.committed().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn job_snapshots_round_trip_and_stored_run_finds_the_newest_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_store(dir.path(), "r");
        assert!(JobStatePersistence::load(&run, "r")
            .await
            .unwrap()
            .is_none());
        let empty = stored_run(&run).await.unwrap();
        assert!(empty.resume.is_none() && empty.previous.is_none());

        let job = Job::new(JobSettings {
            job_id: "j".into(),
            run_id: "r".into(),
            instance: "i".into(),
            world_size: 2,
            min_workers: 0,
            elastic_grace_ms: 0,
            max_steps: 0,
            config_toml: "[train]\nepochs = 1\n".into(),
            store_url: run.store().url().into(),
            heartbeat_interval_ms: 1000,
            heartbeat_deadline_ms: 10_000,
            collective_timeout_ms: 1000,
            max_restarts: 2,
        })
        .unwrap();
        run.save(job.snapshot(42)).await.unwrap();
        assert!(dir.path().join("runs/r/job.json").is_file());
        let back = JobStatePersistence::load(&run, "r").await.unwrap().unwrap();
        assert_eq!(back.saved_at_ms, 42);
        assert_eq!(back.job.settings(), job.settings());

        for step in [10, 20] {
            let objects = objects(&run, step).await;
            CheckpointCommitter::commit(&run, commit("r", step, objects, 0))
                .await
                .unwrap();
        }
        let stored = stored_run(&run).await.unwrap();
        let steps: Vec<u64> = stored.committed.iter().map(|c| c.step).collect();
        assert_eq!(steps, [10, 20]);
        assert_eq!(stored.committed[1].world_size, 2);
        let resume = stored.resume.unwrap();
        assert_eq!(
            (resume.step, resume.epoch, resume.manifest.as_str()),
            (20, 2, "runs/r/ckpt/000000000020/MANIFEST.json")
        );
        assert_eq!(stored.previous.unwrap().saved_at_ms, 42);

        // An object of the newest checkpoint that is not the size its manifest lists: that
        // checkpoint is passed over (by its size, without reading it).
        let key = run.object_key(20, "model.safetensors");
        run.store()
            .put(&key, Bytes::from_static(b"model 20, grown"))
            .await
            .unwrap();
        let stored = stored_run(&run).await.unwrap();
        assert_eq!(stored.resume.unwrap().step, 10);
        run.put_object(20, "model.safetensors", Bytes::from_static(b"model 20"))
            .await
            .unwrap();

        // An unreadable job.json is an error to load, and left out by stored_run.
        run.put_job_state(Bytes::from_static(b"{")).await.unwrap();
        let e = JobStatePersistence::load(&run, "r").await.unwrap_err();
        assert!(e.to_string().contains("runs/r/job.json"), "{e}");
        let stored = stored_run(&run).await.unwrap();
        assert!(stored.previous.is_none());
        assert_eq!(stored.resume.unwrap().step, 20);
    }
}
