//! One node's part of a coordinated job, as `lgaf-worker` plays it on a cluster: which slot
//! this process (or pod) is, taken from the flag, an Indexed Job's completion index or a
//! StatefulSet pod's ordinal; and, for a node with several GPUs (`--local-ranks N`), one
//! rank per GPU, each an `lgaf-worker` process of its own, started and supervised here the
//! way `torchrun --nproc-per-node` does it: a rank that fails in a way worth retrying is
//! started again in its slot (the coordinator takes it back there), a failure that no
//! restart can mend stops the others and becomes the node's exit status under the exit-code
//! contract (`lgaf_proto::exit`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use lgaf_proto::exit::ExitClass;
use lgaf_telemetry::TelemetryArgs;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Where a worker's slot comes from when `--slot` is not given.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// A node's settings that cannot make ranks; each names what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    #[error("${COMPLETION_INDEX_ENV}: expected the pod's completion index (0, 1, ...), got {0:?}")]
    CompletionIndex(String),

    #[error(
        "slot {node} x {ranks} local ranks is past the largest slot; is --slot (or \
         ${COMPLETION_INDEX_ENV}) the node's index?"
    )]
    SlotOverflow { node: u32, ranks: u32 },

    #[error(
        "--device {device:?} names one device, but --local-ranks {ranks} starts {ranks} ranks: \
         use --device cuda (local rank r trains on cuda:r) or --device cpu"
    )]
    OneDeviceForSeveralRanks { device: String, ranks: u32 },

    #[error("--device {0:?}: expected cpu, cuda or cuda:N")]
    Device(String),

    #[error(
        "--{flag} {addr}: local rank {rank} would listen on port {port}, past 65535; pick a \
         lower base port"
    )]
    PortOverflow {
        flag: &'static str,
        addr: String,
        rank: u32,
        port: u32,
    },

    #[error("--collective-bind {0:?}: expected HOST:PORT")]
    CollectiveBind(String),
}

/// The slot this process (with several local ranks: this node) takes: `--slot`, else
/// `$JOB_COMPLETION_INDEX` (a Kubernetes Indexed Job's pods), else, inside Kubernetes, the
/// ordinal that ends a StatefulSet pod's host name (`name-3`). `None`: the coordinator
/// assigns one. `env` reads the environment (a parameter, for the tests).
pub fn resolve_slot(
    flag: Option<u32>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<u32>, NodeError> {
    if flag.is_some() {
        return Ok(flag);
    }
    if let Some(index) = env(COMPLETION_INDEX_ENV) {
        return digits(&index)
            .map(Some)
            .ok_or(NodeError::CompletionIndex(index));
    }
    // Only inside Kubernetes: elsewhere a host named `gpu-node-12` is not slot 12.
    if env("KUBERNETES_SERVICE_HOST").is_none() {
        return Ok(None);
    }
    Ok(env("HOSTNAME")
        .as_deref()
        .and_then(|host| host.rsplit_once('-'))
        .and_then(|(_, ordinal)| digits(ordinal)))
}

/// A number spelt with ASCII digits only (u32's parser also takes `+1`).
fn digits(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// What one local rank is started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRank {
    /// Its index on this node (0..N): its GPU.
    pub local_rank: u32,
    /// Its slot in the job: node slot x N + local rank, or the coordinator's choice.
    pub slot: Option<u32>,
    /// `cpu` or `cuda:N`, as the protocol spells devices.
    pub device: String,
    /// Its collective listener: the node's port + local rank (0 stays 0: any free port).
    pub collective_bind: String,
    /// Its Prometheus endpoint: the node's port + local rank.
    pub metrics_listen: Option<SocketAddr>,
}

/// The settings of a node's `ranks` local ranks, from the node's: its slot, device
/// (`cpu`, `cuda`, or `cuda:N` for a single rank), collective and metrics addresses.
pub fn local_ranks(
    ranks: u32,
    node_slot: Option<u32>,
    device: &str,
    collective_bind: &str,
    metrics_listen: Option<SocketAddr>,
) -> Result<Vec<LocalRank>, NodeError> {
    let ranks = ranks.max(1);
    let (host, port) = collective_bind
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .ok_or_else(|| NodeError::CollectiveBind(collective_bind.to_string()))?;
    let device_of = |local: u32| -> Result<String, NodeError> {
        match device {
            "cpu" => Ok("cpu".to_string()),
            "cuda" => Ok(format!("cuda:{local}")),
            one if lgaf_proto::Device::parse(one).is_some() => {
                if ranks == 1 {
                    Ok(one.to_string())
                } else {
                    Err(NodeError::OneDeviceForSeveralRanks {
                        device: one.to_string(),
                        ranks,
                    })
                }
            }
            other => Err(NodeError::Device(other.to_string())),
        }
    };
    let shifted = |flag: &'static str, addr: String, base: u16, local: u32| {
        if base == 0 {
            return Ok(0);
        }
        let port = u32::from(base) + local;
        u16::try_from(port).map_err(|_| NodeError::PortOverflow {
            flag,
            addr,
            rank: local,
            port,
        })
    };
    (0..ranks)
        .map(|local| {
            let slot = match node_slot {
                None => None,
                Some(node) => Some(
                    node.checked_mul(ranks)
                        .and_then(|first| first.checked_add(local))
                        .ok_or(NodeError::SlotOverflow { node, ranks })?,
                ),
            };
            let collective_port =
                shifted("collective-bind", collective_bind.to_string(), port, local)?;
            let metrics_listen = match metrics_listen {
                None => None,
                Some(addr) => Some(SocketAddr::new(
                    addr.ip(),
                    shifted("metrics-listen", addr.to_string(), addr.port(), local)?,
                )),
            };
            Ok(LocalRank {
                local_rank: local,
                slot,
                device: device_of(local)?,
                collective_bind: format!("{host}:{collective_port}"),
                metrics_listen,
            })
        })
        .collect()
}

/// How a node starts each of its local ranks: this program again, as one rank, with the
/// node's connection settings and the rank's own slot, device and ports.
#[derive(Clone, Debug)]
pub struct RankLaunch {
    /// The `lgaf-worker` executable (this one).
    pub program: PathBuf,
    pub coordinator: String,
    pub collective_host: Option<String>,
    /// Passed on as a file, so the token never sits in a child's environment; without it
    /// the ranks inherit `$LGAF_JOB_TOKEN`.
    pub token_file: Option<PathBuf>,
    /// Passed on as flags: the CA, and the certificate the ranks present (mutual TLS).
    pub tls: lgaf_proto::tls::ClientTlsFiles,
    /// Logs, traces and metrics as the node was told (flags or environment).
    pub telemetry: TelemetryArgs,
}

impl RankLaunch {
    /// The command that starts `rank`.
    pub fn command(&self, rank: &LocalRank) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(["--coordinator", &self.coordinator])
            .args(["--device", &rank.device])
            .args(["--collective-bind", &rank.collective_bind])
            .args(["--local-ranks", "1"]);
        if let Some(slot) = rank.slot {
            command.args(["--slot", &slot.to_string()]);
        }
        if let Some(host) = &self.collective_host {
            command.args(["--collective-host", host]);
        }
        if let Some(path) = &self.token_file {
            command.arg("--token-file").arg(path);
        }
        if let Some(path) = &self.tls.ca {
            command.arg("--tls-ca").arg(path);
        }
        if let Some(identity) = &self.tls.identity {
            command.arg("--tls-cert").arg(&identity.cert);
            command.arg("--tls-key").arg(&identity.key);
        }
        for (name, value) in self.telemetry.child_env(rank.local_rank) {
            if name != METRICS_LISTEN_ENV {
                command.env(name, value);
            }
        }
        match rank.metrics_listen {
            Some(addr) => command.env(METRICS_LISTEN_ENV, addr.to_string()),
            None => command.env_remove(METRICS_LISTEN_ENV),
        };
        command
    }
}

/// The variable of `--metrics-listen`, which each rank gets with a port of its own.
const METRICS_LISTEN_ENV: &str = "LGAF_METRICS_LISTEN";

/// How local ranks are supervised.
#[derive(Clone, Copy, Debug)]
pub struct Supervision {
    /// Restarts of one local rank after a retryable failure before the node gives up
    /// (and exits 75, for Kubernetes to replace the pod).
    pub max_restarts: u32,
    /// Between SIGTERM and SIGKILL when the node stops its ranks.
    pub stop_timeout: Duration,
}

/// What ended a node's supervision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeOutcome {
    /// Every rank finished (success), or this rank's failure ended the node: one that no
    /// restart mends, or a retryable one past the restarts.
    Ranks(ExitClass),
    /// The node was told to stop (SIGTERM, SIGINT): its exit status is 128 + the signal.
    Signalled(i32),
}

/// Starts `ranks`, each by the command `launch` makes for it, and supervises them until
/// they have all ended (or one failed in a way no restart mends, or a signal came).
pub async fn supervise(
    ranks: &[LocalRank],
    launch: impl Fn(&LocalRank) -> Command,
    supervision: Supervision,
) -> std::io::Result<NodeOutcome> {
    let mut signals = Signals::install()?;
    let (exits, mut exited) = mpsc::unbounded_channel::<(usize, std::io::Result<ExitStatus>)>();
    let mut pids: Vec<Option<u32>> = vec![None; ranks.len()];
    let mut restarts = vec![0u32; ranks.len()];
    let mut running = 0usize;
    for index in 0..ranks.len() {
        pids[index] = Some(start(index, &ranks[index], &launch, &exits)?);
        running += 1;
    }
    while running > 0 {
        let (index, status) = tokio::select! {
            Some(exit) = exited.recv() => exit,
            signal = signals.next() => {
                stop(&mut pids, &mut exited, running, supervision.stop_timeout).await;
                return Ok(NodeOutcome::Signalled(signal as i32));
            }
        };
        running -= 1;
        pids[index] = None;
        let rank = &ranks[index];
        let class = match &status {
            Ok(status) => classify(*status),
            Err(e) => {
                warn!(local_rank = rank.local_rank, error = %e, "waiting for a local rank");
                ExitClass::Retryable
            }
        };
        match class {
            ExitClass::Success => {
                info!(local_rank = rank.local_rank, slot = ?rank.slot, "local rank finished");
            }
            ExitClass::Retryable if restarts[index] < supervision.max_restarts => {
                restarts[index] += 1;
                // 1, 2, 4 ... 64 s: a crash loop does not spin.
                let pause = Duration::from_secs(1 << (restarts[index] - 1).min(6));
                warn!(local_rank = rank.local_rank, slot = ?rank.slot, status = ?status,
                      restart = restarts[index], max = supervision.max_restarts,
                      "local rank failed; starting it again in its slot in {} s",
                      pause.as_secs());
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    signal = signals.next() => {
                        stop(&mut pids, &mut exited, running, supervision.stop_timeout).await;
                        return Ok(NodeOutcome::Signalled(signal as i32));
                    }
                }
                pids[index] = Some(start(index, rank, &launch, &exits)?);
                running += 1;
            }
            class => {
                warn!(local_rank = rank.local_rank, slot = ?rank.slot, status = ?status,
                      "local rank failed ({class:?}); stopping the node's other ranks");
                stop(&mut pids, &mut exited, running, supervision.stop_timeout).await;
                return Ok(NodeOutcome::Ranks(class));
            }
        }
    }
    Ok(NodeOutcome::Ranks(ExitClass::Success))
}

/// The class of a local rank's exit: its code under the contract; a code outside it (a
/// crash, 1, 101) or a kill by a signal (not ours: ours happen after supervision ends) is
/// worth retrying.
fn classify(status: ExitStatus) -> ExitClass {
    status
        .code()
        .and_then(ExitClass::from_code)
        .unwrap_or(ExitClass::Retryable)
}

/// The signals that stop a node.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.terminate.recv() => Signal::SIGTERM,
            _ = self.interrupt.recv() => Signal::SIGINT,
        }
    }
}

/// Spawns local rank `index` and a task that reports its exit; returns its pid.
fn start(
    index: usize,
    rank: &LocalRank,
    launch: &impl Fn(&LocalRank) -> Command,
    exits: &mpsc::UnboundedSender<(usize, std::io::Result<ExitStatus>)>,
) -> std::io::Result<u32> {
    let mut child = launch(rank).kill_on_drop(true).spawn()?;
    let pid = child.id().unwrap_or(0);
    info!(local_rank = rank.local_rank, slot = ?rank.slot, device = rank.device, pid,
          "started local rank");
    let exits = exits.clone();
    tokio::spawn(async move {
        let _ = exits.send((index, child.wait().await));
    });
    Ok(pid)
}

/// SIGTERM to every running rank; SIGKILL to those still running after `timeout`.
async fn stop(
    pids: &mut [Option<u32>],
    exited: &mut mpsc::UnboundedReceiver<(usize, std::io::Result<ExitStatus>)>,
    mut running: usize,
    timeout: Duration,
) {
    let signal_all = |pids: &[Option<u32>], signal: Signal| {
        // Never pid 0 (a child whose id was not known): kill(0) would signal this whole
        // process group, the supervisor included.
        for pid in pids.iter().flatten().filter(|&&pid| pid > 0) {
            if let Ok(pid) = i32::try_from(*pid) {
                // A rank that exited in the meantime: nothing to signal.
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
    };
    signal_all(pids, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + timeout;
    while running > 0 {
        match tokio::time::timeout_at(deadline, exited.recv()).await {
            Ok(Some((index, _))) => {
                pids[index] = None;
                running -= 1;
            }
            Ok(None) => break,
            Err(_) => {
                warn!(
                    "{running} local rank(s) still running {} s after SIGTERM: killing them",
                    timeout.as_secs()
                );
                signal_all(pids, Signal::SIGKILL);
                while running > 0 && exited.recv().await.is_some() {
                    running -= 1;
                }
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn the_slot_comes_from_the_flag_the_completion_index_or_the_pod_ordinal() {
        let k8s = ("KUBERNETES_SERVICE_HOST", "10.0.0.1");
        assert_eq!(
            resolve_slot(Some(3), env(&[("JOB_COMPLETION_INDEX", "5")])),
            Ok(Some(3))
        );
        assert_eq!(
            resolve_slot(None, env(&[("JOB_COMPLETION_INDEX", "5")])),
            Ok(Some(5))
        );
        assert_eq!(
            resolve_slot(
                None,
                env(&[("JOB_COMPLETION_INDEX", "5"), ("HOSTNAME", "w-7"), k8s])
            ),
            Ok(Some(5))
        );
        assert_eq!(
            resolve_slot(None, env(&[("HOSTNAME", "lgaf-worker-7"), k8s])),
            Ok(Some(7))
        );
        // A Deployment's pod, or a host outside Kubernetes: the coordinator chooses.
        assert_eq!(
            resolve_slot(None, env(&[("HOSTNAME", "w-5d8f-x2k9q"), k8s])),
            Ok(None)
        );
        assert_eq!(
            resolve_slot(None, env(&[("HOSTNAME", "gpu-node-12")])),
            Ok(None)
        );
        assert_eq!(resolve_slot(None, env(&[])), Ok(None));
        for bad in ["", "x", "-1", "+1", "99999999999"] {
            assert_eq!(
                resolve_slot(None, env(&[("JOB_COMPLETION_INDEX", bad)])),
                Err(NodeError::CompletionIndex(bad.to_string()))
            );
        }
    }

    #[test]
    fn local_ranks_take_consecutive_slots_gpus_and_ports() {
        let metrics: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        let ranks = local_ranks(4, Some(2), "cuda", "0.0.0.0:29500", Some(metrics)).unwrap();
        let got: Vec<_> = ranks
            .iter()
            .map(|r| {
                (
                    r.slot,
                    r.device.as_str(),
                    r.collective_bind.as_str(),
                    r.metrics_listen.unwrap().port(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (Some(8), "cuda:0", "0.0.0.0:29500", 9464),
                (Some(9), "cuda:1", "0.0.0.0:29501", 9465),
                (Some(10), "cuda:2", "0.0.0.0:29502", 9466),
                (Some(11), "cuda:3", "0.0.0.0:29503", 9467),
            ]
        );
        // One rank: the node's own settings, `cuda` spelt as the protocol wants it.
        let one = local_ranks(1, None, "cuda", "127.0.0.1:0", None).unwrap();
        assert_eq!(
            one,
            [LocalRank {
                local_rank: 0,
                slot: None,
                device: "cuda:0".into(),
                collective_bind: "127.0.0.1:0".into(),
                metrics_listen: None,
            }]
        );
        assert_eq!(
            local_ranks(1, Some(1), "cuda:3", "127.0.0.1:0", None).unwrap()[0].device,
            "cuda:3"
        );
        let cpu = local_ranks(2, None, "cpu", "127.0.0.1:0", None).unwrap();
        assert!(cpu
            .iter()
            .all(|r| r.device == "cpu" && r.collective_bind == "127.0.0.1:0"));
    }

    #[test]
    fn settings_that_cannot_make_ranks_are_refused_by_name() {
        assert_eq!(
            local_ranks(2, None, "cuda:1", "0.0.0.0:0", None),
            Err(NodeError::OneDeviceForSeveralRanks {
                device: "cuda:1".into(),
                ranks: 2
            })
        );
        assert_eq!(
            local_ranks(1, None, "gpu", "0.0.0.0:0", None),
            Err(NodeError::Device("gpu".into()))
        );
        assert_eq!(
            local_ranks(2, Some(u32::MAX), "cpu", "0.0.0.0:0", None),
            Err(NodeError::SlotOverflow {
                node: u32::MAX,
                ranks: 2
            })
        );
        assert!(matches!(
            local_ranks(2, None, "cpu", "0.0.0.0:65535", None),
            Err(NodeError::PortOverflow {
                rank: 1,
                port: 65536,
                ..
            })
        ));
        assert_eq!(
            local_ranks(1, None, "cpu", "nowhere", None),
            Err(NodeError::CollectiveBind("nowhere".into()))
        );
    }

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    fn two_ranks() -> Vec<LocalRank> {
        local_ranks(2, Some(0), "cpu", "127.0.0.1:0", None).unwrap()
    }

    const QUICK: Supervision = Supervision {
        max_restarts: 2,
        stop_timeout: Duration::from_secs(5),
    };

    #[tokio::test]
    async fn every_rank_finishing_is_success() {
        let outcome = supervise(&two_ranks(), |_| sh("exit 0"), QUICK)
            .await
            .unwrap();
        assert_eq!(outcome, NodeOutcome::Ranks(ExitClass::Success));
    }

    #[tokio::test]
    async fn a_retryable_failure_is_restarted_in_its_slot_until_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("failed-once");
        // Slot 1 fails once (75), then succeeds when started again.
        let launch = |rank: &LocalRank| {
            let script = if rank.slot == Some(1) {
                format!(
                    "if [ -e {m} ]; then exit 0; else touch {m}; exit 75; fi",
                    m = marker.display()
                )
            } else {
                "exit 0".to_string()
            };
            sh(&script)
        };
        let outcome = supervise(&two_ranks(), launch, QUICK).await.unwrap();
        assert_eq!(outcome, NodeOutcome::Ranks(ExitClass::Success));
        assert!(marker.exists());

        // A rank that keeps crashing: the node gives up after max_restarts, retryably.
        let started = std::time::Instant::now();
        let outcome = supervise(&two_ranks()[..1], |_| sh("exit 1"), QUICK)
            .await
            .unwrap();
        assert_eq!(outcome, NodeOutcome::Ranks(ExitClass::Retryable));
        // Paused 1 s, then 2 s, between the three starts.
        assert!(started.elapsed() >= Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_failure_no_restart_mends_stops_the_other_ranks() {
        let dir = tempfile::tempdir().unwrap();
        let survivor = dir.path().join("survivor-ran-to-the-end");
        let launch = |rank: &LocalRank| {
            if rank.local_rank == 0 {
                sh("sleep 0.2; exit 78")
            } else {
                sh(&format!("sleep 30; touch {}", survivor.display()))
            }
        };
        let started = std::time::Instant::now();
        let outcome = supervise(&two_ranks(), launch, QUICK).await.unwrap();
        assert_eq!(outcome, NodeOutcome::Ranks(ExitClass::Permanent));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(!survivor.exists());

        let launch = |rank: &LocalRank| {
            sh(if rank.local_rank == 1 {
                "exit 79"
            } else {
                "exit 0"
            })
        };
        let outcome = supervise(&two_ranks(), launch, QUICK).await.unwrap();
        assert_eq!(outcome, NodeOutcome::Ranks(ExitClass::JobFailed));
    }
}
