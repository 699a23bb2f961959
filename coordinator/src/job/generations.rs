//! Generations: forming one from the workers that joined ([`Job::try_form`]), losing workers
//! (silent, exited, or out of their failed collective group) and ending the running
//! generation, and the clock ([`Job::tick`]) that notices silence and lets an elastic job
//! continue smaller. [`LossCost`] says whether a loss spends a restart; [`GenerationEnd`]
//! says why a generation ended.

use serde::{Deserialize, Deserializer, Serialize};

use super::live::ResumeFrom;
use super::{Backend, Effect, Job, JobPhase, LiveSource, Millis, Schedule, Worker, WorkerPhase};

/// One formation of ranks that train together, from a committed checkpoint, from scratch,
/// or from the survivors of the one before (live recovery), until the job ends or a loss
/// or growth ends it.
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
    /// The committed checkpoint the generation starts from (0: from scratch, or from
    /// `live`): the step its folder is named by, which the workers load.
    pub resume_step: u64,
    /// The first step this generation trains after: `resume_step` mapped to this world
    /// size's steps per epoch (`lgaf_proto::resumed_step`); equal on the same world size.
    pub start_step: u64,
    pub resume_manifest: String,
    /// Set when it starts from the survivors' state at `start_step` instead.
    #[serde(default)]
    pub live: Option<LiveSource>,
    pub formed_at: Millis,
    /// Why it ended, once it has: its members must join the next one.
    #[serde(default, deserialize_with = "end_or_reason")]
    pub ended: Option<GenerationEnd>,
}

impl Generation {
    pub fn world_size(&self) -> u32 {
        self.members.len() as u32
    }
}

/// Why a generation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerationEnd {
    /// Ranks were lost (silent past the heartbeat deadline, their process exited, or a rank
    /// left its failed collective group): the end spent one of the job's restarts.
    RanksLost(String),
    /// A smaller (elastic) generation ended at a committed checkpoint so that the workers
    /// waiting to join make the next one larger; no restart was spent.
    ToGrow(String),
}

impl GenerationEnd {
    /// The reason in words, for logs.
    pub fn reason(&self) -> &str {
        match self {
            GenerationEnd::RanksLost(reason) | GenerationEnd::ToGrow(reason) => reason,
        }
    }

    /// An end saved by a coordinator that kept only the reason: growth is the one
    /// [`Job::grow_at_checkpoint`] words as "growing from ...", every other end lost ranks.
    fn from_reason(reason: String) -> GenerationEnd {
        if reason.starts_with("growing from ") {
            GenerationEnd::ToGrow(reason)
        } else {
            GenerationEnd::RanksLost(reason)
        }
    }
}

/// [`Generation::ended`] as saved now, or as the reason alone (snapshots written before
/// [`GenerationEnd`]).
fn end_or_reason<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<GenerationEnd>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Saved {
        End(GenerationEnd),
        Reason(String),
    }
    Ok(match Option::<Saved>::deserialize(deserializer)? {
        None => None,
        Some(Saved::End(end)) => Some(end),
        Some(Saved::Reason(reason)) => Some(GenerationEnd::from_reason(reason)),
    })
}

/// What losing workers costs the job (see [`Job::lose`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LossCost {
    /// One of the job's restarts: the running generation ends (between generations, a
    /// worker that died before it could join is counted); past `max_restarts` the job fails.
    SpendsRestart,
    /// Nothing: the workers only waited, or their failure was counted already.
    NoRestart,
}

/// When a generation that ended may be followed by a smaller one (elastic jobs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Reform {
    /// The grace period's end: from then on, with whichever workers have joined.
    not_before: Millis,
    /// Also as soon as every registered worker has joined (after an end for growth: the
    /// ranks of the ended generation and the newcomers are all there is to wait for).
    when_all_joined: bool,
}

impl Job {
    /// Forms the next generation once `world_size` workers have joined, or, in an elastic
    /// job, with the workers there are once [`Reform`] allows it.
    pub(super) fn try_form(&mut self, now: Millis) {
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
        let backend = Backend::of(members[0].device);
        let peers = match backend {
            Backend::Cpu => members.iter().map(|w| w.collective_addr.clone()).collect(),
            Backend::Nccl => Vec::new(),
        };
        let ids: Vec<String> = members.iter().map(|w| w.id.clone()).collect();
        let world_size = ids.len() as u32;
        let number = self.generation.as_ref().map_or(1, |g| g.number + 1);
        let (live, not_live) = match self.resume_from(&members) {
            ResumeFrom::Live(live) => (Some(live), None),
            ResumeFrom::Checkpoint { not_live } => (None, not_live),
        };
        let (resume_step, resume_manifest, start_step) = match (&live, &self.last_commit) {
            (Some(live), _) => (0, String::new(), live.step),
            (None, Some(c)) => (
                c.stored_step(),
                c.manifest.clone(),
                lgaf_proto::resumed_step(c.step, c.steps_per_epoch, schedule.steps_per_epoch),
            ),
            (None, None) => (0, String::new(), 0),
        };
        if live.is_none() {
            self.lineage = number;
            if let Some(c) = self.last_commit.as_mut() {
                // From here on steps count in this world size's numbering; the checkpoint
                // itself is still loaded from its folder (`resume_step`).
                c.folder_step = resume_step;
                c.step = start_step;
                c.steps_per_epoch = schedule.steps_per_epoch;
            }
        }
        for w in self.workers.values_mut() {
            // Taken or passed over: either way the next generation needs new ones.
            w.offer = None;
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
            live: live.clone(),
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
            live,
            not_live,
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
        self.lose(&silent, why.join("; "), LossCost::NoRestart, now);
        true
    }

    /// Ends the running generation if ranks have not been heard from (any call counts,
    /// heartbeats come every interval) for longer than the heartbeat deadline: they exited,
    /// hung (SIGSTOP, a stuck host) or are unreachable. They are lost: forgotten, at the
    /// cost of a restart; the reason names each. Returns true when it did.
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
            LossCost::SpendsRestart,
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
        let cost = if already_counted {
            LossCost::NoRestart
        } else {
            LossCost::SpendsRestart
        };
        self.lose(&lost, format!("{who} {how}"), cost, now);
        !self.phase.is_over()
    }

    /// Forgets the workers `lost` (their places become free for replacements) and pays
    /// `cost`: a restart ends the running generation (its other members must join again,
    /// and the next generation forms from the last committed checkpoint), or, between
    /// generations, counts a worker that died before it could join. Past `max_restarts` the
    /// job fails with `why`.
    pub(super) fn lose(&mut self, lost: &[String], why: String, cost: LossCost, now: Millis) {
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
        if self.phase.is_over() || cost == LossCost::NoRestart {
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
        self.end_generation(GenerationEnd::RanksLost(why), now);
    }

    /// Ends the running generation (if one runs): its members must join again, and the next
    /// generation forms from the last committed checkpoint. An end for lost ranks reports
    /// the restart just spent ([`Job::lose`] counts it first).
    pub(super) fn end_generation(&mut self, end: GenerationEnd, now: Millis) {
        let restart = match end {
            GenerationEnd::RanksLost(_) => Some(self.restarts),
            GenerationEnd::ToGrow(_) => None,
        };
        let reason = end.reason().to_string();
        self.retire_failed_live_source();
        let ended = match self.generation.as_mut() {
            Some(g) if g.ended.is_none() => {
                g.ended = Some(end);
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
            reason,
            restart,
            max_restarts: self.settings.max_restarts,
        });
        self.effects.push(Effect::Persist);
    }

    /// The number of the last generation if it has ended (the job is between generations).
    pub(super) fn ended_generation(&self) -> Option<u64> {
        self.generation
            .as_ref()
            .filter(|g| g.ended.is_some())
            .map(|g| g.number)
    }
}
