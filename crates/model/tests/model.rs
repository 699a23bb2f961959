//! Shapes, parameter names and weights I/O of the whole network.

use std::collections::HashMap;
use std::path::PathBuf;

use lgaf_model::{weights, Arch, Fusion, Lgaf, ModelConfig, ModelError};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn cfg(arch: Arch, fusion: Fusion, width: f64) -> ModelConfig {
    ModelConfig {
        arch,
        fusion,
        width,
        ..Default::default()
    }
}

fn build(cfg: &ModelConfig) -> (VarStore, Lgaf) {
    let vs = VarStore::new(Device::Cpu);
    let model = Lgaf::new(&vs.root(), cfg).expect("valid config");
    (vs, model)
}

fn shapes(vs: &VarStore) -> HashMap<String, Vec<i64>> {
    vs.variables()
        .into_iter()
        .map(|(k, v)| (k, v.size()))
        .collect()
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lgaf-model-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("w.safetensors")
}

#[test]
fn every_depth_maps_a_face_to_the_embedding() {
    tch::manual_seed(0);
    for arch in [Arch::R18, Arch::R34, Arch::R50, Arch::R100, Arch::R200] {
        let cfg = ModelConfig {
            embedding_size: 64,
            ..cfg(arch, Fusion::Lgf, 0.125)
        };
        let (_vs, model) = build(&cfg);
        let images = Tensor::randn([2, 3, 112, 112], (Kind::Float, Device::Cpu));
        // Training mode: an untrained deep net in eval mode has no running statistics to
        // keep its activations in range.
        let out = model.forward_t(&images, true);
        assert_eq!(out.kappa.size(), vec![2, 64], "{arch:?}");
        assert_eq!(out.gamma.as_ref().unwrap().size(), vec![2, 2], "{arch:?}");
        let norms =
            Vec::<f32>::try_from(out.embedding().norm_scalaropt_dim(2.0, [1i64], false)).unwrap();
        assert!(
            norms.iter().all(|n| (n - 1.0).abs() < 1e-5),
            "{arch:?}: {norms:?}"
        );
    }
}

#[test]
fn block_counts_follow_the_insightface_depths() {
    for (arch, blocks) in [
        (Arch::R18, [2, 2, 2, 2]),
        (Arch::R34, [3, 4, 6, 3]),
        (Arch::R50, [3, 4, 14, 3]),
        (Arch::R100, [3, 13, 30, 3]),
        (Arch::R200, [6, 26, 60, 6]),
    ] {
        let (vs, _) = build(&cfg(arch, Fusion::Global, 0.0625));
        let names = shapes(&vs);
        for (stage, &n) in blocks.iter().enumerate() {
            let stage = stage + 1;
            assert!(names.contains_key(&format!("layer{stage}.{}.conv1.weight", n - 1)));
            assert!(!names.contains_key(&format!("layer{stage}.{n}.conv1.weight")));
            assert!(names.contains_key(&format!("layer{stage}.0.downsample.0.weight")));
            assert!(!names.contains_key(&format!("layer{stage}.1.downsample.0.weight")));
        }
    }
}

#[test]
fn width_one_names_and_shapes_are_the_specs() {
    let (vs, _) = build(&cfg(Arch::R100, Fusion::Lgf, 1.0));
    let names = shapes(&vs);
    let expect: &[(&str, &[i64])] = &[
        ("conv1.weight", &[64, 3, 3, 3]),
        ("bn1.weight", &[64]),
        ("bn1.running_mean", &[64]),
        ("bn1.num_batches_tracked", &[]),
        ("prelu.weight", &[64]),
        ("layer1.0.bn1.weight", &[64]),
        ("layer1.0.downsample.0.weight", &[64, 64, 1, 1]),
        ("layer1.0.downsample.1.running_var", &[64]),
        ("layer2.0.conv1.weight", &[128, 64, 3, 3]),
        ("layer3.12.conv2.weight", &[256, 256, 3, 3]),
        ("layer4.2.prelu.weight", &[512]),
        ("bn2.weight", &[512]),
        ("fc.weight", &[512, 25088]),
        ("fc.bias", &[512]),
        ("features.weight", &[512]),
        ("features.running_var", &[512]),
        ("mhms.heads.0.branches.0.0.weight", &[128, 512, 1, 1]),
        ("mhms.heads.3.branches.2.0.weight", &[128, 512, 5, 5]),
        ("mhms.heads.1.branches.1.1.running_mean", &[128]),
        ("mhms.heads.2.branches.1.2.weight", &[128]),
        ("mhms.heads.0.lanets.1.conv1.weight", &[8, 128, 1, 1]),
        ("mhms.heads.0.lanets.1.conv1.bias", &[8]),
        ("mhms.heads.0.lanets.1.conv2.weight", &[1, 8, 1, 1]),
        ("mhms.heads.0.se.fc1.weight", &[24, 384]),
        ("mhms.heads.0.se.fc2.bias", &[384]),
        ("mhms.heads.0.proj.weight", &[128, 18816]),
        ("mhms.heads.3.bn.weight", &[128]),
        ("lgf.norm_mean", &[2]),
        ("lgf.norm_std", &[2]),
    ];
    for (name, shape) in expect {
        assert_eq!(names.get(*name).map(|s| &s[..]), Some(*shape), "{name}");
    }
    // Branch convs have no bias; every BatchNorm has the five PyTorch entries.
    assert!(!names.contains_key("mhms.heads.0.branches.0.0.bias"));
    assert!(!names.contains_key("conv1.bias"));
    let bn_weights = names.keys().filter(|k| k.ends_with("running_mean")).count();
    let tracked = names
        .keys()
        .filter(|k| k.ends_with("num_batches_tracked"))
        .count();
    assert_eq!(bn_weights, tracked);
    assert_eq!(
        vs.variables()["bn1.num_batches_tracked"].kind(),
        Kind::Int64
    );
    // The features BatchNorm1d weight is frozen at 1, like insightface's.
    let trainable = vs.trainable_variables().len();
    let frozen_by_design = names.keys().filter(|k| *k == "features.weight").count();
    let buffers = names
        .keys()
        .filter(|k| {
            k.ends_with("running_mean")
                || k.ends_with("running_var")
                || k.ends_with("num_batches_tracked")
                || k.starts_with("lgf.")
        })
        .count();
    assert_eq!(trainable + frozen_by_design + buffers, names.len());
}

#[test]
fn fusion_modes_build_only_their_branches() {
    let has = |fusion, prefix: &str| {
        let (vs, _) = build(&cfg(Arch::R18, fusion, 0.125));
        vs.variables().keys().any(|k| k.starts_with(prefix))
    };
    assert!(!has(Fusion::Global, "mhms.") && !has(Fusion::Global, "lgf."));
    assert!(has(Fusion::Global, "fc.") && has(Fusion::Global, "features."));
    assert!(!has(Fusion::Local, "fc.") && has(Fusion::Local, "mhms."));
    assert!(has(Fusion::Add, "mhms.") && !has(Fusion::Add, "lgf."));
    assert!(has(Fusion::Lgf, "lgf.norm_mean"));
}

#[test]
fn save_then_load_is_bit_exact() {
    let config = cfg(Arch::R18, Fusion::Lgf, 0.125);
    tch::manual_seed(1);
    let (vs, model) = build(&config);
    // Move the buffers away from their initial values.
    let _ = model.forward_t(
        &Tensor::randn([4, 3, 112, 112], (Kind::Float, Device::Cpu)),
        true,
    );
    let path = temp_path("roundtrip");
    let meta = HashMap::from([("arch".to_string(), "r18".to_string())]);
    weights::save(&vs, &path, &meta).unwrap();
    assert_eq!(weights::read_metadata(&path).unwrap()["arch"], "r18");

    tch::manual_seed(2);
    let (mut vs2, _) = build(&config);
    weights::load(&mut vs2, &path).unwrap();
    let (a, b) = (vs.variables(), vs2.variables());
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "{name} differs after the round trip");
    }
    assert!(a["bn1.num_batches_tracked"].int64_value(&[]) == 1);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn loading_wrong_weights_names_the_tensor_and_both_shapes() {
    let (vs, _) = build(&cfg(Arch::R18, Fusion::Global, 0.125));
    let path = temp_path("wrong");
    weights::save(&vs, &path, &HashMap::new()).unwrap();

    // Another width: shapes differ.
    let (mut wide, _) = build(&cfg(Arch::R18, Fusion::Global, 0.25));
    let err = weights::load(&mut wide, &path).unwrap_err();
    assert!(matches!(err, ModelError::ShapeMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("bn1.") || msg.contains("conv1.weight"),
        "{msg}"
    );
    assert!(msg.contains("[8") && msg.contains("[16"), "{msg}");

    // An LGAF model needs tensors an IResNet file does not have.
    let (mut lgaf, _) = build(&cfg(Arch::R18, Fusion::Lgf, 0.125));
    let msg = weights::load(&mut lgaf, &path).unwrap_err().to_string();
    assert!(msg.contains("lgf.norm_") || msg.contains("mhms."), "{msg}");
    assert!(msg.contains("missing"), "{msg}");

    // And the other way: tensors the model does not have are refused, by name.
    let (lgaf_vs, _) = build(&cfg(Arch::R18, Fusion::Lgf, 0.125));
    weights::save(&lgaf_vs, &path, &HashMap::new()).unwrap();
    let (mut global, _) = build(&cfg(Arch::R18, Fusion::Global, 0.125));
    let msg = weights::load(&mut global, &path).unwrap_err().to_string();
    assert!(
        msg.contains("does not have") && msg.contains("lgf.norm_mean"),
        "{msg}"
    );

    // A truncated file is an error naming the file.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = weights::load(&mut lgaf, &path).unwrap_err().to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn invalid_configs_name_the_field() {
    let vs = VarStore::new(Device::Cpu);
    let bad = ModelConfig {
        heads: 3,
        ..Default::default()
    };
    let msg = Lgaf::new(&vs.root(), &bad).unwrap_err().to_string();
    assert!(msg.contains("heads"), "{msg}");
    let bad = ModelConfig {
        kernels: vec![1, 2],
        ..Default::default()
    };
    let msg = Lgaf::new(&vs.root(), &bad).unwrap_err().to_string();
    assert!(msg.contains("kernels"), "{msg}");
}
