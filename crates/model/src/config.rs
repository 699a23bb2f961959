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

/// A name that is not one of a choice's (an arch, a fusion, a precision), with the names
/// that are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{got}` (expected {expected})")]
pub struct UnknownName {
    pub what: &'static str,
    pub got: String,
    pub expected: &'static str,
}

impl UnknownName {
    pub(crate) fn new(what: &'static str, got: &str, expected: &'static str) -> Self {
        Self {
            what,
            got: got.to_string(),
            expected,
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = UnknownName;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownName> {
        match s.to_ascii_lowercase().as_str() {
            "r18" => Ok(Arch::R18),
            "r34" => Ok(Arch::R34),
            "r50" => Ok(Arch::R50),
            "r100" => Ok(Arch::R100),
            "r200" => Ok(Arch::R200),
            _ => Err(UnknownName::new("arch", s, "r18|r34|r50|r100|r200")),
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
    type Err = UnknownName;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownName> {
        match s.to_ascii_lowercase().as_str() {
            "lgf" => Ok(Fusion::Lgf),
            "add" => Ok(Fusion::Add),
            "local" => Ok(Fusion::Local),
            "global" => Ok(Fusion::Global),
            _ => Err(UnknownName::new("fusion", s, "lgf|add|local|global")),
        }
    }
}

// Declared ranges of the numeric keys (`ModelConfig::validate`). Their products (the
// GFE fc: 512 x width x 49 x embedding; an MSNet's projection: kernels x mid_channels x 49
// x embedding / heads) stay below 2^31, so no shape computation can overflow an i64 and
// no layer is beyond what one accelerator holds.

/// `model.width`: 4 x insightface's channels (stages up to 2048) is already far past any
/// published IResNet; the spec uses 1 (GPU) and 0.25 (CPU demo).
pub const MAX_WIDTH: f64 = 4.0;
/// `model.embedding_size`: 8 x the paper's 512; the GFE fc at width 4 is then 1.6 G floats.
pub const MAX_EMBEDDING_SIZE: i64 = 4096;
/// `model.heads`: 8 x the paper's default 4 (Tab. 2 goes up to 8); each head is a whole
/// MSNet, so more would only multiply the branch convolutions.
pub const MAX_HEADS: i64 = 32;
/// `model.kernels`: odd sizes (so "same" padding keeps the 7x7 map) up to 7, the side of
/// the feature map C(x): a larger kernel only adds taps that read padding. With no size
/// repeated there are at most four branches.
pub const MAX_KERNEL: i64 = 7;
/// `model.mid_channels`: 8 x the paper's 128 (width 4 gives 512 by default).
pub const MAX_MID_CHANNELS: i64 = 1024;
/// `model.lgf.h`: the paper's 0.333 is the 3-sigma rule; past 10 every norm further than
/// 0.1 sigma from the mean is clamped and the attention is a step function.
pub const MAX_LGF_H: f64 = 10.0;

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

    /// Checks every field against its declared range (the constants above, each with its
    /// reason) and the combinations the layers cannot express. Errors name the key as
    /// `model.<key>`, the value and the range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, message: String| Err(ModelError::Config { field, message });
        if !(self.width > 0.0 && self.width <= MAX_WIDTH) {
            return bad(
                "model.width",
                format!("{} is outside (0, {MAX_WIDTH}]", self.width),
            );
        }
        if !(1..=MAX_EMBEDDING_SIZE).contains(&self.embedding_size) {
            return bad(
                "model.embedding_size",
                format!(
                    "{} is outside 1..={MAX_EMBEDDING_SIZE}",
                    self.embedding_size
                ),
            );
        }
        // Ranges hold whatever the fusion (a value out of range is a mistake even where it
        // is unused); the divisibility only where the MHMS is built.
        if !(1..=MAX_HEADS).contains(&self.heads)
            || (self.fusion.has_local() && self.embedding_size % self.heads != 0)
        {
            return bad(
                "model.heads",
                format!(
                    "{} must be in 1..={MAX_HEADS} and divide model.embedding_size {}",
                    self.heads, self.embedding_size
                ),
            );
        }
        if self.kernels.is_empty() {
            return bad(
                "model.kernels",
                format!("[] is empty: expected odd sizes from 1 to {MAX_KERNEL}, e.g. [1, 3, 5]"),
            );
        }
        for (i, &k) in self.kernels.iter().enumerate() {
            if !(1..=MAX_KERNEL).contains(&k) || k % 2 == 0 {
                return bad(
                    "model.kernels",
                    format!(
                        "{k} (in {:?}) is not an odd size in 1..={MAX_KERNEL}",
                        self.kernels
                    ),
                );
            }
            if self.kernels[..i].contains(&k) {
                return bad(
                    "model.kernels",
                    format!("{k} appears twice in {:?}", self.kernels),
                );
            }
        }
        let mid = self.mid_channels();
        if !(1..=MAX_MID_CHANNELS).contains(&mid) {
            return bad(
                "model.mid_channels",
                format!("{mid} is outside 1..={MAX_MID_CHANNELS}"),
            );
        }
        let lgf = &self.lgf;
        if !(lgf.h > 0.0 && lgf.h <= MAX_LGF_H) {
            return bad(
                "model.lgf.h",
                format!("{} is outside (0, {MAX_LGF_H}]", lgf.h),
            );
        }
        if !(lgf.alpha > 0.0 && lgf.alpha <= 1.0) {
            return bad(
                "model.lgf.alpha",
                format!("{} is outside (0, 1]", lgf.alpha),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(
                "model.dropout",
                format!("{} is outside [0, 1)", self.dropout),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn refused(cfg: ModelConfig, parts: &[&str]) {
        let msg = cfg.validate().unwrap_err().to_string();
        for part in parts {
            assert!(msg.contains(part), "`{part}` missing from: {msg}");
        }
    }

    #[test]
    fn every_numeric_key_is_bounded_and_named_with_its_section() {
        let d = ModelConfig::default;
        refused(
            ModelConfig {
                kernels: vec![99999],
                ..d()
            },
            &["model.kernels", "99999", "1..=7"],
        );
        refused(
            ModelConfig {
                kernels: vec![1, 3, 3],
                ..d()
            },
            &["model.kernels", "twice"],
        );
        refused(
            ModelConfig {
                embedding_size: i64::MAX,
                ..d()
            },
            &["model.embedding_size", "1..=4096"],
        );
        refused(
            ModelConfig {
                heads: 1 << 40,
                embedding_size: 4096,
                ..d()
            },
            &["model.heads", "1..=32"],
        );
        refused(
            ModelConfig {
                mid_channels: Some(1 << 40),
                ..d()
            },
            &["model.mid_channels", "1..=1024"],
        );
        refused(
            ModelConfig {
                width: f64::NAN,
                ..d()
            },
            &["model.width", "NaN", "(0, 4]"],
        );
        refused(
            ModelConfig {
                lgf: LgfConfig {
                    h: 0.0,
                    ..Default::default()
                },
                ..d()
            },
            &["model.lgf.h", "(0, 10]"],
        );
        refused(
            ModelConfig {
                lgf: LgfConfig {
                    alpha: f64::NAN,
                    ..Default::default()
                },
                ..d()
            },
            &["model.lgf.alpha", "NaN", "(0, 1]"],
        );
        refused(
            ModelConfig {
                dropout: -0.1,
                ..d()
            },
            &["model.dropout", "-0.1", "[0, 1)"],
        );
        // Unused under global fusion, still out of range.
        refused(
            ModelConfig {
                fusion: Fusion::Global,
                kernels: vec![99999],
                ..d()
            },
            &["model.kernels", "99999"],
        );
    }

    #[test]
    fn the_largest_legal_values_pass() {
        ModelConfig {
            width: MAX_WIDTH,
            embedding_size: MAX_EMBEDDING_SIZE,
            heads: MAX_HEADS,
            kernels: vec![1, 3, 5, MAX_KERNEL],
            mid_channels: Some(MAX_MID_CHANNELS),
            lgf: LgfConfig {
                h: MAX_LGF_H,
                alpha: 1.0,
                norm_grad: true,
            },
            ..Default::default()
        }
        .validate()
        .unwrap();
        // Global fusion (insightface's IResNet) needs no head count that divides the size.
        ModelConfig {
            fusion: Fusion::Global,
            embedding_size: 100,
            ..Default::default()
        }
        .validate()
        .unwrap();
    }
}
