//! The coordinator on a real S3 server: moto's `moto_server`, started on a free port, as
//! lgaf-store's own S3 tests do (store/tests/s3.rs).
//!
//! `make test` passes moto's `moto_server` in `LGAF_MOTO_SERVER`; plain `cargo test` falls
//! back to the workspace's `.venv-s3`; with neither, the test prints that it was skipped.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lgaf_coordinator::{RunStore, Store};
use lgaf_proto::v1;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_lgaf-coordinator");
const BUCKET: &str = "lgaf-coord-test";

fn moto_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LGAF_MOTO_SERVER") {
        let path = PathBuf::from(path);
        // Set but wrong is a broken setup, not a reason to skip quietly.
        assert!(
            path.is_file(),
            "LGAF_MOTO_SERVER={} does not exist: run `make venv-s3`",
            path.display()
        );
        return Some(path);
    }
    let fallback = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-s3/bin/moto_server");
    fallback.is_file().then_some(fallback)
}

/// A running moto_server, killed when dropped (also when a test panics).
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Moto {
    fn start(binary: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log =
            std::env::temp_dir().join(format!("lgaf-coordinator-moto-{}.log", std::process::id()));
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let moto = Self { child, port, log };
        moto.wait_ready();
        moto
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.http("GET", "/").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "moto_server did not answer on port {} within 60 s:\n{}",
            self.port,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// One bodiless HTTP request; returns the status line. moto does not check signatures,
    /// so creating a bucket needs no AWS client.
    fn http(&self, method: &str, path: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response.lines().next().unwrap_or_default().to_string())
    }

    fn create_bucket(&self, bucket: &str) {
        let status = self.http("PUT", &format!("/{bucket}")).unwrap();
        assert!(status.contains(" 200"), "PUT /{bucket}: {status}");
    }

    /// The AWS_* settings for this server, for the coordinator's and the workers' stores.
    fn env(&self) -> HashMap<String, String> {
        [
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

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
