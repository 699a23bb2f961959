use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("config: `{key}`: {message}")]
    Config { key: &'static str, message: String },

    /// A key found while walking the loaded values (so not a `&'static str`), e.g. a
    /// fraction given to an integer key.
    #[error("config: `{key}`: {message}")]
    ConfigValue { key: String, message: String },

    #[error("config: {0}")]
    ConfigSource(#[from] config::ConfigError),

    #[error(transparent)]
    Model(#[from] lgaf_model::ModelError),

    #[error(transparent)]
    Data(#[from] lgaf_data::DataError),

    #[error(transparent)]
    Loader(#[from] crate::loader::LoaderError),

    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("device `{0}`: expected cpu, cuda, cuda:N or auto")]
    Device(String),

    #[error(transparent)]
    Torch(#[from] tch::TchError),

    /// A verification file, a retrieval set or their metric (names the file or the set).
    #[error(transparent)]
    Eval(#[from] lgaf_eval::Error),

    #[error(transparent)]
    Decode(#[from] lgaf_data::decode::DecodeError),

    #[error(transparent)]
    Source(#[from] lgaf_data::source::SourceError),

    #[error(transparent)]
    Record(#[from] lgaf_data::recordio::RecordIoError),

    #[error("{path}: {message}")]
    EvalSet { path: PathBuf, message: String },

    /// The loss stopped being a finite number: training diverged (the step was not
    /// applied). Not a config error: the config's values are checked when it is read.
    #[error(
        "step {step}: the loss diverged to {loss}; the usual cause is a learning rate too high \
         for the batch (optim.lr, optim.warmup_epochs), else a loss scale or margin out of \
         its usual range (loss.scale, loss.m1..m3) or bad input data; resume from the last \
         checkpoint with a change"
    )]
    Diverged { step: u64, loss: f64 },

    /// An exchange with the other ranks failed (a peer died, hung or disagreed); the step
    /// was not applied.
    #[error("step {step}: {message}")]
    Collective { step: u64, message: String },
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> WorkerError {
    let path = path.into();
    move |source| WorkerError::Io { path, source }
}
