//! `lgaf init`, `lgaf embed` and `lgaf eval`: fresh weights written, a folder (or a
//! verification .bin) embedded to .npy, and weights scored on verification and retrieval
//! sets.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use lgaf_data::{image_folder, npy};
use lgaf_eval::verification::Verification;
use lgaf_model::{weights, Lgaf};
use tch::nn::VarStore;

use super::{load_model, model_metadata, ModelArgs};
use crate::eval::embed;
use crate::eval_sets::{retrieval, Gallery, PairSet};

#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Output file (.safetensors).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Weights (.safetensors) with the spec's names, e.g. from `lgaf init` or a checkpoint.
    #[arg(long)]
    weights: PathBuf,
    /// Folder of .jpg/.png images (not recursive), or a verification .bin file (its 2P
    /// images in file order); other sizes are resized to 112x112.
    #[arg(long)]
    input: PathBuf,
    /// Output .npy (float32, [N, embedding_size]).
    #[arg(long)]
    out: PathBuf,
    /// Add the embedding of the horizontally flipped image before normalising.
    #[arg(long)]
    flip: bool,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Weights (.safetensors) with the spec's names.
    #[arg(long)]
    weights: PathBuf,
    /// A verification file (lfw.bin, cfp_fp.bin, agedb_30.bin, ...); repeat for several.
    #[arg(long = "bin", value_name = "FILE")]
    bins: Vec<PathBuf>,
    /// Retrieval probes: a folder of <identity>/*.jpg|png.
    #[arg(long, requires = "gallery")]
    probe: Option<PathBuf>,
    /// Retrieval gallery: a folder of <identity>/*.jpg|png (identities matched to the
    /// probes' by folder name).
    #[arg(long, requires = "probe")]
    gallery: Option<PathBuf>,
    /// Retrieval distractors added to the gallery: a folder of images (any sub-folders).
    #[arg(long, requires = "gallery")]
    distractors: Option<PathBuf>,
    /// Print JSON: for one .bin an object with accuracy, std, threshold and tar_at_far; for
    /// several, one such object per file stem; retrieval under "retrieval".
    #[arg(long)]
    json: bool,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

pub(super) fn init(a: InitArgs) -> Result<()> {
    let cfg = a.model.config();
    tch::manual_seed(a.seed);
    let vs = VarStore::new(tch::Device::Cpu);
    Lgaf::new(&vs.root(), &cfg)?;
    weights::save(&vs, &a.out, &model_metadata(&cfg))?;
    out!(
        "wrote {} ({} tensors, {} parameters)",
        a.out.display(),
        vs.variables().len(),
        vs.trainable_variables()
            .iter()
            .map(|t| t.numel())
            .sum::<usize>()
    );
    Ok(())
}

pub(super) fn embed_folder(a: EmbedArgs) -> Result<()> {
    let cfg = a.model.config();
    let (model, vs) = load_model(&a.model, &a.weights, &a.device)?;
    let device = vs.device();
    let (rgb, count) = if a.input.is_file() {
        let set = PairSet::load(&a.input)?;
        let count = set.images();
        (set.rgb, count)
    } else {
        let files = image_folder::list_images(&a.input)?;
        let mut rgb = Vec::with_capacity(files.len() * 112 * 112 * 3);
        for f in &files {
            rgb.extend(image_folder::load_rgb112(f)?);
        }
        (rgb, files.len())
    };
    let started = Instant::now();
    let out = embed(&model, &rgb, count, device, a.batch_size.max(1), a.flip);
    let data = Vec::<f32>::try_from(out.embeddings.flatten(0, -1))?;
    npy::write_f32(&a.out, &[count, cfg.embedding_size as usize], &data)?;
    out!(
        "wrote {} ({count} images x {}, {:.1} images/s)",
        a.out.display(),
        cfg.embedding_size,
        count as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn verification_json(v: &Verification, pairs: usize) -> serde_json::Value {
    let t = &v.tar_at_far;
    serde_json::json!({
        "pairs": pairs,
        "accuracy": v.accuracy.accuracy,
        "std": v.accuracy.std,
        "threshold": v.accuracy.threshold,
        "tar_at_far": {"far_target": t.far_target, "tar": t.tar, "tar_std": t.tar_std, "far": t.far},
    })
}

pub(super) fn eval(a: EvalArgs) -> Result<()> {
    if a.bins.is_empty() && a.probe.is_none() {
        bail!("nothing to evaluate: give --bin FILE (repeatable) and/or --probe DIR --gallery DIR");
    }
    let (model, vs) = load_model(&a.model, &a.weights, &a.device)?;
    let (device, batch) = (vs.device(), a.batch_size.max(1));
    let mut results = Vec::new();
    for path in &a.bins {
        let set = PairSet::load(path)?;
        let v = set.evaluate(&model, device, batch)?;
        if !a.json {
            if results.is_empty() {
                out!(
                    "{:<16} {:>6} {:>10} {:>7} {:>16}",
                    "set",
                    "pairs",
                    "accuracy",
                    "std",
                    "TAR@FAR=1e-3"
                );
            }
            out!(
                "{:<16} {:>6} {:>9.2}% {:>7.2} {:>15.2}%",
                set.name,
                set.issame.len(),
                v.accuracy.accuracy * 100.0,
                v.accuracy.std * 100.0,
                v.tar_at_far.tar * 100.0
            );
        }
        results.push((set.name.clone(), verification_json(&v, set.issame.len())));
    }
    let mut retrieval_json = None;
    if let (Some(probe), Some(gallery)) = (&a.probe, &a.gallery) {
        let probes = Gallery::load(probe)?;
        let gallery = Gallery::load(gallery)?;
        let distractors = a.distractors.as_deref().map(Gallery::load).transpose()?;
        let c = retrieval(
            &model,
            device,
            batch,
            &probes,
            &gallery,
            distractors.as_ref(),
        )?;
        if !a.json {
            out!(
                "\nretrieval: {} probes ({} with no match in the gallery), gallery {} + {} distractors",
                c.probes,
                c.absent,
                gallery.len(),
                distractors.as_ref().map_or(0, |d| d.len())
            );
            for r in &c.ranks {
                out!("  rank-{:<3} {:>7.2}%", r.rank, r.rate * 100.0);
            }
        }
        let mut obj = serde_json::json!({"probes": c.probes, "absent": c.absent});
        for r in &c.ranks {
            obj[format!("rank{}", r.rank)] = r.rate.into();
        }
        retrieval_json = Some(obj);
    }
    if a.json {
        let out = match (results.len(), retrieval_json) {
            (1, None) => results.pop().expect("one result").1,
            (_, r) => {
                let mut map = serde_json::Map::new();
                for (name, v) in results {
                    let key = if map.contains_key(&name) {
                        format!("{name}#{}", map.len())
                    } else {
                        name
                    };
                    map.insert(key, v);
                }
                if let Some(r) = r {
                    map.insert("retrieval".into(), r);
                }
                serde_json::Value::Object(map)
            }
        };
        out!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
