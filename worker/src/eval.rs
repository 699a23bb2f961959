//! Evaluation: embedding extraction and insightface's verification protocol.

use lgaf_data::synth::{verification_pairs, Factor, SynthConfig, IMAGE_SIZE};
use lgaf_model::partial_fc::normalize;
use lgaf_model::Lgaf;
use tch::{Device, Kind, Tensor};

use crate::device::images_to_tensor;

/// Thresholds on the squared L2 distance: 0, 0.01, ..., 3.99 (insightface's `np.arange(0, 4, 0.01)`).
pub fn thresholds() -> Vec<f32> {
    (0..400).map(|i| i as f32 * 0.01).collect()
}

#[derive(Clone, Debug, PartialEq)]
pub struct Verification {
    /// Mean test-fold accuracy over the folds.
    pub accuracy: f64,
    /// Its standard deviation over the folds (numpy's, ddof 0).
    pub std: f64,
    /// Mean of the per-fold best thresholds.
    pub threshold: f64,
}

fn accuracy_at(threshold: f32, dist: &[f32], issame: &[bool], idx: &[usize]) -> f64 {
    let correct = idx
        .iter()
        .filter(|&&i| (dist[i] < threshold) == issame[i])
        .count();
    correct as f64 / idx.len() as f64
}

/// insightface's `calculate_roc` accuracy: `folds` contiguous folds (sklearn `KFold`
/// without shuffling), the best threshold on the training folds scored on the test fold.
pub fn verify(dist: &[f32], issame: &[bool], folds: usize) -> Verification {
    assert_eq!(dist.len(), issame.len());
    let n = dist.len();
    let thresholds = thresholds();
    let (base, extra) = (n / folds, n % folds);
    let mut accs = Vec::with_capacity(folds);
    let mut best = Vec::with_capacity(folds);
    let mut start = 0;
    for f in 0..folds {
        let size = base + usize::from(f < extra);
        let test: Vec<usize> = (start..start + size).collect();
        let train: Vec<usize> = (0..start).chain(start + size..n).collect();
        start += size;
        // First maximum, as np.argmax.
        let mut best_t = thresholds[0];
        let mut best_acc = f64::MIN;
        for &t in &thresholds {
            let a = accuracy_at(t, dist, issame, &train);
            if a > best_acc {
                best_acc = a;
                best_t = t;
            }
        }
        accs.push(accuracy_at(best_t, dist, issame, &test));
        best.push(best_t as f64);
    }
    let mean = accs.iter().sum::<f64>() / folds as f64;
    let var = accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / folds as f64;
    Verification {
        accuracy: mean,
        std: var.sqrt(),
        threshold: best.iter().sum::<f64>() / folds as f64,
    }
}

/// Squared L2 distances of consecutive embedding pairs (rows 2i and 2i+1), [N, D] -> [N/2].
pub fn pair_distances(embeddings: &Tensor) -> Vec<f32> {
    let d = embeddings.size()[1];
    let pairs = embeddings.view([-1, 2, d]);
    let diff = pairs.select(1, 0) - pairs.select(1, 1);
    Vec::<f32>::try_from(
        diff.square()
            .sum_dim_intlist(&[1i64][..], false, Kind::Float),
    )
    .unwrap()
}

/// Embeddings of `count` RGB8 112x112 images, in eval mode.
pub struct Embedded {
    /// L2-normalised embeddings [count, D] on the CPU.
    pub embeddings: Tensor,
    /// (gamma_local, gamma_global) per image [count, 2], under `lgf` fusion.
    pub gamma: Option<Tensor>,
}

/// Runs the model in eval mode in batches. With `flip`, the embedding is normalise(kappa(x)
/// + kappa(flip(x))) as in insightface's test; gamma is that of the unflipped image.
pub fn embed(
    model: &Lgaf,
    rgb: &[u8],
    count: usize,
    device: Device,
    batch_size: usize,
    flip: bool,
) -> Embedded {
    let per_image = IMAGE_SIZE * IMAGE_SIZE * 3;
    let mut embeddings = Vec::new();
    let mut gammas = Vec::new();
    tch::no_grad(|| {
        for start in (0..count).step_by(batch_size.max(1)) {
            let n = batch_size.min(count - start);
            let bytes = &rgb[start * per_image..(start + n) * per_image];
            let images = images_to_tensor(bytes, n, IMAGE_SIZE, device);
            let out = model.forward_t(&images, false);
            let mut kappa = out.kappa;
            if flip {
                kappa += model.forward_t(&images.flip([3]), false).kappa;
            }
            embeddings.push(normalize(&kappa).to_device(Device::Cpu));
            if let Some(g) = out.gamma {
                gammas.push(g.to_device(Device::Cpu));
            }
        }
    });
    Embedded {
        embeddings: Tensor::cat(&embeddings, 0),
        gamma: (!gammas.is_empty()).then(|| Tensor::cat(&gammas, 0)),
    }
}

/// Verification of pairs with one nuisance factor, and the mean attention weights on them.
#[derive(Clone, Debug)]
pub struct FactorReport {
    pub factor: Factor,
    pub verification: Verification,
    /// Mean (gamma_local, gamma_global), under `lgf` fusion.
    pub gamma: Option<(f64, f64)>,
}

/// Verification on held-out synthetic identities, overall and per nuisance factor.
#[derive(Clone, Debug)]
pub struct SynthReport {
    pub overall: Verification,
    pub per_factor: Vec<FactorReport>,
}

/// The held-out set: identities `first_id..first_id + identities`, never trained on.
pub struct HeldOut {
    pub synth: SynthConfig,
    pub first_id: u32,
    pub identities: u32,
    pub pairs: usize,
}

impl HeldOut {
    fn run(
        &self,
        model: &Lgaf,
        device: Device,
        factor: Option<Factor>,
    ) -> (Verification, Option<(f64, f64)>) {
        let seed = self.synth.seed ^ 0x5eed_e7a1;
        let set = verification_pairs(
            &self.synth,
            self.first_id,
            self.identities,
            self.pairs,
            factor,
            seed,
        );
        let rgb: Vec<u8> = set
            .images
            .iter()
            .flat_map(|s| s.rgb.iter().copied())
            .collect();
        let out = embed(model, &rgb, set.images.len(), device, 64, true);
        let v = verify(&pair_distances(&out.embeddings), &set.issame, 10);
        let gamma = out.gamma.map(|g| {
            let m = Vec::<f64>::try_from(g.to_kind(Kind::Double).mean_dim(
                &[0i64][..],
                false,
                None::<Kind>,
            ))
            .unwrap();
            (m[0], m[1])
        });
        (v, gamma)
    }

    /// Accuracy on pairs with mixed nuisance factors.
    pub fn verify(&self, model: &Lgaf, device: Device) -> Verification {
        self.run(model, device, None).0
    }

    /// The mixed set plus one set per factor.
    pub fn report(&self, model: &Lgaf, device: Device) -> SynthReport {
        SynthReport {
            overall: self.verify(model, device),
            per_factor: Factor::ALL
                .iter()
                .map(|&factor| {
                    let (verification, gamma) = self.run(model, device, Some(factor));
                    FactorReport {
                        factor,
                        verification,
                        gamma,
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_distances_verify_perfectly() {
        let issame: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
        let dist: Vec<f32> = issame.iter().map(|&s| if s { 0.5 } else { 1.5 }).collect();
        let v = verify(&dist, &issame, 10);
        assert_eq!(v.accuracy, 1.0);
        assert_eq!(v.std, 0.0);
        // The first threshold that separates them: 0.51.
        assert!((v.threshold - 0.51).abs() < 1e-6, "{v:?}");
    }

    #[test]
    fn folds_are_contiguous_and_scored_on_held_out_data() {
        // 20 pairs, 10 folds of 2. Fold 0 holds the only two "hard" pairs: a same pair at
        // distance 3 and a different pair at distance 0.1. Trained on the other folds the
        // threshold lands between 1 and 2, so fold 0 scores 0/2, the other folds 2/2.
        let mut dist = vec![0.0f32; 20];
        let mut issame = vec![false; 20];
        for i in 0..20 {
            issame[i] = i % 2 == 0;
            dist[i] = if issame[i] { 1.0 } else { 2.0 };
        }
        dist[0] = 3.0;
        dist[1] = 0.1;
        let v = verify(&dist, &issame, 10);
        assert!((v.accuracy - 0.9).abs() < 1e-12, "{v:?}");
        assert!((v.std - 0.3).abs() < 1e-12, "{v:?}");
    }

    #[test]
    fn uneven_pair_counts_split_like_kfold() {
        // 23 pairs in 10 folds: sizes 3,3,3,2,...; all correct either way.
        let issame: Vec<bool> = (0..23).map(|i| i % 3 == 0).collect();
        let dist: Vec<f32> = issame.iter().map(|&s| if s { 0.2 } else { 2.2 }).collect();
        assert_eq!(verify(&dist, &issame, 10).accuracy, 1.0);
    }

    #[test]
    fn pair_distances_are_squared_l2() {
        let e = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 0.6, 0.8, 0.6, 0.8]).view([4, 2]);
        let d = pair_distances(&e);
        assert!((d[0] - 2.0).abs() < 1e-6 && d[1].abs() < 1e-6, "{d:?}");
    }
}
