//! One rank of a coordinated run (`lgaf-worker`): registers with the coordinator, joins
//! a generation, forms the collective group, resumes from the checkpoint the coordinator
//! names, trains its shard, uploads its checkpoint parts in the background and
//! acknowledges them, heartbeats, reports, and finishes.
//!
//! The trainer is synchronous; gRPC calls run on a small tokio runtime owned here.

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lgaf_collective::nccl::{NcclCommunicator, NcclUniqueId};
use lgaf_collective::tcp::{TcpGroup, TcpOptions};
use lgaf_proto::auth::JobToken;
use lgaf_proto::v1::{self, CheckpointObject, CollectiveBackend, TrainingFacts, WorkerAction};
use lgaf_proto::API_VERSION;
use lgaf_store::{BackgroundUploader, BlockingRunStore, UploadTicket};
use tracing::{info, warn};

use crate::config::TrainConfig;
use crate::coordinator_client::{bounded, Client, ClientError};
use crate::device::parse_device;
use crate::dist::{Group, HostCollective, NcclCollective};
use crate::loader::open_source;
use crate::trainer::{StepReport, Trainer};

/// How a worker was started.
#[derive(Clone, Debug)]
pub struct WorkerArgs {
    /// The coordinator's URL, e.g. `http://127.0.0.1:50051`.
    pub coordinator: String,
    /// The slot a spawning coordinator gave this worker.
    pub slot: Option<u32>,
    /// `cpu` or `cuda:N`; overrides the config's `train.device`.
    pub device: String,
    /// Where the CPU collective listens (port 0: any free port).
    pub collective_bind: String,
    /// The host peers reach this worker's listener at (default: the bind address's).
    pub collective_host: Option<String>,
    /// The job's token, presented on every call.
    pub token: Option<JobToken>,
    /// The CA certificate (PEM) to verify an `https://` coordinator with.
    pub tls_ca: Option<std::path::PathBuf>,
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Coordinator(ClientError),
    #[error(transparent)]
    Worker(#[from] crate::WorkerError),
    #[error("checkpoint store: {0}")]
    Store(#[from] lgaf_store::StoreError),
    #[error("collective group: {0}")]
    Collective(#[from] lgaf_collective::CollectiveError),
    /// The coordinator ended this rank's generation (a peer was lost): join the next.
    #[error("the generation ended: {0}")]
    GenerationOver(String),
    #[error("{0}")]
    Other(String),
}

type Result<T, E = RunError> = std::result::Result<T, E>;

impl From<ClientError> for RunError {
    fn from(e: ClientError) -> Self {
        match e {
            // StaleGeneration: the generation ended under this call.
            ClientError::Call { call, status, .. } if status.code() == tonic::Code::Aborted => {
                RunError::GenerationOver(format!("{call}: {}", status.message()))
            }
            e => RunError::Coordinator(e),
        }
    }
}

impl RunError {
    /// The generation failed under this rank (a peer died or hung, the coordinator ended
    /// it), not the rank itself: it may join the next generation.
    fn ends_generation_only(&self) -> bool {
        matches!(
            self,
            RunError::GenerationOver(_)
                | RunError::Collective(_)
                | RunError::Worker(crate::WorkerError::Collective { .. })
        )
    }
}

/// Runs this worker until the job finishes (Ok) or fails (Err, also reported to the
/// coordinator when it can be).
pub fn run(args: WorkerArgs) -> Result<()> {
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| RunError::Other(format!("cannot start the gRPC runtime: {e}")))?,
    );
    let client = Client::connect(
        &args.coordinator,
        args.token.clone(),
        args.tls_ca.as_deref(),
        rt.clone(),
    )?;

    let listener = TcpListener::bind(&args.collective_bind).map_err(|e| {
        RunError::Other(format!(
            "cannot listen on {} for peers: {e}",
            args.collective_bind
        ))
    })?;
    let local = listener
        .local_addr()
        .expect("bound listener has an address");
    let host = args
        .collective_host
        .clone()
        .unwrap_or_else(|| local.ip().to_string());
    let collective_addr = format!("{host}:{}", local.port());

    let register = v1::RegisterRequest {
        api_version: API_VERSION,
        job_id: String::new(),
        host: hostname(),
        pid: std::process::id(),
        device: args.device.clone(),
        collective_addr: collective_addr.clone(),
        slot: args.slot,
    };
    let registered = client.call("Register", register, |mut c, r| async move {
        c.register(r).await
    })?;
    let worker_id = registered.worker_id.clone();
    info!(
        worker_id,
        run_id = registered.run_id,
        store = registered.store_url,
        "registered"
    );

    // One generation after another until the job is over for this worker: when a
    // generation ends (a peer was lost, the group failed), join the next one, which
    // resumes from the last committed checkpoint.
    let mut left = 0;
    let outcome = loop {
        let listener = match listener.try_clone() {
            Ok(l) => l,
            Err(e) => break Err(RunError::Other(format!("collective listener: {e}"))),
        };
        match train(&args, &client, &registered, listener, left) {
            Err(e) if e.ends_generation_only() => {
                left = GENERATION.load(Ordering::SeqCst);
                warn!(generation = left, error = %e, "left the generation; joining the next");
            }
            other => break other,
        }
    };
    let (step, error) = match &outcome {
        Ok(step) => (*step, String::new()),
        Err(e) => (0, e.to_string()),
    };
    let generation = GENERATION.load(Ordering::SeqCst);
    let finish = v1::FinishRequest {
        api_version: API_VERSION,
        worker_id,
        generation,
        step,
        error,
    };
    let finish = rt.block_on(bounded(
        "Finish",
        Duration::from_secs(10),
        client.send(
            "Finish",
            finish,
            |mut c, r| async move { c.finish(r).await },
        ),
    ));
    if let Err(status) = finish {
        warn!(error = %status.message(), "Finish was not accepted");
    }
    outcome.map(|_| ())
}

/// Forms the generation's NCCL communicator on `device`: rank 0 makes the unique id (in this
/// process, which must stay alive while the others connect to it) and publishes it through
/// the coordinator; the other ranks wait for it there.
fn nccl_group(
    client: &Client,
    registered: &v1::RegisterReply,
    joined: &v1::JoinReply,
    device: tch::Device,
    timeout: Duration,
) -> Result<NcclCollective> {
    let tch::Device::Cuda(index) = device else {
        return Err(RunError::Other(format!(
            "the coordinator chose NCCL for this generation, but this worker trains on {device:?}"
        )));
    };
    let id = if joined.rank == 0 {
        let id = NcclUniqueId::new()?;
        let publish = v1::PublishNcclIdRequest {
            api_version: API_VERSION,
            worker_id: registered.worker_id.clone(),
            generation: joined.generation,
            nccl_id: id.to_bytes(),
        };
        client.call("PublishNcclId", publish, |mut c, r| async move {
            c.publish_nccl_id(r).await
        })?;
        id
    } else {
        let get = v1::GetNcclIdRequest {
            api_version: API_VERSION,
            worker_id: registered.worker_id.clone(),
            generation: joined.generation,
        };
        let reply = client.call("GetNcclId", get, |mut c, r| async move {
            c.get_nccl_id(r).await
        })?;
        NcclUniqueId::from_bytes(&reply.nccl_id)?
    };
    let comm = NcclCommunicator::new(
        &id,
        joined.rank as usize,
        joined.world_size as usize,
        index,
        timeout,
    )?;
    info!(
        rank = joined.rank,
        world_size = joined.world_size,
        device = index,
        "NCCL communicator formed"
    );
    Ok(NcclCollective::on_cuda(comm))
}

/// The generation this worker is in (0 before the first Join), for Finish.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// This machine's name as the coordinator accepts it (`lgaf_proto::is_host_name_char`):
/// any other character becomes `-`.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .take(lgaf_proto::MAX_HOST_NAME)
        .map(|c| {
            if lgaf_proto::is_host_name_char(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "unknown".into()
    } else {
        name
    }
}

/// Joins, trains to the end; returns the steps completed.
fn train(
    args: &WorkerArgs,
    client: &Client,
    registered: &v1::RegisterReply,
    listener: TcpListener,
    left_generation: u64,
) -> Result<u64> {
    let rt = client.rt.clone();
    let mut cfg = TrainConfig::from_toml_str(&registered.config_toml)?;
    cfg.train.device = args.device.clone();
    cfg.train.progress = false;
    let source = open_source(&cfg.data).map_err(crate::WorkerError::from)?;
    let facts = TrainingFacts {
        num_samples: source.len() as u64,
        num_classes: source.num_classes() as u64,
        batch_size: cfg.data.batch_size as u64,
        epochs: cfg.train.epochs as u64,
        max_steps: cfg.train.max_steps,
        checkpoint_every_steps: cfg.checkpoint.every_steps,
        keep_last: cfg.checkpoint.keep_last as u64,
        seed: cfg.train.seed,
    };
    drop(source);
    // A Join waits (on the coordinator) until this worker's generation forms: for the rest
    // of the job's workers, the end of an elastic grace period, or the next checkpoint of
    // a smaller generation this worker is to grow. Each call waits at most the
    // coordinator's long-poll limit and then says what it waits for; call again.
    let join = v1::JoinRequest {
        api_version: API_VERSION,
        worker_id: registered.worker_id.clone(),
        facts: Some(facts),
        left_generation,
    };
    let joined =
        loop {
            let reply = rt.block_on(client.send("Join", join.clone(), |mut c, r| async move {
                c.join(r).await
            }));
            match reply {
                Ok(reply) => break reply,
                Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                    info!(
                        waiting_for = status.message(),
                        "no generation yet; joining again"
                    );
                }
                Err(status) => return Err(client.failed("Join", status).into()),
            }
        };
    GENERATION.store(joined.generation, Ordering::SeqCst);
    let data_world_size = joined.data_shard_count();
    info!(
        generation = joined.generation,
        rank = joined.rank,
        world_size = joined.world_size,
        data_shards = ?lgaf_proto::data_shards(joined.rank, joined.world_size, data_world_size),
        total_steps = joined.total_steps,
        resume_step = joined.resume_step,
        "joined"
    );
    // From here on the coordinator hears from this rank even while it forms the group,
    // builds the model or downloads a checkpoint, and this rank notices a vanished
    // coordinator.
    let heartbeat = Heartbeat::start(
        client.clone_handle(),
        registered.worker_id.clone(),
        joined.generation,
        Duration::from_millis(u64::from(registered.heartbeat_interval_ms).max(100)),
        Duration::from_millis(u64::from(registered.heartbeat_deadline_ms).max(1000)),
    );
    let timeout = Duration::from_millis(u64::from(joined.collective_timeout_ms).max(1000));
    let group = match joined.backend() {
        CollectiveBackend::Cpu => {
            let group = TcpGroup::connect(
                joined.rank as usize,
                &joined.peers,
                listener,
                TcpOptions {
                    op_timeout: timeout,
                    connect_timeout: Duration::from_secs(60),
                    group_tag: joined.generation,
                },
            )?;
            let abort = group
                .abort_handle()
                .map_err(|e| RunError::Other(format!("collective group: {e}")))?;
            heartbeat.on_stop(Box::new(move || abort.abort()));
            Group::Host(Arc::new(HostCollective::new(Arc::new(group))))
        }
        CollectiveBackend::Nccl => {
            drop(listener);
            let device = parse_device(&args.device)?;
            let nccl = nccl_group(client, registered, &joined, device, timeout)?;
            let abort = nccl.abort_handle();
            heartbeat.on_stop(Box::new(move || {
                abort.abort("the coordinator ended the generation")
            }));
            Group::Nccl(Arc::new(nccl))
        }
        other => {
            return Err(RunError::Other(format!(
                "the coordinator named collective backend {other:?}, which this worker does \
                 not know"
            )))
        }
    };
    let mut trainer = Trainer::with_data_shards(cfg.clone(), group, data_world_size)?;
    if trainer.steps_per_epoch() != joined.steps_per_epoch {
        return Err(RunError::Other(format!(
            "steps per epoch: the coordinator computed {}, this worker's sampler {}",
            joined.steps_per_epoch,
            trainer.steps_per_epoch()
        )));
    }

    let store = BlockingRunStore::from_url(&registered.store_url, &registered.run_id)?;
    if joined.resume_step > 0 {
        resume(&mut trainer, &store, joined.resume_step, facts.num_classes)?;
    }

    let uploader = store.uploader(1 << 30)?;
    // The thread acknowledging the newest checkpoint; it waits for the one before.
    let last_ack: Arc<Mutex<Option<JoinHandle<Result<()>>>>> = Arc::default();
    let total = joined.total_steps;
    let spe = joined.steps_per_epoch.max(1);
    let rank = joined.rank;
    let log_every = cfg.train.log_every.max(1);
    let mut window = (0usize, Duration::ZERO);
    let result = (|| -> Result<()> {
        while trainer.steps_done() < total {
            let epoch = trainer.steps_done() / spe;
            let request = v1::EpochPlanRequest {
                api_version: API_VERSION,
                worker_id: registered.worker_id.clone(),
                generation: joined.generation,
                epoch,
            };
            let plan = client.call("GetEpochPlan", request, |mut c, r| async move {
                c.get_epoch_plan(r).await
            })?;
            let checkpoints: BTreeSet<u64> = plan.checkpoint_steps.iter().copied().collect();
            let end = plan.end_step.min(total);
            trainer.run_until(end, |trainer, report| {
                STEP.store(report.step, Ordering::SeqCst);
                if let Some(stopped) = heartbeat.stopped() {
                    return Err(crate::WorkerError::Collective {
                        step: report.step,
                        message: stopped.to_string(),
                    });
                }
                // The job's rate: a step is the global batch, whichever ranks hold it.
                window.0 += cfg.data.batch_size * data_world_size as usize;
                window.1 += report.step_time;
                // Rank 0 reports every `train.log_every` steps, and the first and last; not
                // an fp16 step the loss scaler skipped (its loss is not finite, and the
                // coordinator refuses such numbers).
                let step = report.step;
                let due = step == 1 || step == total || step.is_multiple_of(log_every);
                if rank == 0 && due && report.loss.is_finite() {
                    report_progress(
                        client,
                        &registered.worker_id,
                        joined.generation,
                        report,
                        window,
                    );
                    window = (0, Duration::ZERO);
                }
                if checkpoints.contains(&report.step) {
                    let mut last_ack = last_ack.lock().expect("last_ack");
                    let handle = checkpoint(
                        trainer,
                        &uploader,
                        client.clone_handle(),
                        &registered.worker_id,
                        joined.generation,
                        spe,
                        last_ack.take(),
                    )
                    .map_err(|e| match e {
                        // A peer lost while the parts were gathered (a broadcast): that
                        // ends the generation, like any failed collective, not the job.
                        RunError::Worker(failed @ crate::WorkerError::Collective { .. }) => failed,
                        e => crate::WorkerError::Checkpoint {
                            path: registered.store_url.clone().into(),
                            message: e.to_string(),
                        },
                    })?;
                    *last_ack = Some(handle);
                }
                Ok(())
            })?;
        }
        Ok(())
    })();
    // Every checkpoint acknowledged before Finish, so the last one is committed first.
    if let Some(handle) = last_ack.lock().expect("last_ack").take() {
        joined_ack(handle)?;
    }
    let stats = uploader.stats();
    info!(
        uploads = stats.completed,
        stall_ms = stats.stall_total.as_millis() as u64,
        upload_ms = stats.upload_total.as_millis() as u64,
        "checkpoint uploads: the training step waited only for the stall"
    );
    // The coordinator's word overrides what the loop saw: the job may be over.
    if let Some(Stopped::Stop(why)) = heartbeat.stopped() {
        return Err(RunError::Other(why));
    }
    drop(heartbeat);
    result?;
    Ok(trainer.steps_done())
}

/// The last completed step, for heartbeats.
static STEP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The heartbeat thread: tells the coordinator every `interval` that this rank lives, and
/// watches it in turn. It asks the training loop to stop when the coordinator says so, or
/// when no heartbeat has been answered for `deadline` (the coordinator is gone). Dropping
/// it stops the thread.
struct Heartbeat {
    stop: Arc<AtomicBool>,
    reason: Arc<Mutex<Option<Stopped>>>,
    /// Unblocks a collective waiting on a peer once the generation is over.
    abort: AbortHook,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    fn start(
        client: Client,
        worker_id: String,
        generation: u64,
        interval: Duration,
        deadline: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let reason = Arc::new(Mutex::new(None));
        let abort = AbortHook::default();
        let thread = {
            let (stop, reason, abort) = (stop.clone(), reason.clone(), abort.clone());
            std::thread::spawn(move || {
                let give_up = |why: Stopped| {
                    warn!("{why}");
                    *reason.lock().expect("heartbeat reason") = Some(why);
                    if let Some(abort) = abort.lock().expect("abort hook").as_ref() {
                        abort();
                    }
                };
                beat(
                    client, worker_id, generation, interval, deadline, &stop, give_up,
                )
            })
        };
        Self {
            stop,
            reason,
            abort,
            thread: Some(thread),
        }
    }

    /// Once the generation is over, `abort` is called (once the group exists).
    fn on_stop(&self, abort: Box<dyn Fn() + Send>) {
        let mut hook = self.abort.lock().expect("abort hook");
        // The generation may have ended while the group was forming.
        if self.stopped().is_some() {
            abort();
        }
        *hook = Some(abort);
    }

    /// Why the training loop must stop, once it must.
    fn stopped(&self) -> Option<Stopped> {
        self.reason.lock().expect("heartbeat reason").clone()
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type AbortHook = Arc<Mutex<Option<Box<dyn Fn() + Send>>>>;

/// Why the heartbeat asks the training loop to stop.
#[derive(Clone, Debug)]
enum Stopped {
    /// The generation ended: join the next one.
    Rejoin(String),
    /// The job is over or the coordinator is gone: exit.
    Stop(String),
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Rejoin(why) | Stopped::Stop(why) => f.write_str(why),
        }
    }
}

fn beat(
    client: Client,
    worker_id: String,
    generation: u64,
    interval: Duration,
    deadline: Duration,
    stop: &AtomicBool,
    give_up: impl Fn(Stopped),
) {
    let mut last_answer = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let request = v1::HeartbeatRequest {
            api_version: API_VERSION,
            worker_id: worker_id.clone(),
            generation,
            step: STEP.load(Ordering::SeqCst),
        };
        let send = client.send("Heartbeat", request, |mut c, r| async move {
            c.heartbeat(r).await
        });
        // Bounded, so that an unreachable coordinator (no RST, just silence) is noticed.
        let reply = client
            .rt
            .block_on(async { tokio::time::timeout(interval.max(deadline / 4), send).await });
        match reply {
            Ok(Ok(reply)) => {
                last_answer = Instant::now();
                match reply.action() {
                    WorkerAction::Continue => {}
                    WorkerAction::Rejoin => {
                        give_up(Stopped::Rejoin(format!(
                            "the coordinator ended generation {generation} (a peer was lost)"
                        )));
                        return;
                    }
                    action => {
                        give_up(Stopped::Stop(format!(
                            "the coordinator ended the job ({action:?})"
                        )));
                        return;
                    }
                }
            }
            Ok(Err(status)) if status.code() == tonic::Code::Aborted => {
                give_up(Stopped::Rejoin(format!("heartbeat: {}", status.message())));
                return;
            }
            Ok(Err(status)) => warn!(error = %status.message(), "heartbeat failed"),
            Err(_) => warn!("heartbeat: no answer from the coordinator"),
        }
        if last_answer.elapsed() > deadline {
            give_up(Stopped::Stop(format!(
                "the coordinator at {} has not answered a heartbeat for {} ms (deadline {} ms): \
                 it is gone or unreachable; stopping",
                client.url,
                last_answer.elapsed().as_millis(),
                deadline.as_millis()
            )));
            return;
        }
        // Sleep in small slices so a finished run does not wait a whole interval.
        let until = Instant::now() + interval;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn report_progress(
    client: &Client,
    worker_id: &str,
    generation: u64,
    report: &StepReport,
    window: (usize, Duration),
) {
    let (gamma_local, gamma_global) = report.gamma.unwrap_or((0.0, 0.0));
    let per_s = window.0 as f64 / window.1.as_secs_f64().max(1e-9);
    let progress = v1::ProgressReport {
        api_version: API_VERSION,
        worker_id: worker_id.to_string(),
        generation,
        step: report.step,
        epoch: report.epoch,
        loss: report.loss,
        lr: report.lr,
        samples_per_s: per_s,
        data_wait_ms: report.data_wait.as_secs_f64() * 1e3,
        bad_records: report.loader.bad_records,
        gamma_local,
        gamma_global,
    };
    let sent = client.rt.block_on(bounded(
        "ReportProgress",
        Duration::from_secs(5),
        client.send("ReportProgress", progress, |mut c, r| async move {
            c.report_progress(r).await
        }),
    ));
    if let Err(status) = sent {
        warn!(error = %status.message(), "progress report failed");
    }
}

/// Fault injection for the fault tests (`worker/tests/faults.rs`): with `LGAF_FAILPOINT` set to
/// `stall-upload@S`, this worker uploads the first object of its checkpoint at step S and
/// then stops (training thread included, heartbeats not), never acknowledging it: what a
/// process killed in the middle of its upload leaves in the store.
pub const FAILPOINT_ENV: &str = "LGAF_FAILPOINT";

fn stall_upload_at() -> Option<u64> {
    std::env::var(FAILPOINT_ENV)
        .ok()?
        .strip_prefix("stall-upload@")?
        .parse()
        .ok()
}

/// Serialises this rank's checkpoint parts, hands them to the background uploader (the
/// step waits only for that hand-over) and returns a thread that acknowledges them once
/// uploaded, and once `earlier` (the thread of the checkpoint before) has.
fn checkpoint(
    trainer: &Trainer,
    uploader: &BackgroundUploader,
    client: Client,
    worker_id: &str,
    generation: u64,
    spe: u64,
    earlier: Option<JoinHandle<Result<()>>>,
) -> Result<JoinHandle<Result<()>>> {
    let step = trainer.steps_done();
    let started = Instant::now();
    let (objects, state) = trainer.checkpoint_objects()?;
    if stall_upload_at() == Some(step) {
        let (key, bytes) = objects
            .into_iter()
            .next()
            .expect("a rank writes at least one object");
        let uploaded = uploader.submit(step, &key, Bytes::from(bytes)).wait();
        warn!(
            step,
            key,
            ok = uploaded.is_ok(),
            "{FAILPOINT_ENV}: the upload of the checkpoint at step {step} stops here"
        );
        loop {
            std::thread::park();
        }
    }
    let tickets: Vec<UploadTicket> = objects
        .into_iter()
        .map(|(key, bytes)| uploader.submit(step, &key, Bytes::from(bytes)))
        .collect();
    info!(
        step,
        stall_ms = started.elapsed().as_millis() as u64,
        "checkpoint handed to the uploader"
    );
    let worker_id = worker_id.to_string();
    Ok(std::thread::spawn(move || {
        let mut acked = Vec::new();
        for ticket in tickets {
            let info = ticket.wait()?;
            acked.push(CheckpointObject {
                key: info.key,
                size: info.size,
                sha256: info.sha256,
            });
        }
        // Acks go in step order: a later one overtaking an earlier (either may be waiting
        // out refusals for rate) would commit first, and the earlier would then be refused
        // as older than the last commit.
        if let Some(earlier) = earlier {
            joined_ack(earlier)?;
        }
        let ack = v1::CheckpointAckRequest {
            api_version: API_VERSION,
            worker_id,
            generation,
            step,
            epoch: step / spe,
            objects: acked,
            state_json: state.map(|s| s.to_string()).unwrap_or_default(),
        };
        let reply = client.call("CheckpointAck", ack, |mut c, r| async move {
            c.checkpoint_ack(r).await
        })?;
        if reply.committed {
            info!(step, "checkpoint committed");
        }
        Ok(())
    }))
}

/// The outcome of an ack thread.
fn joined_ack(handle: JoinHandle<Result<()>>) -> Result<()> {
    handle
        .join()
        .map_err(|_| RunError::Other("a checkpoint thread panicked".into()))?
}

/// Loads the committed checkpoint at `step`: only the objects this rank needs, each
/// verified against the manifest's checksum.
fn resume(
    trainer: &mut Trainer,
    store: &BlockingRunStore,
    step: u64,
    num_classes: u64,
) -> Result<()> {
    let manifest = store.manifest(step)?;
    let wanted: BTreeSet<String> = trainer
        .objects_to_resume(i64::from(manifest.world_size), num_classes as i64)
        .into_iter()
        .collect();
    let loaded = store.load_with(step, |object| wanted.contains(&object.key))?;
    let objects: HashMap<String, Vec<u8>> = loaded
        .objects
        .into_iter()
        .map(|(k, v)| (k, v.to_vec()))
        .collect();
    let source = format!("{}@{step}", store.run().run_id());
    trainer.restore_from_objects(&source, &loaded.manifest.state, &objects)?;
    let saved_spe = loaded.manifest.state["steps_per_epoch"]
        .as_u64()
        .unwrap_or(0);
    let continue_at = lgaf_proto::resumed_step(step, saved_spe, trainer.steps_per_epoch());
    if continue_at != step {
        info!(
            saved_world_size = manifest.world_size,
            saved_step = step,
            continue_at,
            "resumed on another world size: the step count maps to the same epoch position"
        );
        trainer.set_step(continue_at);
    }
    Ok(())
}
