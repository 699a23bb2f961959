//! What the ranks of a formed generation ask for before they train: the NCCL id (rank 0
//! publishes it, the others fetch it) and the plan of each epoch (its steps and checkpoint
//! steps, from the [`super::Schedule`]).

use lgaf_proto::v1;

use super::{Backend, Effect, Generation, Job, JobError, Millis, Result};

impl Job {
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
        let g = self.nccl_generation()?;
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
        let g = self.nccl_generation()?;
        let id = g.nccl_id.clone();
        self.touch(&req.worker_id, now);
        Ok(id)
    }

    /// The steps of `req.epoch` for the asking rank, with the checkpoint steps in it that
    /// are not committed yet. A rank asks before it trains an epoch, so the plans it was
    /// given bound the steps it can acknowledge a checkpoint of.
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
}

impl Job {
    /// The current generation, which must use NCCL (the id exchange means nothing on the
    /// CPU backend).
    fn nccl_generation(&self) -> Result<&Generation> {
        let g = self.current();
        if g.backend != Backend::Nccl {
            return Err(JobError::precondition(format!(
                "generation {} uses the {} backend, not NCCL",
                g.number, g.backend
            )));
        }
        Ok(g)
    }
}
