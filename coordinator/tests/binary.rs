//! The `lgaf-coordinator` binary as users run it: with workers from outside, with local
//! workers (a shell-script stand-in until the real worker exists) and its refusals.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{standin_pids, Coordinator, BIN};
use common::*;
use lgaf_proto::auth::{AttachToken, JobToken};
use lgaf_proto::v1::{self, coordinator_client::CoordinatorClient};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn wait_for(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The job's status, as the coordinator at `url` (no job token) answers GetJobStatus.
fn job_status(rt: &tokio::runtime::Runtime, url: &str) -> v1::JobStatus {
    rt.block_on(async {
        let mut client = CoordinatorClient::connect(url.to_string()).await.unwrap();
        client
            .get_job_status(v1::JobStatusRequest { api_version: 1 })
            .await
            .unwrap()
            .into_inner()
    })
}

/// The stand-in worker, copied executable into `dir`.
fn standin(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stand-in-worker.sh");
    let dst = dir.join("stand-in-worker.sh");
    std::fs::copy(src, &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    dst
}

/// Every flag also comes from its environment variable (`LGAF_<FLAG>`), as a Kubernetes pod
/// sets them; a coordinator with `--external-workers` never starts workers itself, however
/// long none comes.
#[test]
fn flags_from_the_environment_and_a_coordinator_that_never_spawns() {
    let dir = tempfile::tempdir().unwrap();
    let worker = standin(dir.path());
    let store = dir.path().join("store");
    let mut coord = Coordinator::start(
        &[],
        &[
            ("LGAF_WORKERS", Path::new("3")),
            ("LGAF_STORE", &store),
            ("LGAF_RUN_ID", Path::new("from-env")),
            ("LGAF_EXTERNAL_WORKERS", Path::new("true")),
            ("LGAF_GRACE_SECS", Path::new("0")),
            ("LGAF_WORKER_BIN", &worker),
            ("LGAF_STANDIN_DIR", dir.path()),
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = job_status(&rt, &coord.url);
    assert_eq!((status.run_id.as_str(), status.world_size), ("from-env", 3));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(standin_pids(dir.path()).is_empty(), "{}", coord.stderr());
    assert!(
        !coord.stderr().contains("local worker"),
        "{}",
        coord.stderr()
    );
    coord.signal(Signal::SIGTERM);
    assert_eq!(coord.wait(Duration::from_secs(15)).code(), Some(143));

    // --help names each variable.
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for variable in [
        "LGAF_WORKERS",
        "LGAF_MIN_WORKERS",
        "LGAF_EXTERNAL_WORKERS",
        "LGAF_TOKEN_FILE",
    ] {
        assert!(
            help.contains(&format!("[env: {variable}")),
            "{variable}:\n{help}"
        );
    }
}

#[test]
fn help_lists_the_options() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--workers",
        "--config",
        "--store",
        "--run-id",
        "--max-steps",
        "--listen",
        "--spawn-local",
        "--worker-bin",
        "--grace-secs",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
    let out = Command::new(BIN).output().unwrap();
    assert!(!out.status.success(), "--workers is required");
}

#[test]
fn workers_from_outside_run_the_job_and_the_coordinator_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("train.toml");
    let config_text = "[train]\nepochs = 2\nbatch_size = 32\n";
    std::fs::write(&config, config_text).unwrap();
    let store = dir.path().join("store");
    let mut coord = Coordinator::start(
        &[
            "--workers",
            "2",
            "--config",
            config.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--run-id",
            "outside",
            "--max-steps",
            "20",
            "--grace-secs",
            "600",
            "--heartbeat-ms",
            "100",
        ],
        &[],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = coord.url.clone();
    let summaries = rt.block_on(async move {
        let a = tokio::spawn(run_worker(url.clone(), None, 5100, facts()));
        let b = tokio::spawn(run_worker(url, None, 5101, facts()));
        [a.await.unwrap().unwrap(), b.await.unwrap().unwrap()]
    });
    let status = coord.wait(Duration::from_secs(30));
    assert!(status.success(), "{status}; stderr:\n{}", coord.stderr());
    for s in &summaries {
        // The config file as is, an absolute store URL, the CLI's step cap.
        assert_eq!(s.register.config_toml, config_text);
        assert_eq!(s.register.store_url, format!("file://{}", store.display()));
        assert_eq!(s.register.max_steps, 20);
        assert_eq!(s.register.run_id, "outside");
        // 1001 / 2 / 32 = 15 steps per epoch, 30 in all, capped at 20.
        assert_eq!(s.total_steps, 20);
    }
    let out = coord.remaining_stdout().join("\n");
    assert!(
        out.contains("(run outside) finished") && out.contains("step 20/20"),
        "stdout: {out}"
    );
    let steps = rt.block_on(committed_steps(&run_store(&store, "outside")));
    assert_eq!(steps, [4, 8, 12, 15, 16, 20]);
    let stderr = coord.stderr();
    assert!(
        stderr.contains("step 20/20 epoch 1 loss 0.5000"),
        "progress lines:\n{stderr}"
    );
}

fn run_store(dir: &Path, run_id: &str) -> lgaf_coordinator::RunStore {
    let store = lgaf_coordinator::Store::from_url(dir.to_str().unwrap()).unwrap();
    lgaf_coordinator::RunStore::new(store, run_id).unwrap()
}

/// Runs the coordinator with two workers from outside to the end; what they saw.
fn run_job(args: &[String]) -> (Vec<Summary>, String, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut coord = Coordinator::start(&args, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = coord.url.clone();
    let summaries = rt.block_on(async move {
        let a = tokio::spawn(run_worker(url.clone(), None, 5200, facts()));
        let b = tokio::spawn(run_worker(url, None, 5201, facts()));
        vec![a.await.unwrap().unwrap(), b.await.unwrap().unwrap()]
    });
    let status = coord.wait(Duration::from_secs(30));
    assert!(status.success(), "{status}; stderr:\n{}", coord.stderr());
    (
        summaries,
        coord.remaining_stdout().join("\n"),
        coord.stderr(),
    )
}

#[test]
fn rerunning_a_run_id_resumes_it_and_a_finished_run_ends_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("train.toml");
    std::fs::write(&config, "[train]\nepochs = 2\n").unwrap();
    let store = dir.path().join("store");
    let args = |max_steps: &'static str| -> Vec<String> {
        [
            "--workers",
            "2",
            "--config",
            config.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--run-id",
            "again",
            "--max-steps",
            max_steps,
            "--grace-secs",
            "600",
            "--heartbeat-ms",
            "100",
        ]
        .map(String::from)
        .to_vec()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Up to step 8 (1001 / 2 / 32 = 15 steps per epoch, capped at 8).
    let (summaries, out, _) = run_job(&args("8"));
    assert!(summaries
        .iter()
        .all(|s| s.resume_step == 0 && s.total_steps == 8));
    assert!(out.contains("step 8/8"), "{out}");
    let run = run_store(&store, "again");
    assert_eq!(rt.block_on(committed_steps(&run)), [4, 8]);

    // The same run id with a higher cap goes on from step 8.
    let second = args("20");
    let (summaries, out, stderr) = run_job(&second);
    for s in &summaries {
        assert_eq!((s.resume_step, s.total_steps), (8, 20));
        assert_eq!(
            s.resume_manifest,
            "runs/again/ckpt/000000000008/MANIFEST.json"
        );
        assert_eq!(s.epochs[0].checkpoint_steps, [12, 15]);
    }
    assert!(
        out.contains("(run again) finished") && out.contains("step 20/20"),
        "{out}"
    );
    assert!(stderr.contains("resuming from step 8"), "{stderr}");
    assert_eq!(rt.block_on(committed_steps(&run)), [4, 8, 12, 15, 16, 20]);

    // Once more: the newest checkpoint is the final step, so it is finished at once,
    // without serving or waiting for anyone.
    let started = Instant::now();
    let out = Command::new(BIN).args(&second).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(
        stdout.contains("(run again) finished")
            && stdout.contains("step 20/20")
            && stdout.contains("last checkpoint at step 20"),
        "{stdout}"
    );
    assert!(stderr.contains("nothing left to train"), "{stderr}");

    // With --keep-serving (a Kubernetes Deployment's coordinator), the finished job is
    // served, its status answered, until SIGTERM; then it exits 0, the job's verdict.
    let keep: Vec<&str> = second
        .iter()
        .map(String::as_str)
        .chain(["--keep-serving"])
        .collect();
    let mut coord = Coordinator::start(&keep, &[]);
    let status = job_status(&rt, &coord.url);
    assert_eq!(status.state(), v1::JobState::Finished);
    assert_eq!(status.last_checkpoint_step, 20);
    std::thread::sleep(Duration::from_millis(500));
    coord.signal(Signal::SIGTERM);
    let exit = coord.wait(Duration::from_secs(15));
    assert_eq!(exit.code(), Some(0), "{}", coord.stderr());
    assert!(
        coord.stderr().contains("--keep-serving"),
        "{}",
        coord.stderr()
    );

    // A lower cap than what was trained is refused with the reason.
    let out = Command::new(BIN).args(args("12")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A schedule the stored run cannot take fails the job: 79, no restart helps (the
    // exit-code contract).
    assert_eq!(out.status.code(), Some(79), "{stderr}");
    assert!(
        stderr.contains("step 20, past the final step 12"),
        "{stderr}"
    );
    assert_eq!(rt.block_on(committed_steps(&run)), [4, 8, 12, 15, 16, 20]);
}

#[test]
fn spawned_local_workers_are_stopped_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let standin_dir = dir.path().join("standin");
    std::fs::create_dir(&standin_dir).unwrap();
    let worker = standin(dir.path());
    let store = dir.path().join("store");
    let mut coord = Coordinator::start(
        &[
            "--workers",
            "2",
            "--spawn-local",
            "--worker-bin",
            worker.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--grace-secs",
            "600",
            "--stop-timeout-secs",
            "10",
        ],
        &[("LGAF_STANDIN_DIR", &standin_dir)],
    );
    for slot in 0..2 {
        wait_for(
            &standin_dir.join(format!("pid-{slot}")),
            Duration::from_secs(20),
        );
        let args = std::fs::read_to_string(standin_dir.join(format!("args-{slot}"))).unwrap();
        let expected = format!("--coordinator {} --slot {slot} --device ", coord.url);
        assert!(args.starts_with(&expected), "{args:?} vs {expected:?}");
        let device = args.trim().rsplit(' ').next().unwrap();
        assert!(
            device == "cpu" || device == format!("cuda:{slot}"),
            "{args}"
        );
    }
    let pids = standin_pids(&standin_dir);
    assert_eq!(pids.len(), 2);

    coord.signal(Signal::SIGTERM);
    let status = coord.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(143), "stderr:\n{}", coord.stderr());
    for slot in 0..2 {
        assert!(
            standin_dir.join(format!("terminated-{slot}")).exists(),
            "slot {slot} did not get SIGTERM; stderr:\n{}",
            coord.stderr()
        );
    }
    for pid in pids {
        // Reaped by the coordinator: no such process any more.
        assert!(
            kill(Pid::from_raw(pid), None).is_err(),
            "pid {pid} still exists"
        );
    }
    let stderr = coord.stderr();
    assert!(stderr.contains("received SIGTERM"), "{stderr}");
    assert!(stderr.contains("exited with status 0"), "{stderr}");
    let out = coord.remaining_stdout().join("\n");
    // Cancelled, not failed: a coordinator started again resumes the run.
    assert!(
        out.contains(") cancelled: ") && out.contains("error: the coordinator received SIGTERM"),
        "{out}"
    );
}

#[test]
fn local_workers_start_after_the_grace_period_and_their_failures_spend_the_restart_budget() {
    let dir = tempfile::tempdir().unwrap();
    let standin_dir = dir.path().join("standin");
    std::fs::create_dir(&standin_dir).unwrap();
    let worker = standin(dir.path());
    let store = dir.path().join("store");
    let started = Instant::now();
    let mut coord = Coordinator::start(
        &[
            "--workers",
            "2",
            "--worker-bin",
            worker.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--grace-secs",
            "1",
        ],
        &[
            ("LGAF_STANDIN_DIR", &standin_dir),
            ("LGAF_STANDIN_MODE", Path::new("fail")),
        ],
    );
    let status = coord.wait(Duration::from_secs(30));
    assert!(started.elapsed() >= Duration::from_secs(1));
    // The job failed (its workers failed past --max-restarts): 79, no restart helps.
    assert_eq!(status.code(), Some(79), "stderr:\n{}", coord.stderr());
    let stderr = coord.stderr();
    assert!(
        stderr.contains("no worker registered within 1 s"),
        "{stderr}"
    );
    // Every death is replaced until the budget (3 by default) is spent.
    assert!(
        stderr.matches("started worker slot").count() >= 2 + 3,
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "exited with status 3; the restart budget is spent (3 of max_restarts = 3 used)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("error: the job failed"), "{stderr}");
    // The last failure fails the job and the other worker is stopped, possibly before it
    // got as far as writing its pid.
    assert!(standin_dir.join("pid-0").exists() || standin_dir.join("pid-1").exists());
    assert!(standin_pids(&standin_dir)
        .into_iter()
        .all(|pid| kill(Pid::from_raw(pid), None).is_err()));
}

#[test]
fn refusals_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--store", store.to_str().unwrap(), "--grace-secs", "0"])
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[train\n").unwrap();
    let (status, err) = run(&["--workers", "1", "--config", bad.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("is not valid TOML"), "{err}");

    let (status, err) = run(&["--workers", "1", "--run-id", "../x"]);
    assert!(!status.success());
    assert!(err.contains("--run-id"), "{err}");

    let (status, err) = run(&["--workers", "0"]);
    assert!(!status.success());
    assert!(err.contains("--workers"), "{err}");

    // Times that would overflow `now + wait`: an overflowing --lease-secs once wrote a lease
    // that had already expired, so a second coordinator took the run while the first served.
    for (flag, value) in [
        ("--lease-secs", "18446744073709551615"),
        ("--lease-secs", "86401"),
        ("--grace-secs", "18446744073709551615"),
        ("--stop-timeout-secs", "18446744073709551615"),
        ("--long-poll-secs", "18446744073709551615"),
        ("--elastic-grace-secs", "1e300"),
        ("--elastic-grace-secs", "NaN"),
    ] {
        let out = Command::new(BIN)
            .args([
                "--workers",
                "1",
                "--store",
                store.to_str().unwrap(),
                flag,
                value,
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
    assert!(
        !store.join("runs").exists(),
        "a refused start left a lease or job state behind"
    );

    // No worker executable: the job fails with a hint instead of waiting forever.
    let (status, err) = run(&[
        "--workers",
        "1",
        "--spawn-local",
        "--worker-bin",
        "/nonexistent/lgaf-worker",
    ]);
    assert_eq!(status.code(), Some(79), "{err}");
    assert!(
        err.contains("/nonexistent/lgaf-worker does not exist"),
        "{err}"
    );

    // Store URLs are those lgaf-store opens.
    for (url, says) in [
        ("gs://bucket/x", "unsupported store URL"),
        ("file://relative/dir", "absolute path"),
    ] {
        let out = Command::new(BIN)
            .args(["--workers", "1", "--store", url])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert!(err.contains("--store") && err.contains(says), "{err}");
    }
}

/// With a job token, a request without it or with another is refused UNAUTHENTICATED,
/// the status and the log never show the token, the job is unchanged, and the right token
/// gets through.
#[test]
fn requests_without_the_job_token_are_refused_and_the_token_is_never_shown() {
    const SECRET: &str = "tok-7f3a9c1e5b2d";
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{SECRET}\n")).unwrap();
    let store = dir.path().join("store");
    let mut coord = Coordinator::start(
        &[
            "--workers",
            "2",
            "--store",
            store.to_str().unwrap(),
            "--grace-secs",
            "600",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &[],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(coord.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let with = |token: Option<&str>| {
            let token = token.map(|t| JobToken::new(t).unwrap());
            CoordinatorClient::with_interceptor(channel.clone(), AttachToken(token))
        };
        for token in [None, Some("tok-7f3a9c1e5b2e"), Some("tok")] {
            let status = with(token)
                .register(register_request(None, 9000))
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{token:?}");
            assert!(!status.message().contains(SECRET), "{}", status.message());
            let status = with(token)
                .get_job_status(v1::JobStatusRequest { api_version: 1 })
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
        }
        let mut ok = with(Some(SECRET));
        let status = ok
            .get_job_status(v1::JobStatusRequest { api_version: 1 })
            .await
            .unwrap()
            .into_inner();
        assert!(
            status.workers.is_empty(),
            "a refused request changed the job"
        );
        ok.register(register_request(None, 9001)).await.unwrap();
    });
    coord.signal(Signal::SIGTERM);
    coord.wait(Duration::from_secs(30));
    let log = coord.stderr() + &coord.remaining_stdout().join("\n");
    assert!(
        !log.contains(SECRET),
        "the token leaked into the log:\n{log}"
    );
    let saved: String = walk(&store)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    assert!(!saved.contains(SECRET), "the token leaked into the store");
}

#[test]
fn a_client_over_the_request_rate_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut coord = Coordinator::start(
        &[
            "--workers",
            "2",
            "--store",
            store.to_str().unwrap(),
            "--grace-secs",
            "600",
            "--max-requests-per-sec",
            "5",
        ],
        &[],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = CoordinatorClient::connect(coord.url.clone()).await.unwrap();
        // A burst of registrations: twice the rate gets through, the rest are refused.
        let mut refused = 0;
        for i in 0..40 {
            match client.register(register_request(None, 9000 + i)).await {
                Ok(_) => {}
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    assert!(status
                        .message()
                        .starts_with("rate: 127.0.0.1 sent more than"));
                    refused += 1;
                }
                // Past two workers the job has no place (for now): also no change.
                Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable),
            }
        }
        assert!(refused >= 25, "only {refused} of 40 refused");
        // After a pause the client is served again, and the job holds what it accepted.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let status = client
            .get_job_status(v1::JobStatusRequest { api_version: 1 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.workers.len(), 2);
    });
    coord.signal(Signal::SIGTERM);
    coord.wait(Duration::from_secs(30));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// One coordinator per run: a second one on the same run waits to see whether the holder
/// of the run's lease is alive, and refuses to start when it keeps renewing it; once the
/// first has exited (releasing the lease) another starts at once.
#[test]
fn a_second_coordinator_on_a_live_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let args = |extra: &'static [&'static str]| {
        let mut a = vec![
            "--workers",
            "2",
            "--store",
            store.to_str().unwrap(),
            "--run-id",
            "shared",
            "--grace-secs",
            "600",
            "--lease-secs",
            "2",
        ];
        a.extend_from_slice(extra);
        a
    };
    let mut first = Coordinator::start(&args(&[]), &[]);
    let started = Instant::now();
    let second = Command::new(BIN).args(args(&[])).output().unwrap();
    let text = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{text}");
    assert!(
        text.contains("run shared in") && text.contains("is being coordinated by"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    first.signal(Signal::SIGTERM);
    first.wait(Duration::from_secs(30));
    let mut third = Coordinator::start(&args(&[]), &[]);
    third.signal(Signal::SIGTERM);
    third.wait(Duration::from_secs(30));
}
