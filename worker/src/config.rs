//! The training configuration: TOML file + `LGAF__SECTION__KEY` environment overrides, on
//! top of embedded defaults (every key is listed, with its default, in
//! `configs/train.toml`).

use std::path::{Path, PathBuf};

use lgaf_data::augment::AugmentConfig;
use lgaf_model::amp::Precision;
use lgaf_model::margin::CombinedMargin;
use lgaf_model::{Arch, Fusion, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::error::{Result, WorkerError};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub loss: LossConfig,
    pub data: DataConfig,
    pub train: TrainLoopConfig,
    pub optim: OptimConfig,
    pub checkpoint: CheckpointConfig,
    pub eval: EvalConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// `cosface` (paper default), `arcface`, or `combined:m1,m2,m3`.
    pub name: String,
    pub scale: f64,
    /// Partial-FC sample rate: 1.0 uses every class centre each step.
    pub sample_rate: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            name: "cosface".into(),
            scale: 64.0,
            sample_rate: 1.0,
        }
    }
}

impl LossConfig {
    pub fn margin(&self) -> Result<CombinedMargin> {
        CombinedMargin::parse(&self.name, self.scale).map_err(|message| WorkerError::Config {
            key: "loss.name",
            message: message.to_string(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    pub seed: u64,
    /// Training identities (ids 0..identities).
    pub identities: usize,
    pub images_per_identity: usize,
    /// Probability that a training image carries a nuisance factor.
    pub nuisance_prob: f32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            identities: 200,
            images_per_identity: 40,
            nuisance_prob: 0.5,
        }
    }
}

/// Where training images come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The embedded synthetic faces (`data.synthetic`).
    #[default]
    Synthetic,
    /// `data.path/<identity>/*.jpg|png`.
    Folder,
    /// An insightface pack: `data.path` is the `.rec` file beside its `.idx`.
    Recordio,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    pub source: SourceKind,
    /// The folder or pack of a `folder` or `recordio` source; unused by `synthetic`.
    pub path: PathBuf,
    /// Per-process batch size.
    pub batch_size: usize,
    /// Batches prepared ahead of the trainer.
    pub prefetch: usize,
    /// Decoding and augmentation threads; 0: the available cores minus one (at least 1).
    pub workers: usize,
    /// Stop at the first unreadable record instead of skipping it.
    pub strict: bool,
    /// Stop when more than this fraction of the records read so far are bad.
    pub max_bad_fraction: f64,
    pub augment: AugmentConfig,
    pub synthetic: SyntheticConfig,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: SourceKind::Synthetic,
            path: PathBuf::new(),
            batch_size: 64,
            prefetch: 4,
            workers: 0,
            strict: false,
            max_bad_fraction: 0.5,
            augment: AugmentConfig::default(),
            synthetic: SyntheticConfig::default(),
        }
    }
}

impl DataConfig {
    /// Loader threads: `workers`, or the available cores minus one (at least 1) when 0.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism()
                .map_or(1, |cores| cores.get().saturating_sub(1))
                .max(1),
            n => n,
        }
    }
}

/// Checks `[data.augment]`: probabilities in [0, 1], strengths in [0, 4].
fn validate_augment(a: &AugmentConfig) -> Result<()> {
    let probabilities = [
        ("data.augment.flip_prob", a.flip_prob),
        ("data.augment.crop_prob", a.crop_prob),
        ("data.augment.low_res_prob", a.low_res_prob),
        ("data.augment.photometric_prob", a.photometric_prob),
    ];
    for (key, p) in probabilities {
        float_in(key, f64::from(p), Closed(0.0), Closed(1.0))?;
    }
    let strengths = [
        ("data.augment.brightness", a.brightness),
        ("data.augment.contrast", a.contrast),
        ("data.augment.saturation", a.saturation),
    ];
    for (key, s) in strengths {
        float_in(
            key,
            f64::from(s),
            Closed(0.0),
            Closed(bounds::MAX_JITTER_STRENGTH),
        )?;
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainLoopConfig {
    pub epochs: usize,
    /// Stop after this many steps in total (0: run all epochs).
    pub max_steps: u64,
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when available).
    pub device: String,
    /// `fp32`, `fp16` (CUDA autocast with dynamic loss scaling) or `bf16` (autocast, no
    /// scaling; CUDA, or the CPU where it has bf16 units).
    pub precision: Precision,
    /// NHWC activations and conv weights on CUDA.
    pub channels_last: bool,
    /// Log a line every this many steps.
    pub log_every: u64,
    /// Show the progress bar on a terminal.
    pub progress: bool,
}

impl Default for TrainLoopConfig {
    fn default() -> Self {
        Self {
            epochs: 26,
            max_steps: 0,
            seed: 0,
            device: "auto".into(),
            precision: Precision::Fp32,
            channels_last: true,
            log_every: 50,
            progress: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Epochs at which the learning rate is multiplied by `lr_decay`.
    pub lr_steps: Vec<f64>,
    pub lr_decay: f64,
    /// Linear warm-up from 0, in epochs (fractions allowed).
    pub warmup_epochs: f64,
    /// Global gradient-norm clip of the network (not the class centres); 0 disables.
    pub clip_grad_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            lr_steps: vec![12.0, 20.0, 24.0],
            lr_decay: 0.1,
            warmup_epochs: 0.0,
            clip_grad_norm: 5.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// The checkpoint store: a directory path, `file:///dir` or `s3://bucket/prefix` (the
    /// same as `lgaf-coordinator --store`). Checkpoints go to `runs/<run_id>/ckpt/` in it.
    pub dir: String,
    /// The run's name in the store; training started again with the same store and run id
    /// resumes (so does `lgaf-coordinator --run-id` with it).
    pub run_id: String,
    /// Commit a checkpoint every this many steps (0: only at epoch ends).
    pub every_steps: u64,
    /// Committed checkpoints to keep (0: all of them, as in coordinated runs).
    pub keep_last: usize,
    /// Seconds a coordinated rank gives its checkpoint's uploads (and rank 0 the run's
    /// history) from the hand-over; one not done by then or failed after the store's retries
    /// is abandoned: never acknowledged, so never committed, while training goes on and the
    /// next checkpoint is tried. The last checkpoint of the run is never abandoned. 0: no
    /// limit; at most a week ([`bounds::MAX_UPLOAD_DEADLINE_SECS`]).
    pub upload_deadline_secs: u64,
    /// Live recovery (coordinated runs of more than one rank): each rank also keeps the
    /// replica of the next rank's classifier shard and every rank keeps rank 0's buffers,
    /// so when ranks are lost the next generation can start from the survivors' state at
    /// the step they reached instead of the last checkpoint. Costs one more shard of
    /// centres and momentum per rank, its share of the classifier's work, and a broadcast
    /// of the buffers each step. false: recovery is always from the last checkpoint.
    pub live_recovery: bool,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            dir: "runs-store".into(),
            run_id: "default".into(),
            every_steps: 1000,
            keep_last: 3,
            upload_deadline_secs: 600,
            live_recovery: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate every this many steps (0: only at the end): held-out synthetic identities
    /// when training on them, and `bins`.
    pub every_steps: u64,
    /// Held-out identities (ids after the training ones).
    pub identities: u32,
    /// Verification pairs (half same, half different).
    pub pairs: usize,
    /// Verification .bin files (lfw.bin, cfp_fp.bin, ...) evaluated at the same times.
    pub bins: Vec<PathBuf>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every_steps: 0,
            identities: 100,
            pairs: 600,
            bins: Vec::new(),
        }
    }
}

impl TrainConfig {
    /// Embedded defaults, then `file` (if any), then `LGAF__SECTION__KEY` variables.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut builder = Self::defaults()?;
        if let Some(path) = file {
            if !path.exists() {
                return Err(WorkerError::Config {
                    key: "--config",
                    message: format!("{}: no such file", path.display()),
                });
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        Self::finish(builder)
    }

    /// Embedded defaults, then the TOML `text` (the coordinator hands every worker the
    /// job's config this way), then `LGAF__SECTION__KEY` variables.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let builder =
            Self::defaults()?.add_source(config::File::from_str(text, config::FileFormat::Toml));
        Self::finish(builder)
    }

    fn defaults() -> Result<config::ConfigBuilder<config::builder::DefaultState>> {
        let defaults = config::Config::try_from(&TrainConfig::default())?;
        Ok(config::Config::builder().add_source(defaults))
    }

    fn finish(builder: config::ConfigBuilder<config::builder::DefaultState>) -> Result<Self> {
        let builder = builder.add_source(
            config::Environment::with_prefix("LGAF")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("model.kernels")
                .with_list_parse_key("optim.lr_steps")
                .with_list_parse_key("eval.bins")
                .try_parsing(true),
        );
        let built = builder.build()?;
        // The `config` crate rounds a float given to an integer key (64.5 -> 65, NaN -> 0,
        // 1e300 -> the type's maximum): compare what was written with what was kept.
        let written: serde_json::Value = built.clone().try_deserialize()?;
        let cfg: TrainConfig = built.try_deserialize()?;
        // (A config that does not serialize, e.g. a non-UTF-8 path, cannot come from here.)
        if let Ok(kept) = serde_json::to_value(&cfg) {
            check_integers(&written, &kept, "")?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every numeric key against its declared range (the constants in [`bounds`])
    /// and the products that size allocations or count steps. Errors name the key, the
    /// value and the range. [`TrainConfig::load`] and [`TrainConfig::from_toml_str`] call
    /// it (after the environment overrides), and so does the trainer.
    pub fn validate(&self) -> Result<()> {
        use bounds::*;
        self.model.validate()?;

        let loss = &self.loss;
        // Before the margin: a bad scale is the scale's fault, not the loss name's.
        float_in("loss.scale", loss.scale, Open(0.0), Closed(MAX_LOSS_SCALE))?;
        self.loss.margin()?;
        float_in("loss.sample_rate", loss.sample_rate, Open(0.0), Closed(1.0))?;

        let data = &self.data;
        int_in("data.batch_size", data.batch_size as u64, 1, MAX_BATCH_SIZE)?;
        int_in("data.prefetch", data.prefetch as u64, 1, MAX_PREFETCH)?;
        int_in("data.workers", data.workers as u64, 0, MAX_WORKERS)?;
        // Every batch in flight is a buffer of batch_size images (one per worker or per
        // prefetch slot, whichever is more; 0 workers: the cores, known only at run time).
        let window = data.prefetch.max(data.workers) as u64;
        product(
            "data.batch_size",
            &[
                ("data.batch_size", data.batch_size as u64),
                ("max(data.prefetch, data.workers)", window),
            ],
            MAX_IN_FLIGHT_IMAGES,
        )?;
        float_in(
            "data.max_bad_fraction",
            data.max_bad_fraction,
            Closed(0.0),
            Closed(1.0),
        )?;
        validate_augment(&data.augment)?;
        let s = &data.synthetic;
        // Checked whatever the source (the held-out evaluation identities follow the
        // synthetic training ones); the product only where the synthetic source is read.
        int_in(
            "data.synthetic.identities",
            s.identities as u64,
            2,
            MAX_SYNTH_IDENTITIES,
        )?;
        int_in(
            "data.synthetic.images_per_identity",
            s.images_per_identity as u64,
            1,
            MAX_SYNTH_IMAGES_PER_IDENTITY,
        )?;
        float_in(
            "data.synthetic.nuisance_prob",
            f64::from(s.nuisance_prob),
            Closed(0.0),
            Closed(1.0),
        )?;
        match data.source {
            SourceKind::Synthetic => {
                let images = product(
                    "data.synthetic",
                    &[
                        ("data.synthetic.identities", s.identities as u64),
                        (
                            "data.synthetic.images_per_identity",
                            s.images_per_identity as u64,
                        ),
                    ],
                    MAX_SYNTH_IMAGES,
                )?;
                if images < data.batch_size as u64 {
                    return Err(WorkerError::Config {
                        key: "data.batch_size",
                        message: format!(
                            "{} is larger than the synthetic dataset ({images} images)",
                            data.batch_size
                        ),
                    });
                }
            }
            // The size of a folder or pack is known once it is opened (the trainer checks).
            SourceKind::Folder | SourceKind::Recordio => {
                if data.path.as_os_str().is_empty() {
                    return Err(WorkerError::Config {
                        key: "data.path",
                        message: format!("the {:?} source needs a path", data.source)
                            .to_lowercase(),
                    });
                }
            }
        }

        let train = &self.train;
        // Bounded so that steps per epoch x epochs cannot overflow a u64 (see MAX_EPOCHS).
        int_in("train.epochs", train.epochs as u64, 1, MAX_EPOCHS)?;
        int_in("train.log_every", train.log_every, 1, u64::MAX)?;

        let o = &self.optim;
        float_in("optim.lr", o.lr, Open(0.0), Closed(MAX_LR))?;
        float_in("optim.momentum", o.momentum, Closed(0.0), Open(1.0))?;
        float_in("optim.weight_decay", o.weight_decay, Closed(0.0), Open(1.0))?;
        if o.lr_steps.len() > MAX_LR_STEPS {
            return Err(WorkerError::Config {
                key: "optim.lr_steps",
                message: format!("{} milestones; at most {MAX_LR_STEPS}", o.lr_steps.len()),
            });
        }
        for &step in &o.lr_steps {
            float_in(
                "optim.lr_steps",
                step,
                Closed(0.0),
                Closed(MAX_EPOCHS as f64),
            )?;
        }
        float_in("optim.lr_decay", o.lr_decay, Open(0.0), Closed(1.0))?;
        float_in(
            "optim.warmup_epochs",
            o.warmup_epochs,
            Closed(0.0),
            Closed(MAX_EPOCHS as f64),
        )?;
        float_in(
            "optim.clip_grad_norm",
            o.clip_grad_norm,
            Closed(0.0),
            Closed(MAX_CLIP_GRAD_NORM),
        )?;

        int_in(
            "checkpoint.upload_deadline_secs",
            self.checkpoint.upload_deadline_secs,
            0,
            MAX_UPLOAD_DEADLINE_SECS,
        )?;

        let e = &self.eval;
        int_in(
            "eval.identities",
            u64::from(e.identities),
            2,
            MAX_EVAL_IDENTITIES,
        )?;
        int_in("eval.pairs", e.pairs as u64, MIN_EVAL_PAIRS, MAX_EVAL_PAIRS)?;
        Ok(())
    }

    pub fn arch(&self) -> Arch {
        self.model.arch
    }

    pub fn fusion(&self) -> Fusion {
        self.model.fusion
    }
}

/// The declared ranges of the numeric keys, each with its reason. `model.*` has its own in
/// `lgaf_model::config`; `train.seed`, `data.synthetic.seed`, `train.max_steps` (0: all
/// epochs), `checkpoint.every_steps`, `eval.every_steps` (0: off) and `checkpoint.keep_last`
/// (0: keep all, in a coordinated run) take any u64 / usize.
pub mod bounds {
    /// `train.epochs`: 385 x the paper's 26. The trainer computes steps per epoch x epochs
    /// in a u64 (`Trainer::total_steps`); steps per epoch are at most the dataset's samples,
    /// which stay below 2^45 (the sampler holds an 8-byte index per sample), and
    /// 2^45 x 10^4 < 2^59: the product cannot wrap.
    pub const MAX_EPOCHS: u64 = 10_000;
    /// `data.batch_size` (per process): 32 x the paper's 128 per GPU; one batch buffer is
    /// batch x 112 x 112 x 3 bytes (154 MB at 4096).
    pub const MAX_BATCH_SIZE: u64 = 4096;
    /// `data.prefetch`: batches held ready; more hides no further latency.
    pub const MAX_PREFETCH: u64 = 64;
    /// `data.workers`: loader threads; 256 exceeds the cores of any one machine here.
    pub const MAX_WORKERS: u64 = 256;
    /// batch_size x max(prefetch, workers): images in flight, 37,632 bytes each: 2^18 of
    /// them are 9.2 GiB of host memory.
    pub const MAX_IN_FLIGHT_IMAGES: u64 = 1 << 18;
    /// `data.synthetic.identities`: 2^24, eight times WebFace42M's 2 M identities; ids are
    /// u32 and the held-out ones follow (2^24 + 2^24 fits).
    pub const MAX_SYNTH_IDENTITIES: u64 = 1 << 24;
    /// `data.synthetic.images_per_identity`: far past any real dataset's (WebFace42M
    /// averages 21).
    pub const MAX_SYNTH_IMAGES_PER_IDENTITY: u64 = 1 << 16;
    /// identities x images_per_identity: 2^26 (67 M) exceeds WebFace42M's 42 M images; the
    /// sampler's per-epoch permutation is then 512 MiB.
    pub const MAX_SYNTH_IMAGES: u64 = 1 << 26;
    /// `loss.scale`: the paper's s = 64; past 1024 the fp32 softmax is one-hot for any
    /// cosine gap above 0.1 and the gradients vanish.
    pub const MAX_LOSS_SCALE: f64 = 1024.0;
    /// `optim.lr`: 100 x the paper's 0.1; SGD on this network diverges long before.
    pub const MAX_LR: f64 = 10.0;
    /// `optim.lr_steps`: milestones; each multiplies the rate by lr_decay once.
    pub const MAX_LR_STEPS: usize = 64;
    /// `optim.clip_grad_norm` (0: off): any finite norm; a bound keeps NaN and inf out.
    pub const MAX_CLIP_GRAD_NORM: f64 = 1e9;
    /// `checkpoint.upload_deadline_secs` (0: no limit): a week; a checkpoint not up by
    /// then is not coming, and the bound keeps the deadline's instant from overflowing.
    pub const MAX_UPLOAD_DEADLINE_SECS: u64 = 7 * 24 * 3600;
    /// `data.augment.{brightness,contrast,saturation}`: factors come from [1 - s, 1 + s];
    /// at 4 a pixel above 51 already saturates (AdaFace uses 0.5).
    pub const MAX_JITTER_STRENGTH: f64 = 4.0;
    /// `eval.identities`: held-out ids after the training ones, u32 (see
    /// MAX_SYNTH_IDENTITIES).
    pub const MAX_EVAL_IDENTITIES: u64 = 1 << 24;
    /// `eval.pairs`: at least 2 per fold of insightface's 10-fold protocol.
    pub const MIN_EVAL_PAIRS: u64 = 20;
    /// `eval.pairs`: more than LFW's 6,000 or CFP-FP's 7,000; the held-out set renders
    /// 2 x pairs images of 37,632 bytes in memory (753 MB at 10,000).
    pub const MAX_EVAL_PAIRS: u64 = 10_000;
}

/// One end of a float range.
#[derive(Clone, Copy)]
enum End {
    Open(f64),
    Closed(f64),
}
use End::{Closed, Open};

/// `value` must be finite and between `lo` and `hi`; the error names `key`, the value and
/// the range in interval notation.
fn float_in(key: &'static str, value: f64, lo: End, hi: End) -> Result<()> {
    let above = match lo {
        Open(l) => value > l,
        Closed(l) => value >= l,
    };
    let below = match hi {
        Open(h) => value < h,
        Closed(h) => value <= h,
    };
    if value.is_finite() && above && below {
        return Ok(());
    }
    let range = match (lo, hi) {
        (Open(l), Open(h)) => format!("({l}, {h})"),
        (Open(l), Closed(h)) => format!("({l}, {h}]"),
        (Closed(l), Open(h)) => format!("[{l}, {h})"),
        (Closed(l), Closed(h)) => format!("[{l}, {h}]"),
    };
    let message = if value.is_finite() {
        format!("{value:?} is outside {range}")
    } else {
        format!("{value:?} is not a finite number (expected one in {range})")
    };
    Err(WorkerError::Config { key, message })
}

/// `value` must lie in `min..=max`; the error names `key`, the value and the range.
fn int_in(key: &'static str, value: u64, min: u64, max: u64) -> Result<()> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    let message = if max == u64::MAX {
        format!("{value} is below the minimum {min}")
    } else {
        format!("{value} is outside the range {min}..={max}")
    };
    Err(WorkerError::Config { key, message })
}

/// The product of `factors` (checked, so it cannot wrap), at most `max`; the error names
/// every factor.
fn product(key: &'static str, factors: &[(&str, u64)], max: u64) -> Result<u64> {
    let total = factors
        .iter()
        .try_fold(1u64, |acc, &(_, f)| acc.checked_mul(f));
    match total {
        Some(t) if t <= max => Ok(t),
        _ => Err(WorkerError::Config {
            key,
            message: format!(
                "{} = {} exceeds {max}",
                factors
                    .iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(" x "),
                total.map_or("more than 2^64".to_string(), |t| t.to_string()),
            ),
        }),
    }
}

/// Fails where a numeric key was given what the `config` crate converts silently: a
/// fraction (or NaN, or a number out of range) for an integer, a boolean or a word such as
/// "yes" for a number. `written`: the loaded values as written; `kept`: the deserialized
/// config. The error names the dotted key and the value.
fn check_integers(written: &serde_json::Value, kept: &serde_json::Value, key: &str) -> Result<()> {
    use serde_json::Value;
    match (written, kept) {
        (Value::Object(w), Value::Object(k)) => {
            for (name, kv) in k {
                if let Some(wv) = w.get(name) {
                    let key = if key.is_empty() {
                        name.clone()
                    } else {
                        format!("{key}.{name}")
                    };
                    check_integers(wv, kv, &key)?;
                }
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(k)) => {
            for (wv, kv) in w.iter().zip(k) {
                check_integers(wv, kv, key)?;
            }
            Ok(())
        }
        // serde_json has no NaN or infinity: such a float arrives as null.
        (Value::Null, Value::Number(k)) if !k.is_f64() => Err(WorkerError::ConfigValue {
            key: key.to_string(),
            message: "NaN or an infinity is not an integer".into(),
        }),
        (Value::Number(w), Value::Number(k)) if w.is_f64() && !k.is_f64() => {
            let given = w.as_f64().unwrap_or(f64::NAN);
            let kept = k.as_f64().unwrap_or(f64::NAN);
            if given.fract() != 0.0 {
                Err(WorkerError::ConfigValue {
                    key: key.to_string(),
                    message: format!("{given:?} is not a whole number (expected an integer)"),
                })
            } else if given != kept {
                Err(WorkerError::ConfigValue {
                    key: key.to_string(),
                    message: format!("{given:?} is out of range for this integer key"),
                })
            } else {
                Ok(())
            }
        }
        // The crate also reads true/false (and "yes", "on", ...) as 1 and 0.
        (Value::Bool(b), Value::Number(_)) => Err(WorkerError::ConfigValue {
            key: key.to_string(),
            message: format!("{b} is a boolean (expected a number)"),
        }),
        (Value::String(text), Value::Number(k)) => {
            let number = if k.is_f64() {
                text.trim().parse::<f64>().is_ok()
            } else {
                text.trim().parse::<i128>().is_ok()
            };
            if number {
                Ok(())
            } else {
                Err(WorkerError::ConfigValue {
                    key: key.to_string(),
                    message: format!("{text:?} is not a number"),
                })
            }
        }
        _ => Ok(()),
    }
}
