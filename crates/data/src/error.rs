//! The crate's error type.

use std::path::PathBuf;

/// Errors from reading and writing dataset files. Every variant names the
/// file or directory involved so that a failure deep inside a training run
/// can be traced to its input.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read, created or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being attempted, e.g. "cannot read directory".
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    /// A directory that should hold images holds none.
    #[error("no .jpg, .jpeg or .png images directly inside {path}")]
    NoImages { path: PathBuf },

    /// An image file could not be decoded by `image` (kept for callers that
    /// decode with it; [`load_rgb112`](crate::image_folder::load_rgb112)
    /// reports [`DataError::Image`]).
    #[error("cannot decode image {path}: {source}")]
    Decode {
        path: PathBuf,
        source: image::ImageError,
    },

    /// An image file is not a JPEG or PNG this crate decodes, is corrupt, or
    /// declares a size over the bound (the error names the file).
    #[error(transparent)]
    Image(#[from] crate::decode::DecodeError),

    /// An image could not be encoded or written.
    #[error("cannot write image {path}: {source}")]
    Encode {
        path: PathBuf,
        source: image::ImageError,
    },

    /// A buffer's length does not match the dimensions it is written with.
    #[error("cannot write {path}: expected {expected} values for {what}, got {actual}")]
    SizeMismatch {
        path: PathBuf,
        /// The dimensions, e.g. "a 112x112 RGB image" or "shape [2, 3]".
        what: String,
        expected: usize,
        actual: usize,
    },

    /// A `.npy` file is malformed or not of the supported kind.
    #[error("invalid .npy file {path}: {field}: {reason}")]
    Npy {
        path: PathBuf,
        /// The part of the file that is wrong, e.g. "magic" or "descr".
        field: &'static str,
        reason: String,
    },
}
