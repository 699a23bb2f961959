//! How the job hears from its ranks while they train — heartbeats and rank 0's progress
//! reports, both of which keep a rank alive and answer CONTINUE, REJOIN or STOP — and the
//! [`v1::JobStatus`] operators see.

use lgaf_proto::v1;

use super::membership::require_id;
use super::{Effect, Job, JobError, JobPhase, Millis, Progress, Result, Worker, WorkerPhase};

impl Job {
    pub fn heartbeat(
        &mut self,
        req: &v1::HeartbeatRequest,
        now: Millis,
    ) -> Result<v1::HeartbeatReply> {
        let action = self.liveness(&req.worker_id, req.generation, req.step, now)?;
        let (job_state, job_error) = match &self.phase {
            JobPhase::Failed { error } => (v1::JobState::Failed, error.clone()),
            JobPhase::Cancelled { reason } => (v1::JobState::Cancelled, reason.clone()),
            phase => (phase.to_proto(), String::new()),
        };
        Ok(v1::HeartbeatReply {
            action: action as i32,
            generation: self.generation.as_ref().map_or(0, |g| g.number),
            job_state: job_state as i32,
            job_error,
        })
    }

    /// A heartbeat that also carries the rank's training numbers; rank 0's are kept for
    /// status and logged.
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

    /// The figures of [`Job::status`] the job's gauges show, without building the status
    /// of every worker: the service records them after every event, and at thousands of
    /// workers a full status per Register made forming a generation quadratic.
    pub fn gauges(&self) -> JobGauges {
        let generation = self.generation.as_ref();
        let schedule = generation.map(|g| g.schedule).or(self.schedule);
        JobGauges {
            workers: self.registered_count(),
            generation: generation.map_or(0, |g| g.number),
            total_steps: schedule.map_or(0, |s| s.total_steps),
            last_checkpoint_step: self.last_commit.as_ref().map_or(0, |c| c.step),
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
                    device: w.device.to_string(),
                    rank: w.rank.map_or(-1, |r| r as i32),
                    step: w.step,
                    last_seen_ms: now.saturating_sub(w.last_seen),
                    state: w.phase.name().into(),
                    slot: w.slot,
                })
                .collect(),
            error: match &self.phase {
                JobPhase::Failed { error } => error.clone(),
                JobPhase::Cancelled { reason } => reason.clone(),
                _ => String::new(),
            },
        }
    }
}

/// What the job's gauges show: the same figures as [`v1::JobStatus`]'s `workers.len()`,
/// `generation`, `total_steps` and `last_checkpoint_step`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobGauges {
    /// Registered and not lost.
    pub workers: u32,
    pub generation: u64,
    pub total_steps: u64,
    pub last_checkpoint_step: u64,
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
