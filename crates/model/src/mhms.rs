//! MHMS, the Multi-Head Multi-Scale local feature extractor (paper sec. 3.3).
//!
//! Each of the `b` heads is an MSNet: per kernel size k, conv kxk -> BN -> PReLU -> LANet
//! (spatial attention); the k maps are concatenated, reweighted by an SE block (channel
//! attention), flattened and projected to `embedding / b` dims, then BatchNorm1d.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::config::ModelConfig;
use crate::iresnet::FEATURE_SIDE;
use crate::layers::{conv_no_bias, BatchNorm, PRelu};

const BN_EPS: f64 = 1e-5;
const REDUCTION: i64 = 16;

fn reduced(c: i64) -> i64 {
    (c / REDUCTION).max(1)
}

/// Spatial attention as in LS-CNN: conv1x1(c -> c/16) -> ReLU -> conv1x1(c/16 -> 1) ->
/// sigmoid, multiplied into the input.
#[derive(Debug)]
struct LaNet {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
}

impl LaNet {
    fn new(p: nn::Path, c: i64) -> Self {
        Self {
            conv1: nn::conv2d(&p / "conv1", c, reduced(c), 1, Default::default()),
            conv2: nn::conv2d(&p / "conv2", reduced(c), 1, 1, Default::default()),
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let attention = self.conv2.forward(&self.conv1.forward(xs).relu()).sigmoid();
        xs * attention
    }
}

/// Squeeze-and-excitation: GAP -> fc(c -> c/16) -> ReLU -> fc(c/16 -> c) -> sigmoid.
#[derive(Debug)]
struct Se {
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Se {
    fn new(p: nn::Path, c: i64) -> Self {
        Self {
            fc1: nn::linear(&p / "fc1", c, reduced(c), Default::default()),
            fc2: nn::linear(&p / "fc2", reduced(c), c, Default::default()),
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let squeezed = xs.mean_dim(&[2i64, 3][..], false, None::<Kind>);
        let weights = self
            .fc2
            .forward(&self.fc1.forward(&squeezed).relu())
            .sigmoid();
        xs * weights.unsqueeze(-1).unsqueeze(-1)
    }
}

/// One branch of an MSNet: conv kxk (no bias, "same" padding) -> BN -> PReLU.
/// Named `branches.{j}.{0,1,2}` like the `nn.Sequential` it mirrors.
#[derive(Debug)]
struct Branch {
    conv: nn::Conv2D,
    bn: BatchNorm,
    prelu: PRelu,
}

impl Branch {
    fn new(p: nn::Path, c_in: i64, c_mid: i64, kernel: i64) -> Self {
        Self {
            conv: conv_no_bias(&p / "0", c_in, c_mid, kernel, 1, kernel / 2),
            bn: BatchNorm::new(&p / "1", c_mid, BN_EPS),
            prelu: PRelu::new(&p / "2", c_mid),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.prelu
            .forward(&self.bn.forward_t(&self.conv.forward(xs), train))
    }
}

/// One MHMS head.
#[derive(Debug)]
struct MsNet {
    branches: Vec<Branch>,
    lanets: Vec<LaNet>,
    se: Se,
    proj: nn::Linear,
    bn: BatchNorm,
}

impl MsNet {
    fn new(p: nn::Path, c_in: i64, out_dim: i64, cfg: &ModelConfig) -> Self {
        let c_mid = cfg.mid_channels();
        let c_cat = c_mid * cfg.kernels.len() as i64;
        let (branches, lanets) = cfg
            .kernels
            .iter()
            .enumerate()
            .map(|(j, &k)| {
                (
                    Branch::new(&p / "branches" / j, c_in, c_mid, k),
                    LaNet::new(&p / "lanets" / j, c_mid),
                )
            })
            .unzip();
        let proj_in = c_cat * FEATURE_SIDE * FEATURE_SIDE;
        Self {
            branches,
            lanets,
            se: Se::new(&p / "se", c_cat),
            proj: nn::linear(&p / "proj", proj_in, out_dim, Default::default()),
            bn: BatchNorm::new(&p / "bn", out_dim, BN_EPS),
        }
    }

    fn forward_t(&self, feature_map: &Tensor, train: bool) -> Tensor {
        let maps: Vec<Tensor> = self
            .branches
            .iter()
            .zip(&self.lanets)
            .map(|(branch, lanet)| lanet.forward(&branch.forward_t(feature_map, train)))
            .collect();
        let x = self.se.forward(&Tensor::cat(&maps, 1)).flatten(1, -1);
        // The projection and BatchNorm1d stay in fp32 under mixed precision, like the GFE.
        let x = crate::amp::fp32(|| self.proj.forward(&x.to_kind(Kind::Float)));
        self.bn.forward_t(&x, train)
    }
}

/// The multi-head module: `b` MSNets whose outputs are concatenated into the local feature.
#[derive(Debug)]
pub struct Mhms {
    heads: Vec<MsNet>,
}

impl Mhms {
    pub fn new(p: nn::Path, c_in: i64, cfg: &ModelConfig) -> Self {
        let out_dim = cfg.embedding_size / cfg.heads;
        let heads = (0..cfg.heads)
            .map(|i| MsNet::new(&p / "heads" / i, c_in, out_dim, cfg))
            .collect();
        Self { heads }
    }

    /// C(x) [B, C, 7, 7] -> local feature [B, embedding_size].
    pub fn forward_t(&self, feature_map: &Tensor, train: bool) -> Tensor {
        let outs: Vec<Tensor> = self
            .heads
            .iter()
            .map(|h| h.forward_t(feature_map, train))
            .collect();
        Tensor::cat(&outs, 1)
    }
}
