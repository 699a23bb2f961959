//! The tasks a simulated rank runs beside its steps, as the real worker's threads do: the
//! heartbeat loop of a generation, and the acknowledgement of one checkpoint (its objects
//! written into the store first, as the background uploader does).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lgaf_proto::v1::{self, WorkerAction};
use lgaf_proto::API_VERSION;
use lgaf_store::RunStore;
use tokio::sync::watch;
use tonic::{Code, Response, Status};

use crate::sim_worker::{AckRecord, Placement, Stub, Swarm, RATE_WITHIN};

/// A factor in [0.5, 1.5) from the worker and the time, so that refused workers do not all
/// come back in the same millisecond.
pub fn jitter(pid: u32, at: Instant) -> f64 {
    let nanos = at.elapsed().as_nanos() as u64 ^ (u64::from(pid) << 20);
    let mixed = nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    0.5 + (mixed as f64 / (1u64 << 53) as f64)
}

/// The heartbeat loop of one generation: every interval (after the answer, as the real
/// worker's thread), bounded by max(interval, deadline / 4); REJOIN (or ABORTED) is passed
/// on through `rejoin`; STOP or silence ends it.
pub async fn heartbeat(
    swarm: Arc<Swarm>,
    stub: Stub,
    place: Placement,
    registered: v1::RegisterReply,
    generation: u64,
    step: Arc<AtomicU64>,
    rejoin: watch::Sender<Option<Instant>>,
) {
    let interval = Duration::from_millis(u64::from(registered.heartbeat_interval_ms).max(10));
    let limit = interval.max(Duration::from_millis(
        u64::from(registered.heartbeat_deadline_ms) / 4,
    ));
    let silence = swarm.silence();
    loop {
        if place.goes_silent && *silence.borrow() {
            return;
        }
        let request = v1::HeartbeatRequest {
            api_version: API_VERSION,
            worker_id: registered.worker_id.clone(),
            generation,
            step: step.load(Ordering::SeqCst),
        };
        let sent = Instant::now();
        let mut c = stub.clone();
        let outcome = match tokio::time::timeout(limit, c.heartbeat(request)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Status::deadline_exceeded("heartbeat: no answer in time")),
        };
        swarm
            .recorder
            .record("Heartbeat", sent, outcome.as_ref().map(|_| ()));
        match outcome.map(Response::into_inner) {
            Ok(reply) => match reply.action() {
                WorkerAction::Rejoin => {
                    rejoin.send_replace(Some(Instant::now()));
                    return;
                }
                WorkerAction::Stop => return,
                _ => {}
            },
            Err(s) if s.code() == Code::Aborted => {
                rejoin.send_replace(Some(Instant::now()));
                return;
            }
            Err(_) => {}
        }
        tokio::time::sleep(interval).await;
    }
}

/// Writes this rank's checkpoint objects into the store (rank 0: the model and optimizer;
/// every rank: its classifier part), then acknowledges them; rank 0 adds the run state.
pub async fn acknowledge(
    swarm: Arc<Swarm>,
    stub: Stub,
    store: RunStore,
    (worker_id, generation, rank, world_size): (String, u64, u32, u32),
    (step, epoch): (u64, u64),
    steps_per_epoch: u64,
) -> Result<AckRecord, String> {
    let mut keys = vec![format!("classifier/rank-{rank:05}.safetensors")];
    if rank == 0 {
        keys.push("model.safetensors".into());
        keys.push("optimizer.safetensors".into());
    }
    let mut objects = Vec::new();
    for key in keys {
        let bytes = Bytes::from(format!("step {step} rank {rank} {key}").repeat(8));
        let info = store
            .put_object(step, &key, bytes)
            .await
            .map_err(|e| format!("{worker_id}: writing {key} of step {step}: {e}"))?;
        objects.push(v1::CheckpointObject {
            key: info.key,
            size: info.size,
            sha256: info.sha256,
        });
    }
    let state_json = if rank == 0 {
        let state =
            lgaf_store::RunState::new(world_size, steps_per_epoch, 1.0, 0, serde_json::json!({}));
        serde_json::to_string(&state).map_err(|e| format!("the run state: {e}"))?
    } else {
        String::new()
    };
    let request = v1::CheckpointAckRequest {
        api_version: API_VERSION,
        worker_id: worker_id.clone(),
        generation,
        step,
        epoch,
        objects,
        state_json,
    };
    let sent = Instant::now();
    let mut pause = Duration::from_millis(50);
    let reply = loop {
        let attempt = Instant::now();
        let mut c = stub.clone();
        let outcome = c.checkpoint_ack(request.clone()).await;
        swarm
            .recorder
            .record("CheckpointAck", attempt, outcome.as_ref().map(|_| ()));
        match outcome {
            Ok(reply) => break reply.into_inner(),
            Err(s) if s.code() == Code::ResourceExhausted && sent.elapsed() < RATE_WITHIN => {
                tokio::time::sleep(pause.mul_f64(jitter(rank, attempt))).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(s) => {
                return Err(format!(
                    "{worker_id} (rank {rank}): CheckpointAck of {step}: {s}"
                ))
            }
        }
    };
    Ok(AckRecord {
        generation,
        step,
        sent,
        answered: Instant::now(),
        committed: reply.committed,
    })
}
