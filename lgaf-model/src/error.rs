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

    #[error("{path}: tensor `{name}` has dtype {found}, expected a float or integer dtype")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        found: String,
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
