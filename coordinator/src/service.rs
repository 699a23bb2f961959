//! Thin tonic handlers over [`Job`]: check the api_version, lock, call the state machine,
//! unlock, carry out its effects (commits, snapshots, logs), answer. `Join` and
//! `GetNcclId` long-poll: they call the state machine again whenever the job changes, until
//! it answers or their deadline passes (DEADLINE_EXCEEDED; the worker calls again).

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lgaf_proto::auth::{JobToken, RequireToken};
use lgaf_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use lgaf_proto::{v1, Versioned, MAX_MESSAGE_BYTES};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};
use tracing::{debug, error, info, warn, Instrument};

use crate::job::{CommitError, CommitRequest, Effect, Job, JobError, JobPhase, Millis};
use crate::observe::JobObserver;

/// What a commit came to: the manifest's key, or why it was not written.
type CommitOutcome = Result<String, CommitError>;
use crate::rate::{Gate, PeerRateLimit};
use crate::store::{CheckpointCommitter, JobStatePersistence, StoreError};

/// The status code of each refusal, as `coordinator.proto` promises.
pub fn status_of(e: JobError) -> Status {
    let message = e.to_string();
    match e {
        JobError::InvalidArgument { .. } => Status::invalid_argument(message),
        JobError::UnknownWorker(_) => Status::not_found(message),
        JobError::StaleGeneration { .. } => Status::aborted(message),
        JobError::FailedPrecondition(_) | JobError::FactsMismatch { .. } | JobError::JobOver(_) => {
            Status::failed_precondition(message)
        }
        JobError::SlotTaken { .. } => Status::already_exists(message),
        JobError::OutOfRange { .. } => Status::out_of_range(message),
        JobError::NoPlace(_) => Status::unavailable(message),
    }
}

/// How long saving the job after a change may hold up the call that changed it.
pub const PERSIST_LIMIT: Duration = Duration::from_secs(10);

/// Wall-clock milliseconds, the `now` the state machine is given.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// The longest a Join or GetNcclId waits before DEADLINE_EXCEEDED (shorter when the
    /// client's own grpc-timeout is shorter). Bounded so that a worker notices a dead
    /// coordinator and the server never holds a call forever.
    pub long_poll_max: Duration,
    /// A waiting Join looks at the job again at least this often, which also counts as
    /// hearing from the worker (see `Job::expire_waiting`): the heartbeat interval.
    pub long_poll_refresh: Duration,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            long_poll_max: Duration::from_secs(30),
            long_poll_refresh: Duration::from_secs(2),
        }
    }
}

struct Shared<C, P> {
    job: Mutex<Job>,
    /// Bumped after every call that produced effects (the job's events), to wake the
    /// binary.
    changed: watch::Sender<u64>,
    /// Bumped after the events that may answer a waiting long poll
    /// ([`Effect::may_answer_long_polls`]), to wake them.
    answerable: watch::Sender<u64>,
    committer: C,
    persistence: P,
    /// Serialises snapshot writes, and a snapshot is taken only once it is held, so an
    /// older snapshot never overwrites a newer one.
    persist_lock: tokio::sync::Mutex<()>,
    options: ServiceOptions,
    /// Workers the job lost, for the binary to stop (if local and still running).
    lost: tokio::sync::broadcast::Sender<LostWorker>,
    /// The job's trace and metrics, fed with its effects.
    observer: JobObserver,
}

/// A worker the job forgot after losing it (see `Job::lose`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostWorker {
    pub worker_id: String,
    pub slot: Option<u32>,
    pub pid: u32,
    pub host: String,
}

/// The coordinator's gRPC service and a handle on its job for the binary and tests.
pub struct CoordinatorService<C, P> {
    shared: Arc<Shared<C, P>>,
}

impl<C, P> Clone for CoordinatorService<C, P> {
    fn clone(&self) -> Self {
        CoordinatorService {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C: CheckpointCommitter, P: JobStatePersistence> CoordinatorService<C, P> {
    pub fn new(job: Job, committer: C, persistence: P, options: ServiceOptions) -> Self {
        Self::observed(
            job,
            committer,
            persistence,
            options,
            JobObserver::disabled(),
        )
    }

    /// [`CoordinatorService::new`], with the job's trace and metrics in `observer`.
    pub fn observed(
        job: Job,
        committer: C,
        persistence: P,
        options: ServiceOptions,
        observer: JobObserver,
    ) -> Self {
        let (changed, _) = watch::channel(0);
        let (answerable, _) = watch::channel(0);
        let (lost, _) = tokio::sync::broadcast::channel(64);
        CoordinatorService {
            shared: Arc::new(Shared {
                job: Mutex::new(job),
                changed,
                answerable,
                committer,
                persistence,
                persist_lock: tokio::sync::Mutex::new(()),
                options,
                lost,
                observer,
            }),
        }
    }

    /// The tonic service with bounded message sizes.
    pub fn into_server(self) -> CoordinatorServer<Self> {
        CoordinatorServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn lock(&self) -> MutexGuard<'_, Job> {
        // A panic in a handler must not take the whole job down with a poisoned lock; the
        // state machine validates before it mutates, so the state is consistent.
        self.shared
            .job
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the job.
    pub fn with_job<T>(&self, f: impl FnOnce(&Job) -> T) -> T {
        f(&self.lock())
    }

    pub fn status(&self) -> v1::JobStatus {
        self.lock().status(now_ms())
    }

    /// Wakes after every event of the job (a call that produced effects).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Waits until the job has finished or failed.
    pub async fn wait_until_over(&self) -> JobPhase {
        let mut rx = self.subscribe();
        loop {
            {
                let job = self.lock();
                if job.is_over() {
                    return job.phase().clone();
                }
            }
            if rx.changed().await.is_err() {
                // Unreachable while `self` holds the sender.
                return self.lock().phase().clone();
            }
        }
    }

    /// Waits until every worker has been told STOP or has finished, or `timeout`. Polls:
    /// telling a worker STOP is not an event worth waking every waiter for.
    pub async fn wait_until_released(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.lock().all_released() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails the job from outside the protocol (see [`Job::fail`]).
    pub async fn fail(&self, error: impl Into<String>) -> bool {
        let error = error.into();
        self.call(|job, _| Ok::<_, JobError>(job.fail(error)))
            .await
            .unwrap_or(false)
    }

    /// Cancels the job (see [`Job::cancel`]); false when it was already over.
    pub async fn cancel(&self, reason: impl Into<String>) -> bool {
        let reason = reason.into();
        self.call(|job, _| Ok::<_, JobError>(job.cancel(reason)))
            .await
            .unwrap_or(false)
    }

    /// The job's clock (see [`Job::tick`]): loses silent workers, forms a smaller
    /// generation once its grace period is over.
    pub async fn tick(&self) {
        let _ = self
            .call(|job, now| {
                job.tick(now);
                Ok::<_, JobError>(())
            })
            .await;
    }

    /// A local worker process exited before the job ended (see
    /// [`Job::local_worker_exited`]); true if a replacement should be started.
    pub async fn local_worker_exited(&self, slot: u32, how: String) -> bool {
        self.call(|job, now| Ok::<_, JobError>(job.local_worker_exited(slot, &how, now)))
            .await
            .unwrap_or(false)
    }

    /// Every worker the job loses from now on.
    pub fn lost_workers(&self) -> tokio::sync::broadcast::Receiver<LostWorker> {
        self.shared.lost.subscribe()
    }

    /// Saves a snapshot of the job now.
    pub async fn persist(&self) -> Result<(), StoreError> {
        let _order = self.shared.persist_lock.lock().await;
        let snapshot = self.lock().snapshot(now_ms());
        self.shared.persistence.save(snapshot).await
    }

    /// After `effects`: wakes the binary's waits if there are any, and the long polls if
    /// one may answer them.
    fn bump(&self, effects: &[Effect]) {
        if effects.is_empty() {
            return;
        }
        self.shared.changed.send_modify(|v| *v = v.wrapping_add(1));
        if effects.iter().any(Effect::may_answer_long_polls) {
            self.shared
                .answerable
                .send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Runs `f` on the job, then its effects. Returns the commits carried out, by step.
    async fn call_with_commits<T>(
        &self,
        f: impl FnOnce(&mut Job, Millis) -> Result<T, JobError>,
    ) -> Result<(T, Vec<(u64, CommitOutcome)>), Status> {
        let (result, effects) = {
            let mut job = self.lock();
            let r = f(&mut job, now_ms());
            (r, job.take_effects())
        };
        // Only events wake the waiters: a long poll that re-checks and finds nothing new
        // must not wake the others (which would wake it again, and so on).
        self.bump(&effects);
        let changed = !effects.is_empty();
        let commits = self.run_effects(effects).await;
        if changed {
            self.observe_status();
        }
        match result {
            Ok(v) => Ok((v, commits)),
            Err(e) => {
                debug!("refused: {e}");
                Err(status_of(e))
            }
        }
    }

    async fn call<T>(
        &self,
        f: impl FnOnce(&mut Job, Millis) -> Result<T, JobError>,
    ) -> Result<T, Status> {
        self.call_with_commits(f).await.map(|(v, _)| v)
    }

    /// Calls `f` until it answers, fails, or the deadline passes.
    async fn long_poll<T>(
        &self,
        deadline: Instant,
        mut f: impl FnMut(&mut Job, Millis) -> Result<Option<T>, JobError>,
        waiting_for: impl Fn(&Job) -> String,
    ) -> Result<T, Status> {
        loop {
            // Subscribed before looking, so a change after the look is not missed.
            let mut rx = self.shared.answerable.subscribe();
            if let Some(v) = self.call(&mut f).await? {
                return Ok(v);
            }
            tokio::select! {
                r = rx.changed() => {
                    if r.is_err() {
                        return Err(Status::unavailable("the coordinator is shutting down"));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let why = waiting_for(&self.lock());
                    return Err(Status::deadline_exceeded(why));
                }
                // While the client waits, it is alive; once it hangs up, tonic drops this
                // future and the refreshes stop.
                _ = tokio::time::sleep(self.shared.options.long_poll_refresh) => {}
            }
        }
    }

    fn deadline<T>(&self, req: &Request<T>) -> Instant {
        let mut wait = self.shared.options.long_poll_max;
        if let Some(client) = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
        {
            // Answer a little before the client gives up, so it gets DEADLINE_EXCEEDED with
            // our reason rather than its own timeout.
            wait = wait.min(client.mul_f64(0.9));
        }
        Instant::now() + wait
    }

    /// The job's gauges after a change.
    fn observe_status(&self) {
        let (gauges, wanted) = {
            let job = self.lock();
            (job.gauges(), job.settings().world_size)
        };
        self.shared.observer.status(&gauges, wanted);
    }

    /// Carries out effects in order; returns the commits made, by step.
    async fn run_effects(&self, effects: Vec<Effect>) -> Vec<(u64, CommitOutcome)> {
        let mut commits = Vec::new();
        let mut persist = false;
        for effect in effects {
            self.shared.observer.effect(&effect);
            match effect {
                Effect::Commit(c) => {
                    let step = c.step;
                    // In a task of its own: should the acking worker hang up, the commit
                    // still completes and is recorded, instead of staying "in flight".
                    let this = self.clone();
                    let outcome = match tokio::spawn(async move { this.commit(c).await }).await {
                        Ok(outcome) => outcome,
                        Err(e) => Err(CommitError(format!("the commit task failed: {e}"))),
                    };
                    commits.push((step, outcome));
                }
                Effect::Persist => persist = true,
                Effect::WorkerLost {
                    worker_id,
                    slot,
                    pid,
                    host,
                    reason,
                } => {
                    warn!(
                        "worker {worker_id} (pid {pid} on {host}) is lost and forgotten: {reason}"
                    );
                    // Nobody listening (no local workers) is fine.
                    let _ = self.shared.lost.send(LostWorker {
                        worker_id,
                        slot,
                        pid,
                        host,
                    });
                }
                other => log_effect(&other),
            }
        }
        if persist {
            self.persist_logged().await;
        }
        commits
    }

    /// Writes one manifest and records the outcome in the job.
    async fn commit(&self, c: CommitRequest) -> CommitOutcome {
        let step = c.step;
        // Saturating: the sizes are the ranks' word, checked against the store only now.
        let bytes = c
            .objects
            .iter()
            .fold(0u64, |sum, o| sum.saturating_add(o.size));
        let started = std::time::Instant::now();
        let span = self.shared.observer.commit_span(step);
        let outcome = self
            .shared
            .committer
            .commit(c)
            .instrument(span)
            .await
            .map_err(|e| CommitError(e.to_string()));
        self.shared.observer.committed(
            step,
            bytes,
            started.elapsed().as_secs_f64(),
            outcome.is_ok(),
        );
        if let Err(e) = &outcome {
            error!("checkpoint at step {step}: the commit failed: {e}");
        }
        let effects = {
            let mut job = self.lock();
            job.commit_done(step, outcome.clone(), now_ms());
            job.take_effects()
        };
        self.bump(&effects);
        let mut persist = false;
        for effect in &effects {
            self.shared.observer.effect(effect);
            match effect {
                Effect::Persist => persist = true,
                other => log_effect(other),
            }
        }
        if !effects.is_empty() {
            self.observe_status();
        }
        if persist {
            self.persist_logged().await;
        }
        outcome
    }

    /// Saves the job after a change, waiting at most [`PERSIST_LIMIT`]: the handlers and
    /// the supervisor's clock (failure detection) wait on it, and the store may retry an
    /// outage for minutes. The job goes on either way; only a coordinator restart would
    /// miss this state, and the next change saves it again.
    async fn persist_logged(&self) {
        match tokio::time::timeout(PERSIST_LIMIT, self.persist()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!("saving the job state failed: {e}"),
            Err(_) => error!(
                "saving the job state did not finish within {} s (the store is slow or \
                 away); the next change saves it again",
                PERSIST_LIMIT.as_secs()
            ),
        }
    }
}

/// The log line of an effect that needs nothing else.
fn log_effect(effect: &Effect) {
    match effect {
        Effect::WorkerRegistered {
            worker_id,
            host,
            device,
            slot,
            registered,
            wanted,
        } => {
            let slot = slot.map_or_else(String::new, |s| format!(", slot {s}"));
            info!(
                "worker {worker_id} registered from {host} ({device}{slot}): {registered} of \
                 {wanted}"
            );
        }
        Effect::OfferIgnored { worker_id, reason } => {
            warn!("worker {worker_id}'s offer of its state was ignored: {reason}");
        }
        Effect::WorkerRefused { worker_id, reason } => {
            warn!("worker {worker_id} refused and forgotten: {reason}");
        }
        Effect::GenerationFormed {
            generation,
            world_size,
            data_world_size,
            backend,
            steps_per_epoch,
            total_steps,
            resume_step,
            live,
            not_live,
        } => {
            let from = match (live, resume_step) {
                (Some(live), _) => format!(
                    ", resuming from the state of generation {}'s survivors at step {} (live \
                     recovery: nothing read from the store)",
                    live.source_generation, live.step
                ),
                (None, 0) => String::new(),
                (None, s) => format!(", resuming from the checkpoint at step {s}"),
            };
            let from = match not_live {
                Some(why) => format!("{from}; not from the survivors: {why}"),
                None => from,
            };
            let shards = if data_world_size > world_size {
                format!(" holding the job's {data_world_size} data shards")
            } else {
                String::new()
            };
            info!(
                "generation {generation} formed: {world_size} ranks{shards}, {backend} backend, \
                 {steps_per_epoch} steps per epoch, {total_steps} steps{from}"
            )
        }
        Effect::NcclIdPublished { generation } => {
            info!("generation {generation}: rank 0 published the NCCL id")
        }
        Effect::Progress(p) => info!(
            "step {}/{} epoch {} loss {:.4} lr {:.5} {:.1} samples/s data wait {:.1} ms{}",
            p.step,
            p.total_steps,
            p.epoch,
            p.loss,
            p.lr,
            p.samples_per_s,
            p.data_wait_ms,
            if p.bad_records > 0 {
                format!(" bad records {}", p.bad_records)
            } else {
                String::new()
            }
        ),
        Effect::CheckpointCommitted { step, manifest } => {
            info!("checkpoint at step {step} committed: {manifest}")
        }
        Effect::GenerationEnded {
            generation,
            reason,
            restart,
            max_restarts,
        } => match (generation, restart) {
            (0, Some(restart)) => warn!("{reason}; restart {restart} of {max_restarts}"),
            (n, Some(restart)) => warn!(
                "generation {n} ended: {reason}; restart {restart} of {max_restarts}: the next \
                 generation resumes from its survivors' state, or else from the last \
                 committed checkpoint"
            ),
            (n, None) => info!(
                "generation {n} ended: {reason}; the next generation resumes from its ranks' \
                 state, or else from that checkpoint"
            ),
        },
        Effect::WorkerLost { worker_id, .. } => warn!("worker {worker_id} is lost"),
        Effect::JobEnded(JobPhase::Failed { error }) => error!("job failed: {error}"),
        Effect::JobEnded(JobPhase::Cancelled { reason }) => warn!("job cancelled: {reason}"),
        Effect::JobEnded(phase) => info!("job {phase:?}"),
        Effect::Commit(c) => debug!("commit of step {} requested", c.step),
        Effect::Persist => {}
    }
}

/// `grpc-timeout` header values: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl<C: CheckpointCommitter, P: JobStatePersistence> Coordinator for CoordinatorService<C, P> {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterReply>, Status> {
        let req = request.into_inner();
        req.check_version()?;
        let reply = self.call(|job, now| job.register(&req, now)).await?;
        // The job's trace context, which the worker's spans join.
        let trace = self.shared.observer.job_trace();
        Ok(Response::from_parts(trace, reply, Default::default()))
    }

    async fn join(
        &self,
        request: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinReply>, Status> {
        let deadline = self.deadline(&request);
        let req = request.into_inner();
        req.check_version()?;
        self.long_poll(
            deadline,
            |job, now| job.join(&req, now),
            |job| {
                format!(
                    "the generation has not formed yet: {} of {} workers registered, {} joined; \
                     call Join again",
                    job.registered_count(),
                    job.settings().world_size,
                    job.joined_count()
                )
            },
        )
        .await
        .map(|reply| {
            // The generation's trace context, which the rank's spans join.
            let trace = self.shared.observer.generation_trace(reply.generation);
            Response::from_parts(trace, reply, Default::default())
        })
    }

    async fn publish_nccl_id(
        &self,
        request: Request<v1::PublishNcclIdRequest>,
    ) -> Result<Response<v1::PublishNcclIdReply>, Status> {
        let req = request.into_inner();
        req.check_version()?;
        self.call(|job, now| job.publish_nccl_id(&req, now))
            .await
            .map(Response::new)
    }

    async fn get_nccl_id(
        &self,
        request: Request<v1::GetNcclIdRequest>,
    ) -> Result<Response<v1::GetNcclIdReply>, Status> {
        let deadline = self.deadline(&request);
        let req = request.into_inner();
        req.check_version()?;
        self.long_poll(
            deadline,
            |job, now| job.nccl_id(&req, now),
            |_| "rank 0 has not published the NCCL id yet; call GetNcclId again".into(),
        )
        .await
        .map(|nccl_id| Response::new(v1::GetNcclIdReply { nccl_id }))
    }

    async fn get_epoch_plan(
        &self,
        request: Request<v1::EpochPlanRequest>,
    ) -> Result<Response<v1::EpochPlan>, Status> {
        let req = request.into_inner();
        req.check_version()?;
        self.call(|job, now| job.epoch_plan(&req, now))
            .await
            .map(Response::new)
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatReply>, Status> {
        let req = request.into_inner();
        req.check_version()?;
        self.call(|job, now| job.heartbeat(&req, now))
            .await
            .map(Response::new)
    }

    async fn report_progress(
        &self,
        request: Request<v1::ProgressReport>,
    ) -> Result<Response<v1::ProgressReply>, Status> {
        let req = request.into_inner();
        req.check_version()?;
        self.call(|job, now| job.report_progress(&req, now))
            .await
            .map(Response::new)
    }

    async fn checkpoint_ack(
        &self,
        request: Request<v1::CheckpointAckRequest>,
    ) -> Result<Response<v1::CheckpointAckReply>, Status> {
        let req = request.into_inner();
        req.check_version()?;
        let (mut reply, commits) = self
            .call_with_commits(|job, now| job.checkpoint_ack(&req, now))
            .await?;
        if let Some((_, outcome)) = commits.iter().find(|(step, _)| *step == req.step) {
            match outcome {
                Ok(_) => reply.committed = true,
                Err(e) => {
                    return Err(Status::unavailable(format!(
                        "checkpoint at step {}: every rank acknowledged it but the commit \
                         failed: {e}; acknowledge again to retry",
                        req.step
                    )))
                }
            }
        }
        Ok(Response::new(reply))
    }

    async fn finish(
        &self,
        request: Request<v1::FinishRequest>,
    ) -> Result<Response<v1::FinishReply>, Status> {
        let req = request.into_inner();
        req.check_version()?;
        self.call(|job, now| job.finish(&req, now))
            .await
            .map(Response::new)
    }

    async fn get_job_status(
        &self,
        request: Request<v1::JobStatusRequest>,
    ) -> Result<Response<v1::JobStatus>, Status> {
        request.get_ref().check_version()?;
        Ok(Response::new(self.status()))
    }
}

/// Who may talk to the coordinator: the job token workers must present, and the TLS
/// identity it serves with (plain HTTP/2 without); and what anyone may ask without the
/// token: the `grpc.health.v1` service, if any.
#[derive(Clone, Debug, Default)]
pub struct Security {
    pub token: Option<JobToken>,
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Requests a second each client address may make (bursts of twice that); None: any.
    pub requests_per_sec: Option<u32>,
    /// Served beside the job, outside the gate: probes carry no token, and the health
    /// answer neither reveals nor locks the job, so it needs neither the token nor the rate
    /// limit that guards the job's lock.
    pub health:
        Option<tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>>,
}

/// Serves `service` on `listener` until `shutdown` completes.
pub async fn serve<C: CheckpointCommitter, P: JobStatePersistence>(
    listener: tokio::net::TcpListener,
    service: CoordinatorService<C, P>,
    security: Security,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // A worker makes a handful of calls at a time (long polls, heartbeat, acks): a client
    // with many more in flight is confused or hostile, and waits.
    let mut builder = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(32)
        .http2_keepalive_interval(Some(Duration::from_secs(30)));
    if let Some(tls) = security.tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_optional_service(security.health)
        .add_service(InterceptedService::new(
            service.into_server(),
            Gate {
                rate: security.requests_per_sec.map(PeerRateLimit::new),
                token: RequireToken(security.token),
            },
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "S", "5", "5x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn codes() {
        use tonic::Code;
        let cases = [
            (
                JobError::InvalidArgument {
                    field: "f".into(),
                    message: "m".into(),
                },
                Code::InvalidArgument,
            ),
            (JobError::UnknownWorker("w".into()), Code::NotFound),
            (
                JobError::StaleGeneration {
                    got: 1,
                    current: "2".into(),
                },
                Code::Aborted,
            ),
            (
                JobError::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (
                JobError::JobOver("finished".into()),
                Code::FailedPrecondition,
            ),
            (
                JobError::SlotTaken {
                    slot: 0,
                    by: "w".into(),
                },
                Code::AlreadyExists,
            ),
            (
                JobError::OutOfRange {
                    field: "epoch".into(),
                    message: "m".into(),
                },
                Code::OutOfRange,
            ),
            (JobError::NoPlace("full".into()), Code::Unavailable),
        ];
        for (e, code) in cases {
            assert_eq!(status_of(e).code(), code);
        }
    }
}
