//! A coordinator served in-process on loopback, and workers that follow the protocol like
//! the real one (without training): register, join, epoch plans, heartbeats, progress,
//! checkpoint objects uploaded with `RunStore::put_object` and acknowledged, finish.

#![allow(dead_code)]

pub mod process;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use lgaf_coordinator::{
    serve, stored_run, CoordinatorService, Job, JobSettings, RunStore, ServiceOptions, Store,
};
use lgaf_proto::v1;
use lgaf_proto::v1::coordinator_client::CoordinatorClient;
use lgaf_store::Manifest;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Status};

pub type Service = CoordinatorService<RunStore, RunStore>;

/// The run every test job uses.
pub const RUN: &str = "test-run";

/// The store of run [`RUN`] in a local directory.
pub fn dir_store(dir: &Path) -> RunStore {
    RunStore::new(Store::from_url(dir.to_str().unwrap()).unwrap(), RUN).unwrap()
}

pub struct Server {
    pub url: String,
    pub service: Service,
    pub store: RunStore,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn settings(world_size: u32, store: &RunStore) -> JobSettings {
    JobSettings {
        job_id: "test-job".into(),
        run_id: store.run_id().into(),
        instance: "t".into(),
        world_size,
        min_workers: 0,
        elastic_grace_ms: 0,
        max_steps: 0,
        config_toml: "[train]\nepochs = 2\n".into(),
        store_url: store.store().url().into(),
        heartbeat_interval_ms: 100,
        heartbeat_deadline_ms: 5_000,
        collective_timeout_ms: 1000,
        max_restarts: 2,
    }
}

/// A new job on `store`.
pub async fn start(settings: JobSettings, store: &RunStore, long_poll: Duration) -> Server {
    serve_job(Job::new(settings).unwrap(), store, long_poll).await
}

/// The job as the binary opens it: resumed from the newest committed checkpoint of the run
/// if there is one.
pub async fn start_or_resume(
    settings: JobSettings,
    store: &RunStore,
    long_poll: Duration,
) -> Server {
    let stored = stored_run(store).await.unwrap();
    let job = match stored.resume {
        Some(from) => Job::resume(settings, from, stored.previous.as_ref().map(|p| &p.job)),
        None => Job::new(settings),
    };
    serve_job(job.unwrap(), store, long_poll).await
}

pub async fn serve_job(job: Job, store: &RunStore, long_poll: Duration) -> Server {
    let service = CoordinatorService::new(
        job,
        store.clone(),
        store.clone(),
        ServiceOptions {
            long_poll_max: long_poll,
            ..ServiceOptions::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(serve(
        listener,
        service.clone(),
        Default::default(),
        async {
            let _ = rx.await;
        },
    ));
    Server {
        url: format!("http://{addr}"),
        service,
        store: store.clone(),
        shutdown: Some(tx),
    }
}

pub async fn client(url: &str) -> CoordinatorClient<Channel> {
    CoordinatorClient::connect(url.to_string()).await.unwrap()
}

/// 1001 samples, batch 32, 2 epochs, a checkpoint every 4 steps, all checkpoints kept: at
/// world size 3, floor(floor(1001 / 3) / 32) = 10 steps per epoch, 20 in all.
pub fn facts() -> v1::TrainingFacts {
    v1::TrainingFacts {
        num_samples: 1001,
        num_classes: 40,
        batch_size: 32,
        epochs: 2,
        max_steps: 0,
        checkpoint_every_steps: 4,
        keep_last: 0,
        seed: 11,
    }
}

pub fn register_request(slot: Option<u32>, port: u16) -> v1::RegisterRequest {
    v1::RegisterRequest {
        api_version: 1,
        job_id: String::new(),
        host: "test-host".into(),
        pid: std::process::id(),
        device: "cpu".into(),
        collective_addr: format!("127.0.0.1:{port}"),
        slot,
    }
}

/// A registered (and possibly joined) test worker.
pub struct TestWorker {
    pub client: CoordinatorClient<Channel>,
    pub id: String,
    pub reply: v1::RegisterReply,
    pub join: Option<v1::JoinReply>,
    /// The run's store, opened from the URL and run id the coordinator handed out.
    pub store: RunStore,
    /// The end of the last epoch plan asked for in this generation.
    planned_to: AtomicU64,
}

impl TestWorker {
    pub async fn register(url: &str, slot: Option<u32>, port: u16) -> TestWorker {
        Self::register_with_env(url, slot, port, &HashMap::new()).await
    }

    /// `env`: the AWS_* settings an S3 store needs (a real worker reads its environment).
    pub async fn register_with_env(
        url: &str,
        slot: Option<u32>,
        port: u16,
        env: &HashMap<String, String>,
    ) -> TestWorker {
        let mut client = client(url).await;
        let reply = client
            .register(register_request(slot, port))
            .await
            .unwrap()
            .into_inner();
        let store = RunStore::new(
            Store::from_url_with_env(&reply.store_url, env).unwrap(),
            &reply.run_id,
        )
        .unwrap();
        TestWorker {
            client,
            id: reply.worker_id.clone(),
            reply,
            join: None,
            store,
            planned_to: AtomicU64::new(0),
        }
    }

    /// Joins, calling again on DEADLINE_EXCEEDED as a worker does.
    pub async fn join(&mut self, facts: v1::TrainingFacts) -> Result<v1::JoinReply, Status> {
        loop {
            let req = v1::JoinRequest {
                api_version: 1,
                worker_id: self.id.clone(),
                facts: Some(facts),
                left_generation: 0,
                live: None,
            };
            match self.client.join(req).await {
                Ok(r) => {
                    self.join = Some(r.get_ref().clone());
                    self.planned_to.store(0, Ordering::SeqCst);
                    return Ok(r.into_inner());
                }
                Err(s) if s.code() == Code::DeadlineExceeded => continue,
                Err(s) => return Err(s),
            }
        }
    }

    pub fn generation(&self) -> u64 {
        self.join.as_ref().map_or(0, |j| j.generation)
    }

    pub fn rank(&self) -> u32 {
        self.join.as_ref().expect("joined").rank
    }

    pub async fn heartbeat(&mut self, step: u64) -> Result<v1::HeartbeatReply, Status> {
        let req = v1::HeartbeatRequest {
            api_version: 1,
            worker_id: self.id.clone(),
            generation: self.generation(),
            step,
        };
        self.client.heartbeat(req).await.map(|r| r.into_inner())
    }

    /// This rank's objects of checkpoint `step`, keyed relative to the step folder as the
    /// worker uploads them: rank 0 the model, every rank its classifier shard.
    pub fn objects(&self, step: u64) -> Vec<(String, Bytes)> {
        let rank = self.rank();
        let mut objects = Vec::new();
        if rank == 0 {
            objects.push((
                "model.safetensors".to_string(),
                Bytes::from(format!("model step {step}")),
            ));
        }
        objects.push((
            format!("classifier/rank-{rank:05}.safetensors"),
            Bytes::from(format!("rank {rank} step {step}")),
        ));
        objects
    }

    /// Uploads `objects` with `RunStore::put_object` and returns what the ack carries.
    pub async fn upload(
        &self,
        step: u64,
        objects: &[(String, Bytes)],
    ) -> Vec<v1::CheckpointObject> {
        let mut acked = Vec::new();
        for (key, bytes) in objects {
            let info = self
                .store
                .put_object(step, key, bytes.clone())
                .await
                .unwrap();
            acked.push(v1::CheckpointObject {
                key: info.key,
                size: info.size,
                sha256: info.sha256,
            });
        }
        acked
    }

    /// Asks for the plan of the epoch holding `step`, unless an earlier plan reaches it. A
    /// refusal is left to the ack that follows: tests of stale generations expect the
    /// ack's own error.
    pub async fn plan_to(&self, step: u64) {
        if step <= self.planned_to.load(Ordering::SeqCst) {
            return;
        }
        let steps_per_epoch = self.join.as_ref().expect("joined").steps_per_epoch.max(1);
        let request = v1::EpochPlanRequest {
            api_version: 1,
            worker_id: self.id.clone(),
            generation: self.generation(),
            epoch: step.saturating_sub(1) / steps_per_epoch,
        };
        if let Ok(plan) = self.client.clone().get_epoch_plan(request).await {
            self.planned_to
                .fetch_max(plan.into_inner().end_step, Ordering::SeqCst);
        }
    }

    /// Rank 0's run state as a real worker sends it (`lgaf_store::RunState`).
    pub fn run_state_json(&self) -> String {
        let joined = self.join.as_ref().expect("joined");
        let state = lgaf_store::RunState::new(
            joined.data_shard_count(),
            joined.steps_per_epoch.max(1),
            1.0,
            0,
            serde_json::json!({}),
        );
        serde_json::to_string(&state).expect("a run state serialises")
    }

    /// The ack of `objects` (not uploaded by this call).
    pub fn ack(
        &self,
        step: u64,
        epoch: u64,
        objects: &[(String, Bytes)],
    ) -> v1::CheckpointAckRequest {
        let rank = self.rank();
        v1::CheckpointAckRequest {
            api_version: 1,
            worker_id: self.id.clone(),
            generation: self.generation(),
            step,
            epoch,
            objects: objects
                .iter()
                .map(|(key, bytes)| v1::CheckpointObject {
                    key: key.clone(),
                    size: bytes.len() as u64,
                    sha256: sha256_hex(bytes),
                })
                .collect(),
            state_json: if rank == 0 {
                self.run_state_json()
            } else {
                String::new()
            },
        }
    }

    /// Uploads this rank's objects of checkpoint `step` and returns its ack, after getting
    /// the plan of the step's epoch as a rank does before it trains the step (acks of steps
    /// past a rank's plans are refused).
    pub async fn checkpoint(&self, step: u64, epoch: u64) -> v1::CheckpointAckRequest {
        self.plan_to(step).await;
        let objects = self.objects(step);
        let acked = self.upload(step, &objects).await;
        let ack = self.ack(step, epoch, &objects);
        assert_eq!(
            ack.objects, acked,
            "the ack carries what put_object answered"
        );
        ack
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a test worker saw.
#[derive(Debug, Default)]
pub struct Summary {
    pub register: v1::RegisterReply,
    pub rank: u32,
    pub world_size: u32,
    pub total_steps: u64,
    pub resume_step: u64,
    pub resume_manifest: String,
    pub epochs: Vec<v1::EpochPlan>,
    pub committed: Vec<u64>,
    pub stopped_early: bool,
}

/// Runs the whole life of a worker.
pub async fn run_worker(
    url: String,
    slot: Option<u32>,
    port: u16,
    facts: v1::TrainingFacts,
) -> Result<Summary, Status> {
    run_worker_with_env(url, slot, port, facts, HashMap::new()).await
}

/// Runs the whole life of a worker whose store needs `env` (S3). A resumed worker starts
/// at the epoch that holds its resume step.
pub async fn run_worker_with_env(
    url: String,
    slot: Option<u32>,
    port: u16,
    facts: v1::TrainingFacts,
    env: HashMap<String, String>,
) -> Result<Summary, Status> {
    let mut w = TestWorker::register_with_env(&url, slot, port, &env).await;
    let joined = w.join(facts).await?;
    let mut s = Summary {
        register: w.reply.clone(),
        rank: joined.rank,
        world_size: joined.world_size,
        total_steps: joined.total_steps,
        resume_step: joined.resume_step,
        resume_manifest: joined.resume_manifest.clone(),
        ..Default::default()
    };
    let steps_per_epoch = joined.steps_per_epoch;
    let mut step = joined.resume_step;
    'epochs: for epoch in step / steps_per_epoch.. {
        let plan = match w
            .client
            .get_epoch_plan(v1::EpochPlanRequest {
                api_version: 1,
                worker_id: w.id.clone(),
                generation: w.generation(),
                epoch,
            })
            .await
        {
            Ok(p) => p.into_inner(),
            Err(e) if e.code() == Code::OutOfRange => break,
            Err(e) => return Err(e),
        };
        while step < plan.end_step {
            step += 1;
            if step % 3 == 0 {
                let hb = w.heartbeat(step).await?;
                if hb.action == v1::WorkerAction::Stop as i32 {
                    s.stopped_early = true;
                    break 'epochs;
                }
            }
            let progress = w
                .client
                .report_progress(v1::ProgressReport {
                    api_version: 1,
                    worker_id: w.id.clone(),
                    generation: w.generation(),
                    step,
                    epoch,
                    loss: 10.0 / step as f64,
                    lr: 0.1,
                    samples_per_s: 1000.0,
                    data_wait_ms: 0.5,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if progress.action == v1::WorkerAction::Stop as i32 {
                s.stopped_early = true;
                break 'epochs;
            }
            if plan.checkpoint_steps.contains(&step) {
                let ack = w.checkpoint(step, step / steps_per_epoch).await;
                let reply = w.client.checkpoint_ack(ack).await?.into_inner();
                if reply.committed {
                    s.committed.push(step);
                }
            }
            // Let the ranks interleave.
            tokio::task::yield_now().await;
        }
        s.epochs.push(plan);
    }
    if !s.stopped_early {
        w.client
            .finish(v1::FinishRequest {
                api_version: 1,
                worker_id: w.id.clone(),
                generation: w.generation(),
                step,
                error: String::new(),
                retryable: false,
            })
            .await?;
    }
    Ok(s)
}

/// The committed checkpoints' manifests, ascending by step.
pub async fn manifests(store: &RunStore) -> Vec<Manifest> {
    let mut out = Vec::new();
    for c in store.committed().await.unwrap() {
        out.push(store.manifest(c.step).await.unwrap());
    }
    out
}

/// The committed steps, ascending.
pub async fn committed_steps(store: &RunStore) -> Vec<u64> {
    store
        .committed()
        .await
        .unwrap()
        .iter()
        .map(|c| c.step)
        .collect()
}
