//! Coordinated runs end to end through the binaries: `lgaf-coordinator --spawn-local`
//! starting real `lgaf-worker` processes on the CPU backend over loopback, checkpoints in a
//! file:// store, resume on the same and on another world size, past a corrupted and an
//! uncommitted checkpoint, and `lgaf ckpt ls / export`.
//!
//! The coordinator is another package's binary: `cargo test --workspace` (what `make test`
//! runs) builds it beside this test's binaries before any test runs.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use common::processes::{bin, tiny_config, work_dir};

/// Runs share two cores: one at a time.
static ONE_RUN: Mutex<()> = Mutex::new(());

/// One coordinator run; returns (success, the losses rank 0 reported by step, its log).
fn coordinate(
    dir: &Path,
    run: &str,
    workers: usize,
    max_steps: u64,
) -> (bool, Vec<(u64, String)>, String) {
    let out = Command::new(bin("lgaf-coordinator"))
        .args(["--workers", &workers.to_string()])
        .args(["--config", &dir.join("train.toml").display().to_string()])
        .args([
            "--store",
            &format!("file://{}", dir.join("store").display()),
        ])
        .args(["--run-id", run])
        .args(["--max-steps", &max_steps.to_string()])
        .arg("--spawn-local")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // "step 4/10 epoch 0 loss 40.6354 lr ..."
    let losses = log
        .lines()
        .filter_map(|line| {
            // The coordinator's progress lines, not its final status line.
            const PROGRESS: &str = "lgaf_coordinator::service: step ";
            let rest = &line[line.find(PROGRESS)? + PROGRESS.len()..];
            let (step, rest) = rest.split_once('/')?;
            let loss = rest.split_once(" loss ")?.1.split_whitespace().next()?;
            Some((step.parse().ok()?, loss.to_string()))
        })
        .collect();
    (out.status.success(), losses, log)
}

fn lgaf(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("lgaf")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn committed_steps(dir: &Path, run: &str) -> Vec<u64> {
    common::committed_steps(&dir.join("store"), run)
}

#[test]
fn a_resumed_run_continues_the_uninterrupted_one_exactly() {
    let _one = ONE_RUN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = work_dir("coord", "resume", &tiny_config(8, 2, 2));
    // 96 images, 2 ranks of 8: 6 steps an epoch, 12 in all.
    let (ok, straight, log) = coordinate(&dir, "straight", 2, 0);
    assert!(ok, "{log}");
    assert_eq!(straight.len(), 12, "{log}");
    assert_eq!(committed_steps(&dir, "straight"), vec![2, 4, 6, 8, 10, 12]);

    // The same run stopped after step 4, then started again with the same run id.
    let (ok, head, log) = coordinate(&dir, "resumed", 2, 4);
    assert!(ok, "{log}");
    assert_eq!(head, straight[..4].to_vec(), "{log}");
    let (ok, tail, log) = coordinate(&dir, "resumed", 2, 0);
    assert!(ok, "{log}");
    assert_eq!(
        tail,
        straight[4..].to_vec(),
        "the resumed run's losses differ:\n{log}"
    );

    // The exported final weights of both runs are the same network, bit for bit.
    let store = dir.join("store").display().to_string();
    let export = |run: &str| {
        let out = dir.join(format!("{run}.safetensors"));
        let path = out.display().to_string();
        let (ok, text) = lgaf(&[
            "ckpt", "export", "--store", &store, "--run", run, "--out", &path,
        ]);
        assert!(ok, "{text}");
        assert!(text.contains("step 12"), "{text}");
        lgaf_model::weights::read_tensors(&out).unwrap()
    };
    let (a, b) = (export("straight"), export("resumed"));
    assert!(
        a.iter().any(|(name, _)| name == "lgf.norm_mean"),
        "not the spec's layout"
    );
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x.equal(y),
            "`{name}` differs between the straight and the resumed run"
        );
    }
}

#[test]
fn a_run_resumes_on_another_world_size_and_skips_a_corrupted_checkpoint() {
    let _one = ONE_RUN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = work_dir("coord", "reshape", &tiny_config(8, 2, 2));
    let (ok, _, log) = coordinate(&dir, "r", 2, 4);
    assert!(ok, "{log}");
    assert_eq!(committed_steps(&dir, "r"), vec![2, 4]);
    // Corrupt one object of the newest checkpoint: the resume must fall back to step 2.
    let shard = dir.join("store/runs/r/ckpt/000000000004/classifier/rank-00001.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&shard, bytes).unwrap();
    // A newer step whose upload never finished: every object there (step 2's, intact), but
    // no manifest. It must not be loaded either.
    let ckpt = dir.join("store/runs/r/ckpt");
    copy_tree(&ckpt.join("000000000002"), &ckpt.join("000000000005"));
    std::fs::remove_file(ckpt.join("000000000005/MANIFEST.json")).unwrap();
    // Three ranks now: 96 / 3 = 32 per rank, 4 steps an epoch (2 ranks had 6).
    let (ok, losses, log) = coordinate(&dir, "r", 3, 0);
    assert!(ok, "{log}");
    assert!(
        log.contains("000000000004") && log.contains("rank-00001"),
        "the corruption is not reported:\n{log}"
    );
    assert!(!log.contains("resuming from step 5"), "{log}");
    // Step 2 of 6 per epoch maps to step 1 of 4 (the epoch position rounded down).
    let first = losses.first().expect("progress was reported").0;
    assert_eq!(first, 2, "{log}");
    assert_eq!(losses.last().unwrap().0, 8, "{log}");
    for (step, loss) in &losses {
        let loss: f64 = loss.parse().unwrap();
        assert!(
            loss.is_finite() && loss < 100.0,
            "step {step}: loss {loss}\n{log}"
        );
    }
}

/// One checkpoint format for every kind of run: what `lgaf train` commits, a coordinated
/// run with the same store and run id resumes, here on two ranks (the single process's
/// classifier re-cut in two, its step mapped to the same place in the epoch).
#[test]
fn a_coordinated_run_resumes_what_lgaf_train_committed() {
    let _one = ONE_RUN.lock().unwrap_or_else(|e| e.into_inner());
    let config = tiny_config(8, 2, 2) + "[eval]\nidentities = 4\npairs = 20\n";
    let dir = work_dir("coord", "from-train", &config);
    let store = dir.join("store").display().to_string();
    let (ok, log) = lgaf(&[
        "train",
        "--config",
        &dir.join("train.toml").display().to_string(),
        "--checkpoint-dir",
        &store,
        "--run-id",
        "solo",
        "--max-steps",
        "4",
    ]);
    assert!(ok, "{log}");
    // 96 images, one process of 8: 12 steps an epoch.
    assert_eq!(committed_steps(&dir, "solo"), vec![2, 4]);

    // Two ranks: 6 steps an epoch, so step 4 of 12 continues at step 2 of 6.
    let (ok, losses, log) = coordinate(&dir, "solo", 2, 0);
    assert!(ok, "{log}");
    assert!(log.contains("resuming from step 4"), "{log}");
    assert_eq!(losses.first().expect("progress was reported").0, 3, "{log}");
    assert_eq!(losses.last().unwrap().0, 12, "{log}");
    let steps = committed_steps(&dir, "solo");
    assert_eq!(steps.first(), Some(&2), "{steps:?}");
    assert_eq!(steps.last(), Some(&12), "{steps:?}");
}
