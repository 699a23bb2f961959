//! The coordinator on a real S3 server: moto's `moto_server`, started on a free port, as
//! lgaf-store's own S3 tests do (crates/store/tests/s3.rs).
//!
//! `make test` passes moto's `moto_server` in `LGAF_MOTO_SERVER`; plain `cargo test` falls
//! back to the workspace's `.venv-s3`; with neither, the test prints that it was skipped.

mod common;
#[path = "../../crates/store/tests/support/moto.rs"]
mod moto;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use lgaf_coordinator::{RunStore, Store};
use lgaf_proto::v1;
use moto::{moto_server, Moto};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_lgaf-coordinator");
const BUCKET: &str = "lgaf-coord-test";

/// One server for every scenario (starting moto takes a few seconds).
#[test]
fn coordinator_on_s3_commits_refuses_missing_objects_and_resumes() {
    let Some(binary) = moto_server() else {
        println!("skipped: set LGAF_MOTO_SERVER (make test does)");
        return;
    };
    let started = Instant::now();
    let moto = Moto::start(&binary);
    moto.create_bucket(BUCKET);
    let env = moto.env();
    let url = format!("s3://{BUCKET}/coord");
    let run = RunStore::new(Store::from_url_with_env(&url, &env).unwrap(), RUN).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A job up to step 8: commits 4 and 8 in S3.
        let mut first = settings(2, &run);
        first.max_steps = 8;
        assert_eq!(first.store_url, url);
        let server = start_or_resume(first, &run, Duration::from_secs(10)).await;
        let tasks: Vec<_> = [(Some(0), 8500), (Some(1), 8501)]
            .into_iter()
            .map(|(slot, port)| {
                tokio::spawn(run_worker_with_env(
                    server.url.clone(),
                    slot,
                    port,
                    facts(),
                    env.clone(),
                ))
            })
            .collect();
        for t in tasks {
            let s = t.await.unwrap().unwrap();
            assert_eq!(s.register.store_url, url);
            assert_eq!((s.resume_step, s.total_steps), (0, 8));
        }
        assert_eq!(committed_steps(&run).await, [4, 8]);
        let loaded = run.load(8).await.unwrap();
        assert_eq!(loaded.manifest.format, lgaf_store::FORMAT);
        assert_eq!(
            &loaded.objects["classifier/rank-00001.safetensors"][..],
            b"rank 1 step 8"
        );
        drop(server);

        // An ack for an object that was not uploaded is refused, naming it, and the same
        // ack after the upload commits (another run in the same bucket).
        let other =
            RunStore::new(Store::from_url_with_env(&url, &env).unwrap(), "refused").unwrap();
        let server = start(settings(2, &other), &other, Duration::from_secs(10)).await;
        let mut a = TestWorker::register_with_env(&server.url, Some(0), 8600, &env).await;
        let mut b = TestWorker::register_with_env(&server.url, Some(1), 8601, &env).await;
        let (ja, jb) = tokio::join!(a.join(facts()), b.join(facts()));
        ja.unwrap();
        jb.unwrap();
        a.client
            .checkpoint_ack(a.checkpoint(4, 0).await)
            .await
            .unwrap();
        b.plan_to(4).await;
        let objects = b.objects(4);
        let ack = b.ack(4, 0, &objects);
        let e = b.client.checkpoint_ack(ack.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(
            e.message()
                .contains("runs/refused/ckpt/000000000004/classifier/rank-00001.safetensors"),
            "{}",
            e.message()
        );
        assert!(committed_steps(&other).await.is_empty());
        b.upload(4, &objects).await;
        assert!(
            b.client
                .checkpoint_ack(ack)
                .await
                .unwrap()
                .into_inner()
                .committed
        );
        other.load(4).await.unwrap();
        drop(server);

        // The same run id with a higher cap resumes from step 8, keeping the last 3.
        let mut second = settings(2, &run);
        second.max_steps = 20;
        let facts = v1::TrainingFacts {
            keep_last: 3,
            ..facts()
        };
        let server = start_or_resume(second, &run, Duration::from_secs(10)).await;
        let tasks: Vec<_> = [(Some(0), 8700), (Some(1), 8701)]
            .into_iter()
            .map(|(slot, port)| {
                tokio::spawn(run_worker_with_env(
                    server.url.clone(),
                    slot,
                    port,
                    facts,
                    env.clone(),
                ))
            })
            .collect();
        for t in tasks {
            let s = t.await.unwrap().unwrap();
            assert_eq!((s.resume_step, s.total_steps), (8, 20));
            assert_eq!(
                s.resume_manifest,
                "runs/test-run/ckpt/000000000008/MANIFEST.json"
            );
        }
        let status = server.service.status();
        assert_eq!(status.state, v1::JobState::Finished as i32);
        assert_eq!(status.last_checkpoint_step, 20);
        assert_eq!(committed_steps(&run).await, [15, 16, 20]);
        run.load(20).await.unwrap();
    });
    drop(rt);

    // The binary opens s3:// URLs with the AWS_* environment; the run's final step is
    // committed, so it reports the job finished at once.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("train.toml");
    std::fs::write(&config, settings(2, &run).config_toml).unwrap();
    let out = Command::new(BIN)
        .args([
            "--workers",
            "2",
            "--config",
            config.to_str().unwrap(),
            "--store",
            &url,
            "--run-id",
            RUN,
            "--max-steps",
            "20",
        ])
        .envs(&env)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("(run test-run) finished") && stdout.contains("last checkpoint at step 20"),
        "{stdout}"
    );
    assert!(stderr.contains(&url), "{stderr}");
    eprintln!("S3 coordinator test took {:?}", started.elapsed());
    drop(moto);
}
