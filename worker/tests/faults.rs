//! Failure detection end to end, with real processes: a worker that hangs (SIGSTOP) is
//! declared failed by the coordinator within the heartbeat deadline and nothing is left
//! running; workers whose coordinator is killed stop by themselves within the deadline.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Long enough that the faults below happen in the first epoch (12 x 400 images, 16 a step
/// on two ranks: 300 steps an epoch), with no checkpoint before its end.
const CONFIG: &str = r#"
[model]
arch = "r18"
width = 0.125
embedding_size = 32
[data]
batch_size = 8
workers = 1
[data.synthetic]
identities = 12
images_per_identity = 400
[train]
epochs = 1
log_every = 1
[optim]
warmup_epochs = 0.0
lr_steps = []
[checkpoint]
every_steps = 0
"#;

const DEADLINE_MS: u64 = 1500;

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

/// A coordinator spawning two local workers, its stderr collected line by line.
struct Run {
    coordinator: Child,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Run {
    fn start(name: &str) -> Run {
        let dir = std::env::temp_dir().join(format!("lgaf-faults-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("train.toml"), CONFIG).unwrap();
        let mut coordinator = Command::new(bin("lgaf-coordinator"))
            .args(["--workers", "2", "--spawn-local", "--run-id", name])
            .args(["--config", &dir.join("train.toml").display().to_string()])
            .args(["--store", &store_url(&dir)])
            .args(["--heartbeat-ms", "100"])
            .args(["--heartbeat-deadline-ms", &DEADLINE_MS.to_string()])
            // Far beyond the deadline: the heartbeat, not a collective timeout, must notice.
            .args(["--collective-timeout-ms", "120000"])
            .args(["--stop-timeout-secs", "2"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = coordinator.stderr.take().unwrap();
        let reader = {
            let log = log.clone();
            // The workers inherit this pipe: it ends when the last of them has exited.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        };
        Run {
            coordinator,
            log,
            reader: Some(reader),
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `text`; panics with the log after `timeout`.
    fn wait_for(&self, text: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        while !self.log().contains(text) {
            assert!(
                started.elapsed() < timeout,
                "no {text:?} within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }

    /// The pid of local worker `slot`, from the coordinator's "started worker slot" line.
    fn worker_pid(&self, slot: u32) -> Pid {
        let log = self.log();
        let prefix = format!("started worker slot {slot} (cpu) as pid ");
        let at = log.find(&prefix).expect("worker started") + prefix.len();
        let pid: i32 = log[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Pid::from_raw(pid)
    }

    /// Waits for the whole log (every process holding the pipe has exited).
    fn finish_log(&mut self, timeout: Duration) -> String {
        let reader = self.reader.take().unwrap();
        let started = Instant::now();
        while !reader.is_finished() {
            assert!(
                started.elapsed() < timeout,
                "processes still hold the log after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        reader.join().unwrap();
        self.log()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.coordinator.kill();
        let _ = self.coordinator.wait();
    }
}

fn store_url(dir: &Path) -> String {
    format!("file://{}", dir.join("store").display())
}

fn alive(pid: Pid) -> bool {
    // A zombie still answers signal 0; its /proc status says Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn a_hung_worker_is_declared_failed_within_the_deadline_and_nothing_is_left_running() {
    let mut run = Run::start("sigstop");
    run.wait_for("step 3/", Duration::from_secs(120));
    let (rank0, rank1) = (run.worker_pid(0), run.worker_pid(1));
    kill(rank1, Signal::SIGSTOP).unwrap();
    let detected = run.wait_for(
        "no heartbeat within the 1500 ms deadline",
        Duration::from_secs(30),
    );
    // The deadline, plus a liveness check's period and scheduling slack on a loaded machine.
    assert!(
        detected < Duration::from_millis(DEADLINE_MS) + Duration::from_secs(5),
        "detected after {detected:?}"
    );
    let status = wait_exit(&mut run.coordinator, Duration::from_secs(30));
    assert!(!status.success(), "the job must fail:\n{}", run.log());
    let log = run.finish_log(Duration::from_secs(10));
    assert!(log.contains("rank 1 (worker "), "{log}");
    assert!(
        !alive(rank0) && !alive(rank1),
        "a worker is still running:\n{log}"
    );
}

#[test]
fn workers_stop_by_themselves_when_the_coordinator_is_killed() {
    let mut run = Run::start("coordinator-killed");
    run.wait_for("step 3/", Duration::from_secs(120));
    let (rank0, rank1) = (run.worker_pid(0), run.worker_pid(1));
    run.coordinator.kill().unwrap();
    let killed = Instant::now();
    run.coordinator.wait().unwrap();
    let log = run.finish_log(Duration::from_secs(30));
    let took = killed.elapsed();
    assert!(
        log.matches("has not answered a heartbeat").count() >= 2,
        "both workers should have noticed:\n{log}"
    );
    assert!(
        took < Duration::from_millis(DEADLINE_MS) + Duration::from_secs(10),
        "the workers took {took:?} to stop"
    );
    // Orphans are reaped by init; give it a moment.
    let started = Instant::now();
    while (alive(rank0) || alive(rank1)) && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(rank0) && !alive(rank1), "a worker is still running");
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < timeout,
            "did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
