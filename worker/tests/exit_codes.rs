//! The exit-code contract (`lgaf_proto::exit`), each class produced by a real failure of real
//! processes: a worker refused for a wrong token or given a bad configuration exits 78
//! (permanent), workers whose coordinator was killed exit 75 (retryable), a job that failed
//! makes its surviving worker and its coordinator exit 79, and a malformed flag exits 2.
//! Also a node of two local ranks (`--local-ranks 2`), configured entirely from the
//! environment a Kubernetes pod would have, training a job to its end.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::processes::{
    bin, coordinator_command, coordinator_url, tiny_config, wait_exit_or, work_dir, worker_command,
    Log,
};
use lgaf_proto::exit::ExitClass;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LONG: Duration = Duration::from_secs(240);

/// A coordinator for `workers` local-less workers, its URL, and its log (stderr).
fn coordinator(dir: &std::path::Path, workers: u32, extra: &[&str], log: &Log) -> (Child, String) {
    let mut coordinator = coordinator_command(dir)
        .args(["--workers", &workers.to_string(), "--external-workers"])
        .args(["--heartbeat-ms", "200", "--heartbeat-deadline-ms", "2000"])
        .args(["--health-linger-ms", "0"])
        .args(extra)
        .spawn()
        .unwrap();
    let url = coordinator_url(&mut coordinator);
    log.collect(coordinator.stderr.take().unwrap());
    (coordinator, url)
}

fn worker(url: &str, slot: u32, log: &Log) -> Child {
    let mut child = worker_command(url, slot).spawn().unwrap();
    log.collect(child.stderr.take().unwrap());
    child
}

fn class_of(child: &mut Child, log: &Log) -> Option<ExitClass> {
    let status = wait_exit_or(child, LONG, || log.text());
    status.code().and_then(ExitClass::from_code)
}

/// Waits for `child` and checks its exit class, showing the log when it differs.
fn expect_exit(child: &mut Child, class: ExitClass, log: &Log) {
    assert_eq!(class_of(child, log), Some(class), "{}", log.text());
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_wrong_token_and_a_bad_config_are_permanent() {
    let dir = work_dir("exit", "permanent", &tiny_config(8, 1, 0));
    let token = dir.join("token");
    std::fs::write(&token, "the-right-token\n").unwrap();
    let log = Log::default();
    let (coordinator_process, url) =
        coordinator(&dir, 1, &["--token-file", token.to_str().unwrap()], &log);
    let mut refused = worker_command(&url, 0)
        .env("LGAF_JOB_TOKEN", "a-wrong-token")
        .spawn()
        .unwrap();
    log.collect(refused.stderr.take().unwrap());
    expect_exit(&mut refused, ExitClass::Permanent, &log);
    assert!(log.text().contains("Unauthenticated"), "{}", log.text());
    stop(coordinator_process);

    // A config the coordinator passes on (it only checks the TOML) but no worker can use.
    let dir = work_dir("exit", "bad-config", "[model]\narch = \"r999\"\n");
    let log = Log::default();
    let (coordinator_process, url) = coordinator(&dir, 1, &[], &log);
    let mut worker = worker(&url, 0, &log);
    expect_exit(&mut worker, ExitClass::Permanent, &log);
    assert!(log.text().contains("r999"), "{}", log.text());
    stop(coordinator_process);
}

#[test]
fn workers_that_lose_their_coordinator_may_retry() {
    let dir = work_dir("exit", "coordinator-killed", &tiny_config(400, 1, 0));
    let log = Log::default();
    let (mut coordinator_process, url) = coordinator(&dir, 2, &[], &log);
    let mut workers = [worker(&url, 0, &log), worker(&url, 1, &log)];
    log.wait_for("generation 1 formed", LONG);
    coordinator_process.kill().unwrap();
    coordinator_process.wait().unwrap();
    for worker in &mut workers {
        expect_exit(worker, ExitClass::Retryable, &log);
    }
    // Each says which coordinator it lost (a refused call, or heartbeats unanswered).
    let named = log
        .text()
        .lines()
        .filter(|l| l.starts_with("lgaf-worker: ") && l.contains(&url))
        .count();
    assert_eq!(named, 2, "{}", log.text());
}

/// A coordinator stopped by SIGTERM (its pod deleted, its node drained) cancels the job,
/// which is not a failure: its workers stop as retryable, and a coordinator started again
/// would resume the run.
#[test]
fn workers_of_a_cancelled_job_may_retry() {
    let dir = work_dir("exit", "cancelled", &tiny_config(400, 1, 0));
    let log = Log::default();
    let (mut coordinator_process, url) = coordinator(&dir, 2, &[], &log);
    let mut workers = [worker(&url, 0, &log), worker(&url, 1, &log)];
    log.wait_for("step 2/", LONG);
    kill(
        Pid::from_raw(coordinator_process.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(
        coordinator_process.wait().unwrap().code(),
        Some(143),
        "{}",
        log.text()
    );
    for worker in &mut workers {
        expect_exit(worker, ExitClass::Retryable, &log);
    }
}

#[test]
fn a_failed_job_fails_its_surviving_workers_and_its_coordinator() {
    let dir = work_dir("exit", "job-failed", &tiny_config(400, 1, 0));
    let log = Log::default();
    // No restart allowed: losing a worker fails the job.
    let (mut coordinator_process, url) = coordinator(&dir, 2, &["--max-restarts", "0"], &log);
    let mut survivor = worker(&url, 0, &log);
    let lost = worker(&url, 1, &log);
    log.wait_for("step 2/", LONG);
    kill(Pid::from_raw(lost.id() as i32), Signal::SIGKILL).unwrap();
    stop(lost);
    expect_exit(&mut survivor, ExitClass::JobFailed, &log);
    expect_exit(&mut coordinator_process, ExitClass::JobFailed, &log);
}

/// A replacement that comes while its predecessor still holds the slot (it hangs, so the
/// coordinator finds it lost only at the heartbeat deadline; with NCCL a crashed rank is
/// found so too) waits for its place instead of failing: registering again until the
/// generation ends, then training the job to its end in that slot.
#[test]
fn an_early_replacement_waits_for_its_place() {
    let dir = work_dir("exit", "early-replacement", &tiny_config(8, 3, 2));
    let log = Log::default();
    let (mut coordinator_process, url) = coordinator(&dir, 2, &[], &log);
    let mut survivor = worker(&url, 0, &log);
    let hung = worker(&url, 1, &log);
    log.wait_for("checkpoint at step 2 committed", LONG);
    // The replacement is turned away while its predecessor holds the slot, and only then
    // does the predecessor hang: stopped first, it could be found lost before a slow
    // machine has started the replacement, which would then find the slot free.
    let mut replacement = worker(&url, 1, &log);
    log.wait_for("has no place for this worker yet", LONG);
    kill(Pid::from_raw(hung.id() as i32), Signal::SIGSTOP).unwrap();
    for process in [&mut replacement, &mut survivor, &mut coordinator_process] {
        expect_exit(process, ExitClass::Success, &log);
    }
    let text = log.text();
    assert!(text.contains("has no place for this worker yet"), "{text}");
    // Registered in slot 1 twice: the hung worker, then its replacement, once the hung one
    // was lost and its generation ended.
    assert_eq!(text.matches("(cpu, slot 1): ").count(), 2, "{text}");
    assert!(text.contains("generation 2 formed"), "{text}");
    stop(hung);
}

/// A worker pod that comes after the job finished (a Job's late replacement, an elastic
/// slot scheduled at last) has nothing to do: it exits 0, so that its Job completes, while a
/// coordinator with --keep-serving still answers.
#[test]
fn a_worker_that_comes_after_the_job_finished_succeeds() {
    let dir = work_dir("exit", "late", &tiny_config(8, 1, 0));
    let log = Log::default();
    let (mut coordinator_process, url) = coordinator(&dir, 1, &["--keep-serving"], &log);
    let mut worker_process = worker(&url, 0, &log);
    expect_exit(&mut worker_process, ExitClass::Success, &log);
    log.wait_for("--keep-serving", LONG);
    let mut late = worker(&url, 0, &log);
    expect_exit(&mut late, ExitClass::Success, &log);
    assert!(
        log.text().contains("the job finished (this worker stopped"),
        "{}",
        log.text()
    );
    kill(
        Pid::from_raw(coordinator_process.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    expect_exit(&mut coordinator_process, ExitClass::Success, &log);
}

#[test]
fn a_malformed_flag_is_a_usage_error() {
    for args in [
        &["--local-ranks", "0"][..],
        &["--slot", "minus-one"],
        &["--frobnicate"],
    ] {
        let out = std::process::Command::new(bin("lgaf-worker"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    // A completion index that is not one: permanent, named.
    let out = std::process::Command::new(bin("lgaf-worker"))
        .env("JOB_COMPLETION_INDEX", "three")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("$JOB_COMPLETION_INDEX"), "{stderr}");
}

/// One node of a Kubernetes Indexed Job with 2 GPUs' worth of ranks (CPU here), configured
/// only by its environment: completion index 0, the coordinator and the token from
/// variables. Its two local ranks take slots 0 and 1 and train the job to its end.
#[test]
fn a_node_runs_its_local_ranks_from_the_environment_of_a_pod() {
    let dir = work_dir("exit", "node", &tiny_config(8, 2, 0));
    let token = dir.join("token");
    std::fs::write(&token, "node-token\n").unwrap();
    let log = Log::default();
    let (mut coordinator_process, url) =
        coordinator(&dir, 2, &["--token-file", token.to_str().unwrap()], &log);
    let mut node = std::process::Command::new(bin("lgaf-worker"))
        .env("LGAF_COORDINATOR", &url)
        .env("LGAF_LOCAL_RANKS", "2")
        .env("LGAF_DEVICE", "cpu")
        .env("LGAF_TOKEN_FILE", &token)
        .env("JOB_COMPLETION_INDEX", "0")
        .env("NO_COLOR", "1")
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    log.collect(node.stderr.take().unwrap());
    expect_exit(&mut node, ExitClass::Success, &log);
    let text = log.text();
    for slot in ["slot 0)", "slot 1)"] {
        assert!(text.contains(slot), "{slot}: {text}");
    }
    assert!(text.contains("local rank finished"), "{text}");
    expect_exit(&mut coordinator_process, ExitClass::Success, &log);
}
