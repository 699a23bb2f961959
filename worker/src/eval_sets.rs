//! Evaluation on real benchmark files: insightface's verification `.bin` sets (LFW, CFP-FP,
//! AgeDB-30, CALFW, CPLFW) and retrieval galleries (TinyFace / SCFace style folders).
//!
//! Images are decoded once, in parallel, when a set is loaded, so that a training run that
//! evaluates every N steps pays only for the forward passes.

use std::path::{Path, PathBuf};

use lgaf_data::decode::decode_rgb112_resized;
use lgaf_data::image_folder::list_images;
use lgaf_data::DataError;
use lgaf_eval::retrieval::{cmc, Cmc, Embeddings, Labelled, CMC_RANKS};
use lgaf_eval::verification::{evaluate, pair_distances, Verification, FOLDS};
use lgaf_eval::VerificationBin;
use lgaf_model::Lgaf;
use rayon::prelude::*;
use tch::{Device, Kind};
use tracing::{info, warn};

use crate::error::{io_err, Result, WorkerError};
use crate::eval::embed;

/// Decodes encoded images to 112x112 RGB8 back to back (other sizes are resized); `what`
/// names image `i` in errors.
fn decode_all(
    images: &[impl AsRef<[u8]> + Sync],
    what: impl Fn(usize) -> String + Sync,
) -> Result<Vec<u8>> {
    let decoded: Vec<Vec<u8>> = images
        .par_iter()
        .enumerate()
        .map(|(i, bytes)| decode_rgb112_resized(bytes.as_ref(), || what(i)))
        .collect::<Result<_, _>>()?;
    Ok(decoded.concat())
}

/// Flip-summed, L2-normalised embeddings as a row-major [count, D] f32 vector.
fn embed_rows(
    model: &Lgaf,
    rgb: &[u8],
    count: usize,
    device: Device,
    batch: usize,
) -> (Vec<f32>, usize) {
    let out = embed(model, rgb, count, device, batch, true);
    let dim = out.embeddings.size()[1] as usize;
    let rows = Vec::<f32>::try_from(out.embeddings.to_kind(Kind::Float).reshape([-1]))
        .expect("embeddings are a float tensor on the CPU");
    (rows, dim)
}

/// A verification `.bin` decoded for the model: pair `i` is images `2i` and `2i + 1`.
pub struct PairSet {
    /// The file stem, e.g. `lfw`.
    pub name: String,
    pub path: PathBuf,
    /// 2P images, 112x112 RGB8 HWC, back to back.
    pub rgb: Vec<u8>,
    pub issame: Vec<bool>,
}

impl PairSet {
    pub fn load(path: &Path) -> Result<Self> {
        let bin = VerificationBin::read(path)?;
        let rgb = decode_all(&bin.images, |i| {
            format!(
                "{} image {i} (pair {}, side {})",
                path.display(),
                i / 2,
                i % 2
            )
        })?;
        Ok(Self {
            name: path.file_stem().map_or_else(
                || path.display().to_string(),
                |s| s.to_string_lossy().into_owned(),
            ),
            path: path.to_path_buf(),
            rgb,
            issame: bin.issame,
        })
    }

    pub fn images(&self) -> usize {
        self.issame.len() * 2
    }

    /// Flip-summed embeddings of the 2P images in file order, [2P, D] row-major.
    pub fn embed(&self, model: &Lgaf, device: Device, batch: usize) -> (Vec<f32>, usize) {
        embed_rows(model, &self.rgb, self.images(), device, batch)
    }

    /// insightface's protocol: accuracy over 10 folds and TAR at FAR 1e-3.
    pub fn evaluate(&self, model: &Lgaf, device: Device, batch: usize) -> Result<Verification> {
        let (rows, dim) = self.embed(model, device, batch);
        let failed = |e: lgaf_eval::Error| WorkerError::EvalSet {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let distances = pair_distances(&rows, dim).map_err(failed)?;
        evaluate(&distances, &self.issame, FOLDS).map_err(failed)
    }
}

/// The `.bin` files a training run evaluates every `eval.every_steps`, decoded once.
pub struct BinEvaluator {
    sets: Vec<PairSet>,
}

impl BinEvaluator {
    pub fn load(paths: &[PathBuf]) -> Result<Self> {
        let sets = paths
            .iter()
            .map(|p| PairSet::load(p))
            .collect::<Result<_>>()?;
        Ok(Self { sets })
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Evaluates every set and logs one line per set; a failure is logged, not fatal, so
    /// that a bad evaluation file cannot stop a long run. Returns the sets that evaluated,
    /// by name.
    pub fn run(&self, model: &Lgaf, device: Device, step: u64) -> Vec<(String, Verification)> {
        let mut evaluated = Vec::new();
        for set in &self.sets {
            match set.evaluate(model, device, EVAL_BATCH) {
                Ok(v) => {
                    info!(
                        step,
                        set = set.name.as_str(),
                        accuracy = format!("{:.4}", v.accuracy.accuracy),
                        std = format!("{:.4}", v.accuracy.std),
                        tar_at_far_1e_3 = format!("{:.4}", v.tar_at_far.tar),
                        "verification"
                    );
                    evaluated.push((set.name.clone(), v));
                }
                Err(e) => warn!(step, set = set.name.as_str(), "verification failed: {e}"),
            }
        }
        evaluated
    }
}

/// Images per forward pass when evaluating during training.
const EVAL_BATCH: usize = 128;

/// Images of a retrieval folder with their identity names: `root/<identity>/*.jpg|png`, or
/// (for distractors) images directly in `root` as well.
pub struct Gallery {
    pub root: PathBuf,
    pub rgb: Vec<u8>,
    /// Identity (sub-folder name) of each image; empty for images directly in `root`.
    pub identities: Vec<String>,
}

impl Gallery {
    pub fn load(root: &Path) -> Result<Self> {
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(root)
            .map_err(io_err(root))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io_err(root))?;
        entries.sort();
        for dir in entries.iter().filter(|p| p.is_dir()) {
            let name = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            for f in list_images(dir)? {
                files.push((name.clone(), f));
            }
        }
        match list_images(root) {
            Ok(direct) => files.extend(direct.into_iter().map(|f| (String::new(), f))),
            Err(DataError::NoImages { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if files.is_empty() {
            return Err(WorkerError::EvalSet {
                path: root.to_path_buf(),
                message: "no images (expected <identity>/*.jpg|png, or images directly inside)"
                    .into(),
            });
        }
        let bytes: Vec<Vec<u8>> = files
            .par_iter()
            .map(|(_, f)| std::fs::read(f).map_err(io_err(f)))
            .collect::<Result<_>>()?;
        let rgb = decode_all(&bytes, |i| files[i].1.display().to_string())?;
        Ok(Self {
            root: root.to_path_buf(),
            rgb,
            identities: files.into_iter().map(|(id, _)| id).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.identities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }
}

/// CMC at ranks 1, 5 and 20 of `probes` against `gallery` plus `distractors` (cosine
/// similarity of flip-summed embeddings); identities are matched by folder name.
pub fn retrieval(
    model: &Lgaf,
    device: Device,
    batch: usize,
    probes: &Gallery,
    gallery: &Gallery,
    distractors: Option<&Gallery>,
) -> Result<Cmc> {
    let mut names: Vec<&str> = probes
        .identities
        .iter()
        .chain(&gallery.identities)
        .map(String::as_str)
        .filter(|name| !name.is_empty())
        .collect();
    names.sort_unstable();
    names.dedup();
    // Images without an identity folder match nothing: a loose probe counts as absent, a
    // loose gallery image acts as a distractor.
    let label = |id: &str, unmatched: u64| {
        names
            .binary_search(&id)
            .map_or(unmatched, |position| position as u64)
    };
    let probe_labels: Vec<u64> = probes
        .identities
        .iter()
        .map(|s| label(s, u64::MAX - 1))
        .collect();
    let gallery_labels: Vec<u64> = gallery
        .identities
        .iter()
        .map(|s| label(s, u64::MAX))
        .collect();

    let (p, dim) = embed_rows(model, &probes.rgb, probes.len(), device, batch);
    let (g, _) = embed_rows(model, &gallery.rgb, gallery.len(), device, batch);
    let d = distractors.map_or((Vec::new(), dim), |d| {
        embed_rows(model, &d.rgb, d.len(), device, batch)
    });
    let probe_set = Labelled::new(Embeddings::new(&p, dim, "probe")?, &probe_labels)?;
    let gallery_set = Labelled::new(Embeddings::new(&g, dim, "gallery")?, &gallery_labels)?;
    let distractor_set = Embeddings::new(&d.0, dim, "distractors")?;
    Ok(cmc(&probe_set, &gallery_set, &distractor_set, &CMC_RANKS)?)
}
