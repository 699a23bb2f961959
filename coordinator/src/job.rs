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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use lgaf_proto::{v1, Device};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, passed in by the caller.
pub type Millis = u64;

/// The format tag of [`JobSnapshot`], so a later coordinator can refuse what it cannot read.
pub const SNAPSHOT_FORMAT: &str = "lgaf-job/1";

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
}

impl JobError {
    fn invalid(field: impl Into<String>, message: impl fmt::Display) -> Self {
        JobError::InvalidArgument {
            field: field.into(),
            message: message.to_string(),
        }
    }

    fn precondition(message: impl fmt::Display) -> Self {
        JobError::FailedPrecondition(message.to_string())
    }
}

type Result<T, E = JobError> = std::result::Result<T, E>;

/// What the coordinator was started with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSettings {
    pub job_id: String,
    /// The checkpoint lineage in the store (`runs/<run_id>/...`).
    pub run_id: String,
    /// Part of every worker id, so that a worker of an earlier coordinator process gets
    /// NOT_FOUND (and registers again) instead of being mistaken for a new worker.
    pub instance: String,
    /// `--workers N`: the world size of the first generation, the most ranks a generation
    /// has, and the number of data shards of every global batch.
    pub world_size: u32,
    /// `--min-workers`: the fewest ranks a generation may continue with when lost workers
    /// are not replaced within `elastic_grace_ms` (0, or `world_size`: never fewer).
    #[serde(default)]
    pub min_workers: u32,
    /// How long after a generation ends the next waits for the full `world_size` before it
    /// forms with fewer (elastic jobs only).
    #[serde(default)]
    pub elastic_grace_ms: u64,
    /// `--max-steps` (0: none); caps the schedule on top of the facts' own max_steps.
    pub max_steps: u64,
    /// The training configuration handed to every worker, uninterpreted.
    pub config_toml: String,
    pub store_url: String,
    pub heartbeat_interval_ms: u32,
    /// A member not heard from for this long fails the generation (see
    /// [`Job::expire_silent`]); workers stop when the coordinator is silent as long.
    #[serde(default = "default_heartbeat_deadline_ms")]
    pub heartbeat_deadline_ms: u32,
    pub collective_timeout_ms: u32,
    /// Generations that may be restarted after a lost rank before the job fails.
    #[serde(default)]
    pub max_restarts: u32,
}

/// Snapshots written before the deadline was configurable get the CLI's default.
fn default_heartbeat_deadline_ms() -> u32 {
    20_000
}

/// [`v1::TrainingFacts`] in the job's own (serialisable) form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub num_samples: u64,
    pub num_classes: u64,
    pub batch_size: u64,
    pub epochs: u64,
    pub max_steps: u64,
    pub checkpoint_every_steps: u64,
    pub keep_last: u64,
    pub seed: u64,
}

impl From<&v1::TrainingFacts> for Facts {
    fn from(f: &v1::TrainingFacts) -> Self {
        Facts {
            num_samples: f.num_samples,
            num_classes: f.num_classes,
            batch_size: f.batch_size,
            epochs: f.epochs,
            max_steps: f.max_steps,
            checkpoint_every_steps: f.checkpoint_every_steps,
            keep_last: f.keep_last,
            seed: f.seed,
        }
    }
}

impl Facts {
    /// Every field with its proto name, to name the first that differs.
    fn fields(&self) -> [(&'static str, u64); 8] {
        [
            ("num_samples", self.num_samples),
            ("num_classes", self.num_classes),
            ("batch_size", self.batch_size),
            ("epochs", self.epochs),
            ("max_steps", self.max_steps),
            ("checkpoint_every_steps", self.checkpoint_every_steps),
            ("keep_last", self.keep_last),
            ("seed", self.seed),
        ]
    }

    /// Fields without which there is no schedule.
    fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("num_samples", self.num_samples),
            ("num_classes", self.num_classes),
            ("batch_size", self.batch_size),
            ("epochs", self.epochs),
        ] {
            if value == 0 {
                return Err(JobError::invalid(
                    format!("facts.{field}"),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }
}

/// Steps and checkpoints of the run at one world size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub world_size: u32,
    pub steps_per_epoch: u64,
    pub epochs: u64,
    pub total_steps: u64,
    /// 0: only at epoch ends and the final step.
    pub checkpoint_every_steps: u64,
    pub seed: u64,
}

impl Schedule {
    /// Every rank runs floor(floor(num_samples / world_size) / batch_size) steps per epoch
    /// (the sampler's shards differ by at most one sample and every rank runs as many steps
    /// as the smallest allows); the run is that times epochs, capped by the config's
    /// max_steps and the coordinator's `--max-steps` (0: no cap).
    pub fn new(facts: &Facts, world_size: u32, cli_max_steps: u64) -> Result<Schedule, String> {
        if world_size == 0 {
            return Err("the world size must be at least 1".into());
        }
        if facts.batch_size == 0 || facts.epochs == 0 {
            return Err("batch_size and epochs must be at least 1".into());
        }
        let per_rank = facts.num_samples / u64::from(world_size);
        let steps_per_epoch = per_rank / facts.batch_size;
        if steps_per_epoch == 0 {
            return Err(format!(
                "no training steps: {} samples over {world_size} ranks gives {per_rank} per \
                 rank, fewer than one batch of {}; use more data, fewer workers or a smaller \
                 batch size",
                facts.num_samples, facts.batch_size
            ));
        }
        let mut total_steps = steps_per_epoch.checked_mul(facts.epochs).ok_or_else(|| {
            format!(
                "{steps_per_epoch} steps per epoch times {} epochs overflows",
                facts.epochs
            )
        })?;
        for cap in [facts.max_steps, cli_max_steps] {
            if cap > 0 {
                total_steps = total_steps.min(cap);
            }
        }
        Ok(Schedule {
            world_size,
            steps_per_epoch,
            epochs: facts.epochs,
            total_steps,
            checkpoint_every_steps: facts.checkpoint_every_steps,
            seed: facts.seed,
        })
    }

    /// Global steps `[first, end)` of `epoch` (0-based), or None past the run's end.
    pub fn epoch_range(&self, epoch: u64) -> Option<(u64, u64)> {
        let first = epoch.checked_mul(self.steps_per_epoch)?;
        if first >= self.total_steps {
            return None;
        }
        Some((first, (first + self.steps_per_epoch).min(self.total_steps)))
    }

    /// Epochs the run touches (the last one may be cut short by a max_steps cap).
    pub fn planned_epochs(&self) -> u64 {
        self.total_steps.div_ceil(self.steps_per_epoch)
    }

    /// Whether every rank saves a checkpoint after completing `step`: every
    /// checkpoint_every_steps, at every epoch end and at the final step.
    pub fn is_checkpoint_step(&self, step: u64) -> bool {
        step > 0
            && step <= self.total_steps
            && (step == self.total_steps
                || step.is_multiple_of(self.steps_per_epoch)
                || (self.checkpoint_every_steps > 0
                    && step.is_multiple_of(self.checkpoint_every_steps)))
    }

    /// The checkpoint steps in `(first, end]`, ascending.
    pub fn checkpoint_steps(&self, first: u64, end: u64) -> Vec<u64> {
        let mut steps = BTreeSet::new();
        if self.checkpoint_every_steps > 0 {
            let every = self.checkpoint_every_steps;
            let mut s = (first / every + 1).saturating_mul(every);
            while s <= end {
                steps.insert(s);
                s = s.saturating_add(every);
                if s == u64::MAX {
                    break;
                }
            }
        }
        // An epoch end and the final step; `end` is one or the other.
        if end > first {
            steps.insert(end);
        }
        steps.into_iter().collect()
    }

    fn describe_checkpoints(&self) -> String {
        let every = match self.checkpoint_every_steps {
            0 => String::new(),
            n => format!("every {n} steps, "),
        };
        format!(
            "{every}at epoch ends (every {} steps) and at the final step {}",
            self.steps_per_epoch, self.total_steps
        )
    }
}

/// The collective the ranks of a generation use, derived from the workers' devices: all
/// `cuda:N` -> NCCL, all `cpu` -> the CPU (TCP ring) backend. A job never mixes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    Cpu,
    Nccl,
}

impl Backend {
    fn of(device: Device) -> Backend {
        if device.is_cuda() {
            Backend::Nccl
        } else {
            Backend::Cpu
        }
    }

    pub fn to_proto(self) -> v1::CollectiveBackend {
        match self {
            Backend::Cpu => v1::CollectiveBackend::Cpu,
            Backend::Nccl => v1::CollectiveBackend::Nccl,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Cpu => "cpu",
            Backend::Nccl => "nccl",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerPhase {
    /// Registered, has not joined yet.
    Registered,
    /// Joined with accepted facts; waiting for the generation to form.
    Joined,
    /// A rank of the current generation.
    Training,
    Finished,
    Failed,
}

impl WorkerPhase {
    pub fn name(self) -> &'static str {
        match self {
            WorkerPhase::Registered => "registered",
            WorkerPhase::Joined => "joined",
            WorkerPhase::Training => "training",
            WorkerPhase::Finished => "finished",
            WorkerPhase::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub id: String,
    /// Registration order (1, 2, ...): the rank order of workers without a slot.
    pub seq: u64,
    pub host: String,
    pub pid: u32,
    pub device: String,
    pub collective_addr: String,
    pub slot: Option<u32>,
    pub registered_at: Millis,
    pub last_seen: Millis,
    pub phase: WorkerPhase,
    /// Rank in the current generation.
    pub rank: Option<u32>,
    /// Steps completed, as last reported.
    pub step: u64,
    /// Told STOP or finished: nothing more to say to it once the job is over.
    pub released: bool,
    /// It has been a rank of some generation (one that must join again once that ended).
    #[serde(default)]
    pub was_rank: bool,
    /// The end of the last epoch plan given to it in its generation: it cannot have
    /// trained (or checkpointed) a step past this.
    #[serde(default)]
    pub planned_to: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub number: u64,
    /// Worker ids by rank.
    pub members: Vec<String>,
    pub backend: Backend,
    /// CPU backend: every rank's collective_addr, by rank.
    pub peers: Vec<String>,
    /// NCCL: the unique id rank 0 published.
    pub nccl_id: Option<Vec<u8>>,
    pub schedule: Schedule,
    /// The committed checkpoint the generation starts from (0: from scratch): the step
    /// its folder is named by, which the workers load.
    pub resume_step: u64,
    /// The first step this generation trains after: `resume_step` mapped to this world
    /// size's steps per epoch (`lgaf_proto::resumed_step`); equal on the same world size.
    pub start_step: u64,
    pub resume_manifest: String,
    pub formed_at: Millis,
    /// Why it ended, once it has: its members must join the next one.
    #[serde(default)]
    pub ended: Option<String>,
}

impl Generation {
    pub fn world_size(&self) -> u32 {
        self.members.len() as u32
    }
}

/// One object of a checkpoint, as a rank reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointObject {
    pub rank: u32,
    /// Relative to the step's folder `runs/<run_id>/ckpt/<step:012>/`: the key the rank
    /// passed to `RunStore::put_object`, e.g. `classifier/rank-00001.safetensors`.
    pub key: String,
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RankAck {
    objects: Vec<CheckpointObject>,
    state_json: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum CommitStatus {
    /// Waiting for more ranks.
    Collecting,
    /// Every rank acked; a [`CommitRequest`] is out.
    Committing,
    /// The last commit attempt failed; an identical ack from any rank tries again.
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PendingCheckpoint {
    generation: u64,
    epoch: u64,
    acks: BTreeMap<u32, RankAck>,
    status: CommitStatus,
}

/// The newest committed checkpoint: committed by this job, or found in the store when the
/// job started ([`Job::resume`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedCheckpoint {
    pub step: u64,
    pub epoch: u64,
    /// Steps per epoch of the run that wrote it (from its manifest's state; 0 if unknown):
    /// a run on another world size continues at the same epoch position.
    #[serde(default)]
    pub steps_per_epoch: u64,
    /// The manifest's key in the store (`runs/<run_id>/ckpt/<step:012>/MANIFEST.json`),
    /// handed to workers as `resume_manifest`.
    pub manifest: String,
    /// The step its folder is named by, once `step` has been mapped to another world
    /// size's numbering (0: the same as `step`).
    #[serde(default)]
    pub folder_step: u64,
}

impl CommittedCheckpoint {
    /// The step the workers load it by (its folder's).
    pub fn stored_step(&self) -> u64 {
        if self.folder_step == 0 {
            self.step
        } else {
            self.folder_step
        }
    }
}

/// What a [`crate::store::CheckpointCommitter`] writes: the manifest of one checkpoint,
/// once every rank has uploaded its objects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    pub run_id: String,
    pub generation: u64,
    pub step: u64,
    pub epoch: u64,
    pub world_size: u32,
    /// Every rank's objects, by rank.
    pub objects: Vec<CheckpointObject>,
    /// Rank 0's run state (JSON), stored in the manifest.
    pub state_json: String,
    /// Committed checkpoints to keep (0: all); older ones may be pruned after the commit.
    pub keep_last: u64,
}

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobPhase {
    /// Waiting for `--workers N` workers to register and join.
    Waiting,
    Running,
    Finished,
    Failed {
        error: String,
    },
}

impl JobPhase {
    pub fn is_over(&self) -> bool {
        matches!(self, JobPhase::Finished | JobPhase::Failed { .. })
    }

    pub fn to_proto(&self) -> v1::JobState {
        match self {
            JobPhase::Waiting => v1::JobState::Waiting,
            JobPhase::Running => v1::JobState::Running,
            JobPhase::Finished => v1::JobState::Finished,
            JobPhase::Failed { .. } => v1::JobState::Failed,
        }
    }

    fn describe(&self) -> String {
        match self {
            JobPhase::Waiting => "not started".into(),
            JobPhase::Running => "started".into(),
            JobPhase::Finished => "finished".into(),
            JobPhase::Failed { error } => format!("failed: {error}"),
        }
    }
}

/// What the caller must do after a method returns, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// For the logs.
    WorkerRegistered {
        worker_id: String,
        host: String,
        device: String,
        slot: Option<u32>,
        registered: u32,
        wanted: u32,
    },
    /// For the logs: a worker was refused at Join and forgotten, freeing its place.
    WorkerRefused { worker_id: String, reason: String },
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
        /// The committed checkpoint the ranks start from (0: from scratch).
        resume_step: u64,
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
    /// with [`Job::commit_done`].
    Commit(CommitRequest),
    /// For the logs.
    CheckpointCommitted { step: u64, manifest: String },
    /// The job is over (finished or failed); workers get STOP from now on.
    JobEnded(JobPhase),
    /// Something worth keeping changed: save a [`JobSnapshot`].
    Persist,
}

/// When a generation that ended may be followed by a smaller one (elastic jobs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Reform {
    /// The grace period's end: from then on, with whichever workers have joined.
    not_before: Millis,
    /// Also as soon as every registered worker has joined (after an end for growth: the
    /// ranks of the ended generation and the newcomers are all there is to wait for).
    when_all_joined: bool,
}

/// The job as saved by a [`crate::store::JobStatePersistence`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSnapshot {
    pub format: String,
    pub saved_at_ms: Millis,
    pub job: Job,
}

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
                let capped = if total < schedule.steps_per_epoch.saturating_mul(schedule.epochs) {
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

    /// The step the job resumed from (0: from scratch), once its generation has formed.
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

    // ---- requests -------------------------------------------------------------------

    pub fn register(
        &mut self,
        req: &v1::RegisterRequest,
        now: Millis,
    ) -> Result<v1::RegisterReply> {
        if !req.job_id.is_empty() && req.job_id != self.settings.job_id {
            return Err(JobError::precondition(format!(
                "job_id: this coordinator runs job {:?}, the worker asked for {:?}",
                self.settings.job_id, req.job_id
            )));
        }
        check_host(&req.host).map_err(|m| JobError::invalid("host", m))?;
        if req.pid == 0 {
            return Err(JobError::invalid("pid", "missing"));
        }
        let device = Device::parse(&req.device).ok_or_else(|| {
            JobError::invalid(
                "device",
                format!("expected \"cpu\" or \"cuda:N\", got {:?}", req.device),
            )
        })?;
        if !req.collective_addr.is_empty() && !lgaf_proto::is_host_port(&req.collective_addr) {
            return Err(JobError::invalid(
                "collective_addr",
                format!("expected host:port, got {:?}", req.collective_addr),
            ));
        }
        let backend = Backend::of(device);
        if backend == Backend::Cpu && req.collective_addr.is_empty() {
            return Err(JobError::invalid(
                "collective_addr",
                "missing; a CPU worker needs the host:port of its collective listener",
            ));
        }
        if let Some(slot) = req.slot {
            if slot >= self.settings.world_size {
                return Err(JobError::invalid(
                    "slot",
                    format!(
                        "{slot} is out of range: the job has {} workers (slots 0..{})",
                        self.settings.world_size, self.settings.world_size
                    ),
                ));
            }
        }
        if self.phase.is_over() {
            return Err(JobError::JobOver(self.phase.describe()));
        }
        if let Some(g) = self.generation.as_ref().filter(|g| g.ended.is_none()) {
            if g.world_size() >= self.settings.world_size {
                return Err(JobError::precondition(format!(
                    "the job is already running generation {} with {} workers; there is no \
                     place for another worker",
                    g.number,
                    g.world_size()
                )));
            }
            // A smaller (elastic) generation: the newcomer waits for its next checkpoint.
        }
        // Between generations, a new worker in the slot of a rank that has not joined again
        // takes its place: a slot is one pod or local process, so the old one is gone.
        let between_generations = self.phase == JobPhase::Waiting;
        let superseded = req.slot.filter(|_| between_generations).and_then(|slot| {
            self.workers
                .values()
                .find(|w| w.slot == Some(slot) && w.was_rank && w.phase == WorkerPhase::Registered)
                .map(|w| w.id.clone())
        });
        let others = self
            .workers
            .values()
            .filter(|w| Some(&w.id) != superseded.as_ref());
        if others.clone().count() as u32 >= self.settings.world_size {
            let ids: Vec<&str> = self.workers.keys().map(String::as_str).collect();
            return Err(JobError::precondition(format!(
                "the job wants {} workers and {} have registered ({})",
                self.settings.world_size,
                ids.len(),
                ids.join(", ")
            )));
        }
        for w in others {
            let theirs = Device::parse(&w.device).map(Backend::of);
            if theirs != Some(backend) {
                return Err(JobError::precondition(format!(
                    "device: this worker's {} does not go with worker {}'s {}; a job runs all \
                     its workers on GPUs (NCCL) or all on CPUs (the CPU collective)",
                    req.device, w.id, w.device
                )));
            }
            if backend == Backend::Nccl && w.host == req.host && w.device == req.device {
                return Err(JobError::precondition(format!(
                    "device: {} on host {} is already used by worker {}; NCCL needs one GPU per \
                     rank",
                    req.device, req.host, w.id
                )));
            }
            if let (Some(slot), Some(taken)) = (req.slot, w.slot) {
                if slot == taken {
                    return Err(JobError::SlotTaken {
                        slot,
                        by: w.id.clone(),
                    });
                }
            }
        }

        if let Some(old) = superseded {
            let why = format!(
                "worker {old}, a rank of the ended generation that has not joined again, is \
                 replaced by a new worker in its slot {}",
                req.slot.unwrap_or_default()
            );
            self.lose(&[old], why, false, now);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = format!("w{seq}-{}", self.settings.instance);
        self.workers.insert(
            id.clone(),
            Worker {
                id: id.clone(),
                seq,
                host: req.host.clone(),
                pid: req.pid,
                device: req.device.clone(),
                collective_addr: req.collective_addr.clone(),
                slot: req.slot,
                registered_at: now,
                last_seen: now,
                phase: WorkerPhase::Registered,
                rank: None,
                step: 0,
                released: false,
                was_rank: false,
                planned_to: 0,
            },
        );
        self.effects.push(Effect::WorkerRegistered {
            worker_id: id.clone(),
            host: req.host.clone(),
            device: req.device.clone(),
            slot: req.slot,
            registered: self.registered_count(),
            wanted: self.settings.world_size,
        });
        Ok(v1::RegisterReply {
            worker_id: id,
            job_id: self.settings.job_id.clone(),
            run_id: self.settings.run_id.clone(),
            config_toml: self.settings.config_toml.clone(),
            store_url: self.settings.store_url.clone(),
            heartbeat_interval_ms: self.settings.heartbeat_interval_ms,
            heartbeat_deadline_ms: self.settings.heartbeat_deadline_ms,
            max_steps: self.settings.max_steps,
        })
    }

    /// Records the worker's facts (the first joiner's define the schedule) and answers
    /// once its generation has formed; `Ok(None)` means "not yet": the service calls again
    /// (with the same request) when the job changes, until its deadline.
    pub fn join(&mut self, req: &v1::JoinRequest, now: Millis) -> Result<Option<v1::JoinReply>> {
        let id = require_id(&req.worker_id)?;
        let facts = req
            .facts
            .as_ref()
            .ok_or_else(|| JobError::invalid("facts", "missing"))?;
        let facts = Facts::from(facts);
        facts.validate()?;
        let worker = self
            .workers
            .get(id)
            .ok_or_else(|| JobError::UnknownWorker(id.to_string()))?;
        if self.phase.is_over() {
            return Err(JobError::JobOver(self.phase.describe()));
        }

        if let Some((ours, first)) = &self.facts {
            if let Some((field, theirs, ours)) = first_difference(&facts, ours) {
                let err = JobError::FactsMismatch {
                    field,
                    theirs,
                    ours,
                    first_worker: first.clone(),
                };
                if worker.phase == WorkerPhase::Registered {
                    // Forget it: its place is free for a worker with the right facts.
                    self.workers.remove(id);
                    self.effects.push(Effect::WorkerRefused {
                        worker_id: id.to_string(),
                        reason: err.to_string(),
                    });
                }
                return Err(err);
            }
        } else {
            match Schedule::new(&facts, self.settings.world_size, self.settings.max_steps) {
                Ok(schedule) => {
                    self.schedule = Some(schedule);
                    self.facts = Some((facts, id.to_string()));
                    // A resumed job whose checkpoint is already the final step (or past it)
                    // ends here: nothing to train.
                    if let Some(phase) = self.resume_outcome(&schedule) {
                        self.end(phase);
                        return Err(JobError::JobOver(self.phase.describe()));
                    }
                }
                Err(why) => {
                    // Every rank must have these facts, so no worker could ever train.
                    let error = format!("the schedule from worker {id}'s facts: {why}");
                    self.end(JobPhase::Failed {
                        error: error.clone(),
                    });
                    return Err(JobError::precondition(error));
                }
            }
        }

        if req.left_generation != 0 {
            let running = self
                .generation
                .as_ref()
                .filter(|g| g.ended.is_none() && g.number == req.left_generation);
            if let Some(g) = running {
                let rank = self.workers[id].rank.unwrap_or(u32::MAX);
                let why = format!(
                    "rank {rank} (worker {id}) left generation {} (its collective group failed) \
                     and joined again",
                    g.number
                );
                self.lose(&[], why, true, now);
                if self.phase.is_over() {
                    return Err(JobError::JobOver(self.phase.describe()));
                }
            }
        }
        let worker = self.workers.get_mut(id).expect("checked above");
        worker.last_seen = now;
        if worker.phase == WorkerPhase::Registered {
            worker.phase = WorkerPhase::Joined;
        }
        self.try_form(now);
        Ok(self.assignment(id))
    }

    /// Forms the next generation once `world_size` workers have joined, or, in an elastic
    /// job, with the workers there are once [`Reform`] allows it.
    fn try_form(&mut self, now: Millis) {
        if self.phase != JobPhase::Waiting {
            return;
        }
        let joined = self.joined_count();
        if joined < self.settings.world_size && !self.may_form_smaller(joined, now) {
            return;
        }
        let schedule = self.schedule.expect("a worker has joined");
        let mut members: Vec<&Worker> = self
            .workers
            .values()
            .filter(|w| w.phase == WorkerPhase::Joined)
            .collect();
        // Ranks by slot where given (spawned and indexed workers), then registration order.
        members.sort_by_key(|w| (w.slot.unwrap_or(u32::MAX), w.seq));
        let backend = Device::parse(&members[0].device)
            .map(Backend::of)
            .unwrap_or(Backend::Cpu);
        let peers = match backend {
            Backend::Cpu => members.iter().map(|w| w.collective_addr.clone()).collect(),
            Backend::Nccl => Vec::new(),
        };
        let ids: Vec<String> = members.iter().map(|w| w.id.clone()).collect();
        let world_size = ids.len() as u32;
        let number = self.generation.as_ref().map_or(1, |g| g.number + 1);
        let (resume_step, resume_manifest, start_step) = match &self.last_commit {
            Some(c) => (
                c.stored_step(),
                c.manifest.clone(),
                lgaf_proto::resumed_step(c.step, c.steps_per_epoch, schedule.steps_per_epoch),
            ),
            None => (0, String::new(), 0),
        };
        if let Some(c) = self.last_commit.as_mut() {
            // From here on steps count in this world size's numbering; the checkpoint
            // itself is still loaded from its folder (`resume_step`).
            c.folder_step = resume_step;
            c.step = start_step;
            c.steps_per_epoch = schedule.steps_per_epoch;
        }
        for (rank, id) in ids.iter().enumerate() {
            let w = self.workers.get_mut(id).expect("member");
            w.rank = Some(rank as u32);
            w.was_rank = true;
            w.phase = WorkerPhase::Training;
            // Where every rank starts.
            w.step = start_step;
            w.planned_to = start_step;
        }
        self.generation = Some(Generation {
            number,
            members: ids,
            backend,
            peers,
            nccl_id: None,
            schedule,
            resume_step,
            start_step,
            resume_manifest,
            formed_at: now,
            ended: None,
        });
        self.phase = JobPhase::Running;
        self.reform = None;
        self.effects.push(Effect::GenerationFormed {
            generation: number,
            world_size,
            data_world_size: schedule.world_size,
            backend,
            steps_per_epoch: schedule.steps_per_epoch,
            total_steps: schedule.total_steps,
            resume_step,
        });
        self.effects.push(Effect::Persist);
    }

    /// Whether an elastic job may form a generation of `joined` (< `world_size`) workers now.
    fn may_form_smaller(&self, joined: u32, now: Millis) -> bool {
        let Some(reform) = self.reform else {
            return false; // the first generation always waits for every worker
        };
        let min = self.settings.min_workers;
        if min == 0 || min >= self.settings.world_size || joined < min {
            return false;
        }
        now >= reform.not_before || (reform.when_all_joined && joined == self.registered_count())
    }

    fn assignment(&self, id: &str) -> Option<v1::JoinReply> {
        let g = self.generation.as_ref()?;
        let rank = self.workers.get(id)?.rank?;
        Some(v1::JoinReply {
            generation: g.number,
            rank,
            world_size: g.world_size(),
            backend: g.backend.to_proto() as i32,
            peers: g.peers.clone(),
            resume_step: g.resume_step,
            resume_manifest: g.resume_manifest.clone(),
            total_steps: g.schedule.total_steps,
            steps_per_epoch: g.schedule.steps_per_epoch,
            collective_timeout_ms: self.settings.collective_timeout_ms,
            data_world_size: g.schedule.world_size,
        })
    }

    /// Checks that `worker_id` is a rank of generation `generation` (the current one) and
    /// returns its rank. Refusals in protocol order: field, NOT_FOUND, ABORTED.
    fn member(&self, worker_id: &str, generation: u64) -> Result<u32> {
        let id = require_id(worker_id)?;
        if generation == 0 {
            return Err(JobError::invalid(
                "generation",
                "missing (generations start at 1; take it from JoinReply)",
            ));
        }
        let worker = self
            .workers
            .get(id)
            .ok_or_else(|| JobError::UnknownWorker(id.to_string()))?;
        if self.ended_generation() == Some(generation) {
            return Err(JobError::StaleGeneration {
                got: generation,
                current: format!("none: generation {generation} has ended"),
            });
        }
        let current = self.generation.as_ref().map(|g| g.number);
        if current != Some(generation) {
            return Err(JobError::StaleGeneration {
                got: generation,
                current: current.map_or_else(|| "none has formed yet".into(), |n| n.to_string()),
            });
        }
        worker.rank.ok_or_else(|| {
            JobError::precondition(format!(
                "worker {id} is not a rank of generation {generation}"
            ))
        })
    }

    fn current(&self) -> &Generation {
        self.generation.as_ref().expect("member() checked it")
    }

    pub fn publish_nccl_id(
        &mut self,
        req: &v1::PublishNcclIdRequest,
        now: Millis,
    ) -> Result<v1::PublishNcclIdReply> {
        if req.nccl_id.len() != 128 {
            return Err(JobError::invalid(
                "nccl_id",
                format!("{} bytes; an ncclUniqueId has 128", req.nccl_id.len()),
            ));
        }
        let rank = self.member(&req.worker_id, req.generation)?;
        self.refuse_if_over()?;
        let g = self.current();
        if g.backend != Backend::Nccl {
            return Err(JobError::precondition(format!(
                "generation {} uses the {} backend, not NCCL",
                g.number, g.backend
            )));
        }
        if rank != 0 {
            return Err(JobError::precondition(format!(
                "only rank 0 publishes the NCCL id; worker {} is rank {rank}",
                req.worker_id
            )));
        }
        match &g.nccl_id {
            Some(id) if *id == req.nccl_id => {}
            Some(_) => {
                return Err(JobError::precondition(format!(
                    "generation {} already has a different NCCL id",
                    g.number
                )))
            }
            None => {
                let number = g.number;
                self.generation.as_mut().expect("current").nccl_id = Some(req.nccl_id.clone());
                self.effects
                    .push(Effect::NcclIdPublished { generation: number });
            }
        }
        self.touch(&req.worker_id, now);
        Ok(v1::PublishNcclIdReply {})
    }

    /// The generation's NCCL id once rank 0 has published it (`Ok(None)`: not yet).
    pub fn nccl_id(&mut self, req: &v1::GetNcclIdRequest, now: Millis) -> Result<Option<Vec<u8>>> {
        self.member(&req.worker_id, req.generation)?;
        self.refuse_if_over()?;
        let g = self.current();
        if g.backend != Backend::Nccl {
            return Err(JobError::precondition(format!(
                "generation {} uses the {} backend, not NCCL",
                g.number, g.backend
            )));
        }
        let id = g.nccl_id.clone();
        self.touch(&req.worker_id, now);
        Ok(id)
    }

    pub fn epoch_plan(&mut self, req: &v1::EpochPlanRequest, now: Millis) -> Result<v1::EpochPlan> {
        let rank = self.member(&req.worker_id, req.generation)?;
        self.refuse_if_over()?;
        let g = self.current();
        let s = g.schedule;
        let (first, end) = s
            .epoch_range(req.epoch)
            .ok_or_else(|| JobError::OutOfRange {
                field: "epoch".into(),
                message: format!(
                    "epoch {} is past the end of the run ({} steps: epochs 0..{} of {} steps)",
                    req.epoch,
                    s.total_steps,
                    s.planned_epochs(),
                    s.steps_per_epoch
                ),
            })?;
        // The epoch's bounds stay those of the schedule (a resumed rank starts inside the
        // epoch, at resume_step); checkpoints at or before resume_step are committed already.
        let mut checkpoint_steps = s.checkpoint_steps(first, end);
        checkpoint_steps.retain(|&step| step > g.start_step);
        let plan = v1::EpochPlan {
            epoch: req.epoch,
            seed: s.seed,
            rank,
            world_size: g.world_size(),
            first_step: first,
            end_step: end,
            checkpoint_steps,
        };
        self.touch(&req.worker_id, now);
        let w = self.workers.get_mut(&req.worker_id).expect("a member");
        w.planned_to = w.planned_to.max(end);
        Ok(plan)
    }

    pub fn heartbeat(
        &mut self,
        req: &v1::HeartbeatRequest,
        now: Millis,
    ) -> Result<v1::HeartbeatReply> {
        let action = self.liveness(&req.worker_id, req.generation, req.step, now)?;
        Ok(v1::HeartbeatReply {
            action: action as i32,
            generation: self.generation.as_ref().map_or(0, |g| g.number),
        })
    }

    pub fn report_progress(
        &mut self,
        req: &v1::ProgressReport,
        now: Millis,
    ) -> Result<v1::ProgressReply> {
        check_progress_numbers(req)?;
        if let Some(g) = &self.generation {
            let epochs = g.schedule.planned_epochs();
            if req.epoch >= epochs {
                return Err(JobError::OutOfRange {
                    field: "epoch".into(),
                    message: format!("{} is past the run's epochs 0..{epochs}", req.epoch),
                });
            }
        }
        let action = self.liveness(&req.worker_id, req.generation, req.step, now)?;
        if action == v1::WorkerAction::Continue
            && self.workers.get(&req.worker_id).and_then(|w| w.rank) == Some(0)
        {
            let p = Progress {
                step: req.step,
                total_steps: self.current().schedule.total_steps,
                epoch: req.epoch,
                loss: req.loss,
                lr: req.lr,
                samples_per_s: req.samples_per_s,
                data_wait_ms: req.data_wait_ms,
                bad_records: req.bad_records,
                gamma_local: req.gamma_local,
                gamma_global: req.gamma_global,
                at: now,
            };
            self.progress = Some(p.clone());
            self.effects.push(Effect::Progress(p));
        }
        Ok(v1::ProgressReply {
            action: action as i32,
        })
    }

    /// Heartbeat and progress: STOP once the job is over (whatever the generation), else
    /// record the step and say CONTINUE.
    fn liveness(
        &mut self,
        worker_id: &str,
        generation: u64,
        step: u64,
        now: Millis,
    ) -> Result<v1::WorkerAction> {
        let id = require_id(worker_id)?;
        if !self.workers.contains_key(id) {
            return Err(JobError::UnknownWorker(id.to_string()));
        }
        if self.phase.is_over() {
            let w = self.workers.get_mut(id).expect("checked");
            w.last_seen = now;
            w.released = true;
            return Ok(v1::WorkerAction::Stop);
        }
        if self.ended_generation() == Some(generation) {
            self.touch(id, now);
            return Ok(v1::WorkerAction::Rejoin);
        }
        self.member(id, generation)?;
        let total = self.current().schedule.total_steps;
        if step > total {
            return Err(JobError::OutOfRange {
                field: "step".into(),
                message: format!("{step} is past the end of the run ({total} steps)"),
            });
        }
        let w = self.workers.get_mut(id).expect("checked");
        w.last_seen = now;
        w.step = step;
        if w.phase == WorkerPhase::Finished {
            w.released = true;
            return Ok(v1::WorkerAction::Stop);
        }
        Ok(v1::WorkerAction::Continue)
    }

    /// Records one rank's part of the checkpoint at `req.step`; once every rank of the
    /// generation has acknowledged it, queues [`Effect::Commit`]. The reply's `committed` is
    /// true here only for a repeated ack of an already committed step: the service sets it
    /// for the ack whose commit it has just written.
    pub fn checkpoint_ack(
        &mut self,
        req: &v1::CheckpointAckRequest,
        now: Millis,
    ) -> Result<v1::CheckpointAckReply> {
        if req.step == 0 {
            return Err(JobError::invalid(
                "step",
                "missing (checkpoint steps start at 1)",
            ));
        }
        let mut keys = BTreeSet::new();
        for (i, o) in req.objects.iter().enumerate() {
            check_object_key(&o.key)
                .map_err(|m| JobError::invalid(format!("objects[{i}].key"), m))?;
            if !keys.insert(o.key.as_str()) {
                return Err(JobError::invalid(
                    format!("objects[{i}].key"),
                    format!("{:?} is listed twice", o.key),
                ));
            }
            if !lgaf_proto::is_sha256_hex(&o.sha256) {
                return Err(JobError::invalid(
                    format!("objects[{i}].sha256"),
                    format!("expected 64 lower-case hex digits, got {:?}", o.sha256),
                ));
            }
        }
        if !req.state_json.is_empty() {
            serde_json::from_str::<serde_json::Value>(&req.state_json)
                .map_err(|e| JobError::invalid("state_json", format!("not JSON: {e}")))?;
        }
        let rank = self.member(&req.worker_id, req.generation)?;
        self.refuse_if_over()?;
        let g = self.current();
        let generation = g.number;
        let world_size = g.world_size();
        let schedule = g.schedule;
        if !schedule.is_checkpoint_step(req.step) {
            return Err(JobError::invalid(
                "step",
                format!(
                    "{} is not a checkpoint step of this run (checkpoints {})",
                    req.step,
                    schedule.describe_checkpoints()
                ),
            ));
        }
        let planned_to = self.workers[&req.worker_id].planned_to;
        if req.step > planned_to {
            return Err(JobError::precondition(format!(
                "step: rank {rank} acknowledged a checkpoint at step {} but has not been given \
                 the plan of its epoch (its plans reach step {planned_to}): a checkpoint is \
                 acknowledged after its step is trained",
                req.step
            )));
        }
        match (rank, req.state_json.is_empty()) {
            (0, true) => {
                return Err(JobError::invalid(
                    "state_json",
                    "missing; rank 0 sends the run state with its ack",
                ))
            }
            (r, false) if r != 0 => {
                return Err(JobError::invalid(
                    "state_json",
                    format!("only rank 0 sends the run state; this is rank {r}"),
                ))
            }
            _ => {}
        }
        if let Some(last) = &self.last_commit {
            if req.step == last.step && !self.pending.contains_key(&req.step) {
                // A retry after a lost reply.
                self.touch(&req.worker_id, now);
                return Ok(v1::CheckpointAckReply { committed: true });
            }
            if req.step < last.step {
                return Err(JobError::precondition(format!(
                    "step {} is older than the last committed checkpoint (step {})",
                    req.step, last.step
                )));
            }
        }
        let ack = RankAck {
            objects: req
                .objects
                .iter()
                .map(|o| CheckpointObject {
                    rank,
                    key: o.key.clone(),
                    size: o.size,
                    sha256: o.sha256.clone(),
                })
                .collect(),
            state_json: req.state_json.clone(),
        };
        if let Some(p) = self.pending.get(&req.step) {
            if p.epoch != req.epoch {
                let (other, _) = p.acks.iter().next().expect("a pending step has an ack");
                return Err(JobError::invalid(
                    "epoch",
                    format!(
                        "{} for step {}, but rank {other} said {}",
                        req.epoch, req.step, p.epoch
                    ),
                ));
            }
            if let Some(previous) = p.acks.get(&rank) {
                if *previous != ack {
                    return Err(JobError::precondition(format!(
                        "rank {rank} already acknowledged step {} with other objects",
                        req.step
                    )));
                }
                // A repeated ack: retries a failed commit, otherwise changes nothing.
                if matches!(p.status, CommitStatus::Failed(_)) {
                    let commit = self.commit_request(req.step);
                    self.pending.get_mut(&req.step).expect("pending").status =
                        CommitStatus::Committing;
                    self.effects.push(Effect::Commit(commit));
                }
                self.touch(&req.worker_id, now);
                return Ok(v1::CheckpointAckReply { committed: false });
            }
            for (r, a) in &p.acks {
                if let Some(dup) = ack
                    .objects
                    .iter()
                    .position(|o| a.objects.iter().any(|x| x.key == o.key))
                {
                    return Err(JobError::invalid(
                        format!("objects[{dup}].key"),
                        format!("{:?} is also listed by rank {r}", ack.objects[dup].key),
                    ));
                }
            }
        }

        let pending = self.pending.entry(req.step).or_insert(PendingCheckpoint {
            generation,
            epoch: req.epoch,
            acks: BTreeMap::new(),
            status: CommitStatus::Collecting,
        });
        pending.acks.insert(rank, ack);
        if pending.acks.len() as u32 == world_size && pending.status == CommitStatus::Collecting {
            pending.status = CommitStatus::Committing;
            let commit = self.commit_request(req.step);
            self.effects.push(Effect::Commit(commit));
        }
        self.touch(&req.worker_id, now);
        Ok(v1::CheckpointAckReply { committed: false })
    }

    fn commit_request(&self, step: u64) -> CommitRequest {
        let p = &self.pending[&step];
        let (facts, _) = self.facts.as_ref().expect("a generation has facts");
        CommitRequest {
            run_id: self.settings.run_id.clone(),
            generation: p.generation,
            step,
            epoch: p.epoch,
            world_size: p.acks.len() as u32,
            objects: p
                .acks
                .values()
                .flat_map(|a| a.objects.iter().cloned())
                .collect(),
            state_json: p
                .acks
                .get(&0)
                .map(|a| a.state_json.clone())
                .unwrap_or_default(),
            keep_last: facts.keep_last,
        }
    }

    /// The outcome of an [`Effect::Commit`]: `Ok(manifest key)` or `Err(why)`. A failed
    /// commit stays pending; an identical ack from any rank of it tries again. A committed
    /// checkpoint is where a smaller generation grows: with workers waiting to join, it
    /// ends there and the next forms with them.
    pub fn commit_done(&mut self, step: u64, outcome: Result<String, String>, now: Millis) {
        match outcome {
            Ok(manifest) => {
                // Every rank acknowledged it, so it is a good checkpoint even if its
                // generation ended while the manifest was being written.
                let spe = self.schedule.map_or(0, |s| s.steps_per_epoch);
                let epoch = match self.pending.remove(&step) {
                    Some(p) => p.epoch,
                    None => step.checked_div(spe).unwrap_or(0),
                };
                if self.last_commit.as_ref().is_none_or(|c| c.step < step) {
                    self.last_commit = Some(CommittedCheckpoint {
                        step,
                        epoch,
                        steps_per_epoch: spe,
                        manifest: manifest.clone(),
                        folder_step: 0,
                    });
                }
                // Older sets that never completed can never commit now.
                self.pending.retain(|s, _| *s > step);
                self.effects
                    .push(Effect::CheckpointCommitted { step, manifest });
                self.effects.push(Effect::Persist);
                self.grow_at_checkpoint(step, now);
            }
            Err(why) => {
                if let Some(p) = self.pending.get_mut(&step) {
                    p.status = CommitStatus::Failed(why);
                }
            }
        }
    }

    /// After the commit of `step`: ends a smaller generation that has workers waiting to
    /// join it, so that the next forms with them from this checkpoint.
    fn grow_at_checkpoint(&mut self, step: u64, now: Millis) {
        let Some(g) = self.generation.as_ref() else {
            return;
        };
        let newcomers = self
            .workers
            .values()
            .filter(|w| w.phase == WorkerPhase::Joined && !g.members.contains(&w.id))
            .count() as u32;
        let running = self.phase == JobPhase::Running && g.ended.is_none();
        let at_checkpoint = self.last_commit.as_ref().is_some_and(|c| c.step == step);
        if !running || newcomers == 0 || !at_checkpoint || step >= g.schedule.total_steps {
            return;
        }
        let (from, to) = (g.world_size(), g.world_size() + newcomers);
        let why = format!(
            "growing from {from} to {to} ranks at the checkpoint of step {step} ({newcomers} \
             worker(s) joined)"
        );
        self.end_generation(why, None, now);
    }

    pub fn finish(&mut self, req: &v1::FinishRequest, now: Millis) -> Result<v1::FinishReply> {
        let id = require_id(&req.worker_id)?.to_string();
        let worker = self
            .workers
            .get(&id)
            .ok_or_else(|| JobError::UnknownWorker(id.clone()))?;
        if req.generation == 0 {
            // Only a worker that failed before it had a rank may say so without a generation.
            if req.error.is_empty() || worker.rank.is_some() {
                return Err(JobError::invalid(
                    "generation",
                    "missing (generations start at 1; take it from JoinReply)",
                ));
            }
        }
        if self.phase.is_over() {
            let w = self.workers.get_mut(&id).expect("checked");
            w.last_seen = now;
            w.released = true;
            if !req.error.is_empty() {
                w.phase = WorkerPhase::Failed;
            } else if w.phase == WorkerPhase::Training {
                w.phase = WorkerPhase::Finished;
            }
            return Ok(v1::FinishReply {});
        }
        let rank = if req.generation == 0 {
            None
        } else {
            Some(self.member(&id, req.generation)?)
        };
        if req.error.is_empty() {
            let total = self.current().schedule.total_steps;
            if req.step != total {
                return Err(JobError::invalid(
                    "step",
                    format!(
                        "finished at step {} but the run has {total} steps; report an error \
                         instead if training stopped early",
                        req.step
                    ),
                ));
            }
        }

        let w = self.workers.get_mut(&id).expect("checked");
        w.last_seen = now;
        w.released = true;
        w.step = req.step;
        if !req.error.is_empty() {
            w.phase = WorkerPhase::Failed;
            let who = match rank {
                Some(r) => format!("rank {r} (worker {id} on {})", w.host),
                None => format!("worker {id} on {} (before it had a rank)", w.host),
            };
            let error = format!("{who} failed: {}", one_line(&req.error, MAX_ERROR_CHARS));
            self.end(JobPhase::Failed { error });
        } else {
            w.phase = WorkerPhase::Finished;
            let all_done = self.current().members.iter().all(|m| {
                self.workers
                    .get(m)
                    .is_some_and(|w| w.phase == WorkerPhase::Finished)
            });
            if all_done {
                self.end(JobPhase::Finished);
            }
        }
        Ok(v1::FinishReply {})
    }

    /// Fails the job from outside the protocol (a spawned worker died, the operator
    /// cancelled). Returns false when the job was already over.
    pub fn fail(&mut self, error: impl Into<String>) -> bool {
        if self.phase.is_over() {
            return false;
        }
        self.end(JobPhase::Failed {
            error: error.into(),
        });
        true
    }

    /// The coordinator's clock, called a few times a heartbeat deadline: loses the silent
    /// (see [`Job::expire_silent`] and [`Job::expire_waiting`]), and forms a smaller
    /// generation once its grace period is over.
    pub fn tick(&mut self, now: Millis) {
        self.expire_silent(now);
        self.expire_waiting(now);
        self.try_form(now);
    }

    /// Forgets workers that wait for a generation but have not been heard from for longer
    /// than the heartbeat deadline: those that joined (between generations, or to grow a
    /// smaller one; their Join long poll is answered again every heartbeat interval), and
    /// ranks of an ended generation that never joined again (they died with it, unseen
    /// when a survivor ended it). Their places are free again. Waiting costs no restart, and
    /// neither does losing a waiting worker. (A worker that registered and has not joined
    /// yet is not judged: it may be opening a large dataset.)
    pub fn expire_waiting(&mut self, now: Millis) -> bool {
        if self.phase.is_over() {
            return false;
        }
        let deadline = u64::from(self.settings.heartbeat_deadline_ms);
        let (silent, why): (Vec<String>, Vec<String>) = self
            .workers
            .values()
            .filter(|w| {
                w.phase == WorkerPhase::Joined || (w.phase == WorkerPhase::Registered && w.was_rank)
            })
            .filter_map(|w| {
                let quiet = now.saturating_sub(w.last_seen);
                (quiet > deadline).then(|| {
                    (
                        w.id.clone(),
                        format!(
                            "worker {} on {} (pid {}) waits for a generation and has been \
                             silent for {quiet} ms",
                            w.id, w.host, w.pid
                        ),
                    )
                })
            })
            .unzip();
        if silent.is_empty() {
            return false;
        }
        self.lose(&silent, why.join("; "), false, now);
        true
    }

    /// Ends the running generation if ranks have not been heard from (any call counts,
    /// heartbeats come every interval) for longer than the heartbeat deadline: they exited,
    /// hung (SIGSTOP, a stuck host) or are unreachable. They are lost (see [`Job::lose`]);
    /// the reason names each. Returns true when it did.
    pub fn expire_silent(&mut self, now: Millis) -> bool {
        if self.phase != JobPhase::Running {
            return false;
        }
        let Some(generation) = &self.generation else {
            return false;
        };
        let deadline = u64::from(self.settings.heartbeat_deadline_ms);
        let (silent, why): (Vec<String>, Vec<String>) = generation
            .members
            .iter()
            .enumerate()
            .filter_map(|(rank, id)| {
                let w = self.workers.get(id)?;
                let quiet = now.saturating_sub(w.last_seen);
                (w.phase == WorkerPhase::Training && quiet > deadline).then(|| {
                    (
                        id.clone(),
                        format!(
                            "rank {rank} (worker {id} on {}, pid {}) silent for {quiet} ms",
                            w.host, w.pid
                        ),
                    )
                })
            })
            .unzip();
        if silent.is_empty() {
            return false;
        }
        self.lose(
            &silent,
            format!(
                "{}: no heartbeat within the {deadline} ms deadline (the worker exited, hung or \
                 is unreachable)",
                why.join("; ")
            ),
            true,
            now,
        );
        true
    }

    /// A local worker process of `slot` exited with `how` before the job ended: its worker
    /// (if it had registered) is lost. Returns whether a replacement should be started in
    /// the slot (false once the job is over, the restart budget spent included).
    pub fn local_worker_exited(&mut self, slot: u32, how: &str, now: Millis) -> bool {
        if self.phase.is_over() {
            return false;
        }
        let lost: Vec<String> = self
            .workers
            .values()
            .filter(|w| w.slot == Some(slot))
            .map(|w| w.id.clone())
            .collect();
        // The death of a rank that already ended its generation (a survivor noticed first)
        // is the same failure: it costs no second restart.
        let already_counted = self.phase == JobPhase::Waiting
            && self
                .generation
                .as_ref()
                .is_some_and(|g| g.ended.is_some() && lost.iter().all(|id| g.members.contains(id)))
            && !lost.is_empty();
        let who = match lost.first().and_then(|id| self.workers.get(id)) {
            Some(w) => match w.rank {
                Some(rank) => format!("rank {rank} (worker {}, local slot {slot})", w.id),
                None => format!("worker {} (local slot {slot})", w.id),
            },
            None => format!("the local worker of slot {slot}, before it registered,"),
        };
        self.lose(&lost, format!("{who} {how}"), !already_counted, now);
        !self.phase.is_over()
    }

    /// Forgets the workers `lost` (their places become free for replacements) and, if
    /// `spend`, spends one restart: ends the running generation (its other members must join
    /// again, and the next generation forms from the last committed checkpoint), or, between
    /// generations, counts a worker that died before it could join. Past `max_restarts` the
    /// job fails with `why`.
    fn lose(&mut self, lost: &[String], why: String, spend: bool, now: Millis) {
        for id in lost {
            if let Some(w) = self.workers.remove(id) {
                self.effects.push(Effect::WorkerLost {
                    worker_id: w.id,
                    slot: w.slot,
                    pid: w.pid,
                    host: w.host,
                    reason: why.clone(),
                });
            }
        }
        if self.phase.is_over() || !spend {
            return;
        }
        if self.restarts >= self.settings.max_restarts {
            self.fail(format!(
                "{why}; the restart budget is spent ({} of max_restarts = {} used)",
                self.restarts, self.settings.max_restarts
            ));
            return;
        }
        self.restarts += 1;
        self.end_generation(why, Some(self.restarts), now);
    }

    /// Ends the running generation (if one runs): its members must join again, and the next
    /// generation forms from the last committed checkpoint; `restart` is the restart this
    /// spends (None: none, the generation ends to grow).
    fn end_generation(&mut self, why: String, restart: Option<u32>, now: Millis) {
        let ended = match self.generation.as_mut() {
            Some(g) if g.ended.is_none() => {
                g.ended = Some(why.clone());
                for id in &g.members {
                    if let Some(w) = self.workers.get_mut(id) {
                        w.rank = None;
                        w.phase = WorkerPhase::Registered;
                    }
                }
                g.number
            }
            // Between generations already (or before the first): nothing more to end.
            Some(g) => g.number,
            None => 0,
        };
        // Unacknowledged checkpoints of the ended generation can never commit.
        self.pending.clear();
        self.progress = None;
        self.phase = JobPhase::Waiting;
        if ended > 0 {
            // Newcomers that waited for this end join the next generation as they are.
            self.reform = Some(Reform {
                not_before: now.saturating_add(self.settings.elastic_grace_ms),
                when_all_joined: restart.is_none(),
            });
        }
        self.effects.push(Effect::GenerationEnded {
            generation: ended,
            reason: why,
            restart,
            max_restarts: self.settings.max_restarts,
        });
        self.effects.push(Effect::Persist);
    }

    fn end(&mut self, phase: JobPhase) {
        self.phase = phase.clone();
        self.effects.push(Effect::JobEnded(phase));
        self.effects.push(Effect::Persist);
    }

    fn refuse_if_over(&self) -> Result<()> {
        if self.phase.is_over() {
            Err(JobError::JobOver(self.phase.describe()))
        } else {
            Ok(())
        }
    }

    /// The number of the last generation if it has ended (the job is between generations).
    fn ended_generation(&self) -> Option<u64> {
        self.generation
            .as_ref()
            .filter(|g| g.ended.is_some())
            .map(|g| g.number)
    }

    fn touch(&mut self, worker_id: &str, now: Millis) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.last_seen = now;
        }
    }

    /// The job as operators see it.
    pub fn status(&self, now: Millis) -> v1::JobStatus {
        let generation = self.generation.as_ref();
        let rank0 = generation
            .and_then(|g| g.members.first())
            .and_then(|id| self.workers.get(id));
        // Before a generation forms, a resumed job is at its checkpoint.
        let step = rank0.map_or_else(
            || self.last_commit.as_ref().map_or(0, |c| c.step),
            |w| w.step,
        );
        let mut workers: Vec<&Worker> = self.workers.values().collect();
        workers.sort_by_key(|w| (w.rank.unwrap_or(u32::MAX), w.seq));
        let schedule = generation.map(|g| g.schedule).or(self.schedule);
        v1::JobStatus {
            job_id: self.settings.job_id.clone(),
            run_id: self.settings.run_id.clone(),
            state: self.phase.to_proto() as i32,
            generation: generation.map_or(0, |g| g.number),
            world_size: generation.map_or(self.settings.world_size, |g| g.world_size()),
            step,
            total_steps: schedule.map_or(0, |s| s.total_steps),
            epoch: match (&self.progress, schedule) {
                (Some(p), _) => p.epoch,
                (None, Some(s)) => step / s.steps_per_epoch,
                (None, None) => 0,
            },
            loss: self.progress.as_ref().map_or(0.0, |p| p.loss),
            samples_per_s: self.progress.as_ref().map_or(0.0, |p| p.samples_per_s),
            last_checkpoint_step: self.last_commit.as_ref().map_or(0, |c| c.step),
            workers: workers
                .into_iter()
                .map(|w| v1::WorkerStatus {
                    worker_id: w.id.clone(),
                    host: w.host.clone(),
                    pid: w.pid,
                    device: w.device.clone(),
                    rank: w.rank.map_or(-1, |r| r as i32),
                    step: w.step,
                    last_seen_ms: now.saturating_sub(w.last_seen),
                    state: w.phase.name().into(),
                })
                .collect(),
            error: match &self.phase {
                JobPhase::Failed { error } => error.clone(),
                _ => String::new(),
            },
        }
    }
}

fn require_id(worker_id: &str) -> Result<&str> {
    if worker_id.is_empty() {
        Err(JobError::invalid("worker_id", "missing"))
    } else {
        Ok(worker_id)
    }
}

fn first_difference(theirs: &Facts, ours: &Facts) -> Option<(&'static str, u64, u64)> {
    theirs
        .fields()
        .into_iter()
        .zip(ours.fields())
        .find(|((_, a), (_, b))| a != b)
        .map(|((field, a), (_, b))| (field, a, b))
}

/// A worker's host name as it goes into logs and status lines: a DNS name or an address,
/// so that no newline or escape sequence from a client can forge or garble a log line.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("missing".into());
    }
    if host.len() > lgaf_proto::MAX_HOST_NAME || !host.chars().all(lgaf_proto::is_host_name_char) {
        return Err(format!(
            "{host:?} is not a host name (at most {} of A-Z a-z 0-9 - . _ :)",
            lgaf_proto::MAX_HOST_NAME
        ));
    }
    Ok(())
}

/// The longest error text of a Finish kept in the job's state and log (characters).
const MAX_ERROR_CHARS: usize = 4096;

/// `text` on one line, for logs and status lines: control characters (newlines included)
/// escaped, so a client's text cannot start a forged log line; cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let mut line = String::with_capacity(text.len().min(max));
    for (i, c) in text.chars().enumerate() {
        if i == max {
            line.push_str(" [...]");
            break;
        }
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

/// A progress report's numbers are finite: a NaN loss or an infinite rate is a broken or
/// hostile worker, never something to show on a dashboard.
fn check_progress_numbers(req: &v1::ProgressReport) -> Result<()> {
    // (field, value, whether it may be negative)
    let fields = [
        ("loss", req.loss, true),
        ("lr", req.lr, false),
        ("samples_per_s", req.samples_per_s, false),
        ("data_wait_ms", req.data_wait_ms, false),
        ("gamma_local", req.gamma_local, false),
        ("gamma_global", req.gamma_global, false),
    ];
    for (field, value, signed) in fields {
        if !value.is_finite() || (!signed && value < 0.0) {
            let expected = if signed {
                "a finite number"
            } else {
                "a finite number, 0 or more"
            };
            return Err(JobError::invalid(
                field,
                format!("{value}: expected {expected}"),
            ));
        }
    }
    Ok(())
}

/// Object keys are relative paths inside the step's folder: no absolute paths, no `..`,
/// nothing a store could read as a different folder.
fn check_object_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("missing".into());
    }
    if key.len() > 1024 {
        return Err(format!("{} bytes; keys have at most 1024", key.len()));
    }
    if key.starts_with('/') || key.contains('\\') || key.chars().any(|c| c.is_ascii_control()) {
        return Err(format!(
            "{key:?} must be a relative path with '/' separators and no control characters"
        ));
    }
    if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!("{key:?} has an empty, '.' or '..' component"));
    }
    if key == "MANIFEST.json" {
        return Err("MANIFEST.json is the coordinator's".into());
    }
    Ok(())
}

#[cfg(test)]
#[path = "job_tests.rs"]
mod tests;
