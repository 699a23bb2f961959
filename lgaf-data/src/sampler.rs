//! Which samples each rank reads at each step.
//!
//! Every epoch has one seeded global permutation of `0..len`; rank `r` of `w` reads a
//! contiguous stretch of it. The stretches are disjoint, cover the permutation and differ
//! in length by at most one (the first `len % w` ranks hold one more). Every rank runs
//! the same number of steps: the smallest shard divided by the batch size, rounded down;
//! the rest of each shard is dropped for that epoch, as insightface drops the last
//! partial batch. A step's samples are a function of (seed, epoch, rank, step) alone, so
//! a resumed run reads what the uninterrupted run read.

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

/// Positions of rank `rank`'s shard within a permutation of `len`.
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
    #[error("rank {rank} is not below the world size {world_size}")]
    RankOutOfRange { rank: usize, world_size: usize },

    #[error("the batch size and the world size must be at least 1")]
    Zero,

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

/// Where a step's batch lies: its epoch and its first position within the rank's shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepPosition {
    pub epoch: u64,
    /// Index into [`ShardedSampler::epoch_shard`] of the batch's first sample.
    pub start: usize,
}

/// One rank's view of the per-epoch permutation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardedSampler {
    len: usize,
    seed: u64,
    rank: usize,
    world_size: usize,
    batch_size: usize,
}

impl ShardedSampler {
    pub fn new(
        len: usize,
        seed: u64,
        rank: usize,
        world_size: usize,
        batch_size: usize,
    ) -> Result<Self, SamplerError> {
        if world_size == 0 || batch_size == 0 {
            return Err(SamplerError::Zero);
        }
        if rank >= world_size {
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
            rank,
            world_size,
            batch_size,
        })
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Steps per epoch, the same on every rank.
    pub fn steps_per_epoch(&self) -> u64 {
        ((self.len / self.world_size) / self.batch_size) as u64
    }

    /// This rank's samples of `epoch`, in reading order.
    pub fn epoch_shard(&self, epoch: u64) -> Vec<usize> {
        let mut perm = epoch_permutation(self.len, self.seed, epoch);
        let range = shard_range(self.len, self.rank, self.world_size);
        perm.truncate(range.end);
        perm.drain(..range.start);
        perm
    }

    /// Where global step `step` (counted from the start of training) reads.
    pub fn locate(&self, step: u64) -> StepPosition {
        let steps = self.steps_per_epoch();
        StepPosition {
            epoch: step / steps,
            start: (step % steps) as usize * self.batch_size,
        }
    }

    /// The samples of step `step` (computes the epoch's permutation: for tests and
    /// one-off use; the loader keeps the shard of the current epoch instead).
    pub fn batch_indices(&self, step: u64) -> Vec<usize> {
        let at = self.locate(step);
        self.epoch_shard(at.epoch)[at.start..at.start + self.batch_size].to_vec()
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
}
