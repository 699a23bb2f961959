//! Training end to end on the synthetic faces, on the CPU: learning, and exact resume.

use std::path::PathBuf;
use std::sync::Mutex;

use lgaf_model::Arch;
use lgaf_worker::{TrainConfig, Trainer};

/// libtorch's generator is process-wide: trainers in parallel tests would draw each other's
/// initial weights. One trainer at a time, as in the product.
static ONE_TRAINER: Mutex<()> = Mutex::new(());

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lgaf-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A model small enough to learn in seconds on two cores.
fn small_config(dir: PathBuf) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.model.arch = Arch::R18;
    cfg.model.width = 0.125;
    cfg.model.embedding_size = 64;
    cfg.data.batch_size = 32;
    cfg.data.prefetch = 2;
    cfg.data.synthetic.identities = 40;
    cfg.data.synthetic.images_per_identity = 16;
    cfg.train.device = "cpu".into();
    cfg.train.epochs = 100;
    cfg.train.progress = false;
    cfg.optim.lr_steps = vec![];
    cfg.optim.warmup_epochs = 0.5;
    cfg.checkpoint.dir = dir.display().to_string();
    cfg.checkpoint.every_steps = 0;
    cfg.eval.identities = 40;
    cfg.eval.pairs = 300;
    cfg
}

fn losses(trainer: &mut Trainer) -> Vec<f64> {
    let mut out = Vec::new();
    trainer.run(|r, _| out.push(r.loss)).unwrap();
    out
}

#[test]
fn a_short_cpu_run_learns_and_verifies_held_out_identities() {
    let _one = ONE_TRAINER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("learn");
    let mut cfg = small_config(dir.clone());
    cfg.train.max_steps = 100;
    let mut trainer = Trainer::new(cfg).unwrap();
    let held_out = trainer.held_out();
    let before = held_out.verify(trainer.model(), trainer.device());
    let l = losses(&mut trainer);
    let first: f64 = l[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = l[l.len() - 10..].iter().sum::<f64>() / 10.0;
    let after = held_out.verify(trainer.model(), trainer.device());
    eprintln!(
        "loss {first:.3} -> {last:.3}; held-out accuracy {:.3} -> {:.3}",
        before.accuracy, after.accuracy
    );
    assert!(
        last < first - 1.0,
        "the loss did not fall: {first:.3} -> {last:.3}"
    );
    assert!(
        after.accuracy > 0.7,
        "held-out verification near chance: {after:?}"
    );
    assert!(
        after.accuracy > before.accuracy,
        "training did not help: {before:?} -> {after:?}"
    );
    // The run ends with a committed checkpoint of its last step.
    let url = dir.display().to_string();
    let store = lgaf_store::BlockingRunStore::from_existing_url(&url, "default").unwrap();
    assert_eq!(store.committed().unwrap().last().unwrap().step, 100);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn resuming_from_a_checkpoint_reproduces_the_uninterrupted_losses() {
    let _one = ONE_TRAINER.lock().unwrap_or_else(|e| e.into_inner());
    let straight_dir = temp_dir("straight");
    let mut cfg = small_config(straight_dir.clone());
    cfg.train.max_steps = 12;
    let straight = losses(&mut Trainer::new(cfg.clone()).unwrap());
    assert_eq!(straight.len(), 12);

    let resumed_dir = temp_dir("resumed");
    cfg.checkpoint.dir = resumed_dir.display().to_string();
    cfg.train.max_steps = 7;
    let head = losses(&mut Trainer::new(cfg.clone()).unwrap());
    cfg.train.max_steps = 12;
    let mut again = Trainer::new(cfg).unwrap();
    assert_eq!(
        again.steps_done(),
        7,
        "did not resume from the step-7 checkpoint"
    );
    let tail = losses(&mut again);
    let resumed: Vec<f64> = head.into_iter().chain(tail).collect();
    for (i, (a, b)) in straight.iter().zip(&resumed).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1.0),
            "step {}: {a} vs {b}",
            i + 1
        );
    }
    std::fs::remove_dir_all(straight_dir).unwrap();
    std::fs::remove_dir_all(resumed_dir).unwrap();
}

#[test]
fn bf16_autocast_trains_on_the_cpu_close_to_fp32_but_not_equal() {
    let _one = ONE_TRAINER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("bf16");
    let mut cfg = small_config(dir.clone());
    cfg.train.max_steps = 6;
    let fp32 = losses(&mut Trainer::new(cfg.clone()).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    cfg.train.precision = lgaf_model::amp::Precision::Bf16;
    let bf16 = losses(&mut Trainer::new(cfg).unwrap());
    eprintln!("fp32 {fp32:?}\nbf16 {bf16:?}");
    assert!(bf16.iter().all(|l| l.is_finite()), "{bf16:?}");
    // Same weights and batch: bf16 rounding moves the first loss a little, never a lot.
    let rel = (bf16[0] - fp32[0]).abs() / fp32[0];
    assert!(
        rel > 0.0,
        "bf16 gave fp32's loss exactly: autocast did not apply"
    );
    assert!(rel < 0.02, "bf16 loss {} vs fp32 {}", bf16[0], fp32[0]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn fp16_on_the_cpu_is_refused_by_name() {
    let mut cfg = small_config(temp_dir("fp16"));
    cfg.train.precision = lgaf_model::amp::Precision::Fp16;
    let err = Trainer::new(cfg)
        .err()
        .expect("fp16 on the CPU must fail")
        .to_string();
    assert!(err.contains("train.precision"), "{err}");
}
