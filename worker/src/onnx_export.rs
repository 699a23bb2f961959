//! `lgaf export --format onnx`: a trained network written as an ONNX graph that runs where
//! insightface's recognition models run (onnxruntime, TensorRT, OpenVINO).
//!
//! The graph is written by PyTorch's exporter from the model's PyTorch twin
//! (`worker/python/lgaf_torch.py`, held equal to `lgaf-model` by `torch_parity.rs`), which
//! this binary embeds and runs with a Python that has torch, onnx, onnxscript and
//! onnxruntime (the project's `.venv`, `make venv`). Why not from Rust: an ONNX writer here
//! would be a third implementation of the forward pass, to be kept equal to the other two
//! op by op; the twin already is, and torch's exporter is the one the runtimes are tested
//! against. The script checks its own output (the ONNX checker, then onnxruntime against
//! PyTorch) and reports on its last line of stdout, which is read here as [`OnnxExport`].

use std::path::{Path, PathBuf};
use std::process::Command;

use lgaf_model::{weights, Lgaf, ModelConfig};
use serde::Deserialize;

use crate::error::WorkerError;

/// The twin and the exporter, as they are in the repository.
const TWIN: &str = include_str!("../python/lgaf_torch.py");
const EXPORTER: &str = include_str!("../python/export_onnx.py");

/// The oldest opset torch's maintained exporter writes.
pub const MIN_OPSET: u32 = 18;

/// What the exporter reports about the file it wrote and checked.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct OnnxExport {
    pub out: PathBuf,
    pub opset: u32,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub nodes: usize,
    pub bytes: u64,
    /// onnxruntime against PyTorch on random batches of 1 and 3, relative to the largest
    /// output.
    pub max_relative_difference_vs_torch: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Weights(#[from] WorkerError),

    #[error(
        "cannot run {python}: {source}; the ONNX export needs a Python with torch, onnx, \
         onnxscript and onnxruntime: `make venv` makes .venv with them, then pass \
         --python .venv/bin/python (or set LGAF_PYTHON)"
    )]
    NoPython {
        python: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{python} lacks the Python module `{module}`; the ONNX export needs torch, onnx, \
         onnxscript and onnxruntime: `make venv` makes .venv with them (requirements.txt), \
         then pass --python .venv/bin/python"
    )]
    MissingModule { python: PathBuf, module: String },

    #[error("the ONNX exporter failed ({status}); it printed:\n{stderr}")]
    Failed { status: String, stderr: String },

    #[error("the ONNX exporter ended without its report (expected a JSON line last): {line:?}")]
    NoReport { line: String },

    #[error("cannot write the exporter's scripts to {path}: {source}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes the network of `model`'s shape with the weights at `weights` to `out` as ONNX
/// (opset `opset`, at least [`MIN_OPSET`]), using `python`.
pub fn export_onnx(
    model: &ModelConfig,
    weights_path: &Path,
    out: &Path,
    opset: u32,
    python: &Path,
) -> Result<OnnxExport, ExportError> {
    // Checked here first, so that a wrong name or shape gets this side's message.
    let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
    Lgaf::new(&vs.root(), model).map_err(WorkerError::from)?;
    weights::load(&mut vs, weights_path).map_err(WorkerError::from)?;

    let scratch = tempfile::tempdir().map_err(|source| ExportError::Scratch {
        path: std::env::temp_dir(),
        source,
    })?;
    for (name, text) in [("lgaf_torch.py", TWIN), ("export_onnx.py", EXPORTER)] {
        let path = scratch.path().join(name);
        std::fs::write(&path, text).map_err(|source| ExportError::Scratch { path, source })?;
    }
    let kernels: Vec<String> = model.kernels.iter().map(|k| k.to_string()).collect();
    let mut cmd = Command::new(python);
    cmd.arg(scratch.path().join("export_onnx.py"))
        .arg("--weights")
        .arg(weights_path)
        .arg("--out")
        .arg(out)
        .args(["--arch", model.arch.name(), "--fusion", model.fusion.name()])
        .args(["--heads", &model.heads.to_string()])
        .args(["--width", &model.width.to_string()])
        .args(["--embedding-size", &model.embedding_size.to_string()])
        .args(["--kernels", &kernels.join(",")])
        .args(["--lgf-h", &model.lgf.h.to_string()])
        .args(["--opset", &opset.to_string()]);
    if let Some(mid) = model.mid_channels {
        cmd.args(["--mid-channels", &mid.to_string()]);
    }
    let output = cmd.output().map_err(|source| ExportError::NoPython {
        python: python.to_path_buf(),
        source,
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if let Some(module) = missing_module(&stderr) {
            return Err(ExportError::MissingModule {
                python: python.to_path_buf(),
                module,
            });
        }
        return Err(ExportError::Failed {
            status: output.status.to_string(),
            stderr: stderr.trim().to_string(),
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|_| ExportError::NoReport {
        line: line.to_string(),
    })
}

/// The module of Python's `ModuleNotFoundError: No module named 'onnx'`.
fn missing_module(stderr: &str) -> Option<String> {
    let rest = stderr.split("No module named '").nth(1)?;
    Some(rest.split('\'').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_module_is_read_from_the_traceback() {
        let stderr = "Traceback (most recent call last):\n  File \"x.py\", line 3\n\
                      ModuleNotFoundError: No module named 'onnxruntime'\n";
        assert_eq!(missing_module(stderr).as_deref(), Some("onnxruntime"));
        assert_eq!(missing_module("ValueError: no"), None);
    }
}
