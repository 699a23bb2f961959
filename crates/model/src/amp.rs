//! Mixed precision: the numeric format of a training step, device-aware autocast regions
//! and fp16's dynamic loss scaling.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    /// Autocast to fp16 with dynamic loss scaling; FC, BatchNorm1d, LGF and the head stay fp32.
    Fp16,
    /// Autocast to bf16 (fp32's exponent range, so no loss scaling); same fp32 islands.
    Bf16,
}

impl Precision {
    /// The autocast dtype, `None` for fp32.
    pub fn autocast_kind(self) -> Option<Kind> {
        match self {
            Self::Fp32 => None,
            Self::Fp16 => Some(Kind::Half),
            Self::Bf16 => Some(Kind::BFloat16),
        }
    }

    /// Whether the loss needs dynamic scaling (fp16's narrow exponent underflows gradients).
    pub fn needs_loss_scaling(self) -> bool {
        self == Self::Fp16
    }
}

impl std::str::FromStr for Precision {
    type Err = crate::config::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" => Ok(Self::Fp32),
            "fp16" => Ok(Self::Fp16),
            "bf16" => Ok(Self::Bf16),
            other => Err(crate::config::UnknownName::new(
                "precision",
                other,
                "fp32|fp16|bf16",
            )),
        }
    }
}

mod ffi {
    extern "C" {
        pub fn lgaf_autocast_enter(
            device_type: i32,
            enabled: bool,
            dtype: i32,
            prev_enabled: *mut bool,
            prev_dtype: *mut i32,
        ) -> i32;
        pub fn lgaf_autocast_exit(device_type: i32, prev_enabled: bool, prev_dtype: i32) -> i32;
        pub fn lgaf_autocast_state(device_type: i32, enabled: *mut bool, dtype: *mut i32) -> i32;
    }
}

// c10::DeviceType values of the two devices autocast runs on here.
const DEVICE_CPU: i32 = 0;
const DEVICE_CUDA: i32 = 1;

// c10::ScalarType values of the autocast dtypes (tch keeps its own mapping private).
const AUTOCAST_KINDS: [(Kind, i32); 3] = [(Kind::Half, 5), (Kind::Float, 6), (Kind::BFloat16, 15)];

fn scalar_type(kind: Kind) -> i32 {
    AUTOCAST_KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| *v)
        .expect("autocast dtypes are fp16, bf16 and fp32")
}

fn device_type(device: Device) -> i32 {
    if device.is_cuda() {
        DEVICE_CUDA
    } else {
        DEVICE_CPU
    }
}

/// One device's autocast setting, restored when dropped (also on unwinding).
struct AutocastGuard {
    device_type: i32,
    prev_enabled: bool,
    prev_dtype: i32,
}

impl AutocastGuard {
    fn enter(device_type: i32, kind: Option<Kind>) -> Self {
        let (mut prev_enabled, mut prev_dtype) = (false, 0);
        let dtype = kind.map_or(-1, scalar_type);
        // SAFETY: plain values in, two out-pointers to live locals.
        let rc = unsafe {
            ffi::lgaf_autocast_enter(
                device_type,
                kind.is_some(),
                dtype,
                &mut prev_enabled,
                &mut prev_dtype,
            )
        };
        assert_eq!(rc, 0, "libtorch refused an autocast setting");
        Self {
            device_type,
            prev_enabled,
            prev_dtype,
        }
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // SAFETY: restores values libtorch itself reported.
        unsafe { ffi::lgaf_autocast_exit(self.device_type, self.prev_enabled, self.prev_dtype) };
    }
}

/// Runs `f` with autocast to `precision`'s dtype on `device` (torch.autocast's semantics);
/// fp32 runs `f` with autocast off there.
pub fn autocast<T>(device: Device, precision: Precision, f: impl FnOnce() -> T) -> T {
    let _guard = AutocastGuard::enter(device_type(device), precision.autocast_kind());
    f()
}

/// Runs `f` with autocast off on every device: the fp32 islands of a mixed-precision step
/// (the embedding FC, the MHMS projection, the margin softmax).
pub fn fp32<T>(f: impl FnOnce() -> T) -> T {
    let _cpu = AutocastGuard::enter(DEVICE_CPU, None);
    let _cuda = AutocastGuard::enter(DEVICE_CUDA, None);
    f()
}

/// Whether autocast is on for `device`, and its dtype.
pub fn autocast_state(device: Device) -> (bool, Option<Kind>) {
    let (mut enabled, mut dtype) = (false, 0);
    // SAFETY: two out-pointers to live locals.
    let rc = unsafe { ffi::lgaf_autocast_state(device_type(device), &mut enabled, &mut dtype) };
    assert_eq!(rc, 0, "libtorch refused to report its autocast state");
    let kind = AUTOCAST_KINDS
        .iter()
        .find(|(_, v)| *v == dtype)
        .map(|(k, _)| *k);
    (enabled, kind)
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

    #[test]
    fn autocast_regions_set_and_restore_the_device_state() {
        let cpu = Device::Cpu;
        let before = autocast_state(cpu);
        autocast(cpu, Precision::Bf16, || {
            assert_eq!(autocast_state(cpu), (true, Some(Kind::BFloat16)));
            fp32(|| assert!(!autocast_state(cpu).0));
            assert_eq!(autocast_state(cpu), (true, Some(Kind::BFloat16)));
            // CUDA's setting is independent and can be read without a GPU.
            autocast(Device::Cuda(0), Precision::Fp16, || {
                assert_eq!(autocast_state(Device::Cuda(0)), (true, Some(Kind::Half)));
            });
        });
        assert_eq!(autocast_state(cpu), before);
    }

    #[test]
    fn bf16_autocast_runs_matmuls_in_bf16_and_fp32_islands_in_fp32() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        let (inside, island) = autocast(Device::Cpu, Precision::Bf16, || {
            (a.matmul(&b), fp32(|| a.matmul(&b)))
        });
        assert_eq!(inside.kind(), Kind::BFloat16);
        assert_eq!(island.kind(), Kind::Float);
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        let err = (inside.to_kind(Kind::Float) - island)
            .abs()
            .max()
            .double_value(&[]);
        assert!(err > 0.0 && err < 0.1, "bf16 rounding error {err}");
    }

    #[test]
    fn precision_parses_and_knows_its_scaling() {
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        let err = "fp8".parse::<Precision>().unwrap_err().to_string();
        assert_eq!(err, "unknown precision `fp8` (expected fp32|fp16|bf16)");
        assert!(Precision::Fp16.needs_loss_scaling());
        assert!(!Precision::Bf16.needs_loss_scaling() && !Precision::Fp32.needs_loss_scaling());
    }
}
