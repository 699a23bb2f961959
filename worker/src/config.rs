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
            message,
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

/// Checks `[data.augment]`: probabilities in [0, 1], strengths finite and >= 0.
fn validate_augment(a: &AugmentConfig) -> Result<()> {
    let probabilities = [
        ("data.augment.flip_prob", a.flip_prob),
        ("data.augment.crop_prob", a.crop_prob),
        ("data.augment.low_res_prob", a.low_res_prob),
        ("data.augment.photometric_prob", a.photometric_prob),
    ];
    for (key, p) in probabilities {
        if !(0.0..=1.0).contains(&p) {
            return Err(WorkerError::Config {
                key,
                message: format!("{p} is outside [0, 1]"),
            });
        }
    }
    let strengths = [
        ("data.augment.brightness", a.brightness),
        ("data.augment.contrast", a.contrast),
        ("data.augment.saturation", a.saturation),
    ];
    for (key, s) in strengths {
        if !(s >= 0.0 && s.is_finite()) {
            return Err(WorkerError::Config {
                key,
                message: format!("{s} is not a finite strength >= 0"),
            });
        }
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
    /// Directory of the run's checkpoints; a run started again on it resumes.
    pub dir: PathBuf,
    /// Commit a checkpoint every this many steps (0: only at epoch ends).
    pub every_steps: u64,
    /// Committed checkpoints to keep.
    pub keep_last: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("runs/default"),
            every_steps: 1000,
            keep_last: 3,
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
        let cfg: TrainConfig = builder.build()?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.loss.margin()?;
        let bad = |key, message: String| Err(WorkerError::Config { key, message });
        if !(self.loss.sample_rate > 0.0 && self.loss.sample_rate <= 1.0) {
            return bad(
                "loss.sample_rate",
                format!("{} is outside (0, 1]", self.loss.sample_rate),
            );
        }
        let data = &self.data;
        if data.batch_size == 0 {
            return bad("data.batch_size", "must be at least 1".into());
        }
        if data.prefetch == 0 {
            return bad("data.prefetch", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&data.max_bad_fraction) {
            return bad(
                "data.max_bad_fraction",
                format!("{} is outside [0, 1]", data.max_bad_fraction),
            );
        }
        validate_augment(&data.augment)?;
        match data.source {
            SourceKind::Synthetic => {
                let s = &data.synthetic;
                if s.identities < 2 || s.images_per_identity == 0 {
                    return bad(
                        "data.synthetic",
                        "needs at least 2 identities with at least 1 image".into(),
                    );
                }
                if s.identities * s.images_per_identity < data.batch_size {
                    return bad("data.batch_size", "is larger than the dataset".into());
                }
            }
            // The size of a folder or pack is known once it is opened (the trainer checks).
            SourceKind::Folder | SourceKind::Recordio => {
                if data.path.as_os_str().is_empty() {
                    return bad(
                        "data.path",
                        format!("the {:?} source needs a path", data.source).to_lowercase(),
                    );
                }
            }
        }
        if self.train.epochs == 0 {
            return bad("train.epochs", "must be at least 1".into());
        }
        if self.eval.pairs < 20 || self.eval.identities < 2 {
            return bad(
                "eval",
                "needs at least 20 pairs of at least 2 identities".into(),
            );
        }
        Ok(())
    }

    pub fn arch(&self) -> Arch {
        self.model.arch
    }

    pub fn fusion(&self) -> Fusion {
        self.model.fusion
    }
}
