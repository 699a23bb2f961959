//! One simulated worker: what a real `lgaf-worker` rank says to the coordinator, over its own
//! HTTP/2 connection, without training anything. Register (again while there is no place,
//! as the real client does), Join (a long poll, called again on DEADLINE_EXCEEDED), the NCCL
//! id (rank 0 publishes, the others long-poll), heartbeats every interval from the moment
//! the generation formed, the epoch plan, a step clock shared by every rank (the collective
//! keeps real ranks in lockstep), progress reports from rank 0, at each checkpoint step its
//! objects written into the file:// store and acknowledged (in a task of their own, as the
//! real background uploader does), and Finish. A heartbeat answered REJOIN ends the
//! generation; the worker joins again. A worker told to go silent stops calling, as a hung
//! process would.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lgaf_proto::auth::{AttachToken, JobToken};
use lgaf_proto::v1;
use lgaf_proto::v1::coordinator_client::CoordinatorClient;
use lgaf_proto::API_VERSION;
use lgaf_store::{RunStore, Store};
use tokio::sync::{watch, Barrier};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

use crate::background::{acknowledge, heartbeat, jitter};
use crate::stats::Recorder;

pub type Stub = CoordinatorClient<InterceptedService<Channel, AttachToken>>;

/// What every worker of a scenario shares.
pub struct Swarm {
    pub url: String,
    pub token: JobToken,
    pub recorder: Arc<Recorder>,
    /// The facts every worker joins with (they fix the schedule).
    pub facts: v1::TrainingFacts,
    /// Simulated time of one training step.
    pub step_time: Duration,
    /// Rank 0 reports progress every this many steps (and at the first and last).
    pub log_every: u64,
    /// Workers per simulated host: each host has its own loopback address (127.10.x.y),
    /// as the coordinator's rate limit counts per address.
    pub workers_per_host: u32,
    /// Every rank of a generation waits here before its first step (the collective).
    barriers: Mutex<HashMap<u64, Arc<Barrier>>>,
    /// Generations whose collective group is broken (a peer went silent): their ranks
    /// cannot take another step.
    broken: watch::Sender<u64>,
    /// Raised once: the workers marked to go silent stop calling.
    silence: watch::Sender<bool>,
    /// The store the workers write their checkpoint objects into.
    store: Mutex<Option<RunStore>>,
}

/// One worker's place in the simulation.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub slot: u32,
    /// Distinct per process, also for a replacement in the same slot.
    pub pid: u32,
    /// Goes silent when the swarm's silence is raised.
    pub goes_silent: bool,
}

/// What one worker saw, for the scenario's figures.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    pub registered_at: Option<Instant>,
    /// Each generation's Join: (generation, when this worker began joining, when it was
    /// answered).
    pub joined: Vec<(u64, Instant, Instant)>,
    /// When a heartbeat answered REJOIN.
    pub told_rejoin_at: Option<Instant>,
    pub acks: Vec<AckRecord>,
    pub finished_at: Option<Instant>,
    /// Why it gave up, if it did.
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug)]
pub struct AckRecord {
    pub generation: u64,
    pub step: u64,
    pub sent: Instant,
    pub answered: Instant,
    /// The reply said committed: this ack completed the set and the manifest is written.
    pub committed: bool,
}

/// How one generation ended for a worker.
enum GenerationEnd {
    Finished,
    Rejoin,
    Silent,
}

impl Swarm {
    pub fn new(
        url: String,
        token: JobToken,
        recorder: Arc<Recorder>,
        facts: v1::TrainingFacts,
        (step_time, log_every, workers_per_host): (Duration, u64, u32),
    ) -> Self {
        Swarm {
            url,
            token,
            recorder,
            facts,
            step_time,
            log_every,
            workers_per_host: workers_per_host.max(1),
            barriers: Mutex::new(HashMap::new()),
            broken: watch::channel(0).0,
            silence: watch::channel(false).0,
            store: Mutex::new(None),
        }
    }

    /// The marked workers stop calling, and the running generation's collective breaks.
    pub fn go_silent(&self, generation: u64) {
        self.broken.send_replace(generation);
        self.silence.send_replace(true);
    }

    /// Raised once the marked workers are to go silent.
    pub fn silence(&self) -> watch::Receiver<bool> {
        self.silence.subscribe()
    }

    fn barrier(&self, generation: u64, world_size: u32) -> Arc<Barrier> {
        let mut barriers = self.barriers.lock().unwrap_or_else(PoisonError::into_inner);
        barriers
            .entry(generation)
            .or_insert_with(|| Arc::new(Barrier::new(world_size as usize)))
            .clone()
    }

    fn run_store(&self, registered: &v1::RegisterReply) -> Result<RunStore, String> {
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(run) = store.as_ref() {
            return Ok(run.clone());
        }
        let opened = Store::from_url(&registered.store_url)
            .and_then(|s| RunStore::new(s, &registered.run_id))
            .map_err(|e| format!("opening the store {}: {e}", registered.store_url))?;
        *store = Some(opened.clone());
        Ok(opened)
    }
}

/// Connects one worker from its host's loopback address.
pub async fn connect(swarm: &Swarm, slot: u32) -> Result<Stub, String> {
    let host = slot / swarm.workers_per_host;
    let address = IpAddr::V4(Ipv4Addr::new(
        127,
        10 + (host / 250) as u8,
        0,
        1 + (host % 250) as u8,
    ));
    let channel = Endpoint::from_shared(swarm.url.clone())
        .map_err(|e| format!("{}: not a URL: {e}", swarm.url))?
        .local_address(Some(address))
        .connect_timeout(Duration::from_secs(10))
        // As the real client: a safety net above the longest long poll.
        .timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("slot {slot}: connecting from {address}: {e}"))?;
    Ok(CoordinatorClient::with_interceptor(
        channel,
        AttachToken(Some(swarm.token.clone())),
    ))
}

/// One worker's life: from Register to Finish (or silence), over `stub`.
pub struct SimWorker {
    swarm: Arc<Swarm>,
    stub: Stub,
    place: Placement,
    report: WorkerReport,
    /// The step the heartbeat reports.
    step: Arc<AtomicU64>,
}

impl SimWorker {
    pub fn new(swarm: Arc<Swarm>, stub: Stub, place: Placement) -> Self {
        SimWorker {
            swarm,
            stub,
            place,
            report: WorkerReport::default(),
            step: Arc::new(AtomicU64::new(0)),
        }
    }

    pub async fn run(mut self) -> WorkerReport {
        if let Err(e) = self.life().await {
            self.report.error = Some(e);
        }
        self.report
    }

    async fn life(&mut self) -> Result<(), String> {
        let registered = self.register().await?;
        self.report.registered_at = Some(Instant::now());
        let mut left_generation = 0;
        loop {
            let joining = Instant::now();
            let joined = self.join(&registered, left_generation).await?;
            self.report
                .joined
                .push((joined.generation, joining, Instant::now()));
            left_generation = joined.generation;
            match self.generation(&registered, &joined).await? {
                GenerationEnd::Finished => {
                    self.report.finished_at = Some(Instant::now());
                    return Ok(());
                }
                GenerationEnd::Rejoin => continue,
                GenerationEnd::Silent => {
                    // A hung process: its connection stays open, it says nothing more.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Sends one call, again after a jittered pause while it is refused with a code in
    /// `retry_on` (the real client's policies: rate refusals for every call, no place yet
    /// for Register), for up to `within`; records every attempt.
    async fn call<T, Fut>(
        &self,
        rpc: &'static str,
        retry_on: &[Code],
        within: Duration,
        mut send: impl FnMut(Stub) -> Fut,
    ) -> Result<T, Status>
    where
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let began = Instant::now();
        let mut pause = if rpc == "Register" {
            Duration::from_millis(250)
        } else {
            Duration::from_millis(50)
        };
        loop {
            let sent = Instant::now();
            let outcome = send(self.stub.clone()).await;
            self.swarm
                .recorder
                .record(rpc, sent, outcome.as_ref().map(|_| ()));
            match outcome {
                Err(s) if retry_on.contains(&s.code()) && began.elapsed() < within => {
                    tokio::time::sleep(pause.mul_f64(jitter(self.place.pid, sent))).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                outcome => return outcome.map(Response::into_inner),
            }
        }
    }

    async fn register(&self) -> Result<v1::RegisterReply, String> {
        let host = self.place.slot / self.swarm.workers_per_host;
        let local = self.place.slot % self.swarm.workers_per_host;
        let request = v1::RegisterRequest {
            api_version: API_VERSION,
            job_id: String::new(),
            host: format!("sim-host-{host}"),
            pid: self.place.pid,
            device: format!("cuda:{local}"),
            collective_addr: String::new(),
            slot: Some(self.place.slot),
        };
        let retry = [
            Code::Unavailable,
            Code::AlreadyExists,
            Code::ResourceExhausted,
        ];
        self.call("Register", &retry, Duration::from_secs(120), |mut c| {
            let r = request.clone();
            async move { c.register(r).await }
        })
        .await
        .map_err(|s| format!("slot {}: Register: {s}", self.place.slot))
    }

    async fn join(
        &self,
        registered: &v1::RegisterReply,
        left_generation: u64,
    ) -> Result<v1::JoinReply, String> {
        let request = v1::JoinRequest {
            api_version: API_VERSION,
            worker_id: registered.worker_id.clone(),
            facts: Some(self.swarm.facts),
            left_generation,
            live: None,
        };
        loop {
            let reply = self
                .call("Join", RATE, RATE_WITHIN, |mut c| {
                    let r = request.clone();
                    async move { c.join(r).await }
                })
                .await;
            match reply {
                Ok(joined) => return Ok(joined),
                // The long poll's end: the generation has not formed yet.
                Err(s) if s.code() == Code::DeadlineExceeded => continue,
                Err(s) => return Err(format!("{}: Join: {s}", registered.worker_id)),
            }
        }
    }

    /// One generation, from the NCCL id to Finish, or until it ends or this worker goes
    /// silent.
    async fn generation(
        &mut self,
        registered: &v1::RegisterReply,
        joined: &v1::JoinReply,
    ) -> Result<GenerationEnd, String> {
        let mut silence = self.swarm.silence.subscribe();
        let goes_silent = self.place.goes_silent;
        if goes_silent && *silence.borrow() {
            return Ok(GenerationEnd::Silent);
        }
        self.step.store(joined.resume_step, Ordering::SeqCst);
        // The heartbeat starts before the group forms, as the real worker's.
        let (rejoin_tx, mut rejoin) = watch::channel(None::<Instant>);
        let heartbeat = tokio::spawn(heartbeat(
            self.swarm.clone(),
            self.stub.clone(),
            self.place,
            registered.clone(),
            joined.generation,
            self.step.clone(),
            rejoin_tx,
        ));
        let _stop_heartbeat = AbortOnDrop(heartbeat);
        let outcome = tokio::select! {
            outcome = self.train(registered, joined) => outcome,
            // Only a REJOIN: the sender also goes when the heartbeat ends on STOP (this
            // rank's Finish is in) or is aborted.
            Ok(_) = rejoin.wait_for(Option::is_some) => Ok(GenerationEnd::Rejoin),
            _ = silence.wait_for(|s| *s), if goes_silent => Ok(GenerationEnd::Silent),
        };
        if let Some(at) = *rejoin.borrow() {
            self.report.told_rejoin_at.get_or_insert(at);
        }
        outcome
    }

    /// The generation's training: the NCCL id, the steps, checkpoints and Finish.
    async fn train(
        &mut self,
        registered: &v1::RegisterReply,
        joined: &v1::JoinReply,
    ) -> Result<GenerationEnd, String> {
        let (worker_id, generation) = (registered.worker_id.clone(), joined.generation);
        let fail = |rpc: &str, s: Status| format!("{worker_id} (rank {}): {rpc}: {s}", joined.rank);
        if joined.rank == 0 {
            let nccl_id = (0..128).map(|i| (i as u8) ^ (generation as u8)).collect();
            let request = v1::PublishNcclIdRequest {
                api_version: API_VERSION,
                worker_id: worker_id.clone(),
                generation,
                nccl_id,
            };
            self.call("PublishNcclId", RATE, RATE_WITHIN, |mut c| {
                let r = request.clone();
                async move { c.publish_nccl_id(r).await }
            })
            .await
            .map_err(|s| fail("PublishNcclId", s))?;
        } else {
            let request = v1::GetNcclIdRequest {
                api_version: API_VERSION,
                worker_id: worker_id.clone(),
                generation,
            };
            loop {
                match self
                    .call("GetNcclId", RATE, RATE_WITHIN, |mut c| {
                        let r = request.clone();
                        async move { c.get_nccl_id(r).await }
                    })
                    .await
                {
                    Ok(_) => break,
                    Err(s) if s.code() == Code::DeadlineExceeded => continue,
                    Err(s) if s.code() == Code::Aborted => return Ok(GenerationEnd::Rejoin),
                    Err(s) => return Err(fail("GetNcclId", s)),
                }
            }
        }
        // The collective: every rank takes its first step together.
        let barrier = self.swarm.barrier(generation, joined.world_size);
        if tokio::time::timeout(Duration::from_secs(120), barrier.wait())
            .await
            .is_err()
        {
            return Err(format!(
                "{worker_id}: the other ranks of generation {generation} never formed the group"
            ));
        }
        let started = tokio::time::Instant::now();
        let first_step = joined.resume_step;
        let total = joined.total_steps;
        let spe = joined.steps_per_epoch.max(1);
        let mut broken = self.swarm.broken.subscribe();
        let mut plan = self
            .epoch_plan(&worker_id, generation, first_step / spe)
            .await?;
        let mut acks: Vec<JoinHandle<Result<AckRecord, String>>> = Vec::new();
        let mut step = first_step;
        while step < total {
            let due = started + self.swarm.step_time * (step + 1 - first_step) as u32;
            tokio::time::sleep_until(due).await;
            if *broken.borrow_and_update() == generation {
                // A peer is gone: the collective hangs until the generation ends.
                std::future::pending::<()>().await;
            }
            step += 1;
            self.step.store(step, Ordering::SeqCst);
            if joined.rank == 0
                && (step == 1 || step == total || step.is_multiple_of(self.swarm.log_every))
            {
                self.report_progress(&worker_id, generation, step, spe)
                    .await?;
            }
            if plan.checkpoint_steps.contains(&step) {
                let store = self.swarm.run_store(registered)?;
                acks.push(tokio::spawn(acknowledge(
                    self.swarm.clone(),
                    self.stub.clone(),
                    store,
                    (
                        worker_id.clone(),
                        generation,
                        joined.rank,
                        joined.world_size,
                    ),
                    (step, step.saturating_sub(1) / spe),
                    spe,
                )));
            }
            if step == plan.end_step && step < total {
                plan = self.epoch_plan(&worker_id, generation, step / spe).await?;
            }
        }
        for ack in acks {
            match ack.await {
                Ok(Ok(record)) => self.report.acks.push(record),
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(format!("{worker_id}: the ack task failed: {e}")),
            }
        }
        let request = v1::FinishRequest {
            api_version: API_VERSION,
            worker_id: worker_id.clone(),
            generation,
            step,
            error: String::new(),
            retryable: false,
        };
        self.call("Finish", RATE, RATE_WITHIN, |mut c| {
            let r = request.clone();
            async move { c.finish(r).await }
        })
        .await
        .map_err(|s| fail("Finish", s))?;
        Ok(GenerationEnd::Finished)
    }

    async fn epoch_plan(
        &self,
        worker_id: &str,
        generation: u64,
        epoch: u64,
    ) -> Result<v1::EpochPlan, String> {
        let request = v1::EpochPlanRequest {
            api_version: API_VERSION,
            worker_id: worker_id.to_string(),
            generation,
            epoch,
        };
        self.call("GetEpochPlan", RATE, RATE_WITHIN, |mut c| {
            let r = request.clone();
            async move { c.get_epoch_plan(r).await }
        })
        .await
        .map_err(|s| format!("{worker_id}: GetEpochPlan of epoch {epoch}: {s}"))
    }

    async fn report_progress(
        &self,
        worker_id: &str,
        generation: u64,
        step: u64,
        steps_per_epoch: u64,
    ) -> Result<(), String> {
        let request = v1::ProgressReport {
            api_version: API_VERSION,
            worker_id: worker_id.to_string(),
            generation,
            step,
            epoch: (step - 1) / steps_per_epoch,
            loss: 10.0 / step as f64,
            lr: 0.1,
            samples_per_s: 1000.0,
            data_wait_ms: 1.0,
            bad_records: 0,
            gamma_local: 0.5,
            gamma_global: 0.5,
        };
        match self
            .call("ReportProgress", RATE, RATE_WITHIN, |mut c| {
                let r = request.clone();
                async move { c.report_progress(r).await }
            })
            .await
        {
            // A report is best effort, as the real worker's; refusals are counted.
            Ok(_) | Err(_) => Ok(()),
        }
    }
}

/// Rate refusals are sent again, as the real client does, for up to a minute.
const RATE: &[Code] = &[Code::ResourceExhausted];
pub const RATE_WITHIN: Duration = Duration::from_secs(60);

/// Aborts the task when dropped (the heartbeat of a generation that is over).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
