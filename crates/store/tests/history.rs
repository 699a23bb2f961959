//! The run history through the real writer and reader, on a local directory and on a real
//! S3 server (moto's `moto_server`, as in `s3.rs`): a resume after a kill, a torn tail,
//! rolled-over segments, two sources, the errors of a missing run or history, and a failed
//! put reported and retried.

#[path = "support/moto.rs"]
mod moto;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use lgaf_store::history::{
    now, CheckpointCommitted, EvalSet, Evaluation, Event, GenerationEnded, GenerationFormed,
    HistoryError, HistoryWriter, Outcome, Recovery, RunFinished, Source, StepRecord, WorkerLost,
    WorkerRegistered, WriterOptions,
};
use lgaf_store::{read_history, History, RunStore, Store};
use moto::{moto_server, Moto};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn temp_store(name: &str) -> (PathBuf, Store) {
    let dir = std::env::temp_dir().join(format!("lgaf-history-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::from_url(&dir.display().to_string()).unwrap();
    (dir, store)
}

fn step(step: u64, generation: u64, loss: f64) -> StepRecord {
    StepRecord {
        step,
        epoch: step / 10,
        total_steps: 100,
        loss,
        lr: 0.1,
        samples_per_sec: 512.0,
        step_seconds: 0.125,
        data_wait_seconds: 0.01,
        loss_scale: Some(65536.0),
        skipped: false,
        gamma_local: Some(0.4),
        gamma_global: Some(0.6),
        world_size: 2,
        generation,
        time: now(),
    }
}

/// Distinct segment start times and event times, a millisecond apart at least.
fn tick() {
    std::thread::sleep(Duration::from_millis(3));
}

fn read(rt: &Runtime, run: &RunStore) -> History {
    rt.block_on(read_history(run)).unwrap()
}

fn step_numbers(history: &History) -> Vec<u64> {
    history.steps.iter().map(|s| s.step).collect()
}

/// A process killed at step 7 after committing a checkpoint at 4, resumed from 4 by the
/// next one (the same generation, as `lgaf train` restarts; or the next, as a coordinated
/// run's): every step once, strictly increasing, the redone ones as trained last.
fn resume_after_kill(rt: &Runtime, run: &RunStore, generations: (u64, u64)) {
    let first = HistoryWriter::start(run.clone(), Source::Rank0, generations.0, 0).unwrap();
    for s in 1..=4 {
        first.record(step(s, generations.0, 1.0));
    }
    first.record(CheckpointCommitted {
        step: 4,
        bytes: 1 << 20,
        seconds: 0.5,
        time: now(),
    });
    // As at a commit: steps up to the checkpoint are stored before its manifest.
    first.flush_and_wait().unwrap();
    for s in 5..=7 {
        first.record(step(s, generations.0, 1.0));
    }
    first.flush_and_wait().unwrap();
    // Killed here: nothing more of it reaches the store (its drop finds nothing to flush).
    drop(first);
    tick();

    let second = HistoryWriter::start(run.clone(), Source::Rank0, generations.1, 4).unwrap();
    for s in 5..=12 {
        second.record(step(s, generations.1, 2.0));
    }
    second.finish().unwrap();

    let history = read(rt, run);
    assert!(history.problems.is_empty(), "{:?}", history.problems);
    assert_eq!(step_numbers(&history), (1..=12).collect::<Vec<_>>());
    for s in &history.steps {
        let (loss, generation) = if s.step <= 4 {
            (1.0, generations.0)
        } else {
            (2.0, generations.1)
        };
        assert_eq!(
            (s.loss, s.generation),
            (loss, generation),
            "step {}",
            s.step
        );
    }
    assert_eq!(history.segments.len(), 2);
    assert_eq!(history.events.len(), 1);
    assert_eq!(
        history.segments[1]
            .header
            .as_ref()
            .unwrap()
            .resumed_from_step,
        4
    );
}

/// A segment whose last line was cut short, a damaged line in the middle and a foreign
/// object: each a problem naming the key (and line), everything else read.
fn torn_tail(rt: &Runtime, run: &RunStore) {
    let writer = HistoryWriter::start(run.clone(), Source::Rank0, 0, 0).unwrap();
    for s in 1..=3 {
        writer.record(step(s, 0, 1.0));
    }
    let first_key = writer.segment_key();
    writer.finish().unwrap();
    tick();
    let second = HistoryWriter::start(run.clone(), Source::Rank0, 0, 3).unwrap();
    for s in 4..=6 {
        second.record(step(s, 0, 1.0));
    }
    let key = second.segment_key();
    second.finish().unwrap();

    // Damage the second segment: line 3 (step 5) garbled, the last line (step 6) torn.
    let body = rt.block_on(run.store().get(&key)).unwrap();
    let mut lines: Vec<String> = String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 4, "a header and three steps");
    lines[2] = lines[2].replace("\"loss\"", "\"lost\"");
    let last = lines.pop().unwrap();
    let torn = format!("{}\n{}", lines.join("\n"), &last[..last.len() - 20]);
    rt.block_on(run.store().put(&key, Bytes::from(torn)))
        .unwrap();
    let foreign = run.history_key("notes.txt");
    rt.block_on(run.store().put(&foreign, Bytes::from_static(b"hello")))
        .unwrap();

    let history = read(rt, run);
    assert_eq!(step_numbers(&history), [1, 2, 3, 4]);
    let problems: Vec<(String, Option<usize>)> = history
        .problems
        .iter()
        .map(|p| (p.key.clone(), p.line))
        .collect();
    assert_eq!(
        problems,
        [(foreign, None), (key.clone(), Some(3)), (key, Some(4))],
        "{:?}",
        history.problems
    );
    assert!(history.problems[1].reason.contains("missing field `loss`"));
    assert!(history.problems[2].reason.contains("torn tail"));
    assert!(history.segments[0].key == first_key);
}

/// A long history rolls over into parts of at most `max_segment_lines` lines, each with
/// its header; reading them back drops nothing.
fn rolling_segments(rt: &Runtime, run: &RunStore) {
    let options = WriterOptions {
        flush_every: Duration::ZERO,
        max_segment_lines: 10,
    };
    let writer = HistoryWriter::with_options(run.clone(), Source::Rank0, 3, 20, options).unwrap();
    for s in 21..=60 {
        writer.record(step(s, 3, 1.0));
        if s % 10 == 0 {
            writer.record(CheckpointCommitted {
                step: s,
                bytes: 10,
                seconds: 0.1,
                time: now(),
            });
        }
    }
    writer.finish().unwrap();

    // 44 records, 9 after each part's header.
    let objects = rt
        .block_on(run.store().list(&run.history_prefix()))
        .unwrap();
    assert_eq!(objects.len(), 5, "{objects:?}");
    let history = read(rt, run);
    assert!(history.problems.is_empty(), "{:?}", history.problems);
    assert_eq!(step_numbers(&history), (21..=60).collect::<Vec<_>>());
    assert_eq!(history.events.len(), 4);
    let parts: Vec<(u32, u64, usize)> = history
        .segments
        .iter()
        .map(|s| {
            let header = s.header.as_ref().unwrap();
            (header.part, header.resumed_from_step, s.lines)
        })
        .collect();
    assert_eq!(
        parts,
        [
            (0, 20, 10),
            (1, 20, 10),
            (2, 20, 10),
            (3, 20, 10),
            (4, 20, 9)
        ]
    );
}

/// The coordinator and rank 0 write side by side: a worker lost in generation 1, a
/// recovery in generation 2; events of both come back in time order, steps once each.
fn two_sources(rt: &Runtime, run: &RunStore) {
    let coordinator = HistoryWriter::start(run.clone(), Source::Coordinator, 1, 0).unwrap();
    for (id, host) in [("w-0", "node-a"), ("w-1", "node-b")] {
        coordinator.record(WorkerRegistered {
            worker_id: id.into(),
            host: host.into(),
            time: now(),
        });
        tick();
    }
    coordinator.record(GenerationFormed {
        generation: 1,
        world_size: 2,
        resume_step: 0,
        live: false,
        time: now(),
    });
    tick();
    let rank0 = HistoryWriter::start(run.clone(), Source::Rank0, 1, 0).unwrap();
    for s in 1..=5 {
        rank0.record(step(s, 1, 1.0));
    }
    rank0.flush_and_wait().unwrap();
    drop(rank0);
    tick();
    coordinator.record(WorkerLost {
        worker_id: "w-1".into(),
        rank: Some(1),
        host: "node-b".into(),
        reason: "silent past the heartbeat deadline".into(),
        time: now(),
    });
    tick();
    coordinator.record(GenerationEnded {
        generation: 1,
        reason: "rank 1 lost".into(),
        time: now(),
    });
    tick();
    coordinator.record(GenerationFormed {
        generation: 2,
        world_size: 1,
        resume_step: 4,
        live: false,
        time: now(),
    });
    tick();
    coordinator.record(Recovery {
        generation: 2,
        seconds: 0.012,
        time: now(),
    });
    tick();
    let rank0 = HistoryWriter::start(run.clone(), Source::Rank0, 2, 4).unwrap();
    for s in 5..=8 {
        rank0.record(step(s, 2, 2.0));
    }
    tick();
    rank0.record(Evaluation {
        step: 8,
        sets: vec![EvalSet {
            name: "lfw".into(),
            factor: None,
            pairs: Some(6000),
            accuracy: 0.95,
            std: 0.01,
            threshold: 1.3,
            tar_at_far: None,
            gamma_local: None,
            gamma_global: None,
        }],
        time: now(),
    });
    rank0.finish().unwrap();
    tick();
    coordinator.record(CheckpointCommitted {
        step: 8,
        bytes: 4096,
        seconds: 0.2,
        time: now(),
    });
    tick();
    coordinator.record(RunFinished {
        step: 8,
        outcome: Outcome::Completed,
        detail: None,
        time: now(),
    });
    coordinator.finish().unwrap();

    let history = read(rt, run);
    assert!(history.problems.is_empty(), "{:?}", history.problems);
    assert_eq!(step_numbers(&history), (1..=8).collect::<Vec<_>>());
    assert!(history.steps[4..].iter().all(|s| s.generation == 2));
    let events: Vec<(Source, &str)> = history
        .events
        .iter()
        .map(|e| (e.source, e.event.kind()))
        .collect();
    use Source::{Coordinator as C, Rank0 as R};
    assert_eq!(
        events,
        [
            (C, "worker_registered"),
            (C, "worker_registered"),
            (C, "generation_formed"),
            (C, "worker_lost"),
            (C, "generation_ended"),
            (C, "generation_formed"),
            (C, "recovery"),
            (R, "evaluation"),
            (C, "checkpoint_committed"),
            (C, "run_finished"),
        ]
    );
    let Event::WorkerLost(lost) = &history.events[3].event else {
        panic!("the fourth event is the lost worker");
    };
    assert_eq!((lost.rank, lost.host.as_str()), (Some(1), "node-b"));
    let sources: Vec<Source> = history.segments.iter().map(|s| s.source).collect();
    assert_eq!(sources, [C, R, R]);
}

/// Every step handed over at once (no flush interval): the replacements of the segment
/// land in order, so the store ends with all of them.
fn many_flushes_keep_their_order(rt: &Runtime, run: &RunStore) {
    let options = WriterOptions {
        flush_every: Duration::ZERO,
        max_segment_lines: 5000,
    };
    let writer = HistoryWriter::with_options(run.clone(), Source::Rank0, 0, 0, options).unwrap();
    for s in 1..=400 {
        writer.record(step(s, 0, 1.0));
    }
    writer.finish().unwrap();
    assert_eq!(step_numbers(&read(rt, run)), (1..=400).collect::<Vec<_>>());
}

/// A store without the run, then a run without a history: errors naming the run.
fn missing_run_and_history(rt: &Runtime, run: &RunStore) {
    match rt.block_on(read_history(run)) {
        Err(e @ HistoryError::NoRun { .. }) => {
            assert!(e.to_string().contains(run.run_id()), "{e}")
        }
        other => panic!("expected NoRun, got {other:?}"),
    }
    rt.block_on(run.put_job_state(Bytes::from_static(b"{}")))
        .unwrap();
    match rt.block_on(read_history(run)) {
        Err(e @ HistoryError::NoHistory { .. }) => {
            let text = e.to_string();
            assert!(text.contains("no history yet"), "{text}");
            assert!(text.contains(&run.history_prefix()), "{text}");
        }
        other => panic!("expected NoHistory, got {other:?}"),
    }
}

fn all_scenarios(rt: &Runtime, open: &dyn Fn(&str) -> RunStore) {
    resume_after_kill(rt, &open("resume-same-generation"), (0, 0));
    resume_after_kill(rt, &open("resume-next-generation"), (4, 5));
    torn_tail(rt, &open("torn"));
    rolling_segments(rt, &open("rolling"));
    two_sources(rt, &open("two-sources"));
    many_flushes_keep_their_order(rt, &open("many-flushes"));
    missing_run_and_history(rt, &open("missing"));
}

#[test]
fn history_on_a_local_directory() {
    let (dir, store) = temp_store("scenarios");
    let rt = runtime();
    all_scenarios(&rt, &|run_id| RunStore::new(store.clone(), run_id).unwrap());
    let _ = std::fs::remove_dir_all(dir);
}

/// Async code records and flushes through a shared writer without blocking its runtime.
#[test]
fn async_callers_share_a_writer() {
    fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<HistoryWriter>();
    let (dir, store) = temp_store("async");
    let run = RunStore::new(store, "async").unwrap();
    let rt = runtime();
    rt.block_on(async {
        let writer = std::sync::Arc::new(
            HistoryWriter::start(run.clone(), Source::Coordinator, 1, 0).unwrap(),
        );
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    writer.record(WorkerRegistered {
                        worker_id: format!("w-{i}"),
                        host: "node".into(),
                        time: now(),
                    });
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        writer.clone().flush_and_wait_async().await.unwrap();
        let history = read_history(&run).await.unwrap();
        assert_eq!(history.events.len(), 4);
    });
    let _ = std::fs::remove_dir_all(dir);
}

/// A put that fails (the history folder is a file) is the error of `flush_and_wait`,
/// naming the segment; once the store is usable again, the next flush writes everything.
#[test]
fn a_failed_put_is_reported_and_retried() {
    let (dir, store) = temp_store("failing");
    let run = RunStore::new(store, "blocked").unwrap();
    let history_dir = dir.join(run.history_prefix());
    std::fs::create_dir_all(history_dir.parent().unwrap()).unwrap();
    std::fs::write(&history_dir, b"in the way").unwrap();

    let writer = HistoryWriter::start(run.clone(), Source::Rank0, 0, 0).unwrap();
    writer.record(step(1, 0, 1.0));
    let e = writer.flush_and_wait().unwrap_err();
    assert!(
        e.to_string().contains(&writer.segment_key()),
        "the error names the segment: {e}"
    );
    std::fs::remove_file(&history_dir).unwrap();
    writer.record(step(2, 0, 1.0));
    writer.flush_and_wait().unwrap();
    let rt = runtime();
    assert_eq!(step_numbers(&read(&rt, &run)), [1, 2]);
    drop(writer);
    let _ = std::fs::remove_dir_all(dir);
}

/// The same scenarios against a real S3 server.
#[test]
fn history_on_s3_against_moto_server() {
    let Some(binary) = moto_server() else {
        println!("skipped: set LGAF_MOTO_SERVER (make test does)");
        return;
    };
    let moto = Moto::start(&binary);
    moto.create_bucket("lgaf-history");
    let store = Store::from_url_with_env("s3://lgaf-history/runs-root", &moto.env()).unwrap();
    let rt = runtime();
    all_scenarios(&rt, &|run_id| RunStore::new(store.clone(), run_id).unwrap());
    drop(rt);
    drop(moto);
}
