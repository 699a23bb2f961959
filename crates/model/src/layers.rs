//! Layers with PyTorch's parameter and buffer names, so state dicts move unchanged.

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// `nn.BatchNorm{1,2}d` with PyTorch's `weight`, `bias`, `running_mean`, `running_var` and
/// `num_batches_tracked` (int64), momentum 0.1.
#[derive(Debug)]
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
    eps: f64,
}

impl BatchNorm {
    pub fn new(p: nn::Path, channels: i64, eps: f64) -> Self {
        Self::build(p, channels, eps, true)
    }

    /// insightface's `features` BatchNorm1d: weight fixed at 1 (`requires_grad = False`).
    pub fn with_frozen_weight(p: nn::Path, channels: i64, eps: f64) -> Self {
        Self::build(p, channels, eps, false)
    }

    fn build(p: nn::Path, channels: i64, eps: f64, train_weight: bool) -> Self {
        let weight = if train_weight {
            p.var("weight", &[channels], Init::Const(1.0))
        } else {
            p.ones_no_train("weight", &[channels])
        };
        let bias = p.var("bias", &[channels], Init::Const(0.0));
        let running_mean = p.zeros_no_train("running_mean", &[channels]);
        let running_var = p.ones_no_train("running_var", &[channels]);
        let num_batches_tracked = p.add(
            "num_batches_tracked",
            Tensor::zeros([], (Kind::Int64, p.device())),
            false,
        );
        Self {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            eps,
        }
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            });
        }
        Tensor::batch_norm(
            xs,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            0.1,
            self.eps,
            true,
        )
    }
}

/// `nn.PReLU(channels)`: one slope per channel, initialised at 0.25.
#[derive(Debug)]
pub struct PRelu {
    pub weight: Tensor,
}

impl PRelu {
    pub fn new(p: nn::Path, channels: i64) -> Self {
        Self {
            weight: p.var("weight", &[channels], Init::Const(0.25)),
        }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.prelu(&self.weight)
    }
}

/// A bias-free convolution with insightface's initialisation, N(0, 0.1).
pub fn conv_no_bias(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        bias: false,
        ws_init: Init::Randn {
            mean: 0.0,
            stdev: 0.1,
        },
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, kernel, cfg)
}
