//! Weights as safetensors, with PyTorch's names: a state dict exported from PyTorch
//! (`num_batches_tracked` included) loads unchanged, and ours loads into PyTorch.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, View};
use safetensors::SafeTensors;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

/// The safetensors dtypes [`from_bytes`] reads, for error messages.
pub const READABLE_DTYPES: &str = "F32, F64, F16, BF16, I64, I32";
/// The tensor kinds [`to_bytes`] writes, for error messages.
pub const WRITABLE_KINDS: &str = "Float, Double, Half, BFloat16, Int64, Int";

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

/// The dtype of `kind`; `None` for kinds [`kind_of`] does not read back (writing a
/// `Uint8` or `Bool` tensor as F32, as a catch-all would, garbles it).
fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        _ => return None,
    })
}

/// A tensor on the host, contiguous, as safetensors' [`View`]: serialising borrows its bytes,
/// so they are copied once, into the file's buffer. (A copy into a `Vec` first, then into
/// the file, made a 1.5 GB checkpoint stall training for twice as long.)
struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Contiguous, on the CPU: the parameter itself where it already is, else a copy.
    tensor: Tensor,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        if self.tensor.numel() == 0 {
            return Cow::Borrowed(&[]);
        }
        // SAFETY: `tensor` is contiguous and on the CPU, so `data_len()` bytes start at its
        // data pointer, and `self` keeps its storage alive for the borrow. Nothing writes
        // to it meanwhile: on the CPU these bytes are the live parameters themselves, and
        // checkpoints are serialised synchronously by the thread that trains.
        Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, self.data_len())
        })
    }

    fn data_len(&self) -> usize {
        self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()
    }
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
    let file_err = |message: String| ModelError::WeightsWrite {
        path: path.to_path_buf(),
        message,
    };
    let bytes = to_bytes(named, metadata, path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| file_err(e.to_string()))?;
    }
    // Write to a temporary name and rename, so a crash never leaves a half-written file.
    let tmp = path.with_extension("safetensors.partial");
    std::fs::write(&tmp, bytes).map_err(|e| file_err(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| file_err(format!("renaming {} to it: {e}", tmp.display())))
}

/// Named tensors as the bytes of one safetensors file (for object storage); `name`
/// identifies it in errors.
pub fn to_bytes(
    named: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
    name: &Path,
) -> Result<Vec<u8>> {
    let file_err = |message: String| ModelError::WeightsWrite {
        path: name.to_path_buf(),
        message,
    };
    let tensors: Vec<(&str, HostTensor)> = named
        .iter()
        .map(|(tensor_name, t)| {
            let dtype = dtype_of(t.kind()).ok_or_else(|| ModelError::UnsupportedKind {
                path: name.to_path_buf(),
                name: tensor_name.clone(),
                found: format!("{:?}", t.kind()),
            })?;
            let tensor = t.detach().to_device(tch::Device::Cpu).contiguous();
            let shape = tensor.size().iter().map(|&d| d as usize).collect();
            Ok((
                tensor_name.as_str(),
                HostTensor {
                    dtype,
                    shape,
                    tensor,
                },
            ))
        })
        .collect::<Result<_>>()?;
    let views = tensors.iter().map(|(name, t)| (*name, t));
    let bytes = safetensors::serialize(views, None).map_err(|e| file_err(e.to_string()))?;
    if metadata.is_empty() {
        return Ok(bytes);
    }
    with_sorted_metadata(&bytes, metadata).map_err(file_err)
}

/// `bytes` (safetensors without metadata) with `metadata` in the header, its keys sorted.
///
/// safetensors writes `__metadata__` from a `HashMap`, in an order that differs between
/// processes (and between maps), so the same tensors gave different bytes, hence another
/// checksum: a checkpoint object written again by another process no longer matched the
/// manifest that listed the first. The header is written again here; the data section is
/// unchanged (its offsets count from its own start), and the header is padded with spaces
/// to 8 bytes as safetensors pads it.
fn with_sorted_metadata(
    bytes: &[u8],
    metadata: &HashMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    let unreadable = |what: &str| format!("safetensors wrote a header this cannot read: {what}");
    let (len, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| unreadable("shorter than 8 bytes"))?;
    let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| unreadable("length"))?;
    let (header, data) = rest
        .split_at_checked(len)
        .ok_or_else(|| unreadable("length past the end"))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| unreadable(&e.to_string()))?;
    let sorted: std::collections::BTreeMap<&String, &String> = metadata.iter().collect();
    let mut entries = serde_json::Map::new();
    entries.insert(
        "__metadata__".into(),
        serde_json::to_value(sorted).map_err(|e| e.to_string())?,
    );
    entries.extend(header);
    let mut header = serde_json::to_vec(&entries).map_err(|e| e.to_string())?;
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    Ok(out)
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
        message: header::explain(&e, header::entries(bytes).as_deref(), bytes),
    })?;
    Ok((tensors, meta.metadata().clone().unwrap_or_default()))
}

/// The tensors of safetensors bytes, on the CPU, sorted by name.
pub fn from_bytes(bytes: &[u8], name: &Path) -> Result<Vec<(String, Tensor)>> {
    let file_err = |message: String| ModelError::WeightsFile {
        path: name.to_path_buf(),
        message,
    };
    let st = deserialize(bytes, name)?;
    let mut out = Vec::with_capacity(st.len());
    for (tensor_name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| ModelError::UnsupportedDtype {
            path: name.to_path_buf(),
            name: tensor_name.clone(),
            found: format!("{:?}", view.dtype()),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .map_err(|e| file_err(format!("tensor `{tensor_name}`: {e}")))?;
        out.push((tensor_name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `SafeTensors::deserialize` with errors that say what is wrong: a duplicate name (which
/// the crate's JSON map silently collapses, then reports as an "invalid offset" of some
/// other tensor), the tensor whose offsets or size do not fit, a truncated file.
fn deserialize<'a>(bytes: &'a [u8], name: &Path) -> Result<SafeTensors<'a>> {
    let header = header::entries(bytes);
    if let Some(entries) = &header {
        if let Some(dup) = header::first_duplicate(entries) {
            return Err(ModelError::DuplicateTensor {
                path: name.to_path_buf(),
                name: dup.to_string(),
            });
        }
    }
    SafeTensors::deserialize(bytes).map_err(|e| ModelError::WeightsFile {
        path: name.to_path_buf(),
        message: header::explain(&e, header.as_deref(), bytes),
    })
}

/// Reads the header metadata of a safetensors file.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let file_err = |message: String| ModelError::WeightsFile {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    let entries = header::entries(&bytes);
    if let Some(dup) = entries.as_deref().and_then(header::first_duplicate) {
        return Err(ModelError::DuplicateTensor {
            path: path.to_path_buf(),
            name: dup.to_string(),
        });
    }
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| file_err(header::explain(&e, entries.as_deref(), &bytes)))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Loads a safetensors file into `vs`, strictly: every model tensor must be present with
/// the same shape and finite values, and the file may hold nothing else. Dtypes are
/// converted.
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
    // Strict like the names and shapes: NaN or infinite weights would embed and evaluate
    // to garbage without a word.
    for name in vars.keys() {
        check_finite(name, &tensors[name], source)?;
    }
    tch::no_grad(|| {
        for (name, var) in &vars {
            let src = tensors[name].to_device(var.device()).to_kind(var.kind());
            var.shallow_clone().copy_(&src);
        }
    });
    Ok(())
}

/// Fails when the floating-point tensor `t` holds a NaN or an infinity, naming it, the
/// count and the first position; integer tensors always pass.
pub fn check_finite(name: &str, t: &Tensor, source: &Path) -> Result<()> {
    if !matches!(
        t.kind(),
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        return Ok(());
    }
    let finite = t.isfinite();
    if finite.all().int64_value(&[]) != 0 {
        return Ok(());
    }
    let bad = finite.logical_not().flatten(0, -1);
    Err(ModelError::NonFinite {
        path: source.to_path_buf(),
        name: name.to_string(),
        count: bad.sum(Kind::Int64).int64_value(&[]),
        numel: t.numel() as i64,
        first: bad.nonzero().int64_value(&[0, 0]),
    })
}

/// Every tensor of safetensors bytes checked as [`from_bytes`] reads it, plus finite
/// values ([`check_finite`]): for paths that pass weights on without loading them into a
/// model (an export), so a broken file is refused where it is made, not where it is used.
pub fn verify_bytes(bytes: &[u8], name: &Path) -> Result<()> {
    for (tensor_name, t) in from_bytes(bytes, name)? {
        check_finite(&tensor_name, &t, name)?;
    }
    Ok(())
}

/// A reading of the safetensors header (JSON) that keeps what the crate's parser drops:
/// duplicate names (refused: the crate's map keeps only the last) and each entry's own
/// offsets (to explain the crate's layout errors). Anything it cannot read (`None`) is
/// left to the crate.
mod header {
    use std::fmt;

    use safetensors::SafeTensorError;
    use serde::de::{Deserializer, MapAccess, Visitor};
    use serde_json::Value;

    /// The top-level entries of a JSON object in file order, duplicates kept.
    struct Entries(Vec<(String, Value)>);

    impl<'de> serde::Deserialize<'de> for Entries {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct InOrder;
            impl<'de> Visitor<'de> for InOrder {
                type Value = Entries;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                    let mut entries = Vec::new();
                    while let Some(entry) = map.next_entry::<String, Value>()? {
                        entries.push(entry);
                    }
                    Ok(Entries(entries))
                }
            }
            d.deserialize_map(InOrder)
        }
    }

    /// The header's top-level entries in file order, duplicates kept; `None` when the bytes
    /// do not start with a well-formed header.
    pub fn entries(bytes: &[u8]) -> Option<Vec<(String, Value)>> {
        let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
        let header = bytes.get(8..8usize.checked_add(n)?)?;
        serde_json::from_slice::<Entries>(header).ok().map(|e| e.0)
    }

    pub fn first_duplicate(entries: &[(String, Value)]) -> Option<&str> {
        let mut seen = std::collections::HashSet::new();
        entries
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| !seen.insert(*k))
    }

    fn bytes_per_element(dtype: &str) -> Option<u64> {
        Some(match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
            _ => return None,
        })
    }

    fn uints(v: Option<&Value>) -> Option<Vec<u64>> {
        v?.as_array()?.iter().map(Value::as_u64).collect()
    }

    /// What is wrong with the tensors' layout: the first entry (in data order) whose
    /// offsets leave a gap, overlap, or disagree with its dtype and shape, or the data
    /// not ending where the file does.
    fn layout_problem(entries: &[(String, Value)], data_len: u64) -> Option<String> {
        let mut tensors = Vec::new();
        for (name, entry) in entries.iter().filter(|(k, _)| k != "__metadata__") {
            let Some(dtype) = entry.get("dtype").and_then(Value::as_str) else {
                return Some(format!("tensor `{name}`: the header gives no dtype"));
            };
            let Some(shape) = uints(entry.get("shape")) else {
                return Some(format!("tensor `{name}`: the header gives no valid shape"));
            };
            let offsets = uints(entry.get("data_offsets"));
            let Some(&[begin, end]) = offsets.as_deref() else {
                return Some(format!(
                    "tensor `{name}`: data_offsets is not a pair of byte offsets"
                ));
            };
            tensors.push((name, dtype, shape, begin, end));
        }
        tensors.sort_by_key(|t| (t.3, t.4));
        let mut expected = 0u64;
        for (name, dtype, shape, begin, end) in tensors {
            if end < begin {
                return Some(format!(
                    "tensor `{name}`: data_offsets [{begin}, {end}] end before they begin"
                ));
            }
            if begin != expected {
                let how = if begin > expected {
                    "leaving a gap after"
                } else {
                    "overlapping"
                };
                return Some(format!(
                    "tensor `{name}`: data_offsets [{begin}, {end}] start at byte {begin}, \
                     {how} the previous tensor (which ends at {expected})"
                ));
            }
            if let Some(width) = bytes_per_element(dtype) {
                let need = shape.iter().try_fold(width, |acc, &d| acc.checked_mul(d));
                if need != Some(end - begin) {
                    let need = need.map_or("more than 2^64".to_string(), |n| n.to_string());
                    return Some(format!(
                        "tensor `{name}`: dtype {dtype} and shape {shape:?} need {need} bytes, \
                         but data_offsets [{begin}, {end}] span {}",
                        end - begin
                    ));
                }
            }
            expected = end;
        }
        (expected != data_len).then(|| {
            format!(
                "the header describes {expected} bytes of tensor data, the file holds {data_len} \
                 after the header (truncated, or trailing bytes)"
            )
        })
    }

    /// The crate's error in words that name what is wrong where the header says more.
    pub fn explain(
        e: &SafeTensorError,
        entries: Option<&[(String, Value)]>,
        bytes: &[u8],
    ) -> String {
        let len = bytes.len();
        let declared = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        match e {
            SafeTensorError::HeaderTooSmall => format!(
                "{len} bytes: too short for a safetensors file (an 8-byte header length, then \
                 the header)"
            ),
            SafeTensorError::InvalidHeaderLength | SafeTensorError::HeaderTooLarge => format!(
                "the header length in the first 8 bytes ({}) does not fit the {len}-byte file \
                 (truncated, or not a safetensors file): {e}",
                declared.unwrap_or(0)
            ),
            SafeTensorError::InvalidOffset(_)
            | SafeTensorError::TensorInvalidInfo
            | SafeTensorError::MetadataIncompleteBuffer
            | SafeTensorError::MisalignedSlice
            | SafeTensorError::ValidationOverflow => {
                let data_len = declared.map(|n| (len as u64).saturating_sub(8).saturating_sub(n));
                entries
                    .zip(data_len)
                    .and_then(|(entries, data_len)| layout_problem(entries, data_len))
                    .unwrap_or_else(|| e.to_string())
            }
            _ => e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    /// The same tensors and metadata give the same bytes whichever map (and process)
    /// holds the metadata: a checkpoint object written again matches its manifest.
    #[test]
    fn the_bytes_do_not_depend_on_the_metadata_maps_order() {
        let named = vec![
            (
                "a.weight".to_string(),
                Tensor::from_slice(&[1.0f32, 2.0, 3.0]),
            ),
            ("b.bias".to_string(), Tensor::from_slice(&[4i64])),
        ];
        let name = Path::new("m.safetensors");
        let pairs: Vec<(String, String)> = (0..6)
            .map(|i| (format!("key{i}"), format!("value {i}")))
            .collect();
        let first = to_bytes(&named, &pairs.iter().cloned().collect(), name).unwrap();
        for _ in 0..20 {
            // A new map: another hash seed, so another iteration order.
            let metadata: HashMap<String, String> = pairs.iter().rev().cloned().collect();
            assert_eq!(to_bytes(&named, &metadata, name).unwrap(), first);
        }
        let (tensors, metadata) = from_bytes_with_metadata(&first, name).unwrap();
        assert_eq!(metadata, pairs.into_iter().collect());
        assert_eq!(tensors.len(), 2);
        assert!(tensors[0].1.equal(&named[0].1));
        // The header is padded to 8 bytes, as safetensors pads it.
        let len = u64::from_le_bytes(first[..8].try_into().unwrap());
        assert_eq!(len % 8, 0);
    }

    use super::*;
    use tch::nn::Init;
    use tch::Device;

    /// Safetensors bytes with a hand-written header (so it can be wrong) and `data`.
    fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn err_of(bytes: &[u8]) -> String {
        from_bytes(bytes, Path::new("w.safetensors"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn an_unread_integer_dtype_is_named_with_what_is_read() {
        let bytes = raw_file(
            r#"{"steps":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}}"#,
            &[0; 4],
        );
        let msg = err_of(&bytes);
        assert!(
            msg.contains("w.safetensors")
                && msg.contains("`steps` has dtype I16")
                && msg.contains("F32, F64, F16, BF16, I64, I32"),
            "{msg}"
        );
        assert!(!msg.contains("expected a float or integer dtype"), "{msg}");
    }

    #[test]
    fn a_duplicate_name_is_reported_as_such() {
        let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"a":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
        let msg = err_of(&raw_file(header, &[0; 12]));
        assert_eq!(
            msg, "duplicate tensor name `a` in the header of w.safetensors",
            "{msg}"
        );
        // Even identical entries, which the crate's map would silently merge.
        let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"\u0061":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let msg = err_of(&raw_file(header, &[0; 4]));
        assert!(msg.contains("duplicate tensor name `a`"), "{msg}");
        let dir = std::env::temp_dir().join(format!("lgaf-dup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dup.safetensors");
        std::fs::write(&path, raw_file(header, &[0; 4])).unwrap();
        let msg = read_metadata(&path).unwrap_err().to_string();
        assert!(
            msg.contains("duplicate tensor name `a`") && msg.contains("dup.safetensors"),
            "{msg}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn layout_errors_name_the_tensor_and_the_bytes() {
        // A gap before `b`.
        let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
        let msg = err_of(&raw_file(header, &[0; 12]));
        assert!(msg.contains("`b`") && msg.contains("gap"), "{msg}");
        // A size that does not match dtype x shape.
        let header = r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#;
        let msg = err_of(&raw_file(header, &[0; 20]));
        assert!(
            msg.contains("`a`") && msg.contains("need 24 bytes") && msg.contains("span 20"),
            "{msg}"
        );
        // Data cut short.
        let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let msg = err_of(&raw_file(header, &[0; 10]));
        assert!(
            msg.contains("16 bytes") && msg.contains("truncated"),
            "{msg}"
        );
        // Not even a header length.
        let msg = err_of(&[1, 2, 3]);
        assert!(
            msg.contains("3 bytes") && msg.contains("too short"),
            "{msg}"
        );
    }

    #[test]
    fn writing_an_unsupported_kind_names_it() {
        let t = Tensor::from_slice(&[1u8, 2, 3, 4]);
        let msg = to_bytes(
            &[("mask".into(), t)],
            &HashMap::new(),
            Path::new("out.safetensors"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("out.safetensors") && msg.contains("`mask`") && msg.contains("Uint8"),
            "{msg}"
        );
    }

    #[test]
    fn non_finite_weights_are_refused_naming_tensor_and_file() {
        let dir = std::env::temp_dir().join(format!("lgaf-nan-{}", std::process::id()));
        let path = dir.join("nan.safetensors");
        let mut vs = VarStore::new(Device::Cpu);
        let fc = vs.root() / "fc";
        let _w = fc.var("weight", &[2, 3], Init::Const(0.5));
        let _b = fc.var("bias", &[2], Init::Const(0.0));
        for bad in [f32::NAN, f32::INFINITY] {
            let weight = Tensor::from_slice(&[0.5f32, 0.5, 0.5, 0.5, bad, 0.5]).view([2, 3]);
            let named = vec![
                (
                    "fc.bias".to_string(),
                    Tensor::zeros([2], tch::kind::FLOAT_CPU),
                ),
                ("fc.weight".to_string(), weight),
            ];
            save_tensors(&named, &path, &HashMap::new()).unwrap();
            let msg = load(&mut vs, &path).unwrap_err().to_string();
            assert!(
                msg.contains(&path.display().to_string())
                    && msg.contains("`fc.weight`")
                    && msg.contains("1 non-finite")
                    && msg.contains("flat index 4"),
                "{msg}"
            );
            let bytes = std::fs::read(&path).unwrap();
            let msg = verify_bytes(&bytes, Path::new("export.safetensors"))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("`fc.weight`") && msg.contains("export"),
                "{msg}"
            );
        }
        // The variables kept their values: nothing was copied from the refused file.
        let w = vs.variables()["fc.weight"].double_value(&[1, 1]);
        assert_eq!(w, 0.5);
        // Finite weights still load.
        let named = vec![
            (
                "fc.bias".to_string(),
                Tensor::zeros([2], tch::kind::FLOAT_CPU),
            ),
            (
                "fc.weight".to_string(),
                Tensor::ones([2, 3], tch::kind::FLOAT_CPU),
            ),
        ];
        save_tensors(&named, &path, &HashMap::new()).unwrap();
        load(&mut vs, &path).unwrap();
        verify_bytes(&std::fs::read(&path).unwrap(), &path).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
