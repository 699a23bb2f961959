//! Live recovery: a generation after a loss starts from the survivors' state when their
//! offers hold every classifier shard at a step not older than the last checkpoint, and
//! from the checkpoint otherwise, saying why.

use super::*;

/// A job of 3 whose rank 2 was lost at t = 20 000 after the checkpoint at step 4; a
/// replacement has registered (not joined). Ids by rank, the replacement's last.
fn after_a_loss() -> (Job, Vec<String>) {
    let (mut job, mut ids) = formed(3);
    lose_rank_2_after_a_commit_at_4(&mut job, &ids, 8);
    ids[2] = register(&mut job, None, 4010);
    job.take_effects();
    (job, ids)
}

fn offer(generation: u64, step: u64, shards: &[u32]) -> v1::LiveOffer {
    v1::LiveOffer {
        generation,
        world_size: 3,
        step,
        shards: shards.to_vec(),
    }
}

fn rejoin_with(id: &str, live: v1::LiveOffer) -> v1::JoinRequest {
    v1::JoinRequest {
        live: Some(live),
        ..rejoin_req(id, 1)
    }
}

/// Joins the survivors with `offers` and the replacement without; returns the formed
/// generation's effect and every rank's reply.
fn form(job: &mut Job, ids: &[String], offers: [v1::LiveOffer; 2]) -> (Effect, Vec<v1::JoinReply>) {
    for (id, offer) in ids.iter().zip(offers) {
        job.join(&rejoin_with(id, offer), 21_000).unwrap();
    }
    job.join(&join_req(&ids[2], facts()), 21_000).unwrap();
    assert_eq!(job.phase(), &JobPhase::Running);
    let formed = formed_effect(job);
    let replies = ids
        .iter()
        .map(|id| job.join(&join_req(id, facts()), 21_001).unwrap().unwrap())
        .collect();
    (formed, replies)
}

/// The survivors join again offering nothing, and the replacement joins.
fn form_without_offers(job: &mut Job, ids: &[String]) {
    for id in &ids[..2] {
        job.join(&rejoin_req(id, 1), 21_000).unwrap();
    }
    job.join(&join_req(&ids[2], facts()), 21_000).unwrap();
}

/// The effect of the generation that just formed.
fn formed_effect(job: &mut Job) -> Effect {
    job.take_effects()
        .into_iter()
        .find(|e| matches!(e, Effect::GenerationFormed { .. }))
        .expect("a generation formed")
}

fn not_live(effect: &Effect) -> String {
    match effect {
        Effect::GenerationFormed {
            live: None,
            not_live: Some(why),
            ..
        } => why.clone(),
        other => panic!("expected a start from the checkpoint, got {other:?}"),
    }
}

#[test]
fn survivors_holding_every_shard_start_the_next_generation_at_their_step() {
    let (mut job, ids) = after_a_loss();
    // Rank 0 holds shards 0 and 1 (its replica), rank 1 shards 1 and 2: shard 2, whose
    // owner was lost, survives as rank 1's replica.
    let (formed, replies) = form(&mut job, &ids, [offer(1, 7, &[0, 1]), offer(1, 7, &[1, 2])]);
    let live = match formed {
        Effect::GenerationFormed {
            live: Some(live),
            not_live: None,
            resume_step: 0,
            ..
        } => live,
        other => panic!("expected a live start, got {other:?}"),
    };
    assert_eq!(
        (live.step, live.source_generation, live.source_world_size),
        (7, 1, 3)
    );
    assert_eq!(live.state_rank, 0);
    assert_eq!(live.shard_ranks, vec![0, 0, 1]);
    for reply in &replies {
        assert_eq!(reply.live, Some(live.to_proto()));
        assert_eq!((reply.resume_step, reply.resume_manifest.as_str()), (0, ""));
    }
    // Every rank starts at step 7; its checkpoints are the schedule's after it.
    assert_eq!(job.status(3).step, 7);
    let request = v1::EpochPlanRequest {
        api_version: 1,
        worker_id: ids[2].clone(),
        generation: 2,
        epoch: 0,
    };
    let next = job.epoch_plan(&request, 21_002).unwrap();
    assert_eq!(next.checkpoint_steps, vec![8, 10]);
}

#[test]
fn a_shard_lost_with_its_owner_and_its_replica_falls_back_to_the_checkpoint() {
    let (mut job, ids) = after_a_loss();
    // Both survivors hold only shards 0 and 1 (say rank 1's replica was of another run).
    let (formed, replies) = form(&mut job, &ids, [offer(1, 7, &[0, 1]), offer(1, 7, &[1])]);
    let why = not_live(&formed);
    assert!(why.contains("lack classifier shard(s) 2 of 3"), "{why}");
    assert_eq!(replies[0].resume_step, 4);
    assert_eq!(replies[0].live, None);
}

#[test]
fn survivors_at_different_steps_are_not_mixed() {
    let (mut job, ids) = after_a_loss();
    // Rank 1 completed step 8, rank 0 did not: neither group holds every shard alone.
    let (formed, _) = form(&mut job, &ids, [offer(1, 7, &[0, 1]), offer(1, 8, &[1, 2])]);
    let why = not_live(&formed);
    assert!(
        why.contains("at step 7") && why.contains("at step 8"),
        "{why}"
    );
}

#[test]
fn a_state_older_than_the_last_checkpoint_is_not_taken() {
    let (mut job, ids) = after_a_loss();
    let (formed, replies) = form(&mut job, &ids, [offer(1, 3, &[0, 1]), offer(1, 3, &[1, 2])]);
    let why = not_live(&formed);
    assert!(why.contains("older than the checkpoint at step 4"), "{why}");
    assert_eq!(replies[1].resume_step, 4);
}

#[test]
fn no_offer_after_a_loss_says_so() {
    let (mut job, ids) = after_a_loss();
    form_without_offers(&mut job, &ids);
    let formed = formed_effect(&mut job);
    assert!(not_live(&formed).contains("no rank of generation 1 offered its state"));
}

#[test]
fn offers_from_before_a_start_from_the_checkpoint_are_ignored() {
    let (mut job, ids) = after_a_loss();
    // Generation 2 starts from the checkpoint (no offers): a new lineage.
    form_without_offers(&mut job, &ids);
    assert_eq!(job.generation().unwrap().number, 2);
    // It loses a rank too; the survivors offer what they held of generation 1.
    for id in &ids {
        job.heartbeat(&heartbeat_req(id, 2), 30_000).unwrap();
    }
    job.join(&rejoin_req(&ids[0], 2), 30_001).unwrap();
    job.take_effects();
    let stale = [offer(1, 7, &[0, 1]), offer(1, 7, &[1, 2])];
    job.join(&rejoin_with(&ids[0], stale[0].clone()), 30_002)
        .unwrap();
    job.join(&rejoin_with(&ids[1], stale[1].clone()), 30_002)
        .unwrap();
    job.join(&rejoin_req(&ids[2], 2), 30_002).unwrap();
    let formed = formed_effect(&mut job);
    let why = not_live(&formed);
    assert!(
        why.contains("offers of generations before 2 were ignored") && why.contains(&ids[0]),
        "{why}"
    );
}

#[test]
fn an_offer_that_cannot_be_a_ranks_state_is_ignored_naming_its_field() {
    let (mut job, ids) = after_a_loss();
    let bad = [
        (offer(1, 7, &[3]), "live.shards"),
        (offer(1, 7, &[]), "live.shards"),
        (offer(2, 7, &[0]), "live.generation"),
        (offer(0, 7, &[0]), "live.generation"),
        (
            v1::LiveOffer {
                world_size: 0,
                ..offer(1, 7, &[0])
            },
            "live.world_size",
        ),
    ];
    for (live, field) in bad {
        job.join(&rejoin_with(&ids[0], live), 21_000).unwrap();
        let ignored = job.take_effects().into_iter().find_map(|e| match e {
            Effect::OfferIgnored { worker_id, reason } => Some((worker_id, reason)),
            _ => None,
        });
        let (worker, reason) = ignored.expect("the offer is ignored, the Join answered");
        assert_eq!(worker, ids[0]);
        assert!(reason.contains(field), "{reason}");
        assert!(job.workers().all(|w| w.id != ids[0] || w.offer.is_none()));
    }
}

#[test]
fn a_live_generation_survives_a_snapshot() {
    let (mut job, ids) = after_a_loss();
    form(&mut job, &ids, [offer(1, 7, &[0, 1]), offer(1, 7, &[1, 2])]);
    let saved = state(&job);
    let back: Job = serde_json::from_value(saved.clone()).unwrap();
    assert_eq!(state(&back), saved);
    assert_eq!(back.generation().unwrap().live.as_ref().unwrap().step, 7);
}

#[test]
fn survivors_past_the_last_step_without_its_checkpoint_go_back_to_the_checkpoint() {
    let (mut job, ids) = after_a_loss();
    // 30 steps in all: a generation from step 30 would never write the final checkpoint.
    let (formed, _) = form(
        &mut job,
        &ids,
        [offer(1, 30, &[0, 1]), offer(1, 30, &[1, 2])],
    );
    let why = not_live(&formed);
    assert!(why.contains("completed the run's last step (30)"), "{why}");
}

#[test]
fn a_source_whose_transfer_failed_is_not_taken_again() {
    let (mut job, ids) = after_a_loss();
    let offers = [offer(1, 7, &[0, 1]), offer(1, 7, &[1, 2])];
    form(&mut job, &ids, offers.clone());
    // Generation 2 fails before any rank trains past step 7 (the transfer died): its
    // survivors hold only generation 1's state still, and offer it again.
    for (id, live) in ids.iter().zip(offers) {
        let again = v1::JoinRequest {
            live: Some(live),
            ..rejoin_req(id, 2)
        };
        job.join(&again, 22_000).unwrap();
    }
    job.join(&rejoin_req(&ids[2], 2), 22_000).unwrap();
    let formed = formed_effect(&mut job);
    let why = not_live(&formed);
    assert!(
        why.contains("offers of generations before 2 were ignored"),
        "{why}"
    );
    assert_eq!(job.generation().unwrap().resume_step, 4);
}
