//! Elastic jobs: continuing with fewer ranks after the grace period, never below
//! min_workers, and growing again at the next checkpoint.

use super::*;

/// A formed elastic job of 3 workers (at least 2, a grace of 30 s) whose rank 2 was lost
/// at t = 20 000 after the checkpoint at step 4 committed; ids by rank.
fn elastic_after_a_loss() -> (Job, Vec<String>) {
    let elastic = JobSettings {
        min_workers: 2,
        elastic_grace_ms: 30_000,
        ..settings(3)
    };
    let (mut job, ids) = formed_with(elastic, false);
    lose_rank_2_after_a_commit_at_4(&mut job, &ids, 4);
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
        live: None,
        not_live: Some(
            "no rank of generation 1 offered its state (none survived, or \
             checkpoint.live_recovery is off)"
                .into()
        ),
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
