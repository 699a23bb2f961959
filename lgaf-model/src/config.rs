//! Model configuration: the knobs the spec and the paper's ablations name.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// IResNet depth (insightface layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    R18,
    R34,
    R50,
    R100,
    R200,
}

impl Arch {
    /// Blocks per stage.
    pub fn layers(self) -> [usize; 4] {
        match self {
            Arch::R18 => [2, 2, 2, 2],
            Arch::R34 => [3, 4, 6, 3],
            Arch::R50 => [3, 4, 14, 3],
            Arch::R100 => [3, 13, 30, 3],
            Arch::R200 => [6, 26, 60, 6],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::R18 => "r18",
            Arch::R34 => "r34",
            Arch::R50 => "r50",
            Arch::R100 => "r100",
            Arch::R200 => "r200",
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "r18" => Ok(Arch::R18),
            "r34" => Ok(Arch::R34),
            "r50" => Ok(Arch::R50),
            "r100" => Ok(Arch::R100),
            "r200" => Ok(Arch::R200),
            _ => Err(format!(
                "unknown arch `{s}` (expected r18|r34|r50|r100|r200)"
            )),
        }
    }
}

/// How the local (MHMS) and global (GFE) features become the embedding (paper Tab. 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// Quality-attention fusion (the paper's LGAF).
    Lgf,
    /// Plain sum of local and global features (Tab. 1 III).
    Add,
    /// Local features only (Tab. 1 I).
    Local,
    /// Global features only: exactly insightface's IResNet (Tab. 1 II, ArcFace baseline).
    Global,
}

impl Fusion {
    pub fn has_local(self) -> bool {
        self != Fusion::Global
    }
    pub fn has_global(self) -> bool {
        self != Fusion::Local
    }
    pub fn name(self) -> &'static str {
        match self {
            Fusion::Lgf => "lgf",
            Fusion::Add => "add",
            Fusion::Local => "local",
            Fusion::Global => "global",
        }
    }
}

impl std::str::FromStr for Fusion {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "lgf" => Ok(Fusion::Lgf),
            "add" => Ok(Fusion::Add),
            "local" => Ok(Fusion::Local),
            "global" => Ok(Fusion::Global),
            _ => Err(format!(
                "unknown fusion `{s}` (expected lgf|add|local|global)"
            )),
        }
    }
}

/// LGF hyper-parameters (spec section 2, paper eq. 4-10).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LgfConfig {
    /// Concentration h of the normalised norms (paper: 0.333, the 3-sigma rule).
    pub h: f64,
    /// EMA weight of the current global batch's statistics.
    pub alpha: f64,
    /// Let gradients flow through the norm-based attention weights (spec: off, norms detached).
    pub norm_grad: bool,
}

impl Default for LgfConfig {
    fn default() -> Self {
        Self {
            h: 0.333,
            alpha: 0.01,
            norm_grad: false,
        }
    }
}

/// The whole network's shape. Width 1 gives exactly insightface's names and shapes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub arch: Arch,
    pub fusion: Fusion,
    /// Channel-width multiplier of backbone and MHMS (0.25: stages of 16/32/64/128).
    pub width: f64,
    /// Embedding size (512 in the paper and insightface).
    pub embedding_size: i64,
    /// MHMS heads `b` (paper Tab. 2: 4).
    pub heads: i64,
    /// MSNet kernel sizes (paper: 1, 3, 5).
    pub kernels: Vec<i64>,
    /// MSNet branch channels; default 128 x width.
    pub mid_channels: Option<i64>,
    /// Dropout before the GFE's fc.
    pub dropout: f64,
    pub lgf: LgfConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: Arch::R100,
            fusion: Fusion::Lgf,
            width: 1.0,
            embedding_size: 512,
            heads: 4,
            kernels: vec![1, 3, 5],
            mid_channels: None,
            dropout: 0.0,
            lgf: LgfConfig::default(),
        }
    }
}

impl ModelConfig {
    /// Channels of stage `i` (0..4) and of the stem.
    pub fn stage_channels(&self) -> [i64; 4] {
        [64, 128, 256, 512].map(|c| self.scaled(c))
    }

    pub fn stem_channels(&self) -> i64 {
        self.scaled(64)
    }

    pub fn mid_channels(&self) -> i64 {
        self.mid_channels.unwrap_or_else(|| self.scaled(128))
    }

    fn scaled(&self, c: i64) -> i64 {
        ((c as f64 * self.width).round() as i64).max(1)
    }

    /// Checks the combinations the layers cannot express.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, message: String| Err(ModelError::Config { field, message });
        if !(self.width > 0.0 && self.width <= 4.0) {
            return bad("width", format!("{} is outside (0, 4]", self.width));
        }
        if self.embedding_size <= 0 {
            return bad(
                "embedding_size",
                format!("{} must be positive", self.embedding_size),
            );
        }
        if self.fusion.has_local() {
            if self.heads <= 0 || self.embedding_size % self.heads != 0 {
                return bad(
                    "heads",
                    format!(
                        "{} must be positive and divide embedding_size {}",
                        self.heads, self.embedding_size
                    ),
                );
            }
            if self.kernels.is_empty() || self.kernels.iter().any(|k| k % 2 == 0 || *k <= 0) {
                return bad(
                    "kernels",
                    format!("{:?}: need odd positive sizes", self.kernels),
                );
            }
            if self.mid_channels() <= 0 {
                return bad("mid_channels", "must be positive".into());
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", format!("{} is outside [0, 1)", self.dropout));
        }
        Ok(())
    }
}
