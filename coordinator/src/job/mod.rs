//! The job as a plain state machine: no async, no network, no clock. Every method takes the
//! request (the generated `lgaf.v1` message) and `now` (milliseconds since the Unix epoch),
//! validates everything before it changes anything, and either answers or refuses with a
//! [`JobError`] that the service maps to a gRPC status. What the caller must do besides
//! answering (write a manifest, save the job, log) is queued as [`Effect`]s and drained with
//! [`Job::take_effects`].
//!
//! Generations: the first generation forms when `--workers N` registered workers have
//! joined. When a rank is lost (silent past the heartbeat deadline, its local process
//! exited, or it left its failed collective group and joined again) the generation ends:
//! the lost workers are forgotten (their places free for replacements), the others must
//! join again, and the next generation forms from the last committed checkpoint, at most
//! `max_restarts` times.
//!
//! Elasticity: `world_size` (`--workers`) is the job's size and the number of data shards
//! every global batch is cut into; it fixes the schedule once for the whole run. When a lost
//! worker is not replaced within `elastic_grace_ms`, the next generation forms with the
//! workers there are (at least `min_workers`), each rank holding several data shards
//! (`lgaf_proto::data_shards`), so the global batch, the step count and the learning-rate
//! schedule stay the full job's. A worker that registers while such a smaller generation
//! runs waits; at the next committed checkpoint the generation ends (no restart is spent)
//! and the next one forms with it.
//!
//! The [`Job`] is defined here with its constructors and accessors; its handlers are split
//! by concern, each file another `impl Job`:
//!
//! - `errors`: [`JobError`], why a request is refused;
//! - `settings`: [`JobSettings`], what the coordinator was started with;
//! - `schedule`: the workers' [`Facts`] and the [`Schedule`] arithmetic;
//! - `membership`: [`Worker`]s, Register and Join, the membership check of every request;
//! - `generations`: forming a [`Generation`], losing workers and ending generations, the
//!   clock ([`Job::tick`]);
//! - `live`: live recovery, the survivors' [`LiveOffer`]s and the choice between them and
//!   the last checkpoint;
//! - `training`: what a formed generation's ranks ask for: the NCCL id and epoch plans;
//! - `progress`: heartbeats, progress reports and the [`v1::JobStatus`] operators see;
//! - `checkpoints`: checkpoint acks and commits;
//! - `finish`: Finish, and the job ending (finished or failed);
//! - `effects`: the [`Effect`]s the caller carries out.

use std::collections::BTreeMap;

use lgaf_proto::v1;
use serde::{Deserialize, Serialize};

mod checkpoints;
mod effects;
mod errors;
mod finish;
mod generations;
mod live;
mod membership;
mod progress;
mod schedule;
mod settings;
mod training;

pub use checkpoints::{CheckpointObject, CommitError, CommitRequest, CommittedCheckpoint};
pub use effects::{Effect, Progress};
pub use errors::JobError;
pub use generations::{Generation, GenerationEnd};
pub use live::{LiveOffer, LiveSource};
pub use membership::{Backend, Worker, WorkerPhase};
pub use progress::JobGauges;
pub use schedule::{Facts, Schedule, ScheduleError};
pub use settings::JobSettings;

use checkpoints::PendingCheckpoint;
use errors::Result;
use generations::{LossCost, Reform};

/// Milliseconds since the Unix epoch, passed in by the caller.
pub type Millis = u64;

/// The format tag of [`JobSnapshot`], so a later coordinator can refuse what it cannot read.
pub const SNAPSHOT_FORMAT: &str = "lgaf-job/1";

/// Where the job as a whole is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobPhase {
    /// Waiting for `--workers N` workers to register and join (or between generations).
    Waiting,
    Running,
    Finished,
    Failed {
        error: String,
    },
    /// The coordinator was stopped before the end; the run is resumable.
    Cancelled {
        reason: String,
    },
}

impl JobPhase {
    pub fn is_over(&self) -> bool {
        matches!(
            self,
            JobPhase::Finished | JobPhase::Failed { .. } | JobPhase::Cancelled { .. }
        )
    }

    pub fn to_proto(&self) -> v1::JobState {
        match self {
            JobPhase::Waiting => v1::JobState::Waiting,
            JobPhase::Running => v1::JobState::Running,
            JobPhase::Finished => v1::JobState::Finished,
            JobPhase::Failed { .. } => v1::JobState::Failed,
            JobPhase::Cancelled { .. } => v1::JobState::Cancelled,
        }
    }

    fn describe(&self) -> String {
        match self {
            JobPhase::Waiting => "not started".into(),
            JobPhase::Running => "started".into(),
            JobPhase::Finished => "finished".into(),
            JobPhase::Failed { error } => format!("failed: {error}"),
            JobPhase::Cancelled { reason } => format!("been cancelled: {reason}"),
        }
    }
}

/// The job as saved by a [`crate::store::JobStatePersistence`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSnapshot {
    pub format: String,
    pub saved_at_ms: Millis,
    pub job: Job,
}

/// One training job, as the coordinator knows it: its workers, the generation they train
/// in, the schedule, and the checkpoints acknowledged and committed.
///
/// It is a state machine with no I/O. Time comes in as `now: Millis` on every call (the
/// caller's clock; the job never reads one), and everything the caller must do besides
/// answering comes out as [`Effect`]s, drained with [`Job::take_effects`] after each call.
/// The handlers in `service.rs` lock it, call one method per gRPC request (`register`,
/// `join`, `epoch_plan`, `heartbeat`, `report_progress`, `checkpoint_ack`, `finish`, ...),
/// then carry out the effects: write a manifest and report it back with
/// [`Job::commit_done`], save a [`JobSnapshot`], log. The coordinator's clock calls
/// [`Job::tick`]; local worker exits come in through [`Job::local_worker_exited`].
///
/// Invariants:
/// - a request is checked in full before anything changes, so a refusal leaves the job as
///   it was; the exceptions are refusals that are themselves the change (a Join with other
///   facts than the first joiner's forgets its worker; a first Join whose facts give no
///   schedule, or leave nothing to train, ends the job);
/// - at most `settings.world_size` workers are registered;
/// - while the phase is `Running`, every member of the generation is a registered worker
///   whose `rank` is its index in `members`;
/// - the first worker to join fixes the facts, and with them the schedule, for the whole
///   job; every later worker must have the same facts;
/// - once the phase is over (finished or failed) it never changes, and every worker that
///   calls is told STOP;
/// - `last_commit` is the newest committed checkpoint; every generation forms from it, or
///   from its survivors' state at a step not older than it (`live`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    settings: JobSettings,
    phase: JobPhase,
    /// By worker id.
    workers: BTreeMap<String, Worker>,
    next_seq: u64,
    /// The facts of the first worker to join (and its id): every other must match.
    facts: Option<(Facts, String)>,
    /// The schedule at `settings.world_size`, computed when the first worker joins.
    schedule: Option<Schedule>,
    generation: Option<Generation>,
    /// By step.
    pending: BTreeMap<u64, PendingCheckpoint>,
    last_commit: Option<CommittedCheckpoint>,
    /// Generations restarted so far (see `JobSettings::max_restarts`).
    #[serde(default)]
    restarts: u32,
    /// Set when a generation ends: when the next may form with fewer than `world_size`.
    #[serde(default)]
    reform: Option<Reform>,
    /// Live states of generations before this one are not taken (see `live`): it is the
    /// generation that last started from a checkpoint or from scratch (earlier states lie on
    /// another trajectory), or the one after a source whose transfer failed.
    #[serde(default)]
    lineage: u64,
    /// Transient: rank 0's numbers for status and logs, not worth persisting.
    #[serde(skip)]
    progress: Option<Progress>,
    #[serde(skip)]
    effects: Vec<Effect>,
}

impl Job {
    pub fn new(settings: JobSettings) -> Result<Job> {
        if settings.world_size == 0 {
            return Err(JobError::invalid("workers", "must be at least 1"));
        }
        if settings.run_id.is_empty() {
            return Err(JobError::invalid("run_id", "missing"));
        }
        if settings.min_workers > settings.world_size {
            return Err(JobError::invalid(
                "min_workers",
                format!(
                    "{} is more than the {} workers of the job",
                    settings.min_workers, settings.world_size
                ),
            ));
        }
        Ok(Job {
            settings,
            phase: JobPhase::Waiting,
            workers: BTreeMap::new(),
            next_seq: 1,
            facts: None,
            schedule: None,
            generation: None,
            pending: BTreeMap::new(),
            last_commit: None,
            restarts: 0,
            reform: None,
            lineage: 0,
            progress: None,
            effects: Vec::new(),
        })
    }

    /// A job that resumes its run from `from`, the newest checkpoint committed in the store
    /// (by an earlier coordinator of the same run id): the generation that forms gets it as
    /// `resume_step`/`resume_manifest`, checkpoint acks at or before it are not taken again,
    /// and epoch plans list only checkpoint steps after it.
    ///
    /// Whether anything is left to train depends on the schedule, that is on the workers'
    /// facts. `previous` is the job the earlier coordinator saved: when it ran the same
    /// configuration and had the facts, the schedule is recomputed from them at this
    /// job's world size and `--max-steps`, and if `from` is its final step the job is
    /// finished at once (past it: failed, saying why). Otherwise that is decided when the
    /// first worker joins with its facts.
    pub fn resume(
        settings: JobSettings,
        from: CommittedCheckpoint,
        previous: Option<&Job>,
    ) -> Result<Job> {
        let mut job = Job::new(settings)?;
        job.last_commit = Some(from);
        let known = previous
            .filter(|p| p.settings.config_toml == job.settings.config_toml)
            .and_then(|p| p.facts.clone());
        if let Some((facts, first)) = known {
            if let Ok(schedule) =
                Schedule::new(&facts, job.settings.world_size, job.settings.max_steps)
            {
                if let Some(phase) = job.resume_outcome(&schedule) {
                    // Over before it started: no effects, the caller sees the phase.
                    job.schedule = Some(schedule);
                    job.facts = Some((facts, first));
                    job.phase = phase;
                }
            }
        }
        Ok(job)
    }

    /// Whether the checkpoint the job resumes from leaves steps to train under `schedule`:
    /// `None` if so, else how the job ends (finished at the final step, failed past it).
    fn resume_outcome(&self, schedule: &Schedule) -> Option<JobPhase> {
        let from = self.last_commit.as_ref()?;
        let total = schedule.total_steps;
        let at =
            lgaf_proto::resumed_step(from.step, from.steps_per_epoch, schedule.steps_per_epoch);
        match at.cmp(&total) {
            std::cmp::Ordering::Less => None,
            std::cmp::Ordering::Equal => Some(JobPhase::Finished),
            std::cmp::Ordering::Greater => {
                let capped = if schedule.is_capped() {
                    ", capped by max_steps"
                } else {
                    ""
                };
                Some(JobPhase::Failed {
                    error: format!(
                        "run {:?} has a committed checkpoint at step {}, past the final step \
                         {total} of this job ({} steps per epoch at {} ranks, {} epochs{capped}); \
                         resume it with the schedule it was trained under, or use another \
                         --run-id",
                        self.settings.run_id,
                        from.step,
                        schedule.steps_per_epoch,
                        schedule.world_size,
                        schedule.epochs
                    ),
                })
            }
        }
    }

    /// The checkpoint the current generation resumed from (0: from scratch, or from its
    /// survivors' state: `Generation::live`), once it has formed.
    pub fn resume_step(&self) -> u64 {
        self.generation.as_ref().map_or(0, |g| g.resume_step)
    }

    pub fn settings(&self) -> &JobSettings {
        &self.settings
    }

    pub fn phase(&self) -> &JobPhase {
        &self.phase
    }

    pub fn is_over(&self) -> bool {
        self.phase.is_over()
    }

    pub fn generation(&self) -> Option<&Generation> {
        self.generation.as_ref()
    }

    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    pub fn registered_count(&self) -> u32 {
        self.workers.len() as u32
    }

    pub fn joined_count(&self) -> u32 {
        self.workers
            .values()
            .filter(|w| w.phase != WorkerPhase::Registered)
            .count() as u32
    }

    pub fn last_commit(&self) -> Option<&CommittedCheckpoint> {
        self.last_commit.as_ref()
    }

    pub fn latest_progress(&self) -> Option<&Progress> {
        self.progress.as_ref()
    }

    /// Once the job is over: whether every member of the generation has been told STOP
    /// or has finished, so the coordinator can exit without leaving a worker unanswered.
    pub fn all_released(&self) -> bool {
        self.workers.values().all(|w| w.released)
    }

    /// The effects queued since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub fn snapshot(&self, now: Millis) -> JobSnapshot {
        JobSnapshot {
            format: SNAPSHOT_FORMAT.into(),
            saved_at_ms: now,
            job: self.clone(),
        }
    }

    /// Refuses a request once the job is over.
    fn refuse_if_over(&self) -> Result<()> {
        if self.phase.is_over() {
            Err(JobError::JobOver(self.phase.describe()))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
