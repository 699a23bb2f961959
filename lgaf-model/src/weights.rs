//! Weights as safetensors, with PyTorch's names: a state dict exported from PyTorch
//! (`num_batches_tracked` included) loads unchanged, and ours loads into PyTorch.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Dtype {
    match kind {
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        _ => Dtype::F32,
    }
}

/// Raw little-endian bytes of a CPU-contiguous copy of `t`.
fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.detach().to_device(tch::Device::Cpu).contiguous();
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut bytes, numel);
    bytes
}

/// Writes every variable and buffer of `vs`, sorted by name, with `metadata` in the header.
pub fn save(vs: &VarStore, path: &Path, metadata: &HashMap<String, String>) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    save_tensors(&named, path, metadata)
}

/// Writes named tensors (any device, float or integer kinds) as one safetensors file.
pub fn save_tensors(
    named: &[(String, Tensor)],
    path: &Path,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let file_err = |message: String| ModelError::WeightsFile {
        path: path.to_path_buf(),
        message,
    };
    let bytes = to_bytes(named, metadata, path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| file_err(e.to_string()))?;
    }
    // Write to a temporary name and rename, so a crash never leaves a half-written file.
    let tmp = path.with_extension("safetensors.partial");
    std::fs::write(&tmp, bytes).map_err(|e| file_err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(e.to_string()))
}

/// Named tensors as the bytes of one safetensors file (for object storage); `name`
/// identifies it in errors.
pub fn to_bytes(
    named: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
    name: &Path,
) -> Result<Vec<u8>> {
    let file_err = |message: String| ModelError::WeightsFile {
        path: name.to_path_buf(),
        message,
    };
    let data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = named
        .iter()
        .map(|(name, t)| {
            let shape = t.size().iter().map(|&d| d as usize).collect();
            (name.clone(), dtype_of(t.kind()), shape, tensor_bytes(t))
        })
        .collect();
    let views = data
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
                .map_err(|e| file_err(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = (!metadata.is_empty()).then(|| metadata.clone());
    safetensors::serialize(views, meta).map_err(|e| file_err(e.to_string()))
}

/// Reads all tensors of a safetensors file onto the CPU, keeping their dtypes.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::WeightsFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    from_bytes(&bytes, path)
}

/// Tensors by name, in name order.
pub type NamedTensors = Vec<(String, Tensor)>;

/// The tensors (on the CPU, sorted by name) and header metadata of safetensors bytes;
/// `name` identifies them in errors.
pub fn from_bytes_with_metadata(
    bytes: &[u8],
    name: &Path,
) -> Result<(NamedTensors, HashMap<String, String>)> {
    let tensors = from_bytes(bytes, name)?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| ModelError::WeightsFile {
        path: name.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok((tensors, meta.metadata().clone().unwrap_or_default()))
}

/// The tensors of safetensors bytes, on the CPU, sorted by name.
pub fn from_bytes(bytes: &[u8], name: &Path) -> Result<Vec<(String, Tensor)>> {
    let file_err = |message: String| ModelError::WeightsFile {
        path: name.to_path_buf(),
        message,
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| file_err(e.to_string()))?;
    let mut out = Vec::with_capacity(st.len());
    for (tensor_name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| ModelError::UnsupportedDtype {
            path: name.to_path_buf(),
            name: tensor_name.clone(),
            found: format!("{:?}", view.dtype()),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        out.push((tensor_name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Reads the header metadata of a safetensors file.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let file_err = |message: String| ModelError::WeightsFile {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| file_err(e.to_string()))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Loads a safetensors file into `vs`, strictly: every model tensor must be present with
/// the same shape, and the file may hold nothing else. Dtypes are converted.
pub fn load(vs: &mut VarStore, path: &Path) -> Result<()> {
    let file: HashMap<String, Tensor> = read_tensors(path)?.into_iter().collect();
    assign(vs, &file, path)
}

/// Copies `tensors` into `vs` with [`load`]'s checks; `source` names them in errors.
pub fn assign(vs: &mut VarStore, tensors: &HashMap<String, Tensor>, source: &Path) -> Result<()> {
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let expected = vars[name].size();
        let src = tensors.get(name).ok_or_else(|| ModelError::MissingTensor {
            path: source.to_path_buf(),
            name: name.clone(),
            expected: expected.clone(),
        })?;
        if src.size() != expected {
            return Err(ModelError::ShapeMismatch {
                path: source.to_path_buf(),
                name: name.clone(),
                expected,
                found: src.size(),
            });
        }
    }
    let mut extra: Vec<&String> = tensors.keys().filter(|k| !vars.contains_key(*k)).collect();
    if !extra.is_empty() {
        extra.sort();
        let shown: Vec<&str> = extra.iter().take(8).map(|s| s.as_str()).collect();
        return Err(ModelError::UnexpectedTensors {
            path: source.to_path_buf(),
            count: extra.len(),
            names: shown.join(", "),
        });
    }
    tch::no_grad(|| {
        for (name, var) in &vars {
            let src = tensors[name].to_device(var.device()).to_kind(var.kind());
            var.shallow_clone().copy_(&src);
        }
    });
    Ok(())
}
