//! The worker's error types: [`WorkerError`] for everything the crate returns, and the
//! batch loader's own [`LoaderError`] that it wraps. This module depends on no other
//! module of the crate, so that every module may depend on it.

use std::path::PathBuf;

use lgaf_data::sampler::SamplerError;
use lgaf_data::source::SourceError;
use lgaf_proto::exit::ExitClass;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The run's history (steps and events in the store) could not be written. Boxed: it
    /// is much larger than the other variants.
    #[error("the run's history: {0}")]
    History(Box<lgaf_store::HistoryError>),

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
    Loader(#[from] LoaderError),

    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    /// The checkpoint store (a directory or S3) refused or failed; names the store, the run
    /// and the key.
    #[error("checkpoint store: {0}")]
    Store(Box<lgaf_store::StoreError>),

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

impl WorkerError {
    /// Whether starting again could succeed, for the exit-code contract
    /// (`lgaf_proto::exit`): what the configuration, the data or a file it names got wrong
    /// is permanent; what a peer, the store or the machine did may pass.
    pub fn exit_class(&self) -> ExitClass {
        match self {
            WorkerError::Config { .. }
            | WorkerError::ConfigValue { .. }
            | WorkerError::ConfigSource(_)
            | WorkerError::Model(_)
            | WorkerError::Data(_)
            | WorkerError::Loader(_)
            | WorkerError::Io { .. }
            | WorkerError::Device(_)
            | WorkerError::Eval(_)
            | WorkerError::Decode(_)
            | WorkerError::Source(_)
            | WorkerError::Record(_)
            | WorkerError::EvalSet { .. }
            // Resuming the same run the same way diverges the same way.
            | WorkerError::Diverged { .. } => ExitClass::Permanent,
            // A checkpoint the coordinator named may be complete on the next try, the store
            // reachable, the peer back, the GPU (libtorch's errors) on another node.
            WorkerError::History(_)
            | WorkerError::Checkpoint { .. }
            | WorkerError::Store(_)
            | WorkerError::Torch(_)
            | WorkerError::Collective { .. } => ExitClass::Retryable,
        }
    }
}

// Boxed: a store error (URL, key and cause) would double the size of every `Result` here.
impl From<lgaf_store::StoreError> for WorkerError {
    fn from(e: lgaf_store::StoreError) -> Self {
        WorkerError::Store(Box::new(e))
    }
}

/// Why the training batch stream (the `loader` module) stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("cannot open the training data: {0}")]
    Open(#[source] SourceError),

    #[error("the training data does not fit the batch layout: {0}")]
    Layout(#[from] SamplerError),

    /// `data.strict`: the first bad record ends the run.
    #[error("step {step}: bad record (data.strict = true): {source}")]
    BadRecord { step: u64, source: SourceError },

    #[error(
        "{source_name}: {bad} of the {read} records read are bad, more than \
         data.max_bad_fraction = {allowed}; the last one: {last}"
    )]
    TooManyBad {
        source_name: String,
        bad: usize,
        read: usize,
        allowed: f64,
        last: String,
    },

    #[error("cannot start a loader thread: {0}")]
    Spawn(#[source] std::io::Error),

    #[error("a loader thread panicked while building step {step}")]
    WorkerPanicked { step: u64 },
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> WorkerError {
    let path = path.into();
    move |source| WorkerError::Io { path, source }
}

impl From<lgaf_store::HistoryError> for WorkerError {
    fn from(e: lgaf_store::HistoryError) -> Self {
        WorkerError::History(Box::new(e))
    }
}
