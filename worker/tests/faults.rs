//! Failure detection and recovery end to end, with real processes: a worker that hangs
//! (SIGSTOP) is declared lost within the heartbeat deadline (and, with no restart left,
//! fails the job with nothing left running); workers killed at random steps are replaced
//! and the run ends exactly as an uninterrupted one; workers whose coordinator is killed
//! stop by themselves within the deadline; a checkpoint half uploaded by a worker killed
//! in the middle is never used; an elastic job continues on fewer workers when a
//! lost one is not replaced, and grows back when a worker comes. Live recovery: a rank
//! killed between checkpoints costs only the step in flight (the next generation starts
//! from the survivors' state), also when a rank dies in the transfer of that state, and
//! losing every rank falls back to the last checkpoint.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

mod common;

use common::assert_history_complete;
use common::processes::{
    all_gone_within, bin, coordinator_command, coordinator_url, store_url, tiny_config, wait_exit,
    work_dir, worker_command, Log,
};
use lgaf_worker::coordinated::FAILPOINT_ENV;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const DEADLINE_MS: u64 = 1500;

/// A coordinator (and its local workers, which inherit its stderr) or workers started by
/// the test, their stderr collected line by line into one log.
struct Run {
    coordinator: Child,
    log: Log,
    reader: Option<std::thread::JoinHandle<()>>,
    /// The coordinator's URL, for workers started by the test.
    url: String,
    /// Workers started by the test (killed on drop).
    outside: Vec<Child>,
}

impl Run {
    /// `workers` local workers on `dir`'s config and store, with `extra` arguments.
    fn start(dir: &Path, run: &str, workers: u32, extra: &[&str]) -> Run {
        Self::coordinator(dir, run, workers, &[&["--spawn-local"], extra].concat())
    }

    /// A coordinator of `workers` that starts none: the test starts them with
    /// [`Run::worker`], as pods would be.
    fn without_local_workers(dir: &Path, run: &str, workers: u32, extra: &[&str]) -> Run {
        Self::coordinator(
            dir,
            run,
            workers,
            &[&["--grace-secs", "600"], extra].concat(),
        )
    }

    fn coordinator(dir: &Path, run: &str, workers: u32, extra: &[&str]) -> Run {
        let mut coordinator = coordinator_command(dir)
            .args(["--workers", &workers.to_string(), "--run-id", run])
            .args(extra)
            .args(["--heartbeat-ms", "100"])
            .args(["--heartbeat-deadline-ms", &DEADLINE_MS.to_string()])
            // Far beyond the deadline: the heartbeat, not a collective timeout, must notice.
            .args(["--collective-timeout-ms", "120000"])
            .args(["--stop-timeout-secs", "2"])
            .env("RUST_LOG", "info")
            .spawn()
            .unwrap();
        let url = coordinator_url(&mut coordinator);
        let log = Log::default();
        // Local workers inherit this pipe: it ends when the last of them has exited.
        let reader = log.collect(coordinator.stderr.take().unwrap());
        Run {
            coordinator,
            log,
            reader: Some(reader),
            url,
            outside: Vec::new(),
        }
    }

    /// Starts a worker of this run in `slot` from outside the coordinator; returns its pid.
    fn worker(&mut self, slot: u32) -> Pid {
        self.worker_with(slot, &[])
    }

    /// [`Run::worker`] with extra environment variables.
    fn worker_with(&mut self, slot: u32, env: &[(&str, &str)]) -> Pid {
        let mut child = worker_command(&self.url, slot)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .spawn()
            .unwrap();
        self.log.collect(child.stderr.take().unwrap());
        let pid = Pid::from_raw(child.id() as i32);
        self.outside.push(child);
        pid
    }

    fn log(&self) -> String {
        self.log.text()
    }

    fn wait_for(&self, text: &str, timeout: Duration) -> Duration {
        self.log.wait_for(text, timeout)
    }

    /// The pid of local worker `slot`'s newest process, from the coordinator's "started
    /// worker slot" lines.
    fn worker_pid(&self, slot: u32) -> Pid {
        let log = self.log();
        let prefix = format!("started worker slot {slot} (cpu) as pid ");
        let at = log.rfind(&prefix).expect("worker started") + prefix.len();
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
        for child in &mut self.outside {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Long enough that the faults happen in the first epoch (12 x 400 images, 16 a step on two
/// ranks: 300 steps an epoch), with no checkpoint before its end.
fn long_epoch() -> String {
    tiny_config(400, 1, 0)
}

/// 96 images, 8 a rank: on 3 ranks 4 steps an epoch, 24 in all (on 2 ranks 6 and 36); a
/// checkpoint every 2 steps.
fn short_epochs() -> String {
    tiny_config(8, 6, 2)
}

/// 480 images, 8 a rank on 3 ranks: 20 steps an epoch, 40 in all, checkpoints only at the
/// epochs' ends, so faults in the middle of an epoch fall between checkpoints.
fn rare_checkpoints() -> String {
    tiny_config(40, 2, 0)
}

/// [`short_epochs`] without live recovery: every generation starts from a checkpoint.
fn short_epochs_from_checkpoints() -> String {
    short_epochs() + "live_recovery = false\n"
}

/// The step the survivors of `generation` kept (every one the same), and the step the
/// next generation started from them at, from the log.
fn live_recovery_of(log: &str, generation: u64) -> (Vec<u64>, Option<u64>) {
    let kept: Vec<u64> = log
        .lines()
        .filter(|l| {
            l.contains("kept this rank's state")
                && l.contains(&format!("generation={generation} step="))
        })
        .map(|l| field(l, " step="))
        .collect();
    let marker = format!("resuming from the state of generation {generation}'s survivors at step ");
    let resumed = log.find(&marker).map(|at| field(&log[at..], &marker));
    (kept, resumed)
}

/// The number after `name` in `line`.
fn field(line: &str, name: &str) -> u64 {
    let at = line.find(name).expect("field in line") + name.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_hung_worker_without_restarts_left_fails_the_job_and_nothing_is_left_running() {
    let dir = work_dir("faults", "sigstop", &long_epoch());
    let mut run = Run::start(&dir, "sigstop", 2, &["--max-restarts", "0"]);
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
        log.contains("the restart budget is spent (0 of max_restarts = 0 used)"),
        "{log}"
    );
    assert!(
        all_gone_within(&[rank0, rank1], Duration::from_secs(5)),
        "a worker is still running:\n{log}"
    );
}

#[test]
fn workers_stop_by_themselves_when_the_coordinator_is_killed() {
    let dir = work_dir("faults", "coordinator-killed", &long_epoch());
    let mut run = Run::start(&dir, "coordinator-killed", 2, &[]);
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
    assert!(
        all_gone_within(&[rank0, rank1], Duration::from_secs(5)),
        "a worker is still running"
    );
}

fn export(dir: &Path, run: &str, final_step: u64) -> Vec<(String, tch::Tensor)> {
    let out = dir.join(format!("{run}.safetensors"));
    let result = Command::new(bin("lgaf"))
        .args(["ckpt", "export", "--store", &store_url(dir), "--run", run])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&result.stdout).to_string()
        + &String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{text}");
    assert!(text.contains(&format!("step {final_step}")), "{text}");
    lgaf_model::weights::read_tensors(&out).unwrap()
}

/// Runs `a` and `b` of `dir` ended at `final_step` with bit-identical weights and buffers.
fn assert_same_network(dir: &Path, a: &str, b: &str, final_step: u64) {
    let (x, y) = (export(dir, a, final_step), export(dir, b, final_step));
    assert_eq!(x.len(), y.len());
    for ((name, x), (_, y)) in x.iter().zip(&y) {
        assert!(x.equal(y), "`{name}` differs between runs {a} and {b}");
    }
}

#[test]
fn workers_killed_at_random_steps_are_replaced_and_the_run_ends_as_an_uninterrupted_one() {
    let dir = work_dir("faults", "kill-9", &short_epochs());
    let mut straight = Run::start(&dir, "straight", 3, &[]);
    let status = wait_exit(&mut straight.coordinator, Duration::from_secs(300));
    assert!(status.success(), "{}", straight.log());

    let mut faulted = Run::start(&dir, "faulted", 3, &[]);
    // Two faults, each at a step that varies from run to run (whatever the workers have
    // reached when the test gets there): rank 1, then rank 2 of the next generation.
    for (slot, after, generation) in [(1, "step 5/", 2), (2, "step 11/", 3)] {
        faulted.wait_for(after, Duration::from_secs(300));
        kill(faulted.worker_pid(slot), Signal::SIGKILL).unwrap();
        faulted.wait_for(
            &format!("generation {generation} formed"),
            Duration::from_secs(120),
        );
    }
    let status = wait_exit(&mut faulted.coordinator, Duration::from_secs(300));
    let log = faulted.finish_log(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert!(log.contains("restart 2 of 3"), "{log}");
    assert!(
        log.contains("job Finished") && log.contains("step 24/24 epoch 5"),
        "{log}"
    );

    // Same final step, and in deterministic CPU mode the same network, bit for bit.
    assert_same_network(&dir, "straight", "faulted", 24);
    // Every step once in the run's history, whichever rank was killed when.
    assert_history_complete(&store_url(&dir), "faulted", 24);
}

#[test]
fn a_hung_worker_is_killed_replaced_and_the_run_finishes() {
    let dir = work_dir("faults", "sigstop-recovered", &short_epochs());
    let mut run = Run::start(&dir, "hung", 3, &[]);
    run.wait_for("step 5/", Duration::from_secs(300));
    let hung = run.worker_pid(1);
    kill(hung, Signal::SIGSTOP).unwrap();
    run.wait_for("generation 2 formed", Duration::from_secs(60));
    let status = wait_exit(&mut run.coordinator, Duration::from_secs(300));
    let log = run.finish_log(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert!(
        log.contains("no heartbeat within the 1500 ms deadline")
            && log.contains(&format!("killing worker slot 1 (pid {hung})")),
        "{log}"
    );
    assert!(log.contains("step 24/24 epoch 5"), "{log}");
    assert!(
        all_gone_within(&[hung], Duration::from_secs(5)),
        "the hung worker is still there"
    );
}

#[test]
fn a_killed_coordinator_started_again_continues_the_run_exactly() {
    let dir = work_dir("faults", "coordinator-restart", &short_epochs());
    // 96 images, 8 a rank, 2 ranks: 6 steps an epoch, 36 in all.
    let mut straight = Run::start(&dir, "straight", 2, &[]);
    let status = wait_exit(&mut straight.coordinator, Duration::from_secs(300));
    assert!(status.success(), "{}", straight.log());

    let mut first = Run::start(&dir, "restarted", 2, &[]);
    first.wait_for("step 13/", Duration::from_secs(300));
    let workers = [first.worker_pid(0), first.worker_pid(1)];
    first.coordinator.kill().unwrap();
    first.coordinator.wait().unwrap();
    // Its workers notice within the heartbeat deadline and exit.
    let log = first.finish_log(Duration::from_secs(30));
    assert!(all_gone_within(&workers, Duration::from_secs(5)), "{log}");

    // The same command again: the run continues from its last committed checkpoint.
    let mut second = Run::start(&dir, "restarted", 2, &[]);
    let status = wait_exit(&mut second.coordinator, Duration::from_secs(300));
    let log = second.finish_log(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert!(log.contains("resuming from step 1"), "{log}");
    assert!(log.contains("step 36/36 epoch 5"), "{log}");
    assert_same_network(&dir, "straight", "restarted", 36);
    assert_history_complete(&store_url(&dir), "restarted", 36);
}

#[test]
fn an_elastic_job_goes_on_with_fewer_workers_and_grows_back_at_a_checkpoint() {
    // 96 images, 8 a shard, 3 shards: 4 steps an epoch, 48 in all, a checkpoint every 2.
    let dir = work_dir("faults", "elastic", &tiny_config(8, 12, 2));
    let mut run = Run::without_local_workers(
        &dir,
        "elastic",
        3,
        &["--min-workers", "2", "--elastic-grace-secs", "1"],
    );
    let lost = [run.worker(0), run.worker(1), run.worker(2)][2];
    run.wait_for("step 5/", Duration::from_secs(300));
    kill(lost, Signal::SIGKILL).unwrap();
    // Nobody replaces it: after the grace period the job goes on with two ranks holding
    // the three data shards, on the same schedule.
    run.wait_for(
        "generation 2 formed: 2 ranks holding the job's 3 data shards, cpu backend, 4 steps \
         per epoch, 48 steps",
        Duration::from_secs(60),
    );
    // The killed worker, unseen when a survivor ended the generation, is forgotten once
    // silent past the deadline; then a worker comes (a rescheduled pod) and waits for the
    // next checkpoint.
    run.wait_for("is lost and forgotten", Duration::from_secs(30));
    run.worker(2);
    run.wait_for(
        "growing from 2 to 3 ranks at the checkpoint of step",
        Duration::from_secs(120),
    );
    run.wait_for(
        "generation 3 formed: 3 ranks, cpu backend",
        Duration::from_secs(60),
    );
    let status = wait_exit(&mut run.coordinator, Duration::from_secs(300));
    let log = run.log();
    assert!(status.success(), "{log}");
    assert!(log.contains("step 48/48 epoch 11"), "{log}");
    // The loss spent the one restart; shrinking and growing spent none.
    assert!(
        log.contains("restart 1 of 3") && !log.contains("restart 2 of"),
        "{log}"
    );
    // Both through live recovery: the smaller generation starts from the two survivors'
    // state, the larger from the smaller one's ranks (the newcomer receives it).
    for (generation, formed) in [
        (1, "2 ranks holding the job's 3 data shards"),
        (2, "3 ranks"),
    ] {
        let (kept, resumed) = live_recovery_of(&log, generation);
        let resumed = resumed.unwrap_or_else(|| panic!("not live after {generation}:\n{log}"));
        assert!(kept.iter().all(|&k| k == resumed), "{log}");
        assert!(
            log.contains(&format!(
                "generation {} formed: {formed}, cpu backend, 4 steps per epoch, 48 steps, \
                 resuming from the state of generation {generation}'s survivors at step \
                 {resumed}",
                generation + 1
            )),
            "{log}"
        );
    }
    export(&dir, "elastic", 48);
}

#[test]
fn a_checkpoint_half_uploaded_by_a_killed_worker_is_never_used() {
    // Without live recovery, so that the generation after must take a checkpoint.
    let dir = work_dir("faults", "upload-kill", &short_epochs_from_checkpoints());
    let mut straight = Run::start(&dir, "straight", 3, &[]);
    let status = wait_exit(&mut straight.coordinator, Duration::from_secs(300));
    assert!(status.success(), "{}", straight.log());

    let mut run = Run::without_local_workers(&dir, "upload-kill", 3, &[]);
    // Rank 0 uploads the first object of its checkpoint at step 6 and stops there.
    let stalled = run.worker_with(0, &[(FAILPOINT_ENV, "stall-upload@6")]);
    run.worker(1);
    run.worker(2);
    run.wait_for(
        "the upload of the checkpoint at step 6 stops here",
        Duration::from_secs(300),
    );
    let folder = dir.join("store/runs/upload-kill/ckpt/000000000006");
    let written: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        written.contains(&"model.safetensors".to_string()),
        "{written:?}"
    );
    assert!(
        !written.contains(&"MANIFEST.json".to_string()),
        "{written:?}"
    );
    kill(stalled, Signal::SIGKILL).unwrap();

    // The generation ends; the replacement's generation starts from step 4, the last
    // committed checkpoint, not from the half-written one.
    run.wait_for("generation 1 ended", Duration::from_secs(60));
    run.worker(0);
    run.wait_for(
        "generation 2 formed: 3 ranks, cpu backend, 4 steps per epoch, 24 steps, resuming \
         from the checkpoint at step 4",
        Duration::from_secs(120),
    );
    let status = wait_exit(&mut run.coordinator, Duration::from_secs(300));
    let log = run.log();
    assert!(status.success(), "{log}");
    assert!(log.contains("step 24/24 epoch 5"), "{log}");
    // Step 6 was trained again and committed properly this time.
    assert!(folder.join("MANIFEST.json").is_file());
    assert_same_network(&dir, "straight", "upload-kill", 24);
}

#[test]
fn a_rank_killed_between_checkpoints_costs_only_the_step_in_flight() {
    let dir = work_dir("faults", "live", &rare_checkpoints());
    let mut straight = Run::start(&dir, "straight", 3, &[]);
    let status = wait_exit(&mut straight.coordinator, Duration::from_secs(300));
    assert!(status.success(), "{}", straight.log());

    let mut run = Run::start(&dir, "live", 3, &[]);
    run.wait_for("step 6/", Duration::from_secs(300));
    kill(run.worker_pid(1), Signal::SIGKILL).unwrap();
    run.wait_for("generation 2 formed", Duration::from_secs(120));
    let status = wait_exit(&mut run.coordinator, Duration::from_secs(300));
    let log = run.finish_log(Duration::from_secs(30));
    assert!(status.success(), "{log}");

    // Both survivors kept the step they completed, and generation 2 started there: of the
    // steps trained, only the one in flight is trained again. Nothing came from the store
    // (the only checkpoints are at the epochs' ends, 20 and 40).
    let (kept, resumed) = live_recovery_of(&log, 1);
    assert_eq!(kept.len(), 2, "{log}");
    assert!(
        kept.iter().all(|&k| Some(k) == resumed),
        "{kept:?} {resumed:?}\n{log}"
    );
    let resumed = resumed.unwrap();
    assert!((6..20).contains(&resumed), "{log}");
    assert!(!log.contains("resumed from checkpoint"), "{log}");
    assert!(log.contains("step 40/40 epoch 1"), "{log}");
    assert_same_network(&dir, "straight", "live", 40);
    assert_history_complete(&store_url(&dir), "live", 40);
}

#[test]
fn a_rank_dying_in_the_state_transfer_leaves_the_survivors_state_for_the_next_try() {
    let dir = work_dir("faults", "live-transfer", &rare_checkpoints());
    let mut straight = Run::start(&dir, "straight", 3, &[]);
    let status = wait_exit(&mut straight.coordinator, Duration::from_secs(300));
    assert!(status.success(), "{}", straight.log());

    let mut run = Run::without_local_workers(&dir, "live-transfer", 3, &[]);
    let lost = [run.worker(0), run.worker(1), run.worker(2)][2];
    run.wait_for("step 6/", Duration::from_secs(300));
    kill(lost, Signal::SIGKILL).unwrap();
    run.wait_for("generation 1 ended", Duration::from_secs(60));
    // The replacement exits right after the transfer's first broadcast: generation 2 fails
    // in the middle of it.
    run.worker_with(2, &[(FAILPOINT_ENV, "exit-in-live-transfer")]);
    run.wait_for("exiting in the live transfer", Duration::from_secs(120));
    run.wait_for("generation 2 ended", Duration::from_secs(60));
    run.wait_for("is lost and forgotten", Duration::from_secs(30));
    // The survivors trained no step in generation 2 (they may have received the whole
    // state before the newcomer died, the senders' broadcasts being done): they offer their
    // state at the same step again, and generation 3 starts from it.
    run.worker(2);
    let status = wait_exit(&mut run.coordinator, Duration::from_secs(300));
    let log = run.log();
    assert!(status.success(), "{log}");
    let (kept, resumed) = live_recovery_of(&log, 1);
    let resumed = resumed.expect("generation 2 started from generation 1's survivors");
    assert!(kept.iter().all(|&k| k == resumed), "{log}");
    let third = log
        .lines()
        .find(|l| l.contains("generation 3 formed"))
        .unwrap_or_else(|| panic!("no generation 3:\n{log}"));
    assert!(
        third.contains("resuming from the state of generation ")
            && third.ends_with(&format!(
                "survivors at step {resumed} (live recovery: nothing read from the store)"
            )),
        "{third}"
    );
    assert!(!log.contains("resumed from checkpoint"), "{log}");
    assert_same_network(&dir, "straight", "live-transfer", 40);
}

#[test]
fn losing_every_rank_falls_back_to_the_last_checkpoint() {
    let dir = work_dir("faults", "live-all", &rare_checkpoints());
    let mut straight = Run::start(&dir, "straight", 3, &[]);
    let status = wait_exit(&mut straight.coordinator, Duration::from_secs(300));
    assert!(status.success(), "{}", straight.log());

    let mut run = Run::start(&dir, "live-all", 3, &[]);
    run.wait_for("checkpoint at step 20 committed", Duration::from_secs(300));
    run.wait_for("step 23/", Duration::from_secs(300));
    for slot in 0..3 {
        kill(run.worker_pid(slot), Signal::SIGKILL).unwrap();
    }
    let status = wait_exit(&mut run.coordinator, Duration::from_secs(300));
    let log = run.finish_log(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert!(
        log.contains(
            "resuming from the checkpoint at step 20; not from the survivors: no rank of \
             generation 1 offered its state"
        ),
        "{log}"
    );
    assert_same_network(&dir, "straight", "live-all", 40);
    assert_history_complete(&store_url(&dir), "live-all", 40);
}
