//! Binary formats read from files: insightface's verification `.bin` (a pickle, through
//! the crate's own safe unpickler), `.npy` arrays, and safetensors (weights, checkpoints).

use std::path::Path;

/// A verification `.bin`: the unpickler, then the pairs' images and labels.
pub fn verification_bin(data: &[u8]) {
    let _ = lgaf_eval::pickle::parse(data);
    if let Ok(bin) = lgaf_eval::VerificationBin::decode(data, Path::new("fuzz.bin")) {
        let _ = bin.pairs();
    }
}

/// A `.npy` array of float32.
pub fn npy(data: &[u8]) {
    if let Ok((shape, values)) = lgaf_data::npy::parse_f32(data, Path::new("fuzz.npy")) {
        let count: usize = shape.iter().product();
        assert_eq!(
            count,
            values.len(),
            "the shape {shape:?} describes the values read"
        );
    }
}

/// Safetensors bytes, as weights and every checkpoint object are read: the tensors (on the
/// CPU) with the header's metadata, each checked for non-finite values.
pub fn safetensors(data: &[u8]) {
    let name = Path::new("fuzz.safetensors");
    if let Ok((tensors, _metadata)) = lgaf_model::weights::from_bytes_with_metadata(data, name) {
        for (tensor_name, tensor) in &tensors {
            let _ = lgaf_model::weights::check_finite(tensor_name, tensor, name);
        }
    }
}

/// A face image (JPEG or PNG) as the loader decodes a record's payload, and as `lgaf
/// embed` decodes a crop of any size.
pub fn image(data: &[u8]) {
    let what = || "fuzz image".to_string();
    let mut rgb = vec![0u8; lgaf_data::decode::RGB112_BYTES];
    let _ = lgaf_data::decode::decode_rgb112_into(data, &mut rgb, what);
    let _ = lgaf_data::decode::decode_rgb112_resized(data, what);
}
