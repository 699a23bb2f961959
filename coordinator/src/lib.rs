//! The coordinator of an LGAF training job: one per job, never linking libtorch.
//!
//! - [`job`]: the job as a plain, synchronous state machine (registration, the generation's
//!   ranks and collective, the schedule from the workers' training facts, epoch plans,
//!   heartbeats, progress, checkpoint acks and commits, finish and failure);
//! - [`service`]: the tonic handlers over it, with long-polling `Join`/`GetNcclId`;
//! - [`store`]: the traits commits and job snapshots go through, implemented by
//!   [`lgaf_store::RunStore`] (a local directory or S3), and what a resumed run finds there;
//! - [`local`]: workers spawned on this machine;
//! - [`rate`]: request rates per peer;
//! - [`supervisor`]: the `lgaf-coordinator` process around the job (command line, lease,
//!   serving, local workers, shutdown).

pub mod job;
pub mod local;
pub mod observe;
pub mod rate;
pub mod service;
pub mod store;
pub mod supervisor;

pub use job::{Effect, Job, JobError, JobPhase, JobSettings};
pub use lgaf_store::{RunStore, Store};
pub use service::{serve, CoordinatorService, Security, ServiceOptions};
pub use store::{stored_run, CheckpointCommitter, JobStatePersistence, StoreError, StoredRun};
