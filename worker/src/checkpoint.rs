//! Checkpoints of single-process training (`lgaf train`): the same store, key layout and
//! manifest as a coordinated run (`lgaf-store`), with one rank. `checkpoint.dir` names the
//! store (a path, `file:///dir` or `s3://bucket/prefix`) and `checkpoint.run_id` the run in
//! it, so `lgaf ckpt ls/export` read what `lgaf train` wrote, and a coordinated run with the
//! same store and run id resumes it.
//!
//! Starting: the newest checkpoint that verifies is resumed; newer ones that do not are
//! moved aside (`runs/<run>/unverified/`) so nothing the run writes later overwrites or
//! prunes them. When none verifies, resuming is an error naming each one and its failed
//! check: training never silently starts again from step 0 ([`StartFrom::Fresh`] asks for
//! that). A `checkpoint.dir` holding only checkpoints of the old single-process format is
//! refused with the command that converts them (see [`crate::legacy_checkpoint`]).

use std::path::PathBuf;

use bytes::Bytes;
use lgaf_store::{
    BlockingRunStore, LoadedCheckpoint, Manifest, ManifestObject, RunState, StoreError,
};

use crate::config::CheckpointConfig;
use crate::error::{Result, WorkerError};
use crate::legacy_checkpoint;

/// Where single-process training starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// The newest checkpoint that verifies; an error when there are checkpoints and none
    /// verifies.
    Latest,
    /// Step 0, although the run holds checkpoints that do not verify (they are moved
    /// aside); an error if one verifies, which is to be resumed instead.
    Fresh,
}

/// The checkpoints of one single-process run.
pub struct LocalCheckpoints {
    store: BlockingRunStore,
    /// Committed checkpoints kept; 0 keeps all, as in coordinated runs.
    keep_last: usize,
    /// Folders where checkpoints of the old single-process format may be: the store's
    /// directory, and the old default `checkpoint.dir` while the default is in use (so
    /// that a run of an earlier release is not silently started again from step 0).
    legacy_dirs: Vec<PathBuf>,
}

impl LocalCheckpoints {
    /// Opens (creating a local directory if needed) the store `cfg.dir` for run
    /// `cfg.run_id`.
    pub fn open(cfg: &CheckpointConfig) -> Result<Self> {
        let store = BlockingRunStore::from_url(&cfg.dir, &cfg.run_id)?;
        let mut legacy_dirs: Vec<PathBuf> = store
            .run()
            .store()
            .local_dir()
            .into_iter()
            .map(PathBuf::from)
            .collect();
        if cfg.dir == CheckpointConfig::default().dir {
            legacy_dirs.push(PathBuf::from(legacy_checkpoint::OLD_DEFAULT_DIR));
        }
        Ok(Self {
            store,
            keep_last: cfg.keep_last,
            legacy_dirs,
        })
    }

    /// The run in its store (where the run's history goes too).
    pub fn run(&self) -> &lgaf_store::RunStore {
        self.store.run()
    }

    /// `run `<id>` in <store URL>`, naming the run in messages.
    pub fn describe(&self) -> String {
        format!(
            "run `{}` in {}",
            self.store.run().run_id(),
            self.store.run().store().url()
        )
    }

    /// Where the checkpoint of `step` lies (`<store URL>/runs/<id>/ckpt/<step>`), naming
    /// it in messages.
    pub fn location(&self, step: u64) -> String {
        let run = self.store.run();
        format!("{}/{}", run.store().url(), run.step_prefix(step))
    }

    /// The checkpoint to start from: see [`StartFrom`].
    pub fn start(&self, from: StartFrom) -> Result<Option<LoadedCheckpoint>> {
        let latest = match self.store.load_latest() {
            Err(StoreError::NoValidCheckpoint { failures, .. }) => {
                if from == StartFrom::Latest {
                    return Err(self.refuse(format!(
                        "no checkpoint here verifies, so training cannot resume: {}. They are \
                         left as they are; repair or remove them, or start from step 0 with \
                         `lgaf train --fresh`, which moves them aside",
                        failures.join("; ")
                    )));
                }
                // Every committed checkpoint failed (its objects or its manifest).
                self.set_aside(self.store.manifest_steps()?.into_iter())?;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
            Ok(None) => {
                // Asked to start afresh, the old folders are left alone (nothing writes
                // to them); otherwise they are what the user meant to resume.
                if from == StartFrom::Latest {
                    for dir in &self.legacy_dirs {
                        legacy_checkpoint::refuse_if_present(dir, &self.store)?;
                    }
                }
                return Ok(None);
            }
            Ok(Some(latest)) => latest,
        };
        if from == StartFrom::Fresh {
            return Err(self.refuse(format!(
                "checkpoint {} verifies, so training would not start afresh over it; resume \
                 from it (without --fresh) or train under another checkpoint.run_id (or \
                 checkpoint.dir)",
                latest.manifest.step
            )));
        }
        self.set_aside(latest.skipped.iter().map(|(step, _)| *step))?;
        Ok(Some(latest))
    }

    fn set_aside(&self, steps: impl Iterator<Item = u64>) -> Result<()> {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for step in steps {
            let to = self.store.set_aside(step, unix)?;
            tracing::warn!(
                step,
                moved_to = %to,
                "a checkpoint that does not verify was moved aside, for inspection"
            );
        }
        Ok(())
    }

    fn refuse(&self, message: String) -> WorkerError {
        WorkerError::Checkpoint {
            path: self.describe().into(),
            message,
        }
    }

    /// Uploads the objects of the checkpoint at `step`, commits it with its manifest, then
    /// drops the oldest committed checkpoints beyond `keep_last`. Returns the manifest.
    pub fn save(
        &self,
        step: u64,
        epoch: u64,
        objects: Vec<(String, Vec<u8>)>,
        state: RunState,
    ) -> Result<Manifest> {
        let mut listed = Vec::with_capacity(objects.len());
        for (key, bytes) in objects {
            let info = self.store.put_object(step, &key, Bytes::from(bytes))?;
            listed.push(ManifestObject::from_info(&info, 0));
        }
        let run_id = self.store.run().run_id();
        let manifest = Manifest::new(run_id, step, epoch, 1, listed, state);
        self.store.commit(&manifest)?;
        if self.keep_last > 0 {
            self.store.prune(self.keep_last)?;
        }
        Ok(manifest)
    }
}

/// The network of a run's newest committed checkpoint that verifies, ready for evaluation.
pub struct CommittedModel {
    /// The checkpoint's step.
    pub step: u64,
    /// Newer committed checkpoints that did not verify, as (step, why), newest first.
    pub skipped: Vec<(u64, String)>,
    pub model: lgaf_model::Lgaf,
    pub var_store: tch::nn::VarStore,
    /// The weights as stored (safetensors), to be written out as they are.
    pub bytes: Bytes,
}

/// Loads the network of the newest checkpoint of `run_id` in `store` that verifies (only its
/// model object is read), built from `model` on `device`. Coordinated runs and `lgaf train`
/// store it alike. A store that does not exist is an error, never created.
pub fn load_committed_model(
    store: &str,
    run_id: &str,
    model: &lgaf_model::ModelConfig,
    device: tch::Device,
) -> Result<CommittedModel> {
    use crate::trainer::MODEL_OBJECT;
    let runs = BlockingRunStore::from_existing_url(store, run_id)?;
    let missing = |message: &str| WorkerError::Checkpoint {
        path: PathBuf::from(format!("{store} run {run_id}")),
        message: message.to_string(),
    };
    let loaded = runs
        .load_latest_with(|o| o.key == MODEL_OBJECT)?
        .ok_or_else(|| missing("the run has no committed checkpoint"))?;
    let bytes = loaded
        .objects
        .get(MODEL_OBJECT)
        .cloned()
        .ok_or_else(|| missing("the newest checkpoint holds no network (model.safetensors)"))?;
    let name = std::path::Path::new(MODEL_OBJECT);
    let tensors: std::collections::HashMap<String, tch::Tensor> =
        lgaf_model::weights::from_bytes(&bytes, name)?
            .into_iter()
            .collect();
    let mut var_store = tch::nn::VarStore::new(device);
    let net = lgaf_model::Lgaf::new(&var_store.root(), model)?;
    lgaf_model::weights::assign(&mut var_store, &tensors, name)?;
    Ok(CommittedModel {
        step: loaded.manifest.step,
        skipped: loaded.skipped,
        model: net,
        var_store,
        bytes,
    })
}
