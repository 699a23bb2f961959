//! The job's output vocabulary: the [`Effect`]s a method queues for the caller to carry out
//! (log, write a manifest, save the job) and rank 0's [`Progress`] numbers they carry. The
//! job only describes; `service.rs` acts.

use lgaf_proto::Device;

use super::{Backend, CommitRequest, JobPhase, LiveSource, Millis};

/// Rank 0's latest training numbers.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Progress {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: u64,
    pub loss: f64,
    pub lr: f64,
    pub samples_per_s: f64,
    pub data_wait_ms: f64,
    pub bad_records: u64,
    pub gamma_local: f64,
    pub gamma_global: f64,
    pub at: Millis,
}

/// What the caller must do after a method returns, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// For the logs.
    WorkerRegistered {
        worker_id: String,
        host: String,
        device: Device,
        slot: Option<u32>,
        registered: u32,
        wanted: u32,
    },
    /// For the logs: a worker was refused at Join and forgotten, freeing its place.
    WorkerRefused { worker_id: String, reason: String },
    /// For the logs: a Join's live-recovery offer could not be a rank's state of this job
    /// and was ignored (the worker joined without it).
    OfferIgnored { worker_id: String, reason: String },
    /// A generation formed: long-polling Joins can answer.
    GenerationFormed {
        generation: u64,
        world_size: u32,
        /// The job's data shards (`--workers`): more than `world_size` in a smaller
        /// (elastic) generation.
        data_world_size: u32,
        backend: Backend,
        steps_per_epoch: u64,
        total_steps: u64,
        /// The committed checkpoint the ranks start from (0: from scratch, or `live`).
        resume_step: u64,
        /// Set when the ranks start from the survivors' state instead (live recovery).
        live: Option<LiveSource>,
        /// Why a generation that followed an ended one did not start from its survivors.
        not_live: Option<String>,
    },
    /// A generation ended; the next forms when enough workers join.
    GenerationEnded {
        generation: u64,
        reason: String,
        /// After a lost rank: the restart this spent (of `max_restarts`). None: it ended
        /// to grow (no restart spent).
        restart: Option<u32>,
        max_restarts: u32,
    },
    /// A lost worker was forgotten; a local one must be stopped (if still running) and
    /// started again in its slot.
    WorkerLost {
        worker_id: String,
        slot: Option<u32>,
        pid: u32,
        host: String,
        reason: String,
    },
    /// Rank 0 published the NCCL id: long-polling GetNcclIds can answer.
    NcclIdPublished { generation: u64 },
    /// Rank 0's latest numbers, to log.
    Progress(Progress),
    /// Every rank has acknowledged the step: write its manifest, then report the outcome
    /// with [`super::Job::commit_done`].
    Commit(CommitRequest),
    /// For the logs.
    CheckpointCommitted { step: u64, manifest: String },
    /// The job is over (finished or failed); workers get STOP from now on.
    JobEnded(JobPhase),
    /// Something worth keeping changed: save a [`super::JobSnapshot`].
    Persist,
}

impl Effect {
    /// Whether the event may answer (or refuse) a waiting Join or GetNcclId, which the
    /// service then calls again. Not so a registration: the new worker has not joined, a
    /// generation forms from joined workers (an elastic one "when all joined" only once
    /// every registered worker has), and a place it freed is a [`Effect::WorkerLost`] of its
    /// own; nor rank 0's progress numbers. Waking every waiting Join on each of N
    /// registrations made forming a generation of N workers cost O(N^2) calls of O(N).
    pub fn may_answer_long_polls(&self) -> bool {
        !matches!(self, Effect::WorkerRegistered { .. } | Effect::Progress(_))
    }
}
