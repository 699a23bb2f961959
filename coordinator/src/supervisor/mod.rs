//! The `lgaf-coordinator` process around the job: it takes the run's coordinator lease,
//! opens the job (resuming the run from its newest committed checkpoint), serves it over
//! gRPC, starts local workers when asked or when none come from outside, and supervises
//! until the job is over or a signal cancels it; then it stops the workers, saves the job
//! state, releases the lease and prints the final status.
//!
//! - [`args`]: the command line; [`config`]: the command line checked and typed
//!   ([`Config`]);
//! - [`lease`]: this process as the holder of the run's lease;
//! - [`address`]: the listen address and the URL local workers dial;
//! - `open`: the run's job, resumed or new; `server`: the gRPC server task; `health`: what
//!   its `grpc.health.v1` service answers (probes); `workers`: the local workers under
//!   supervision.

pub mod address;
pub mod args;
pub mod config;
mod health;
pub mod lease;
mod open;
mod server;
mod workers;

use std::net::SocketAddr;
use std::time::Duration;

use lgaf_proto::console::print_line;
use lgaf_proto::exit::ExitClass;
use lgaf_proto::v1;
use lgaf_telemetry::opentelemetry::KeyValue;
use lgaf_telemetry::Telemetry;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{error, info, warn};

pub use address::{coordinator_url, parse_listen};
pub use args::{Args, MAX_WAIT_SECS};
pub use config::{check_run_id, default_run_id, Config, ConfigError, LocalWorkers, Tls};
pub use lease::{acquire_lease, holder_is_gone, Clock, LeaseHolder, SystemClock};

use crate::local::{ChildExit, SpawnSpec};
use crate::observe::JobObserver;
use crate::{CoordinatorService, JobError, JobPhase, RunStore, Store};
use health::Health;
use lease::{Renewal, Tenure};
use open::open_job;
use server::Server;
use workers::LocalSlots;

/// The job's service as the coordinator process runs it: commits and job state in the
/// run's store.
type Service = CoordinatorService<RunStore, RunStore>;

/// How a supervision that is not an error ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The job finished (now, or in an earlier run that committed its final step).
    Finished,
    /// A signal cancelled the job; the process exits with `exit_code` (128 + its number).
    Cancelled { signal: &'static str, exit_code: u8 },
}

/// Why the coordinator could not run the job, or the job failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("installing the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("--store: {source}")]
    OpenStore {
        #[source]
        source: lgaf_store::StoreError,
    },

    /// The run in the store, including its lease held by another coordinator.
    #[error(transparent)]
    Run(#[from] lgaf_store::StoreError),

    #[error("reading run {run_id:?} in {store_url}: {source}")]
    ReadRun {
        run_id: String,
        store_url: String,
        #[source]
        source: Box<crate::StoreError>,
    },

    /// The stored run cannot be resumed with these settings.
    #[error(transparent)]
    Job(#[from] JobError),

    #[error("saving the initial job state: {source}")]
    SaveJob {
        #[source]
        source: Box<crate::StoreError>,
    },

    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Telemetry(#[from] lgaf_telemetry::TelemetryError),

    #[error(transparent)]
    History(#[from] lgaf_store::HistoryError),

    #[error("the job failed: {error}")]
    JobFailed { error: String },

    #[error("the job ended in state {phase:?}")]
    JobUnfinished { phase: JobPhase },
}

impl SupervisorError {
    /// What the process's exit status tells whoever would restart it (the exit-code
    /// contract, `lgaf_proto::exit`).
    pub fn exit_class(&self) -> ExitClass {
        match self {
            // The job gave up (a worker lost too often, a lost lease): so must its pods.
            SupervisorError::JobFailed { .. } => ExitClass::JobFailed,
            // What the user asked for is wrong: the store URL, the stored run against these
            // settings, the telemetry settings.
            SupervisorError::OpenStore { .. }
            | SupervisorError::Job(_)
            | SupervisorError::Telemetry(_) => ExitClass::Permanent,
            // The store, the port or the process may be fine next time: the lease held by a
            // coordinator that is going away, a store that was unreachable, a taken port.
            SupervisorError::Signal { .. }
            | SupervisorError::Run(_)
            | SupervisorError::ReadRun { .. }
            | SupervisorError::SaveJob { .. }
            | SupervisorError::Listen { .. }
            | SupervisorError::History(_)
            | SupervisorError::JobUnfinished { .. } => ExitClass::Retryable,
        }
    }
}

/// Runs the job `config` describes to its end, its traces and metrics exported as
/// `telemetry` says.
pub async fn run(config: Config, telemetry: &mut Telemetry) -> Result<Outcome, SupervisorError> {
    // First of all, so that a signal never kills the coordinator without its children.
    let signals = Signals::install()?;
    let store = Store::from_url(&config.store_url)
        .map_err(|source| SupervisorError::OpenStore { source })?;
    let run = RunStore::new(store, &config.run_id)?;
    let me = LeaseHolder::this_process(config.lease);
    let acquired = acquire_lease(&run, &me, &SystemClock, |held| {
        holder_is_gone(held, &me.host)
    })
    .await?;
    telemetry.start_export(vec![
        KeyValue::new("lgaf.run.id", config.run_id.clone()),
        KeyValue::new("lgaf.job.id", config.job_id.clone()),
        KeyValue::new("host.name", lgaf_proto::this_host_name()),
        KeyValue::new("process.pid", i64::from(std::process::id())),
    ])?;
    let observer = JobObserver::new(
        &config.run_id,
        &config.job_id,
        &telemetry.meter("lgaf-coordinator"),
    );
    let service = open_job(&config, &run, &me.id, observer).await?;

    // Resumed at its final step (or past it): nothing to serve.
    if let Some(phase) = service.with_job(|j| j.is_over().then(|| j.phase().clone())) {
        if phase == JobPhase::Finished {
            info!(
                "run {}: its newest committed checkpoint is its final step; nothing left to \
                 train",
                config.run_id
            );
        }
        release_lease(&run, &me).await;
        if config.keep_serving {
            serve_until_signal(&config, &service, signals).await?;
        } else {
            say(describe(&service.status()));
        }
        return outcome(Ended::Over, phase);
    }

    let (health, health_service) = Health::start().await;
    let server = Server::start(&config, &service, health_service).await?;
    say(format!("listening on {}", server.url));
    let job_id = service.with_job(|j| j.settings().job_id.clone());
    let job = if job_id == config.run_id {
        String::new()
    } else {
        format!("job {job_id}, ")
    };
    info!(
        "{job}run {}: waiting for {} worker(s) on {}; store {}",
        config.run_id,
        config.workers,
        server.url,
        run.store().url()
    );
    let spec = SpawnSpec {
        worker_bin: config.worker_bin.clone(),
        coordinator_url: server.url.clone(),
        devices: Vec::new(),
        token: config.token.clone(),
        tls: config
            .tls
            .as_ref()
            .map(|tls| tls.workers.clone())
            .unwrap_or_default(),
        telemetry: telemetry.args().clone(),
    };
    let (local, exits) = LocalSlots::new(spec, config.workers);
    let mut supervision = Supervision {
        config,
        run,
        me,
        tenure: Tenure::new(&acquired),
        service,
        server,
        health,
        local,
        exits,
        signals,
    };
    let ended = supervision.supervise().await;
    supervision.shut_down(ended).await
}

/// Why the supervision loop ended.
#[derive(Clone, Copy, Debug)]
enum Ended {
    /// The job finished or failed.
    Over,
    /// This signal (name, exit status) cancels the job.
    Signal(&'static str, u8),
}

/// The running coordinator: the job's service and everything around it.
struct Supervision {
    config: Config,
    run: RunStore,
    me: LeaseHolder,
    tenure: Tenure,
    service: Service,
    server: Server,
    health: Health,
    local: LocalSlots,
    exits: mpsc::UnboundedReceiver<ChildExit>,
    signals: Signals,
}

impl Supervision {
    /// Until the job is over or a signal comes: the job's clock, the lease's renewal, the
    /// grace period before local workers start, their exits and the job's losses, and the
    /// server's health.
    async fn supervise(&mut self) -> Ended {
        let config = &self.config;
        let grace = match config.local_workers {
            LocalWorkers::Now => {
                self.local.start(&self.service).await;
                None
            }
            LocalWorkers::AfterGrace(grace) => Some(grace),
            LocalWorkers::Never => None,
        };
        let mut grace_over = grace.is_none();
        let grace = grace.unwrap_or_default();
        let grace_timer = tokio::time::sleep(grace);
        tokio::pin!(grace_timer);
        // Failure detection: a rank silent past the deadline ends its generation (checked
        // ten times a deadline, so it is noticed within about a tenth of the deadline after
        // it passes); the same clock ends an elastic grace period.
        let mut liveness =
            tokio::time::interval((config.heartbeat_deadline / 10).max(Duration::from_millis(10)));
        liveness.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut lost_workers = self.service.lost_workers();
        // Renewed three times a lease, so one slow store call does not lose it. A renewal
        // runs beside the loop (failure detection must not wait on the store, which may
        // retry an outage for minutes) and gets at most the time to the next one.
        let renew_every = (config.lease / 3).max(Duration::from_millis(100));
        let mut renew = tokio::time::interval(renew_every);
        renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
        renew.tick().await;
        let mut renewing = None;
        loop {
            tokio::select! {
                _ = self.service.wait_until_over() => return Ended::Over,
                _ = liveness.tick() => self.service.tick().await,
                _ = renew.tick(), if renewing.is_none() => {
                    let (run, me, mut tenure) = (self.run.clone(), self.me.clone(), self.tenure);
                    renewing = Some(Box::pin(async move {
                        let renewal = tenure.renew(&run, &me, &SystemClock, renew_every).await;
                        (tenure, renewal)
                    }));
                }
                (tenure, renewal) = async { renewing.as_mut().expect("guarded").await },
                    if renewing.is_some() =>
                {
                    renewing = None;
                    self.tenure = tenure;
                    self.lease_renewed(renewal).await;
                }
                _ = &mut grace_timer, if !grace_over => {
                    grace_over = true;
                    let registered = self.service.with_job(|j| j.registered_count());
                    if registered == 0 {
                        info!("no worker registered within {} s: starting {} local worker(s)",
                              grace.as_secs(), self.config.workers);
                        self.local.start(&self.service).await;
                    } else {
                        info!("{registered} of {} worker(s) registered from outside; waiting \
                               for the rest", self.config.workers);
                    }
                }
                Some(exit) = self.exits.recv() => self.local.exited(exit, &self.service).await,
                Ok(lost) = lost_workers.recv() => self.local.lost(&lost),
                ended = &mut self.server.task, if self.server.running => {
                    self.server.running = false;
                    let why = match ended {
                        Ok(Ok(())) => "it ended".to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                    };
                    self.service.fail(format!("the gRPC server stopped: {why}")).await;
                }
                _ = self.signals.interrupt.recv() => return Ended::Signal("SIGINT", 130),
                _ = self.signals.terminate.recv() => return Ended::Signal("SIGTERM", 143),
            }
        }
    }

    /// After the loop: probes told NOT_SERVING, the workers stopped (or given time to exit
    /// by themselves after a success), the final job state saved, the server drained, the
    /// lease released and the final status printed.
    async fn shut_down(mut self, ended: Ended) -> Result<Outcome, SupervisorError> {
        // First, so that probes see the job over while the workers are told and stopped.
        self.health.job_ended().await;
        let ended_at = Instant::now();
        let (config, service) = (&self.config, &self.service);
        match ended {
            Ended::Over => {
                // Let the other workers learn from a heartbeat that the job is over.
                let linger = config.heartbeat_interval * 3 + Duration::from_secs(1);
                if !service.wait_until_released(linger).await {
                    warn!("not every worker heard that the job is over; exiting anyway");
                }
                let finished = service.with_job(|j| *j.phase() == JobPhase::Finished);
                self.local.wind_down(finished, config.stop_timeout).await;
            }
            Ended::Signal(name, _) => {
                warn!("received {name}: cancelling the job");
                // Cancelled, not failed: the workers stop as retryable (75), and a
                // coordinator started again (a replaced pod) resumes the run.
                service
                    .cancel(format!("the coordinator received {name}"))
                    .await;
                self.local.wind_down(false, config.stop_timeout).await;
            }
        }
        if let Err(e) = service.persist().await {
            error!("saving the final job state: {e}");
        }
        // So that a probe sees NOT_SERVING, not only a refused connection, once the job ended
        // (pointless once the server has stopped by itself).
        if self.server.running && config.keep_serving && matches!(ended, Ended::Over) {
            info!("{KEEP_SERVING}");
            self.signals.wait().await;
        } else if self.server.running {
            self.signals
                .sleep_until(ended_at + config.health_linger)
                .await;
        }
        self.health.close().await;
        self.server.stop().await;
        release_lease(&self.run, &self.me).await;
        say(describe(&service.status()));
        outcome(ended, service.with_job(|j| j.phase().clone()))
    }

    /// Acts on a renewal of the lease: one taken over by another coordinator fails the
    /// job, which must stop acting for the run at once. Probes learn first whether it
    /// still holds.
    async fn lease_renewed(&mut self, renewal: Renewal) {
        self.health.lease_held(renewal.holds()).await;
        match renewal {
            Renewal::Renewed => {}
            Renewal::Failed(e) => warn!("renewing the coordinator lease: {e}"),
            Renewal::Lapsed(e) => warn!(
                "renewing the coordinator lease: {e}; it has lapsed, so another coordinator \
                 may take the run until a renewal succeeds"
            ),
            Renewal::Lost(e) => {
                self.service
                    .fail(format!("this coordinator lost its lease: {e}"))
                    .await;
            }
        }
    }
}

/// The signals that cancel the job.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> Result<Self, SupervisorError> {
        let install = |signal_name, kind| {
            signal(kind).map_err(|source| SupervisorError::Signal {
                signal: signal_name,
                source,
            })
        };
        Ok(Signals {
            interrupt: install("SIGINT", SignalKind::interrupt())?,
            terminate: install("SIGTERM", SignalKind::terminate())?,
        })
    }

    /// Waits for SIGINT or SIGTERM.
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    /// Waits until `until`, or until a signal comes (one already pending cuts it short).
    async fn sleep_until(&mut self, until: Instant) {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

const KEEP_SERVING: &str =
    "the job has ended; serving its status until SIGTERM or SIGINT (--keep-serving)";

/// For a job that was over when this coordinator opened it: its address and final status on
/// stdout, then its status and NOT_SERVING on the job's port until a signal
/// (`--keep-serving`).
async fn serve_until_signal(
    config: &Config,
    service: &Service,
    mut signals: Signals,
) -> Result<(), SupervisorError> {
    let (mut health, health_service) = Health::start().await;
    health.job_ended().await;
    let server = Server::start(config, service, health_service).await?;
    say(format!("listening on {}", server.url));
    say(describe(&service.status()));
    info!("{KEEP_SERVING}");
    signals.wait().await;
    health.close().await;
    server.stop().await;
    Ok(())
}

async fn release_lease(run: &RunStore, me: &LeaseHolder) {
    if let Err(e) = run.release_lease(&me.id).await {
        warn!("releasing the coordinator lease: {e}");
    }
}

/// The process's verdict on how the job ended.
fn outcome(ended: Ended, phase: JobPhase) -> Result<Outcome, SupervisorError> {
    match (ended, phase) {
        (Ended::Signal(signal, exit_code), _) => Ok(Outcome::Cancelled { signal, exit_code }),
        (Ended::Over, JobPhase::Finished) => Ok(Outcome::Finished),
        (Ended::Over, JobPhase::Failed { error }) => Err(SupervisorError::JobFailed { error }),
        (Ended::Over, phase) => Err(SupervisorError::JobUnfinished { phase }),
    }
}

/// A line on stdout (the address, the final status): a reader that went away does not
/// change the job or its exit status, and any other failure is logged.
fn say(line: String) {
    if let Err(e) = print_line(line) {
        warn!("writing to stdout: {e}");
    }
}

/// The final status line on stdout.
fn describe(s: &v1::JobStatus) -> String {
    let state = match v1::JobState::try_from(s.state).unwrap_or(v1::JobState::Unspecified) {
        v1::JobState::Finished => "finished",
        v1::JobState::Failed => "failed",
        v1::JobState::Cancelled => "cancelled",
        v1::JobState::Running => "running",
        v1::JobState::Waiting => "waiting",
        v1::JobState::Unspecified => "unknown",
    };
    let mut line = format!(
        "job {} (run {}) {state}: generation {}, {} worker(s), step {}/{}, last checkpoint at \
         step {}",
        s.job_id,
        s.run_id,
        s.generation,
        s.world_size,
        s.step,
        s.total_steps,
        s.last_checkpoint_step
    );
    if s.loss != 0.0 {
        line.push_str(&format!(", loss {:.4}", s.loss));
    }
    if !s.error.is_empty() {
        line.push_str(&format!("; error: {}", s.error));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let mut status = v1::JobStatus {
            job_id: "j".into(),
            run_id: "r".into(),
            state: v1::JobState::Finished as i32,
            generation: 2,
            world_size: 4,
            step: 20,
            total_steps: 20,
            last_checkpoint_step: 20,
            ..Default::default()
        };
        assert_eq!(
            describe(&status),
            "job j (run r) finished: generation 2, 4 worker(s), step 20/20, last checkpoint at \
             step 20"
        );
        status.state = v1::JobState::Failed as i32;
        status.loss = 0.5;
        status.error = "boom".into();
        assert!(describe(&status).ends_with(
            "failed: generation 2, 4 worker(s), step 20/20, \
                                             last checkpoint at step 20, loss 0.5000; error: boom"
        ));
    }

    #[test]
    fn outcomes() {
        assert_eq!(
            outcome(Ended::Over, JobPhase::Finished).unwrap(),
            Outcome::Finished
        );
        let failed = JobPhase::Failed {
            error: "boom".into(),
        };
        assert_eq!(
            outcome(Ended::Over, failed.clone())
                .unwrap_err()
                .to_string(),
            "the job failed: boom"
        );
        assert_eq!(
            outcome(Ended::Signal("SIGTERM", 143), failed).unwrap(),
            Outcome::Cancelled {
                signal: "SIGTERM",
                exit_code: 143
            }
        );
    }
}
