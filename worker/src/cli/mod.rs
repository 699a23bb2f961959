//! The `lgaf` command-line tool: its arguments, the dispatch to one module per subcommand
//! group, and the helpers they share (output lines, model loading, the thread pool). The
//! binary itself only parses, calls [`run`] and reports the error.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use lgaf_model::{weights, Arch, Fusion, Lgaf, ModelConfig};
use tch::nn::VarStore;

use lgaf_telemetry::{Telemetry, TelemetryArgs};

use crate::device::parse_device;

/// `println!` for this tool's output: a reader that went away (`lgaf ckpt ls | head -1`)
/// only drops the line, and any other failure to write is the command's error; `println!`
/// would panic on both. Defined before the submodules so that they see it.
macro_rules! out {
    ($($arg:tt)*) => {
        ::lgaf_proto::console::print_line(format_args!($($arg)*))?
    };
}

mod ckpt;
mod dataset;
mod demo;
mod eval;
mod export;
mod report;
mod status;
mod sweep;
mod train;

pub use ckpt::{CkptCommand, CkptConvertArgs, CkptExportArgs, CkptLsArgs};
pub use dataset::{InspectArgs, PackArgs};
pub use demo::DemoArgs;
pub use eval::{EmbedArgs, EvalArgs, InitArgs};
pub use export::ExportArgs;
pub use report::ReportArgs;
pub use status::StatusArgs;
pub use sweep::SweepArgs;
pub use train::TrainArgs;

// No doc comments on `Cli` and `Command`: clap would turn them into help text.
#[derive(Parser)]
#[command(
    name = "lgaf",
    version,
    about = "Train and run LGAF face-recognition models"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

impl Cli {
    /// Logging, tracing and metrics flags (global: they go before or after the command).
    pub fn telemetry(&self) -> &TelemetryArgs {
        &self.telemetry
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Write freshly initialised weights (safetensors, PyTorch parameter names).
    Init(InitArgs),
    /// Embed every image of a folder: a float32 .npy of shape [N, 512], L2-normalised, one
    /// row per image in sorted file-name order.
    Embed(EmbedArgs),
    /// Train in one process (CPU or one GPU) from a TOML config; resumes from the newest
    /// checkpoint in `checkpoint.dir`.
    Train(TrainArgs),
    /// Convert an image folder (root/<identity>/*.jpg|png) into an insightface RecordIO pack
    /// (out.rec + out.idx), in parallel.
    Pack(PackArgs),
    /// Summarise a RecordIO pack or an image folder: images, identities, images per
    /// identity, image sizes, and the first problems found.
    Inspect(InspectArgs),
    /// Evaluate weights on verification .bin files (insightface's protocol: accuracy over 10
    /// folds, TAR at FAR 1e-3) and/or a retrieval probe/gallery set (CMC rank 1/5/20).
    Eval(EvalArgs),
    /// The end-to-end CPU demo: train a small LGAF on synthetic faces for a few minutes,
    /// then verify held-out identities and report attention weights per nuisance factor.
    Demo(DemoArgs),
    /// Write trained weights as a model file for inference elsewhere: ONNX (opset 18+, any
    /// batch size), which onnxruntime, TensorRT and OpenVINO run as insightface's models.
    Export(ExportArgs),
    /// Checkpoints of a run in its store (coordinated or `lgaf train`'s): list them, export
    /// the inference weights of one, or convert the old single-process folders.
    #[command(subcommand)]
    Ckpt(CkptCommand),
    /// Write a run's history (steps, generations, faults, checkpoints, evaluations) from its
    /// store as one self-contained HTML page of plots, and with --png the plots as PNG files.
    Report(ReportArgs),
    /// Train and evaluate one job per point of a grid over config keys, for several seeds:
    /// held-out accuracy per nuisance factor and LGF attention, as results.json, a Markdown
    /// summary over seeds and an HTML page. Resumable: run it again to go on.
    Sweep(SweepArgs),
    /// A coordinated job as its coordinator sees it: state, generation, step, the workers
    /// and the last committed checkpoint (the GetJobStatus call), as text or with --json.
    Status(StatusArgs),
}

/// The network's shape; must match the weights.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// IResNet depth: r18, r34, r50, r100 or r200.
    #[arg(long, default_value = "r100")]
    arch: Arch,
    /// Feature fusion: lgf (LGAF), add, local (MHMS only) or global (plain IResNet/ArcFace).
    #[arg(long, default_value = "lgf")]
    fusion: Fusion,
    /// MHMS heads b.
    #[arg(long, default_value_t = 4)]
    heads: i64,
    /// Channel-width multiplier (1 = the published shapes; 0.25 for CPU experiments).
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Embedding size.
    #[arg(long, default_value_t = 512)]
    embedding_size: i64,
    /// MSNet kernel sizes, comma-separated (model.kernels).
    #[arg(long, value_delimiter = ',', default_value = "1,3,5")]
    kernels: Vec<i64>,
    /// MSNet branch channels (model.mid_channels); default 128 x width.
    #[arg(long)]
    mid_channels: Option<i64>,
    /// LGF concentration h (model.lgf.h): not stored in the weights, so it must be the
    /// value the model was trained with.
    #[arg(long, default_value_t = 0.333)]
    lgf_h: f64,
}

impl ModelArgs {
    fn config(&self) -> ModelConfig {
        let mut cfg = ModelConfig {
            arch: self.arch,
            fusion: self.fusion,
            heads: self.heads,
            width: self.width,
            embedding_size: self.embedding_size,
            kernels: self.kernels.clone(),
            mid_channels: self.mid_channels,
            ..Default::default()
        };
        cfg.lgf.h = self.lgf_h;
        cfg
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli, telemetry: &mut Telemetry) -> Result<()> {
    match cli.command {
        Command::Init(a) => eval::init(a),
        Command::Embed(a) => eval::embed_folder(a),
        Command::Train(a) => train::train(a, telemetry),
        Command::Eval(a) => eval::eval(a),
        Command::Pack(a) => dataset::pack(a),
        Command::Inspect(a) => dataset::inspect(a),
        Command::Demo(a) => demo::demo(a),
        Command::Ckpt(c) => ckpt::run(c),
        Command::Export(a) => export::export(a),
        Command::Report(a) => report::report(a),
        Command::Status(a) => status::status(a),
        Command::Sweep(a) => sweep::sweep(a),
    }
}

/// The error and its causes on one line, leaving out causes the message already quotes
/// (our error types put their source into their own text).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    line
}

fn model_metadata(cfg: &ModelConfig) -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("arch".to_string(), cfg.arch.name().to_string()),
        ("fusion".to_string(), cfg.fusion.name().to_string()),
        ("heads".to_string(), cfg.heads.to_string()),
        ("width".to_string(), cfg.width.to_string()),
    ])
}

fn load_model(model: &ModelArgs, weights_path: &Path, device: &str) -> Result<(Lgaf, VarStore)> {
    let device = parse_device(device)?;
    let mut vs = VarStore::new(device);
    let model = Lgaf::new(&vs.root(), &model.config())?;
    weights::load(&mut vs, weights_path)?;
    Ok((model, vs))
}

fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("starting the thread pool")?;
    }
    Ok(())
}
