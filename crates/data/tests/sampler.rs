//! The sharding contract over many (len, world size, batch size): per epoch the ranks'
//! batches are disjoint, every rank runs the same number of steps, each shard is a
//! contiguous stretch of the epoch's permutation, and the shards cover it exactly.

use lgaf_data::sampler::{epoch_permutation, ShardedSampler};

#[test]
fn shards_partition_the_permutation_and_steps_agree_across_ranks() {
    let mut checked = 0;
    for len in [1, 2, 7, 31, 64, 100, 257] {
        for world in 1..=9 {
            for batch in [1, 2, 3, 5, 8, 16] {
                if len / world < batch {
                    assert!(ShardedSampler::new(len, 11, 0, world, batch).is_err());
                    continue;
                }
                check_layout(len, world, batch);
                checked += 1;
            }
        }
    }
    assert!(checked > 150, "only {checked} layouts were valid");
}

fn check_layout(len: usize, world: usize, batch: usize) {
    let seed = 11;
    let ranks: Vec<ShardedSampler> = (0..world)
        .map(|rank| ShardedSampler::new(len, seed, rank, world, batch).unwrap())
        .collect();
    let steps = ranks[0].steps_per_epoch();
    assert_eq!(
        steps,
        ((len / world) / batch) as u64,
        "len {len} world {world}"
    );
    assert!(ranks.iter().all(|r| r.steps_per_epoch() == steps));

    for epoch in 0..2 {
        // The shards, concatenated in rank order, are exactly the epoch's permutation.
        let shards: Vec<Vec<usize>> = ranks.iter().map(|r| r.epoch_shard(epoch)).collect();
        assert_eq!(shards.concat(), epoch_permutation(len, seed, epoch));
        let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
        let spread = sizes.iter().max().unwrap() - sizes.iter().min().unwrap();
        assert!(spread <= 1, "len {len} world {world}: {sizes:?}");

        // The batches every rank reads in this epoch never repeat a sample.
        let mut seen = vec![false; len];
        for rank in &ranks {
            for k in 0..steps {
                let batch_indices = rank.batch_indices(epoch * steps + k);
                assert_eq!(batch_indices.len(), batch);
                for i in batch_indices {
                    assert!(!seen[i], "sample {i} read twice in epoch {epoch}");
                    seen[i] = true;
                }
            }
        }
        let read = seen.iter().filter(|&&s| s).count();
        assert_eq!(read, world * steps as usize * batch);
    }
}
