//! Lost workers and ended generations: silent ranks, ranks that left their failed group,
//! local worker exits, the restart budget, and ranks that never join again.

use super::*;

fn rejoin(job: &mut Job, id: &str, left: u64) -> Option<v1::JoinReply> {
    job.join(&rejoin_req(id, left), 20_000).unwrap()
}

#[test]
fn a_silent_rank_fails_the_job_when_no_restart_is_left() {
    let mut settings = settings(3);
    settings.max_restarts = 0;
    let mut job = Job::new(settings).unwrap();
    let ids: Vec<String> = (0..3).map(|i| register(&mut job, None, 4000 + i)).collect();
    for id in &ids {
        join(&mut job, id);
    }
    // Ranks 0 and 2 keep calling; rank 1 has been quiet since it joined at t = 2.
    for now in [4_000, 8_000, 10_002] {
        job.heartbeat(&heartbeat_req(&ids[0], 1), now).unwrap();
        job.heartbeat(&heartbeat_req(&ids[2], 1), now).unwrap();
        assert!(!job.expire_silent(now), "expired at {now} ms");
    }
    assert_eq!(job.phase(), &JobPhase::Running);
    assert!(job.expire_silent(10_003));
    let JobPhase::Failed { error } = job.phase().clone() else {
        panic!("not failed: {:?}", job.phase());
    };
    assert!(
        error.contains(&format!("rank 1 (worker {} on ", ids[1]))
            && error.contains("silent for 10001 ms")
            && error.contains("10000 ms deadline")
            && error.contains("restart budget is spent (0 of max_restarts = 0 used)"),
        "{error}"
    );
    assert!(
        !error.contains("rank 0") && !error.contains("rank 2"),
        "{error}"
    );
    assert!(
        !job.expire_silent(60_000),
        "an ended job is not failed twice"
    );
}

#[test]
fn a_lost_rank_ends_the_generation_and_the_next_resumes_from_the_last_commit() {
    let (mut job, ids) = formed(3);
    trained_to(&mut job, 4, 3);
    for (rank, id) in ids.iter().enumerate() {
        job.checkpoint_ack(&ack(id, rank as u32, 4), 3).unwrap();
    }
    let commit = commits(&job.take_effects())[0].clone();
    job.commit_done(
        4,
        Ok(format!("runs/run/ckpt/{:012}/MANIFEST.json", commit.step)),
        3,
    );

    job.heartbeat(&heartbeat_req(&ids[0], 1), 9_000).unwrap();
    job.heartbeat(&heartbeat_req(&ids[2], 1), 9_000).unwrap();
    // Rank 1 was last heard from with its ack at t = 3.
    assert!(!job.expire_silent(10_003));
    assert!(job.expire_silent(10_004));
    assert_eq!(job.phase(), &JobPhase::Waiting);
    let effects = job.take_effects();
    assert!(lost(&effects, &ids[1]));
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::GenerationEnded { generation: 1, restart: Some(1), max_restarts: 2, reason }
            if reason.contains("rank 1")
    )));
    // The survivors are told to join again; the old generation's calls are stale.
    let reply = job.heartbeat(&heartbeat_req(&ids[0], 1), 10_100).unwrap();
    assert_eq!(reply.action, v1::WorkerAction::Rejoin as i32);
    assert!(matches!(
        job.checkpoint_ack(&ack(&ids[2], 2, 8), 10_100).unwrap_err(),
        JobError::StaleGeneration { got: 1, .. }
    ));
    // The lost worker is forgotten; a replacement takes its place.
    assert_eq!(job.registered_count(), 2);
    let replacement = register(&mut job, None, 4010);
    assert!(rejoin(&mut job, &ids[0], 1).is_none());
    assert!(rejoin(&mut job, &ids[2], 1).is_none());
    let reply = join(&mut job, &replacement).expect("generation 2 formed");
    assert_eq!((reply.generation, reply.rank, reply.world_size), (2, 2, 3));
    assert_eq!(reply.resume_step, 4);
    assert_eq!(
        reply.resume_manifest,
        "runs/run/ckpt/000000000004/MANIFEST.json"
    );
    assert_eq!(job.phase(), &JobPhase::Running);
}

#[test]
fn a_rank_that_left_its_failed_group_ends_the_generation_once() {
    let (mut job, ids) = formed_with(settings(2), true);
    let (a, b) = (ids[0].clone(), ids[1].clone());
    // Rank 0 saw its group fail (rank 1 died) before anyone told the coordinator.
    assert!(rejoin(&mut job, &a, 1).is_none());
    assert_eq!(job.phase(), &JobPhase::Waiting);
    let effects = job.take_effects();
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::GenerationEnded { generation: 1, restart: Some(1), reason, .. }
            if reason.contains("rank 0") && reason.contains("left generation 1")
    )));
    // Rank 1's process is reported dead afterwards: the same failure, no second restart.
    assert!(job.local_worker_exited(1, "was killed by SIGKILL", 20_000));
    let effects = job.take_effects();
    assert!(lost(&effects, &b));
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::GenerationEnded { .. })),
        "{effects:?}"
    );
}

#[test]
fn local_worker_deaths_spend_the_restart_budget() {
    let (mut job, ids) = formed_with(settings(2), true);
    let b = ids[1].clone();

    // The member in slot 1 dies: generation 1 ends (restart 1 of 2).
    assert!(job.local_worker_exited(1, "was killed by SIGKILL", 20_000));
    assert_eq!(job.phase(), &JobPhase::Waiting);
    assert_eq!(job.registered_count(), 1);
    let effects = job.take_effects();
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::GenerationEnded { generation: 1, restart: Some(1), reason, .. }
            if reason.contains(&format!("rank 1 (worker {b}, local slot 1) was killed by SIGKILL"))
    )));
    // Its replacement dies before registering: restart 2 of 2.
    assert!(job.local_worker_exited(1, "exited with status 1", 20_000));
    assert_eq!(job.phase(), &JobPhase::Waiting);
    // And once more: the budget is spent, the job fails and no replacement is wanted.
    assert!(!job.local_worker_exited(1, "exited with status 1", 20_000));
    let JobPhase::Failed { error } = job.phase().clone() else {
        panic!("not failed: {:?}", job.phase());
    };
    assert!(
        error.contains("the local worker of slot 1, before it registered, exited with status 1")
            && error.contains("(2 of max_restarts = 2 used)"),
        "{error}"
    );
}

#[test]
fn finished_ranks_and_jobs_without_a_generation_never_expire() {
    let mut waiting = job(2);
    register(&mut waiting, None, 4000);
    assert!(!waiting.expire_silent(1_000_000));

    let (mut job, ids) = formed(2);
    let total = job.generation().unwrap().schedule.total_steps;
    let done = v1::FinishRequest {
        api_version: 1,
        worker_id: ids[0].clone(),
        generation: 1,
        step: total,
        error: String::new(),
        retryable: false,
    };
    job.finish(&done, 5).unwrap();
    // Rank 0 finished and went quiet; rank 1 is still training and calling.
    let hb = v1::HeartbeatRequest {
        api_version: 1,
        worker_id: ids[1].clone(),
        generation: 1,
        step: total - 1,
    };
    job.heartbeat(&hb, 50_000).unwrap();
    assert!(!job.expire_silent(50_000));
    assert_eq!(job.phase(), &JobPhase::Running);
}

#[test]
fn a_rank_that_never_joins_again_after_its_generation_ended_is_forgotten() {
    let (mut job, ids) = formed_with(settings(2), true);
    let (a, b) = (ids[0].clone(), ids[1].clone());
    job.heartbeat(&heartbeat_req(&b, 1), 1_000).unwrap();
    // Rank 0 ends the generation (its group failed: rank 1 died, unseen until now).
    job.join(&rejoin_req(&a, 1), 1_500).unwrap();
    assert_eq!(job.phase(), &JobPhase::Waiting);
    job.join(&rejoin_req(&a, 1), 11_000).unwrap();
    assert!(!job.expire_waiting(11_000));
    assert!(job.expire_waiting(11_001));
    assert_eq!(job.registered_count(), 1);
    let effects = job.take_effects();
    assert!(lost(&effects, &b));
    // A replacement takes rank 1's place and the next generation forms.
    let c = register(&mut job, Some(1), 4002);
    assert!(join(&mut job, &c).is_some());
}

#[test]
fn a_new_worker_in_the_slot_of_a_rank_that_has_not_rejoined_replaces_it() {
    let (mut job, ids) = formed_with(settings(2), true);
    let (a, b) = (ids[0].clone(), ids[1].clone());
    // Rank 1 died; rank 0 ended the generation; rank 1's pod comes back at once, before
    // the dead process could expire.
    job.join(&rejoin_req(&a, 1), 1_500).unwrap();
    job.take_effects();
    let c = register(&mut job, Some(1), 4002);
    let effects = job.take_effects();
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::WorkerLost { worker_id, reason, .. }
            if worker_id == &b && reason.contains("replaced by a new worker in its slot 1")
    )));
    assert!(join(&mut job, &c).is_some());
    assert_eq!(state(&job)["restarts"], 1);
    // While a generation runs, a slot is not taken over.
    let err = job
        .register(&register_req("cpu", Some(1), 4003), 2_000)
        .unwrap_err();
    assert!(err.to_string().contains("no place"), "{err}");
}
