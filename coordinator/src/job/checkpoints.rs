//! Checkpoints: every rank acknowledges its part of a checkpoint step (the objects it
//! uploaded); once all have, the job asks for the manifest to be written
//! ([`Effect::Commit`] with a [`CommitRequest`]), and the outcome comes back through
//! [`Job::commit_done`]. A committed checkpoint is where the next generation resumes and
//! where a smaller generation grows.

use std::collections::{BTreeMap, BTreeSet};

use lgaf_proto::v1;
use serde::{Deserialize, Serialize};

use super::{Effect, GenerationEnd, Job, JobError, JobPhase, Millis, Result, WorkerPhase};

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

/// Why the manifest of an [`Effect::Commit`] was not written: the store's error, in words.
/// The checkpoint stays pending until an ack retries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(transparent)]
#[error("{0}")]
pub struct CommitError(pub String);

/// One rank's part of a pending checkpoint.
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
    Failed(CommitError),
}

/// A checkpoint step some ranks of the generation have acknowledged, not committed yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PendingCheckpoint {
    generation: u64,
    epoch: u64,
    /// By rank.
    acks: BTreeMap<u32, RankAck>,
    status: CommitStatus,
}

/// What an acknowledgement that passed every check asks of the job.
enum CheckedAck {
    /// The step is the last committed checkpoint: a retry after a lost reply.
    AlreadyCommitted,
    /// The step is at or before a checkpoint that an earlier generation committed after
    /// this one formed (its commit was still being written when it ended): this generation
    /// retrains it from an older checkpoint, and the ack needs nothing more.
    Superseded,
    /// The rank acknowledged the step with these very objects before: retries a failed
    /// commit, otherwise changes nothing.
    Repeated,
    /// The rank's first ack of the step.
    New {
        rank: u32,
        ack: RankAck,
        generation: u64,
        world_size: u32,
    },
}

impl Job {
    /// Records one rank's part of the checkpoint at `req.step`; once every rank of the
    /// generation has acknowledged it, queues [`Effect::Commit`]. The reply's `committed` is
    /// true here only for a repeated ack of an already committed step: the service sets it
    /// for the ack whose commit it has just written.
    pub fn checkpoint_ack(
        &mut self,
        req: &v1::CheckpointAckRequest,
        now: Millis,
    ) -> Result<v1::CheckpointAckReply> {
        let checked = self.check_ack(req)?;
        let committed = self.record_ack(req, checked);
        self.touch(&req.worker_id, now);
        Ok(v1::CheckpointAckReply { committed })
    }

    /// Every check of [`Job::checkpoint_ack`], in the order the protocol refuses: the
    /// request's own fields, membership, the schedule and the rank's plans, then the acks
    /// of the step so far.
    fn check_ack(&self, req: &v1::CheckpointAckRequest) -> Result<CheckedAck> {
        if req.step == 0 {
            return Err(JobError::invalid(
                "step",
                "missing (checkpoint steps start at 1)",
            ));
        }
        let mut keys = BTreeSet::new();
        for (i, o) in req.objects.iter().enumerate() {
            check_object_key(i, &o.key)?;
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
        // Typed, so a state the workers could not resume from is refused here, naming its
        // field, not found when a later generation loads the checkpoint.
        if !req.state_json.is_empty() {
            lgaf_store::RunState::from_json(&req.state_json)
                .map_err(|e| JobError::invalid("state_json", e))?;
        }
        let rank = self.member(&req.worker_id, req.generation)?;
        self.refuse_if_over()?;
        let g = self.current();
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
                return Ok(CheckedAck::AlreadyCommitted);
            }
            if req.step < last.step && g.start_step < last.step {
                return Ok(CheckedAck::Superseded);
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
                return Ok(CheckedAck::Repeated);
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
        Ok(CheckedAck::New {
            rank,
            ack,
            generation: g.number,
            world_size: g.world_size(),
        })
    }

    /// Applies a checked ack: adds the rank's part and queues the commit once every rank's
    /// is there (or again, for a repeated ack of a failed commit). Returns whether the step
    /// is committed already.
    fn record_ack(&mut self, req: &v1::CheckpointAckRequest, checked: CheckedAck) -> bool {
        match checked {
            CheckedAck::AlreadyCommitted => true,
            CheckedAck::Superseded => false,
            CheckedAck::Repeated => {
                let p = self.pending.get_mut(&req.step).expect("checked: pending");
                if matches!(p.status, CommitStatus::Failed(_)) {
                    p.status = CommitStatus::Committing;
                    let commit = self.commit_request(req.step);
                    self.effects.push(Effect::Commit(commit));
                }
                false
            }
            CheckedAck::New {
                rank,
                ack,
                generation,
                world_size,
            } => {
                let pending = self.pending.entry(req.step).or_insert(PendingCheckpoint {
                    generation,
                    epoch: req.epoch,
                    acks: BTreeMap::new(),
                    status: CommitStatus::Collecting,
                });
                pending.acks.insert(rank, ack);
                if pending.acks.len() as u32 == world_size
                    && pending.status == CommitStatus::Collecting
                {
                    pending.status = CommitStatus::Committing;
                    let commit = self.commit_request(req.step);
                    self.effects.push(Effect::Commit(commit));
                }
                false
            }
        }
    }

    /// The manifest to write for the pending checkpoint at `step`.
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

    /// The outcome of an [`Effect::Commit`]: `Ok(manifest key)` or why it failed. A failed
    /// commit stays pending; an identical ack from any rank of it tries again. A committed
    /// checkpoint is where a smaller generation grows: with workers waiting to join, it
    /// ends there and the next forms with them.
    pub fn commit_done(
        &mut self,
        step: u64,
        outcome: std::result::Result<String, CommitError>,
        now: Millis,
    ) {
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
        self.end_generation(GenerationEnd::ToGrow(why), now);
    }
}

/// Object keys are relative paths inside the step's folder: no absolute paths, no `..`,
/// nothing a store could read as a different folder. `index` is the object's in the ack.
fn check_object_key(index: usize, key: &str) -> Result<()> {
    let refuse = |message: String| Err(JobError::invalid(format!("objects[{index}].key"), message));
    if key.is_empty() {
        return refuse("missing".into());
    }
    if key.len() > 1024 {
        return refuse(format!("{} bytes; keys have at most 1024", key.len()));
    }
    if key.starts_with('/') || key.contains('\\') || key.chars().any(|c| c.is_ascii_control()) {
        return refuse(format!(
            "{key:?} must be a relative path with '/' separators and no control characters"
        ));
    }
    if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return refuse(format!("{key:?} has an empty, '.' or '..' component"));
    }
    if key == "MANIFEST.json" {
        return refuse("MANIFEST.json is the coordinator's".into());
    }
    Ok(())
}
