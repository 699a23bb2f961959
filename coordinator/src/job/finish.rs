//! How the job ends: ranks report Finish (done at the final step, or failed with an
//! error), or something outside the protocol fails it ([`Job::fail`]). Once over, every
//! worker is told STOP.

use lgaf_proto::v1;

use super::generations::LossCost;
use super::membership::require_id;
use super::{Effect, Job, JobError, JobPhase, Millis, Result, WorkerPhase};

/// The longest error text of a Finish kept in the job's state and log (characters).
const MAX_ERROR_CHARS: usize = 4096;

impl Job {
    /// A rank is done: at the final step (the job finishes when every rank is), or failed
    /// with `req.error`: the job fails, unless the error is `retryable`, when the worker is
    /// lost as if it had died. A worker that failed before it had a rank says so without a
    /// generation.
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
        let who = match rank {
            Some(r) => format!("rank {r} (worker {id} on {})", w.host),
            None => format!("worker {id} on {} (before it had a rank)", w.host),
        };
        let error = one_line(&req.error, MAX_ERROR_CHARS);
        if !req.error.is_empty() && req.retryable {
            // As if it had died: its generation ends (a restart, for a rank), and a worker
            // started again in its slot takes its place.
            let why = format!("{who} stopped and may be started again: {error}");
            let cost = if rank.is_some() {
                LossCost::SpendsRestart
            } else {
                LossCost::NoRestart
            };
            self.lose(&[id], why, cost, now);
        } else if !req.error.is_empty() {
            w.phase = WorkerPhase::Failed;
            let error = format!("{who} failed: {error}");
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

    /// Fails the job from outside the protocol (a spawned worker died, the lease was lost).
    /// Returns false when the job was already over.
    pub fn fail(&mut self, error: impl Into<String>) -> bool {
        self.end_unless_over(JobPhase::Failed {
            error: error.into(),
        })
    }

    /// Cancels the job (its coordinator is being stopped): over for every worker, but not
    /// failed, since a coordinator started again resumes it. Returns false when the job was
    /// already over.
    pub fn cancel(&mut self, reason: impl Into<String>) -> bool {
        self.end_unless_over(JobPhase::Cancelled {
            reason: reason.into(),
        })
    }

    /// Ends the job in `phase` unless it is over already (the first ending stays).
    fn end_unless_over(&mut self, phase: JobPhase) -> bool {
        if self.phase.is_over() {
            return false;
        }
        self.end(phase);
        true
    }

    /// Ends the job in `phase` (finished or failed).
    pub(super) fn end(&mut self, phase: JobPhase) {
        self.phase = phase.clone();
        self.effects.push(Effect::JobEnded(phase));
        self.effects.push(Effect::Persist);
    }
}

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
