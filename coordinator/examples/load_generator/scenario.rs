//! The two scenarios, each against a coordinator of its own: `steady` (N workers register,
//! form a generation, train with heartbeats, progress and two checkpoints, and finish) and
//! `mass_failure` (a quarter of the workers go silent at once after the first checkpoint;
//! replacements register as restarted pods would; the survivors are told REJOIN and the
//! next generation forms from the checkpoint and finishes the run). Each turns what the
//! workers saw into its figures.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lgaf_proto::auth::JobToken;
use lgaf_proto::v1;
use lgaf_proto::API_VERSION;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::coordinator_process::{usage_of, CoordinatorOptions, CoordinatorProcess, Usage};
use crate::sim_worker::{self, Placement, SimWorker, Swarm, WorkerReport};
use crate::stats::{Recorder, RpcRecord};

/// What both scenarios are run with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub coordinator: CoordinatorOptions,
    pub step_time: Duration,
    pub total_steps: u64,
    pub checkpoint_every: u64,
    pub log_every: u64,
    pub workers_per_host: u32,
    /// A scenario that has not ended by then is cut short and reported as such.
    pub time_limit: Duration,
}

/// The figures of one steady run.
#[derive(Debug)]
pub struct SteadyFigures {
    pub workers: u32,
    /// From the last Register answered to the last Join answered (the generation formed
    /// and every rank told).
    pub formed: Option<Duration>,
    /// From the first Register sent to the last Join answered.
    pub register_to_formed: Option<Duration>,
    /// Per checkpoint step: from the last ack sent to the committing ack's answer.
    pub commits: Vec<(u64, Option<Duration>)>,
    pub manifests_written: usize,
    pub calls: BTreeMap<&'static str, RpcRecord>,
    /// Coordinator CPU seconds up to the generation formed, and over the whole run.
    pub cpu_formation: f64,
    pub cpu_total: f64,
    pub peak_rss_mib: f64,
    /// The generator's own CPU seconds (it shares the machine's cores).
    pub generator_cpu: f64,
    pub finished: usize,
    /// Worker errors, by message (the first few kept).
    pub worker_errors: Vec<String>,
    pub worker_error_count: usize,
    pub timed_out: bool,
    pub coordinator_exit: String,
    pub wall: Duration,
}

/// The figures of the mass failure.
#[derive(Debug)]
pub struct FailureFigures {
    pub workers: u32,
    pub silenced: u32,
    pub deadline: Duration,
    /// From the silence to the coordinator ending the generation (its status leaves
    /// RUNNING).
    pub detected: Option<Duration>,
    /// From the silence to the first and the last survivor told REJOIN.
    pub first_told: Option<Duration>,
    pub last_told: Option<Duration>,
    /// From the generation's end to the next one formed (every rank's Join answered).
    pub next_formed: Option<Duration>,
    /// From the last rank of the next generation calling Join (a survivor told late, a
    /// replacement registered late) to every rank answered: the coordinator's own part.
    pub next_formed_after_last_join: Option<Duration>,
    pub finished: usize,
    pub calls: BTreeMap<&'static str, RpcRecord>,
    pub worker_error_count: usize,
    pub worker_errors: Vec<String>,
    pub cpu_total: f64,
    pub peak_rss_mib: f64,
    pub timed_out: bool,
}

/// Samples the coordinator's CPU every 100 ms, to read it at a moment found afterwards.
struct UsageTimeline {
    samples: Arc<Mutex<Vec<(Instant, Usage)>>>,
    task: JoinHandle<()>,
}

impl UsageTimeline {
    fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let into = samples.clone();
        let task = tokio::spawn(async move {
            let proc_dir = format!("/proc/{pid}");
            loop {
                if let Ok(u) = usage_of(&proc_dir) {
                    into.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((Instant::now(), u));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        UsageTimeline { samples, task }
    }

    /// The first sample at or after `at`.
    fn at(&self, at: Instant) -> Option<Usage> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.iter().find(|(t, _)| *t >= at).map(|(_, u)| *u)
    }
}

impl Drop for UsageTimeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn facts(settings: &Settings, workers: u32) -> v1::TrainingFacts {
    let batch_size = 128;
    v1::TrainingFacts {
        // Exactly `total_steps` steps in one epoch at this world size.
        num_samples: u64::from(workers) * batch_size * settings.total_steps,
        num_classes: 100_000,
        batch_size,
        epochs: 1,
        max_steps: 0,
        checkpoint_every_steps: settings.checkpoint_every,
        keep_last: 2,
        seed: 1,
    }
}

fn swarm(
    settings: &Settings,
    url: &str,
    token: &JobToken,
    workers: u32,
    rec: Arc<Recorder>,
) -> Arc<Swarm> {
    Arc::new(Swarm::new(
        url.to_string(),
        token.clone(),
        rec,
        facts(settings, workers),
        (
            settings.step_time,
            settings.log_every,
            settings.workers_per_host,
        ),
    ))
}

/// Connects every placement (64 at a time: a burst of thousands of SYNs would overflow the
/// listen backlog and time the kernel's retries, not the coordinator) and spawns its
/// worker once all are connected, or at once with `start_now`.
async fn launch(
    swarm: &Arc<Swarm>,
    placements: Vec<Placement>,
) -> Result<Vec<JoinHandle<WorkerReport>>, String> {
    let gate = Arc::new(Semaphore::new(64));
    let mut connecting = Vec::new();
    for place in placements {
        let (swarm, gate) = (swarm.clone(), gate.clone());
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            sim_worker::connect(&swarm, place.slot)
                .await
                .map(|stub| (stub, place))
        }));
    }
    let mut stubs = Vec::new();
    for c in connecting {
        stubs.push(
            c.await
                .map_err(|e| format!("a connect task failed: {e}"))??,
        );
    }
    Ok(stubs
        .into_iter()
        .map(|(stub, place)| tokio::spawn(SimWorker::new(swarm.clone(), stub, place).run()))
        .collect())
}

/// Waits for `tasks` until `limit`; those still running are aborted (and left out).
async fn collect(
    tasks: Vec<JoinHandle<WorkerReport>>,
    limit: Instant,
) -> (Vec<WorkerReport>, bool) {
    let mut reports = Vec::new();
    let mut timed_out = false;
    for mut task in tasks {
        match tokio::time::timeout_at(limit.into(), &mut task).await {
            Ok(Ok(report)) => reports.push(report),
            Ok(Err(e)) => reports.push(WorkerReport {
                error: Some(format!("the worker task failed: {e}")),
                ..WorkerReport::default()
            }),
            Err(_) => {
                timed_out = true;
                task.abort();
            }
        }
    }
    (reports, timed_out)
}

fn errors(reports: &[WorkerReport]) -> (usize, Vec<String>) {
    let all: Vec<&String> = reports.iter().filter_map(|r| r.error.as_ref()).collect();
    (
        all.len(),
        all.iter().take(3).map(|e| e.to_string()).collect(),
    )
}

fn self_cpu() -> f64 {
    usage_of("/proc/self").map_or(0.0, |u| u.cpu_secs)
}

/// A scenario's coordinator (a fresh job of `workers`, its log named by `label`), its job
/// token, and the swarm of simulated workers that will call it, recording into `recorder`.
fn start_job(
    settings: &Settings,
    workers: u32,
    label: String,
) -> Result<(CoordinatorProcess, JobToken, Arc<Recorder>, Arc<Swarm>), String> {
    let mut opts = settings.coordinator.clone();
    opts.workers = workers;
    opts.label = label;
    let coordinator = CoordinatorProcess::start(&opts)?;
    let token = JobToken::new(&opts.token).map_err(|e| format!("the job token: {e}"))?;
    let recorder = Arc::new(Recorder::new(Instant::now()));
    let swarm = swarm(
        settings,
        &coordinator.url,
        &token,
        workers,
        recorder.clone(),
    );
    Ok((coordinator, token, recorder, swarm))
}

pub async fn steady(settings: &Settings, workers: u32) -> Result<SteadyFigures, String> {
    let (coordinator, _token, recorder, swarm) =
        start_job(settings, workers, format!("steady-{workers}"))?;
    let placements = (0..workers)
        .map(|slot| Placement {
            slot,
            pid: slot + 1,
            goes_silent: false,
        })
        .collect();
    let timeline = UsageTimeline::start(coordinator.pid);
    let before = coordinator.usage()?;
    let generator_before = self_cpu();
    let started = Instant::now();
    let tasks = launch(&swarm, placements).await?;
    let begun = Instant::now();
    let (reports, timed_out) = collect(tasks, begun + settings.time_limit).await;
    let after = coordinator.usage()?;
    let generator_cpu = self_cpu() - generator_before;
    let wall = started.elapsed();

    let last_register = reports.iter().filter_map(|r| r.registered_at).max();
    let formed_at = (reports.len() == workers as usize)
        .then(|| {
            reports
                .iter()
                .map(|r| r.joined.first().map(|j| j.2))
                .collect::<Option<Vec<_>>>()
        })
        .flatten()
        .and_then(|joins| joins.into_iter().max());
    let formed = last_register
        .zip(formed_at)
        .map(|(r, f)| f.saturating_duration_since(r));
    let cpu_formation = formed_at
        .and_then(|at| timeline.at(at))
        .map_or(f64::NAN, |u| u.cpu_secs - before.cpu_secs);
    let commits = commit_latencies(&reports);
    let manifests_written = commits
        .iter()
        .filter(|(step, _)| coordinator.manifest_path(*step).is_file())
        .count();
    let (worker_error_count, worker_errors) = errors(&reports);
    let exit = coordinator.stop();
    Ok(SteadyFigures {
        workers,
        formed,
        register_to_formed: formed_at.map(|f| f.saturating_duration_since(begun)),
        commits,
        manifests_written,
        calls: recorder.snapshot(),
        cpu_formation,
        cpu_total: after.cpu_secs - before.cpu_secs,
        peak_rss_mib: after.peak_rss_mib,
        generator_cpu,
        finished: reports.iter().filter(|r| r.finished_at.is_some()).count(),
        worker_errors,
        worker_error_count,
        timed_out,
        coordinator_exit: exit,
        wall,
    })
}

/// Per checkpoint step: from the last ack sent to the answer of the ack that committed.
fn commit_latencies(reports: &[WorkerReport]) -> Vec<(u64, Option<Duration>)> {
    let mut by_step: BTreeMap<(u64, u64), (Instant, Option<Instant>)> = BTreeMap::new();
    for ack in reports.iter().flat_map(|r| &r.acks) {
        let entry = by_step
            .entry((ack.generation, ack.step))
            .or_insert((ack.sent, None));
        entry.0 = entry.0.max(ack.sent);
        if ack.committed {
            entry.1 = Some(ack.answered);
        }
    }
    by_step
        .into_iter()
        .map(|((_, step), (last_sent, committed))| {
            (
                step,
                committed.map(|c| c.saturating_duration_since(last_sent)),
            )
        })
        .collect()
}

/// The coordinator's status, polled (GetJobStatus) until `until` says so or `limit`.
async fn poll_status(
    url: &str,
    token: &JobToken,
    limit: Instant,
    until: impl Fn(&v1::JobStatus) -> bool,
) -> Result<Option<Instant>, String> {
    use lgaf_proto::v1::coordinator_client::CoordinatorClient;
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("{url}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("the status client: {e}"))?;
    let mut client = CoordinatorClient::with_interceptor(
        channel,
        lgaf_proto::auth::AttachToken(Some(token.clone())),
    );
    while Instant::now() < limit {
        let status = client
            .get_job_status(v1::JobStatusRequest {
                api_version: API_VERSION,
            })
            .await;
        if let Ok(status) = status {
            if until(status.get_ref()) {
                return Ok(Some(Instant::now()));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(None)
}

pub async fn mass_failure(settings: &Settings, workers: u32) -> Result<FailureFigures, String> {
    let (coordinator, token, recorder, swarm) =
        start_job(settings, workers, format!("failure-{workers}"))?;
    // A quarter of the slots, the last ones: whole hosts, as a lost rack or partition.
    let silenced = workers / 4;
    let silent_from = workers - silenced;
    let placements = (0..workers)
        .map(|slot| Placement {
            slot,
            pid: slot + 1,
            goes_silent: slot >= silent_from,
        })
        .collect();
    let before = coordinator.usage()?;
    let begun = Instant::now();
    let limit = begun + settings.time_limit;
    let mut tasks = launch(&swarm, placements).await?;
    // Silence once the first checkpoint is committed, so the next generation resumes it.
    let first = settings.checkpoint_every;
    poll_status(&coordinator.url, &token, limit, |s| {
        s.last_checkpoint_step >= first
    })
    .await?;
    tokio::time::sleep(settings.step_time * 4).await;
    let silence_at = Instant::now();
    swarm.go_silent(1);
    // Restarted pods: they register, and are refused (no place) until the loss is seen.
    let replacements: Vec<Placement> = (silent_from..workers)
        .map(|slot| Placement {
            slot,
            pid: workers + slot + 1,
            goes_silent: false,
        })
        .collect();
    let (silent_tasks, mut survivors): (Vec<_>, Vec<_>) = tasks
        .drain(..)
        .enumerate()
        .partition(|(slot, _)| *slot as u32 >= silent_from);
    let replacing = {
        let swarm = swarm.clone();
        tokio::spawn(async move { launch(&swarm, replacements).await })
    };
    let detected_at = poll_status(&coordinator.url, &token, limit, |s| {
        s.state != v1::JobState::Running as i32
    })
    .await?;
    let next_formed_at = poll_status(&coordinator.url, &token, limit, |s| {
        s.generation >= 2 && s.state == v1::JobState::Running as i32
    })
    .await?;
    let replacement_tasks = replacing
        .await
        .map_err(|e| format!("the replacements' launch failed: {e}"))??;
    survivors.extend(replacement_tasks.into_iter().map(|t| (0, t)));
    let (reports, timed_out) =
        collect(survivors.into_iter().map(|(_, t)| t).collect(), limit).await;
    for (_, task) in silent_tasks {
        task.abort();
    }
    let after = coordinator.usage()?;
    let told: Vec<Instant> = reports.iter().filter_map(|r| r.told_rejoin_at).collect();
    let since_silence = |t: Instant| t.saturating_duration_since(silence_at);
    // The next generation formed for the workers once every one of its ranks was answered.
    let next_joins = reports
        .iter()
        .map(|r| r.joined.iter().find(|j| j.0 >= 2).map(|j| (j.1, j.2)))
        .collect::<Option<Vec<_>>>();
    let next_joined = next_joins
        .as_ref()
        .and_then(|joins| joins.iter().map(|j| j.1).max());
    let last_join_began = next_joins
        .as_ref()
        .and_then(|joins| joins.iter().map(|j| j.0).max());
    let (worker_error_count, worker_errors) = errors(&reports);
    let figures = FailureFigures {
        workers,
        silenced,
        deadline: Duration::from_millis(settings.coordinator.heartbeat_deadline_ms.into()),
        detected: detected_at.map(since_silence),
        first_told: told.iter().min().copied().map(since_silence),
        last_told: told.iter().max().copied().map(since_silence),
        next_formed: detected_at
            .zip(next_joined.or(next_formed_at))
            .map(|(end, formed)| formed.saturating_duration_since(end)),
        next_formed_after_last_join: last_join_began
            .zip(next_joined)
            .map(|(began, formed)| formed.saturating_duration_since(began)),
        finished: reports.iter().filter(|r| r.finished_at.is_some()).count(),
        calls: recorder.snapshot(),
        worker_error_count,
        worker_errors,
        cpu_total: after.cpu_secs - before.cpu_secs,
        peak_rss_mib: after.peak_rss_mib,
        timed_out,
    };
    coordinator.stop();
    Ok(figures)
}
