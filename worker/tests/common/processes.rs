//! Helpers for the tests that run `lgaf-coordinator` and `lgaf-worker` as processes.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

/// A binary of this workspace, built beside the test (`cargo test --workspace` builds every
/// package's binaries first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --release --bins` (make test does)",
        path.display()
    );
    path
}

/// A fresh `lgaf-<prefix>-<pid>-<name>` temporary folder holding `config` as `train.toml`.
pub fn work_dir(prefix: &str, name: &str, config: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lgaf-{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train.toml"), config).unwrap();
    dir
}

/// The `file://` URL of the store of the run in `dir` (`dir/store`).
pub fn store_url(dir: &Path) -> String {
    format!("file://{}", dir.join("store").display())
}

/// `lgaf-coordinator` for the run in `dir`: its `train.toml`, the store [`store_url`], no
/// colours, stdout and stderr piped. Callers add their flags and spawn it.
pub fn coordinator_command(dir: &Path) -> Command {
    let mut cmd = Command::new(bin("lgaf-coordinator"));
    cmd.args(["--config", &dir.join("train.toml").display().to_string()])
        .args(["--store", &store_url(dir)])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// `lgaf-worker` in `slot` of the coordinator at `url`: no colours, one libtorch thread,
/// stdout dropped and stderr piped. Callers add their flags and spawn it.
pub fn worker_command(url: &str, slot: u32) -> Command {
    let mut cmd = Command::new(bin("lgaf-worker"));
    cmd.args(["--coordinator", url, "--slot", &slot.to_string()])
        .env("NO_COLOR", "1")
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Waits for `child` to exit; panics after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    wait_exit_or(child, timeout, String::new)
}

/// Waits for `child` to exit; after `timeout`, panics showing `context()` (the run's logs).
pub fn wait_exit_or(
    child: &mut Child,
    timeout: Duration,
    context: impl Fn() -> String,
) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < timeout,
            "did not exit within {timeout:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The URL a just-started `lgaf-coordinator` prints as its first line ("listening on
/// URL"). Reads through a borrow: the pipe stays open for the rest of its life.
pub fn coordinator_url(coordinator: &mut Child) -> String {
    let mut first = String::new();
    BufReader::new(coordinator.stdout.as_mut().expect("stdout piped"))
        .read_line(&mut first)
        .unwrap();
    match first.trim().strip_prefix("listening on ") {
        Some(url) => url.to_string(),
        None => panic!("the coordinator's first line: {first:?}"),
    }
}

/// The output lines of child processes, collected as they come (several into one log).
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<String>>);

impl Log {
    /// Appends `pipe`'s lines until it closes, on a thread that ends then.
    pub fn collect(&self, pipe: impl Read + Send + 'static) -> JoinHandle<()> {
        let log = Arc::clone(&self.0);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        })
    }

    /// Appends a line of the test's own (a note among the processes' lines).
    pub fn push(&self, line: &str) {
        let mut log = self.0.lock().unwrap();
        log.push_str(line);
        log.push('\n');
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits until the log contains `text` and returns how long that took; panics with the
    /// log after `timeout`.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        while !self.text().contains(text) {
            assert!(
                started.elapsed() < timeout,
                "no {text:?} within {timeout:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }
}

/// Whether `pid` runs (a zombie, which still answers signal 0, does not count).
pub fn alive(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

/// Whether every one of `pids` is gone within `timeout`. A process that has closed its
/// pipes (so its output reached EOF) may still be tearing down, and an orphan is reaped by
/// init a moment later: give it that moment instead of checking once.
pub fn all_gone_within(pids: &[Pid], timeout: Duration) -> bool {
    let started = Instant::now();
    while pids.iter().any(|&pid| alive(pid)) {
        if started.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The training config of the process tests: a 1/8-width r18 (embedding 32), 8 images a
/// rank a step, 12 synthetic identities of `images_per_identity` images, `epochs` epochs, a
/// checkpoint every `every_steps` steps (and at each epoch end), all of them kept.
pub fn tiny_config(images_per_identity: usize, epochs: usize, every_steps: u64) -> String {
    format!(
        r#"
[model]
arch = "r18"
width = 0.125
embedding_size = 32
[data]
batch_size = 8
workers = 1
[data.synthetic]
identities = 12
images_per_identity = {images_per_identity}
[train]
epochs = {epochs}
log_every = 1
[optim]
warmup_epochs = 0.0
lr_steps = []
[checkpoint]
every_steps = {every_steps}
keep_last = 0
"#
    )
}
