//! [`ModelError`]: what the model crate returns, naming the tensor, file or field.

use std::path::PathBuf;

/// Errors of the model crate. Each names the tensor, file or field it is about.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model config: {field}: {message}")]
    Config {
        field: &'static str,
        message: String,
    },

    #[error("{path}: cannot read weights: {message}")]
    WeightsFile { path: PathBuf, message: String },

    #[error("{path}: cannot write weights: {message}")]
    WeightsWrite { path: PathBuf, message: String },

    #[error("{path}: tensor `{name}` is missing (the model expects shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
    },

    #[error("{path}: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },

    #[error(
        "{path}: tensor `{name}` has dtype {found}, which is not read here (expected one of {})",
        crate::weights::READABLE_DTYPES
    )]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        found: String,
    },

    #[error(
        "{path}: tensor `{name}` has kind {found}, which has no safetensors dtype here \
         (expected one of {})",
        crate::weights::WRITABLE_KINDS
    )]
    UnsupportedKind {
        path: PathBuf,
        name: String,
        found: String,
    },

    /// Two header entries under one name: the file cannot say which one is meant.
    #[error("duplicate tensor name `{name}` in the header of {path}")]
    DuplicateTensor { path: PathBuf, name: String },

    /// NaN or infinite values in weights about to be used (embedding, evaluation, resume).
    #[error(
        "{path}: tensor `{name}` holds {count} non-finite value(s) (NaN or infinity) among \
         {numel}, the first at flat index {first}; expected finite weights"
    )]
    NonFinite {
        path: PathBuf,
        name: String,
        count: i64,
        numel: i64,
        first: i64,
    },

    #[error("{path}: {count} tensor(s) the model does not have: {names} (wrong --arch/--fusion/--heads?)")]
    UnexpectedTensors {
        path: PathBuf,
        count: usize,
        names: String,
    },

    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
