//! Why the job refuses a request: [`JobError`], one variant per gRPC code the service answers
//! with (see `service::status_of`), and the module's `Result` alias.

use std::fmt;

/// Why a request was refused. The service maps each variant to one gRPC code (see
/// `service::status_of`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// A missing or malformed field (INVALID_ARGUMENT).
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// The worker id is not registered here (NOT_FOUND): it must register again.
    #[error("worker_id: {0:?} is not registered with this coordinator; register again")]
    UnknownWorker(String),
    /// The request names a generation that is not the current one (ABORTED).
    #[error("generation: {got} is not the current generation ({current}); join again")]
    StaleGeneration { got: u64, current: String },
    /// A field's value is fine but the job's state refuses it (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A worker's training facts differ from the first joiner's (FAILED_PRECONDITION).
    #[error(
        "facts.{field}: this worker has {theirs}, worker {first_worker} (the first to join) \
         has {ours}; every rank must train on the same data with the same configuration"
    )]
    FactsMismatch {
        field: &'static str,
        theirs: u64,
        ours: u64,
        first_worker: String,
    },
    /// The slot is taken by another registered worker (ALREADY_EXISTS).
    #[error("slot: {slot} is already taken by worker {by}")]
    SlotTaken { slot: u32, by: String },
    /// A range request past the end of the run (OUT_OF_RANGE).
    #[error("{field}: {message}")]
    OutOfRange { field: String, message: String },
    /// The job has ended (FAILED_PRECONDITION).
    #[error("the job has {0}")]
    JobOver(String),
    /// Every place in the job is taken for now (UNAVAILABLE): a place frees when a
    /// generation ends or a worker is lost, so the worker registers again later (a
    /// replacement for a rank that died is usually early: the rank is not lost yet).
    #[error("{0}")]
    NoPlace(String),
}

impl JobError {
    pub(super) fn invalid(field: impl Into<String>, message: impl fmt::Display) -> Self {
        JobError::InvalidArgument {
            field: field.into(),
            message: message.to_string(),
        }
    }

    pub(super) fn precondition(message: impl fmt::Display) -> Self {
        JobError::FailedPrecondition(message.to_string())
    }
}

pub(super) type Result<T, E = JobError> = std::result::Result<T, E>;
