//! Finish: every rank done finishes the job; a worker's error fails it (on one log line)
//! and stops the others; a cancelled job stops them too, without failing.

use super::*;

#[test]
fn every_rank_finishing_finishes_the_job() {
    let (mut job, ids) = formed(2);
    let finish = |id: &str, step: u64, error: &str| v1::FinishRequest {
        api_version: 1,
        worker_id: id.into(),
        generation: 1,
        step,
        error: error.into(),
        retryable: false,
    };
    assert_eq!(
        invalid_field(job.finish(&finish(&ids[0], 7, ""), 5).unwrap_err()),
        "step"
    );
    job.finish(&finish(&ids[0], 45, ""), 5).unwrap();
    assert_eq!(job.phase(), &JobPhase::Running);
    // Rank 0 is done: told to stop; rank 1 goes on.
    let hb = |id: &str| v1::HeartbeatRequest {
        api_version: 1,
        worker_id: id.into(),
        generation: 1,
        step: 45,
    };
    assert_eq!(
        job.heartbeat(&hb(&ids[0]), 6).unwrap().action,
        v1::WorkerAction::Stop as i32
    );
    assert_eq!(
        job.heartbeat(&hb(&ids[1]), 6).unwrap().action,
        v1::WorkerAction::Continue as i32
    );
    job.take_effects();
    job.finish(&finish(&ids[1], 45, ""), 7).unwrap();
    assert_eq!(job.phase(), &JobPhase::Finished);
    assert_eq!(
        job.take_effects(),
        [Effect::JobEnded(JobPhase::Finished), Effect::Persist]
    );
    assert!(job.all_released());
    let status = job.status(8);
    assert_eq!(status.state, v1::JobState::Finished as i32);
    assert!(status.workers.iter().all(|w| w.state == "finished"));
    // Nothing more to do.
    let plan = v1::EpochPlanRequest {
        api_version: 1,
        worker_id: ids[0].clone(),
        generation: 1,
        epoch: 0,
    };
    assert!(matches!(
        job.epoch_plan(&plan, 9),
        Err(JobError::JobOver(_))
    ));
}

#[test]
fn a_retryable_worker_error_is_a_loss_not_a_failure() {
    let (mut job, ids) = formed(3);
    job.take_effects();
    job.finish(
        &failed_at_step_3(
            &ids[1],
            "checkpoint store: s3://b/r: connection reset",
            true,
        ),
        5,
    )
    .unwrap();
    // Its generation ends (one restart), the job waits for a worker in its slot.
    assert_eq!(job.phase(), &JobPhase::Waiting);
    let effects = job.take_effects();
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::WorkerLost { worker_id, reason, .. }
                if worker_id == &ids[1] && reason.contains("may be started again")
                    && reason.contains("connection reset")
        )),
        "{effects:?}"
    );
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::GenerationEnded {
                generation: 1,
                restart: Some(1),
                ..
            }
        )),
        "{effects:?}"
    );
}

#[test]
fn a_worker_error_fails_the_job_and_stops_the_others() {
    let (mut job, ids) = formed(3);
    job.finish(&failed_at_step_3(&ids[1], "CUDA out of memory", false), 5)
        .unwrap();
    let JobPhase::Failed { error } = job.phase().clone() else {
        panic!("{:?}", job.phase());
    };
    assert!(
        error.contains("rank 1") && error.contains("CUDA out of memory"),
        "{error}"
    );
    assert!(!job.all_released());
    for id in [&ids[0], &ids[2]] {
        let reply = job
            .report_progress(
                &v1::ProgressReport {
                    api_version: 1,
                    worker_id: id.clone(),
                    generation: 1,
                    step: 4,
                    ..Default::default()
                },
                6,
            )
            .unwrap();
        assert_eq!(reply.action, v1::WorkerAction::Stop as i32);
    }
    assert!(job.all_released());
    assert_eq!(job.status(7).error, error);
    assert!(!job.fail("again"), "the first failure stays");
}

/// Rank `id`'s Finish at step 3 of generation 1, with `error`.
fn failed_at_step_3(id: &str, error: &str, retryable: bool) -> v1::FinishRequest {
    v1::FinishRequest {
        api_version: 1,
        worker_id: id.into(),
        generation: 1,
        step: 3,
        error: error.into(),
        retryable,
    }
}

#[test]
fn a_cancelled_job_is_over_for_its_workers_but_not_failed() {
    let (mut job, ids) = formed(2);
    assert!(job.cancel("the coordinator received SIGTERM"));
    assert_eq!(
        job.phase(),
        &JobPhase::Cancelled {
            reason: "the coordinator received SIGTERM".into()
        }
    );
    for id in &ids {
        let beat = v1::HeartbeatRequest {
            api_version: 1,
            worker_id: id.clone(),
            generation: 1,
            step: 3,
        };
        // STOP, saying how the job ended: the worker need not ask a coordinator that may be
        // gone by then.
        let reply = job.heartbeat(&beat, 6).unwrap();
        assert_eq!(reply.action(), v1::WorkerAction::Stop);
        assert_eq!(reply.job_state(), v1::JobState::Cancelled);
        assert_eq!(reply.job_error, "the coordinator received SIGTERM");
    }
    // Workers asking how it ended learn it was cancelled, and why; it stays so.
    let status = job.status(7);
    assert_eq!(status.state(), v1::JobState::Cancelled);
    assert_eq!(status.error, "the coordinator received SIGTERM");
    assert!(!job.cancel("again") && !job.fail("later"));
}

#[test]
fn a_worker_failing_before_it_has_a_rank_fails_the_job() {
    let mut job = job(2);
    let a = register(&mut job, None, 1);
    let mut req = v1::FinishRequest {
        api_version: 1,
        worker_id: a.clone(),
        generation: 0,
        step: 0,
        error: String::new(),
        retryable: false,
    };
    assert_eq!(
        invalid_field(job.finish(&req, 2).unwrap_err()),
        "generation"
    );
    req.error = "train.rec: no such file".into();
    job.finish(&req, 2).unwrap();
    assert!(
        matches!(job.phase(), JobPhase::Failed { error } if error.contains("before it had a rank") && error.contains("train.rec"))
    );
}

#[test]
fn a_workers_error_text_reaches_the_log_on_one_line() {
    let (mut job, ids) = formed(2);
    let finish = v1::FinishRequest {
        api_version: 1,
        worker_id: ids[1].clone(),
        generation: 1,
        step: 3,
        error: format!("boom\nINFO job Finished\r\u{1b}[0m{}", "x".repeat(10_000)),
        retryable: false,
    };
    job.finish(&finish, 5).unwrap();
    let JobPhase::Failed { error } = job.phase() else {
        panic!("{:?}", job.phase())
    };
    assert!(!error.chars().any(char::is_control), "{error}");
    assert!(
        error.contains("boom\\nINFO job Finished\\r\\u{1b}[0m"),
        "{error}"
    );
    assert!(error.len() < 4096 + 200, "{} bytes", error.len());
}
