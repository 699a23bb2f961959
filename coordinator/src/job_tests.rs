use super::*;

fn settings(world_size: u32) -> JobSettings {
    JobSettings {
        job_id: "job".into(),
        run_id: "run".into(),
        instance: "t".into(),
        world_size,
        min_workers: 0,
        elastic_grace_ms: 0,
        max_steps: 0,
        config_toml: "[train]\nepochs = 3\n".into(),
        store_url: "file:///store".into(),
        heartbeat_interval_ms: 1000,
        heartbeat_deadline_ms: 10_000,
        collective_timeout_ms: 5000,
        max_restarts: 2,
    }
}

fn job(world_size: u32) -> Job {
    Job::new(settings(world_size)).unwrap()
}

/// 1001 samples, batch 32, 3 epochs, a checkpoint every 4 steps: at world size 3,
/// floor(floor(1001 / 3) / 32) = 10 steps per epoch, 30 in all.
fn facts() -> v1::TrainingFacts {
    v1::TrainingFacts {
        num_samples: 1001,
        num_classes: 50,
        batch_size: 32,
        epochs: 3,
        max_steps: 0,
        checkpoint_every_steps: 4,
        keep_last: 2,
        seed: 7,
    }
}

fn register_req(device: &str, slot: Option<u32>, port: u16) -> v1::RegisterRequest {
    v1::RegisterRequest {
        api_version: 1,
        job_id: String::new(),
        host: "host-a".into(),
        pid: 100 + u32::from(port),
        device: device.into(),
        collective_addr: if device == "cpu" {
            format!("127.0.0.1:{port}")
        } else {
            String::new()
        },
        slot,
    }
}

fn register(job: &mut Job, slot: Option<u32>, port: u16) -> String {
    job.register(&register_req("cpu", slot, port), 1)
        .unwrap()
        .worker_id
}

fn join_req(id: &str, facts: v1::TrainingFacts) -> v1::JoinRequest {
    v1::JoinRequest {
        api_version: 1,
        worker_id: id.into(),
        facts: Some(facts),
        left_generation: 0,
    }
}

fn join(job: &mut Job, id: &str) -> Option<v1::JoinReply> {
    job.join(&join_req(id, facts()), 2).unwrap()
}

/// A formed job of `n` CPU workers without slots; ids by rank.
fn formed(n: u32) -> (Job, Vec<String>) {
    formed_with(settings(n), false)
}

/// A formed job of `settings`, its CPU workers in slots by rank if `slots`; ids by rank.
fn formed_with(settings: JobSettings, slots: bool) -> (Job, Vec<String>) {
    let n = settings.world_size;
    let mut job = Job::new(settings).unwrap();
    let ids: Vec<String> = (0..n)
        .map(|i| register(&mut job, slots.then_some(i), 4000 + i as u16))
        .collect();
    for id in &ids {
        join(&mut job, id);
    }
    assert_eq!(job.phase(), &JobPhase::Running);
    job.take_effects();
    (job, ids)
}

fn object(key: &str) -> v1::CheckpointObject {
    v1::CheckpointObject {
        key: key.into(),
        size: 3,
        sha256: "ab".repeat(32),
    }
}

fn ack(id: &str, rank: u32, step: u64) -> v1::CheckpointAckRequest {
    v1::CheckpointAckRequest {
        api_version: 1,
        worker_id: id.into(),
        generation: 1,
        step,
        epoch: step / 10,
        objects: vec![object(&format!("rank{rank}/model.safetensors"))],
        state_json: if rank == 0 {
            r#"{"loss_scale": 1.0}"#.into()
        } else {
            String::new()
        },
    }
}

/// Gives rank `id` of generation 1 the plan of `epoch`, as a rank asks before training it.
fn plan(job: &mut Job, id: &str, epoch: u64, now: Millis) -> v1::EpochPlan {
    let request = v1::EpochPlanRequest {
        api_version: 1,
        worker_id: id.into(),
        generation: 1,
        epoch,
    };
    job.epoch_plan(&request, now).unwrap()
}

/// Gives every rank of the current generation the plans of the epochs up to `step`'s, as
/// ranks that trained to `step` have had them (a checkpoint ack needs its epoch's plan).
fn trained_to(job: &mut Job, step: u64, now: Millis) {
    let g = job.generation().unwrap().clone();
    let last_epoch = (step - 1) / g.schedule.steps_per_epoch;
    for id in &g.members {
        for epoch in 0..=last_epoch {
            let request = v1::EpochPlanRequest {
                api_version: 1,
                worker_id: id.clone(),
                generation: g.number,
                epoch,
            };
            job.epoch_plan(&request, now).unwrap();
        }
    }
}

fn commits(effects: &[Effect]) -> Vec<&CommitRequest> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Commit(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn state(job: &Job) -> serde_json::Value {
    serde_json::to_value(job).unwrap()
}

/// Whether `effects` say worker `id` was lost.
fn lost(effects: &[Effect], id: &str) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::WorkerLost { worker_id, .. } if worker_id == id))
}

fn invalid_field(e: JobError) -> String {
    match e {
        JobError::InvalidArgument { field, .. } => field,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

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
fn nccl_rank0_publishes_the_id_and_others_get_it() {
    let mut job = job(2);
    let mut r = register_req("cuda:0", Some(0), 1);
    let a = job.register(&r, 1).unwrap().worker_id;
    r.device = "cuda:1".into();
    r.slot = Some(1);
    let b = job.register(&r, 1).unwrap().worker_id;
    join(&mut job, &a);
    let reply = join(&mut job, &b).unwrap();
    assert_eq!(reply.backend, v1::CollectiveBackend::Nccl as i32);
    assert!(reply.peers.is_empty());

    let get = v1::GetNcclIdRequest {
        api_version: 1,
        worker_id: b.clone(),
        generation: 1,
    };
    assert_eq!(job.nccl_id(&get, 3).unwrap(), None);
    let mut publish = v1::PublishNcclIdRequest {
        api_version: 1,
        worker_id: b.clone(),
        generation: 1,
        nccl_id: vec![9; 128],
    };
    let e = job.publish_nccl_id(&publish, 3).unwrap_err();
    assert!(
        matches!(e, JobError::FailedPrecondition(ref m) if m.contains("only rank 0")),
        "{e}"
    );
    publish.worker_id = a.clone();
    publish.nccl_id = vec![9; 64];
    assert_eq!(
        invalid_field(job.publish_nccl_id(&publish, 3).unwrap_err()),
        "nccl_id"
    );
    publish.nccl_id = vec![9; 128];
    job.publish_nccl_id(&publish, 3).unwrap();
    assert!(job
        .take_effects()
        .contains(&Effect::NcclIdPublished { generation: 1 }));
    assert_eq!(job.nccl_id(&get, 4).unwrap(), Some(vec![9; 128]));
    // The same id again is a harmless retry; another one is refused.
    job.publish_nccl_id(&publish, 5).unwrap();
    publish.nccl_id = vec![1; 128];
    assert!(matches!(
        job.publish_nccl_id(&publish, 5),
        Err(JobError::FailedPrecondition(_))
    ));
}

#[test]
fn nccl_calls_are_refused_on_the_cpu_backend() {
    let (mut job, ids) = formed(2);
    let get = v1::GetNcclIdRequest {
        api_version: 1,
        worker_id: ids[1].clone(),
        generation: 1,
    };
    assert!(
        matches!(job.nccl_id(&get, 3), Err(JobError::FailedPrecondition(m)) if m.contains("not NCCL"))
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
        matches!(&e, JobError::FailedPrecondition(m) if m.contains("wants 2 workers")),
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
fn registration_closes_once_the_generation_formed() {
    let (mut job, _) = formed(2);
    let e = job.register(&register_req("cpu", None, 9), 1).unwrap_err();
    assert!(
        matches!(&e, JobError::FailedPrecondition(m) if m.contains("already running")),
        "{e}"
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
fn schedule_math() {
    let f = Facts::from(&facts());
    let s = Schedule::new(&f, 3, 0).unwrap();
    assert_eq!((s.steps_per_epoch, s.total_steps), (10, 30));
    // Uneven: 1001 / 2 = 500 per rank, / 32 = 15.
    assert_eq!(Schedule::new(&f, 2, 0).unwrap().steps_per_epoch, 15);
    // 1001 / 1 / 32 = 31.
    assert_eq!(Schedule::new(&f, 1, 0).unwrap().total_steps, 93);
    // Caps: the config's max_steps and the CLI's, whichever is smaller.
    let capped = Facts { max_steps: 25, ..f };
    assert_eq!(Schedule::new(&capped, 3, 0).unwrap().total_steps, 25);
    assert_eq!(Schedule::new(&capped, 3, 12).unwrap().total_steps, 12);
    assert_eq!(Schedule::new(&f, 3, 100).unwrap().total_steps, 30);
    // Fewer samples per rank than one batch.
    let small = Facts {
        num_samples: 63,
        ..f
    };
    let e = Schedule::new(&small, 2, 0).unwrap_err();
    assert!(e.contains("31 per rank, fewer than one batch of 32"), "{e}");
    assert_eq!(Schedule::new(&small, 1, 0).unwrap().steps_per_epoch, 1);
    let huge = Facts {
        epochs: u64::MAX,
        ..f
    };
    assert!(Schedule::new(&huge, 1, 0)
        .unwrap_err()
        .contains("overflows"));
}

#[test]
fn an_impossible_schedule_fails_the_job_at_the_first_join() {
    let mut job = job(4);
    let a = register(&mut job, None, 1);
    let mut f = facts();
    f.num_samples = 100; // 25 per rank < 32
    let e = job.join(&join_req(&a, f), 2).unwrap_err();
    assert!(
        matches!(&e, JobError::FailedPrecondition(m) if m.contains("no training steps")),
        "{e}"
    );
    assert!(matches!(job.phase(), JobPhase::Failed { error } if error.contains("25 per rank")));
    assert!(job
        .take_effects()
        .iter()
        .any(|e| matches!(e, Effect::JobEnded(JobPhase::Failed { .. }))));
}

#[test]
fn epoch_plans_and_checkpoint_steps() {
    let mut job = job(3);
    let mut f = facts();
    f.max_steps = 25; // the last epoch is cut short
    let ids: Vec<String> = (0..3).map(|i| register(&mut job, None, 10 + i)).collect();
    for id in &ids {
        job.join(&join_req(id, f), 2).unwrap();
    }
    let plan = |job: &mut Job, rank: usize, epoch: u64| {
        job.epoch_plan(
            &v1::EpochPlanRequest {
                api_version: 1,
                worker_id: ids[rank].clone(),
                generation: 1,
                epoch,
            },
            3,
        )
    };
    let p = plan(&mut job, 1, 0).unwrap();
    assert_eq!((p.epoch, p.seed, p.rank, p.world_size), (0, 7, 1, 3));
    assert_eq!((p.first_step, p.end_step), (0, 10));
    assert_eq!(p.checkpoint_steps, [4, 8, 10]);
    let p = plan(&mut job, 2, 1).unwrap();
    assert_eq!((p.first_step, p.end_step, p.rank), (10, 20, 2));
    assert_eq!(p.checkpoint_steps, [12, 16, 20]);
    let p = plan(&mut job, 0, 2).unwrap();
    assert_eq!((p.first_step, p.end_step), (20, 25));
    assert_eq!(p.checkpoint_steps, [24, 25]);
    match plan(&mut job, 0, 3).unwrap_err() {
        JobError::OutOfRange { field, message } => {
            assert_eq!(field, "epoch");
            assert!(message.contains("past the end"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    let s = Schedule::new(
        &Facts {
            checkpoint_every_steps: 0,
            ..Facts::from(&facts())
        },
        3,
        0,
    )
    .unwrap();
    assert_eq!(s.checkpoint_steps(10, 20), [20]);
    assert!(s.is_checkpoint_step(20) && s.is_checkpoint_step(30));
    assert!(!s.is_checkpoint_step(0) && !s.is_checkpoint_step(15) && !s.is_checkpoint_step(40));
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

/// A rank acknowledges a checkpoint after training its step, which needs the plan of its
/// epoch: an ack for a step past every plan the rank was given is refused.
#[test]
fn a_checkpoint_of_a_step_never_planned_is_refused() {
    let (mut job, ids) = formed(2);
    let before = state(&job);
    let e = job.checkpoint_ack(&ack(&ids[0], 0, 4), 5).unwrap_err();
    assert!(
        e.to_string()
            .contains("has not been given the plan of its epoch"),
        "{e}"
    );
    assert_eq!(state(&job), before);
    // With the plan of epoch 0 (steps 1..=15 at two ranks), step 12 may be acked, 16 not.
    plan(&mut job, &ids[0], 0, 5);
    job.checkpoint_ack(&ack(&ids[0], 0, 12), 5).unwrap();
    let e = job.checkpoint_ack(&ack(&ids[0], 0, 16), 5).unwrap_err();
    assert!(e.to_string().contains("its plans reach step 15"), "{e}");
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
fn a_workers_error_text_reaches_the_log_on_one_line() {
    let (mut job, ids) = formed(2);
    let finish = v1::FinishRequest {
        api_version: 1,
        worker_id: ids[1].clone(),
        generation: 1,
        step: 3,
        error: format!("boom\nINFO job Finished\r\u{1b}[0m{}", "x".repeat(10_000)),
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

#[test]
fn checkpoint_commits_only_after_every_rank_acked() {
    let (mut job, ids) = formed(3);
    trained_to(&mut job, 4, 5);
    assert_eq!(
        job.checkpoint_ack(&ack(&ids[0], 0, 4), 5).unwrap(),
        v1::CheckpointAckReply { committed: false }
    );
    job.checkpoint_ack(&ack(&ids[2], 2, 4), 5).unwrap();
    assert!(commits(&job.take_effects()).is_empty());
    // A repeated ack changes nothing.
    job.checkpoint_ack(&ack(&ids[2], 2, 4), 5).unwrap();
    assert!(job.take_effects().is_empty());
    job.checkpoint_ack(&ack(&ids[1], 1, 4), 6).unwrap();
    let effects = job.take_effects();
    let c = commits(&effects);
    assert_eq!(c.len(), 1);
    let c = c[0].clone();
    assert_eq!(
        (c.run_id.as_str(), c.step, c.epoch, c.world_size),
        ("run", 4, 0, 3)
    );
    assert_eq!(c.keep_last, 2);
    assert_eq!(c.state_json, r#"{"loss_scale": 1.0}"#);
    let keys: Vec<(u32, &str)> = c.objects.iter().map(|o| (o.rank, o.key.as_str())).collect();
    assert_eq!(
        keys,
        [
            (0, "rank0/model.safetensors"),
            (1, "rank1/model.safetensors"),
            (2, "rank2/model.safetensors")
        ]
    );
    // Not committed until the service says so; another ack does not send a second commit.
    assert!(job.last_commit().is_none());
    job.checkpoint_ack(&ack(&ids[1], 1, 4), 6).unwrap();
    assert!(commits(&job.take_effects()).is_empty());

    job.commit_done(4, Ok("runs/run/ckpt/000000000004/MANIFEST.json".into()), 5);
    let effects = job.take_effects();
    assert!(effects.contains(&Effect::Persist));
    assert_eq!(job.last_commit().unwrap().step, 4);
    assert_eq!(job.status(7).last_checkpoint_step, 4);
    // A retry after a lost reply learns that it is committed.
    assert!(
        job.checkpoint_ack(&ack(&ids[0], 0, 4), 8)
            .unwrap()
            .committed
    );
}

#[test]
fn a_failed_commit_is_retried_by_a_repeated_ack() {
    let (mut job, ids) = formed(2);
    trained_to(&mut job, 12, 5);
    job.checkpoint_ack(&ack(&ids[0], 0, 12), 5).unwrap();
    job.checkpoint_ack(&ack(&ids[1], 1, 12), 5).unwrap();
    assert_eq!(commits(&job.take_effects()).len(), 1);
    job.commit_done(12, Err("disk full".into()), 5);
    assert!(job.last_commit().is_none());
    job.checkpoint_ack(&ack(&ids[1], 1, 12), 6).unwrap();
    assert_eq!(commits(&job.take_effects()).len(), 1);
    job.commit_done(12, Ok("m".into()), 5);
    assert_eq!(job.last_commit().unwrap().manifest, "m");
}

#[test]
fn checkpoint_acks_are_validated_without_changing_the_job() {
    let (mut job, ids) = formed(2);
    trained_to(&mut job, 8, 8);
    job.checkpoint_ack(&ack(&ids[0], 0, 8), 8).unwrap();
    job.take_effects();
    let before = state(&job);
    let err = |job: &mut Job, r: v1::CheckpointAckRequest| job.checkpoint_ack(&r, 6).unwrap_err();

    let mut r = ack(&ids[1], 1, 8);
    r.step = 3;
    let e = err(&mut job, r);
    assert!(
        e.to_string()
            .starts_with("step: 3 is not a checkpoint step"),
        "{e}"
    );
    r = ack(&ids[1], 1, 8);
    r.step = 0;
    assert_eq!(invalid_field(err(&mut job, r)), "step");
    r = ack(&ids[1], 1, 8);
    r.objects[0].sha256 = "xyz".into();
    assert_eq!(invalid_field(err(&mut job, r)), "objects[0].sha256");
    for bad in ["", "/abs", "a/../b", "a//b", "MANIFEST.json", "a\\b"] {
        r = ack(&ids[1], 1, 8);
        r.objects[0].key = bad.into();
        assert_eq!(invalid_field(err(&mut job, r)), "objects[0].key", "{bad:?}");
    }
    r = ack(&ids[1], 1, 8);
    r.objects.push(object("rank1/model.safetensors"));
    assert_eq!(invalid_field(err(&mut job, r)), "objects[1].key");
    r = ack(&ids[1], 1, 8);
    r.objects[0].key = "rank0/model.safetensors".into();
    let e = err(&mut job, r);
    assert!(e.to_string().contains("also listed by rank 0"), "{e}");
    r = ack(&ids[1], 1, 8);
    r.state_json = "{}".into();
    assert_eq!(invalid_field(err(&mut job, r)), "state_json");
    r = ack(&ids[1], 1, 8);
    r.state_json = "{not json".into();
    assert_eq!(invalid_field(err(&mut job, r)), "state_json");
    r = ack(&ids[1], 1, 8);
    r.epoch = 9;
    assert_eq!(invalid_field(err(&mut job, r)), "epoch");
    let mut r0 = ack(&ids[0], 0, 12);
    r0.state_json.clear();
    assert_eq!(invalid_field(err(&mut job, r0)), "state_json");
    let mut again = ack(&ids[0], 0, 8);
    again.objects[0].size = 4;
    assert!(
        matches!(err(&mut job, again), JobError::FailedPrecondition(m) if m.contains("already acknowledged"))
    );
    r = ack(&ids[1], 1, 8);
    r.generation = 3;
    assert!(matches!(err(&mut job, r), JobError::StaleGeneration { .. }));
    assert_eq!(state(&job), before);
}

#[test]
fn every_rank_finishing_finishes_the_job() {
    let (mut job, ids) = formed(2);
    let finish = |id: &str, step: u64, error: &str| v1::FinishRequest {
        api_version: 1,
        worker_id: id.into(),
        generation: 1,
        step,
        error: error.into(),
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
fn a_worker_error_fails_the_job_and_stops_the_others() {
    let (mut job, ids) = formed(3);
    job.finish(
        &v1::FinishRequest {
            api_version: 1,
            worker_id: ids[1].clone(),
            generation: 1,
            step: 3,
            error: "CUDA out of memory".into(),
        },
        5,
    )
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
fn snapshots_round_trip() {
    let (mut job, ids) = formed(2);
    trained_to(&mut job, 8, 5);
    job.checkpoint_ack(&ack(&ids[0], 0, 8), 5).unwrap();
    let json = serde_json::to_string(&job.snapshot(9)).unwrap();
    let back: JobSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back.format, SNAPSHOT_FORMAT);
    assert_eq!(state(&back.job), state(&job));
}

fn checkpoint_at(step: u64) -> CommittedCheckpoint {
    CommittedCheckpoint {
        step,
        epoch: step / 10,
        steps_per_epoch: 0,
        manifest: format!("runs/run/ckpt/{step:012}/MANIFEST.json"),
        folder_step: 0,
    }
}

/// Registers and joins `n` CPU workers; the first join's outcome.
fn join_all(job: &mut Job, n: u32) -> (Vec<String>, Result<Option<v1::JoinReply>>) {
    let ids: Vec<String> = (0..n)
        .map(|i| register(job, None, 4100 + i as u16))
        .collect();
    let first = job.join(&join_req(&ids[0], facts()), 2);
    if first.is_ok() {
        for id in &ids[1..] {
            join(job, id);
        }
    }
    (ids, first)
}

#[test]
fn a_resumed_job_hands_out_its_checkpoint_and_continues_the_schedule() {
    let mut job = Job::resume(settings(3), checkpoint_at(16), None).unwrap();
    assert_eq!(job.phase(), &JobPhase::Waiting);
    let status = job.status(3);
    assert_eq!(
        (status.step, status.last_checkpoint_step),
        (16, 16),
        "before the generation forms, the job is at its checkpoint"
    );
    let (ids, _) = join_all(&mut job, 3);
    let reply = join(&mut job, &ids[0]).unwrap();
    assert_eq!(
        (reply.resume_step, reply.resume_manifest.as_str()),
        (16, "runs/run/ckpt/000000000016/MANIFEST.json")
    );
    assert_eq!((reply.total_steps, reply.steps_per_epoch), (30, 10));
    assert_eq!(job.resume_step(), 16);
    assert!(job.take_effects().contains(&Effect::GenerationFormed {
        generation: 1,
        world_size: 3,
        data_world_size: 3,
        backend: Backend::Cpu,
        steps_per_epoch: 10,
        total_steps: 30,
        resume_step: 16,
    }));
    assert_eq!(
        job.status(3).step,
        16,
        "every rank starts at the checkpoint"
    );

    // Epoch 1 holds the checkpoint: its bounds stay, its checkpoints before it go.
    let plan = |job: &mut Job, epoch: u64| {
        job.epoch_plan(
            &v1::EpochPlanRequest {
                api_version: 1,
                worker_id: ids[0].clone(),
                generation: 1,
                epoch,
            },
            3,
        )
        .unwrap()
    };
    let p = plan(&mut job, 1);
    assert_eq!((p.first_step, p.end_step), (10, 20));
    assert_eq!(p.checkpoint_steps, [20]);
    assert_eq!(plan(&mut job, 2).checkpoint_steps, [24, 28, 30]);

    trained_to(&mut job, 20, 4);
    // The checkpoint itself counts as committed; older steps are refused.
    assert!(
        job.checkpoint_ack(&ack(&ids[1], 1, 16), 4)
            .unwrap()
            .committed
    );
    assert!(matches!(
        job.checkpoint_ack(&ack(&ids[1], 1, 12), 4),
        Err(JobError::FailedPrecondition(m)) if m.contains("older than the last committed")
    ));
    for (rank, id) in ids.iter().enumerate() {
        job.checkpoint_ack(&ack(id, rank as u32, 20), 5).unwrap();
    }
    let effects = job.take_effects();
    let c = commits(&effects);
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].step, c[0].keep_last), (20, 2));
    job.commit_done(20, Ok("m20".into()), 5);
    assert_eq!(job.status(6).last_checkpoint_step, 20);
    for id in &ids {
        job.finish(
            &v1::FinishRequest {
                api_version: 1,
                worker_id: id.clone(),
                generation: 1,
                step: 30,
                error: String::new(),
            },
            7,
        )
        .unwrap();
    }
    assert_eq!(job.phase(), &JobPhase::Finished);
}

#[test]
fn a_resumed_job_at_its_final_step_ends_at_the_first_join() {
    let mut job = Job::resume(settings(3), checkpoint_at(30), None).unwrap();
    assert_eq!(job.phase(), &JobPhase::Waiting, "no facts yet: no schedule");
    let (ids, first) = join_all(&mut job, 3);
    assert_eq!(first.unwrap_err(), JobError::JobOver("finished".into()));
    assert_eq!(job.phase(), &JobPhase::Finished);
    let status = job.status(3);
    assert_eq!(status.state, v1::JobState::Finished as i32);
    assert_eq!((status.step, status.total_steps), (30, 30));
    assert_eq!(status.last_checkpoint_step, 30);
    // Every other call is told the job is over.
    assert!(matches!(
        job.join(&join_req(&ids[1], facts()), 4),
        Err(JobError::JobOver(_))
    ));

    // Past the final step: failed, saying why.
    let mut job = Job::resume(settings(3), checkpoint_at(40), None).unwrap();
    let (_, first) = join_all(&mut job, 3);
    assert!(matches!(first, Err(JobError::JobOver(_))));
    match job.phase() {
        JobPhase::Failed { error } => {
            assert!(error.contains("step 40, past the final step 30"), "{error}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_resumed_job_decides_at_once_from_the_previous_jobs_facts() {
    // The previous coordinator of the run, with its facts.
    let (previous, _) = formed(3);

    let mut job = Job::resume(settings(3), checkpoint_at(30), Some(&previous)).unwrap();
    assert_eq!(job.phase(), &JobPhase::Finished);
    assert!(job.take_effects().is_empty());
    let status = job.status(1);
    assert_eq!(status.state, v1::JobState::Finished as i32);
    assert_eq!((status.step, status.total_steps), (30, 30));

    // Fewer steps done than the schedule has: waits for workers.
    let job = Job::resume(settings(3), checkpoint_at(20), Some(&previous)).unwrap();
    assert_eq!(job.phase(), &JobPhase::Waiting);
    // At another world size the schedule is recomputed: 2 ranks run 15 steps per epoch,
    // 45 in all, so step 30 is not the end.
    let job = Job::resume(settings(2), checkpoint_at(30), Some(&previous)).unwrap();
    assert_eq!(job.phase(), &JobPhase::Waiting);
    // A lower --max-steps ends it at once; past it, the job fails.
    let mut capped = settings(3);
    capped.max_steps = 30;
    let job = Job::resume(capped.clone(), checkpoint_at(30), Some(&previous)).unwrap();
    assert_eq!(job.phase(), &JobPhase::Finished);
    capped.max_steps = 24;
    let job = Job::resume(capped, checkpoint_at(30), Some(&previous)).unwrap();
    assert!(
        matches!(job.phase(), JobPhase::Failed { error } if error.contains("past the final step 24"))
    );
    // Another configuration may mean other facts: decided when the workers join.
    let mut other = settings(3);
    other.config_toml = "[train]\nepochs = 6\n".into();
    let job = Job::resume(other, checkpoint_at(30), Some(&previous)).unwrap();
    assert_eq!(job.phase(), &JobPhase::Waiting);
}

fn heartbeat_req(id: &str, generation: u64) -> v1::HeartbeatRequest {
    v1::HeartbeatRequest {
        api_version: 1,
        worker_id: id.into(),
        generation,
        step: 3,
    }
}

fn rejoin_req(id: &str, left: u64) -> v1::JoinRequest {
    v1::JoinRequest {
        left_generation: left,
        ..join_req(id, facts())
    }
}

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

/// A formed elastic job of 3 workers (at least 2, a grace of 30 s) whose rank 2 was lost
/// at t = 20 000 after the checkpoint at step 4 committed; ids by rank.
fn elastic_after_a_loss() -> (Job, Vec<String>) {
    let elastic = JobSettings {
        min_workers: 2,
        elastic_grace_ms: 30_000,
        ..settings(3)
    };
    let (mut job, ids) = formed_with(elastic, false);
    trained_to(&mut job, 4, 3);
    for (rank, id) in ids.iter().enumerate() {
        job.checkpoint_ack(&ack(id, rank as u32, 4), 3).unwrap();
    }
    job.commit_done(4, Ok("runs/run/ckpt/000000000004/MANIFEST.json".into()), 5);
    job.heartbeat(&heartbeat_req(&ids[0], 1), 15_000).unwrap();
    job.heartbeat(&heartbeat_req(&ids[1], 1), 15_000).unwrap();
    assert!(job.expire_silent(20_000));
    assert_eq!(job.phase(), &JobPhase::Waiting);
    job.take_effects();
    (job, ids)
}

/// `waiting` long-poll their Join (answered again every second, which keeps them fresh)
/// while the coordinator's clock ticks from `from` to `to` ms.
fn wait_joined(job: &mut Job, waiting: &[&String], from: Millis, to: Millis) {
    for now in (from..=to).step_by(1000) {
        for id in waiting {
            job.join(&rejoin_req(id, 1), now).unwrap();
        }
        job.tick(now);
    }
}

#[test]
fn an_elastic_job_continues_with_fewer_ranks_after_the_grace_period() {
    let (mut job, ids) = elastic_after_a_loss();
    // Within the grace period the job waits for a replacement.
    wait_joined(&mut job, &[&ids[0], &ids[1]], 20_100, 49_100);
    assert_eq!(job.phase(), &JobPhase::Waiting);
    job.tick(50_000);
    assert_eq!(job.phase(), &JobPhase::Running);
    let effects = job.take_effects();
    assert!(effects.contains(&Effect::GenerationFormed {
        generation: 2,
        world_size: 2,
        data_world_size: 3,
        backend: Backend::Cpu,
        steps_per_epoch: 10,
        total_steps: 30,
        resume_step: 4,
    }));
    // Two ranks hold the three data shards; the schedule is the full job's.
    let reply = job.join(&rejoin_req(&ids[1], 1), 50_001).unwrap().unwrap();
    assert_eq!(
        (
            reply.generation,
            reply.rank,
            reply.world_size,
            reply.data_world_size
        ),
        (2, 1, 2, 3)
    );
    assert_eq!((reply.steps_per_epoch, reply.total_steps), (10, 30));
    assert_eq!(reply.resume_step, 4);
    // Checkpoints commit with the two ranks' acks.
    trained_to(&mut job, 8, 50_100);
    for rank in 0..2u32 {
        let a = v1::CheckpointAckRequest {
            generation: 2,
            ..ack(&ids[rank as usize], rank, 8)
        };
        job.checkpoint_ack(&a, 50_100).unwrap();
    }
    assert_eq!(commits(&job.take_effects())[0].world_size, 2);
}

#[test]
fn an_elastic_job_never_goes_below_min_workers() {
    let (mut job, ids) = elastic_after_a_loss();
    // Rank 1 never comes back: one worker is fewer than min_workers = 2.
    wait_joined(&mut job, &[&ids[0]], 20_100, 60_100);
    assert_eq!(job.phase(), &JobPhase::Waiting);
    // A replacement makes two: the job goes on with them.
    let replacement = register(&mut job, None, 4010);
    assert!(job
        .join(&join_req(&replacement, facts()), 60_100)
        .unwrap()
        .is_some());
    assert_eq!(job.generation().unwrap().world_size(), 2);
}

#[test]
fn a_replacement_within_the_grace_period_restores_the_full_size() {
    let (mut job, ids) = elastic_after_a_loss();
    job.join(&rejoin_req(&ids[0], 1), 20_100).unwrap();
    job.join(&rejoin_req(&ids[1], 1), 20_100).unwrap();
    let replacement = register(&mut job, None, 4010);
    let reply = job
        .join(&join_req(&replacement, facts()), 21_000)
        .unwrap()
        .expect("formed at once");
    assert_eq!((reply.world_size, reply.data_world_size), (3, 3));
}

#[test]
fn a_smaller_generation_grows_at_its_next_checkpoint_without_spending_a_restart() {
    let (mut job, ids) = elastic_after_a_loss();
    wait_joined(&mut job, &[&ids[0], &ids[1]], 20_100, 50_100);
    assert_eq!(job.generation().unwrap().world_size(), 2);
    job.take_effects();

    // A worker arrives while the smaller generation trains: it is taken, and waits.
    let newcomer = register(&mut job, None, 4010);
    assert!(job
        .join(&join_req(&newcomer, facts()), 51_000)
        .unwrap()
        .is_none());
    assert_eq!(job.phase(), &JobPhase::Running);
    // The next checkpoint commits, and the generation ends there to grow.
    trained_to(&mut job, 8, 52_000);
    for rank in 0..2u32 {
        let a = v1::CheckpointAckRequest {
            generation: 2,
            ..ack(&ids[rank as usize], rank, 8)
        };
        job.checkpoint_ack(&a, 52_000).unwrap();
    }
    job.take_effects();
    job.commit_done(
        8,
        Ok("runs/run/ckpt/000000000008/MANIFEST.json".into()),
        52_001,
    );
    assert_eq!(job.phase(), &JobPhase::Waiting);
    let effects = job.take_effects();
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::GenerationEnded { generation: 2, restart: None, reason, .. }
            if reason.contains("growing from 2 to 3 ranks at the checkpoint of step 8")
    )));
    let reply = job.heartbeat(&heartbeat_req(&ids[0], 2), 52_100).unwrap();
    assert_eq!(reply.action, v1::WorkerAction::Rejoin as i32);
    // The ranks join again, and generation 3 forms with all three from step 8.
    assert!(job.join(&rejoin_req(&ids[0], 2), 52_200).unwrap().is_none());
    let reply = job
        .join(&rejoin_req(&ids[1], 2), 52_200)
        .unwrap()
        .expect("every registered worker has joined");
    assert_eq!(
        (reply.generation, reply.world_size, reply.data_world_size),
        (3, 3, 3)
    );
    assert_eq!(reply.resume_step, 8);
    // Only the loss spent a restart; growing did not.
    assert_eq!(state(&job)["restarts"], 1);
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
fn waiting_workers_that_go_silent_are_forgotten_without_a_restart() {
    let (mut job, ids) = elastic_after_a_loss();
    job.join(&rejoin_req(&ids[0], 1), 20_100).unwrap();
    job.join(&rejoin_req(&ids[1], 1), 25_000).unwrap();
    // Worker 0's long poll stopped being refreshed at 20 100: it hung up or died.
    assert!(!job.expire_waiting(30_100));
    assert!(job.expire_waiting(30_101));
    let effects = job.take_effects();
    assert!(lost(&effects, &ids[0]));
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::GenerationEnded { .. })));
    assert_eq!(job.registered_count(), 1);
    // Its place is free again.
    register(&mut job, None, 4020);
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
