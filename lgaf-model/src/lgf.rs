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
        Fused { kappa, gamma }
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
