//! The run's history (steps and events in the store, which `lgaf report` reads) of a
//! single-process run killed with SIGKILL after a checkpoint and started again: every step
//! once, in order, none lost where the run resumed and none counted twice for being
//! trained twice; the evaluations and the end recorded. (The coordinated runs' histories
//! are checked in `faults.rs`, after killed workers and a killed coordinator.)

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::processes::{bin, tiny_config, wait_exit_or, work_dir, Log};
use common::{assert_history_complete, history};
use lgaf_store::history::{Event, Outcome};

#[test]
fn a_killed_and_resumed_run_has_every_step_once_in_its_history() {
    // 96 images, 8 a step: 12 steps an epoch, 48 in all, a checkpoint every 4.
    let dir = work_dir("history", "killed", &tiny_config(8, 4, 4));
    let store = dir.join("store").display().to_string();
    let train = || {
        let mut cmd = Command::new(bin("lgaf"));
        cmd.args([
            "train",
            "--config",
            &dir.join("train.toml").display().to_string(),
        ])
        .args(["--checkpoint-dir", &store, "--run-id", "killed"])
        .env("NO_COLOR", "1")
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        cmd
    };
    let mut first = train().spawn().unwrap();
    let log = Log::default();
    log.collect(first.stderr.take().unwrap());
    log.wait_for(
        "checkpoint committed run=killed step=16",
        Duration::from_secs(300),
    );
    first.kill().unwrap();
    first.wait().unwrap();

    let mut second = train().spawn().unwrap();
    let log = Log::default();
    log.collect(second.stderr.take().unwrap());
    let status = wait_exit_or(&mut second, Duration::from_secs(300), || log.text());
    assert!(status.success(), "{}", log.text());

    assert_history_complete(&store, "killed", 48);
    let history = history(&store, "killed");
    // Two processes wrote it: the second from the checkpoint it resumed.
    assert_eq!(history.segments.len(), 2, "{:?}", history.segments);
    let finished: Vec<_> = history
        .events
        .iter()
        .filter_map(|e| match &e.event {
            Event::RunFinished(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].step, 48);
    assert_eq!(finished[0].outcome, Outcome::Completed);
    assert!(history
        .events
        .iter()
        .any(|e| matches!(&e.event, Event::Evaluation(v) if v.step == 48)));
    // Steps carry what the report plots.
    let last = history.steps.last().unwrap();
    assert!(last.loss.is_finite() && last.lr > 0.0 && last.step_seconds > 0.0);
    assert!(last.gamma_local.is_some());
}
