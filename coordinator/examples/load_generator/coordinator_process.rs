//! The real `lgaf-coordinator` under test: started as a child process on loopback with a
//! file:// store in a temporary directory, `--external-workers` (it never spawns workers)
//! and `--keep-serving` (so that it is still there to be measured once the job has ended);
//! its CPU time and peak resident memory read from /proc; stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How to start the coordinator.
#[derive(Clone, Debug)]
pub struct CoordinatorOptions {
    pub binary: PathBuf,
    pub workers: u32,
    pub heartbeat_ms: u32,
    pub heartbeat_deadline_ms: u32,
    /// `--max-requests-per-sec`; None: the coordinator's default.
    pub max_requests_per_sec: Option<u32>,
    pub token: String,
    /// Its log (stderr) goes to `log_dir/coordinator-<workers>.log`.
    pub log_dir: PathBuf,
    /// A name for this run, part of the run id and the log's name.
    pub label: String,
    /// Profile it with `perf record -g` into `<dir>/perf-<label>.data`.
    pub perf_dir: Option<PathBuf>,
}

/// A running coordinator.
pub struct CoordinatorProcess {
    child: Child,
    pub pid: u32,
    /// The URL it printed (`listening on ...`).
    pub url: String,
    /// The store's directory (removed with it).
    pub store_dir: tempfile::TempDir,
    pub run_id: String,
    pub log: PathBuf,
    /// `perf record`, attached to it.
    perf: Option<Child>,
}

/// CPU time and memory of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// User plus system CPU time, seconds.
    pub cpu_secs: f64,
    /// Peak resident set (VmHWM), MiB.
    pub peak_rss_mib: f64,
}

impl CoordinatorProcess {
    pub fn start(opts: &CoordinatorOptions) -> Result<Self, String> {
        let store_dir = tempfile::Builder::new()
            .prefix("lgaf-coordinator-scale-")
            .tempdir()
            .map_err(|e| format!("creating the store's temporary directory: {e}"))?;
        let run_id = format!("scale-{}", opts.label);
        let log = opts.log_dir.join(format!("coordinator-{}.log", opts.label));
        let log_file = std::fs::File::create(&log)
            .map_err(|e| format!("creating the coordinator's log {}: {e}", log.display()))?;
        let mut command = Command::new(&opts.binary);
        command
            .args(["--workers", &opts.workers.to_string()])
            .arg("--external-workers")
            .arg("--keep-serving")
            .args(["--store", &format!("file://{}", store_dir.path().display())])
            .args(["--run-id", &run_id])
            .args(["--listen", "127.0.0.1:0"])
            .args(["--heartbeat-ms", &opts.heartbeat_ms.to_string()])
            .args([
                "--heartbeat-deadline-ms",
                &opts.heartbeat_deadline_ms.to_string(),
            ])
            .args(["--health-linger-ms", "0"])
            .env("LGAF_JOB_TOKEN", &opts.token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        if let Some(rate) = opts.max_requests_per_sec {
            command.args(["--max-requests-per-sec", &rate.to_string()]);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", opts.binary.display()))?;
        let pid = child.id();
        let stdout = child
            .stdout
            .take()
            .ok_or("the coordinator's stdout was not captured")?;
        // Its first line names the address; the rest (the final status) is drained so the
        // pipe never fills.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let (false, Some(url)) = (sent, line.strip_prefix("listening on ")) {
                    let _ = tx.send(url.trim().to_string());
                    sent = true;
                }
            }
        });
        let mut process = CoordinatorProcess {
            child,
            pid,
            url: String::new(),
            store_dir,
            run_id,
            log,
            perf: None,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => process.url = url,
            Err(_) => {
                let _ = process.child.kill();
                return Err(format!(
                    "lgaf-coordinator (pid {pid}) printed no `listening on` line within 30 s; \
                     see {}",
                    process.log.display()
                ));
            }
        }
        if let Some(dir) = &opts.perf_dir {
            let data = dir.join(format!("perf-{}.data", opts.label));
            let perf = Command::new("perf")
                .args(["record", "-F", "499", "-g", "-p", &pid.to_string(), "-o"])
                .arg(&data)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting perf record: {e}"))?;
            process.perf = Some(perf);
        }
        Ok(process)
    }

    /// Its CPU time so far and its peak resident memory.
    pub fn usage(&self) -> Result<Usage, String> {
        usage_of(&format!("/proc/{}", self.pid))
    }

    /// Where the manifest of `step` lies in the store.
    pub fn manifest_path(&self, step: u64) -> PathBuf {
        self.store_dir.path().join(format!(
            "runs/{}/ckpt/{step:012}/MANIFEST.json",
            self.run_id
        ))
    }

    /// Sends SIGTERM and waits up to 20 s for it to exit (then kills it); returns how it
    /// exited.
    pub fn stop(mut self) -> String {
        if let Some(mut perf) = self.perf.take() {
            // SIGINT: perf writes its data and exits.
            let _ = kill(Pid::from_raw(perf.id() as i32), Signal::SIGINT);
            let _ = perf.wait();
        }
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return "killed after 20 s".into();
                }
            }
        }
    }
}

/// CPU time and peak memory of the process whose /proc directory is `proc_dir`.
pub fn usage_of(proc_dir: &str) -> Result<Usage, String> {
    let stat = read(&Path::new(proc_dir).join("stat"))?;
    // The command name (field 2) may hold spaces: count the fields after its ')'.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("{proc_dir}/stat: no ')' after the command name"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); field 3 is the first after ')'.
    let ticks = |i: usize| -> Result<f64, String> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| format!("{proc_dir}/stat: field {i} is not a number"))
    };
    let cpu_secs = (ticks(14)? + ticks(15)?) / clock_ticks_per_sec();
    let status = read(&Path::new(proc_dir).join("status"))?;
    let peak_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("{proc_dir}/status: no VmHWM line"))?;
    Ok(Usage {
        cpu_secs,
        peak_rss_mib: peak_kib / 1024.0,
    })
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// `getconf CLK_TCK` (the unit of /proc's CPU times), 100 when it cannot be asked.
fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}
