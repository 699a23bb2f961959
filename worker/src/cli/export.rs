//! `lgaf export`: trained weights as a model file for inference elsewhere (ONNX; the work is
//! `crate::onnx_export`'s).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use super::ModelArgs;
use crate::onnx_export::{export_onnx, MIN_OPSET};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// ONNX: input `input` [N, 3, 112, 112] RGB as (x - 127.5) / 127.5, output `embedding`
    /// [N, D], kappa before L2 normalisation (as insightface's models).
    Onnx,
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Weights (.safetensors) with the spec's names (lgaf ckpt export, lgaf demo, lgaf init).
    #[arg(long)]
    weights: PathBuf,
    #[arg(long, value_enum, default_value = "onnx")]
    format: Format,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// ONNX opset (18 or later: torch's maintained exporter writes no older one).
    #[arg(long, default_value_t = MIN_OPSET, value_parser = clap::value_parser!(u32).range(i64::from(MIN_OPSET)..))]
    opset: u32,
    /// The Python that runs PyTorch's exporter: it needs torch, onnx, onnxscript and
    /// onnxruntime (the project's .venv has them: make venv).
    #[arg(long, env = "LGAF_PYTHON", default_value = "python3")]
    python: PathBuf,
}

pub(super) fn export(a: ExportArgs) -> Result<()> {
    match a.format {
        Format::Onnx => {
            let done = export_onnx(&a.model.config(), &a.weights, &a.out, a.opset, &a.python)?;
            out!(
                "wrote {} ({:.1} MB, opset {}, {} nodes): input `{}` [N, 3, 112, 112] RGB as \
                 (x - 127.5) / 127.5, output `{}` [N, {}] before L2 normalisation; checked with \
                 the ONNX checker, and onnxruntime matches PyTorch to {:.1e} of the output's scale",
                done.out.display(),
                done.bytes as f64 / 1e6,
                done.opset,
                done.nodes,
                done.inputs.join(", "),
                done.outputs.join(", "),
                a.model.config().embedding_size,
                done.max_relative_difference_vs_torch
            );
        }
    }
    Ok(())
}
