//! `lgaf train` over the checkpoints it finds: one that does not verify is never trained
//! over in silence. With no checkpoint that verifies the command fails naming it, and it
//! stays where it is; `--fresh` starts from step 0 and moves it aside for inspection.

mod common;

use std::path::Path;

use common::{fails, ok, s, temp_dir};

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

fn folders(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_checkpoint_that_does_not_verify_is_never_trained_over_in_silence() {
    let dir = temp_dir("train-corrupt");
    let config = dir.join("train.toml");
    std::fs::write(&config, TINY).unwrap();
    let ckpt = dir.join("ckpt");
    let train = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "train",
            "--config",
            s(&config),
            "--checkpoint-dir",
            s(&ckpt),
        ];
        args.extend(extra);
        args.iter().map(|a| a.to_string()).collect()
    };
    let args = train(&["--max-steps", "1"]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(folders(&ckpt), ["step-0000000001"]);

    // The only checkpoint is damaged: the command fails naming it and the failed check,
    // exits non-zero, and leaves it in place (it used to train from step 0 and delete it).
    let weights = ckpt.join("step-0000000001/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&weights, &bytes).unwrap();
    let args = train(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = fails(&args);
    assert!(
        err.contains("step-0000000001") && err.contains("SHA-256") && err.contains("--fresh"),
        "{err}"
    );
    assert_eq!(folders(&ckpt), ["step-0000000001"]);
    assert_eq!(
        std::fs::read(&weights).unwrap(),
        bytes,
        "the evidence changed"
    );

    // Asked for, a fresh start trains from step 0 and keeps the damaged one aside.
    let args = train(&["--fresh", "--max-steps", "2"]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let names = folders(&ckpt);
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(
        [&names[0], &names[2]],
        ["step-0000000001", "step-0000000002"]
    );
    assert!(
        names[1].starts_with("step-0000000001.unverified-"),
        "{names:?}"
    );
    let aside = ckpt.join(&names[1]).join("model.safetensors");
    assert_eq!(std::fs::read(aside).unwrap(), bytes);

    // And --fresh over a checkpoint that verifies is refused: it would throw it away.
    let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.contains("step-0000000002") && err.contains("verifies"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
