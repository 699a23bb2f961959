//! Margin-based softmax heads: the combined margin cos(m1*theta + m2) - m3, scale s.
//! ArcFace = (1, 0.5, 0), CosFace = (1, 0, 0.4) (the paper's default loss).

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Keeps acos differentiable at |cos| = 1.
const COS_EPS: f64 = 1e-7;

/// Range of m1 in `combined:m1,m2,m3` (open below): a multiplicative angular margin;
/// SphereFace's largest is 4, and 0 or less collapses every angle.
pub const M1_RANGE: (f64, f64) = (0.0, 4.0);
/// Range of m2: an additive angle in radians; beyond pi it wraps around the circle.
pub const M2_RANGE: (f64, f64) = (-std::f64::consts::PI, std::f64::consts::PI);
/// Range of m3: an additive cosine margin; cosines lie in [-1, 1], so a shift past 2
/// puts the target logit below (or above) every other logit.
pub const M3_RANGE: (f64, f64) = (-2.0, 2.0);

/// Why a loss name did not parse ([`CombinedMargin::parse`]); each message quotes it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MarginSpecError {
    #[error("unknown loss `{name}` (expected arcface|cosface|combined:m1,m2,m3)")]
    UnknownLoss { name: String },

    #[error("loss `{name}`: {source}")]
    NotANumber {
        name: String,
        #[source]
        source: std::num::ParseFloatError,
    },

    #[error("loss `{name}`: expected three margins m1,m2,m3")]
    MarginCount { name: String },

    /// m1's range is open below ([`M1_RANGE`]).
    #[error("loss `{name}`: m1 = {value} is outside ({}, {}]", M1_RANGE.0, M1_RANGE.1)]
    M1OutOfRange { name: String, value: f64 },

    /// m2 or m3 outside its closed range ([`M2_RANGE`], [`M3_RANGE`]).
    #[error("loss `{name}`: {margin} = {value} is outside [{}, {}]", .range.0, .range.1)]
    OutOfRange {
        name: String,
        margin: &'static str,
        value: f64,
        range: (f64, f64),
    },
}

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
    pub fn parse(name: &str, scale: f64) -> Result<Self, MarginSpecError> {
        let m = match name {
            "arcface" => Self::arcface(),
            "cosface" => Self::cosface(),
            other => {
                let name = || other.to_owned();
                let spec = other
                    .strip_prefix("combined:")
                    .ok_or_else(|| MarginSpecError::UnknownLoss { name: name() })?;
                let parts: Vec<f64> = spec
                    .split(',')
                    .map(|v| v.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .map_err(|source| MarginSpecError::NotANumber {
                        name: name(),
                        source,
                    })?;
                let [m1, m2, m3] = parts[..] else {
                    return Err(MarginSpecError::MarginCount { name: name() });
                };
                // `parse::<f64>` takes "nan" and "inf": every margin must be finite and in
                // its range, or the loss is NaN from the first step.
                let (lo, hi) = M1_RANGE;
                if !(m1 > lo && m1 <= hi) {
                    return Err(MarginSpecError::M1OutOfRange {
                        name: name(),
                        value: m1,
                    });
                }
                for (margin, value, range) in [("m2", m2, M2_RANGE), ("m3", m3, M3_RANGE)] {
                    if !(range.0..=range.1).contains(&value) {
                        return Err(MarginSpecError::OutOfRange {
                            name: name(),
                            margin,
                            value,
                            range,
                        });
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn logits(margin: CombinedMargin, cos: &[f32], labels: &[i64]) -> Vec<f64> {
        let c = labels.len() as i64;
        let cos = Tensor::from_slice(cos).view([c, -1]);
        let out = margin.logits(&cos, &Tensor::from_slice(labels));
        Vec::<f64>::try_from(out.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    #[test]
    fn cosface_subtracts_m3_from_the_target_only() {
        let out = logits(CombinedMargin::cosface(), &[0.5, 0.2, -0.3, 0.9], &[0, 1]);
        let want = [0.1 * 64.0, 0.2 * 64.0, -0.3 * 64.0, 0.5 * 64.0];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-4, "{out:?}");
        }
    }

    #[test]
    fn arcface_adds_m2_to_the_angle() {
        // theta = acos(0.5) = pi/3; cos(pi/3 + 0.5) = 0.0235963.
        let out = logits(CombinedMargin::arcface(), &[0.5, 0.5], &[0]);
        assert!((out[0] - 0.0235963 * 64.0).abs() < 1e-3, "{out:?}");
        assert!((out[1] - 32.0).abs() < 1e-4);
        // Past pi the angle is capped: theta = acos(-0.99) = 3.0007, + 0.5 > pi -> cos = -1.
        let out = logits(CombinedMargin::arcface(), &[-0.99, 0.0], &[0]);
        assert!((out[0] + 64.0).abs() < 1e-3, "{out:?}");
    }

    #[test]
    fn combined_margin_and_missing_targets() {
        let m = CombinedMargin::parse("combined:0.9,0.4,0.15", 32.0).unwrap();
        let theta = 0.3f64.acos();
        let want = ((0.9 * theta + 0.4).cos() - 0.15) * 32.0;
        // Row 1 has no target among these columns (label -1): unchanged.
        let out = logits(m, &[0.3, 0.1, 0.3, 0.1], &[0, -1]);
        assert!((out[0] - want).abs() < 1e-4, "{out:?} vs {want}");
        assert!((out[2] - 0.3 * 32.0).abs() < 1e-4);
        // Cosines outside [-1, 1] (rounding) are clamped first.
        let out = logits(CombinedMargin::cosface(), &[1.0001, 0.0], &[1]);
        assert!((out[0] - 64.0).abs() < 1e-4);
        assert!(CombinedMargin::parse("combined:1,2", 64.0).is_err());
        assert!(CombinedMargin::parse("sphereface", 64.0).is_err());
    }

    #[test]
    fn margins_must_be_finite_and_in_range() {
        for (spec, culprit) in [
            ("combined:nan,0,0", "m1 = NaN is outside (0, 4]"),
            ("combined:0,0.5,0", "m1 = 0 is outside (0, 4]"),
            ("combined:1,inf,0", "m2 = inf is outside [-3.14"),
            ("combined:1,0,-3", "m3 = -3 is outside [-2, 2]"),
        ] {
            let err = CombinedMargin::parse(spec, 64.0).unwrap_err().to_string();
            assert!(err.contains(culprit) && err.contains(spec), "{spec}: {err}");
        }
    }

    /// The messages are the ones `parse` gave as strings before it had an error type
    /// (the worker shows them under `loss.name`).
    #[test]
    fn parse_errors_read_as_before() {
        let message = |spec| CombinedMargin::parse(spec, 64.0).unwrap_err().to_string();
        assert_eq!(
            message("sphereface"),
            "unknown loss `sphereface` (expected arcface|cosface|combined:m1,m2,m3)"
        );
        assert_eq!(
            message("combined:1,x,0"),
            "loss `combined:1,x,0`: invalid float literal"
        );
        assert_eq!(
            message("combined:1,2"),
            "loss `combined:1,2`: expected three margins m1,m2,m3"
        );
        assert_eq!(
            message("combined:5,0,0"),
            "loss `combined:5,0,0`: m1 = 5 is outside (0, 4]"
        );
        assert_eq!(
            message("combined:1,4,0"),
            "loss `combined:1,4,0`: m2 = 4 is outside [-3.141592653589793, 3.141592653589793]"
        );
    }
}
