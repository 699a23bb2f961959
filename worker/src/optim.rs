//! SGD with momentum and weight decay (PyTorch's update rule), the step-decay learning-rate
//! schedule with optional linear warm-up, and gradient-norm clipping.

use tch::{Kind, Tensor};

use crate::config::OptimConfig;

/// `g += wd * w; m = mu * m + g; w -= lr * m`, with momentum buffers we own so they can be
/// checkpointed.
pub struct Sgd {
    names: Vec<String>,
    params: Vec<Tensor>,
    momentum: Vec<Tensor>,
    mu: f64,
    weight_decay: f64,
}

impl Sgd {
    /// `named`: the trainable parameters, named so their momentum can be checkpointed.
    pub fn new(named: Vec<(String, Tensor)>, mu: f64, weight_decay: f64) -> Self {
        let (names, params): (Vec<String>, Vec<Tensor>) = named.into_iter().unzip();
        let momentum = params.iter().map(|p| p.zeros_like()).collect();
        Self {
            names,
            params,
            momentum,
            mu,
            weight_decay,
        }
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Momentum buffers by parameter name.
    pub fn named_momentum(&self) -> Vec<(String, Tensor)> {
        self.names
            .iter()
            .cloned()
            .zip(self.momentum.iter().map(|m| m.shallow_clone()))
            .collect()
    }

    pub fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|p| p.grad()).collect()
    }

    /// Global L2 norm of the gradients.
    pub fn grad_norm(&self) -> f64 {
        let squares: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float))
            .collect();
        if squares.is_empty() {
            return 0.0;
        }
        Tensor::stack(&squares, 0)
            .sum(Kind::Float)
            .sqrt()
            .double_value(&[])
    }

    /// One update. `grad_multiplier` scales the raw gradients first (loss-scale undo and
    /// clipping folded into one factor).
    pub fn step(&mut self, lr: f64, grad_multiplier: f64) {
        tch::no_grad(|| {
            for (p, m) in self.params.iter().zip(self.momentum.iter_mut()) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let d = g * grad_multiplier + p * self.weight_decay;
                let _ = m.g_mul_scalar_(self.mu).g_add_(&d);
                let _ = p.shallow_clone().g_sub_(&(&*m * lr));
            }
        });
    }

    pub fn zero_grad(&mut self) {
        for p in self.params.iter_mut() {
            p.zero_grad();
        }
    }

    /// Restores momentum buffers by name (resume); every parameter must have one.
    pub fn load_momentum(
        &mut self,
        saved: &std::collections::HashMap<String, Tensor>,
    ) -> Result<(), MomentumMismatch> {
        for (name, m) in self.names.iter().zip(self.momentum.iter_mut()) {
            let b = saved
                .get(name)
                .ok_or_else(|| MomentumMismatch::Missing { name: name.clone() })?;
            if b.size() != m.size() {
                return Err(MomentumMismatch::Shape {
                    name: name.clone(),
                    saved: b.size(),
                    expected: m.size(),
                });
            }
            tch::no_grad(|| m.copy_(b));
        }
        Ok(())
    }
}

/// Why saved momentum buffers do not fit the optimiser's parameters.
#[derive(Debug, thiserror::Error)]
pub enum MomentumMismatch {
    #[error("no momentum for `{name}`")]
    Missing { name: String },
    #[error("momentum of `{name}` has shape {saved:?}, expected {expected:?}")]
    Shape {
        name: String,
        saved: Vec<i64>,
        expected: Vec<i64>,
    },
}

/// Learning rate at a (fractional) epoch: warm-up, then x `lr_decay` at each of `lr_steps`.
pub fn learning_rate(cfg: &OptimConfig, epoch: f64) -> f64 {
    let decays = cfg.lr_steps.iter().filter(|&&e| epoch >= e).count() as i32;
    let lr = cfg.lr * cfg.lr_decay.powi(decays);
    if cfg.warmup_epochs > 0.0 && epoch < cfg.warmup_epochs {
        lr * epoch / cfg.warmup_epochs
    } else {
        lr
    }
}

/// The factor that brings a gradient of norm `norm` down to `max_norm` (1 when within it).
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_decays_at_the_milestones_after_warm_up() {
        let cfg = OptimConfig {
            warmup_epochs: 1.0,
            ..Default::default()
        };
        assert!((learning_rate(&cfg, 0.5) - 0.05).abs() < 1e-12);
        assert!((learning_rate(&cfg, 11.99) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&cfg, 12.0) - 0.01).abs() < 1e-12);
        assert!((learning_rate(&cfg, 20.5) - 0.001).abs() < 1e-12);
        assert!((learning_rate(&cfg, 25.0) - 0.0001).abs() < 1e-12);
    }

    #[test]
    fn sgd_matches_the_pytorch_rule_over_two_steps() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut sgd = Sgd::new(vec![("p".into(), p.shallow_clone())], 0.9, 0.1);
        for _ in 0..2 {
            sgd.zero_grad();
            (&p * &p).sum(Kind::Float).backward(); // grad = 2p
            sgd.step(0.5, 1.0);
        }
        // By hand: step 1: g = 2p + 0.1p = 2.1p; m = 2.1p; p1 = p - 0.5*2.1p = -0.05p.
        // step 2: g = 2.1*p1; m = 0.9*2.1p + 2.1*p1; p2 = p1 - 0.5*m.
        let check = |p0: f64| {
            let p1 = -0.05 * p0;
            let m = 0.9 * 2.1 * p0 + 2.1 * p1;
            p1 - 0.5 * m
        };
        let got = Vec::<f32>::try_from(p.detach()).unwrap();
        assert!((got[0] as f64 - check(1.0)).abs() < 1e-6, "{got:?}");
        assert!((got[1] as f64 - check(-2.0)).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn clipping_scales_down_only_large_norms() {
        assert_eq!(clip_factor(3.0, 5.0), 1.0);
        assert!((clip_factor(10.0, 5.0) - 0.5).abs() < 1e-6);
        assert_eq!(clip_factor(10.0, 0.0), 1.0);
    }
}
