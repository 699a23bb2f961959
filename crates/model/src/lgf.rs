//! LGF, the Local and Global Feature Fusion (paper sec. 3.2, eq. 4-10; spec section 2).
//!
//! The feature norm is the quality proxy: each sample's local and global norms are
//! standardised by EMA statistics of the *global* batch, squashed to [0, 2], and turned
//! into attention weights that sum to one.

use std::sync::Arc;

use tch::nn;
use tch::{Kind, Tensor};

use crate::collective::{Collective, SingleProcess};
use crate::config::LgfConfig;

/// Initial EMA mean of the norms, order (local, global).
pub const INIT_NORM_MEAN: f64 = 20.0;
/// Initial EMA std of the norms.
pub const INIT_NORM_STD: f64 = 100.0;
const STD_EPS: f64 = 1e-3;

/// The fused embedding and the attention weights that made it.
#[derive(Debug)]
pub struct Fused {
    /// kappa = gamma_l * local + gamma_g * global, [B, D].
    pub kappa: Tensor,
    /// [B, 2]: (gamma_local, gamma_global) per sample.
    pub gamma: Tensor,
    /// [B, 2]: (Z_local, Z_global), the feature norms the weights came from; detached.
    pub norms: Tensor,
}

pub struct Lgf {
    /// EMA mean of (Z_local, Z_global); buffer `lgf.norm_mean`.
    pub norm_mean: Tensor,
    /// EMA std of (Z_local, Z_global); buffer `lgf.norm_std`.
    pub norm_std: Tensor,
    cfg: LgfConfig,
    sync: Arc<dyn Collective>,
}

impl std::fmt::Debug for Lgf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lgf").field("cfg", &self.cfg).finish()
    }
}

impl Lgf {
    pub fn new(p: nn::Path, cfg: &LgfConfig) -> Self {
        let dev = p.device();
        let norm_mean = p.add(
            "norm_mean",
            Tensor::full([2], INIT_NORM_MEAN, (Kind::Float, dev)),
            false,
        );
        let norm_std = p.add(
            "norm_std",
            Tensor::full([2], INIT_NORM_STD, (Kind::Float, dev)),
            false,
        );
        Self {
            norm_mean,
            norm_std,
            cfg: cfg.clone(),
            sync: Arc::new(SingleProcess),
        }
    }

    /// Installs the cross-rank reduction (the distributed worker's all-reduce), so every
    /// rank updates its buffers from the global batch and all ranks hold identical buffers.
    pub fn set_collective(&mut self, sync: Arc<dyn Collective>) {
        self.sync = sync;
    }

    /// Fuses local and global features. In training the EMA buffers are first updated from
    /// this (global) batch; in eval they are only read.
    pub fn forward_t(&self, local: &Tensor, global: &Tensor, train: bool) -> Fused {
        let local = local.to_kind(Kind::Float);
        let global = global.to_kind(Kind::Float);
        let mut norms = Tensor::stack(
            &[
                local.norm_scalaropt_dim(2.0, &[1i64][..], false),
                global.norm_scalaropt_dim(2.0, &[1i64][..], false),
            ],
            1,
        );
        if !self.cfg.norm_grad {
            norms = norms.detach();
        }
        if train {
            self.update_statistics(&norms);
        }
        let gamma = self.attention(&norms);
        let kappa =
            gamma.select(1, 0).unsqueeze(1) * &local + gamma.select(1, 1).unsqueeze(1) * &global;
        Fused {
            kappa,
            gamma,
            norms: norms.detach(),
        }
    }

    /// Eq. 6 and 9: norms [B, 2] -> attention weights [B, 2] that sum to 1 per row.
    pub fn attention(&self, norms: &Tensor) -> Tensor {
        let mean = self.norm_mean.detach().unsqueeze(0);
        let std = self.norm_std.detach().unsqueeze(0);
        let z_hat = ((norms - mean) * self.cfg.h / (std + STD_EPS)).clamp(-1.0, 1.0) + 1.0;
        let total = z_hat.sum_dim_intlist(&[1i64][..], true, None::<Kind>);
        let positive = total.gt(0.0);
        // A safe denominator keeps the unused branch of `where` free of NaN gradients.
        let safe_total = total.where_self(&positive, &total.ones_like());
        let gamma = z_hat / safe_total;
        gamma.where_self(&positive, &gamma.full_like(0.5))
    }

    /// Eq. 7 and 8 from the global batch: count, sums and sums of squares are reduced over
    /// ranks, then mean and unbiased std update the buffers by EMA, computed in float64.
    fn update_statistics(&self, norms: &Tensor) {
        tch::no_grad(|| {
            let z = norms.detach().to_kind(Kind::Double);
            let count = Tensor::full([1], z.size()[0] as f64, (Kind::Double, z.device()));
            let sums = z.sum_dim_intlist(&[0i64][..], false, None::<Kind>);
            let sumsq = z.square().sum_dim_intlist(&[0i64][..], false, None::<Kind>);
            // [count, sum_l, sumsq_l, sum_g, sumsq_g]
            let stats = Tensor::cat(
                &[
                    count,
                    Tensor::stack(&[sums.get(0), sumsq.get(0), sums.get(1), sumsq.get(1)], 0),
                ],
                0,
            );
            let stats = self.sync.all_reduce_sum(&stats).to_device(z.device());
            let n = stats.get(0);
            let sum = Tensor::stack(&[stats.get(1), stats.get(3)], 0);
            let sumsq = Tensor::stack(&[stats.get(2), stats.get(4)], 0);
            let mean = &sum / &n;
            // Unbiased variance; one sample carries no spread, so the std is then kept.
            let var = ((&sumsq - &n * mean.square()) / (&n - 1.0).clamp_min(1.0)).clamp_min(0.0);
            let has_spread = n.gt(1.0);
            let alpha = self.cfg.alpha;
            let old_mean = self.norm_mean.to_kind(Kind::Double);
            let old_std = self.norm_std.to_kind(Kind::Double);
            let new_mean = &mean * alpha + &old_mean * (1.0 - alpha);
            let new_std =
                (var.sqrt() * alpha + &old_std * (1.0 - alpha)).where_self(&has_spread, &old_std);
            self.norm_mean
                .shallow_clone()
                .copy_(&new_mean.to_kind(Kind::Float));
            self.norm_std
                .shallow_clone()
                .copy_(&new_std.to_kind(Kind::Float));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::Device;

    fn lgf(norm_grad: bool) -> (VarStore, Lgf) {
        let vs = VarStore::new(Device::Cpu);
        let cfg = LgfConfig {
            norm_grad,
            ..Default::default()
        };
        let lgf = Lgf::new(vs.root() / "lgf", &cfg);
        (vs, lgf)
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    fn set(t: &Tensor, v: [f32; 2]) {
        tch::no_grad(|| t.shallow_clone().copy_(&Tensor::from_slice(&v)));
    }

    #[test]
    fn attention_matches_hand_computed_values() {
        let (_vs, lgf) = lgf(false);
        // Buffers (20, 20) and (100, 100); h = 0.333.
        let norms = Tensor::from_slice(&[
            20.0f32, 20.0, // both at the mean: z_hat (1, 1)
            320.5, 20.0, // local 3 std above: 0.333*300.5/100.001 = 1.00066 -> clipped at 2
            70.0, 20.0, // 0.333*50/100.001 = 0.166498 -> (1.166498, 1)
            20.0, -1000.0, // global far below: clipped at 0 -> (1, 0)
        ])
        .view([4, 2]);
        let gamma = values(&lgf.attention(&norms));
        let zl = 1.0 + 0.333 * 50.0 / 100.001;
        let expected = [
            0.5,
            0.5,
            2.0 / 3.0,
            1.0 / 3.0,
            zl / (zl + 1.0),
            1.0 / (zl + 1.0),
            1.0,
            0.0,
        ];
        for (g, e) in gamma.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{gamma:?} vs {expected:?}");
        }
    }

    #[test]
    fn zero_sum_gives_equal_weights_and_finite_gradients() {
        let (_vs, lgf) = lgf(true);
        set(&lgf.norm_mean, [500.0, 500.0]);
        // Both norms far below the mean: z_hat = (0, 0).
        let norms = Tensor::from_slice(&[1.0f32, 2.0])
            .view([1, 2])
            .set_requires_grad(true);
        let gamma = lgf.attention(&norms);
        assert_eq!(values(&gamma), vec![0.5, 0.5]);
        gamma.select(1, 0).sum(Kind::Float).backward();
        assert!(values(&norms.grad()).iter().all(|g| g.is_finite()));
    }

    #[test]
    fn training_updates_the_ema_from_the_batch_before_use() {
        let (_vs, lgf) = lgf(false);
        // Local rows have norms 3 and 4 (vectors (3,0), (0,4)); global rows 6 and 8.
        let local = Tensor::from_slice(&[3.0f32, 0.0, 0.0, 4.0]).view([2, 2]);
        let global = Tensor::from_slice(&[6.0f32, 0.0, 0.0, 8.0]).view([2, 2]);
        let fused = lgf.forward_t(&local, &global, true);
        // mean_l = 3.5, std_l = sqrt(((3-3.5)^2+(4-3.5)^2)/1) = 0.70711; global 7 and 1.41421.
        let expect_mean = [0.01 * 3.5 + 0.99 * 20.0, 0.01 * 7.0 + 0.99 * 20.0];
        let expect_std = [
            0.01 * 0.5f64.sqrt() + 0.99 * 100.0,
            0.01 * 2.0f64.sqrt() + 0.99 * 100.0,
        ];
        for (got, want) in values(&lgf.norm_mean).iter().zip(expect_mean) {
            assert!((got - want).abs() < 1e-5, "mean {got} vs {want}");
        }
        for (got, want) in values(&lgf.norm_std).iter().zip(expect_std) {
            assert!((got - want).abs() < 1e-4, "std {got} vs {want}");
        }
        // The weights were computed with the *updated* buffers.
        let norms = Tensor::from_slice(&[3.0f32, 6.0, 4.0, 8.0]).view([2, 2]);
        assert!(fused
            .gamma
            .allclose(&lgf.attention(&norms), 1e-6, 1e-7, false));
        let with_initial = {
            let (_vs, fresh) = super::tests::lgf(false);
            fresh.attention(&norms)
        };
        assert!(!fused.gamma.allclose(&with_initial, 1e-6, 1e-7, false));
        // kappa = gamma_l * local + gamma_g * global.
        let g = values(&fused.gamma);
        let k = values(&fused.kappa);
        assert!((k[0] - (g[0] * 3.0 + g[1] * 6.0)).abs() < 1e-5);
        assert!((k[3] - (g[2] * 4.0 + g[3] * 8.0)).abs() < 1e-5);
    }

    #[test]
    fn eval_mode_reads_but_never_updates_the_buffers() {
        let (_vs, lgf) = lgf(false);
        let local = Tensor::randn([8, 16], (Kind::Float, Device::Cpu));
        let global = Tensor::randn([8, 16], (Kind::Float, Device::Cpu));
        let _ = lgf.forward_t(&local, &global, false);
        assert_eq!(values(&lgf.norm_mean), vec![20.0, 20.0]);
        assert_eq!(values(&lgf.norm_std), vec![100.0, 100.0]);
    }

    #[test]
    fn a_single_sample_keeps_the_std() {
        let (_vs, lgf) = lgf(false);
        let x = Tensor::ones([1, 4], (Kind::Float, Device::Cpu));
        let _ = lgf.forward_t(&x, &x, true);
        assert_eq!(values(&lgf.norm_std), vec![100.0, 100.0]);
        assert!((values(&lgf.norm_mean)[0] - (0.01 * 2.0 + 0.99 * 20.0)).abs() < 1e-5);
    }

    #[test]
    fn detaching_the_norms_changes_the_gradient() {
        let grad_of = |norm_grad: bool| {
            let (_vs, lgf) = lgf(norm_grad);
            // Centre the statistics near these norms so nothing is clipped.
            set(&lgf.norm_mean, [5.0, 5.0]);
            set(&lgf.norm_std, [2.0, 2.0]);
            let local = Tensor::from_slice(&[3.0f32, 4.0])
                .view([1, 2])
                .set_requires_grad(true);
            let global = Tensor::from_slice(&[6.0f32, 0.0]).view([1, 2]);
            let fused = lgf.forward_t(&local, &global, false);
            fused.kappa.sum(Kind::Float).backward();
            (values(&local.grad()), values(&fused.gamma)[0])
        };
        let (detached, gamma_l) = grad_of(false);
        let (through, _) = grad_of(true);
        // Detached: d(sum kappa)/d local = gamma_l exactly.
        assert!(
            detached.iter().all(|g| (g - gamma_l).abs() < 1e-6),
            "{detached:?}"
        );
        assert!(
            detached
                .iter()
                .zip(&through)
                .any(|(a, b)| (a - b).abs() > 1e-4),
            "{detached:?} vs {through:?}"
        );
    }
}
