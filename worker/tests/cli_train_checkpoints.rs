//! `lgaf train` over the checkpoints it finds, in the store layout every run shares
//! (`<store>/runs/<run_id>/ckpt/<step>/`): `lgaf ckpt ls` lists what it wrote; one that does
//! not verify is never trained over in silence (the command fails naming it, and it stays
//! where it is; `--fresh` starts from step 0 and moves it aside for inspection); and the
//! single-process folders of earlier releases are refused with the conversion, which
//! `lgaf ckpt convert` then does.

mod common;

use std::path::Path;

use common::{committed_steps, fails, ok, s, temp_dir};
use lgaf_store::sha256_hex;

/// A tiny model, a checkpoint after every step, all kept, and a small held-out evaluation
/// at the end (the default one takes a minute on two cores).
const TINY: &str = r#"
[model]
arch = "r18"
width = 0.125
embedding_size = 32
[data]
batch_size = 8
workers = 1
[data.synthetic]
identities = 12
images_per_identity = 4
[train]
epochs = 1
progress = false
[optim]
warmup_epochs = 0.0
lr_steps = []
[checkpoint]
every_steps = 1
keep_last = 0
[eval]
identities = 4
pairs = 20
"#;

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `lgaf train` with `config` on the store `store` (run `default`) and `extra` flags.
fn train(config: &Path, store: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["train", "--config", s(config), "--checkpoint-dir", s(store)];
    args.extend(extra);
    args.iter().map(|a| a.to_string()).collect()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The committed steps of run `default` in `store`.
fn committed(store: &Path) -> Vec<u64> {
    committed_steps(store, "default")
}

#[test]
fn lgaf_train_writes_the_store_layout_that_lgaf_ckpt_reads() {
    let dir = temp_dir("train-store");
    let config = dir.join("train.toml");
    std::fs::write(&config, TINY).unwrap();
    let store = dir.join("store");
    ok(&strs(&train(&config, &store, &["--max-steps", "2"])));
    assert_eq!(committed(&store), [1, 2]);
    assert!(store
        .join("runs/default/ckpt/000000000002/MANIFEST.json")
        .is_file());

    // Exported weights are the checkpoint's network, byte for byte.
    let out = dir.join("w.safetensors");
    let text = ok(&[
        "ckpt",
        "export",
        "--store",
        s(&store),
        "--run",
        "default",
        "--out",
        s(&out),
    ]);
    assert!(text.contains("at step 2"), "{text}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(store.join("runs/default/ckpt/000000000002/model.safetensors")).unwrap()
    );

    // Started again on the same store and run, it resumes: no step is trained twice.
    ok(&strs(&train(&config, &store, &["--max-steps", "3"])));
    assert_eq!(committed(&store), [1, 2, 3]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_checkpoint_that_does_not_verify_is_never_trained_over_in_silence() {
    let dir = temp_dir("train-corrupt");
    let config = dir.join("train.toml");
    std::fs::write(&config, TINY).unwrap();
    let store = dir.join("store");
    ok(&strs(&train(&config, &store, &["--max-steps", "1"])));
    assert_eq!(committed(&store), [1]);

    // The only checkpoint is damaged: the command fails naming it and the failed check,
    // exits non-zero, and leaves it in place (it used to train from step 0 and delete it).
    let weights = store.join("runs/default/ckpt/000000000001/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&weights, &bytes).unwrap();
    let err = fails(&strs(&train(&config, &store, &[])));
    assert!(
        err.contains("step 1") && err.contains("SHA-256") && err.contains("--fresh"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&weights).unwrap(),
        bytes,
        "the evidence changed"
    );

    // Asked for, a fresh start trains from step 0 and keeps the damaged one aside.
    let fresh = train(&config, &store, &["--fresh", "--max-steps", "2"]);
    ok(&strs(&fresh));
    assert_eq!(committed(&store), [1, 2]);
    let aside = names(&store.join("runs/default/unverified"));
    assert!(
        aside.len() == 1 && aside[0].starts_with("000000000001-"),
        "{aside:?}"
    );
    let kept = store.join("runs/default/unverified").join(&aside[0]);
    assert_eq!(
        std::fs::read(kept.join("model.safetensors")).unwrap(),
        bytes
    );
    assert!(kept.join("MANIFEST.json").is_file());

    // And --fresh over a checkpoint that verifies is refused: it would throw it away.
    let err = fails(&strs(&fresh));
    assert!(err.contains("checkpoint 2 verifies"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Writes checkpoint `step` of run `default` in `store` as the single-process format of
/// earlier releases wrote it into `old` (`step-<n:010>/`, format `lgaf-checkpoint/1`): the
/// same three safetensors files (the classifier under its old name) and that manifest.
fn write_old_format(store: &Path, step: u64, old: &Path) {
    let from = store.join(format!("runs/default/ckpt/{step:012}"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(from.join("MANIFEST.json")).unwrap()).unwrap();
    let folder = old.join(format!("step-{step:010}"));
    std::fs::create_dir_all(&folder).unwrap();
    let mut files = Vec::new();
    for (key, name) in [
        ("model.safetensors", "model.safetensors"),
        ("optimizer.safetensors", "optimizer.safetensors"),
        (
            "classifier/rank-00000.safetensors",
            "classifier.safetensors",
        ),
    ] {
        let bytes = std::fs::read(from.join(key)).unwrap();
        std::fs::write(folder.join(name), &bytes).unwrap();
        files.push(serde_json::json!({
            "name": name, "bytes": bytes.len(), "sha256": sha256_hex(&bytes)
        }));
    }
    let state = &manifest["state"];
    let old_manifest = serde_json::json!({
        "format": "lgaf-checkpoint/1",
        "step": step,
        "epoch": manifest["epoch"],
        "created_unix": 1_700_000_000u64,
        "files": files,
        "state": {
            "step": step,
            "epoch": manifest["epoch"],
            "loss_scale": state["loss_scale"],
            "loss_scale_good_steps": state["loss_scale_good_steps"],
            "config": state["config"],
        },
    });
    std::fs::write(
        folder.join("MANIFEST.json"),
        serde_json::to_vec_pretty(&old_manifest).unwrap(),
    )
    .unwrap();
}

#[test]
fn the_old_single_process_format_is_refused_with_its_conversion_which_works() {
    let dir = temp_dir("train-old-format");
    let config = dir.join("train.toml");
    std::fs::write(&config, TINY).unwrap();
    let store = dir.join("store");
    ok(&strs(&train(&config, &store, &["--max-steps", "2"])));
    let old = dir.join("old");
    write_old_format(&store, 2, &old);
    let old_model = std::fs::read(old.join("step-0000000002/model.safetensors")).unwrap();

    // Training on the old folder is refused, with the command that converts it.
    let err = fails(&strs(&train(&config, &old, &[])));
    assert!(
        err.contains("step-0000000002")
            && err.contains("lgaf-checkpoint/1")
            && err.contains(&format!("lgaf ckpt convert {}", old.display())),
        "{err}"
    );
    assert!(!old.join("runs").exists(), "nothing was to be written");

    // Converted in place, it is a run of the store: listed, and resumed from step 2.
    let text = ok(&["ckpt", "convert", s(&old), "--store", s(&old)]);
    assert!(text.contains("converted steps [2]"), "{text}");
    assert_eq!(committed(&old), [2]);
    assert_eq!(
        std::fs::read(old.join("runs/default/ckpt/000000000002/model.safetensors")).unwrap(),
        old_model
    );
    ok(&strs(&train(&config, &old, &["--max-steps", "3"])));
    assert_eq!(committed(&old), [2, 3]);

    // A damaged old checkpoint is not converted, and says why.
    let other = dir.join("other");
    write_old_format(&store, 2, &other);
    let weights = other.join("step-0000000002/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let err = fails(&["ckpt", "convert", s(&other), "--store", s(&other)]);
    assert!(
        err.contains("SHA-256") && err.contains("none was converted"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A manifest that cannot be read (cut short) counts as a checkpoint that does not verify:
/// training stops naming it instead of starting again from step 0 and writing over it.
#[test]
fn a_damaged_manifest_is_never_trained_over_in_silence() {
    let dir = temp_dir("train-bad-manifest");
    let config = dir.join("train.toml");
    std::fs::write(&config, TINY).unwrap();
    let store = dir.join("store");
    ok(&strs(&train(&config, &store, &["--max-steps", "1"])));
    let manifest = store.join("runs/default/ckpt/000000000001/MANIFEST.json");
    let full = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &full[..full.len() / 2]).unwrap();
    let err = fails(&strs(&train(&config, &store, &[])));
    assert!(
        err.contains("step 1") && err.contains("MANIFEST.json") && err.contains("--fresh"),
        "{err}"
    );
    assert_eq!(std::fs::read(&manifest).unwrap().len(), full.len() / 2);
    // --fresh sets it aside with its objects, and starts again.
    ok(&strs(&train(
        &config,
        &store,
        &["--fresh", "--max-steps", "1"],
    )));
    assert_eq!(committed(&store), [1]);
    assert_eq!(names(&store.join("runs/default/unverified")).len(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Users of the old default (`checkpoint.dir = "runs/default"`, now `runs-store`) are told
/// where their checkpoints are and how to convert them, instead of training from step 0.
#[test]
fn old_checkpoints_in_the_old_default_folder_are_not_forgotten() {
    let dir = temp_dir("train-old-default");
    let config = dir.join("train.toml");
    std::fs::write(&config, TINY).unwrap();
    let store = dir.join("store");
    ok(&strs(&train(&config, &store, &["--max-steps", "1"])));
    write_old_format(&store, 1, &dir.join("runs/default"));
    // The default checkpoint.dir, from a working directory holding the old default folder.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lgaf"))
        .args(["train", "--config", s(&config)])
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("runs/default") && err.contains("lgaf ckpt convert runs/default --store"),
        "{err}"
    );
    // Asked to start afresh, it does, and leaves the old folder as it is.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lgaf"))
        .args([
            "train",
            "--config",
            s(&config),
            "--fresh",
            "--max-steps",
            "1",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(committed(&dir.join("runs-store")), [1]);
    assert_eq!(names(&dir.join("runs/default")), ["step-0000000001"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_run_id_is_one_folder_name() {
    let dir = temp_dir("train-run-id");
    let config = dir.join("train.toml");
    std::fs::write(&config, TINY).unwrap();
    let err = fails(&strs(&train(
        &config,
        &dir.join("store"),
        &["--run-id", "a b"],
    )));
    assert!(
        err.contains("`a b`") && err.contains("1 to 128 letters"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
