//! The coordinator of an LGAF training job: one per job, never linking libtorch.
//!
//! - [`job`]: the job as a plain, synchronous state machine (registration, the generation's
//!   ranks and collective, the schedule from the workers' training facts, epoch plans,
//!   heartbeats, progress, checkpoint acks and commits, finish and failure);
//! - [`store`]: the traits commits and job snapshots go through, and a local-directory
//!   implementation until the object store is wired in.

pub mod job;
pub mod store;

pub use job::{Effect, Job, JobError, JobPhase, JobSettings};
pub use store::{CheckpointCommitter, FileStore, JobStatePersistence, StoreError};
