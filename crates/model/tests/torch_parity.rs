//! Parity with the PyTorch twin of the model, `worker/python/lgaf_torch.py`.
//!
//! Each test runs `bench/torch_ref/export_reference.py` with the project virtualenv's
//! python: it builds the model in PyTorch with randomised BatchNorm, PReLU and LGF state,
//! writes its state dict (`num_batches_tracked` included), an input batch, and the outputs of
//! an eval forward and of one training step (CosFace through Partial FC, backward). The
//! Rust model loads that state dict unchanged and must reproduce the outputs, the LGF
//! buffers after the EMA update, the loss and the gradients.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use lgaf_model::margin::CombinedMargin;
use lgaf_model::partial_fc::{ClassRange, PartialFc};
use lgaf_model::{weights, Arch, Fusion, Lgaf, LgfConfig, ModelConfig, ModelError};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Forward outputs, buffers and loss: the same ops in the same order (observed: bit-exact).
const FORWARD_RTOL: f64 = 1e-4;
/// Gradients after a backward pass through the whole network (observed: about 3e-6).
const GRAD_RTOL: f64 = 1e-4;

/// A scratch directory under the system temp dir, removed on drop (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("lgaf-torch-parity-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The project virtualenv's python. Its absence is a failure, not a skip: parity is a test
/// of record, and `make test` creates the virtualenv.
fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        python.exists(),
        "the PyTorch parity tests need the project virtualenv, but {} does not exist: \
         run `make test` (it creates .venv with torch 2.11.0) and try again",
        python.display()
    );
    python
}

/// One parity case: the model shape, and the exporter's seed, batch and class count.
struct Case {
    cfg: ModelConfig,
    seed: u64,
    batch: i64,
    classes: i64,
}

impl Case {
    fn new(fusion: Fusion, seed: u64) -> Self {
        Self {
            cfg: ModelConfig {
                arch: Arch::R18,
                fusion,
                width: 0.25,
                embedding_size: 512,
                heads: 4,
                kernels: vec![1, 3, 5],
                mid_channels: None,
                dropout: 0.0,
                lgf: LgfConfig::default(),
            },
            seed,
            batch: 4,
            classes: 10,
        }
    }

    /// Runs the exporter into `out`; `extra` are further command-line arguments.
    fn export(&self, out: &Path, extra: &[&str]) {
        let cfg = &self.cfg;
        let kernels: Vec<String> = cfg.kernels.iter().map(|k| k.to_string()).collect();
        let mut cmd = Command::new(python());
        cmd.arg(repo_root().join("bench/torch_ref/export_reference.py"))
            .arg("--out")
            .arg(out)
            .args(["--arch", cfg.arch.name(), "--fusion", cfg.fusion.name()])
            .args(["--width", &cfg.width.to_string()])
            .args(["--embedding-size", &cfg.embedding_size.to_string()])
            .args(["--heads", &cfg.heads.to_string()])
            .args(["--kernels", &kernels.join(",")])
            .args(["--dropout", &cfg.dropout.to_string()])
            .args(["--lgf-h", &cfg.lgf.h.to_string()])
            .args(["--lgf-alpha", &cfg.lgf.alpha.to_string()])
            .args(["--seed", &self.seed.to_string()])
            .args(["--batch", &self.batch.to_string()])
            .args(["--classes", &self.classes.to_string()])
            .args(extra);
        if let Some(mid) = cfg.mid_channels {
            cmd.args(["--mid-channels", &mid.to_string()]);
        }
        if cfg.lgf.norm_grad {
            cmd.arg("--norm-grad");
        }
        let output = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
        assert!(
            output.status.success(),
            "export_reference.py failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    weights::read_tensors(path)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .collect()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).reshape([-1]).double_value(&[0])
}

/// Asserts `got` matches `want` to `rtol` relative to the largest magnitude of `want`;
/// returns (max abs difference, that difference relative to max |want|).
fn close(name: &str, got: &Tensor, want: &Tensor, rtol: f64) -> (f64, f64) {
    assert!(got.defined(), "{name}: no value (gradient not computed?)");
    assert_eq!(got.size(), want.size(), "{name}: shapes differ");
    let got = got.detach().to_kind(Kind::Double);
    let want = want.to_kind(Kind::Double);
    let scale = scalar(&want.abs().max());
    let diff = scalar(&(&got - &want).abs().max());
    let rel = diff / scale.max(f64::MIN_POSITIVE);
    eprintln!("{name:<20} max|want| {scale:<12.6e} max abs diff {diff:.3e}  rel {rel:.3e}");
    assert!(
        scale > 0.0,
        "{name}: the reference is all zeros, nothing is tested"
    );
    assert!(
        rel <= rtol,
        "{name}: max abs difference {diff:.3e} is {rel:.3e} of max |want| {scale:.3e} \
         (tolerance {rtol:.0e})"
    );
    (diff, rel)
}

/// Loads the exported state dict into the Rust model and replays the reference's eval
/// forward and training step.
fn check_parity(case: &Case, dir: &Path) {
    let input = read(&dir.join("input.safetensors"));
    let expected = read(&dir.join("expected.safetensors"));
    let (images, labels, centres) = (&input["images"], &input["labels"], &input["centres"]);
    let lgf = case.cfg.fusion == Fusion::Lgf;

    let mut vs = VarStore::new(Device::Cpu);
    let model = Lgaf::new(&vs.root(), &case.cfg).expect("valid config");
    weights::load(&mut vs, &dir.join("weights.safetensors"))
        .unwrap_or_else(|e| panic!("a PyTorch state dict must load unchanged: {e}"));

    // Eval mode: running statistics and LGF buffers are read, not updated.
    let eval = tch::no_grad(|| model.forward_t(images, false));
    close(
        "eval_kappa",
        &eval.kappa,
        &expected["eval_kappa"],
        FORWARD_RTOL,
    );
    match (&eval.gamma, expected.get("eval_gamma")) {
        (Some(got), Some(want)) => {
            close("eval_gamma", got, want, FORWARD_RTOL);
        }
        (None, None) => {}
        (got, want) => panic!(
            "gamma present in Rust: {}, in PyTorch: {}",
            got.is_some(),
            want.is_some()
        ),
    }

    // One training step: forward (LGF EMA updated first), CosFace through Partial FC at
    // world size 1 and sample rate 1, backward.
    tch::manual_seed(case.seed as i64);
    let out = model.forward_t(images, true);
    close(
        "train_kappa",
        &out.kappa,
        &expected["train_kappa"],
        FORWARD_RTOL,
    );
    if lgf {
        let gamma = out.gamma.as_ref().expect("lgf fusion yields gamma");
        close("train_gamma", gamma, &expected["train_gamma"], FORWARD_RTOL);
        let buffers = model.lgf().expect("lgf fusion has an Lgf");
        close(
            "train_norm_mean",
            &buffers.norm_mean,
            &expected["train_norm_mean"],
            FORWARD_RTOL,
        );
        close(
            "train_norm_std",
            &buffers.norm_std,
            &expected["train_norm_std"],
            FORWARD_RTOL,
        );
    }
    let d = case.cfg.embedding_size;
    let mut pfc = PartialFc::new(
        ClassRange::of_rank(case.classes, 0, 1),
        d,
        1.0,
        CombinedMargin::cosface(),
        0,
        Device::Cpu,
    );
    assert_eq!(centres.size(), vec![case.classes, d]);
    tch::no_grad(|| {
        pfc.weight.copy_(centres);
    });
    let f = pfc.forward(&out.kappa, labels, 0);
    f.shard.surrogate.backward();
    close(
        "train_loss",
        &f.loss.reshape([1]),
        &expected["train_loss"],
        FORWARD_RTOL,
    );

    let vars = vs.variables();
    close(
        "grad_conv1_weight",
        &vars["conv1.weight"].grad(),
        &expected["grad_conv1_weight"],
        GRAD_RTOL,
    );
    match expected.get("grad_fc_weight") {
        Some(want) => {
            close("grad_fc_weight", &vars["fc.weight"].grad(), want, GRAD_RTOL);
        }
        None => assert!(!case.cfg.fusion.has_global(), "no reference fc gradient"),
    }
    close(
        "grad_centres",
        &f.shard.sampled_weight.grad(),
        &expected["grad_centres"],
        GRAD_RTOL,
    );
}

fn parity(case: Case, test: &str) {
    let dir = TempDir::new(test);
    case.export(&dir.0, &[]);
    check_parity(&case, &dir.0);
}

#[test]
fn lgf_fusion_matches_pytorch() {
    parity(Case::new(Fusion::Lgf, 0), "lgf");
}

#[test]
fn lgf_with_gradient_through_the_norms_matches_pytorch() {
    let mut case = Case::new(Fusion::Lgf, 3);
    case.cfg.lgf.norm_grad = true;
    parity(case, "lgf-norm-grad");
}

#[test]
fn global_fusion_is_insightface_iresnet() {
    parity(Case::new(Fusion::Global, 1), "global");
}

#[test]
fn add_fusion_matches_pytorch() {
    parity(Case::new(Fusion::Add, 2), "add");
}

/// The other direction: weights saved by the Rust model load strictly into PyTorch
/// (`load_state_dict(strict=True)`), and both then compute the same thing.
#[test]
fn rust_weights_load_into_pytorch() {
    let case = Case {
        cfg: ModelConfig {
            mid_channels: Some(24),
            kernels: vec![3, 5],
            embedding_size: 128,
            ..Case::new(Fusion::Local, 4).cfg
        },
        ..Case::new(Fusion::Local, 4)
    };
    let dir = TempDir::new("rust-to-torch");
    tch::manual_seed(4);
    let vs = VarStore::new(Device::Cpu);
    let model = Lgaf::new(&vs.root(), &case.cfg).unwrap();
    // Non-trivial running statistics: a few training-mode passes.
    tch::no_grad(|| {
        for _ in 0..2 {
            let _ = model.forward_t(
                &(Tensor::rand([8, 3, 112, 112], (Kind::Float, Device::Cpu)) * 2 - 1),
                true,
            );
        }
    });
    let rust_file = dir.join("rust.safetensors");
    weights::save(&vs, &rust_file, &HashMap::new()).unwrap();
    case.export(&dir.0, &["--load-weights", rust_file.to_str().unwrap()]);

    // PyTorch re-saved exactly what it loaded.
    let ours = read(&rust_file);
    let theirs = read(&dir.join("weights.safetensors"));
    assert_eq!(ours.len(), theirs.len());
    for (name, t) in &ours {
        assert!(
            t.equal(&theirs[name]),
            "{name} changed on the way through PyTorch"
        );
    }
    check_parity(&case, &dir.0);
}

#[test]
fn wrong_pytorch_weights_name_the_tensor_and_both_shapes() {
    let case = Case::new(Fusion::Lgf, 5);
    let dir = TempDir::new("wrong-weights");
    case.export(&dir.0, &[]);
    let good = read(&dir.join("weights.safetensors"));
    let load = |tensors: &HashMap<String, Tensor>| {
        let path = dir.join("edited.safetensors");
        let mut named: Vec<(String, Tensor)> = tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        weights::save_tensors(&named, &path, &HashMap::new()).unwrap();
        let mut vs = VarStore::new(Device::Cpu);
        let _model = Lgaf::new(&vs.root(), &case.cfg).unwrap();
        weights::load(&mut vs, &path)
    };
    load(&good).expect("the unedited file loads");

    // One tensor removed.
    let mut missing = good
        .iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect::<HashMap<_, _>>();
    missing.remove("mhms.heads.2.se.fc1.bias");
    let err = load(&missing).unwrap_err();
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("`mhms.heads.2.se.fc1.bias`") && msg.contains("[6]"),
        "{msg}"
    );

    // One tensor reshaped: [32, 32, 3, 3] stored as [32, 288].
    let mut reshaped = missing;
    reshaped.insert(
        "mhms.heads.2.se.fc1.bias".into(),
        good["mhms.heads.2.se.fc1.bias"].shallow_clone(),
    );
    let name = "layer2.1.conv2.weight";
    assert_eq!(good[name].size(), vec![32, 32, 3, 3]);
    reshaped.insert(name.into(), good[name].reshape([32, 288]));
    let err = load(&reshaped).unwrap_err();
    assert!(matches!(err, ModelError::ShapeMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("`{name}`"))
            && msg.contains("[32, 288]")
            && msg.contains("[32, 32, 3, 3]"),
        "{msg}"
    );
}
