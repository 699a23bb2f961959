//! The worker's metrics: one set of OpenTelemetry instruments, recorded after every step,
//! checkpoint and heartbeat, and read by whatever the process's telemetry exports to (the
//! Prometheus endpoint, OTLP). Names follow OpenTelemetry's conventions, with units as
//! metadata, so the Prometheus names carry them (`lgaf.train.step.duration` in seconds is
//! `lgaf_train_step_duration_seconds`, counters end in `_total`). Every series carries the
//! rank, which a worker learns at each Join.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lgaf_store::UploadStats;
use lgaf_telemetry::opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};
use lgaf_telemetry::opentelemetry::KeyValue;

use crate::trainer::StepReport;

/// Bucket bounds (seconds) of the step, all-reduce and checkpoint histograms: a few
/// milliseconds (a tiny CPU model) to minutes (a stalled upload).
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Bucket bounds (seconds) of the heartbeat round trip.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The instruments of one worker process (cheap to clone: the heartbeat thread holds one).
#[derive(Clone)]
pub struct WorkerMetrics {
    step: Gauge<u64>,
    epoch: Gauge<u64>,
    loss: Gauge<f64>,
    learning_rate: Gauge<f64>,
    samples_per_second: Gauge<f64>,
    data_wait_ratio: Gauge<f64>,
    step_duration: Histogram<f64>,
    allreduce_duration: Histogram<f64>,
    allreduce_bytes: Counter<u64>,
    loader_images_per_second: Gauge<f64>,
    loader_bad_records: Counter<u64>,
    loss_scale: Gauge<f64>,
    skipped_steps: Counter<u64>,
    gamma: Gauge<f64>,
    checkpoint_stall: Histogram<f64>,
    checkpoint_upload: Histogram<f64>,
    checkpoint_bytes: Counter<u64>,
    checkpoint_failures: Counter<u64>,
    checkpoints_abandoned: Counter<u64>,
    heartbeat_latency: Histogram<f64>,
    eval_accuracy: Gauge<f64>,
}

impl WorkerMetrics {
    pub fn new(meter: &Meter) -> Self {
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build()
        };
        let metrics = Self {
            step: meter
                .u64_gauge("lgaf.train.step")
                .with_description("Training steps completed")
                .build(),
            epoch: meter
                .u64_gauge("lgaf.train.epoch")
                .with_description("The epoch of the last step")
                .build(),
            loss: meter
                .f64_gauge("lgaf.train.loss")
                .with_description("Loss of the last step (the margin softmax over all classes)")
                .build(),
            learning_rate: meter
                .f64_gauge("lgaf.train.learning_rate")
                .with_description("Learning rate of the last step")
                .build(),
            samples_per_second: meter
                .f64_gauge("lgaf.train.samples")
                .with_unit("{sample}/s")
                .with_description("This rank's images trained per second, over the last step")
                .build(),
            data_wait_ratio: meter
                .f64_gauge("lgaf.train.data_wait")
                .with_unit("1")
                .with_description("Share of the last step spent waiting for its batch")
                .build(),
            step_duration: seconds("lgaf.train.step.duration", "Wall time of a training step"),
            allreduce_duration: seconds(
                "lgaf.train.allreduce.duration",
                "Time of a step's gradient all-reduce",
            ),
            allreduce_bytes: meter
                // With its unit, `lgaf_train_allreduce_bytes_total` in Prometheus.
                .u64_counter("lgaf.train.allreduce")
                .with_unit("By")
                .with_description("Gradient bytes all-reduced by this rank")
                .build(),
            loader_images_per_second: meter
                .f64_gauge("lgaf.loader.images")
                .with_unit("{image}/s")
                .with_description("Images the loader delivered per second since it started")
                .build(),
            loader_bad_records: meter
                .u64_counter("lgaf.loader.bad_records")
                .with_description("Records the loader could not decode (skipped)")
                .build(),
            loss_scale: meter
                .f64_gauge("lgaf.train.loss_scale")
                .with_description("fp16 dynamic loss scale")
                .build(),
            skipped_steps: meter
                .u64_counter("lgaf.train.skipped_steps")
                .with_description("Steps whose update fp16 loss scaling skipped")
                .build(),
            gamma: meter
                .f64_gauge("lgaf.lgf.gamma")
                .with_description("Mean LGF fusion weight of the last batch, per branch")
                .build(),
            checkpoint_stall: seconds(
                "lgaf.checkpoint.stall.duration",
                "Time a checkpoint held the training step (history flush, serialising, \
                 handing its parts to the uploader)",
            ),
            checkpoint_upload: seconds(
                "lgaf.checkpoint.upload.duration",
                "Upload time of this rank's checkpoint parts finished since the last \
                 checkpoint, in the background (parts uploaded in parallel add up)",
            ),
            checkpoint_bytes: meter
                // With its unit, `lgaf_checkpoint_bytes_total` in Prometheus.
                .u64_counter("lgaf.checkpoint")
                .with_unit("By")
                .with_description("Checkpoint bytes uploaded by this rank")
                .build(),
            checkpoint_failures: meter
                .u64_counter("lgaf.checkpoint.upload.failures")
                .with_description("Checkpoint part uploads that failed")
                .build(),
            checkpoints_abandoned: meter
                .u64_counter("lgaf.checkpoint.abandoned")
                .with_description(
                    "Checkpoints this rank abandoned (never acknowledged, so never committed): \
                     their uploads failed after the store's retries or missed \
                     checkpoint.upload_deadline_secs",
                )
                .build(),
            heartbeat_latency: meter
                .f64_histogram("lgaf.heartbeat.latency")
                .with_unit("s")
                .with_description("Round trip of a heartbeat to the coordinator")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            eval_accuracy: meter
                .f64_gauge("lgaf.eval.accuracy")
                .with_unit("1")
                .with_description("Verification accuracy of the last evaluation, per set")
                .build(),
        };
        metrics
    }

    /// This process is now `rank` (a new generation, or a single-process run): its
    /// counters that a dashboard plots from the start are shown at 0 under that rank.
    pub fn joined(&self, rank: &Rank, number: u32) {
        rank.rejoined(number);
        let labels = rank.labels();
        for counter in [
            &self.loader_bad_records,
            &self.skipped_steps,
            &self.checkpoint_failures,
            &self.checkpoints_abandoned,
        ] {
            counter.add(0, &labels);
        }
    }

    /// The numbers of one step of `rank`; `allreduce_bytes` is what the step all-reduced.
    pub fn record_step(&self, rank: &Rank, report: &StepReport) {
        let labels = rank.labels();
        let labels = labels.as_slice();
        let step_seconds = report.step_time.as_secs_f64();
        self.step.record(report.step, labels);
        self.epoch.record(report.epoch, labels);
        if report.loss.is_finite() {
            self.loss.record(report.loss, labels);
        }
        self.learning_rate.record(report.lr, labels);
        if step_seconds > 0.0 {
            self.samples_per_second
                .record(report.batch_size as f64 / step_seconds, labels);
            self.data_wait_ratio
                .record(report.data_wait.as_secs_f64() / step_seconds, labels);
        }
        self.step_duration.record(step_seconds, labels);
        if report.allreduce_bytes > 0 {
            self.allreduce_duration
                .record(report.phases.all_reduce.as_secs_f64(), labels);
            self.allreduce_bytes.add(report.allreduce_bytes, labels);
        }
        self.loader_images_per_second
            .record(report.loader.images_per_s(), labels);
        // The loader's count is of its own life (one per epoch plan): a smaller count than
        // the last is a new loader's.
        let bad = report.loader.bad_records;
        let before = rank.bad_records_seen.swap(bad, Ordering::Relaxed);
        let new_bad = if bad >= before { bad - before } else { bad };
        if new_bad > 0 {
            self.loader_bad_records.add(new_bad, labels);
        }
        if let Some(scale) = report.loss_scale {
            self.loss_scale.record(scale, labels);
        }
        if report.skipped {
            self.skipped_steps.add(1, labels);
        }
        if let Some((local, global)) = report.gamma {
            let mut with_branch = labels.to_vec();
            with_branch.push(KeyValue::new("branch", "local"));
            self.gamma.record(local, &with_branch);
            with_branch.pop();
            with_branch.push(KeyValue::new("branch", "global"));
            self.gamma.record(global, &with_branch);
        }
    }

    /// How long a checkpoint held the training step.
    pub fn record_checkpoint_stall(&self, rank: &Rank, stall: Duration) {
        self.checkpoint_stall
            .record(stall.as_secs_f64(), &rank.labels());
    }

    /// The uploads that finished between two readings of the uploader's counters (at
    /// each checkpoint, and at the end of a generation).
    pub fn record_uploads(&self, rank: &Rank, before: &UploadStats, after: &UploadStats) {
        let labels = rank.labels();
        let upload = after.upload_total.saturating_sub(before.upload_total);
        if after.completed > before.completed {
            self.checkpoint_upload.record(upload.as_secs_f64(), &labels);
        }
        self.checkpoint_bytes.add(
            after.bytes_uploaded.saturating_sub(before.bytes_uploaded),
            &labels,
        );
        let failed = after.failed.saturating_sub(before.failed);
        if failed > 0 {
            self.checkpoint_failures.add(failed, &labels);
        }
    }

    pub fn record_checkpoint_abandoned(&self, rank: &Rank) {
        self.checkpoints_abandoned.add(1, &rank.labels());
    }

    pub fn record_heartbeat(&self, rank: &Rank, round_trip: Duration) {
        self.heartbeat_latency
            .record(round_trip.as_secs_f64(), &rank.labels());
    }

    /// An evaluation's accuracy on `set` (a `.bin` name or the held-out identities).
    pub fn record_eval(&self, rank: &Rank, set: &str, accuracy: f64) {
        let mut labels = rank.labels();
        labels.push(KeyValue::new("set", set.to_string()));
        self.eval_accuracy.record(accuracy, &labels);
    }
}

/// The rank whose numbers these are (it changes when a generation re-forms), and what the
/// loader had reported so far (its counters are cumulative, the metric's are deltas).
#[derive(Debug, Default)]
pub struct Rank {
    rank: AtomicU64,
    bad_records_seen: AtomicU64,
}

impl Rank {
    /// A new generation: a new rank (and a new loader).
    fn rejoined(&self, rank: u32) {
        self.rank.store(u64::from(rank), Ordering::Relaxed);
        self.bad_records_seen.store(0, Ordering::Relaxed);
    }

    fn labels(&self) -> Vec<KeyValue> {
        vec![KeyValue::new(
            "rank",
            self.rank.load(Ordering::Relaxed).to_string(),
        )]
    }
}
