//! Evaluation: embedding extraction (here, with tch) and insightface's
//! verification protocol (in `lgaf-eval`, which holds the metric itself).

use lgaf_data::synth::{verification_pairs, Factor, SynthConfig, IMAGE_SIZE};
use lgaf_eval::verification::{accuracy, FOLDS};
use lgaf_model::partial_fc::normalize;
use lgaf_model::Lgaf;
use tch::{Device, Kind, Tensor};

use crate::device::images_to_tensor;

/// Cross-validated verification accuracy (mean, std and threshold over the
/// folds), as insightface reports it.
pub type Verification = lgaf_eval::verification::Accuracy;

/// Squared L2 distances between rows `2i` and `2i + 1` of [N, D] float
/// embeddings on the CPU, each row L2-normalised first (as insightface does).
fn pair_distances(embeddings: &Tensor) -> Result<Vec<f64>, lgaf_eval::Error> {
    let dim = embeddings.size()[1] as usize;
    let values = Vec::<f32>::try_from(embeddings.to_kind(Kind::Float).reshape([-1]))
        .expect("embeddings are a float tensor on the CPU");
    lgaf_eval::verification::pair_distances(&values, dim)
}

/// Embeddings of `count` RGB8 112x112 images, in eval mode.
pub struct Embedded {
    /// L2-normalised embeddings [count, D] on the CPU.
    pub embeddings: Tensor,
    /// (gamma_local, gamma_global) per image [count, 2], under `lgf` fusion.
    pub gamma: Option<Tensor>,
    /// (||local||, ||global||) per image [count, 2], under `lgf` fusion.
    pub norms: Option<Tensor>,
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
    let mut norms = Vec::new();
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
            if let Some(z) = out.norms {
                norms.push(z.to_device(Device::Cpu));
            }
        }
    });
    let joined = |parts: Vec<Tensor>| (!parts.is_empty()).then(|| Tensor::cat(&parts, 0));
    Embedded {
        embeddings: Tensor::cat(&embeddings, 0),
        gamma: joined(gammas),
        norms: joined(norms),
    }
}

/// How LGF weighted the branches on a set of images (the paper's Fig. 5 question: does the
/// local weight rise where the global feature's norm is low?).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attention {
    /// Mean (gamma_local, gamma_global).
    pub gamma: (f64, f64),
    /// Mean (||local||, ||global||), the norms the weights are computed from.
    pub norms: (f64, f64),
    /// Pearson correlation, over the images, of gamma_local with ||global||: negative when
    /// the local branch takes over as the global feature weakens. NaN when either is constant.
    pub local_weight_vs_global_norm: f64,
}

impl Attention {
    /// From per-image `gamma` and `norms`, each [N, 2].
    fn of(gamma: &Tensor, norms: &Tensor) -> Self {
        let columns = |t: &Tensor| -> (Vec<f64>, Vec<f64>) {
            let t = t.to_kind(Kind::Double);
            let column = |i: i64| Vec::<f64>::try_from(t.select(1, i)).expect("a CPU tensor");
            (column(0), column(1))
        };
        let (gamma_local, gamma_global) = columns(gamma);
        let (norm_local, norm_global) = columns(norms);
        Attention {
            gamma: (mean(&gamma_local), mean(&gamma_global)),
            norms: (mean(&norm_local), mean(&norm_global)),
            local_weight_vs_global_norm: pearson(&gamma_local, &norm_global),
        }
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The Pearson correlation of `x` and `y` (equal lengths); NaN when either does not vary.
fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// Verification of pairs with one nuisance factor, and the attention weights on them.
#[derive(Clone, Debug)]
pub struct FactorReport {
    pub factor: Factor,
    pub verification: Verification,
    /// Under `lgf` fusion.
    pub attention: Option<Attention>,
}

/// Verification on held-out synthetic identities, overall and per nuisance factor.
#[derive(Clone, Debug)]
pub struct SynthReport {
    /// The pairs of mixed factors.
    pub overall: Verification,
    /// The attention on the mixed pairs' images, under `lgf` fusion.
    pub overall_attention: Option<Attention>,
    pub per_factor: Vec<FactorReport>,
}

impl SynthReport {
    /// This report as an evaluation in the run's history, at `step`: the mixed pairs as
    /// `held-out`, and one set per nuisance factor with its attention weights.
    pub fn to_history(&self, step: u64) -> lgaf_store::history::Evaluation {
        use lgaf_store::history::{EvalSet, Evaluation};
        let set =
            |name: &str, factor: Option<&str>, v: &Verification, gamma: Option<(f64, f64)>| {
                EvalSet {
                    name: name.to_string(),
                    factor: factor.map(str::to_string),
                    pairs: None,
                    accuracy: v.accuracy,
                    std: v.std,
                    threshold: v.threshold,
                    tar_at_far: None,
                    gamma_local: gamma.map(|g| g.0),
                    gamma_global: gamma.map(|g| g.1),
                }
            };
        let mut sets = vec![set("held-out", None, &self.overall, None)];
        sets.extend(self.per_factor.iter().map(|f| {
            let name = format!("held-out {}", f.factor.name());
            set(
                &name,
                Some(f.factor.name()),
                &f.verification,
                f.attention.map(|a| a.gamma),
            )
        }));
        Evaluation {
            step,
            sets,
            time: lgaf_store::history::now(),
        }
    }
}

/// The held-out set: identities `first_id..first_id + identities`, never trained on.
pub struct HeldOut {
    pub synth: SynthConfig,
    pub first_id: u32,
    pub identities: u32,
    pub pairs: usize,
}

impl HeldOut {
    /// The held-out identities of a run of `cfg`: those right after its synthetic training
    /// identities.
    pub fn of(cfg: &crate::TrainConfig) -> Self {
        HeldOut {
            synth: crate::loader::synth_config(&cfg.data.synthetic),
            first_id: cfg.data.synthetic.identities as u32,
            identities: cfg.eval.identities,
            pairs: cfg.eval.pairs,
        }
    }

    fn run(
        &self,
        model: &Lgaf,
        device: Device,
        factor: Option<Factor>,
    ) -> (Verification, Option<Attention>) {
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
        // Two images per pair, and the config asks for at least 20 pairs.
        let v = pair_distances(&out.embeddings)
            .and_then(|distances| accuracy(&distances, &set.issame, FOLDS))
            .unwrap_or_else(|e| panic!("held-out verification of {} pairs: {e}", self.pairs));
        let attention = match (&out.gamma, &out.norms) {
            (Some(gamma), Some(norms)) => Some(Attention::of(gamma, norms)),
            _ => None,
        };
        (v, attention)
    }

    /// Accuracy on pairs with mixed nuisance factors.
    ///
    /// # Panics
    /// With fewer pairs than the 10 folds (the config asks for at least 20).
    pub fn verify(&self, model: &Lgaf, device: Device) -> Verification {
        self.run(model, device, None).0
    }

    /// The mixed set plus one set per factor.
    ///
    /// # Panics
    /// As [`HeldOut::verify`].
    pub fn report(&self, model: &Lgaf, device: Device) -> SynthReport {
        let (overall, overall_attention) = self.run(model, device, None);
        SynthReport {
            overall,
            overall_attention,
            per_factor: Factor::ALL
                .iter()
                .map(|&factor| {
                    let (verification, attention) = self.run(model, device, Some(factor));
                    FactorReport {
                        factor,
                        verification,
                        attention,
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
    fn attention_means_and_correlation() {
        // gamma_local falls as ||global|| rises: r = -1.
        let gamma = Tensor::from_slice(&[0.6f32, 0.4, 0.5, 0.5, 0.4, 0.6]).view([3, 2]);
        let norms = Tensor::from_slice(&[10.0f32, 1.0, 10.0, 2.0, 10.0, 3.0]).view([3, 2]);
        let a = Attention::of(&gamma, &norms);
        assert!((a.gamma.0 - 0.5).abs() < 1e-6 && (a.gamma.1 - 0.5).abs() < 1e-6);
        assert!((a.norms.0 - 10.0).abs() < 1e-6 && (a.norms.1 - 2.0).abs() < 1e-6);
        assert!((a.local_weight_vs_global_norm + 1.0).abs() < 1e-6);
        // A constant has no correlation.
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
    }

    #[test]
    fn pair_distances_are_squared_l2_of_normalised_rows() {
        // (1, 0) vs (0, 2): unit vectors at right angles; (0.6, 0.8) vs (3, 4): equal directions.
        let e = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0, 0.6, 0.8, 3.0, 4.0]).view([4, 2]);
        let d = pair_distances(&e).unwrap();
        assert!((d[0] - 2.0).abs() < 1e-12 && d[1].abs() < 1e-12, "{d:?}");
    }
}
