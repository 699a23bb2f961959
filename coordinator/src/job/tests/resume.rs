//! Jobs resumed from a committed checkpoint: what the first generation gets, and jobs that
//! have nothing left to train.

use super::*;

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
        live: None,
        not_live: None,
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
                retryable: false,
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
