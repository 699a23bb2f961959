//! `lgaf status` against a real coordinated CPU job: a coordinator with a job token and
//! two `lgaf-worker`s in slots 0 and 1, asked by the real `lgaf` binary while the job runs
//! (the job, both workers at their slots' ranks, the step within the run; the text output
//! too), without the token and with a wrong one (refused: the URL and what to do), and once
//! the job has finished (its last checkpoint at the final step). And a coordinator that is
//! not there: an error at once, naming the URL.
//!
//! The binaries are built beside this test: `cargo build --release --bins` first (make test
//! does).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::processes::{
    bin, coordinator_command, coordinator_url, tiny_config, wait_exit_or, work_dir, worker_command,
    Log,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// 96 images, 2 ranks of 8: 6 steps an epoch; 8 epochs. Long enough to be seen running.
const EPOCHS: usize = 8;
const TOTAL_STEPS: u64 = 6 * EPOCHS as u64;

/// `lgaf status` with `args`, none of the environment it reads but `env`.
fn lgaf_status(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin("lgaf"));
    cmd.arg("status")
        .args(args)
        .env_remove("LGAF_JOB_TOKEN")
        .env_remove("LGAF_COORDINATOR")
        .env_remove("LGAF_TLS_CA")
        .env("NO_COLOR", "1");
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The job's status as `lgaf status --json` prints it (one object on one line).
fn status_json(url: &str, token_file: &Path, log: &Log) -> Value {
    let token_file = token_file.to_str().unwrap();
    let out = lgaf_status(
        &["--coordinator", url, "--token-file", token_file, "--json"],
        &[],
    );
    assert!(
        out.status.success(),
        "lgaf status failed:\n{}\nthe job's log:\n{}",
        text(&out),
        log.text()
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stdout}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Asks until `done` holds of the status and returns that status; panics if the job fails
/// or `timeout` passes first.
fn poll(
    url: &str,
    token_file: &Path,
    log: &Log,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let status = status_json(url, token_file, log);
        if done(&status) {
            return status;
        }
        assert_ne!(status["state"], "failed", "{status}\n{}", log.text());
        assert!(
            started.elapsed() < timeout,
            "not {what} within {timeout:?}: {status}\n{}",
            log.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The job's processes, killed if the test ends before they exit.
struct Job {
    coordinator: Child,
    workers: Vec<Child>,
}

impl Drop for Job {
    fn drop(&mut self) {
        for child in self.workers.iter_mut().chain([&mut self.coordinator]) {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[test]
fn status_shows_the_running_and_the_finished_job_and_needs_its_token() {
    let dir = work_dir("status", "job", &tiny_config(8, EPOCHS, 4));
    let token = dir.join("token");
    std::fs::write(&token, "status-test-token\n").unwrap();
    let token_arg = token.to_str().unwrap();
    let mut coordinator = coordinator_command(&dir)
        .args([
            "--workers",
            "2",
            "--run-id",
            "status-run",
            "--job-id",
            "status-job",
        ])
        .args(["--token-file", token_arg])
        // Answers for a minute once the job is over (cut short by SIGTERM below).
        .args(["--health-linger-ms", "60000"])
        .spawn()
        .unwrap();
    let url = coordinator_url(&mut coordinator);
    let log = Log::default();
    log.collect(coordinator.stdout.take().unwrap());
    log.collect(coordinator.stderr.take().unwrap());
    let mut job = Job {
        coordinator,
        workers: Vec::new(),
    };
    for slot in 0..2 {
        let mut worker = worker_command(&url, slot)
            .args(["--token-file", token_arg])
            .spawn()
            .unwrap();
        log.collect(worker.stderr.take().unwrap());
        job.workers.push(worker);
    }

    // Running, both workers ranked.
    let running = poll(
        &url,
        &token,
        &log,
        "running with both workers ranked",
        Duration::from_secs(300),
        |s| {
            assert_ne!(
                s["state"], "finished",
                "the job finished before it was seen running: give it more steps"
            );
            s["state"] == "running"
                && s["workers"]
                    .as_array()
                    .is_some_and(|w| w.len() == 2 && w.iter().all(|w| w["rank"].is_u64()))
        },
    );
    assert_eq!(running["job_id"], "status-job", "{running}");
    assert_eq!(running["run_id"], "status-run", "{running}");
    assert_eq!(running["coordinator"], url.as_str(), "{running}");
    assert!(running["generation"].as_u64().unwrap() >= 1, "{running}");
    assert_eq!(running["world_size"], 2, "{running}");
    assert_eq!(running["total_steps"], TOTAL_STEPS, "{running}");
    assert!(
        running["step"].as_u64().unwrap() <= TOTAL_STEPS,
        "{running}"
    );
    assert!(running["error"].is_null(), "{running}");
    // Each slot's process holds the slot's rank (slots are the rank order).
    let workers = running["workers"].as_array().unwrap();
    for (slot, process) in job.workers.iter().enumerate() {
        let worker = workers
            .iter()
            .find(|w| w["pid"] == process.id())
            .unwrap_or_else(|| panic!("no worker of slot {slot}'s pid: {running}"));
        assert_eq!(worker["rank"], slot, "{running}");
        assert_eq!(worker["slot"], slot, "{running}");
        assert_eq!(worker["device"], "cpu", "{running}");
        assert!(!worker["host"].as_str().unwrap().is_empty(), "{running}");
        assert!(
            ["joined", "training"].contains(&worker["state"].as_str().unwrap()),
            "{running}"
        );
        assert!(worker["step"].as_u64().unwrap() <= TOTAL_STEPS, "{running}");
        assert!(
            worker["last_seen_ms"].as_u64().unwrap() < 20_000,
            "{running}"
        );
        assert!(worker["worker_id"].as_str().is_some(), "{running}");
    }

    // The text, with the URL and the token from the environment.
    let out = lgaf_status(
        &[],
        &[
            ("LGAF_COORDINATOR", &url),
            ("LGAF_JOB_TOKEN", "status-test-token"),
        ],
    );
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for line in [
        "job:         status-job",
        "run:         status-run",
        &format!("coordinator: {url}"),
    ] {
        assert!(shown.lines().any(|l| l == line), "{line:?}:\n{shown}");
    }
    assert!(shown.contains("\nstep:        "), "{shown}");
    let table: Vec<&str> = shown
        .lines()
        .skip_while(|l| !l.is_empty())
        .skip(1)
        .collect();
    assert!(table[0].starts_with("rank  slot  worker"), "{shown}");
    assert_eq!(table.len(), 3, "{shown}");
    // Rank and slot.
    assert!(table[1].trim_start().starts_with("0     0  w"), "{shown}");
    assert!(table[2].trim_start().starts_with("1     1  w"), "{shown}");

    // Without the token, and with a wrong one: refused, saying how to give it.
    let out = lgaf_status(&["--coordinator", &url, "--json"], &[]);
    let refused = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    for needle in [
        url.as_str(),
        "refused",
        "no job token given",
        "--token-file",
        "LGAF_JOB_TOKEN",
    ] {
        assert!(refused.contains(needle), "{needle:?}: {refused}");
    }
    let wrong = dir.join("wrong-token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let out = lgaf_status(
        &[
            "--coordinator",
            &url,
            "--token-file",
            wrong.to_str().unwrap(),
        ],
        &[],
    );
    let refused = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        refused.contains(&format!("the job token in {}", wrong.display()))
            && refused.contains("wrong"),
        "{refused}"
    );
    assert!(!refused.contains("status-test-token"), "{refused}");

    // Finished: the workers have exited, the coordinator still answers.
    for worker in &mut job.workers {
        let exit = wait_exit_or(worker, Duration::from_secs(600), || log.text());
        assert!(exit.success(), "{}", log.text());
    }
    let finished = poll(
        &url,
        &token,
        &log,
        "finished",
        Duration::from_secs(30),
        |s| s["state"] == "finished",
    );
    assert_eq!(finished["step"], TOTAL_STEPS, "{finished}");
    assert_eq!(finished["last_checkpoint_step"], TOTAL_STEPS, "{finished}");
    assert!(finished["error"].is_null(), "{finished}");
    let workers = finished["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{finished}");
    for worker in workers {
        assert_eq!(worker["state"], "finished", "{finished}");
        assert_eq!(worker["step"], TOTAL_STEPS, "{finished}");
    }

    // SIGTERM cuts the coordinator's linger short; the job it ran had finished.
    kill(Pid::from_raw(job.coordinator.id() as i32), Signal::SIGTERM).unwrap();
    let exit = wait_exit_or(&mut job.coordinator, Duration::from_secs(60), || log.text());
    assert!(exit.success(), "{}", log.text());
}

#[test]
fn a_coordinator_that_is_not_there_is_an_error_at_once_naming_its_url() {
    // A port nothing listens on any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let out = lgaf_status(&["--json"], &[("LGAF_COORDINATOR", &url)]);
    let error = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "not at once: {:?}",
        started.elapsed()
    );
    for needle in [
        format!("cannot reach the coordinator at {url}").as_str(),
        "--coordinator",
        "LGAF_COORDINATOR",
    ] {
        assert!(error.contains(needle), "{needle:?}: {error}");
    }
}
