//! The coordinator's instruments: the job's state as OpenTelemetry metrics (Prometheus adds
//! the units and `_total`, as for the worker's in `worker/src/metrics.rs`).

use lgaf_telemetry::opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};

/// Bucket bounds (seconds) of a manifest commit: a local write to a slow object store.
const COMMIT_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0];

/// The coordinator's instruments.
pub(super) struct JobMetrics {
    pub(super) workers_alive: Gauge<u64>,
    pub(super) workers_expected: Gauge<u64>,
    pub(super) generation: Gauge<u64>,
    pub(super) restarts: Counter<u64>,
    pub(super) step: Gauge<u64>,
    pub(super) total_steps: Gauge<u64>,
    pub(super) epoch: Gauge<u64>,
    pub(super) loss: Gauge<f64>,
    pub(super) samples_per_second: Gauge<f64>,
    pub(super) checkpoints: Counter<u64>,
    pub(super) checkpoint_step: Gauge<u64>,
    pub(super) commit_duration: Histogram<f64>,
}

impl JobMetrics {
    pub(super) fn new(meter: &Meter) -> Self {
        let gauge = |name: &'static str, description: &'static str| {
            meter.u64_gauge(name).with_description(description).build()
        };
        let metrics = Self {
            workers_alive: gauge("lgaf.job.workers.alive", "Workers registered and not lost"),
            workers_expected: gauge("lgaf.job.workers.expected", "The job's world size"),
            generation: gauge("lgaf.job.generation", "The current (or last) generation"),
            restarts: meter
                .u64_counter("lgaf.job.restarts")
                .with_description("Generations ended by a lost or failed rank")
                .build(),
            step: gauge("lgaf.job.step", "The last step rank 0 reported"),
            total_steps: gauge("lgaf.job.total_steps", "Steps of the whole job"),
            epoch: gauge("lgaf.job.epoch", "The epoch of the last step reported"),
            loss: meter
                .f64_gauge("lgaf.job.loss")
                .with_description("The loss rank 0 last reported")
                .build(),
            samples_per_second: meter
                .f64_gauge("lgaf.job.samples")
                .with_unit("{sample}/s")
                .with_description("The job's images per second, as rank 0 last reported")
                .build(),
            checkpoints: meter
                .u64_counter("lgaf.job.checkpoints")
                .with_description("Checkpoints committed")
                .build(),
            checkpoint_step: gauge(
                "lgaf.job.checkpoint.step",
                "Step of the newest committed checkpoint (0: none)",
            ),
            commit_duration: meter
                .f64_histogram("lgaf.job.checkpoint.commit.duration")
                .with_unit("s")
                .with_description("Time to verify and write a checkpoint's manifest")
                .with_boundaries(COMMIT_BUCKETS.to_vec())
                .build(),
        };
        metrics.restarts.add(0, &[]);
        metrics.checkpoints.add(0, &[]);
        metrics
    }
}
