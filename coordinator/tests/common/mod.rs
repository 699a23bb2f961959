//! A coordinator served in-process on loopback, and workers that follow the protocol like
//! the real one (without training): register, join, epoch plans, heartbeats, progress,
//! checkpoint objects written to the store and acknowledged, finish.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lgaf_coordinator::store::FileStore;
use lgaf_coordinator::{serve, CoordinatorService, Job, JobSettings, ServiceOptions};
use lgaf_proto::v1;
use lgaf_proto::v1::coordinator_client::CoordinatorClient;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Status};

pub type Service = CoordinatorService<FileStore, FileStore>;

pub struct Server {
    pub url: String,
    pub service: Service,
    pub store: FileStore,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn settings(world_size: u32, store: &FileStore) -> JobSettings {
    JobSettings {
        job_id: "test-job".into(),
        run_id: "test-run".into(),
        instance: "t".into(),
        world_size,
        max_steps: 0,
        config_toml: "[train]\nepochs = 2\n".into(),
        store_url: store.url(),
        heartbeat_interval_ms: 100,
        collective_timeout_ms: 1000,
    }
}

pub async fn start(settings: JobSettings, store_dir: &Path, long_poll: Duration) -> Server {
    let store = FileStore::new(store_dir);
    let service = CoordinatorService::new(
        Job::new(settings).unwrap(),
        store.clone(),
        store.clone(),
        ServiceOptions {
            long_poll_max: long_poll,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(serve(listener, service.clone(), async {
        let _ = rx.await;
    }));
    Server {
        url: format!("http://{addr}"),
        service,
        store,
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
}

impl TestWorker {
    pub async fn register(url: &str, slot: Option<u32>, port: u16) -> TestWorker {
        let mut client = client(url).await;
        let reply = client
            .register(register_request(slot, port))
            .await
            .unwrap()
            .into_inner();
        TestWorker {
            client,
            id: reply.worker_id.clone(),
            reply,
            join: None,
        }
    }

    /// Joins, calling again on DEADLINE_EXCEEDED as a worker does.
    pub async fn join(&mut self, facts: v1::TrainingFacts) -> Result<v1::JoinReply, Status> {
        loop {
            let req = v1::JoinRequest {
                api_version: 1,
                worker_id: self.id.clone(),
                facts: Some(facts),
            };
            match self.client.join(req).await {
                Ok(r) => {
                    self.join = Some(r.get_ref().clone());
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

    pub fn store(&self) -> FileStore {
        FileStore::from_url(&self.reply.store_url).unwrap()
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

    /// Writes this rank's object of checkpoint `step` into the store and returns its ack.
    pub fn checkpoint(&self, step: u64, epoch: u64) -> v1::CheckpointAckRequest {
        let rank = self.rank();
        let key = format!("rank{rank}/shard.bin");
        let bytes = format!("rank {rank} step {step}").into_bytes();
        let path = self
            .store()
            .checkpoint_dir(&self.reply.run_id, step)
            .join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        v1::CheckpointAckRequest {
            api_version: 1,
            worker_id: self.id.clone(),
            generation: self.generation(),
            step,
            epoch,
            objects: vec![v1::CheckpointObject {
                key,
                size: bytes.len() as u64,
                sha256: sha256_hex(&bytes),
            }],
            state_json: if rank == 0 {
                format!(r#"{{"step": {step}, "epoch": {epoch}}}"#)
            } else {
                String::new()
            },
        }
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
    let mut w = TestWorker::register(&url, slot, port).await;
    let joined = w.join(facts).await?;
    let mut s = Summary {
        register: w.reply.clone(),
        rank: joined.rank,
        world_size: joined.world_size,
        total_steps: joined.total_steps,
        ..Default::default()
    };
    let steps_per_epoch = joined.steps_per_epoch;
    let mut step = joined.resume_step;
    'epochs: for epoch in 0.. {
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
                let reply = w
                    .client
                    .checkpoint_ack(w.checkpoint(step, step / steps_per_epoch))
                    .await?
                    .into_inner();
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
            })
            .await?;
    }
    Ok(s)
}

/// The checkpoint manifests on disk, by step.
pub fn manifests(store: &FileStore, run_id: &str) -> Vec<(u64, serde_json::Value)> {
    store
        .committed_steps(run_id)
        .unwrap()
        .into_iter()
        .map(|step| {
            let path: PathBuf = store
                .checkpoint_dir(run_id, step)
                .join(lgaf_coordinator::store::MANIFEST);
            (
                step,
                serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap(),
            )
        })
        .collect()
}
