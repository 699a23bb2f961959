//! Heartbeats and progress reports: rank 0's numbers kept for status, and reports the job
//! refuses (past the run, not finite) without changing anything.

use super::*;

#[test]
fn progress_keeps_rank_zero_numbers() {
    let (mut job, ids) = formed(2);
    let report = |id: &str, step: u64, loss: f64| v1::ProgressReport {
        api_version: 1,
        worker_id: id.into(),
        generation: 1,
        step,
        epoch: 0,
        loss,
        lr: 0.1,
        samples_per_s: 100.0,
        ..Default::default()
    };
    job.report_progress(&report(&ids[1], 3, 9.0), 5).unwrap();
    assert!(job.latest_progress().is_none());
    assert!(job.take_effects().is_empty());
    let reply = job.report_progress(&report(&ids[0], 4, 2.5), 6).unwrap();
    assert_eq!(reply.action, v1::WorkerAction::Continue as i32);
    let p = job.latest_progress().unwrap();
    assert_eq!((p.step, p.loss, p.total_steps), (4, 2.5, 45));
    assert!(matches!(&job.take_effects()[..], [Effect::Progress(p)] if p.step == 4));
    let status = job.status(7);
    assert_eq!(
        (status.step, status.loss, status.samples_per_s),
        (4, 2.5, 100.0)
    );
}

/// What a client with the job's token can no longer make the coordinator believe or show:
/// steps past the end of the run, a NaN loss, epochs that do not exist.
#[test]
fn progress_and_heartbeats_past_the_run_or_not_finite_are_refused_and_change_nothing() {
    let (mut job, ids) = formed(2);
    let report = v1::ProgressReport {
        api_version: 1,
        worker_id: ids[0].clone(),
        generation: 1,
        step: 4,
        epoch: 0,
        loss: 2.5,
        lr: 0.1,
        samples_per_s: 100.0,
        ..Default::default()
    };
    job.report_progress(&report, 5).unwrap();
    job.take_effects();
    let before = state(&job);
    let bad_numbers = [
        (
            "loss",
            v1::ProgressReport {
                loss: f64::NAN,
                ..report.clone()
            },
        ),
        (
            "loss",
            v1::ProgressReport {
                loss: f64::INFINITY,
                ..report.clone()
            },
        ),
        (
            "lr",
            v1::ProgressReport {
                lr: -0.1,
                ..report.clone()
            },
        ),
        (
            "samples_per_s",
            v1::ProgressReport {
                samples_per_s: f64::NAN,
                ..report.clone()
            },
        ),
        (
            "data_wait_ms",
            v1::ProgressReport {
                data_wait_ms: -1.0,
                ..report.clone()
            },
        ),
        (
            "gamma_local",
            v1::ProgressReport {
                gamma_local: f64::INFINITY,
                ..report.clone()
            },
        ),
    ];
    for (field, bad) in bad_numbers {
        let e = job.report_progress(&bad, 6).unwrap_err();
        assert_eq!(invalid_field(e), field);
    }
    let past_the_end = v1::ProgressReport {
        step: u64::MAX,
        ..report.clone()
    };
    let e = job.report_progress(&past_the_end, 6).unwrap_err();
    assert!(
        matches!(&e, JobError::OutOfRange { field, message } if field == "step"
            && message.contains("45 steps")),
        "{e}"
    );
    let no_such_epoch = v1::ProgressReport {
        epoch: 3,
        ..report.clone()
    };
    let e = job.report_progress(&no_such_epoch, 6).unwrap_err();
    assert!(
        matches!(&e, JobError::OutOfRange { field, .. } if field == "epoch"),
        "{e}"
    );
    let beat = v1::HeartbeatRequest {
        api_version: 1,
        worker_id: ids[1].clone(),
        generation: 1,
        step: 46,
    };
    let e = job.heartbeat(&beat, 6).unwrap_err();
    assert!(
        matches!(&e, JobError::OutOfRange { field, .. } if field == "step"),
        "{e}"
    );
    assert_eq!(state(&job), before, "a refused report changed the job");
    assert!(job.take_effects().is_empty());
    // The last step of the run is fine.
    job.heartbeat(&v1::HeartbeatRequest { step: 45, ..beat }, 7)
        .unwrap();
}

/// The gauges the service records after every event are the status's figures, without
/// the status of every worker: before any worker, while registering, formed, committed,
/// and after a generation ends and a worker is lost.
#[test]
fn gauges_are_the_status_figures() {
    let from_status = |job: &Job| {
        let s = job.status(9);
        JobGauges {
            workers: s.workers.len() as u32,
            generation: s.generation,
            total_steps: s.total_steps,
            last_checkpoint_step: s.last_checkpoint_step,
        }
    };
    let mut waiting = job(3);
    assert_eq!(waiting.gauges(), from_status(&waiting));
    let first = register(&mut waiting, None, 4000);
    join(&mut waiting, &first);
    assert_eq!(waiting.gauges(), from_status(&waiting));
    assert_eq!(
        waiting.gauges().total_steps,
        30,
        "the schedule, before a generation"
    );

    let (mut job, ids) = formed(3);
    assert_eq!(job.gauges(), from_status(&job));
    trained_to(&mut job, 4, 3);
    for (rank, id) in ids.iter().enumerate() {
        job.checkpoint_ack(&ack(id, rank as u32, 4), 4).unwrap();
    }
    job.commit_done(4, Ok("runs/run/ckpt/000000000004/MANIFEST.json".into()), 5);
    let committed = job.gauges();
    assert_eq!(committed, from_status(&job));
    assert_eq!(
        (
            committed.workers,
            committed.generation,
            committed.last_checkpoint_step
        ),
        (3, 1, 4)
    );
    // Rank 2 goes silent: the generation ends and it is forgotten.
    for id in &ids[..2] {
        job.heartbeat(&heartbeat_req(id, 1), 20_000).unwrap();
    }
    assert!(job.expire_silent(20_000));
    assert_eq!(job.gauges(), from_status(&job));
    assert_eq!(job.gauges().workers, 2);
}
