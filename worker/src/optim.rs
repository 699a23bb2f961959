//! SGD with momentum and weight decay (PyTorch's update rule), the step-decay learning-rate
//! schedule with optional linear warm-up, and gradient-norm clipping.

use tch::{Device, Kind, Tensor};

use crate::config::OptimConfig;

/// Elements per row of the gradient norm's two-stage reduction (see `Sgd::grad_norm`).
const NORM_ROW: i64 = 1 << 15;

/// `g += wd * w; m = mu * m + g; w -= lr * m`, with momentum buffers we own so they can be
/// checkpointed.
///
/// The parameters, their gradients and their momentum each live in one flat buffer, and
/// every parameter (and its `.grad()`) is a view into it. An update is then five in-place
/// kernels over three buffers, and the gradient norm one reduction, whatever the number of
/// parameters: PyTorch reaches the same with its `_foreach_` kernels, which tch does not
/// expose. A per-parameter loop costs a kernel launch per operation and parameter (about
/// 2,500 for LGAF-r100 on a GPU) and a temporary per operation.
pub struct Sgd {
    names: Vec<String>,
    /// The model's parameters, each a view into `flat_params` (their `.grad()` into
    /// `flat_grads`).
    params: Vec<Tensor>,
    /// Views into `flat_momentum`, one per parameter.
    momentum: Vec<Tensor>,
    /// Where each parameter starts in the flat buffers, in elements.
    offsets: Vec<i64>,
    flat_params: Tensor,
    flat_grads: Tensor,
    flat_momentum: Tensor,
    mu: f64,
    weight_decay: f64,
}

impl Sgd {
    /// `named`: the trainable parameters, named so their momentum can be checkpointed;
    /// fp32 on one device (the model's). Moves their values into the flat buffer (the
    /// tensors keep their identity, shapes and strides) and gives every parameter a
    /// gradient there, zero until the first backward pass.
    pub fn new(named: Vec<(String, Tensor)>, mu: f64, weight_decay: f64) -> Self {
        let (names, params): (Vec<String>, Vec<Tensor>) = named.into_iter().unzip();
        let device = params.first().map_or(Device::Cpu, Tensor::device);
        for (name, p) in names.iter().zip(&params) {
            assert!(
                p.kind() == Kind::Float && p.device() == device,
                "parameter `{name}` is {:?} on {:?}; the optimiser holds fp32 parameters on \
                 one device ({device:?})",
                p.kind(),
                p.device()
            );
        }
        let used: i64 = params.iter().map(|p| p.numel() as i64).sum();
        // Zeros after the last parameter fill the last row of `grad_norm`'s view.
        let total = (used.max(1) + NORM_ROW - 1) / NORM_ROW * NORM_ROW;
        let options = (Kind::Float, device);
        let flat_params = Tensor::zeros([total], options);
        let flat_grads = Tensor::zeros([total], options);
        let flat_momentum = Tensor::zeros([total], options);
        let mut momentum = Vec::with_capacity(params.len());
        let mut offsets = Vec::with_capacity(params.len());
        let mut grad_views = Vec::with_capacity(params.len());
        let mut offset = 0;
        tch::no_grad(|| {
            for p in &params {
                let (size, strides) = (p.size(), dense_strides(p));
                let at =
                    |flat: &Tensor| flat.as_strided(size.as_slice(), strides.as_slice(), offset);
                let view = at(&flat_params);
                view.shallow_clone().copy_(p);
                p.shallow_clone().set_data(&view);
                momentum.push(at(&flat_momentum));
                grad_views.push(at(&flat_grads));
                offsets.push(offset);
                offset += p.numel() as i64;
            }
        });
        bind_grads(&params, &grad_views);
        let _ = flat_grads.shallow_clone().zero_();
        Self {
            names,
            params,
            momentum,
            offsets,
            flat_params,
            flat_grads,
            flat_momentum,
            mu,
            weight_decay,
        }
    }

    /// Every parameter's gradient, back to back in parameter order (fp32, 1-D; zeros
    /// after the last, to a multiple of 32,768): the buffer the backward pass
    /// accumulates into.
    pub fn flat_grads(&self) -> &Tensor {
        &self.flat_grads
    }

    /// Momentum buffers by parameter name.
    pub fn named_momentum(&self) -> Vec<(String, Tensor)> {
        self.names
            .iter()
            .cloned()
            .zip(self.momentum.iter().map(|m| m.shallow_clone()))
            .collect()
    }

    /// Global L2 norm of the gradients.
    pub fn grad_norm(&self) -> f64 {
        // Rows of NORM_ROW: each row is summed by one thread, so the norm, and with it
        // the clipping, is the same whatever the number of threads (one reduction over the
        // whole buffer splits it by thread count, and its rounding with it).
        self.flat_grads
            .view([-1, NORM_ROW])
            .norm_scalaropt_dim(2.0, [1i64], false)
            .norm()
            .double_value(&[])
    }

    /// One update. `grad_multiplier` scales the raw gradients first (loss-scale undo and
    /// clipping folded into one factor). The gradients are spent: they hold the update's
    /// direction afterwards, until `zero_grad`.
    pub fn step(&mut self, lr: f64, grad_multiplier: f64) {
        self.check_bound();
        let device = self.flat_params.device();
        // 0-dim factors made on the device, so `addcmul_` scales without a temporary.
        let scalar = |v: f64| Tensor::full([0i64; 0], v, (Kind::Float, device));
        tch::no_grad(|| {
            let g = &mut self.flat_grads;
            let _ = g.g_mul_scalar_(grad_multiplier);
            let _ = g.addcmul_(&self.flat_params, &scalar(self.weight_decay));
            let _ = self.flat_momentum.g_mul_scalar_(self.mu).g_add_(g);
            let _ = self.flat_params.addcmul_(&self.flat_momentum, &scalar(-lr));
        });
    }

    /// Panics, naming the parameter, if a parameter or its gradient is no longer the view
    /// of the flat buffers this optimiser updates: something replaced its tensor after
    /// `Sgd::new` (a `set_data`, a kind change), and the update would silently miss it.
    /// Pointers only, no kernels: about a microsecond per hundred parameters.
    fn check_bound(&self) {
        let (params, grads) = (self.flat_params.data_ptr(), self.flat_grads.data_ptr());
        for ((name, p), &offset) in self.names.iter().zip(&self.params).zip(&self.offsets) {
            let at = |base: *mut std::ffi::c_void| base as usize + offset as usize * 4;
            assert!(
                p.data_ptr() as usize == at(params) && p.grad().data_ptr() as usize == at(grads),
                "parameter `{name}` (or its gradient) was replaced after the optimiser took it \
                 into its flat buffer; load values with copy_ instead"
            );
        }
    }

    pub fn zero_grad(&mut self) {
        let _ = self.flat_grads.zero_();
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

/// The strides `p` keeps inside the flat buffer: its own when it is dense (contiguous in
/// some order of its dimensions, as a channels-last weight is), else the contiguous ones.
fn dense_strides(p: &Tensor) -> Vec<i64> {
    let (size, stride) = (p.size(), p.stride());
    let mut dims: Vec<usize> = (0..size.len()).collect();
    dims.sort_by_key(|&d| std::cmp::Reverse(stride[d]));
    let mut expected = 1;
    let dense = dims.iter().rev().all(|&d| {
        let ok = size[d] == 1 || stride[d] == expected;
        expected *= size[d];
        ok
    });
    if dense {
        return stride;
    }
    let mut contiguous = vec![1; size.len()];
    for d in (0..size.len().saturating_sub(1)).rev() {
        contiguous[d] = contiguous[d + 1] * size[d + 1];
    }
    contiguous
}

/// Makes each parameter's `.grad()` the matching view of the flat gradient buffer. tch
/// cannot assign `.grad`, so a backward pass through every parameter creates the gradient
/// tensors, and `set_` re-points each one's storage into the buffer. Autograd then
/// accumulates into them in place (it replaces a gradient only when there is none).
fn bind_grads(params: &[Tensor], views: &[Tensor]) {
    if params.is_empty() {
        return;
    }
    let touch: Vec<Tensor> = params.iter().map(|p| p.sum(Kind::Float)).collect();
    Tensor::stack(&touch, 0).sum(Kind::Float).backward();
    tch::no_grad(|| {
        for (p, view) in params.iter().zip(views) {
            let mut grad = p.grad();
            let _ = grad.set_source_tensor_(view);
            assert_eq!(
                p.grad().data_ptr(),
                view.data_ptr(),
                "a parameter's gradient did not move into the optimiser's flat buffer"
            );
        }
    });
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
    use tch::Device;

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

    /// Parameters of several shapes (one channels-last), their gradients from two
    /// backward passes, against the per-parameter rule computed by hand.
    #[test]
    fn the_flat_update_is_the_per_parameter_rule() {
        let nhwc = Tensor::arange(24, (Kind::Float, Device::Cpu))
            .view([2, 2, 3, 2])
            .permute([0, 3, 1, 2])
            / 10.0;
        let params = [
            Tensor::from_slice(&[1.0f32, -2.0, 0.5]).view([3, 1]),
            nhwc,
            Tensor::from_slice(&[3.0f32]),
        ]
        .map(|t| t.set_requires_grad(true));
        let before: Vec<Tensor> = params.iter().map(|p| p.detach().copy()).collect();
        let strides_before: Vec<Vec<i64>> = params.iter().map(|p| p.stride()).collect();
        let named = params
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("p{i}"), p.shallow_clone()))
            .collect();
        let mut sgd = Sgd::new(named, 0.9, 0.01);
        for (p, (b, s)) in params.iter().zip(before.iter().zip(&strides_before)) {
            assert!(p.equal(b), "moving into the buffer changed a value");
            assert_eq!(&p.stride(), s, "moving into the buffer changed the layout");
            assert!(p.grad().defined() && p.grad().abs().sum(Kind::Float).double_value(&[]) == 0.0);
        }
        let (lr, mult) = (0.5, 0.8);
        let mut expected: Vec<Tensor> = before.iter().map(Tensor::copy).collect();
        let mut momentum: Vec<Tensor> = before.iter().map(Tensor::zeros_like).collect();
        for _ in 0..2 {
            sgd.zero_grad();
            // Two backward passes per step: the gradients accumulate in the buffer.
            for _ in 0..2 {
                let loss: Vec<Tensor> = params.iter().map(|p| (p * p).sum(Kind::Float)).collect();
                Tensor::stack(&loss, 0).sum(Kind::Float).backward();
            }
            let mut offset = 0;
            for p in &params {
                let grad = sgd.flat_grads().narrow(0, offset, p.numel() as i64);
                assert_eq!(p.grad().data_ptr(), grad.data_ptr());
                offset += p.numel() as i64;
            }
            let by_hand = params
                .iter()
                .map(|p| p.grad().square().sum(Kind::Float).double_value(&[]))
                .sum::<f64>()
                .sqrt();
            assert!((sgd.grad_norm() - by_hand).abs() < 1e-5 * by_hand);
            for (e, m) in expected.iter_mut().zip(momentum.iter_mut()) {
                let g = &*e * 4.0 * mult + &*e * 0.01;
                *m = &*m * 0.9 + g;
                *e = &*e - &*m * lr;
            }
            sgd.step(lr, mult);
        }
        for (p, e) in params.iter().zip(&expected) {
            let diff = (p.detach() - e).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{p:?} vs {e:?}: {diff}");
        }
        let norm = sgd.grad_norm();
        assert!(
            norm > 0.0,
            "the gradients are spent into the update, not cleared"
        );
    }

    #[test]
    #[should_panic(expected = "parameter `w` (or its gradient) was replaced")]
    fn a_parameter_replaced_after_new_is_refused() {
        let w = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut sgd = Sgd::new(vec![("w".into(), w.shallow_clone())], 0.9, 0.0);
        tch::no_grad(|| {
            w.shallow_clone()
                .set_data(&Tensor::from_slice(&[3.0f32, 4.0]))
        });
        sgd.step(0.1, 1.0);
    }

    #[test]
    fn clipping_scales_down_only_large_norms() {
        assert_eq!(clip_factor(3.0, 5.0), 1.0);
        assert!((clip_factor(10.0, 5.0) - 0.5).abs() < 1e-6);
        assert_eq!(clip_factor(10.0, 0.0), 1.0);
    }
}
