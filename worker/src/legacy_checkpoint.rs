//! The single-process checkpoint folder of earlier releases (`lgaf-checkpoint/1`:
//! `<dir>/step-<n:010>/` holding `model.safetensors`, `optimizer.safetensors`,
//! `classifier.safetensors` and a `MANIFEST.json` with their SHA-256s), read only to convert
//! it into a run of the store (`lgaf ckpt convert`). Training never loads this format: one
//! loader reads every checkpoint. A store directory that holds such folders and no
//! checkpoint of the current format is refused with the conversion command.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use lgaf_data::sampler::ShardedSampler;
use lgaf_store::{sha256_hex, BlockingRunStore, Manifest, ManifestObject, RunState};
use serde::Deserialize;

use crate::config::TrainConfig;
use crate::error::{io_err, LoaderError, Result, WorkerError};
use crate::loader::open_source;
use crate::trainer::{classifier_object, MODEL_OBJECT, OPTIMIZER_OBJECT};

const MANIFEST: &str = "MANIFEST.json";
/// `checkpoint.dir`'s default in the releases that wrote this format.
pub const OLD_DEFAULT_DIR: &str = "runs/default";
const FORMAT: &str = lgaf_store::manifest::LEGACY_FORMAT;
/// The old files and their keys in a checkpoint of the store (one rank).
const FILES: [(&str, &str); 2] = [
    ("model.safetensors", MODEL_OBJECT),
    ("optimizer.safetensors", OPTIMIZER_OBJECT),
];
const OLD_CLASSIFIER: &str = "classifier.safetensors";

#[derive(Deserialize)]
struct OldManifest {
    format: String,
    step: u64,
    epoch: u64,
    files: Vec<OldFile>,
    state: OldState,
}

#[derive(Deserialize)]
struct OldFile {
    name: String,
    bytes: u64,
    sha256: String,
}

#[derive(Deserialize)]
struct OldState {
    loss_scale: f64,
    loss_scale_good_steps: u32,
    config: serde_json::Value,
}

/// The old checkpoint folders directly in `dir`, ascending by step.
pub fn find(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err(dir))?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(step) = step.filter(|_| path.join(MANIFEST).is_file()) {
            found.push((step, path));
        }
    }
    found.sort();
    Ok(found)
}

/// An error naming the conversion into `store`'s run when `dir` holds old checkpoint
/// folders (called when the run has no checkpoint of the current format).
pub fn refuse_if_present(dir: &Path, store: &BlockingRunStore) -> Result<()> {
    let found = find(dir)?;
    let Some((_, newest)) = found.last() else {
        return Ok(());
    };
    Err(WorkerError::Checkpoint {
        path: newest.clone(),
        message: format!(
            "{} holds {} checkpoint(s) of the single-process format of earlier releases \
             ({FORMAT}), which training no longer reads; convert them into run `{run}` with \
             `lgaf ckpt convert {dir} --store {store} --run {run}`, or train in another \
             checkpoint.dir",
            dir.display(),
            found.len(),
            run = store.run().run_id(),
            dir = dir.display(),
            store = store.run().store().url(),
        ),
    })
}

/// Converts every old checkpoint in `dir` that verifies into a committed checkpoint of
/// `store`'s run; returns the steps converted and, for those that do not verify, why.
/// The old folders are left as they are.
pub fn convert(dir: &Path, store: &BlockingRunStore) -> Result<Converted> {
    let found = find(dir)?;
    if found.is_empty() {
        return Err(WorkerError::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("no `step-<n>/{MANIFEST}` folder here to convert"),
        });
    }
    let mut converted = Converted::default();
    // Steps per epoch come from the dataset: counted once per distinct saved config.
    let mut steps_per_epoch: HashMap<String, u64> = HashMap::new();
    for (step, folder) in found {
        match read(&folder) {
            Ok(old) => {
                let manifest = write(old, store, &mut steps_per_epoch)?;
                converted.steps.push(manifest.step);
            }
            Err(e) => converted.skipped.push((step, e.to_string())),
        }
    }
    Ok(converted)
}

/// What [`convert`] did.
#[derive(Debug, Default)]
pub struct Converted {
    pub steps: Vec<u64>,
    pub skipped: Vec<(u64, String)>,
}

/// An old checkpoint read and verified: its manifest and every file's bytes.
struct OldCheckpoint {
    folder: PathBuf,
    manifest: OldManifest,
    files: HashMap<String, Vec<u8>>,
}

fn read(folder: &Path) -> Result<OldCheckpoint> {
    let fail = |message: String| WorkerError::Checkpoint {
        path: folder.to_path_buf(),
        message,
    };
    let path = folder.join(MANIFEST);
    let text = fs::read(&path).map_err(io_err(&path))?;
    let manifest: OldManifest = serde_json::from_slice(&text)
        .map_err(|e| fail(format!("{MANIFEST} is not a manifest of {FORMAT}: {e}")))?;
    if manifest.format != FORMAT {
        return Err(fail(format!(
            "format `{}`, expected `{FORMAT}`",
            manifest.format
        )));
    }
    let mut files = HashMap::new();
    for entry in &manifest.files {
        if entry.name.contains('/') || entry.name.starts_with('.') {
            return Err(fail(format!(
                "file name `{}` is not a plain name",
                entry.name
            )));
        }
        let path = folder.join(&entry.name);
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let sha256 = sha256_hex(&bytes);
        if bytes.len() as u64 != entry.bytes || sha256 != entry.sha256 {
            return Err(fail(format!(
                "{}: {} bytes with SHA-256 {sha256}, the manifest says {} bytes with {}",
                entry.name,
                bytes.len(),
                entry.bytes,
                entry.sha256
            )));
        }
        files.insert(entry.name.clone(), bytes);
    }
    Ok(OldCheckpoint {
        folder: folder.to_path_buf(),
        manifest,
        files,
    })
}

/// Uploads `old`'s files under the current keys and commits them with a typed run state.
/// A failure to write is returned at once: the store is the problem, not the checkpoint.
fn write(
    mut old: OldCheckpoint,
    store: &BlockingRunStore,
    steps_per_epoch: &mut HashMap<String, u64>,
) -> Result<Manifest> {
    let folder = old.folder.clone();
    let fail = |message: String| WorkerError::Checkpoint {
        path: folder.clone(),
        message,
    };
    let m = &old.manifest;
    let key = m.state.config.to_string();
    let spe = match steps_per_epoch.get(&key) {
        Some(&spe) => spe,
        None => {
            let cfg: TrainConfig = serde_json::from_value(m.state.config.clone())
                .map_err(|e| fail(format!("its config does not parse: {e}")))?;
            let spe = count_steps_per_epoch(&cfg)?;
            steps_per_epoch.insert(key, spe);
            spe
        }
    };
    let state = RunState::new(
        1,
        spe,
        m.state.loss_scale,
        m.state.loss_scale_good_steps,
        m.state.config.clone(),
    );
    let (step, epoch) = (m.step, m.epoch);
    let keys = FILES
        .iter()
        .map(|(name, key)| (*name, key.to_string()))
        .chain([(OLD_CLASSIFIER, classifier_object(0))]);
    let mut objects = Vec::new();
    for (name, key) in keys {
        let bytes = old
            .files
            .remove(name)
            .ok_or_else(|| fail(format!("{name} is missing")))?;
        let info = store.put_object(step, &key, Bytes::from(bytes))?;
        objects.push(ManifestObject::from_info(&info, 0));
    }
    let run_id = store.run().run_id();
    let manifest = Manifest::new(run_id, step, epoch, 1, objects, state);
    store.commit(&manifest)?;
    Ok(manifest)
}

/// Steps per epoch of a single process on `cfg`'s dataset, as the trainer counts them
/// (the old format did not record them).
fn count_steps_per_epoch(cfg: &TrainConfig) -> Result<u64> {
    let source = open_source(&cfg.data)?;
    let sampler =
        ShardedSampler::with_shards(source.len(), cfg.train.seed, &[0], 1, cfg.data.batch_size)
            .map_err(LoaderError::from)?;
    Ok(sampler.steps_per_epoch())
}
