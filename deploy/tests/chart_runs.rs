//! The chart runs: `helm template` renders the job (TLS certificates and the job token made
//! by the chart, S3 credentials in its Secret, the training config in its ConfigMap), and
//! its coordinator and worker containers are started as local processes the way a kubelet
//! would start them (`lgaf_deploy::pods`): the coordinator pod at 127.0.0.1 behind its
//! Service's name, each worker pod at a loopback address of its own with its completion
//! index. The coordinated CPU job trains to its end over real S3 (moto), a worker pod killed
//! mid-run is replaced in its slot by a new pod as the Job controller would, the final
//! checkpoint is committed, and every process exits as the exit-code contract says.
//!
//! Any drift between the chart and the binaries (a flag, a path, an environment variable, a
//! port) fails here.

#[path = "../../crates/store/tests/support/moto.rs"]
mod moto;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lgaf_deploy::pods::{container_command, Pod};
use lgaf_deploy::{render, Render};
use lgaf_telemetry::testing::free_port;
use moto::{moto_server, Moto};
use serde_json::Value;

const RELEASE: &str = "chartrun";
const BUCKET: &str = "lgaf-chart";
/// 12 identities x 8 images over 2 ranks x 8 images a step: 6 steps an epoch.
const EPOCHS: u64 = 4;
const TOTAL_STEPS: u64 = 6 * EPOCHS;

/// The release's values: two CPU worker pods, the tiny model of the process tests, S3 on
/// moto, fast failure detection, TLS and the token made by the chart, free ports.
fn values(moto: &Moto) -> String {
    let endpoint = moto.env()["AWS_ENDPOINT_URL"].clone();
    format!(
        r#"
store: s3://{BUCKET}/runs
workers: 2
gpusPerNode: 0
s3:
  endpoint: {endpoint}
  allowHttp: true
  accessKeyId: testing
  secretAccessKey: testing
tls:
  enabled: true
telemetry:
  logFormat: text
coordinator:
  port: {coordinator_port}
  metricsPort: {coordinator_metrics}
  heartbeatMs: 500
  heartbeatDeadlineMs: 5000
  collectiveTimeoutMs: 30000
  leaseSecs: 10
worker:
  collectivePort: {collective_port}
  metricsPort: {worker_metrics}
config:
  model: {{arch: r18, width: 0.125, embedding_size: 32}}
  data:
    batch_size: 8
    workers: 1
    synthetic: {{identities: 12, images_per_identity: 8}}
  train: {{epochs: {EPOCHS}, log_every: 1}}
  optim: {{warmup_epochs: 0.0, lr_steps: []}}
  checkpoint: {{every_steps: 4, keep_last: 0}}
"#,
        coordinator_port = free_port(),
        coordinator_metrics = free_port(),
        collective_port = free_port(),
        worker_metrics = free_port(),
    )
}

/// A started pod: its process, and its output as it comes.
struct Running {
    name: String,
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Running {
    fn start(name: &str, mut command: Command) -> Running {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command.env("OMP_NUM_THREADS", "1");
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting pod {name}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("piped")),
            Box::new(child.stderr.take().expect("piped")),
        ];
        for pipe in pipes {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut output = output.lock().unwrap();
                    output.push_str(&line);
                    output.push('\n');
                }
            });
        }
        Running {
            name: name.to_string(),
            child,
            output,
        }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every pod's output, for a failure message.
fn logs(pods: &[&Running]) -> String {
    pods.iter()
        .map(|p| format!("===== {} =====\n{}", p.name, p.output()))
        .collect()
}

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The pod template of the rendered workload `kind` named `*suffix`.
fn template<'a>(render: &'a Render, kind: &str, suffix: &str) -> &'a Value {
    &render.get(kind, suffix)["spec"]["template"]
}

/// The committed checkpoints' steps of the release's run, as `lgaf ckpt ls` reads them
/// from the store.
fn committed_steps(moto: &Moto) -> Vec<u64> {
    let out = Command::new(bin_dir().join("lgaf"))
        .args([
            "ckpt",
            "ls",
            "--json",
            "--store",
            &format!("s3://{BUCKET}/runs"),
        ])
        .args(["--run", RELEASE])
        .envs(moto.env())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["step"].as_u64())
        .collect()
}

fn wait_until(what: &str, timeout: Duration, pods: &[&Running], mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < timeout,
            "{what} did not happen within {} s\n{}",
            timeout.as_secs(),
            logs(pods)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_rendered_job_trains_replaces_a_lost_pod_and_commits_its_checkpoint() {
    let binary = moto_server().expect("moto_server is not installed: `make test` installs it");
    let moto = Moto::start(&binary);
    moto.create_bucket(BUCKET);
    let scratch = tempfile::tempdir().unwrap();
    let values_file = scratch.path().join("values.yaml");
    std::fs::write(&values_file, values(&moto)).unwrap();
    let render = render(RELEASE, &["-f", values_file.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("helm template failed:\n{e}"));

    let coordinator_service = render.get("Service", "-coordinator");
    let services = vec![(
        lgaf_deploy::name(coordinator_service).to_string(),
        "127.0.0.1".to_string(),
    )];
    let worker_job = render.get("Job", "-worker");
    assert_eq!(worker_job["spec"]["completionMode"], "Indexed");
    let completions = worker_job["spec"]["completions"].as_u64().unwrap();
    assert_eq!(completions, 2);

    let pod = |name: &str, ip: &str, index: Option<u32>| Pod {
        name: name.to_string(),
        ip: ip.to_string(),
        completion_index: index,
        volumes_dir: scratch.path().join("volumes"),
    };
    let start = |pod: &Pod, kind: &str, suffix: &str, container: &str| {
        let template = template(&render, kind, suffix);
        let command = container_command(&render, template, container, pod, &services, &bin_dir());
        Running::start(&pod.name, command)
    };

    let mut coordinator = start(
        &pod("chartrun-coordinator-5d8f7-x2k9q", "127.0.0.1", None),
        "Deployment",
        "-coordinator",
        "coordinator",
    );
    let mut workers: Vec<Running> = (0..completions as u32)
        .map(|index| {
            let ip = format!("127.0.0.{}", 2 + index);
            let name = format!("chartrun-worker-{index}-abcde");
            start(&pod(&name, &ip, Some(index)), "Job", "-worker", "worker")
        })
        .collect();

    // A checkpoint is committed; then worker pod 1 dies (its node went away) and the Job
    // controller starts a new pod with the same completion index, at another IP.
    wait_until(
        "a first committed checkpoint",
        Duration::from_secs(240),
        &[&coordinator, &workers[0], &workers[1]],
        || !committed_steps(&moto).is_empty(),
    );
    workers[1].signal(nix::sys::signal::Signal::SIGKILL);
    let _ = workers[1].child.wait();
    let lost = workers.remove(1);
    let replacement = start(
        &pod("chartrun-worker-1-fghij", "127.0.0.4", Some(1)),
        "Job",
        "-worker",
        "worker",
    );
    workers.push(replacement);

    // Both worker pods complete (exit 0: the Job counts them succeeded).
    for index in 0..workers.len() {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = workers[index].try_wait() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "worker pod {index} did not finish\n{}",
                logs(&[&coordinator, &lost, &workers[0], &workers[1]])
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(
            status.code(),
            Some(0),
            "worker pod {index}\n{}",
            logs(&[&coordinator, &workers[0], &workers[1]])
        );
    }

    // The coordinator keeps serving the finished job's status (--keep-serving, so that the
    // Deployment does not restart it) until the pod is deleted (SIGTERM): then exit 0.
    wait_until(
        "the coordinator's final status line",
        Duration::from_secs(60),
        &[&coordinator],
        || {
            coordinator
                .output()
                .contains(&format!("step {TOTAL_STEPS}/{TOTAL_STEPS}"))
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        coordinator.try_wait().is_none(),
        "the coordinator exited although it should keep serving\n{}",
        coordinator.output()
    );
    coordinator.signal(nix::sys::signal::Signal::SIGTERM);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = coordinator.try_wait() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            coordinator.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = coordinator.output();
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("finished"), "{output}");
    // Served over the chart's TLS certificate, which the workers verified with its CA.
    assert!(output.contains("listening on https://"), "{output}");

    // The replacement took the lost pod's slot (its completion index) and the job went on
    // with it from the survivor's state (live recovery: the survivor holds its own
    // classifier shard and its replica of the lost rank's); the job is not elastic, so it
    // could finish only so.
    assert!(
        output.contains("(cpu, slot 1): ")
            && output.contains("is replaced by a new worker in its slot 1")
            && output.contains("resuming from the state of generation 1's survivors at step"),
        "{}",
        logs(&[&coordinator, &lost, &workers[1]])
    );
    assert!(
        workers[1]
            .output()
            .contains("resumed from the survivors' state"),
        "{}",
        workers[1].output()
    );
    let steps = committed_steps(&moto);
    assert_eq!(steps.last(), Some(&TOTAL_STEPS), "committed: {steps:?}");
}

/// The chart's values reach the processes: the rendered train.toml is what the coordinator
/// hands to the workers, and the flags it sets are the binaries' own (`--help` lists each).
#[test]
fn every_flag_the_chart_sets_is_one_the_binaries_take() {
    let render = render(
        "flags",
        &["--set", "store=s3://b/runs", "--set", "tls.enabled=true"],
    )
    .unwrap_or_else(|e| panic!("helm template failed:\n{e}"));
    for (kind, suffix, container) in [
        ("Deployment", "-coordinator", "coordinator"),
        ("Job", "-worker", "worker"),
    ] {
        let spec = &template(&render, kind, suffix)["spec"];
        let found = spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == container)
            .unwrap();
        let program = found["command"][0].as_str().unwrap();
        let help = Command::new(bin_dir().join(program))
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for arg in found["args"].as_array().unwrap() {
            let flag = arg.as_str().unwrap().split('=').next().unwrap();
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "{program} has no flag {flag} (the chart sets it)"
            );
        }
    }
}
