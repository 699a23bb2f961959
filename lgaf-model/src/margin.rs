//! Margin-based softmax heads: the combined margin cos(m1*theta + m2) - m3, scale s.
//! ArcFace = (1, 0.5, 0), CosFace = (1, 0, 0.4) (the paper's default loss).

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Keeps acos differentiable at |cos| = 1.
const COS_EPS: f64 = 1e-7;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CombinedMargin {
    pub m1: f64,
    pub m2: f64,
    pub m3: f64,
    pub scale: f64,
}

impl CombinedMargin {
    pub const fn arcface() -> Self {
        Self {
            m1: 1.0,
            m2: 0.5,
            m3: 0.0,
            scale: 64.0,
        }
    }

    pub const fn cosface() -> Self {
        Self {
            m1: 1.0,
            m2: 0.0,
            m3: 0.4,
            scale: 64.0,
        }
    }

    /// Parses `arcface`, `cosface`, or `combined:m1,m2,m3`.
    pub fn parse(name: &str, scale: f64) -> Result<Self, String> {
        let m = match name {
            "arcface" => Self::arcface(),
            "cosface" => Self::cosface(),
            other => {
                let spec = other.strip_prefix("combined:").ok_or_else(|| {
                    format!("unknown loss `{other}` (expected arcface|cosface|combined:m1,m2,m3)")
                })?;
                let parts: Vec<f64> = spec
                    .split(',')
                    .map(|v| v.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("loss `{other}`: {e}"))?;
                let [m1, m2, m3] = parts[..] else {
                    return Err(format!("loss `{other}`: expected three margins m1,m2,m3"));
                };
                Self { m1, m2, m3, scale }
            }
        };
        Ok(Self { scale, ..m })
    }

    /// Applies the margin to target cosines: cos(min(m1*theta + m2, pi)) - m3.
    ///
    /// The angle is capped at pi so the logit stays monotone in theta (past pi, adding m2
    /// would *raise* the target logit of the hardest samples).
    pub fn target_logit(&self, cos: &Tensor) -> Tensor {
        if self.m1 == 1.0 && self.m2 == 0.0 {
            return cos - self.m3;
        }
        let theta = cos.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS).acos();
        (theta * self.m1 + self.m2)
            .clamp_max(std::f64::consts::PI)
            .cos()
            - self.m3
    }

    /// Full logits: `cos` [B, C] clamped to [-1, 1]; for each row with a label in 0..C
    /// (`labels` [B], -1 = the target is not among these columns) the target column gets
    /// the margin; everything is multiplied by the scale.
    pub fn logits(&self, cos: &Tensor, labels: &Tensor) -> Tensor {
        let cos = cos.clamp(-1.0, 1.0);
        let has_target = labels.ge(0);
        let index = labels.clamp_min(0).unsqueeze(1);
        let target = cos.gather(1, &index, false);
        let with_margin = self
            .target_logit(&target)
            .where_self(&has_target.unsqueeze(1), &target);
        cos.scatter(1, &index, &with_margin) * self.scale
    }
}
