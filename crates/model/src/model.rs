//! The LGAF network: IResNet trunk -> (MHMS local, GFE global) -> fusion -> embedding.

use std::sync::Arc;

use tch::nn;
use tch::Tensor;

use crate::collective::Collective;
use crate::config::{Fusion, ModelConfig};
use crate::error::Result;
use crate::iresnet::{Gfe, IResNet};
use crate::lgf::Lgf;
use crate::mhms::Mhms;
use crate::partial_fc::normalize;

/// What one forward pass yields.
#[derive(Debug)]
pub struct LgafOutput {
    /// kappa, the fused feature before normalisation [B, D]; training feeds it to the head.
    pub kappa: Tensor,
    /// (gamma_local, gamma_global) per sample [B, 2] under `lgf` fusion.
    pub gamma: Option<Tensor>,
    /// (||local||, ||global||) per sample [B, 2], detached, under `lgf` fusion: what the
    /// attention weights were computed from.
    pub norms: Option<Tensor>,
}

impl LgafOutput {
    /// The verification embedding, `normalize(kappa)`.
    pub fn embedding(&self) -> Tensor {
        normalize(&self.kappa)
    }
}

#[derive(Debug)]
pub struct Lgaf {
    cfg: ModelConfig,
    backbone: IResNet,
    gfe: Option<Gfe>,
    mhms: Option<Mhms>,
    lgf: Option<Lgf>,
}

impl Lgaf {
    /// Builds the network under `p` (the root of a `VarStore`), with the spec's names.
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()?;
        let backbone = IResNet::new(p, cfg);
        let c = backbone.out_channels();
        let fusion = cfg.fusion;
        Ok(Self {
            gfe: fusion.has_global().then(|| Gfe::new(p, c, cfg)),
            mhms: fusion.has_local().then(|| Mhms::new(p / "mhms", c, cfg)),
            lgf: (fusion == Fusion::Lgf).then(|| Lgf::new(p / "lgf", &cfg.lgf)),
            backbone,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Installs the cross-rank reduction for the LGF statistics.
    pub fn set_collective(&mut self, collective: Arc<dyn Collective>) {
        if let Some(lgf) = &mut self.lgf {
            lgf.set_collective(collective);
        }
    }

    pub fn lgf(&self) -> Option<&Lgf> {
        self.lgf.as_ref()
    }

    /// Images [B, 3, 112, 112], normalised `(x/255 - 0.5) / 0.5`.
    pub fn forward_t(&self, images: &Tensor, train: bool) -> LgafOutput {
        let feature_map = self.backbone.forward_t(images, train);
        let global = self.gfe.as_ref().map(|g| g.forward_t(&feature_map, train));
        let local = self.mhms.as_ref().map(|m| m.forward_t(&feature_map, train));
        match (local, global, &self.lgf) {
            (Some(local), Some(global), Some(lgf)) => {
                let fused = lgf.forward_t(&local, &global, train);
                LgafOutput {
                    kappa: fused.kappa,
                    gamma: Some(fused.gamma),
                    norms: Some(fused.norms),
                }
            }
            (Some(local), Some(global), None) => LgafOutput {
                kappa: local.to_kind(tch::Kind::Float) + global,
                gamma: None,
                norms: None,
            },
            (Some(only), None, _) | (None, Some(only), _) => LgafOutput {
                kappa: only.to_kind(tch::Kind::Float),
                gamma: None,
                norms: None,
            },
            (None, None, _) => unreachable!("every fusion mode has a local or a global branch"),
        }
    }
}
