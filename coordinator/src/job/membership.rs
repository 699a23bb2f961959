//! Who is in the job: the [`Worker`]s that registered (their host, device and collective
//! address), Register and Join, and the membership check every rank's request passes
//! through ([`Job::member`]). Forming and ending generations is `generations.rs`.

use std::fmt;

use lgaf_proto::{v1, Device};
use serde::{Deserialize, Serialize};

use super::{
    Effect, Facts, Generation, Job, JobError, JobPhase, LiveOffer, LiveSource, LossCost, Millis,
    Result, Schedule,
};

/// The collective the ranks of a generation use, derived from the workers' devices: all
/// `cuda:N` -> NCCL, all `cpu` -> the CPU (TCP ring) backend. A job never mixes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    Cpu,
    Nccl,
}

impl Backend {
    pub(super) fn of(device: Device) -> Backend {
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

/// Where a worker is in the job's life.
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

/// A registered worker (one process on one device), as the job knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub id: String,
    /// Registration order (1, 2, ...): the rank order of workers without a slot.
    pub seq: u64,
    pub host: String,
    pub pid: u32,
    /// Parsed at Register; saved as the protocol spells it (`"cpu"`, `"cuda:N"`).
    #[serde(with = "device_as_text")]
    pub device: Device,
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
    /// What it holds in memory from the generation it left, as its last Join said.
    #[serde(default)]
    pub offer: Option<LiveOffer>,
}

/// [`Worker::device`] in snapshots: the string of the protocol, as before it was parsed.
mod device_as_text {
    use lgaf_proto::Device;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(device: &Device, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(device)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Device, D::Error> {
        let text = String::deserialize(deserializer)?;
        Device::parse(&text).ok_or_else(|| {
            D::Error::custom(format!(
                "device: expected \"cpu\" or \"cuda:N\", got {text:?}"
            ))
        })
    }
}

/// A Register request that passed every check: what adding its worker needs.
struct Admission {
    device: Device,
    /// A rank of the ended generation that has not joined again and whose slot the new
    /// worker takes: it is forgotten first.
    superseded: Option<String>,
}

impl Job {
    /// Admits a worker: checks the request against the job (the same job, a free place and
    /// slot, a device that goes with the others') and gives it a worker id. Nothing changes
    /// when it is refused.
    pub fn register(
        &mut self,
        req: &v1::RegisterRequest,
        now: Millis,
    ) -> Result<v1::RegisterReply> {
        let admission = self.admit(req)?;
        Ok(self.add_worker(req, admission, now))
    }

    /// Every check of [`Job::register`], in the order the protocol refuses: the request's
    /// own fields, then the job's state, then the other workers.
    fn admit(&self, req: &v1::RegisterRequest) -> Result<Admission> {
        if !req.job_id.is_empty() && req.job_id != self.settings.job_id {
            return Err(JobError::precondition(format!(
                "job_id: this coordinator runs job {:?}, the worker asked for {:?}",
                self.settings.job_id, req.job_id
            )));
        }
        check_host(&req.host)?;
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
        self.refuse_if_over()?;
        if let Some(g) = self.generation.as_ref().filter(|g| g.ended.is_none()) {
            if g.world_size() >= self.settings.world_size {
                return Err(JobError::NoPlace(format!(
                    "the job is already running generation {} with {} workers; there is no \
                     place for another worker until it ends",
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
            return Err(JobError::NoPlace(format!(
                "the job wants {} workers and {} have registered ({})",
                self.settings.world_size,
                ids.len(),
                ids.join(", ")
            )));
        }
        for w in others {
            if Backend::of(w.device) != backend {
                return Err(JobError::precondition(format!(
                    "device: this worker's {} does not go with worker {}'s {}; a job runs all \
                     its workers on GPUs (NCCL) or all on CPUs (the CPU collective)",
                    req.device, w.id, w.device
                )));
            }
            if backend == Backend::Nccl && w.host == req.host && w.device == device {
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
        Ok(Admission { device, superseded })
    }

    /// Adds the worker of an admitted request (forgetting the one it supersedes) and
    /// answers it with its id and the job's settings.
    fn add_worker(
        &mut self,
        req: &v1::RegisterRequest,
        admission: Admission,
        now: Millis,
    ) -> v1::RegisterReply {
        let Admission { device, superseded } = admission;
        if let Some(old) = superseded {
            let why = format!(
                "worker {old}, a rank of the ended generation that has not joined again, is \
                 replaced by a new worker in its slot {}",
                req.slot.unwrap_or_default()
            );
            self.lose(&[old], why, LossCost::NoRestart, now);
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
                device,
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
                offer: None,
            },
        );
        self.effects.push(Effect::WorkerRegistered {
            worker_id: id.clone(),
            host: req.host.clone(),
            device,
            slot: req.slot,
            registered: self.registered_count(),
            wanted: self.settings.world_size,
        });
        v1::RegisterReply {
            worker_id: id,
            job_id: self.settings.job_id.clone(),
            run_id: self.settings.run_id.clone(),
            config_toml: self.settings.config_toml.clone(),
            store_url: self.settings.store_url.clone(),
            heartbeat_interval_ms: self.settings.heartbeat_interval_ms,
            heartbeat_deadline_ms: self.settings.heartbeat_deadline_ms,
            max_steps: self.settings.max_steps,
        }
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
        let newest = self.generation.as_ref().map_or(0, |g| g.number);
        // An offer that cannot be a rank's state here (say it names a generation this job
        // has not had) costs the worker nothing but the offer: it joins as a newcomer.
        let offer = match req
            .live
            .as_ref()
            .map(|o| LiveOffer::from_request(o, newest))
        {
            Some(Err(e)) => {
                self.effects.push(Effect::OfferIgnored {
                    worker_id: id.to_string(),
                    reason: e.to_string(),
                });
                None
            }
            Some(Ok(offer)) => Some(offer),
            None => None,
        };
        let worker = self
            .workers
            .get(id)
            .ok_or_else(|| JobError::UnknownWorker(id.to_string()))?;
        self.refuse_if_over()?;

        if let Some((ours, first)) = &self.facts {
            if let Some((field, theirs, ours)) = facts.first_difference(ours) {
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
                self.lose(&[], why, LossCost::SpendsRestart, now);
                self.refuse_if_over()?;
            }
        }
        let worker = self.workers.get_mut(id).expect("checked above");
        worker.last_seen = now;
        if worker.phase == WorkerPhase::Registered {
            worker.phase = WorkerPhase::Joined;
        }
        if worker.phase == WorkerPhase::Joined {
            // Its latest word on what it holds (each long poll repeats it).
            worker.offer = offer;
        }
        self.try_form(now);
        Ok(self.assignment(id))
    }

    /// The worker's place in the current generation, once it has one.
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
            live: g.live.as_ref().map(LiveSource::to_proto),
            total_steps: g.schedule.total_steps,
            steps_per_epoch: g.schedule.steps_per_epoch,
            collective_timeout_ms: self.settings.collective_timeout_ms,
            data_world_size: g.schedule.world_size,
        })
    }

    /// Checks that `worker_id` is a rank of generation `generation` (the current one) and
    /// returns its rank. Refusals in protocol order: field, NOT_FOUND, ABORTED.
    pub(super) fn member(&self, worker_id: &str, generation: u64) -> Result<u32> {
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

    /// The current generation, once [`Job::member`] has checked there is one.
    pub(super) fn current(&self) -> &Generation {
        self.generation.as_ref().expect("member() checked it")
    }

    /// Notes that the worker was heard from.
    pub(super) fn touch(&mut self, worker_id: &str, now: Millis) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.last_seen = now;
        }
    }
}

/// The request's worker id, refused when empty.
pub(super) fn require_id(worker_id: &str) -> Result<&str> {
    if worker_id.is_empty() {
        Err(JobError::invalid("worker_id", "missing"))
    } else {
        Ok(worker_id)
    }
}

/// A worker's host name as it goes into logs and status lines: a DNS name or an address,
/// so that no newline or escape sequence from a client can forge or garble a log line.
fn check_host(host: &str) -> Result<()> {
    if host.is_empty() {
        return Err(JobError::invalid("host", "missing"));
    }
    if host.len() > lgaf_proto::MAX_HOST_NAME || !host.chars().all(lgaf_proto::is_host_name_char) {
        return Err(JobError::invalid(
            "host",
            format!(
                "{host:?} is not a host name (at most {} of A-Z a-z 0-9 - . _ :)",
                lgaf_proto::MAX_HOST_NAME
            ),
        ));
    }
    Ok(())
}
