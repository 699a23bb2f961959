//! The training batch stream over the synthetic dataset: a seeded permutation per epoch,
//! samples rendered on a background thread (in parallel) and handed over through a bounded
//! queue, so the trainer waits only when rendering falls behind.
//!
//! Everything is a function of (seed, epoch, step): a run resumed at step s sees exactly
//! the batches the uninterrupted run saw from step s on.

use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;

use lgaf_data::image_folder::hflip;
use lgaf_data::rng::Rng;
use lgaf_data::synth::{Factor, SynthConfig, SynthDataset, IMAGE_SIZE};
use rayon::prelude::*;

use crate::config::{DataConfig, SyntheticConfig};

/// Tags the flip decision's random stream apart from the permutation's.
const FLIP_STREAM: u64 = 0x666c_6970;

pub struct Batch {
    /// Global step this batch belongs to.
    pub step: u64,
    pub epoch: u64,
    /// HWC RGB8, `labels.len()` images back to back.
    pub images: Vec<u8>,
    pub labels: Vec<i64>,
    pub factors: Vec<Factor>,
}

pub fn synth_config(cfg: &SyntheticConfig) -> SynthConfig {
    SynthConfig {
        seed: cfg.seed,
        identities: cfg.identities,
        images_per_identity: cfg.images_per_identity,
        nuisance_prob: cfg.nuisance_prob,
    }
}

/// Positions of an epoch: a Fisher-Yates shuffle of 0..len seeded by (seed, epoch).
pub fn epoch_permutation(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::from_keys(&[seed, epoch]);
    let mut perm: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    perm
}

/// Steps in one epoch (the last partial batch is dropped, as insightface does).
pub fn steps_per_epoch(data: &DataConfig) -> u64 {
    let len = data.synthetic.identities * data.synthetic.images_per_identity;
    (len / data.batch_size) as u64
}

/// Renders the batch of global step `step`.
pub fn make_batch(dataset: &SynthDataset, data: &DataConfig, step: u64) -> Batch {
    let spe = steps_per_epoch(data);
    let (epoch, k) = (step / spe, (step % spe) as usize);
    let seed = data.synthetic.seed;
    let perm = epoch_permutation(dataset.len(), seed, epoch);
    let picked = &perm[k * data.batch_size..(k + 1) * data.batch_size];
    let samples: Vec<_> = picked
        .par_iter()
        .map(|&index| {
            let mut sample = dataset.get(index);
            if Rng::from_keys(&[seed, epoch, index as u64, FLIP_STREAM]).bernoulli(0.5) {
                sample.rgb = hflip(&sample.rgb, IMAGE_SIZE, IMAGE_SIZE);
            }
            sample
        })
        .collect();
    let mut batch = Batch {
        step,
        epoch,
        images: Vec::with_capacity(samples.len() * IMAGE_SIZE * IMAGE_SIZE * 3),
        labels: Vec::with_capacity(samples.len()),
        factors: Vec::with_capacity(samples.len()),
    };
    for s in samples {
        batch.images.extend_from_slice(&s.rgb);
        batch.labels.push(i64::from(s.label));
        batch.factors.push(s.factor);
    }
    batch
}

/// Produces batches for steps `start..end` on a background thread.
pub struct Loader {
    rx: Receiver<Batch>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    pub fn start(data: &DataConfig, start: u64, end: u64) -> Self {
        let (tx, rx) = mpsc::sync_channel(data.prefetch.max(1));
        let data = data.clone();
        let handle = std::thread::Builder::new()
            .name("lgaf-loader".into())
            .spawn(move || {
                let dataset = SynthDataset::new(synth_config(&data.synthetic));
                for step in start..end {
                    if tx.send(make_batch(&dataset, &data, step)).is_err() {
                        return; // the trainer stopped early
                    }
                }
            })
            .expect("spawning the loader thread");
        Self {
            rx,
            handle: Some(handle),
        }
    }

    /// The next batch, or None after the last step.
    pub fn next_batch(&mut self) -> Option<Batch> {
        self.rx.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Close the queue first so a producer blocked on a full queue returns.
        let (_, dead) = mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> DataConfig {
        DataConfig {
            batch_size: 7,
            prefetch: 2,
            synthetic: SyntheticConfig {
                seed: 3,
                identities: 5,
                images_per_identity: 6,
                nuisance_prob: 0.5,
            },
        }
    }

    #[test]
    fn permutation_is_a_seeded_shuffle() {
        let p = epoch_permutation(100, 1, 0);
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(p, epoch_permutation(100, 1, 0));
        assert_ne!(p, epoch_permutation(100, 1, 1));
        assert_ne!(p, epoch_permutation(100, 2, 0));
    }

    #[test]
    fn an_epoch_sees_each_sample_at_most_once_and_resume_sees_the_same_batches() {
        let data = small();
        assert_eq!(steps_per_epoch(&data), 4); // 30 images, batch 7, last partial dropped
        let mut loader = Loader::start(&data, 0, 8);
        let batches: Vec<Batch> = std::iter::from_fn(|| loader.next_batch()).collect();
        assert_eq!(batches.len(), 8);
        assert_eq!(batches[4].epoch, 1);
        let mut resumed = Loader::start(&data, 5, 8);
        let b5 = resumed.next_batch().unwrap();
        assert_eq!(b5.step, 5);
        assert_eq!(b5.labels, batches[5].labels);
        assert_eq!(b5.images, batches[5].images);
        // Within epoch 0: 28 distinct (label, image) pairs.
        let mut seen: Vec<&[u8]> = batches[..4]
            .iter()
            .flat_map(|b| b.images.chunks(IMAGE_SIZE * IMAGE_SIZE * 3))
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 28);
    }

    #[test]
    fn dropping_a_loader_mid_stream_does_not_hang() {
        let mut loader = Loader::start(&small(), 0, 1000);
        let _ = loader.next_batch();
        drop(loader);
    }
}
