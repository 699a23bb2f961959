//! The workers this coordinator starts on its own machine, as the supervision loop keeps
//! them: started once (at once with `--spawn-local`, or when no worker registered from
//! outside within the grace period), a slot restarted when the job wants it replaced, a
//! process killed when the job lost it while it still runs, and all stopped at the end.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::info;

use super::Service;
use crate::local::{local_devices, ChildExit, LocalWorkers, SpawnSpec};
use crate::service::LostWorker;

/// The local workers of the job, before and after they are started.
pub(super) struct LocalSlots {
    /// What to start; the devices are chosen when the workers start.
    spec: SpawnSpec,
    workers: u32,
    exits: mpsc::UnboundedSender<ChildExit>,
    started: Option<LocalWorkers>,
    /// Pids of local workers killed because the job had lost them.
    killed: HashSet<u32>,
}

impl LocalSlots {
    /// `workers` slots to start from `spec`, and the channel their exits come on.
    pub fn new(spec: SpawnSpec, workers: u32) -> (Self, mpsc::UnboundedReceiver<ChildExit>) {
        let (exits, exited) = mpsc::unbounded_channel();
        let slots = LocalSlots {
            spec,
            workers,
            exits,
            started: None,
            killed: HashSet::new(),
        };
        (slots, exited)
    }

    /// Starts every slot, once; a worker executable that is missing or does not start
    /// fails the job (instead of it waiting forever).
    pub async fn start(&mut self, service: &Service) {
        if self.started.is_some() {
            return;
        }
        if !self.spec.worker_bin.is_file() {
            service
                .fail(format!(
                    "the worker executable {} does not exist; build lgaf-worker or pass \
                     --worker-bin",
                    self.spec.worker_bin.display()
                ))
                .await;
            return;
        }
        let mut spec = self.spec.clone();
        spec.devices = local_devices(self.workers).await;
        info!(
            "local workers: {} on {}",
            spec.worker_bin.display(),
            spec.devices.join(", ")
        );
        match LocalWorkers::spawn(&spec, self.exits.clone()) {
            Ok(started) => self.started = Some(started),
            Err(e) => {
                service.fail(format!("starting local workers: {e}")).await;
            }
        }
    }

    /// A local worker process exited: the job hears of it, and the slot is restarted
    /// when the job wants it replaced.
    pub async fn exited(&mut self, exit: ChildExit, service: &Service) {
        let running = self.started.as_ref().map_or(0, LocalWorkers::running);
        if exit.success() {
            if running == 0 {
                service
                    .fail("every local worker exited, but the job is not over")
                    .await;
            }
            return;
        }
        // A worker the job had already lost (and we killed) costs nothing more; any other
        // death is news to the job, which decides whether to go on.
        let replace = if self.killed.remove(&exit.pid) {
            service.with_job(|j| !j.is_over())
        } else {
            service
                .local_worker_exited(exit.slot, exit.describe())
                .await
        };
        if let (true, Some(started)) = (replace, self.started.as_mut()) {
            if let Err(e) = started.restart(exit.slot) {
                service
                    .fail(format!("restarting local worker slot {}: {e}", exit.slot))
                    .await;
            }
        }
    }

    /// The job lost a worker: if it is one of ours and still runs (hung, or cut off), it
    /// is killed, so that its slot can be started again.
    pub fn lost(&mut self, lost: &LostWorker) {
        if let (Some(slot), Some(started)) = (lost.slot, self.started.as_ref()) {
            if started.pids().contains(&lost.pid) {
                self.killed.insert(lost.pid);
                started.kill(slot, lost.pid);
            }
        }
    }

    /// At the end of the job: after a success the workers exit by themselves within
    /// `stop_timeout`, and are stopped if they do not; otherwise they are stopped at once
    /// (SIGTERM, then SIGKILL after `stop_timeout`).
    pub async fn wind_down(&self, finished: bool, stop_timeout: Duration) {
        if let Some(started) = &self.started {
            if !finished || !started.wait_all(stop_timeout).await {
                started.stop(stop_timeout).await;
            }
        }
    }
}
