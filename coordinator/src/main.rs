//! `lgaf-coordinator`: runs one training job's control plane, and on a single machine
//! starts the workers itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use lgaf_coordinator::local::{default_worker_bin, local_devices, LocalWorkers, SpawnSpec};
use lgaf_coordinator::Security;
use lgaf_coordinator::{
    serve, stored_run, CoordinatorService, Job, JobPhase, JobSettings, JobStatePersistence,
    RunStore, ServiceOptions, Store,
};
use lgaf_proto::auth::JobToken;
use lgaf_proto::console::{eprint_line, print_line};
use lgaf_proto::v1;
use lgaf_store::{Lease, LeaseAttempt};
use sha2::{Digest, Sha256};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

/// Coordinates a data-parallel LGAF training job: workers register over gRPC, get their
/// rank, shards and checkpoint steps, and report progress; checkpoints are committed once
/// every rank has uploaded its part.
///
/// On one machine, `lgaf-coordinator --workers 2 --config train.toml` starts the workers
/// itself when none registers from outside within --grace-secs.
#[derive(Parser, Debug)]
#[command(name = "lgaf-coordinator", version)]
struct Args {
    /// Number of workers (the world size): one per GPU, or CPU processes. Every global
    /// batch is cut into this many data shards, whatever the ranks of a generation. With
    /// --min-workers it is the most ranks a generation has, hence its alias.
    #[arg(long, visible_alias = "max-workers", value_parser = clap::value_parser!(u32).range(1..=4096))]
    workers: u32,

    /// Elastic: continue with as few as this many workers when lost ones are not replaced
    /// within --elastic-grace-secs (ranks then hold several data shards: the same global
    /// batch, steps and learning rate), and grow back at the next checkpoint when workers
    /// join. Default: --workers (a lost worker must be replaced).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    min_workers: Option<u32>,

    /// How long a job with --min-workers waits for the full --workers after losing one
    /// before it continues with fewer, in seconds (at most a day).
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = wait_secs)]
    elastic_grace_secs: f64,

    /// Training configuration (TOML), handed to every worker as is; the workers apply
    /// their LGAF__SECTION__KEY environment overrides. Without it, the workers' defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Where checkpoints and the job state go: file:///abs/dir, a directory path (relative
    /// to the current directory), or s3://bucket/prefix configured by the AWS_* environment
    /// variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL,
    /// AWS_ALLOW_HTTP, ...), which the workers need too.
    #[arg(long, value_name = "URL", default_value = "runs-store")]
    store: String,

    /// The run's name in the store (runs/<RUN_ID>/...). The run id of an earlier run
    /// resumes it from its newest committed checkpoint. Default: derived from the
    /// configuration's hash and the start time, so each invocation is a new run.
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,

    /// The job's name; workers that ask for another job are refused. Default: the run id.
    #[arg(long, value_name = "ID")]
    job_id: Option<String>,

    /// Stop after this many steps (0: the configuration's schedule).
    #[arg(long, value_name = "S", default_value_t = 0)]
    max_steps: u64,

    /// Address for the gRPC service: HOST:PORT, or a bare PORT for all interfaces.
    /// Port 0 picks a free port; the address is printed on stdout.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: String,

    /// Start the workers on this machine right away (otherwise only when none has
    /// registered from outside within --grace-secs).
    #[arg(long)]
    spawn_local: bool,

    /// The worker executable for local workers. Default: lgaf-worker beside this one.
    #[arg(long, value_name = "PATH")]
    worker_bin: Option<PathBuf>,

    /// Seconds to wait for workers from outside before starting local ones (at most a day).
    #[arg(long, value_name = "SECS", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(0..=MAX_WAIT_SECS))]
    grace_secs: u64,

    /// How often workers send heartbeats, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(10..))]
    heartbeat_ms: u32,

    /// A worker not heard from for this long (milliseconds) is lost: its generation ends
    /// and restarts without it (see --max-restarts). Workers stop when the coordinator has
    /// not answered them for as long.
    #[arg(long, value_name = "MS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u32).range(100..))]
    heartbeat_deadline_ms: u32,

    /// Collective operation timeout handed to the workers, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 300_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    collective_timeout_ms: u32,

    /// A file holding the job token every worker must present (e.g. a mounted Kubernetes
    /// secret); else $LGAF_JOB_TOKEN. With neither, a coordinator that spawns its workers
    /// (--spawn-local) makes a random one and hands it to them; otherwise requests are not
    /// authenticated (a warning says so).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,

    /// Serve over TLS with this certificate (PEM; with --tls-key). Workers then connect to
    /// https:// and verify it against their --tls-ca.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// The CA certificate (PEM) spawned local workers verify --tls-cert against (default:
    /// --tls-cert itself, for a self-signed certificate).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,

    /// Seconds the run's coordinator lease lasts without renewal (it is renewed three
    /// times as often), at most a day. A coordinator started while another holds the run's
    /// lease waits for it to lapse, and refuses to start if it is being renewed.
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=MAX_WAIT_SECS))]
    lease_secs: u64,

    /// Times a generation may be restarted from the last checkpoint after losing a worker
    /// (a crash, a hang, an unreachable host) before the job fails.
    #[arg(long, value_name = "N", default_value_t = 3)]
    max_restarts: u32,

    /// Requests a second one client address may make (in bursts of twice that); more are
    /// refused with RESOURCE_EXHAUSTED, and workers retry them after a pause. Callers with
    /// the job token and callers without it are counted apart, so unauthenticated traffic
    /// never slows the job's workers. Workers make a few a second each.
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_requests_per_sec: u32,

    /// Seconds local workers get to exit after SIGTERM before they are killed (at most a
    /// day).
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=MAX_WAIT_SECS))]
    stop_timeout_secs: u64,

    /// Longest wait of a blocking Join or GetNcclId before the worker is told to call
    /// again, in seconds (at most an hour).
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    long_poll_secs: u64,
}

/// The longest wait any flag may ask for: a day. Longer ones are surely a typo, and the
/// bound keeps every `now + wait` (instants, lease expiry) far from overflowing.
const MAX_WAIT_SECS: u64 = 86_400;

/// Seconds, fractions allowed, from 0 to [`MAX_WAIT_SECS`].
fn wait_secs(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.0..=MAX_WAIT_SECS as f64).contains(&secs) => Ok(secs),
        _ => Err(format!("expected seconds from 0 to {MAX_WAIT_SECS}")),
    }
}

/// A line on stdout (the address, the final status): a reader that went away does not
/// change the job or its exit status, and any other failure is logged.
fn say(line: String) {
    if let Err(e) = print_line(line) {
        warn!("writing to stdout: {e}");
    }
}

enum Ended {
    Over,
    Signal(&'static str, u8),
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprint_line(format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode> {
    // First of all, so that a signal never kills the coordinator without its children.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let min_workers = args.min_workers.unwrap_or(args.workers);
    if min_workers > args.workers {
        bail!(
            "--min-workers {min_workers} is more than --workers {}",
            args.workers
        );
    }
    if args.heartbeat_deadline_ms < args.heartbeat_ms.saturating_mul(3) {
        bail!(
            "--heartbeat-deadline-ms {} must be at least three heartbeat intervals \
             (--heartbeat-ms {}), or one late heartbeat fails the job",
            args.heartbeat_deadline_ms,
            args.heartbeat_ms
        );
    }
    let config_toml = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the configuration {}", path.display()))?;
            // Only the syntax: the keys are the workers' business.
            text.parse::<toml::Table>()
                .with_context(|| format!("{} is not valid TOML", path.display()))?;
            text
        }
        None => String::new(),
    };
    let store = Store::from_url(&args.store).context("--store")?;
    let run_id = match &args.run_id {
        Some(id) => id.clone(),
        None => default_run_id(&config_toml),
    };
    check_run_id(&run_id)?;
    let run = RunStore::new(store, &run_id)?;
    let store_url = run.store().url().to_string();
    let instance = instance_id();
    let lease_ms = args.lease_secs.saturating_mul(1000);
    let lease_for = |now: u64| Lease {
        holder: instance.clone(),
        host: hostname(),
        pid: std::process::id(),
        expires_at_ms: now.saturating_add(lease_ms),
    };
    acquire_lease(&run, &lease_for).await?;
    let stored = stored_run(&run)
        .await
        .with_context(|| format!("reading run {run_id:?} in {store_url}"))?;

    let settings = JobSettings {
        job_id: args.job_id.clone().unwrap_or_else(|| run_id.clone()),
        run_id: run_id.clone(),
        instance: instance.clone(),
        world_size: args.workers,
        min_workers,
        elastic_grace_ms: (args.elastic_grace_secs * 1000.0) as u64,
        max_steps: args.max_steps,
        config_toml,
        store_url: store_url.clone(),
        heartbeat_interval_ms: args.heartbeat_ms,
        heartbeat_deadline_ms: args.heartbeat_deadline_ms,
        collective_timeout_ms: args.collective_timeout_ms,
        max_restarts: args.max_restarts,
    };
    let job = match &stored.resume {
        Some(from) => {
            let steps: Vec<u64> = stored.committed.iter().map(|c| c.step).collect();
            info!(
                "run {run_id} is in {store_url} with committed checkpoints at steps {steps:?}: \
                 resuming from step {} ({})",
                from.step, from.manifest
            );
            if let Some(newest) = stored.committed.last() {
                if newest.world_size != args.workers {
                    warn!(
                        "the checkpoint at step {} was written by {} rank(s), this job has {}: \
                         the workers must be able to load it at this world size",
                        newest.step, newest.world_size, args.workers
                    );
                }
            }
            Job::resume(
                settings,
                from.clone(),
                stored.previous.as_ref().map(|p| &p.job),
            )
        }
        None => {
            if stored.previous.is_some() {
                info!(
                    "run {run_id} is in {store_url} without a committed checkpoint: starting \
                     it from step 0"
                );
            }
            Job::new(settings)
        }
    }
    .map_err(|e| anyhow!("{e}"))?;
    let service = CoordinatorService::new(
        job,
        run.clone(),
        run.clone(),
        ServiceOptions {
            long_poll_max: Duration::from_secs(args.long_poll_secs),
            long_poll_refresh: Duration::from_millis(u64::from(args.heartbeat_ms)),
        },
    );
    service
        .persist()
        .await
        .context("saving the initial job state")?;
    // Resumed at its final step (or past it): nothing to serve.
    if let Some(phase) = service.with_job(|j| j.is_over().then(|| j.phase().clone())) {
        if phase == JobPhase::Finished {
            info!(
                "run {run_id}: its newest committed checkpoint is its final step; nothing left \
                 to train"
            );
        }
        if let Err(e) = run.release_lease(&instance).await {
            warn!("releasing the coordinator lease: {e}");
        }
        say(describe(&service.status()));
        return match phase {
            JobPhase::Failed { error } => Err(anyhow!("the job failed: {error}")),
            _ => Ok(ExitCode::SUCCESS),
        };
    }

    let listen = parse_listen(&args.listen)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(lgaf_proto::tls::server_config(cert, key).map_err(|e| anyhow!(e))?)
        }
        _ => None,
    };
    let url = coordinator_url(addr, tls.is_some());

    let token = match &args.token_file {
        Some(path) => Some(JobToken::from_file(path).map_err(|e| anyhow!(e))?),
        None => match JobToken::from_env().map_err(|e| anyhow!(e))? {
            Some(t) => Some(t),
            None if args.spawn_local => Some(JobToken::generate().map_err(|e| anyhow!(e))?),
            None => {
                warn!(
                    "no job token (--token-file or LGAF_JOB_TOKEN): anyone who can reach \
                     {url} can act as a worker of this job"
                );
                None
            }
        },
    };
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let security = Security {
        token: token.clone(),
        tls,
        requests_per_sec: Some(args.max_requests_per_sec),
    };
    let mut server = tokio::spawn(serve(listener, service.clone(), security, async {
        let _ = shutdown_rx.await;
    }));
    let mut server_running = true;
    say(format!("listening on {url}"));
    let job_id = service.with_job(|j| j.settings().job_id.clone());
    let job = if job_id == run_id {
        String::new()
    } else {
        format!("job {job_id}, ")
    };
    info!(
        "{job}run {run_id}: waiting for {} worker(s) on {url}; store {store_url}",
        args.workers
    );

    let spec = SpawnSpec {
        worker_bin: args.worker_bin.clone().unwrap_or_else(default_worker_bin),
        coordinator_url: url.clone(),
        devices: Vec::new(),
        token: token.clone(),
        tls_ca: args.tls_ca.clone().or_else(|| args.tls_cert.clone()),
    };
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel();
    let mut local: Option<LocalWorkers> = None;
    let mut grace_over = args.spawn_local;
    if args.spawn_local {
        start_local(&service, &spec, args.workers, &exit_tx, &mut local).await;
    }
    let grace = tokio::time::sleep(Duration::from_secs(args.grace_secs));
    tokio::pin!(grace);

    // Failure detection: a rank silent past the deadline ends its generation (checked ten
    // times a deadline, so it is noticed within about a tenth of the deadline after it
    // passes); the same clock ends an elastic grace period.
    let mut liveness = tokio::time::interval(Duration::from_millis(
        (u64::from(args.heartbeat_deadline_ms) / 10).max(10),
    ));
    liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut lost_rx = service.lost_workers();
    // Renewed three times a lease, so one slow store call does not lose it.
    let mut renew = tokio::time::interval(Duration::from_millis((lease_ms / 3).max(100)));
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    // Pids of local workers killed because the job had lost them.
    let mut killed = std::collections::HashSet::new();
    let ended = loop {
        tokio::select! {
            _ = service.wait_until_over() => break Ended::Over,
            _ = liveness.tick() => {
                service.tick().await;
            }
            _ = renew.tick() => {
                if let Err(e) = run.renew_lease(&lease_for(now_ms())).await {
                    if matches!(e, lgaf_store::StoreError::LeaseHeld { .. }) {
                        service.fail(format!("this coordinator lost its lease: {e}")).await;
                    } else {
                        warn!("renewing the coordinator lease: {e}");
                    }
                }
            }
            _ = &mut grace, if !grace_over => {
                grace_over = true;
                let registered = service.with_job(|j| j.registered_count());
                if registered == 0 {
                    info!("no worker registered within {} s: starting {} local worker(s)",
                          args.grace_secs, args.workers);
                    start_local(&service, &spec, args.workers, &exit_tx, &mut local).await;
                } else {
                    info!("{registered} of {} worker(s) registered from outside; waiting for \
                           the rest", args.workers);
                }
            }
            Some(exit) = exit_rx.recv() => {
                let running = local.as_ref().map_or(0, LocalWorkers::running);
                if exit.success() {
                    if running == 0 {
                        service.fail("every local worker exited, but the job is not over").await;
                    }
                    continue;
                }
                // A worker the job had already lost (and we killed) costs nothing more; any
                // other death is news to the job, which decides whether to go on.
                let replace = if killed.remove(&exit.pid) {
                    service.with_job(|j| !j.is_over())
                } else {
                    service.local_worker_exited(exit.slot, exit.describe()).await
                };
                if let (true, Some(workers)) = (replace, local.as_mut()) {
                    if let Err(e) = workers.restart(exit.slot) {
                        service.fail(format!("restarting local worker slot {}: {e}", exit.slot))
                            .await;
                    }
                }
            }
            Ok(lost) = lost_rx.recv() => {
                if let (Some(slot), Some(workers)) = (lost.slot, local.as_ref()) {
                    if workers.pids().contains(&lost.pid) {
                        killed.insert(lost.pid);
                        workers.kill(slot, lost.pid);
                    }
                }
            }
            ended = &mut server, if server_running => {
                server_running = false;
                let why = match ended {
                    Ok(Ok(())) => "it ended".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                service.fail(format!("the gRPC server stopped: {why}")).await;
            }
            _ = sigint.recv() => break Ended::Signal("SIGINT", 130),
            _ = sigterm.recv() => break Ended::Signal("SIGTERM", 143),
        }
    };

    let stop_timeout = Duration::from_secs(args.stop_timeout_secs);
    match ended {
        Ended::Over => {
            // Let the other workers learn from a heartbeat that the job is over.
            let linger = Duration::from_millis(u64::from(args.heartbeat_ms) * 3 + 1000);
            if !service.wait_until_released(linger).await {
                warn!("not every worker heard that the job is over; exiting anyway");
            }
            if let Some(local) = &local {
                // After a success the workers exit by themselves; after a failure, the
                // ones still running have been told STOP or never will be: stop them.
                let finished = service.with_job(|j| *j.phase() == JobPhase::Finished);
                if !finished || !local.wait_all(stop_timeout).await {
                    local.stop(stop_timeout).await;
                }
            }
        }
        Ended::Signal(name, _) => {
            warn!("received {name}: cancelling the job");
            service
                .fail(format!("cancelled: the coordinator received {name}"))
                .await;
            if let Some(local) = &local {
                local.stop(stop_timeout).await;
            }
        }
    }
    if let Err(e) = service.persist().await {
        error!("saving the final job state: {e}");
    }
    let _ = shutdown_tx.send(());
    if server_running {
        match tokio::time::timeout(Duration::from_secs(3), server).await {
            Ok(Ok(Err(e))) => warn!("the gRPC server ended with an error: {e}"),
            Ok(Err(e)) => warn!("the gRPC server task failed: {e}"),
            Err(_) => warn!("the gRPC server did not drain within 3 s"),
            Ok(Ok(Ok(()))) => {}
        }
    }

    if let Err(e) = run.release_lease(&instance).await {
        warn!("releasing the coordinator lease: {e}");
    }
    let status = service.status();
    say(describe(&status));
    match (ended, service.with_job(|j| j.phase().clone())) {
        (Ended::Signal(_, code), _) => Ok(ExitCode::from(code)),
        (Ended::Over, JobPhase::Finished) => Ok(ExitCode::SUCCESS),
        (Ended::Over, JobPhase::Failed { error }) => Err(anyhow!("the job failed: {error}")),
        (Ended::Over, phase) => Err(anyhow!("the job ended in state {phase:?}")),
    }
}

async fn start_local<C, P>(
    service: &CoordinatorService<C, P>,
    spec: &SpawnSpec,
    workers: u32,
    exits: &mpsc::UnboundedSender<lgaf_coordinator::local::ChildExit>,
    local: &mut Option<LocalWorkers>,
) where
    C: lgaf_coordinator::CheckpointCommitter,
    P: JobStatePersistence,
{
    if local.is_some() {
        return;
    }
    let mut spec = spec.clone();
    if !spec.worker_bin.is_file() {
        service
            .fail(format!(
                "the worker executable {} does not exist; build lgaf-worker or pass --worker-bin",
                spec.worker_bin.display()
            ))
            .await;
        return;
    }
    spec.devices = local_devices(workers);
    info!(
        "local workers: {} on {}",
        spec.worker_bin.display(),
        spec.devices.join(", ")
    );
    match LocalWorkers::spawn(&spec, exits.clone()) {
        Ok(w) => *local = Some(w),
        Err(e) => {
            service.fail(format!("starting local workers: {e}")).await;
        }
    }
}

fn describe(s: &v1::JobStatus) -> String {
    let state = match v1::JobState::try_from(s.state).unwrap_or(v1::JobState::Unspecified) {
        v1::JobState::Finished => "finished",
        v1::JobState::Failed => "failed",
        v1::JobState::Running => "running",
        v1::JobState::Waiting => "waiting",
        v1::JobState::Unspecified => "unknown",
    };
    let mut line = format!(
        "job {} (run {}) {state}: generation {}, {} worker(s), step {}/{}, last checkpoint at step {}",
        s.job_id, s.run_id, s.generation, s.world_size, s.step, s.total_steps, s.last_checkpoint_step
    );
    if s.loss != 0.0 {
        line.push_str(&format!(", loss {:.4}", s.loss));
    }
    if !s.error.is_empty() {
        line.push_str(&format!("; error: {}", s.error));
    }
    line
}

fn parse_listen(s: &str) -> Result<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    s.parse()
        .map_err(|_| anyhow!("--listen: expected HOST:PORT (an IP address) or PORT, got {s:?}"))
}

/// The URL local workers dial: loopback when listening on all interfaces.
fn coordinator_url(addr: SocketAddr, tls: bool) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

/// Run ids become folder names and object-key prefixes.
fn check_run_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        bail!(
            "--run-id {id:?}: use 1 to 128 letters, digits, '-', '_' or '.', not starting \
             with '.'"
        );
    }
    Ok(())
}

/// `run-<first 8 hex digits of the config's SHA-256>-<UTC start time>`.
fn default_run_id(config_toml: &str) -> String {
    let hash = Sha256::digest(config_toml.as_bytes());
    let hex: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "run-{hex}-{}",
        lgaf_store::time::Utc::from_unix(secs).compact()
    )
}

/// Distinguishes this process's worker ids from an earlier coordinator's.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Takes the run's coordinator lease, so that only one coordinator acts for a run. A lease
/// whose holder is a dead process on this host is taken at once; one that lapses without
/// being renewed (its coordinator died elsewhere) is taken when it lapses; one that is
/// being renewed means another coordinator is running: an error naming it.
async fn acquire_lease(run: &RunStore, lease_for: &impl Fn(u64) -> Lease) -> Result<()> {
    let here = hostname();
    let gone = |held: &Lease| {
        held.host == here
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(held.pid as i32), None)
                == Err(nix::errno::Errno::ESRCH)
    };
    let mut seen: Option<u64> = None;
    loop {
        let now = now_ms();
        match run.try_acquire_lease(&lease_for(now), now, gone).await? {
            LeaseAttempt::Acquired => return Ok(()),
            LeaseAttempt::HeldBy(held) => {
                if seen.is_some_and(|expiry| held.expires_at_ms > expiry) {
                    return Err(run.lease_held(held).into());
                }
                if seen.is_none() {
                    info!(
                        "run {} has the lease of coordinator {} on {} (pid {}); waiting to see \
                         whether it is still alive",
                        run.run_id(),
                        held.holder,
                        held.host,
                        held.pid
                    );
                }
                seen = Some(held.expires_at_ms);
                // Until it lapses, looking often enough to see a renewal.
                let wait = held.expires_at_ms.saturating_sub(now).clamp(100, 2_000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    }
}

fn instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = Sha256::digest(format!("{nanos}-{}", std::process::id()).as_bytes());
    mixed.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_and_ids() {
        let id = default_run_id("[train]\n");
        assert!(id.starts_with("run-") && id.len() == "run-12345678-20241123-082405".len());
        check_run_id(&id).unwrap();
        for bad in ["", ".hidden", "a/b", "a b", "../x"] {
            assert!(check_run_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn max_workers_is_workers() {
        let args = Args::try_parse_from([
            "lgaf-coordinator",
            "--max-workers",
            "4",
            "--min-workers",
            "2",
        ])
        .unwrap();
        assert_eq!((args.workers, args.min_workers), (4, Some(2)));
        assert!(Args::try_parse_from(["lgaf-coordinator", "--workers", "0"]).is_err());
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("50051").unwrap().to_string(), "0.0.0.0:50051");
        assert_eq!(parse_listen("127.0.0.1:0").unwrap().port(), 0);
        assert!(parse_listen("localhost:1").is_err());
        assert_eq!(
            coordinator_url("0.0.0.0:7000".parse().unwrap(), false),
            "http://127.0.0.1:7000"
        );
        assert_eq!(
            coordinator_url("10.0.0.5:7000".parse().unwrap(), true),
            "https://10.0.0.5:7000"
        );
    }
}
