//! The run's job when the coordinator starts: resumed from the newest committed checkpoint
//! in the store, or new; its first state saved before anything is served.

use std::time::Duration;

use tracing::{info, warn};

use super::{Config, Service, SupervisorError};
use lgaf_store::history::Source;
use lgaf_store::HistoryWriter;

use crate::observe::JobObserver;
use crate::{stored_run, CoordinatorService, Job, JobSettings, RunStore, ServiceOptions};

/// The job of the run: resumed from its newest committed checkpoint, or new; its first
/// state saved. `observer` follows it (traces, metrics).
pub(super) async fn open_job(
    config: &Config,
    run: &RunStore,
    instance: &str,
    observer: JobObserver,
) -> Result<Service, SupervisorError> {
    let run_id = &config.run_id;
    let store_url = run.store().url().to_string();
    let stored = stored_run(run)
        .await
        .map_err(|source| SupervisorError::ReadRun {
            run_id: run_id.clone(),
            store_url: store_url.clone(),
            source: Box::new(source),
        })?;
    let settings = JobSettings {
        job_id: config.job_id.clone(),
        run_id: run_id.clone(),
        instance: instance.to_string(),
        world_size: config.workers,
        min_workers: config.min_workers,
        elastic_grace_ms: config.elastic_grace.as_millis() as u64,
        max_steps: config.max_steps,
        config_toml: config.config_toml.clone(),
        store_url: store_url.clone(),
        heartbeat_interval_ms: millis_u32(config.heartbeat_interval),
        heartbeat_deadline_ms: millis_u32(config.heartbeat_deadline),
        collective_timeout_ms: millis_u32(config.collective_timeout),
        max_restarts: config.max_restarts,
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
                if newest.world_size != config.workers {
                    warn!(
                        "the checkpoint at step {} was written by {} rank(s), this job has {}: \
                         the workers must be able to load it at this world size",
                        newest.step, newest.world_size, config.workers
                    );
                }
            }
            Job::resume(
                settings,
                from.clone(),
                stored.previous.as_ref().map(|p| &p.job),
            )?
        }
        None => {
            if stored.previous.is_some() {
                info!(
                    "run {run_id} is in {store_url} without a committed checkpoint: starting \
                     it from step 0"
                );
            }
            Job::new(settings)?
        }
    };
    // The job's events join the run's history from the step it resumes at.
    let generation = job.status(crate::service::now_ms()).generation;
    let resumed_from = stored.resume.as_ref().map_or(0, |from| from.step);
    let history = HistoryWriter::start(run.clone(), Source::Coordinator, generation, resumed_from)?;
    let observer = observer.with_history(history);
    let service = CoordinatorService::observed(
        job,
        run.clone(),
        run.clone(),
        ServiceOptions {
            long_poll_max: config.long_poll,
            long_poll_refresh: config.heartbeat_interval,
        },
        observer,
    );
    service
        .persist()
        .await
        .map_err(|source| SupervisorError::SaveJob {
            source: Box::new(source),
        })?;
    Ok(service)
}

/// Settings in milliseconds the job keeps as `u32` (they came from `u32` flags).
fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millisecond_settings_saturate() {
        assert_eq!(millis_u32(Duration::from_millis(20_000)), 20_000);
        assert_eq!(millis_u32(Duration::from_secs(u64::MAX)), u32::MAX);
    }
}
