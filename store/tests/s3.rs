//! The store against a real S3 server: moto's `moto_server`, started on a free port.
//!
//! `make test` installs moto into `.venv-s3` and passes its `moto_server` in
//! `LGAF_MOTO_SERVER`. Like the MXNet tests, plain `cargo test` falls back to the
//! workspace's `.venv-s3`; with neither, the test prints that it was skipped.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lgaf_store::{RunStore, Store};

const BUCKET: &str = "lgaf-test";

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
        let log = std::env::temp_dir().join(format!("lgaf-store-moto-{}.log", std::process::id()));
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

/// One server for all scenarios (starting moto costs a few seconds); each scenario has its
/// own prefix or run id.
#[test]
fn s3_against_moto_server() {
    let Some(binary) = moto_server() else {
        println!("skipped: set LGAF_MOTO_SERVER (make test does)");
        return;
    };
    let started = Instant::now();
    let moto = Moto::start(&binary);
    eprintln!("moto_server ready in {:?}", started.elapsed());
    moto.create_bucket(BUCKET);
    let env = moto.env();
    let open =
        |path: &str| Store::from_url_with_env(&format!("s3://{BUCKET}/{path}"), &env).unwrap();
    let run = |run_id: &str| RunStore::new(open("ckpts"), run_id).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = open("roundtrip");
        assert_eq!(store.url(), format!("s3://{BUCKET}/roundtrip"));
        store_round_trip(&store).await;
        // The URL's prefix is applied: other prefixes do not see these objects.
        assert!(open("elsewhere").list("").await.unwrap().is_empty());
        let bare = Store::from_url_with_env(&format!("s3://{BUCKET}"), &env).unwrap();
        assert!(bare
            .list("roundtrip/a")
            .await
            .unwrap()
            .iter()
            .any(|l| l.key == "roundtrip/a/c.bin"));

        let mbps = multipart_round_trip(&open("multipart")).await;
        eprintln!("moto multipart upload (10 MiB, 5 MiB parts): {mbps:.0} MB/s");

        commit_order(&run("commit")).await;
        uncommitted_ignored(&run("uncommitted")).await;
        corruption_fallback(&run("corrupt"), Damage::Api).await;
        truncated_manifest(&run("manifest")).await;
        prune_keeps_last(&run("prune")).await;
        job_state(&run("job")).await;
        lease(&run("lease")).await;
    });
    drop(rt);

    let numbers = uploader_round_trip(&run("uploader"), 100_000_000);
    eprintln!(
        "moto uploader: submit of {} bytes stalled {:?}; upload took {:?} ({:.0} MB/s); \
         back-pressure stall {:?}",
        numbers.big_bytes,
        numbers.big_submit_stall,
        numbers.big_upload,
        numbers.big_bytes as f64 / 1e6 / numbers.big_upload.as_secs_f64(),
        numbers.backpressure_stall,
    );
    eprintln!("S3 test total {:?}", started.elapsed());
    drop(moto);
}
