//! Which samples each rank reads at each step.
//!
//! Every epoch has one seeded global permutation of `0..len`, cut into `world_size` data
//! shards: shard `r` is a contiguous stretch of it. The stretches are disjoint, cover the
//! permutation and differ in length by at most one (the first `len % world_size` shards
//! hold one more). Every shard gives the same number of steps: the smallest shard divided
//! by the batch size, rounded down; the rest of each shard is dropped for that epoch, as
//! insightface drops the last partial batch. A step's samples are a function of (seed,
//! epoch, shard, step) alone, so a resumed run reads what the uninterrupted run read.
//!
//! A rank normally holds one shard (its own rank). An elastic generation with fewer ranks
//! than shards gives some ranks several (see `lgaf_proto::data_shards`): their batch is the
//! shards' batches one after the other, so the global batch stays the same samples.

use std::ops::Range;

use crate::rng::Rng;

/// A Fisher-Yates shuffle of `0..len` seeded by (seed, epoch).
pub fn epoch_permutation(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::from_keys(&[seed, epoch]);
    let mut perm: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    perm
}

/// Positions of shard `rank`'s stretch within a permutation of `len`.
///
/// # Panics
/// If `rank >= world_size`.
pub fn shard_range(len: usize, rank: usize, world_size: usize) -> Range<usize> {
    assert!(
        rank < world_size,
        "shard_range: rank {rank} of world size {world_size}"
    );
    let (base, extra) = (len / world_size, len % world_size);
    let start = rank * base + rank.min(extra);
    let size = base + usize::from(rank < extra);
    start..start + size
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SamplerError {
    #[error("data shard {rank} is not below the number of shards {world_size}")]
    RankOutOfRange { rank: usize, world_size: usize },

    #[error("the batch size and the world size must be at least 1, and a rank holds a shard")]
    Zero,

    #[error("data shard {0} is listed twice")]
    DuplicateShard(usize),

    #[error(
        "{len} samples over {world_size} ranks leave {smallest} per rank, \
         expected at least one batch of {batch_size}"
    )]
    TooFewSamples {
        len: usize,
        world_size: usize,
        smallest: usize,
        batch_size: usize,
    },
}

/// Where a step's batch lies: its epoch and its first position within each shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepPosition {
    pub epoch: u64,
    /// Index into each of [`ShardedSampler::epoch_shards`] of the batch's first sample.
    pub start: usize,
}

/// One rank's view of the per-epoch permutation: the data shards it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardedSampler {
    len: usize,
    seed: u64,
    /// Ascending.
    shards: Vec<usize>,
    world_size: usize,
    batch_size: usize,
}

impl ShardedSampler {
    /// Rank `rank` of `world_size`, holding its own shard.
    pub fn new(
        len: usize,
        seed: u64,
        rank: usize,
        world_size: usize,
        batch_size: usize,
    ) -> Result<Self, SamplerError> {
        Self::with_shards(len, seed, &[rank], world_size, batch_size)
    }

    /// A rank holding the data shards `shards` of `world_size`; its batch is `batch_size`
    /// samples of each, in the order given sorted ascending.
    pub fn with_shards(
        len: usize,
        seed: u64,
        shards: &[usize],
        world_size: usize,
        batch_size: usize,
    ) -> Result<Self, SamplerError> {
        if world_size == 0 || batch_size == 0 || shards.is_empty() {
            return Err(SamplerError::Zero);
        }
        let mut sorted = shards.to_vec();
        sorted.sort_unstable();
        for pair in sorted.windows(2) {
            if pair[0] == pair[1] {
                return Err(SamplerError::DuplicateShard(pair[0]));
            }
        }
        if let Some(&rank) = sorted.iter().find(|&&r| r >= world_size) {
            return Err(SamplerError::RankOutOfRange { rank, world_size });
        }
        let smallest = len / world_size;
        if smallest < batch_size {
            return Err(SamplerError::TooFewSamples {
                len,
                world_size,
                smallest,
                batch_size,
            });
        }
        Ok(Self {
            len,
            seed,
            shards: sorted,
            world_size,
            batch_size,
        })
    }

    /// Samples per step from each shard.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Samples per step on this rank: the batch size times the shards it holds.
    pub fn local_batch_size(&self) -> usize {
        self.batch_size * self.shards.len()
    }

    /// The data shards this rank holds, ascending.
    pub fn shards(&self) -> &[usize] {
        &self.shards
    }

    /// Steps per epoch, the same on every rank.
    pub fn steps_per_epoch(&self) -> u64 {
        ((self.len / self.world_size) / self.batch_size) as u64
    }

    /// Each held shard's samples of `epoch`, in reading order.
    pub fn epoch_shards(&self, epoch: u64) -> Vec<Vec<usize>> {
        let perm = epoch_permutation(self.len, self.seed, epoch);
        self.shards
            .iter()
            .map(|&shard| perm[shard_range(self.len, shard, self.world_size)].to_vec())
            .collect()
    }

    /// This rank's samples of `epoch`, in reading order: its shards one after the other.
    pub fn epoch_shard(&self, epoch: u64) -> Vec<usize> {
        self.epoch_shards(epoch).concat()
    }

    /// Where global step `step` (counted from the start of training) reads.
    pub fn locate(&self, step: u64) -> StepPosition {
        let steps = self.steps_per_epoch();
        StepPosition {
            epoch: step / steps,
            start: (step % steps) as usize * self.batch_size,
        }
    }

    /// The samples of step `step`, `batch_size` from each shard (computes the epoch's
    /// permutation: for tests and one-off use; the loader keeps the current epoch's).
    pub fn batch_indices(&self, step: u64) -> Vec<usize> {
        let at = self.locate(step);
        self.epoch_shards(at.epoch)
            .iter()
            .flat_map(|shard| shard[at.start..at.start + self.batch_size].iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_seeded_shuffle() {
        let p = epoch_permutation(100, 1, 0);
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(p, epoch_permutation(100, 1, 0));
        assert_ne!(p, epoch_permutation(100, 1, 1));
        assert_ne!(p, epoch_permutation(100, 2, 0));
        assert!(epoch_permutation(0, 1, 0).is_empty());
    }

    #[test]
    fn shards_partition_every_length_evenly() {
        for len in 0..60 {
            for world in 1..9 {
                let mut next = 0;
                let sizes: Vec<usize> = (0..world)
                    .map(|rank| {
                        let r = shard_range(len, rank, world);
                        assert_eq!(r.start, next, "len {len} world {world} rank {rank}");
                        next = r.end;
                        r.len()
                    })
                    .collect();
                assert_eq!(next, len);
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "len {len} world {world}: {sizes:?}");
            }
        }
    }

    #[test]
    fn refuses_impossible_layouts() {
        assert_eq!(ShardedSampler::new(10, 0, 0, 0, 2), Err(SamplerError::Zero));
        assert_eq!(ShardedSampler::new(10, 0, 0, 1, 0), Err(SamplerError::Zero));
        assert_eq!(
            ShardedSampler::new(10, 0, 2, 2, 2),
            Err(SamplerError::RankOutOfRange {
                rank: 2,
                world_size: 2
            })
        );
        let err = ShardedSampler::new(10, 0, 0, 3, 4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "10 samples over 3 ranks leave 3 per rank, expected at least one batch of 4"
        );
    }

    #[test]
    fn locate_walks_epochs() {
        let s = ShardedSampler::new(23, 5, 0, 2, 4).unwrap(); // shards 12 and 11 -> 2 steps
        assert_eq!(s.steps_per_epoch(), 2);
        assert_eq!(s.locate(0), StepPosition { epoch: 0, start: 0 });
        assert_eq!(s.locate(1), StepPosition { epoch: 0, start: 4 });
        assert_eq!(s.locate(2), StepPosition { epoch: 1, start: 0 });
        assert_eq!(s.batch_indices(1), s.epoch_shard(0)[4..8]);
    }

    #[test]
    fn several_shards_read_what_their_own_ranks_would() {
        // 3 shards of 31 samples on 2 ranks: rank 0 holds shards 0 and 2.
        let held = ShardedSampler::with_shards(31, 5, &[2, 0], 3, 4).unwrap();
        assert_eq!(held.shards(), &[0, 2]);
        assert_eq!(held.local_batch_size(), 8);
        let own: Vec<ShardedSampler> = [0, 2]
            .iter()
            .map(|&r| ShardedSampler::new(31, 5, r, 3, 4).unwrap())
            .collect();
        assert_eq!(held.steps_per_epoch(), own[0].steps_per_epoch());
        for step in 0..5 {
            let expected: Vec<usize> = own.iter().flat_map(|s| s.batch_indices(step)).collect();
            assert_eq!(held.batch_indices(step), expected, "step {step}");
        }
        assert_eq!(
            ShardedSampler::with_shards(31, 5, &[1, 1], 3, 4),
            Err(SamplerError::DuplicateShard(1))
        );
        assert_eq!(
            ShardedSampler::with_shards(31, 5, &[], 3, 4),
            Err(SamplerError::Zero)
        );
    }
}
