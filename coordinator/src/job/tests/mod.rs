//! Tests of the job, one file per concern like the module itself; the helpers here build
//! jobs, requests and formed generations for all of them.

use super::*;

mod checkpoints;
mod elastic;
mod finish;
mod generations;
mod live;
mod membership;
mod progress;
mod resume;
mod schedule;
mod snapshots;
mod training;

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
        live: None,
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

/// Rank 0's run state (`lgaf_store::RunState`) of a job of `data_world_size` shards and
/// `steps_per_epoch` steps an epoch.
fn run_state_json(data_world_size: u32, steps_per_epoch: u64) -> String {
    let state = lgaf_store::RunState::new(
        data_world_size,
        steps_per_epoch,
        1.0,
        0,
        serde_json::json!({}),
    );
    serde_json::to_string(&state).unwrap()
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
            run_state_json(3, 10)
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

fn heartbeat_req(id: &str, generation: u64) -> v1::HeartbeatRequest {
    v1::HeartbeatRequest {
        api_version: 1,
        worker_id: id.into(),
        generation,
        step: 3,
    }
}

/// Trains `job`'s generation 1 to `trained` with a checkpoint committed at step 4, then
/// loses rank 2 at t = 20 000 (ranks 0 and 1 heard from at 15 000), effects drained.
fn lose_rank_2_after_a_commit_at_4(job: &mut Job, ids: &[String], trained: u64) {
    trained_to(job, trained, 3);
    for (rank, id) in ids.iter().enumerate() {
        job.checkpoint_ack(&ack(id, rank as u32, 4), 3).unwrap();
    }
    job.commit_done(4, Ok("runs/run/ckpt/000000000004/MANIFEST.json".into()), 5);
    job.heartbeat(&heartbeat_req(&ids[0], 1), 15_000).unwrap();
    job.heartbeat(&heartbeat_req(&ids[1], 1), 15_000).unwrap();
    assert!(job.expire_silent(20_000));
    assert_eq!(job.phase(), &JobPhase::Waiting);
    job.take_effects();
}

fn rejoin_req(id: &str, left: u64) -> v1::JoinRequest {
    v1::JoinRequest {
        left_generation: left,
        ..join_req(id, facts())
    }
}
