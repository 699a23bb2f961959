//! One rank of a coordinated run (`lgaf-worker`): its life cycle under the coordinator.
//!
//! [`run`] registers, then takes part in one generation after another until the job is
//! over for it, then says Finish. A generation ([`generation::train`]) is: join (the
//! coordinator answers with a rank, a world size and the checkpoint to resume), form the
//! collective group, resume, and train epoch by epoch ([`epochs`]) while the heartbeat
//! thread ([`heartbeat`]) keeps the coordinator informed and watches it; checkpoint parts
//! are uploaded in the background and acknowledged in step order ([`checkpoint`]). When a
//! generation ends under the rank (a peer lost, the group failed), it keeps its state in
//! memory and offers it with its next Join ([`live`]): the next generation starts from the
//! survivors' state when together they hold all of it, else from the last committed
//! checkpoint.
//!
//! The trainer is synchronous; gRPC calls block on a small tokio runtime held by the
//! [`Client`]. What one generation needs to know of the others (the generation left, for
//! the next Join and for Finish) is passed explicitly in [`Membership`].

mod checkpoint;
mod epochs;
mod generation;
mod heartbeat;
mod live;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use lgaf_proto::auth::JobToken;
use lgaf_proto::exit::ExitClass;
use lgaf_proto::v1;
use lgaf_proto::API_VERSION;
use tracing::{info, warn};

use lgaf_telemetry::opentelemetry::KeyValue;
use lgaf_telemetry::{Telemetry, TelemetryError};
use tonic::metadata::MetadataMap;

use crate::coordinator_client::{bounded, Client, ClientError};
use crate::metrics::{Rank, WorkerMetrics};

pub use checkpoint::FAILPOINT_ENV;

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
    /// How to verify an `https://` coordinator, and the certificate to present to it.
    pub tls: lgaf_proto::tls::ClientTlsFiles,
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Coordinator(ClientError),
    #[error(transparent)]
    Worker(#[from] crate::WorkerError),
    #[error("checkpoint store: {0}")]
    Store(Box<lgaf_store::StoreError>),
    #[error("collective group: {0}")]
    Collective(#[from] lgaf_collective::CollectiveError),
    /// The coordinator ended this rank's generation (a peer was lost): join the next.
    #[error("the generation ended: {0}")]
    GenerationOver(String),
    /// The survivors' state, received whole, could not be restored: the generation fails
    /// (the coordinator then takes a checkpoint), not the rank.
    #[error("the survivors' state could not be taken over: {0}")]
    LiveTransfer(Box<crate::WorkerError>),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The heartbeat says the job is over, not how; [`settle`] asks the coordinator.
    #[error("{0}")]
    JobOver(String),
    /// The heartbeat says the job finished (without this worker finishing its part).
    #[error("{0}")]
    JobFinished(String),
    /// The coordinator did not answer for the heartbeat deadline.
    #[error("{0}")]
    CoordinatorGone(String),
    /// The coordinator says the job failed, for this reason.
    #[error("the job failed: {0}")]
    JobFailed(String),
    /// The coordinator says the job was cancelled (it was stopped): a coordinator started
    /// again resumes it, with this worker started again too.
    #[error("the job was cancelled: {0}")]
    JobCancelled(String),
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

impl From<lgaf_store::StoreError> for RunError {
    fn from(e: lgaf_store::StoreError) -> Self {
        RunError::Store(Box::new(e))
    }
}

impl RunError {
    /// Whether starting this worker again could succeed (the exit-code contract,
    /// `lgaf_proto::exit`).
    pub fn exit_class(&self) -> ExitClass {
        match self {
            RunError::Coordinator(e) => client_error_class(e),
            RunError::Worker(e) => e.exit_class(),
            // The OTLP endpoint or protocol given is wrong.
            RunError::Telemetry(_) => ExitClass::Permanent,
            RunError::JobFailed(_) => ExitClass::JobFailed,
            // Whether the job is over could not be learned: a new pod will ask again.
            RunError::JobOver(_)
            | RunError::JobFinished(_)
            | RunError::JobCancelled(_)
            | RunError::CoordinatorGone(_)
            | RunError::Store(_)
            | RunError::Collective(_)
            | RunError::GenerationOver(_)
            | RunError::LiveTransfer(_)
            | RunError::Other(_) => ExitClass::Retryable,
        }
    }

    /// The generation failed under this rank (a peer died or hung, the coordinator ended
    /// it), not the rank itself: it may join the next generation.
    fn ends_generation_only(&self) -> bool {
        matches!(
            self,
            RunError::GenerationOver(_)
                | RunError::LiveTransfer(_)
                | RunError::Collective(_)
                | RunError::Worker(crate::WorkerError::Collective { .. })
        )
    }
}

/// A refusal that the same worker would get again (a wrong token, a request the
/// coordinator finds malformed, facts or settings it cannot take) is permanent; a
/// coordinator that is away, overloaded or restarted is worth waiting for.
fn client_error_class(e: &ClientError) -> ExitClass {
    use tonic::Code;
    match e {
        ClientError::Connect { .. } => ExitClass::Retryable,
        ClientError::Call { status, .. } => match status.code() {
            Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented => ExitClass::Permanent,
            Code::Ok
            | Code::Cancelled
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::NotFound
            | Code::AlreadyExists
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss => ExitClass::Retryable,
        },
    }
}

/// Whether `e` may only mean that the job is over: the heartbeat said so, or a call was
/// refused as FAILED_PRECONDITION (a Join after the job ended).
fn may_mean_job_over(e: &RunError) -> bool {
    match e {
        RunError::JobOver(_) => true,
        RunError::Coordinator(ClientError::Call { status, .. }) => {
            status.code() == tonic::Code::FailedPrecondition
        }
        _ => false,
    }
}

/// What a worker that stopped with `outcome` reports: when it may have stopped because the
/// job is over, the coordinator's word on how the job ended (finished: this worker's part
/// is done; failed: the job failed). Otherwise, or when the coordinator cannot say, the
/// outcome itself.
fn settle(client: &Client, outcome: Result<u64>) -> Result<u64> {
    let Err(e) = &outcome else {
        return outcome;
    };
    if let RunError::JobFinished(why) = e {
        info!("the job finished (this worker stopped: {why})");
        return Ok(0);
    }
    if !may_mean_job_over(e) {
        return outcome;
    }
    let request = v1::JobStatusRequest {
        api_version: API_VERSION,
    };
    let status = client.rt.block_on(bounded(
        "GetJobStatus",
        Duration::from_secs(10),
        client.send("GetJobStatus", request, |mut c, r| async move {
            c.get_job_status(r).await
        }),
    ));
    match status {
        Ok(status) => match status.state() {
            v1::JobState::Finished => {
                info!("the job finished (this worker stopped: {e})");
                Ok(status.step)
            }
            v1::JobState::Failed => Err(RunError::JobFailed(status.error)),
            v1::JobState::Cancelled => Err(RunError::JobCancelled(status.error)),
            v1::JobState::Waiting | v1::JobState::Running | v1::JobState::Unspecified => outcome,
        },
        Err(status_error) => {
            warn!(error = %status_error.message(), "asking how the job ended");
            outcome
        }
    }
}

/// This worker as the coordinator knows it, across generations.
struct Membership {
    /// What Register answered: the worker id, the run, the config, the heartbeat cadence.
    registered: v1::RegisterReply,
    /// The generation this worker is in, or last was (0 before the first Join): the next
    /// Join names it as the one left, and Finish reports it.
    generation: u64,
    /// What it kept of a generation that ended under it, offered with the next Join
    /// (live recovery); dropped once a generation has started from anything.
    live: Option<live::Held>,
}

/// What this worker tells about itself besides its calls: its metrics, and the trace
/// context the coordinator handed it for the job (each generation's comes with its Join).
struct Observer {
    metrics: WorkerMetrics,
    rank: Arc<Rank>,
    /// The Register reply's metadata: the job span's `traceparent`.
    job_trace: MetadataMap,
    /// Ranks other than 0 trace one step in this many.
    trace_step_every: u64,
}

/// Runs this worker until the job finishes (Ok) or fails (Err, also reported to the
/// coordinator when it can be). Export of its traces and metrics starts once it has
/// registered (the run and job it belongs to are in their resource).
pub fn run(args: WorkerArgs, telemetry: &mut Telemetry) -> Result<()> {
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| RunError::Other(format!("cannot start the gRPC runtime: {e}")))?,
    );
    let client = Client::connect(&args.coordinator, args.token.clone(), &args.tls, rt.clone())?;
    let listener = TcpListener::bind(&args.collective_bind).map_err(|e| {
        RunError::Other(format!(
            "cannot listen on {} for peers: {e}",
            args.collective_bind
        ))
    })?;
    // A pod started after the job ended (its Job replaced a failed one late) is refused
    // here: it learns how the job ended like a worker that was told to stop.
    let (registered, job_trace) = match register(&args, &client, &listener) {
        Ok(registered) => registered,
        Err(e) => return settle(&client, Err(e)).map(|_| ()),
    };
    let mut resource = vec![
        KeyValue::new("lgaf.run.id", registered.run_id.clone()),
        KeyValue::new("lgaf.job.id", registered.job_id.clone()),
        KeyValue::new("lgaf.worker.id", registered.worker_id.clone()),
        KeyValue::new("lgaf.device", args.device.clone()),
        KeyValue::new("host.name", lgaf_proto::this_host_name()),
        KeyValue::new("process.pid", i64::from(std::process::id())),
    ];
    if let Some(slot) = args.slot {
        resource.push(KeyValue::new("lgaf.slot", i64::from(slot)));
    }
    telemetry.start_export(resource)?;
    let observer = Observer {
        metrics: WorkerMetrics::new(&telemetry.meter("lgaf-worker")),
        rank: Arc::default(),
        job_trace,
        trace_step_every: telemetry.args().trace_step_every,
    };
    let mut member = Membership {
        registered,
        generation: 0,
        live: None,
    };

    // One generation after another until the job is over for this worker.
    let outcome = loop {
        let listener = match listener.try_clone() {
            Ok(l) => l,
            Err(e) => break Err(RunError::Other(format!("collective listener: {e}"))),
        };
        match generation::train(&args, &client, &mut member, &observer, listener) {
            Err(e) if e.ends_generation_only() => {
                let generation = member.generation;
                warn!(generation, error = %e, "left the generation; joining the next");
            }
            other => break other,
        }
    };
    let outcome = settle(&client, outcome);
    finish(&client, &member, &outcome);
    outcome.map(|_| ())
}

/// Registers this worker: its host, device and the address its peers reach it at. Returns
/// the reply and its metadata (the job's trace context).
fn register(
    args: &WorkerArgs,
    client: &Client,
    listener: &TcpListener,
) -> Result<(v1::RegisterReply, MetadataMap)> {
    let local = listener
        .local_addr()
        .expect("bound listener has an address");
    let host = args
        .collective_host
        .clone()
        .unwrap_or_else(|| local.ip().to_string());
    let register = v1::RegisterRequest {
        api_version: API_VERSION,
        job_id: String::new(),
        host: lgaf_proto::this_host_name(),
        pid: std::process::id(),
        device: args.device.clone(),
        collective_addr: format!("{host}:{}", local.port()),
        slot: args.slot,
    };
    let reply = client
        .rt
        .block_on(client.register(register))
        .map_err(|status| client.failed("Register", status))?;
    let (job_trace, registered, _) = reply.into_parts();
    info!(
        worker_id = registered.worker_id,
        run_id = registered.run_id,
        store = registered.store_url,
        "registered"
    );
    Ok((registered, job_trace))
}

/// The last word to the coordinator: the steps done, or why this worker failed. Bounded:
/// an unreachable coordinator does not keep the worker from exiting.
fn finish(client: &Client, member: &Membership, outcome: &Result<u64>) {
    let (step, error, retryable) = match outcome {
        Ok(step) => (*step, String::new(), false),
        Err(e) => (0, e.to_string(), e.exit_class() == ExitClass::Retryable),
    };
    let finish = v1::FinishRequest {
        api_version: API_VERSION,
        worker_id: member.registered.worker_id.clone(),
        generation: member.generation,
        step,
        error,
        retryable,
    };
    let sent = client.rt.block_on(bounded(
        "Finish",
        Duration::from_secs(10),
        client.send(
            "Finish",
            finish,
            |mut c, r| async move { c.finish(r).await },
        ),
    ));
    if let Err(status) = sent {
        warn!(error = %status.message(), "Finish was not accepted");
    }
}
