//! A real S3-compatible server for tests: moto's `moto_server` on a free loopback port.
//! Shared by lgaf-store's and lgaf-coordinator's S3 tests (`#[path]`-included).
//!
//! `make test` installs moto into `.venv-s3` and passes its `moto_server` in
//! `LGAF_MOTO_SERVER`; plain `cargo test` falls back to the workspace's `.venv-s3`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn moto_server() -> Option<PathBuf> {
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
    // The workspace's `.venv-s3`, from whichever crate includes this file.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join(".venv-s3/bin/moto_server"))
        .find(|candidate| candidate.is_file())
}

/// A running moto_server, killed when dropped (also when a test panics).
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Moto {
    pub fn start(binary: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::env::temp_dir().join(format!("lgaf-moto-{}-{port}.log", std::process::id()));
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

    /// The server's port (for a proxy in front of it); not every includer needs it.
    #[allow(dead_code)]
    pub fn port(&self) -> u16 {
        self.port
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

    pub fn create_bucket(&self, bucket: &str) {
        let status = self.http("PUT", &format!("/{bucket}")).unwrap();
        assert!(status.contains(" 200"), "PUT /{bucket}: {status}");
    }

    /// The AWS_* settings for this server.
    pub fn env(&self) -> HashMap<String, String> {
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
