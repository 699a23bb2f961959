//! The real `lgaf-coordinator` binary as a child process: started with its arguments, its
//! address read from its first line, its output collected, killed (with the stand-in
//! workers it recorded) if a test fails.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_lgaf-coordinator");

/// A running coordinator; killed (with any stand-in children it recorded) if a test fails.
pub struct Coordinator {
    child: Child,
    pub url: String,
    stdout: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// The threads copying stdout and stderr; done at end of file.
    readers: Vec<std::thread::JoinHandle<()>>,
    standin_dir: Option<PathBuf>,
}

impl Coordinator {
    pub fn start(args: &[&str], env: &[(&str, &Path)]) -> Coordinator {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut c = Coordinator {
            child,
            url: String::new(),
            stdout: rx,
            stderr,
            readers: vec![stdout_reader, stderr_reader],
            standin_dir: env
                .iter()
                .find(|(k, _)| *k == "LGAF_STANDIN_DIR")
                .map(|(_, v)| v.to_path_buf()),
        };
        let line = c
            .stdout
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no address printed; stderr:\n{}", c.stderr()));
        c.url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        c
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Everything it wrote has been read once the readers reach end of file
                // (children sharing the pipes may hold it open a little longer).
                let until = Instant::now() + Duration::from_secs(10);
                while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the coordinator did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn remaining_stdout(&self) -> Vec<String> {
        self.stdout.try_iter().collect()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.standin_dir {
            for pid in standin_pids(dir) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// The pids the stand-in workers of a test recorded in `dir`.
pub fn standin_pids(dir: &Path) -> Vec<i32> {
    (0..8)
        .filter_map(|slot| std::fs::read_to_string(dir.join(format!("pid-{slot}"))).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}
