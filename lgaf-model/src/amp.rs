//! Mixed precision: the numeric format of a training step and fp16's dynamic loss scaling.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    /// CUDA autocast to fp16 with dynamic loss scaling; FC, BatchNorm1d and LGF stay fp32.
    Fp16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Self::Fp32),
            "fp16" => Ok(Self::Fp16),
            other => Err(format!("unknown precision `{other}` (expected fp32|fp16)")),
        }
    }
}

/// PyTorch `GradScaler`'s policy: multiply the loss by `scale`; if any gradient is not
/// finite, skip the step and halve the scale; after `growth_interval` good steps, double it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradScaler {
    pub scale: f64,
    pub growth_interval: u32,
    pub good_steps: u32,
}

impl Default for GradScaler {
    fn default() -> Self {
        Self {
            scale: 65536.0,
            growth_interval: 2000,
            good_steps: 0,
        }
    }
}

impl GradScaler {
    /// Whether all of `grads` are finite (undefined gradients are ignored).
    pub fn all_finite(grads: &[Tensor]) -> bool {
        grads
            .iter()
            .filter(|g| g.defined())
            .all(|g| g.isfinite().all().to_kind(Kind::Int64).int64_value(&[]) == 1)
    }

    /// Records the outcome of a step; returns whether the optimiser may apply it.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
        }
        finite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_gradients_skip_the_step_and_halve_the_scale() {
        let mut s = GradScaler {
            growth_interval: 2,
            ..Default::default()
        };
        let good = [Tensor::from_slice(&[1.0f32, 2.0])];
        let bad = [Tensor::from_slice(&[1.0f32, f32::INFINITY])];
        let nan = [Tensor::from_slice(&[f32::NAN])];
        assert!(GradScaler::all_finite(&good));
        assert!(!GradScaler::all_finite(&bad) && !GradScaler::all_finite(&nan));
        assert!(!s.update(false));
        assert_eq!(s.scale, 32768.0);
        assert!(s.update(true));
        assert!(s.update(true));
        assert_eq!(s.scale, 65536.0);
        assert_eq!(s.good_steps, 0);
    }
}
