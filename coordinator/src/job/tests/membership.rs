//! Register and Join: ranks by slot and registration order, what registration refuses
//! (fields, devices, slots, a full job), facts that differ, and the membership checks of
//! every rank's request.

use super::*;

#[test]
fn ranks_follow_registration_order_without_slots() {
    let mut job = job(3);
    let a = register(&mut job, None, 4001);
    let b = register(&mut job, None, 4002);
    let c = register(&mut job, None, 4003);
    assert_eq!(a, "w1-t");
    // The last to join completes the generation; the others learn it on their next call.
    assert!(join(&mut job, &c).is_none());
    assert!(join(&mut job, &a).is_none());
    assert_eq!(job.phase(), &JobPhase::Waiting);
    let reply_b = join(&mut job, &b).unwrap();
    assert_eq!(reply_b.rank, 1);
    assert_eq!(join(&mut job, &a).unwrap().rank, 0);
    let reply_c = join(&mut job, &c).unwrap();
    assert_eq!(reply_c.rank, 2);
    assert_eq!(reply_c.world_size, 3);
    assert_eq!(reply_c.generation, 1);
    assert_eq!(reply_c.backend, v1::CollectiveBackend::Cpu as i32);
    assert_eq!(
        reply_c.peers,
        ["127.0.0.1:4001", "127.0.0.1:4002", "127.0.0.1:4003"]
    );
    assert_eq!(reply_c.steps_per_epoch, 10);
    assert_eq!(reply_c.total_steps, 30);
    assert_eq!(reply_c.collective_timeout_ms, 5000);
    assert_eq!(
        (reply_c.resume_step, reply_c.resume_manifest.as_str()),
        (0, "")
    );
    let effects = job.take_effects();
    assert!(effects.contains(&Effect::GenerationFormed {
        generation: 1,
        world_size: 3,
        data_world_size: 3,
        backend: Backend::Cpu,
        steps_per_epoch: 10,
        total_steps: 30,
        resume_step: 0,
        live: None,
        not_live: None,
    }));
    assert!(effects.contains(&Effect::Persist));
}

#[test]
fn ranks_follow_slots_when_given() {
    let mut job = job(3);
    let s2 = register(&mut job, Some(2), 4002);
    let none = register(&mut job, None, 4009);
    let s0 = register(&mut job, Some(0), 4000);
    for id in [&s2, &none, &s0] {
        join(&mut job, id);
    }
    assert_eq!(join(&mut job, &s0).unwrap().rank, 0);
    assert_eq!(join(&mut job, &s2).unwrap().rank, 1);
    assert_eq!(join(&mut job, &none).unwrap().rank, 2);
    assert_eq!(
        join(&mut job, &none).unwrap().peers,
        ["127.0.0.1:4000", "127.0.0.1:4002", "127.0.0.1:4009"]
    );
}

#[test]
fn registration_is_validated() {
    let mut job = job(2);
    let before = state(&job);
    let field =
        |job: &mut Job, r: v1::RegisterRequest| invalid_field(job.register(&r, 1).unwrap_err());

    let mut r = register_req("gpu", None, 1);
    assert_eq!(field(&mut job, r.clone()), "device");
    r = register_req("cpu", None, 1);
    r.collective_addr.clear();
    assert_eq!(field(&mut job, r.clone()), "collective_addr");
    r.collective_addr = "nonsense".into();
    assert_eq!(field(&mut job, r.clone()), "collective_addr");
    r = register_req("cpu", Some(2), 1);
    assert_eq!(field(&mut job, r.clone()), "slot");
    r = register_req("cpu", None, 1);
    r.host.clear();
    assert_eq!(field(&mut job, r.clone()), "host");
    r = register_req("cpu", None, 1);
    r.pid = 0;
    assert_eq!(field(&mut job, r.clone()), "pid");
    r = register_req("cpu", None, 1);
    r.job_id = "another".into();
    let e = job.register(&r, 1).unwrap_err();
    assert!(
        matches!(&e, JobError::FailedPrecondition(m) if m.starts_with("job_id:")),
        "{e}"
    );
    assert_eq!(state(&job), before, "refusals leave the job unchanged");

    let first = register(&mut job, Some(0), 1);
    let e = job
        .register(&register_req("cpu", Some(0), 2), 1)
        .unwrap_err();
    assert_eq!(
        e,
        JobError::SlotTaken {
            slot: 0,
            by: first.clone()
        }
    );
    let e = job
        .register(&register_req("cuda:0", None, 2), 1)
        .unwrap_err();
    assert!(
        matches!(&e, JobError::FailedPrecondition(m) if m.starts_with("device:")),
        "{e}"
    );
    register(&mut job, None, 2);
    let e = job.register(&register_req("cpu", None, 3), 1).unwrap_err();
    assert!(
        matches!(&e, JobError::NoPlace(m) if m.contains("wants 2 workers")),
        "{e}"
    );
}

#[test]
fn two_nccl_ranks_on_one_gpu_are_refused() {
    let mut job = job(2);
    job.register(&register_req("cuda:0", None, 1), 1).unwrap();
    let e = job
        .register(&register_req("cuda:0", None, 2), 1)
        .unwrap_err();
    assert!(
        matches!(&e, JobError::FailedPrecondition(m) if m.contains("one GPU per rank")),
        "{e}"
    );
    let mut other_host = register_req("cuda:0", None, 2);
    other_host.host = "host-b".into();
    job.register(&other_host, 1).unwrap();
}

#[test]
fn host_names_that_could_forge_log_lines_are_refused() {
    let mut job = job(2);
    for bad in [
        "",
        "a\nb",
        "evil\n2026-12-03T00:00:00Z INFO job Finished",
        "\u{1b}[31m",
        "a b",
    ] {
        let mut r = register_req("cpu", None, 4000);
        r.host = bad.into();
        assert_eq!(
            invalid_field(job.register(&r, 1).unwrap_err()),
            "host",
            "{bad:?}"
        );
    }
    let mut r = register_req("cpu", None, 4000);
    r.host = "x".repeat(254);
    assert_eq!(invalid_field(job.register(&r, 1).unwrap_err()), "host");
    assert_eq!(job.registered_count(), 0);
    for good in ["node-3.cluster.local", "10.0.0.7", "fe80::1", "pod_a"] {
        let mut r = register_req("cpu", None, 4000);
        r.host = good.into();
        job.register(&r, 1).unwrap();
        job = self::job(2);
    }
}

#[test]
fn registration_closes_once_the_generation_formed() {
    let (mut job, _) = formed(2);
    let e = job.register(&register_req("cpu", None, 9), 1).unwrap_err();
    assert!(
        matches!(&e, JobError::NoPlace(m) if m.contains("already running")),
        "{e}"
    );
}

#[test]
fn a_full_size_generation_takes_no_newcomer() {
    let (mut job, _) = formed(2);
    let err = job
        .register(&register_req("cpu", None, 4100), 10)
        .unwrap_err();
    assert!(
        err.to_string().contains("no place for another worker"),
        "{err}"
    );
}

#[test]
fn facts_mismatch_names_the_field_and_frees_the_place() {
    let mut job = job(2);
    let a = register(&mut job, None, 1);
    let b = register(&mut job, None, 2);
    join(&mut job, &a);
    let mut other = facts();
    other.batch_size = 64;
    let e = job.join(&join_req(&b, other), 3).unwrap_err();
    assert_eq!(
        e,
        JobError::FactsMismatch {
            field: "batch_size",
            theirs: 64,
            ours: 32,
            first_worker: a.clone()
        }
    );
    assert!(
        e.to_string()
            .starts_with("facts.batch_size: this worker has 64"),
        "{e}"
    );
    // Forgotten: it gets NOT_FOUND, and another worker can take the place.
    assert_eq!(
        job.join(&join_req(&b, facts()), 3).unwrap_err(),
        JobError::UnknownWorker(b.clone())
    );
    assert!(job
        .take_effects()
        .iter()
        .any(|e| matches!(e, Effect::WorkerRefused { worker_id, .. } if *worker_id == b)));
    let c = register(&mut job, None, 3);
    assert_eq!(join(&mut job, &c).unwrap().rank, 1);
}

#[test]
fn join_is_validated() {
    let mut job = job(2);
    let a = register(&mut job, None, 1);
    let before = state(&job);
    let mut r = join_req(&a, facts());
    r.facts = None;
    assert_eq!(invalid_field(job.join(&r, 2).unwrap_err()), "facts");
    let mut f = facts();
    f.batch_size = 0;
    assert_eq!(
        invalid_field(job.join(&join_req(&a, f), 2).unwrap_err()),
        "facts.batch_size"
    );
    assert_eq!(
        invalid_field(job.join(&join_req("", facts()), 2).unwrap_err()),
        "worker_id"
    );
    assert_eq!(
        job.join(&join_req("w9-t", facts()), 2).unwrap_err(),
        JobError::UnknownWorker("w9-t".into())
    );
    assert_eq!(state(&job), before);
}

#[test]
fn requests_name_generation_worker_and_membership_problems() {
    let (mut job, ids) = formed(2);
    let before = state(&job);
    let mut hb = v1::HeartbeatRequest {
        api_version: 1,
        worker_id: ids[0].clone(),
        generation: 2,
        step: 5,
    };
    assert_eq!(
        job.heartbeat(&hb, 9).unwrap_err(),
        JobError::StaleGeneration {
            got: 2,
            current: "1".into()
        }
    );
    hb.generation = 0;
    assert_eq!(
        invalid_field(job.heartbeat(&hb, 9).unwrap_err()),
        "generation"
    );
    hb.generation = 1;
    hb.worker_id = "w77-t".into();
    assert_eq!(
        job.heartbeat(&hb, 9).unwrap_err(),
        JobError::UnknownWorker("w77-t".into())
    );
    hb.worker_id.clear();
    assert_eq!(
        invalid_field(job.heartbeat(&hb, 9).unwrap_err()),
        "worker_id"
    );
    assert_eq!(state(&job), before, "refused requests change nothing");

    hb.worker_id = ids[1].clone();
    let reply = job.heartbeat(&hb, 9).unwrap();
    assert_eq!(reply.action, v1::WorkerAction::Continue as i32);
    assert_eq!(reply.generation, 1);
    let status = job.status(10);
    assert_eq!(status.workers[1].step, 5);
    assert_eq!(status.workers[1].last_seen_ms, 1);
}

#[test]
fn requests_before_the_generation_forms_are_aborted() {
    let mut job = job(2);
    let a = register(&mut job, None, 1);
    let plan = v1::EpochPlanRequest {
        api_version: 1,
        worker_id: a,
        generation: 1,
        epoch: 0,
    };
    assert!(matches!(
        job.epoch_plan(&plan, 2),
        Err(JobError::StaleGeneration { got: 1, ref current }) if current.contains("none")
    ));
}

#[test]
fn min_workers_above_the_job_size_is_refused() {
    let err = Job::new(JobSettings {
        min_workers: 4,
        ..settings(3)
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "min_workers: 4 is more than the 3 workers of the job"
    );
}

/// Registering never answers a waiting Join (the newcomer has not joined), so its event
/// does not wake the long polls; the Join that forms the generation does, and so do the
/// losses and endings that refuse a waiting call.
#[test]
fn only_events_that_may_answer_a_waiting_join_wake_the_long_polls() {
    let mut job = job(2);
    let first = register(&mut job, None, 4000);
    assert!(join(&mut job, &first).is_none());
    job.take_effects();
    let second = register(&mut job, None, 4001);
    let registered = job.take_effects();
    assert!(matches!(&registered[..], [Effect::WorkerRegistered { .. }]));
    assert!(!registered.iter().any(Effect::may_answer_long_polls));
    // The waiting Join is still not answerable after the registration.
    assert!(join(&mut job, &first).is_none());
    assert!(join(&mut job, &second).is_some());
    let formed = job.take_effects();
    assert!(formed
        .iter()
        .any(|e| matches!(e, Effect::GenerationFormed { .. }) && e.may_answer_long_polls()));
    assert!(Effect::JobEnded(JobPhase::Finished).may_answer_long_polls());
    assert!(Effect::NcclIdPublished { generation: 1 }.may_answer_long_polls());
    assert!(!Effect::Progress(Progress::default()).may_answer_long_polls());
}
