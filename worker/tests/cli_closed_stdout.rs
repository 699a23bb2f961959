//! The binaries with a reader that has gone away: `lgaf-coordinator ... | head -1`, or
//! `lgaf ... | head -0`. Rust ignores SIGPIPE, so every write to stdout fails with EPIPE;
//! `println!` used to panic (exit 101) on a finished job. Now the lines are dropped and
//! the exit status is the work's own.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::processes::{bin, coordinator_command, tiny_config, wait_exit, work_dir, Log};
use common::{s, temp_dir, MODEL};

#[test]
fn lgaf_with_a_closed_stdout_does_its_work_and_exits_0() {
    let dir = temp_dir("closed-stdout");
    let weights = dir.join("init.safetensors");
    let mut child = Command::new(bin("lgaf"))
        .args(["init", "--out", s(&weights)])
        .args(MODEL)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before anything is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(weights.is_file(), "the work was not done");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_coordinator_whose_reader_left_after_the_first_line_finishes_the_job_with_0() {
    let dir = work_dir("closed-stdout", "coordinator", &tiny_config(4, 1, 0));
    let mut coordinator = coordinator_command(&dir)
        .args(["--workers", "2", "--spawn-local"])
        .spawn()
        .unwrap();
    let log = Log::default();
    let reader = log.collect(coordinator.stderr.take().unwrap());
    // `| head -1`: one line read, then the pipe is closed.
    let mut first = String::new();
    BufReader::new(coordinator.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("listening on "), "{first:?}");
    let status = wait_exit(&mut coordinator, Duration::from_secs(300));
    let _ = reader.join();
    let log = log.text();
    assert!(status.success(), "{status:?}:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("job Finished"), "{log}");
    std::fs::remove_dir_all(dir).unwrap();
}
