//! Live recovery, the worker's side: what a rank keeps when its generation ends under it
//! ([`Held`]), the offer it joins the next generation with, and the transfer that starts a
//! generation from the survivors' state ([`receive`]) instead of the last checkpoint.
//!
//! The transfer is a fixed sequence of broadcasts over the new generation's collective
//! group, which every rank takes part in: the network, its momentum and the run state from
//! the rank the coordinator named, then each classifier shard of the source generation
//! from a rank that holds it. Each rank keeps what overlaps its class ranges and restores
//! from that as from a checkpoint's objects (the same keys and format). A rank that dies
//! in the middle fails the group like any collective; the survivors still hold their
//! state, so the generation after can take it again.

use std::collections::HashMap;

use bytes::Bytes;
use lgaf_proto::v1;
use tch::{Kind, Tensor};
use tracing::{info, warn};

use super::{Result, RunError};
use crate::data_parallel::Group;
use crate::trainer::{
    classifier_object, LiveState, Trainer, MODEL_OBJECT, OPTIMIZER_OBJECT, RUN_STATE_OBJECT,
};
use crate::WorkerError;

/// Fault injection for the live-recovery tests: with `LGAF_FAILPOINT=exit-in-live-transfer`
/// this worker exits (status 137, as if killed) right after the first broadcast of a live
/// transfer.
const EXIT_IN_TRANSFER: &str = "exit-in-live-transfer";

/// What a rank kept of the generation that ended under it.
pub(super) struct Held {
    /// The generation it trained in.
    pub generation: u64,
    pub state: LiveState,
}

impl Held {
    /// This rank's state if the trainer has one to give (live recovery on, more than one
    /// rank), logged.
    pub fn keep(trainer: &Trainer, generation: u64) -> Option<Held> {
        match trainer.live_state() {
            Ok(Some(state)) => {
                info!(
                    generation,
                    step = state.step,
                    shards = ?state.shards,
                    "kept this rank's state for the next generation"
                );
                Some(Held { generation, state })
            }
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "this rank's state could not be kept");
                None
            }
        }
    }

    pub fn offer(&self) -> v1::LiveOffer {
        v1::LiveOffer {
            generation: self.generation,
            world_size: self.state.world_size,
            step: self.state.step,
            shards: self.state.shards.clone(),
        }
    }
}

/// Starts `trainer` from the survivors' state as `plan` says: takes part in every
/// broadcast (sending what this rank was named for, from `held`), then restores from what
/// it received. `num_classes` re-cuts the shards.
pub(super) fn receive(
    trainer: &mut Trainer,
    held: Option<&Held>,
    plan: &v1::LiveResume,
    num_classes: u64,
) -> Result<()> {
    let group = trainer.group().clone();
    let rank = group.rank() as u32;
    let world = i64::from(plan.source_world_size);
    let mut wanted = trainer.objects_to_resume(world, num_classes as i64);
    wanted.push(RUN_STATE_OBJECT.to_string());
    let sequence = [MODEL_OBJECT, OPTIMIZER_OBJECT, RUN_STATE_OBJECT]
        .into_iter()
        .map(|key| (key.to_string(), plan.state_rank))
        .chain(
            plan.shard_ranks
                .iter()
                .enumerate()
                .map(|(shard, &from)| (classifier_object(shard as i64), from)),
        );
    // What this rank may send: its state, if it is the one the plan was made from.
    let mine = held
        .filter(|h| h.generation == plan.source_generation && h.state.step == plan.step)
        .map(|h| &h.state.objects);
    let exit_in_transfer = std::env::var(super::FAILPOINT_ENV).is_ok_and(|v| v == EXIT_IN_TRANSFER);
    let mut objects = HashMap::new();
    let mut sent_bytes = 0u64;
    for (key, from) in sequence {
        let own = (from == rank).then(|| mine.and_then(|m| m.get(&key)));
        let bytes = broadcast_bytes(&group, trainer, from, own)
            .map_err(|message| transfer_failed(plan, &key, from, message))?;
        if exit_in_transfer {
            warn!("{}: exiting in the live transfer", super::FAILPOINT_ENV);
            std::process::exit(137);
        }
        if from == rank {
            sent_bytes += bytes.len() as u64;
        }
        if wanted.contains(&key) {
            objects.insert(key, bytes);
        }
    }
    let source = format!(
        "the state of generation {}'s survivors at step {}",
        plan.source_generation, plan.step
    );
    trainer
        .restore_live(&source, plan.step, &objects)
        .map_err(|e| RunError::LiveTransfer(Box::new(e)))?;
    info!(
        step = plan.step,
        source_generation = plan.source_generation,
        sent_bytes,
        "resumed from the survivors' state"
    );
    Ok(())
}

/// One object from rank `from` to every rank. `own` is `Some` on the sender: the bytes, or
/// `None` when it does not hold them, which every rank learns (a length of -1) so that all
/// fail together instead of waiting on each other.
fn broadcast_bytes(
    group: &Group,
    trainer: &Trainer,
    from: u32,
    own: Option<Option<&Bytes>>,
) -> Result<Bytes, String> {
    let collective = group.collective();
    let device = trainer.device();
    let root = i64::from(from);
    let len = match own {
        Some(Some(bytes)) => bytes.len() as i64,
        Some(None) => -1,
        None => 0,
    };
    let len = collective
        .broadcast(&Tensor::from_slice(&[len]).to_device(device), root)
        .int64_value(&[0]);
    group.check().map_err(|e| e.to_string())?;
    if len < 0 {
        return Err(format!("rank {from} does not hold it"));
    }
    // As i64 words: both backends carry them exactly (NCCL has no byte type here).
    let words = (len as usize).div_ceil(8);
    let payload = match own {
        Some(Some(bytes)) => Tensor::from_slice(&to_words(bytes)),
        _ => Tensor::zeros([words as i64], (Kind::Int64, tch::Device::Cpu)),
    };
    let received = collective.broadcast(&payload.to_device(device), root);
    group.check().map_err(|e| e.to_string())?;
    let words: Vec<i64> = Vec::try_from(received.to_device(tch::Device::Cpu))
        .map_err(|e| format!("the received words: {e}"))?;
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.truncate(len as usize);
    Ok(Bytes::from(bytes))
}

/// `bytes` as little-endian i64 words, the last padded with zeros.
fn to_words(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks(8)
        .map(|chunk| {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            i64::from_le_bytes(word)
        })
        .collect()
}

fn transfer_failed(plan: &v1::LiveResume, key: &str, from: u32, message: String) -> RunError {
    RunError::Worker(WorkerError::Collective {
        step: plan.step,
        message: format!(
            "the live transfer of {key} from rank {from} (the state of generation {} at step \
             {}): {message}",
            plan.source_generation, plan.step
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::to_words;

    #[test]
    fn words_carry_every_byte_and_pad_the_last() {
        let bytes: Vec<u8> = (0..=20).collect();
        let words = to_words(&bytes);
        assert_eq!(words.len(), 3);
        let back: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(&back[..21], &bytes[..]);
        assert_eq!(&back[21..], &[0, 0, 0]);
    }
}
