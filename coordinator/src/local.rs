//! Workers spawned on this machine (`--spawn-local`): one child process per slot, each in
//! its own process group so that a Ctrl-C in the terminal reaches only the coordinator,
//! which then stops them in order (SIGTERM, a grace period, SIGKILL).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// A child's exit, as reported on [`LocalWorkers::spawn`]'s channel.
#[derive(Clone, Debug)]
pub struct ChildExit {
    pub slot: u32,
    pub pid: u32,
    pub status: Result<ExitStatus, String>,
}

impl ChildExit {
    pub fn success(&self) -> bool {
        matches!(&self.status, Ok(s) if s.success())
    }

    pub fn describe(&self) -> String {
        match &self.status {
            Ok(s) => describe_status(s),
            Err(e) => format!("could not be waited for: {e}"),
        }
    }
}

fn describe_status(s: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(sig) => format!("was killed by {sig}"),
            Err(_) => format!("was killed by signal {sig}"),
        },
        _ => format!("ended ({s})"),
    }
}

struct Child {
    slot: u32,
    pid: u32,
    exited: watch::Receiver<bool>,
}

/// The spawned children: the newest process of each slot (a restarted slot's earlier
/// process has exited).
pub struct LocalWorkers {
    spec: SpawnSpec,
    exits: mpsc::UnboundedSender<ChildExit>,
    /// OMP_NUM_THREADS for CPU workers.
    threads: String,
    children: Vec<Child>,
}

/// What to start: `<worker_bin> --coordinator <url> --slot I --device <devices[I]>`.
#[derive(Clone, Debug)]
pub struct SpawnSpec {
    pub worker_bin: PathBuf,
    pub coordinator_url: String,
    pub devices: Vec<String>,
    /// Handed to the workers in their environment (LGAF_JOB_TOKEN), never as an argument.
    pub token: Option<lgaf_proto::auth::JobToken>,
    /// The CA certificate the workers verify a TLS coordinator with, and the certificate
    /// they present under mutual TLS (in their environment: `ClientTlsFiles::child_env`).
    pub tls: lgaf_proto::tls::ClientTlsFiles,
    /// The coordinator's logging, tracing and metrics settings, which the workers take
    /// (in their environment; see `TelemetryArgs::child_env`).
    pub telemetry: lgaf_telemetry::TelemetryArgs,
}

impl LocalWorkers {
    /// Starts one child per device; every exit is logged and sent on `exits`.
    pub fn spawn(
        spec: &SpawnSpec,
        exits: mpsc::UnboundedSender<ChildExit>,
    ) -> std::io::Result<Self> {
        // CPU workers on one machine share its cores: each gets its share of libtorch's
        // threads unless the user chose (one process per core set would oversubscribe).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu_workers = spec.devices.iter().filter(|d| *d == "cpu").count().max(1);
        let mut started = LocalWorkers {
            spec: spec.clone(),
            exits,
            threads: (cores / cpu_workers).max(1).to_string(),
            children: Vec::with_capacity(spec.devices.len()),
        };
        for slot in 0..spec.devices.len() as u32 {
            if let Err(e) = started.start(slot) {
                // Do not leave the first few running when a later one cannot start.
                started.kill_all();
                return Err(e);
            }
        }
        Ok(started)
    }

    /// Starts `slot`'s worker again after its process exited.
    pub fn restart(&mut self, slot: u32) -> std::io::Result<()> {
        self.start(slot)
    }

    /// SIGKILL to `slot`'s process if it is `pid` and still running (a worker the job lost
    /// while it still runs: hung, or cut off).
    pub fn kill(&self, slot: u32, pid: u32) {
        let running = self
            .children
            .iter()
            .any(|c| c.slot == slot && c.pid == pid && !*c.exited.borrow());
        if running {
            warn!("killing worker slot {slot} (pid {pid}): the job lost it");
            if let Err(e) = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL) {
                warn!("sending SIGKILL to worker slot {slot} (pid {pid}): {e}");
            }
        }
    }

    fn start(&mut self, slot: u32) -> std::io::Result<()> {
        let device = &self.spec.devices[slot as usize];
        let mut cmd = tokio::process::Command::new(&self.spec.worker_bin);
        if device == "cpu" && std::env::var_os("OMP_NUM_THREADS").is_none() {
            cmd.env("OMP_NUM_THREADS", &self.threads);
        }
        match &self.spec.token {
            Some(token) => cmd.env(lgaf_proto::auth::TOKEN_ENV, token.expose()),
            None => cmd.env_remove(lgaf_proto::auth::TOKEN_ENV),
        };
        for (name, path) in self.spec.tls.child_env() {
            match path {
                Some(path) => cmd.env(name, path),
                None => cmd.env_remove(name),
            };
        }
        cmd.envs(self.spec.telemetry.child_env(slot));
        cmd.arg("--coordinator")
            .arg(&self.spec.coordinator_url)
            .arg("--slot")
            .arg(slot.to_string())
            .arg("--device")
            .arg(device)
            .stdin(Stdio::null())
            .process_group(0)
            // Should the coordinator itself fail, no child outlives it unattended.
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "starting {} for slot {slot}: {e}",
                    self.spec.worker_bin.display()
                ),
            )
        })?;
        let pid = child.id().unwrap_or(0);
        info!("started worker slot {slot} ({device}) as pid {pid}");
        let (tx, rx) = watch::channel(false);
        let exits = self.exits.clone();
        tokio::spawn(async move {
            let status = child.wait().await.map_err(|e| e.to_string());
            let exit = ChildExit { slot, pid, status };
            if exit.success() {
                info!("worker slot {slot} (pid {pid}) {}", exit.describe());
            } else {
                warn!("worker slot {slot} (pid {pid}) {}", exit.describe());
            }
            let _ = tx.send(true);
            let _ = exits.send(exit);
        });
        let child = Child {
            slot,
            pid,
            exited: rx,
        };
        match self.children.iter_mut().find(|c| c.slot == slot) {
            Some(old) => *old = child,
            None => self.children.push(child),
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.pid).collect()
    }

    /// Children that have not exited yet.
    pub fn running(&self) -> usize {
        self.children.iter().filter(|c| !*c.exited.borrow()).count()
    }

    /// Waits up to `timeout` for every child to exit; returns whether they all did.
    pub async fn wait_all(&self, timeout: Duration) -> bool {
        let all = async {
            for c in &self.children {
                let mut rx = c.exited.clone();
                let _ = rx.wait_for(|exited| *exited).await;
            }
        };
        tokio::time::timeout(timeout, all).await.is_ok()
    }

    fn signal_running(&self, signal: Signal) {
        for c in &self.children {
            if *c.exited.borrow() || c.pid == 0 {
                continue;
            }
            // The child leads its own process group: the signal also reaches anything it
            // started.
            if let Err(e) = killpg(Pid::from_raw(c.pid as i32), signal) {
                warn!(
                    "sending {signal} to worker slot {} (pid {}): {e}",
                    c.slot, c.pid
                );
            }
        }
    }

    fn kill_all(&self) {
        self.signal_running(Signal::SIGKILL);
    }

    /// SIGTERM to every running child, up to `grace` for them to exit, then SIGKILL.
    pub async fn stop(&self, grace: Duration) {
        if self.running() == 0 {
            return;
        }
        info!(
            "stopping {} local worker(s): SIGTERM, then SIGKILL after {} s",
            self.running(),
            grace.as_secs_f64()
        );
        self.signal_running(Signal::SIGTERM);
        if self.wait_all(grace).await {
            return;
        }
        warn!(
            "{} local worker(s) ignored SIGTERM; killing them",
            self.running()
        );
        self.kill_all();
        self.wait_all(Duration::from_secs(5)).await;
    }
}

/// How long `nvidia-smi -L` may take: it answers in well under a second, but hangs on a
/// wedged driver, and the coordinator must not hang with it.
const NVIDIA_SMI_TIMEOUT: Duration = Duration::from_secs(15);

/// One device per slot: `cuda:I` when `nvidia-smi -L` lists at least `n` GPUs, else `cpu`
/// for all (a job does not mix the two). No nvidia-smi, a failing one or one that does
/// not answer in time (it is then killed) means no GPU.
pub async fn local_devices(n: u32) -> Vec<String> {
    devices_for(
        n,
        gpus_listed_by("nvidia-smi".as_ref(), NVIDIA_SMI_TIMEOUT).await,
    )
}

/// The GPUs `<nvidia_smi> -L` lists, 0 when it fails or takes longer than `timeout` (it is
/// then killed).
async fn gpus_listed_by(nvidia_smi: &std::ffi::OsStr, timeout: Duration) -> u32 {
    let listing = tokio::process::Command::new(nvidia_smi)
        .arg("-L")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, listing).await {
        Ok(Ok(out)) if out.status.success() => count_gpus(&String::from_utf8_lossy(&out.stdout)),
        Ok(_) => 0,
        Err(_) => {
            warn!(
                "{} -L did not answer within {} s: local workers use the CPU",
                Path::new(nvidia_smi).display(),
                timeout.as_secs_f64()
            );
            0
        }
    }
}

fn count_gpus(nvidia_smi_l: &str) -> u32 {
    nvidia_smi_l
        .lines()
        .filter(|l| l.trim_start().starts_with("GPU "))
        .count() as u32
}

fn devices_for(n: u32, gpus: u32) -> Vec<String> {
    (0..n)
        .map(|i| {
            if gpus >= n {
                format!("cuda:{i}")
            } else {
                "cpu".to_string()
            }
        })
        .collect()
}

/// `lgaf-worker` beside the running executable (where cargo and installs put it).
pub fn default_worker_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default()
        .join("lgaf-worker")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices() {
        let smi = "GPU 0: NVIDIA H200 (UUID: GPU-1)\nGPU 1: NVIDIA H200 (UUID: GPU-2)\n";
        assert_eq!(count_gpus(smi), 2);
        assert_eq!(devices_for(2, 2), ["cuda:0", "cuda:1"]);
        assert_eq!(devices_for(3, 2), ["cpu", "cpu", "cpu"]);
        assert_eq!(devices_for(1, 0), ["cpu"]);
    }

    /// Held by each test here that writes scripts and runs them: a file written while
    /// another thread forks stays open in the child until it execs, and running it then
    /// fails with ETXTBSY ("text file busy"). These two tests fork often; the only other
    /// fork in this binary (one `true` in the lease tests) is too brief to matter.
    static SCRIPTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// An executable shell script `name` in `dir`.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn gpus_are_counted_and_a_hung_or_missing_nvidia_smi_means_none() {
        let _scripts = SCRIPTS.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let timeout = Duration::from_secs(10);
        let two = script(
            dir.path(),
            "two-gpus",
            "echo 'GPU 0: NVIDIA H200 (UUID: GPU-1)'; echo 'GPU 1: NVIDIA H200 (UUID: GPU-2)'",
        );
        assert_eq!(gpus_listed_by(two.as_os_str(), timeout).await, 2);
        let failing = script(dir.path(), "failing", "echo 'GPU 0: X'; exit 9");
        assert_eq!(gpus_listed_by(failing.as_os_str(), timeout).await, 0);
        let missing = dir.path().join("missing");
        assert_eq!(gpus_listed_by(missing.as_os_str(), timeout).await, 0);

        let hung = script(dir.path(), "hung", "exec sleep 30");
        let started = std::time::Instant::now();
        let short = Duration::from_millis(300);
        assert_eq!(gpus_listed_by(hung.as_os_str(), short).await, 0);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill() {
        let _scripts = SCRIPTS.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("stubborn.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 0.05; done\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let spec = SpawnSpec {
            worker_bin: script,
            coordinator_url: "http://127.0.0.1:1".into(),
            devices: vec!["cpu".into()],
            token: None,
            tls: Default::default(),
            telemetry: Default::default(),
        };
        let workers = LocalWorkers::spawn(&spec, tx).unwrap();
        assert_eq!(workers.running(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        workers.stop(Duration::from_millis(300)).await;
        assert_eq!(workers.running(), 0);
        let exit = rx.recv().await.unwrap();
        assert!(exit.describe().contains("SIGKILL"), "{}", exit.describe());
    }
}
