//! Checkpoint acks and commits: a commit only once every rank acked, retried after a
//! failure, and acks refused without changing the job.

use super::*;

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
    assert_eq!(c.state_json, run_state_json(3, 10));
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
    job.commit_done(12, Err(CommitError("disk full".into())), 5);
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
    // Rank 0's state is a whole run state (lgaf_store::RunState).
    let mut no_version: serde_json::Value = serde_json::from_str(&run_state_json(3, 10)).unwrap();
    no_version.as_object_mut().unwrap().remove("version");
    for state in [
        "{not json".to_string(),
        r#"{"loss_scale": 1.0}"#.to_string(),
        no_version.to_string(),
    ] {
        let mut r0 = ack(&ids[0], 0, 8);
        r0.state_json = state.clone();
        assert_eq!(invalid_field(err(&mut job, r0)), "state_json", "{state}");
    }
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

/// A commit that lands after its generation ended (the store was slow, and a rank was lost
/// meanwhile) still counts: every rank acknowledged it. The next generation, formed before
/// it landed, resumed from the commit before and retrains past it; its acks of steps the
/// late commit covers are answered without a second commit, and not refused (which would
/// fail the job), and its later checkpoints commit as usual.
#[test]
fn a_generation_retraining_past_a_late_commit_has_its_acks_answered() {
    let (mut job, ids) = formed_with(settings(2), true);
    trained_to(&mut job, 8, 5);
    for step in [4, 8] {
        job.checkpoint_ack(&ack(&ids[0], 0, step), 5).unwrap();
        job.checkpoint_ack(&ack(&ids[1], 1, step), 5).unwrap();
    }
    assert_eq!(commits(&job.take_effects()).len(), 2);

    // Rank 1 dies while both commits are being written; generation 2 forms from scratch.
    assert!(job.local_worker_exited(1, "was killed by SIGKILL", 6));
    let replacement = register(&mut job, Some(1), 4001);
    job.join(&rejoin_req(&ids[0], 1), 7).unwrap();
    let joined = job
        .join(&join_req(&replacement, facts()), 7)
        .unwrap()
        .unwrap();
    assert_eq!((joined.generation, joined.resume_step), (2, 0));
    job.commit_done(4, Ok("runs/run/ckpt/000000000004/MANIFEST.json".into()), 8);
    job.commit_done(8, Ok("runs/run/ckpt/000000000008/MANIFEST.json".into()), 8);
    assert_eq!(job.last_commit().unwrap().step, 8);
    job.take_effects();

    let g = job.generation().unwrap().clone();
    trained_to(&mut job, 12, 9);
    let ack_in_2 = |id: &String, rank: usize, step: u64| {
        let mut ack = ack(id, rank as u32, step);
        ack.generation = 2;
        ack
    };
    for (rank, id) in g.members.iter().enumerate() {
        // Superseded by the late commit of step 8; step 8 itself is committed.
        assert!(
            !job.checkpoint_ack(&ack_in_2(id, rank, 4), 9)
                .unwrap()
                .committed
        );
        assert!(
            job.checkpoint_ack(&ack_in_2(id, rank, 8), 9)
                .unwrap()
                .committed
        );
    }
    assert!(commits(&job.take_effects()).is_empty());
    assert_eq!(job.phase(), &JobPhase::Running);

    for (rank, id) in g.members.iter().enumerate() {
        job.checkpoint_ack(&ack_in_2(id, rank, 12), 10).unwrap();
    }
    assert_eq!(commits(&job.take_effects())[0].step, 12);
}
