//! Partial FC (insightface PartialFC_V2, spec section 3): the classifier's class centres are
//! sharded by contiguous class range; each rank scores the (global) batch against its
//! centres, and the softmax cross-entropy is computed with all-reduced row maxima and
//! denominators. With `sample_rate < 1` a rank keeps every positive centre of the batch plus
//! uniformly sampled negatives; only sampled centres and their momentum are updated.
//!
//! At world size 1 this is exactly a margin softmax over all classes.

use std::sync::Arc;

use lgaf_splitmix::SplitMix64;
use tch::{Device, Kind, Tensor};

use crate::collective::{Collective, SingleProcess};
use crate::margin::CombinedMargin;

/// The classes one rank owns: `[start, start + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassRange {
    pub start: i64,
    pub len: i64,
}

impl ClassRange {
    /// Rank r of W owns `[C/W*r + min(r, C%W), +C/W + (r < C%W))`.
    pub fn of_rank(num_classes: i64, rank: i64, world_size: i64) -> Self {
        let base = num_classes / world_size;
        let rem = num_classes % world_size;
        Self {
            start: base * rank + rank.min(rem),
            len: base + i64::from(rank < rem),
        }
    }

    pub fn end(&self) -> i64 {
        self.start + self.len
    }
}

/// The softmax's statistics over every rank's class range for one step: row maxima and
/// denominators [B, 1], all-reduced, so they are the same bits on every rank. A replica of
/// another rank's shard ([`PartialFc::forward_replica`]) needs them and nothing else from
/// that rank.
#[derive(Debug)]
pub struct SoftmaxStats {
    pub row_max: Tensor,
    pub denom: Tensor,
}

/// What scoring the batch against one shard leaves for the backward pass and its update.
#[derive(Debug)]
pub struct ShardForward {
    /// `sum(logits * dloss/dlogits)`: backpropagating it gives the exact loss gradient to
    /// the embeddings and to `sampled_weight`, with no custom autograd function.
    pub surrogate: Tensor,
    /// Local row indices of the centres used this step, sorted.
    pub sampled: Tensor,
    /// Leaf tensor of the used centres; its `.grad()` is the centres' gradient.
    pub sampled_weight: Tensor,
}

/// What one forward pass of this rank's classifier leaves.
#[derive(Debug)]
pub struct PfcForward {
    /// Mean cross-entropy over the global batch (detached scalar).
    pub loss: Tensor,
    /// This rank's shard: what its backward pass and update need.
    pub shard: ShardForward,
    /// The step's global softmax statistics, for a replica of another rank's shard.
    pub stats: SoftmaxStats,
}

pub struct PartialFc {
    range: ClassRange,
    sample_rate: f64,
    margin: CombinedMargin,
    /// Keys the negatives drawn each step (with the step and the range).
    seed: u64,
    /// Centres of this rank's classes [len, D], fp32.
    pub weight: Tensor,
    /// SGD momentum of the centres, same shape.
    pub momentum: Tensor,
    collective: Arc<dyn Collective>,
}

impl std::fmt::Debug for PartialFc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartialFc")
            .field("range", &self.range)
            .field("sample_rate", &self.sample_rate)
            .field("margin", &self.margin)
            .finish()
    }
}

impl PartialFc {
    /// Fresh centres, N(0, 0.01) as insightface initialises them. Each class's centre is
    /// drawn from its own stream keyed by (`seed`, global class id), so the centres do not
    /// depend on the world size or on libtorch's generator: a run on 1 rank and on 8 ranks
    /// starts from the same classifier, and each rank computes only its own range.
    pub fn new(
        range: ClassRange,
        embedding_size: i64,
        sample_rate: f64,
        margin: CombinedMargin,
        seed: u64,
        device: Device,
    ) -> Self {
        let d = embedding_size as usize;
        let mut values = vec![0f32; range.len as usize * d];
        for (row, class) in values.chunks_exact_mut(d.max(1)).zip(range.start..) {
            let mut rng =
                SplitMix64::new(seed ^ (class as u64).wrapping_mul(0xd6e8_feb8_6659_fd93));
            for v in row {
                *v = 0.01 * standard_normal(&mut rng);
            }
        }
        let weight = Tensor::from_slice(&values)
            .view([range.len, embedding_size])
            .to_device(device);
        let momentum = weight.zeros_like();
        Self {
            range,
            sample_rate,
            margin,
            seed,
            weight,
            momentum,
            collective: Arc::new(SingleProcess),
        }
    }

    pub fn set_collective(&mut self, collective: Arc<dyn Collective>) {
        self.collective = collective;
    }

    pub fn range(&self) -> ClassRange {
        self.range
    }

    /// Number of centres a step uses when sampling (at least the batch's positives).
    pub fn num_sample(&self) -> i64 {
        (self.sample_rate * self.range.len as f64) as i64
    }

    /// Scores the global batch `embeddings` [B, D] (not yet normalised, requires grad) with
    /// `labels` [B] (global class ids) against this rank's centres, at training step `step`
    /// (which keys the negatives drawn). Collective: every rank calls it for the same step.
    pub fn forward(&self, embeddings: &Tensor, labels: &Tensor, step: u64) -> PfcForward {
        let (shard, loss, stats) = self.score(embeddings, labels, step, None);
        PfcForward {
            loss: loss.expect("scoring without given statistics computes the loss"),
            shard,
            stats,
        }
    }

    /// What [`PartialFc::forward`] on the rank that owns this shard computes for its
    /// update, computed here from the same global batch and that step's `stats`, with no
    /// collective call: a rank keeps a replica of a peer's shard up to date with it, bit for
    /// bit (the same operations on the same bits), so the shard outlives its owner.
    pub fn forward_replica(
        &self,
        embeddings: &Tensor,
        labels: &Tensor,
        step: u64,
        stats: &SoftmaxStats,
    ) -> ShardForward {
        self.score(&embeddings.detach(), labels, step, Some(stats))
            .0
    }

    /// The shared body of [`PartialFc::forward`] and [`PartialFc::forward_replica`]: the
    /// loss (only when the statistics are reduced here) and the statistics used.
    fn score(
        &self,
        embeddings: &Tensor,
        labels: &Tensor,
        step: u64,
        given: Option<&SoftmaxStats>,
    ) -> (ShardForward, Option<Tensor>, SoftmaxStats) {
        let device = self.weight.device();
        let labels = labels.to_device(device).to_kind(Kind::Int64);
        let in_range = labels
            .ge(self.range.start)
            .logical_and(&labels.lt(self.range.end()));
        let local = (&labels - self.range.start).where_self(&in_range, &labels.full_like(-1));

        let (sampled, local) = self.sample(&local, &in_range, step);
        let sampled_weight = if self.sample_rate >= 1.0 {
            self.weight.detach()
        } else {
            self.weight.index_select(0, &sampled)
        }
        .set_requires_grad(true);

        let (margin_logits, loss, grad_logits, stats) = crate::amp::fp32(|| {
            let emb = embeddings.to_kind(Kind::Float);
            let norm_emb = normalize(&emb);
            let norm_w = normalize(&sampled_weight);
            let logits = self.margin.logits(&norm_emb.matmul(&norm_w.tr()), &local);
            let (loss, grad, stats) =
                tch::no_grad(|| self.softmax_cross_entropy(&logits, &local, given));
            (logits, loss, grad, stats)
        });
        let shard = ShardForward {
            surrogate: (margin_logits * grad_logits).sum(Kind::Float),
            sampled,
            sampled_weight,
        };
        (shard, loss, stats)
    }

    /// Keeps every positive class plus uniformly drawn negatives (PartialFC_V2's rule) and
    /// remaps local labels into the sampled set. Without sampling: all rows, labels as given.
    /// The negatives' scores come from a stream keyed by (seed, step, first class of the
    /// range), not libtorch's generator: a replica of this shard on another rank draws the
    /// same ones, and so does a rank that took the shard over.
    fn sample(&self, local: &Tensor, in_range: &Tensor, step: u64) -> (Tensor, Tensor) {
        let device = self.weight.device();
        if self.sample_rate >= 1.0 {
            return (
                Tensor::arange(self.range.len, (Kind::Int64, device)),
                local.shallow_clone(),
            );
        }
        let positives = local.masked_select(in_range);
        let (positives, _, _) = positives.unique_dim(0, true, false, false);
        let num_sample = self.num_sample();
        let sampled = if num_sample > positives.size()[0] {
            let mut score = self.negative_scores(step).to_device(device);
            let _ = score.index_fill_(0, &positives, 2.0);
            let (_, index) = score.topk(num_sample, 0, true, false);
            index.sort(0, false).0
        } else {
            positives
        };
        let remapped = local.searchsorted(&sampled, false, false, "left", None::<Tensor>);
        (sampled, remapped.where_self(in_range, &local.full_like(-1)))
    }

    /// One uniform score in [0, 1) per centre of the range for `step` (24-bit floats, so
    /// every value is exact and ties are as rare as in `torch.rand`).
    fn negative_scores(&self, step: u64) -> Tensor {
        let mut rng = SplitMix64::new(
            self.seed
                ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ (self.range.start as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9),
        );
        let scores: Vec<f32> = (0..self.range.len)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u32 << 24) as f32)
            .collect();
        Tensor::from_slice(&scores)
    }

    /// Distributed softmax cross-entropy: returns (mean loss, dloss/dlogits, the global
    /// statistics). Rows whose target lives on another rank contribute their denominator
    /// here and their target there. With `given` statistics (a replica's step) nothing is
    /// reduced and no loss is computed.
    fn softmax_cross_entropy(
        &self,
        logits: &Tensor,
        local: &Tensor,
        given: Option<&SoftmaxStats>,
    ) -> (Option<Tensor>, Tensor, SoftmaxStats) {
        let batch = logits.size()[0] as f64;
        let (row_max, exp, denom) = match given {
            Some(stats) => {
                let exp = (logits - &stats.row_max).exp();
                (
                    stats.row_max.shallow_clone(),
                    exp,
                    stats.denom.shallow_clone(),
                )
            }
            None => {
                let row_max = self
                    .collective
                    .all_reduce_max(&logits.amax(&[1i64][..], true));
                let exp = (logits - &row_max).exp();
                let denom = self.collective.all_reduce_sum(&exp.sum_dim_intlist(
                    &[1i64][..],
                    true,
                    None::<Kind>,
                ));
                (row_max, exp, denom)
            }
        };
        let prob = exp / &denom;

        let has_target = local.ge(0);
        let index = local.clamp_min(0).unsqueeze(1);
        let loss = given.is_none().then(|| {
            let target_logit = logits
                .gather(1, &index, false)
                .where_self(&has_target.unsqueeze(1), &row_max.zeros_like());
            let target_logit = self.collective.all_reduce_sum(&target_logit);
            (denom.log() + &row_max - target_logit).mean(Kind::Float)
        });

        let one_hot = prob.zeros_like().scatter_value(1, &index, 1.0)
            * has_target.unsqueeze(1).to_kind(Kind::Float);
        (
            loss,
            (prob - one_hot) / batch,
            SoftmaxStats { row_max, denom },
        )
    }

    /// SGD with momentum and weight decay on the sampled centres only (PyTorch's update
    /// rule: g += wd*w; m = mu*m + g; w -= lr*m). `grad_scale` divides the gradient (the
    /// loss scale under fp16).
    pub fn step(
        &mut self,
        fwd: &ShardForward,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        grad_scale: f64,
    ) {
        let grad = fwd.sampled_weight.grad();
        if !grad.defined() {
            return;
        }
        if self.sample_rate >= 1.0 {
            // Every centre takes part: update the whole matrix in place (205,990 x 512 is
            // 420 MB; gathering and scattering it would copy it four times a step).
            let device = self.weight.device();
            let scalar = |v: f64| Tensor::full([0i64; 0], v, (Kind::Float, device));
            tch::no_grad(|| {
                let mut g = if grad_scale == 1.0 {
                    grad
                } else {
                    grad / grad_scale
                };
                let _ = g.addcmul_(&self.weight, &scalar(weight_decay));
                let _ = self.momentum.g_mul_scalar_(momentum).g_add_(&g);
                let _ = self.weight.addcmul_(&self.momentum, &scalar(-lr));
            });
            return;
        }
        tch::no_grad(|| {
            let w = self.weight.index_select(0, &fwd.sampled);
            let m = self.momentum.index_select(0, &fwd.sampled);
            let g = grad / grad_scale + &w * weight_decay;
            let m = m * momentum + g;
            let w = w - &m * lr;
            let _ = self.weight.index_copy_(0, &fwd.sampled, &w);
            let _ = self.momentum.index_copy_(0, &fwd.sampled, &m);
        });
    }
}

/// A standard normal sample for the centres' initialisation (Box-Muller on two uniforms).
fn standard_normal(rng: &mut SplitMix64) -> f32 {
    // Uniform in (0, 1] from the top 53 bits, so the logarithm is finite.
    let mut uniform = || ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let (u1, u2) = (uniform(), uniform());
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Row-wise L2 normalisation (`F.normalize`, eps 1e-12).
pub fn normalize(x: &Tensor) -> Tensor {
    let norm = x
        .norm_scalaropt_dim(2.0, &[1i64][..], true)
        .clamp_min(1e-12);
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(sample_rate: f64, classes: i64) -> (PartialFc, Tensor, Tensor) {
        tch::manual_seed(7);
        let pfc = PartialFc::new(
            ClassRange::of_rank(classes, 0, 1),
            8,
            sample_rate,
            CombinedMargin::cosface(),
            7,
            Device::Cpu,
        );
        let emb = Tensor::randn([6, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let labels = Tensor::from_slice(&[3i64, 0, 17, 3, 9, 11]);
        (pfc, emb, labels)
    }

    #[test]
    fn centres_are_the_same_whatever_the_world_size() {
        let make = |rank, world| {
            PartialFc::new(
                ClassRange::of_rank(23, rank, world),
                8,
                1.0,
                CombinedMargin::cosface(),
                5,
                Device::Cpu,
            )
            .weight
        };
        let whole = make(0, 1);
        for world in [2, 3, 7] {
            let parts: Vec<Tensor> = (0..world).map(|r| make(r, world)).collect();
            assert!(Tensor::cat(&parts, 0).equal(&whole), "world size {world}");
        }
        let std = f64::try_from(whole.std(true)).unwrap();
        assert!(
            (std - 0.01).abs() < 0.002,
            "centres' std {std}, expected 0.01"
        );
    }

    /// Centres as they were drawn before SplitMix64 moved to `lgaf-splitmix`: the
    /// initial classifier of every run with a given seed.
    #[test]
    fn centres_are_pinned() {
        let pfc = PartialFc::new(
            ClassRange { start: 5, len: 1 },
            4,
            1.0,
            CombinedMargin::cosface(),
            7,
            Device::Cpu,
        );
        let bits: Vec<u32> = Vec::<f32>::try_from(pfc.weight.flatten(0, -1))
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(bits, [0x3c77_1781, 0xbbf8_e065, 0x3b89_ead7, 0x3b0d_6980]);
    }

    #[test]
    fn class_ranges_partition_the_classes() {
        for (classes, world) in [(10, 3), (205_990, 8), (7, 7), (5, 8)] {
            let mut next = 0;
            for rank in 0..world {
                let r = ClassRange::of_rank(classes, rank, world);
                assert_eq!(r.start, next, "{classes}/{world} rank {rank}");
                next = r.end();
            }
            assert_eq!(next, classes);
        }
        assert_eq!(
            ClassRange::of_rank(10, 0, 3),
            ClassRange { start: 0, len: 4 }
        );
        assert_eq!(
            ClassRange::of_rank(10, 2, 3),
            ClassRange { start: 7, len: 3 }
        );
    }

    #[test]
    fn full_rate_equals_plain_softmax_cross_entropy() {
        let (pfc, emb, labels) = setup(1.0, 20);
        let fwd = pfc.forward(&emb, &labels, 0);
        fwd.shard.surrogate.backward();
        let ours_grad = emb.grad().copy();

        // Reference: the same margin logits through libtorch's cross-entropy and autograd.
        let emb2 = emb.detach().set_requires_grad(true);
        let w = pfc.weight.detach().set_requires_grad(true);
        let cos = normalize(&emb2).matmul(&normalize(&w).tr());
        let logits = CombinedMargin::cosface().logits(&cos, &labels);
        let loss = logits.cross_entropy_for_logits(&labels);
        loss.backward();
        assert!(fwd.loss.allclose(&loss.detach(), 1e-5, 1e-6, false));
        // Gradients of magnitude ~4: float rounding reaches a few 1e-7 absolute.
        assert!(ours_grad.allclose(&emb2.grad(), 1e-5, 1e-6, false));
        // Centres of norm ~0.03 are normalised: their gradients are ~30x larger, and so is
        // the rounding.
        assert!(fwd
            .shard
            .sampled_weight
            .grad()
            .allclose(&w.grad(), 1e-4, 1e-5, false));
    }

    #[test]
    fn sampling_keeps_every_positive_and_remaps_labels() {
        let (pfc, emb, labels) = setup(0.25, 40);
        assert_eq!(pfc.num_sample(), 10);
        let local = labels.shallow_clone();
        let in_range = labels.ge(0);
        let (sampled, remapped) = pfc.sample(&local, &in_range, 0);
        assert_eq!(sampled.size(), vec![10]);
        // Sorted, unique, and the remapped label points back at the true class.
        let s = Vec::<i64>::try_from(&sampled).unwrap();
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
        let back = sampled.index_select(0, &remapped);
        assert!(back.equal(&labels));
        // The loss over the sampled centres is finite and updates only those rows.
        let fwd = pfc.forward(&emb, &labels, 0);
        fwd.shard.surrogate.backward();
        let before = pfc.weight.copy();
        let mut pfc = pfc;
        pfc.step(&fwd.shard, 0.1, 0.9, 5e-4, 1.0);
        let changed = (&pfc.weight - before)
            .abs()
            .sum_dim_intlist(&[1i64][..], false, None::<Kind>)
            .gt(0.0);
        let changed_rows = Vec::<i64>::try_from(changed.nonzero().flatten(0, -1)).unwrap();
        let used = Vec::<i64>::try_from(&fwd.shard.sampled).unwrap();
        assert!(
            changed_rows.iter().all(|r| used.contains(r)),
            "{changed_rows:?} vs {used:?}"
        );
        assert!(f64::try_from(&fwd.loss).unwrap().is_finite());
        let momentum_rows = pfc
            .momentum
            .abs()
            .sum_dim_intlist(&[1i64][..], false, None::<Kind>)
            .gt(0.0)
            .nonzero()
            .size()[0];
        assert_eq!(momentum_rows, changed_rows.len() as i64);
    }

    #[test]
    fn too_many_positives_keeps_just_the_positives() {
        let (pfc, _, labels) = setup(0.05, 40); // num_sample 2 < 5 distinct positives
        let (sampled, _) = pfc.sample(&labels, &labels.ge(0), 0);
        assert_eq!(
            Vec::<i64>::try_from(&sampled).unwrap(),
            vec![0, 3, 9, 11, 17]
        );
    }

    #[test]
    fn step_follows_pytorch_sgd() {
        let (mut pfc, emb, labels) = setup(1.0, 20);
        let fwd = pfc.forward(&emb, &labels, 0);
        fwd.shard.surrogate.backward();
        let grad = fwd.shard.sampled_weight.grad().copy();
        let w0 = pfc.weight.copy();
        pfc.step(&fwd.shard, 0.1, 0.9, 5e-4, 2.0);
        let g = grad / 2.0 + &w0 * 5e-4;
        assert!(pfc.momentum.allclose(&g, 1e-6, 1e-8, false));
        let w1 = &w0 - &g * 0.1;
        assert!(pfc.weight.allclose(&w1, 1e-6, 1e-8, false));
        // A second step, unscaled (the gradient is then updated in place): momentum
        // carries the first step's direction.
        let fwd = pfc.forward(&emb, &labels, 0);
        fwd.shard.surrogate.backward();
        let grad = fwd.shard.sampled_weight.grad().copy();
        pfc.step(&fwd.shard, 0.1, 0.9, 5e-4, 1.0);
        let m = g * 0.9 + grad + &w1 * 5e-4;
        assert!(pfc.momentum.allclose(&m, 1e-6, 1e-8, false));
        assert!(pfc.weight.allclose(&(w1 - m * 0.1), 1e-6, 1e-8, false));
    }

    /// A replica fed the step's statistics updates its copy of the shard to the same bits
    /// as the owner does, step after step, sampling included.
    #[test]
    fn a_replica_follows_its_shard_bit_for_bit() {
        for sample_rate in [1.0, 0.3] {
            let (mut owner, emb, labels) = setup(sample_rate, 40);
            let (mut replica, _, _) = setup(sample_rate, 40);
            for step in 0..4 {
                let emb = (&emb * (step as f64 + 1.0))
                    .detach()
                    .set_requires_grad(true);
                let fwd = owner.forward(&emb, &labels, step);
                fwd.shard.surrogate.backward();
                let copy = replica.forward_replica(&emb, &labels, step, &fwd.stats);
                copy.surrogate.backward();
                assert!(copy.sampled.equal(&fwd.shard.sampled));
                owner.step(&fwd.shard, 0.1, 0.9, 5e-4, 1.0);
                replica.step(&copy, 0.1, 0.9, 5e-4, 1.0);
                assert!(
                    replica.weight.equal(&owner.weight),
                    "rate {sample_rate} step {step}"
                );
                assert!(replica.momentum.equal(&owner.momentum));
            }
        }
    }

    #[test]
    fn negatives_depend_on_the_step_and_the_range_not_on_libtorch() {
        let (pfc, _, labels) = setup(0.25, 40);
        let draw = |step| pfc.sample(&labels, &labels.ge(0), step).0;
        let first = draw(3);
        tch::manual_seed(99);
        assert!(draw(3).equal(&first));
        assert!(!draw(4).equal(&first));
    }
}
