//! The network on a CUDA device against the same network on the CPU: forward and backward
//! in fp32, fp16 autocast with loss scaling, bf16 autocast, and channels-last layouts.
//!
//! Where no CUDA device is found each test prints `skipped: <test>: <reason>` and passes,
//! unless `LGAF_REQUIRE_GPU=1` (set by `bench/gpu/check.sh`): then a missing device fails
//! the test, saying what is missing.
//!
//! Tolerances are relative errors of whole tensors (`|a - b| / |b|`, L2). cuDNN runs fp32
//! convolutions in TF32 on Ampere and later (PyTorch's default, which libtorch shares), so
//! fp32 agrees to about 1e-3 rather than 1e-6; fp16 and bf16 keep 10 and 7 mantissa bits.

use lgaf_model::amp::{self, GradScaler, Precision};
use lgaf_model::{Arch, Fusion, Lgaf, ModelConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// fp32 (TF32 convolutions) against the CPU.
const FP32_RTOL: f64 = 2e-2;
/// fp16 and bf16 autocast against fp32 on the CPU.
const AMP_RTOL: f64 = 8e-2;

fn cuda(test: &str) -> Option<Device> {
    if tch::Cuda::is_available() {
        return Some(Device::Cuda(0));
    }
    let why = format!(
        "no CUDA device: libtorch reports {} device(s); CUDA needs libtorch_cuda linked (the \
         build scripts do it) and the driver's libcuda on the loader's path",
        tch::Cuda::device_count()
    );
    if std::env::var("LGAF_REQUIRE_GPU").as_deref() == Ok("1") {
        panic!("{test}: LGAF_REQUIRE_GPU=1, but {why}");
    }
    println!("skipped: {test}: {why}");
    None
}

fn config(fusion: Fusion) -> ModelConfig {
    ModelConfig {
        arch: Arch::R18,
        fusion,
        width: 0.25,
        embedding_size: 64,
        heads: 4,
        ..Default::default()
    }
}

/// The same network (same weights and buffers) on the CPU and on `device`.
fn twins(cfg: &ModelConfig, device: Device) -> ((VarStore, Lgaf), (VarStore, Lgaf)) {
    tch::manual_seed(11);
    let cpu_vs = VarStore::new(Device::Cpu);
    let cpu = Lgaf::new(&cpu_vs.root(), cfg).unwrap();
    let mut gpu_vs = VarStore::new(device);
    let gpu = Lgaf::new(&gpu_vs.root(), cfg).unwrap();
    gpu_vs.copy(&cpu_vs).unwrap();
    ((cpu_vs, cpu), (gpu_vs, gpu))
}

fn images(batch: i64) -> Tensor {
    tch::manual_seed(5);
    Tensor::rand([batch, 3, 112, 112], (Kind::Float, Device::Cpu)) * 2.0 - 1.0
}

fn relative_error(got: &Tensor, want: &Tensor) -> f64 {
    let got = got.to_device(Device::Cpu).to_kind(Kind::Float);
    let want = want.to_device(Device::Cpu).to_kind(Kind::Float);
    (got - &want).norm().double_value(&[]) / want.norm().double_value(&[]).max(1e-30)
}

/// The loss both sides differentiate: a fixed random projection of the embeddings, so every
/// weight before them has a real gradient (a loss like `mean(kappa^2)` behind a BatchNorm
/// whose weight is frozen at 1 is nearly constant, and its gradients are rounding noise).
fn loss(kappa: &Tensor) -> Tensor {
    // The same projection on both devices: drawn on the CPU from a fixed seed.
    tch::manual_seed(3);
    let projection =
        Tensor::randn(kappa.size(), (Kind::Float, Device::Cpu)).to_device(kappa.device());
    (kappa.to_kind(Kind::Float) * projection).mean(Kind::Float)
}

/// Compares every trainable parameter's gradient; returns the worst error, relative to the
/// parameter's own gradient or, where that is tiny, to 1e-3 of the whole gradient's norm: a
/// bias followed by a training-mode BatchNorm has a true gradient of exactly zero, and
/// both devices then hold different rounding noise.
fn worst_grad_error(cpu: &VarStore, gpu: &VarStore, unscale: f64) -> (String, f64) {
    let gpu_vars = gpu.variables();
    let trainable: Vec<(String, Tensor)> = cpu
        .variables()
        .into_iter()
        .filter(|(_, p)| p.requires_grad())
        .collect();
    let total = trainable
        .iter()
        .map(|(_, p)| p.grad().square().sum(Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt();
    let mut worst = (String::new(), 0.0);
    for (name, p) in trainable {
        let g = gpu_vars[&name].grad();
        assert!(g.defined(), "{name}: no gradient on the GPU");
        let want = p.grad();
        let diff = (g.to_device(Device::Cpu).to_kind(Kind::Float) / unscale - &want)
            .norm()
            .double_value(&[]);
        let err = diff / want.norm().double_value(&[]).max(1e-3 * total);
        if err > worst.1 || err.is_nan() {
            worst = (name, err);
        }
    }
    worst
}

#[test]
fn fp32_forward_and_backward_match_the_cpu() {
    let Some(device) = cuda("fp32_forward_and_backward_match_the_cpu") else {
        return;
    };
    for fusion in [Fusion::Lgf, Fusion::Global] {
        let cfg = config(fusion);
        let ((cpu_vs, cpu), (gpu_vs, gpu)) = twins(&cfg, device);
        let x = images(8);
        let want = cpu.forward_t(&x, true);
        let got = gpu.forward_t(&x.to_device(device), true);
        let err = relative_error(&got.kappa, &want.kappa);
        assert!(err < FP32_RTOL, "{fusion:?}: kappa differs by {err:.2e}");
        if let (Some(g), Some(w)) = (&got.gamma, &want.gamma) {
            let err = relative_error(g, w);
            assert!(err < FP32_RTOL, "{fusion:?}: gamma differs by {err:.2e}");
        }
        loss(&want.kappa).backward();
        loss(&got.kappa).backward();
        let (name, err) = worst_grad_error(&cpu_vs, &gpu_vs, 1.0);
        assert!(
            err < FP32_RTOL,
            "{fusion:?}: gradient of {name} differs by {err:.2e}"
        );
        println!(
            "{fusion:?}: fp32 on {device:?} agrees with the CPU (worst gradient {name}: {err:.2e})"
        );
    }
}

#[test]
fn fp16_autocast_with_loss_scaling_matches_fp32() {
    let Some(device) = cuda("fp16_autocast_with_loss_scaling_matches_fp32") else {
        return;
    };
    let cfg = config(Fusion::Lgf);
    let ((cpu_vs, cpu), _) = twins(&cfg, device);
    let x = images(8);
    let want = cpu.forward_t(&x, true);
    loss(&want.kappa).backward();
    let mut scaler = GradScaler::default();
    // The scaler's policy, as the trainer applies it: an overflow halves the scale and
    // the step is done again, here from the same starting weights and buffers.
    let (gpu_vs, grads) = loop {
        let (_, (gpu_vs, gpu)) = twins(&cfg, device);
        let got = amp::autocast(device, Precision::Fp16, || {
            gpu.forward_t(&x.to_device(device), true)
        });
        // The heads the model keeps in fp32 hand fp32 embeddings to the classifier.
        assert_eq!(got.kappa.kind(), Kind::Float);
        let err = relative_error(&got.kappa, &want.kappa);
        assert!(err < AMP_RTOL, "fp16 kappa differs by {err:.2e}");
        (loss(&got.kappa) * scaler.scale).backward();
        let grads: Vec<Tensor> = gpu_vs
            .trainable_variables()
            .iter()
            .map(|p| p.grad())
            .collect();
        if scaler.update(GradScaler::all_finite(&grads)) {
            break (gpu_vs, grads);
        }
        assert!(
            scaler.scale > 1.0,
            "fp16 gradients overflow at every loss scale"
        );
    };
    assert!(
        GradScaler::all_finite(&grads),
        "fp16 gradients overflowed at every scale"
    );
    let (name, err) = worst_grad_error(&cpu_vs, &gpu_vs, scaler.scale);
    assert!(
        err < AMP_RTOL,
        "fp16 gradient of {name} differs by {err:.2e} at scale {}",
        scaler.scale
    );

    // An overflow is seen, the step is skipped and the scale halves.
    let _ = grads[0].shallow_clone().fill_(f64::INFINITY);
    assert!(!GradScaler::all_finite(&grads));
    let before = scaler.scale;
    assert!(!scaler.update(false), "an overflowed step must be skipped");
    assert_eq!(scaler.scale, before / 2.0);
    println!("fp16 on {device:?}: worst gradient {name}: {err:.2e}");
}

#[test]
fn bf16_autocast_matches_fp32() {
    let Some(device) = cuda("bf16_autocast_matches_fp32") else {
        return;
    };
    let cfg = config(Fusion::Lgf);
    let ((cpu_vs, cpu), (gpu_vs, gpu)) = twins(&cfg, device);
    let x = images(8);
    let want = cpu.forward_t(&x, true);
    let got = amp::autocast(device, Precision::Bf16, || {
        gpu.forward_t(&x.to_device(device), true)
    });
    let err = relative_error(&got.kappa, &want.kappa);
    assert!(err < AMP_RTOL, "bf16 kappa differs by {err:.2e}");
    loss(&want.kappa).backward();
    loss(&got.kappa).backward();
    let (name, err) = worst_grad_error(&cpu_vs, &gpu_vs, 1.0);
    assert!(
        err < AMP_RTOL,
        "bf16 gradient of {name} differs by {err:.2e}"
    );
}

/// NHWC strides, as `x.to(memory_format=torch.channels_last)` (the trainer's conversion).
fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

#[test]
fn channels_last_matches_the_default_layout() {
    let Some(device) = cuda("channels_last_matches_the_default_layout") else {
        return;
    };
    let cfg = config(Fusion::Lgf);
    let (_, (gpu_vs, gpu)) = twins(&cfg, device);
    let x = images(8).to_device(device);
    let want = gpu.forward_t(&x, false);
    tch::no_grad(|| {
        for (_, mut t) in gpu_vs.variables() {
            if t.dim() == 4 {
                t.set_data(&channels_last(&t));
            }
        }
    });
    let conv = &gpu_vs.variables()["conv1.weight"];
    assert_eq!(conv.stride()[1], 1, "conv1.weight is not channels-last");
    let got = gpu.forward_t(&channels_last(&x), false);
    let err = relative_error(&got.kappa, &want.kappa);
    assert!(err < FP32_RTOL, "channels-last kappa differs by {err:.2e}");
}
