//! What a formed generation's ranks ask for: the NCCL id, and epoch plans with their
//! checkpoint steps.

use super::*;

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
