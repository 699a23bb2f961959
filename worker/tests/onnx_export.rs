//! `lgaf export --format onnx` against `lgaf embed`: onnxruntime (the project venv's) embeds
//! a folder of faces to the embeddings `lgaf embed` gives, to 1e-4, for `lgf` and `global`
//! fusion at r18 and r100 (full width). The weights carry BatchNorm statistics and LGF
//! buffers from real forward passes, so eval-mode normalisation and the attention weights
//! are exercised. Needs the project virtualenv (`make test` makes it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ok, s, temp_dir};
use lgaf_data::synth::{Factor, SynthConfig, SynthDataset};
use lgaf_data::{image_folder, npy};
use lgaf_model::{weights, Arch, Fusion, Lgaf, ModelConfig};
use tch::{Device, Kind, Tensor};

const FACES: usize = 8;
const SIDE: usize = 112;

fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        python.exists(),
        "the ONNX tests need the project virtualenv (torch, onnx, onnxruntime), but {} does \
         not exist: run `make test`, which creates it",
        python.display()
    );
    python
}

/// Faces of every nuisance factor, as PNG files in `dir/faces` and as their pixel values.
fn faces(dir: &Path) -> (PathBuf, Vec<u8>) {
    let folder = dir.join("faces");
    std::fs::create_dir_all(&folder).unwrap();
    let ds = SynthDataset::new(SynthConfig::default());
    let mut pixels = Vec::new();
    for i in 0..FACES {
        let face = ds.render(i as u32, 1, Factor::ALL[i % Factor::ALL.len()]);
        image_folder::save_png(&folder.join(format!("face{i:02}.png")), &face.rgb, 112, 112)
            .unwrap();
        pixels.extend_from_slice(&face.rgb);
    }
    (folder, pixels)
}

/// Weights whose BatchNorm running statistics come from training-mode passes over `pixels`
/// and whose LGF buffers sit at the eval-mode norms' mean and spread.
fn weights_with_statistics(cfg: &ModelConfig, pixels: &[u8], path: &Path) {
    tch::manual_seed(3);
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let model = Lgaf::new(&vs.root(), cfg).unwrap();
    let images = (Tensor::from_slice(pixels)
        .view([FACES as i64, SIDE as i64, SIDE as i64, 3])
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        - 127.5)
        / 127.5;
    tch::no_grad(|| {
        for _ in 0..4 {
            model.forward_t(&images, true);
        }
        if let Some(norms) = model.forward_t(&images, false).norms {
            let vars = vs.variables();
            vars["lgf.norm_mean"]
                .shallow_clone()
                .copy_(&norms.mean_dim(0, false, Kind::Float));
            let spread = norms.std_dim(0, true, false) + 1.0;
            vars["lgf.norm_std"].shallow_clone().copy_(&spread);
        }
    });
    vs.freeze();
    let metadata = std::collections::HashMap::new();
    weights::save(&vs, path, &metadata).unwrap();
}

fn embeddings_agree(arch: Arch, fusion: Fusion) {
    let cfg = ModelConfig {
        arch,
        fusion,
        ..Default::default()
    };
    let dir = temp_dir(&format!("onnx-{}-{}", arch.name(), fusion.name()));
    let (folder, pixels) = faces(&dir);
    let weights_path = dir.join("weights.safetensors");
    weights_with_statistics(&cfg, &pixels, &weights_path);
    let model_args = ["--arch", arch.name(), "--fusion", fusion.name()];

    let embedded = dir.join("lgaf.npy");
    let mut args = vec![
        "embed",
        "--weights",
        s(&weights_path),
        "--input",
        s(&folder),
    ];
    args.extend(["--out", s(&embedded)]);
    args.extend(model_args);
    ok(&args);

    let onnx = dir.join("model.onnx");
    let python = python();
    let mut args = vec!["export", "--weights", s(&weights_path), "--format", "onnx"];
    args.extend(["--out", s(&onnx), "--python", s(&python)]);
    args.extend(model_args);
    let said = ok(&args);
    assert!(
        said.contains("opset 18") && said.contains("[N, 512]"),
        "{said}"
    );

    let pixel_file = dir.join("pixels.npy");
    let as_f32: Vec<f32> = pixels.iter().map(|&p| f32::from(p)).collect();
    npy::write_f32(&pixel_file, &[FACES, SIDE, SIDE, 3], &as_f32).unwrap();
    let from_onnx = dir.join("onnx.npy");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx/run_onnxruntime.py");
    let run = Command::new(&python)
        .arg(script)
        .args([&onnx, &pixel_file, &from_onnx])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "onnxruntime on {}:\n{}",
        onnx.display(),
        String::from_utf8_lossy(&run.stderr)
    );

    let (ours, theirs) = (common::rows(&embedded), common::rows(&from_onnx));
    assert_eq!((ours.len(), ours[0].len()), (FACES, 512));
    assert_eq!(theirs.len(), FACES);
    let worst = ours
        .iter()
        .zip(&theirs)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0f32, f32::max);
    assert!(
        worst < 1e-4,
        "{} {}: largest difference {worst}",
        arch.name(),
        fusion.name()
    );
    // Distinct faces have distinct embeddings (the check is not of a constant).
    assert!(!common::close(&ours[0], &ours[1]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn r18_lgf_matches_lgaf_embed() {
    embeddings_agree(Arch::R18, Fusion::Lgf);
}

#[test]
fn r18_global_matches_lgaf_embed() {
    embeddings_agree(Arch::R18, Fusion::Global);
}

#[test]
fn r100_lgf_matches_lgaf_embed() {
    embeddings_agree(Arch::R100, Fusion::Lgf);
}

#[test]
fn r100_global_matches_lgaf_embed() {
    embeddings_agree(Arch::R100, Fusion::Global);
}

#[test]
fn weights_of_another_shape_are_refused_before_python_runs() {
    let dir = temp_dir("onnx-refused");
    let weights_path = dir.join("r18.safetensors");
    ok(&[
        "init",
        "--arch",
        "r18",
        "--width",
        "0.25",
        "--out",
        s(&weights_path),
    ]);
    let err = common::fails(&[
        "export",
        "--arch",
        "r18",
        "--width",
        "0.5",
        "--weights",
        s(&weights_path),
        "--out",
        s(&dir.join("m.onnx")),
        "--python",
        "/nonexistent/python",
    ]);
    assert!(
        err.contains("has shape") && err.contains("the model expects"),
        "{err}"
    );
    let err = common::fails(&[
        "export",
        "--arch",
        "r18",
        "--width",
        "0.25",
        "--weights",
        s(&weights_path),
        "--out",
        s(&dir.join("m.onnx")),
        "--python",
        "/nonexistent/python",
    ]);
    assert!(
        err.contains("cannot run /nonexistent/python") && err.contains("make venv"),
        "{err}"
    );
    assert!(!dir.join("m.onnx").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
