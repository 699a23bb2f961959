//! Checkpoints in a local directory, committed atomically.
//!
//! A checkpoint is a folder `step-<step>` of safetensors files plus `MANIFEST.json`, written
//! last, that lists every file with its size and SHA-256. A folder without a manifest is an
//! interrupted save and is never loaded. A committed checkpoint that fails a check makes
//! the loader fall back to the previous one, and is moved aside (`step-<step>.unverified-
//! <unix time>`) so that nothing the run writes later overwrites or prunes it. When none
//! verifies, resuming is an error naming each one and its failed check: training never
//! silently starts again from step 0 ([`StartFrom::Fresh`] asks for that).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use lgaf_model::weights;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::error::{io_err, Result, WorkerError};

pub const MANIFEST: &str = "MANIFEST.json";
const FORMAT: &str = "lgaf-checkpoint/1";

/// What the trainer needs besides tensors to continue exactly where it stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Steps completed.
    pub step: u64,
    pub epoch: u64,
    pub loss_scale: f64,
    pub loss_scale_good_steps: u32,
    /// The whole config the run was started with, as JSON.
    pub config: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub step: u64,
    pub epoch: u64,
    pub created_unix: u64,
    pub files: Vec<FileEntry>,
    pub state: TrainState,
}

/// A loaded checkpoint: its manifest and every tensor file, by file name.
pub struct Loaded {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub tensors: HashMap<String, HashMap<String, Tensor>>,
}

pub struct CheckpointStore {
    root: PathBuf,
    /// Committed checkpoints kept; 0 keeps all, as in coordinated runs.
    keep_last: usize,
}

/// Where single-process training starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// The newest checkpoint that verifies; an error when there are checkpoints and none
    /// verifies.
    Latest,
    /// Step 0, although `checkpoint.dir` holds checkpoints that do not verify (they are
    /// moved aside); an error if one verifies, which is to be resumed instead.
    Fresh,
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let digest = Sha256::digest(&bytes);
    let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok((bytes.len() as u64, hex))
}

impl CheckpointStore {
    /// A store in `root` keeping the newest `keep_last` committed checkpoints (0: all).
    pub fn new(root: impl Into<PathBuf>, keep_last: usize) -> Self {
        Self {
            root: root.into(),
            keep_last,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn step_dir(&self, step: u64) -> PathBuf {
        self.root.join(format!("step-{step:010}"))
    }

    /// Writes `files` (file name -> named tensors), then commits with the manifest, then
    /// drops the oldest committed checkpoints beyond `keep_last`.
    pub fn save(
        &self,
        state: &TrainState,
        files: &[(&str, Vec<(String, Tensor)>)],
        metadata: &HashMap<String, String>,
    ) -> Result<PathBuf> {
        let dir = self.step_dir(state.step);
        if dir.exists() {
            // An earlier, interrupted save of the same step: start over.
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut entries = Vec::with_capacity(files.len());
        for (name, tensors) in files {
            let path = dir.join(name);
            weights::save_tensors(tensors, &path, metadata)?;
            let (bytes, sha256) = sha256_file(&path)?;
            entries.push(FileEntry {
                name: name.to_string(),
                bytes,
                sha256,
            });
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            step: state.step,
            epoch: state.epoch,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            files: entries,
            state: state.clone(),
        };
        let tmp = dir.join(format!("{MANIFEST}.partial"));
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        fs::write(&tmp, json).map_err(io_err(&tmp))?;
        fs::rename(&tmp, dir.join(MANIFEST)).map_err(io_err(&dir))?;
        self.prune()?;
        Ok(dir)
    }

    /// Committed checkpoints (those with a manifest), oldest first, as (step, folder).
    pub fn committed(&self) -> Result<Vec<(u64, PathBuf)>> {
        if !self.root.exists() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let path = entry.map_err(io_err(&self.root))?.path();
            let step = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("step-"))
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(step) = step {
                if path.join(MANIFEST).is_file() {
                    out.push((step, path));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn prune(&self) -> Result<()> {
        if self.keep_last == 0 {
            return Ok(());
        }
        let committed = self.committed()?;
        let excess = committed.len().saturating_sub(self.keep_last);
        for (_, dir) in &committed[..excess] {
            fs::remove_dir_all(dir).map_err(io_err(dir))?;
        }
        Ok(())
    }

    /// Loads and verifies one checkpoint folder.
    pub fn load_dir(dir: &Path) -> Result<Loaded> {
        let fail = |message: String| WorkerError::Checkpoint {
            path: dir.to_path_buf(),
            message,
        };
        let manifest_path = dir.join(MANIFEST);
        let text = fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| fail(format!("{MANIFEST} is not a valid manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(fail(format!(
                "format `{}`, expected `{FORMAT}`",
                manifest.format
            )));
        }
        let mut tensors = HashMap::new();
        for entry in &manifest.files {
            let path = dir.join(&entry.name);
            let (bytes, sha256) = sha256_file(&path)?;
            if bytes != entry.bytes || sha256 != entry.sha256 {
                return Err(fail(format!(
                    "{}: {bytes} bytes with SHA-256 {sha256}, the manifest says {} bytes with {}",
                    entry.name, entry.bytes, entry.sha256
                )));
            }
            let named = weights::read_tensors(&path)?.into_iter().collect();
            tensors.insert(entry.name.clone(), named);
        }
        Ok(Loaded {
            dir: dir.to_path_buf(),
            manifest,
            tensors,
        })
    }

    /// The checkpoint to start from: see [`StartFrom`]. Checkpoints newer than the one
    /// loaded that do not verify are moved aside, with a warning naming each.
    pub fn start(&self, from: StartFrom) -> Result<Option<Loaded>> {
        let mut unverified = Vec::new();
        let mut loaded = None;
        for (_, dir) in self.committed()?.into_iter().rev() {
            match Self::load_dir(&dir) {
                Ok(found) => {
                    loaded = Some(found);
                    break;
                }
                Err(e) => unverified.push((dir, e)),
            }
        }
        match (from, &loaded) {
            (StartFrom::Fresh, Some(found)) => {
                return Err(WorkerError::Checkpoint {
                    path: found.dir.clone(),
                    message: "this checkpoint verifies, so training would not start afresh                               over it; resume from it (without --fresh) or train in another                               checkpoint.dir"
                        .into(),
                })
            }
            (StartFrom::Latest, None) if !unverified.is_empty() => {
                let failures: Vec<String> = unverified.iter().map(|(_, e)| e.to_string()).collect();
                return Err(WorkerError::Checkpoint {
                    path: self.root.clone(),
                    message: format!(
                        "no checkpoint here verifies, so training cannot resume: {}. They are                          left as they are; repair or remove them, or start from step 0 with                          `lgaf train --fresh`, which moves them aside",
                        failures.join("; ")
                    ),
                });
            }
            _ => {}
        }
        for (dir, error) in unverified {
            let aside = self.set_aside(&dir)?;
            tracing::warn!(
                %error,
                moved_to = %aside.display(),
                "a checkpoint that does not verify was moved aside, for inspection"
            );
        }
        Ok(loaded)
    }

    /// Renames a checkpoint folder out of the `step-<n>` names that loading and pruning
    /// look at.
    fn set_aside(&self, dir: &Path) -> Result<PathBuf> {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("step");
        let aside = dir.with_file_name(format!("{name}.unverified-{unix}"));
        fs::rename(dir, &aside).map_err(io_err(dir))?;
        Ok(aside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lgaf-ckpt-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn state(step: u64) -> TrainState {
        TrainState {
            step,
            epoch: step / 10,
            loss_scale: 1.0,
            loss_scale_good_steps: 0,
            config: serde_json::json!({}),
        }
    }

    fn files(v: f32) -> Vec<(&'static str, Vec<(String, Tensor)>)> {
        vec![(
            "model.safetensors",
            vec![("w".into(), Tensor::from_slice(&[v, v + 1.0]))],
        )]
    }

    #[test]
    fn newest_valid_checkpoint_wins_and_old_ones_are_pruned() {
        let store = CheckpointStore::new(temp_root("prune"), 2);
        for step in [10, 20, 30] {
            store
                .save(&state(step), &files(step as f32), &HashMap::new())
                .unwrap();
        }
        let steps: Vec<u64> = store.committed().unwrap().iter().map(|c| c.0).collect();
        assert_eq!(steps, vec![20, 30]);
        let loaded = store.start(StartFrom::Latest).unwrap().unwrap();
        assert_eq!(loaded.manifest.step, 30);
        let w = &loaded.tensors["model.safetensors"]["w"];
        assert_eq!(Vec::<f32>::try_from(w).unwrap(), vec![30.0, 31.0]);
        fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn an_uncommitted_folder_is_never_loaded() {
        let store = CheckpointStore::new(temp_root("partial"), 3);
        store
            .save(&state(10), &files(1.0), &HashMap::new())
            .unwrap();
        let dir = store
            .save(&state(20), &files(2.0), &HashMap::new())
            .unwrap();
        fs::remove_file(dir.join(MANIFEST)).unwrap(); // as if killed before the commit
        assert_eq!(
            store
                .start(StartFrom::Latest)
                .unwrap()
                .unwrap()
                .manifest
                .step,
            10
        );
        fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn a_corrupted_file_falls_back_to_the_previous_checkpoint() {
        let store = CheckpointStore::new(temp_root("corrupt"), 3);
        store
            .save(&state(10), &files(1.0), &HashMap::new())
            .unwrap();
        let dir = store
            .save(&state(20), &files(2.0), &HashMap::new())
            .unwrap();
        corrupt(&dir);
        let err = CheckpointStore::load_dir(&dir).err().unwrap().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("SHA-256"),
            "{err}"
        );
        assert_eq!(
            store
                .start(StartFrom::Latest)
                .unwrap()
                .unwrap()
                .manifest
                .step,
            10
        );
        // The broken one is kept for inspection, out of the way of later saves.
        let names = folder_names(store.root());
        assert!(
            names.len() == 2 && names[1].starts_with("step-0000000020.unverified-"),
            "{names:?}"
        );
        fs::remove_dir_all(store.root()).unwrap();
    }

    fn folder_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn corrupt(dir: &Path) {
        let path = dir.join("model.safetensors");
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        fs::write(&path, bytes).unwrap();
    }

    /// The defect: the only checkpoint did not verify, and training started again from
    /// step 0 with a warning (and later deleted it). Now that is an error naming it and the
    /// failed check, and it stays where it is.
    #[test]
    fn when_no_checkpoint_verifies_resuming_is_refused_and_nothing_moves() {
        let store = CheckpointStore::new(temp_root("none-verifies"), 3);
        let dir = store
            .save(&state(20), &files(2.0), &HashMap::new())
            .unwrap();
        corrupt(&dir);
        let before = folder_names(store.root());
        let err = store.start(StartFrom::Latest).err().unwrap().to_string();
        assert!(
            err.contains("step-0000000020")
                && err.contains("SHA-256")
                && err.contains("cannot resume")
                && err.contains("--fresh"),
            "{err}"
        );
        assert_eq!(folder_names(store.root()), before);
        assert!(dir.join(MANIFEST).is_file());

        // Asked for, a fresh start moves it aside and starts from nothing.
        assert!(store.start(StartFrom::Fresh).unwrap().is_none());
        let names = folder_names(store.root());
        assert!(
            names.len() == 1 && names[0].starts_with("step-0000000020.unverified-"),
            "{names:?}"
        );
        fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn a_fresh_start_over_a_checkpoint_that_verifies_is_refused() {
        let store = CheckpointStore::new(temp_root("fresh-over-good"), 3);
        store
            .save(&state(10), &files(1.0), &HashMap::new())
            .unwrap();
        let err = store.start(StartFrom::Fresh).err().unwrap().to_string();
        assert!(
            err.contains("step-0000000010") && err.contains("verifies"),
            "{err}"
        );
        assert_eq!(store.committed().unwrap().len(), 1);
        fs::remove_dir_all(store.root()).unwrap();
    }

    /// One meaning of `keep_last = 0` in every kind of run: keep them all.
    #[test]
    fn keep_last_zero_keeps_every_checkpoint() {
        let store = CheckpointStore::new(temp_root("keep-all"), 0);
        for step in [10, 20, 30, 40] {
            store
                .save(&state(step), &files(step as f32), &HashMap::new())
                .unwrap();
        }
        let steps: Vec<u64> = store.committed().unwrap().iter().map(|c| c.0).collect();
        assert_eq!(steps, vec![10, 20, 30, 40]);
        fs::remove_dir_all(store.root()).unwrap();
    }
}
