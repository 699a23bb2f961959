//! The run's arithmetic: the workers' training [`Facts`] and the [`Schedule`] they give at
//! one world size (steps per epoch, total steps, which steps are checkpoints). Pure
//! functions of their inputs; the job computes the schedule once, when the first worker
//! joins.

use std::collections::BTreeSet;

use lgaf_proto::v1;
use serde::{Deserialize, Serialize};

use super::{JobError, Result};

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
    pub(super) fn validate(&self) -> Result<()> {
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

    /// The first field that differs between these facts and `ours`: its name, this value,
    /// and ours.
    pub(super) fn first_difference(&self, ours: &Facts) -> Option<(&'static str, u64, u64)> {
        self.fields()
            .into_iter()
            .zip(ours.fields())
            .find(|((_, a), (_, b))| a != b)
            .map(|((field, a), (_, b))| (field, a, b))
    }
}

/// Why facts give no schedule at a world size. Every rank has the same facts, so no worker
/// could ever train: the job fails with this.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("the world size must be at least 1")]
    NoRanks,
    #[error("batch_size and epochs must be at least 1")]
    NoBatchOrEpochs,
    #[error(
        "no training steps: {num_samples} samples over {world_size} ranks gives {per_rank} per \
         rank, fewer than one batch of {batch_size}; use more data, fewer workers or a smaller \
         batch size"
    )]
    NoSteps {
        num_samples: u64,
        world_size: u32,
        per_rank: u64,
        batch_size: u64,
    },
    #[error("{steps_per_epoch} steps per epoch times {epochs} epochs overflows")]
    TooManySteps { steps_per_epoch: u64, epochs: u64 },
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
    pub fn new(
        facts: &Facts,
        world_size: u32,
        cli_max_steps: u64,
    ) -> Result<Schedule, ScheduleError> {
        if world_size == 0 {
            return Err(ScheduleError::NoRanks);
        }
        if facts.batch_size == 0 || facts.epochs == 0 {
            return Err(ScheduleError::NoBatchOrEpochs);
        }
        let per_rank = facts.num_samples / u64::from(world_size);
        let steps_per_epoch = per_rank / facts.batch_size;
        if steps_per_epoch == 0 {
            return Err(ScheduleError::NoSteps {
                num_samples: facts.num_samples,
                world_size,
                per_rank,
                batch_size: facts.batch_size,
            });
        }
        let mut total_steps =
            steps_per_epoch
                .checked_mul(facts.epochs)
                .ok_or(ScheduleError::TooManySteps {
                    steps_per_epoch,
                    epochs: facts.epochs,
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

    /// Which steps are checkpoints, in words, for a refused ack.
    pub(super) fn describe_checkpoints(&self) -> String {
        let every = match self.checkpoint_every_steps {
            0 => String::new(),
            n => format!("every {n} steps, "),
        };
        format!(
            "{every}at epoch ends (every {} steps) and at the final step {}",
            self.steps_per_epoch, self.total_steps
        )
    }

    /// Whether a max_steps cap cut the run short of its epochs.
    pub(super) fn is_capped(&self) -> bool {
        self.total_steps < self.steps_per_epoch.saturating_mul(self.epochs)
    }
}
