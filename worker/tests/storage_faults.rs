//! Storage faults between a coordinated job and a real S3 server (moto), injected by a TCP
//! proxy (`crates/store/tests/support/fault_proxy.rs`) while checkpoints upload: the server
//! down for 30 s, 503 SlowDown answers, a connection reset in the middle of a multipart
//! upload, and a server that takes 1 MB/s. In each, training goes on, every committed
//! checkpoint verifies, an abandoned one is never committed, the retries show in the logs,
//! and the run ends bit-identical to one without faults.
//!
//! `make test` passes moto's `moto_server` in `LGAF_MOTO_SERVER`; with none found the test
//! says it was skipped.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
#[path = "../../crates/store/tests/support/fault_proxy.rs"]
mod fault_proxy;
#[path = "../../crates/store/tests/support/moto.rs"]
mod moto;

use common::processes::{bin, tiny_config, wait_exit_or, work_dir, Log};
use fault_proxy::{Fault, FaultProxy};
use lgaf_store::{BlockingRunStore, RunStore, Store};
use moto::{moto_server, Moto};

const BUCKET: &str = "lgaf-storage-faults";
/// 12 identities x 16 images, 8 a rank a step on 2 ranks: 12 steps an epoch, 24 in all, a
/// checkpoint every 3 steps.
const STEPS: u64 = 24;

fn store_url() -> String {
    format!("s3://{BUCKET}/jobs")
}

/// The run's config: checkpoints given 6 s to upload before they are abandoned.
fn config() -> String {
    tiny_config(16, 2, 3) + "upload_deadline_secs = 6\n"
}

/// Runs `run` on 2 local workers with `env` (the S3 server and its settings), calling `during`
/// once the first checkpoint is handed to the uploader; returns the whole log.
fn train(dir: &Path, run: &str, env: &HashMap<String, String>, during: impl FnOnce()) -> String {
    let mut coordinator = Command::new(bin("lgaf-coordinator"))
        .args(["--config", &dir.join("train.toml").display().to_string()])
        .args(["--store", &store_url(), "--run-id", run])
        .args(["--workers", "2", "--spawn-local"])
        // Renewed every 20 s: it outlasts a 30 s outage (a 30 s lease would lapse in it).
        .args(["--lease-secs", "60"])
        .envs(env)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Log::default();
    let reader = log.collect(coordinator.stderr.take().unwrap());
    log.wait_for(
        "checkpoint handed to the uploader",
        Duration::from_secs(120),
    );
    during();
    let status = wait_exit_or(&mut coordinator, Duration::from_secs(400), || log.text());
    reader.join().unwrap();
    let text = log.text();
    std::fs::write(dir.join(format!("{run}.log")), &text).unwrap();
    assert!(status.success(), "{run}:\n{text}");
    assert!(
        text.contains(&format!("step {STEPS}/{STEPS}")),
        "{run}:\n{text}"
    );
    text
}

/// Every committed checkpoint of `run` verifies (sizes and SHA-256 against its manifest);
/// returns their steps.
fn verified_steps(run: &str, env: &HashMap<String, String>) -> Vec<u64> {
    let store = Store::from_url_with_env(&store_url(), env).unwrap();
    let run_store = BlockingRunStore::new(RunStore::new(store, run).unwrap()).unwrap();
    let steps = run_store.manifest_steps().unwrap();
    for &step in &steps {
        run_store
            .verify(step)
            .unwrap_or_else(|e| panic!("{run} step {step}: {e}"));
    }
    steps
}

/// The final network of `run`, exported by `lgaf ckpt export` (which verifies it).
fn export(dir: &Path, run: &str, env: &HashMap<String, String>) -> Vec<(String, tch::Tensor)> {
    let out = dir.join(format!("{run}.safetensors"));
    let result = Command::new(bin("lgaf"))
        .args(["ckpt", "export", "--store", &store_url(), "--run", run])
        .arg("--out")
        .arg(&out)
        .envs(env)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&result.stderr).to_string()
        + &String::from_utf8_lossy(&result.stdout);
    assert!(result.status.success(), "{text}");
    assert!(text.contains(&format!("step {STEPS}")), "{text}");
    lgaf_model::weights::read_tensors(&out).unwrap()
}

/// The steps of the "checkpoint abandoned" lines in `log`.
fn abandoned(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("checkpoint abandoned"))
        .filter_map(|l| {
            let at = l.find("step=")? + "step=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The retries object_store logged.
fn retries(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("backing off for"))
        .count()
}

#[test]
fn storage_faults_during_checkpoint_uploads_lose_nothing_and_change_nothing() {
    let Some(binary) = moto_server() else {
        println!("skipped: set LGAF_MOTO_SERVER (make test does)");
        return;
    };
    let moto = Moto::start(&binary);
    moto.create_bucket(BUCKET);
    let direct = moto.env();
    let dir = work_dir("storage-faults", "s3", &config());

    train(&dir, "straight", &direct, || {});
    let reference = export(&dir, "straight", &direct);
    assert_eq!(verified_steps("straight", &direct).last(), Some(&STEPS));

    let proxy = FaultProxy::start(([127, 0, 0, 1], moto.port()).into());
    let mut through_proxy = direct.clone();
    through_proxy.insert("AWS_ENDPOINT_URL".into(), proxy.url());
    // The default retries; objects of 256 KiB and more go up in parts, so that a
    // checkpoint's larger objects are multipart uploads.
    through_proxy.insert(
        "LGAF_STORE_MULTIPART_THRESHOLD_BYTES".into(),
        "262144".into(),
    );

    let mut table = vec![];
    let down_30s = || {
        proxy.set(Fault::Down);
        std::thread::sleep(Duration::from_secs(30));
        proxy.set(Fault::None);
    };
    let slow_down = || proxy.set(Fault::SlowDown { requests: 12 });
    let reset = || {
        proxy.set(Fault::ResetInPart {
            after_bytes: 100_000,
        })
    };
    let slow = || {
        proxy.set(Fault::Throttle {
            bytes_per_sec: 1_000_000,
        })
    };
    let scenarios: [(&str, &dyn Fn()); 4] = [
        ("down-30s", &down_30s),
        ("slow-down-503", &slow_down),
        ("reset-in-multipart", &reset),
        ("slow-1MBps", &slow),
    ];
    for (name, fault) in scenarios {
        let before = proxy.injected();
        let log = train(&dir, name, &through_proxy, fault);
        proxy.set(Fault::None);
        let injected = proxy.injected();
        let committed = verified_steps(name, &direct);
        let abandoned = abandoned(&log);
        // Training went on: no rank was lost, no generation ended.
        assert!(
            !log.contains("generation 2 formed"),
            "{name}: restarted:\n{log}"
        );
        // Nothing abandoned was committed, and the run's last checkpoint was.
        assert!(
            abandoned.iter().all(|step| !committed.contains(step)),
            "{name}: abandoned {abandoned:?}, committed {committed:?}"
        );
        assert_eq!(committed.last(), Some(&STEPS), "{name}");
        let network = export(&dir, name, &direct);
        assert_eq!(network.len(), reference.len());
        for ((key, a), (_, b)) in reference.iter().zip(&network) {
            assert!(
                a.equal(b),
                "{name}: `{key}` differs from the run without faults"
            );
        }
        match name {
            "down-30s" => {
                assert!(!abandoned.is_empty(), "{name}: nothing abandoned:\n{log}");
                assert!(
                    !log.contains("it has lapsed") && !log.contains("lost its lease"),
                    "{name}: the lease did not outlast the outage:\n{log}"
                );
                assert!(retries(&log) > 0, "{name}: no retries logged:\n{log}");
            }
            "slow-down-503" => {
                let answered = injected.slow_downs - before.slow_downs;
                assert!((1..=12).contains(&answered), "{name}: {answered} answered");
                assert!(log.contains("503"), "{name}: no 503 retried:\n{log}");
            }
            "reset-in-multipart" => {
                assert_eq!(injected.resets - before.resets, 1, "{name}");
                assert!(retries(&log) > 0, "{name}: no retries logged:\n{log}");
            }
            _ => {
                // Every checkpoint went through the cap: at 1 MB/s that is seconds.
                assert!(injected.bytes_up - before.bytes_up > 1_000_000, "{name}");
            }
        }
        table.push(format!(
            "{name:<20} retries logged {:>3}  abandoned {abandoned:?}  committed {committed:?}",
            retries(&log)
        ));
    }
    println!("{}", table.join("\n"));
}
