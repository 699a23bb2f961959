//! IResNet (insightface's `iresnet.py`): the backbone that maps a 112x112 face to the
//! feature map C(x) of shape [B, 512, 7, 7], and the GFE head that flattens it into the
//! global feature.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::config::ModelConfig;
use crate::layers::{conv_no_bias, BatchNorm, PRelu};

const BN_EPS: f64 = 1e-5;
/// Side of the final feature map for a 112x112 input (four stride-2 stages).
pub const FEATURE_SIDE: i64 = 7;

/// insightface's `IBasicBlock`: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus
/// a conv1x1(stride)+BN shortcut where the shape changes.
#[derive(Debug)]
struct IBasicBlock {
    bn1: BatchNorm,
    conv1: nn::Conv2D,
    bn2: BatchNorm,
    prelu: PRelu,
    conv2: nn::Conv2D,
    bn3: BatchNorm,
    downsample: Option<(nn::Conv2D, BatchNorm)>,
}

impl IBasicBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = &p / "downsample";
            (
                conv_no_bias(&d / "0", c_in, c_out, 1, stride, 0),
                BatchNorm::new(&d / "1", c_out, BN_EPS),
            )
        });
        Self {
            bn1: BatchNorm::new(&p / "bn1", c_in, BN_EPS),
            conv1: conv_no_bias(&p / "conv1", c_in, c_out, 3, 1, 1),
            bn2: BatchNorm::new(&p / "bn2", c_out, BN_EPS),
            prelu: PRelu::new(&p / "prelu", c_out),
            conv2: conv_no_bias(&p / "conv2", c_out, c_out, 3, stride, 1),
            bn3: BatchNorm::new(&p / "bn3", c_out, BN_EPS),
            downsample,
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let out = self.bn1.forward_t(xs, train);
        let out = self.conv1.forward(&out);
        let out = self.bn2.forward_t(&out, train);
        let out = self.prelu.forward(&out);
        let out = self.conv2.forward(&out);
        let out = self.bn3.forward_t(&out, train);
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(xs), train),
            None => xs.shallow_clone(),
        };
        out + identity
    }
}

/// The IResNet trunk: stem, four stages and `bn2`. Output: C(x).
#[derive(Debug)]
pub struct IResNet {
    conv1: nn::Conv2D,
    bn1: BatchNorm,
    prelu: PRelu,
    stages: Vec<Vec<IBasicBlock>>,
    bn2: BatchNorm,
    out_channels: i64,
}

impl IResNet {
    /// `p` is the model root: insightface keeps the backbone's names at top level.
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Self {
        let stem = cfg.stem_channels();
        let channels = cfg.stage_channels();
        let mut c_in = stem;
        let stages = cfg
            .arch
            .layers()
            .iter()
            .zip(channels)
            .enumerate()
            .map(|(i, (&blocks, c_out))| {
                let sp = p / format!("layer{}", i + 1);
                let stage = (0..blocks)
                    .map(|b| {
                        let (cin, stride) = if b == 0 { (c_in, 2) } else { (c_out, 1) };
                        IBasicBlock::new(&sp / b, cin, c_out, stride)
                    })
                    .collect();
                c_in = c_out;
                stage
            })
            .collect();
        Self {
            conv1: conv_no_bias(p / "conv1", 3, stem, 3, 1, 1),
            bn1: BatchNorm::new(p / "bn1", stem, BN_EPS),
            prelu: PRelu::new(p / "prelu", stem),
            stages,
            bn2: BatchNorm::new(p / "bn2", channels[3], BN_EPS),
            out_channels: channels[3],
        }
    }

    /// Channels of C(x).
    pub fn out_channels(&self) -> i64 {
        self.out_channels
    }

    /// [B, 3, 112, 112] normalised images -> C(x) [B, C, 7, 7].
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = self.conv1.forward(xs);
        x = self.bn1.forward_t(&x, train);
        x = self.prelu.forward(&x);
        for block in self.stages.iter().flatten() {
            x = block.forward_t(&x, train);
        }
        self.bn2.forward_t(&x, train)
    }
}

/// Global Feature Extraction: flatten -> dropout -> fc -> `features` (BatchNorm1d, weight
/// frozen at 1). Runs in fp32 under mixed precision, as insightface does.
#[derive(Debug)]
pub struct Gfe {
    dropout: f64,
    fc: nn::Linear,
    features: BatchNorm,
}

impl Gfe {
    pub fn new(p: &nn::Path, in_channels: i64, cfg: &ModelConfig) -> Self {
        let in_dim = in_channels * FEATURE_SIDE * FEATURE_SIDE;
        Self {
            dropout: cfg.dropout,
            fc: nn::linear(p / "fc", in_dim, cfg.embedding_size, Default::default()),
            features: BatchNorm::with_frozen_weight(p / "features", cfg.embedding_size, BN_EPS),
        }
    }

    pub fn forward_t(&self, feature_map: &Tensor, train: bool) -> Tensor {
        let x = feature_map.flatten(1, -1).dropout(self.dropout, train);
        let x = crate::amp::fp32(|| self.fc.forward(&x.to_kind(Kind::Float)));
        self.features.forward_t(&x, train)
    }
}
