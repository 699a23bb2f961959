//! What the coordinator tells about the job besides its logs: the job's trace and its
//! metrics, both driven by the job's [`Effect`]s (the state machine stays free of I/O; the
//! service hands each effect here as it carries it out).
//!
//! The trace: a `job` span (the root, for the life of this coordinator), a `generation`
//! span for each generation (from forming to its end, with the reason it ended), a
//! `recovery` span from a generation's failure to the next one formed (time to recover, and
//! why), and a `commit` span per checkpoint manifest. (Registrations and lost workers are
//! the service's log lines and the history's events; in the trace, a lost worker is the
//! reason its generation ended.)
//! Workers join it: Register's reply carries the job span's context and Join's the
//! generation's, in the gRPC metadata.
//!
//! The metrics (`metrics`): workers, generation, restarts, progress, commits.
//!
//! The history: the job's events (registrations, generations formed and ended, lost
//! workers, recoveries with their time, commits, the end) appended to the run's history in
//! the store, beside rank 0's steps, for `lgaf report`.

use std::sync::Mutex;
use std::time::Instant;

use lgaf_store::history::{
    self, CheckpointCommitted, GenerationEnded, GenerationFormed, HistoryRecord, Outcome, Recovery,
    RunFinished, WorkerLost, WorkerRegistered,
};
use lgaf_store::HistoryWriter;
use lgaf_telemetry::opentelemetry::metrics::Meter;
use lgaf_telemetry::propagation;
use tonic::metadata::MetadataMap;
use tracing::{info_span, Span};

use crate::job::{Effect, JobGauges, JobPhase};
use metrics::JobMetrics;

mod metrics;

/// The job's spans and metrics (see the module header).
pub struct JobObserver {
    job: Span,
    spans: Mutex<GenerationSpans>,
    metrics: Option<JobMetrics>,
    history: Option<HistoryWriter>,
}

#[derive(Default)]
struct GenerationSpans {
    /// The running generation's number and span.
    current: Option<(u64, Span)>,
    /// From the end of a failed generation to the next one formed, and when it began.
    recovery: Option<(Span, Instant)>,
    /// The last step rank 0 reported.
    step: u64,
}

impl JobObserver {
    /// Observes the job of `run_id`, recording its metrics with `meter`.
    pub fn new(run_id: &str, job_id: &str, meter: &Meter) -> Self {
        Self {
            job: info_span!(parent: None, "job", run_id, job_id),
            spans: Mutex::default(),
            metrics: Some(JobMetrics::new(meter)),
            history: None,
        }
    }

    /// Also appends the job's events to the run's history through `history`.
    pub fn with_history(mut self, history: HistoryWriter) -> Self {
        self.history = Some(history);
        self
    }

    /// No spans, no metrics (tests, and services built without telemetry).
    pub fn disabled() -> Self {
        Self {
            job: Span::none(),
            spans: Mutex::default(),
            metrics: None,
            history: None,
        }
    }

    /// The job span's trace context, for Register's reply.
    pub fn job_trace(&self) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        propagation::inject(&self.job, &mut metadata);
        metadata
    }

    /// The trace context of generation `generation`'s span (the job's if it is over), for
    /// Join's reply.
    pub fn generation_trace(&self, generation: u64) -> MetadataMap {
        let spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        let mut metadata = MetadataMap::new();
        match &spans.current {
            Some((g, span)) if *g == generation => propagation::inject(span, &mut metadata),
            _ => propagation::inject(&self.job, &mut metadata),
        }
        metadata
    }

    /// A span for committing the checkpoint at `step`, under the running generation.
    pub fn commit_span(&self, step: u64) -> Span {
        let spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        let parent = spans.current.as_ref().map_or(&self.job, |(_, span)| span);
        info_span!(parent: parent, "commit", step)
    }

    /// A commit's outcome and time; `bytes` are the checkpoint's objects.
    pub fn committed(&self, step: u64, bytes: u64, seconds: f64, ok: bool) {
        if let (Some(history), true) = (&self.history, ok) {
            history.record(CheckpointCommitted {
                step,
                bytes,
                seconds,
                time: history::now(),
            });
            // Not waited for: the steps that matter are rank 0's, flushed before its ack.
            history.flush();
        }
        if let Some(m) = &self.metrics {
            m.commit_duration.record(
                seconds,
                &[lgaf_telemetry::opentelemetry::KeyValue::new(
                    "outcome",
                    if ok { "committed" } else { "failed" },
                )],
            );
        }
    }

    /// Follows one effect of the job.
    pub fn effect(&self, effect: &Effect) {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        match effect {
            Effect::WorkerRegistered {
                worker_id, host, ..
            } => {
                self.record(WorkerRegistered {
                    worker_id: worker_id.clone(),
                    host: host.clone(),
                    time: history::now(),
                });
            }
            Effect::GenerationFormed {
                generation,
                world_size,
                resume_step,
                live,
                ..
            } => {
                // The step its ranks train from: the checkpoint's, or the survivors'.
                let resume_step = live.as_ref().map_or(*resume_step, |l| l.step);
                let span = info_span!(
                    parent: &self.job,
                    "generation",
                    generation,
                    world_size,
                    resume_step,
                    end_reason = tracing::field::Empty,
                );
                self.record(GenerationFormed {
                    generation: *generation,
                    world_size: *world_size,
                    resume_step,
                    live: live.is_some(),
                    time: history::now(),
                });
                // Formed: whatever failure came before is recovered from.
                if let Some((recovery, failed_at)) = spans.recovery.take() {
                    recovery.record("next_generation", *generation);
                    self.record(Recovery {
                        generation: *generation,
                        seconds: failed_at.elapsed().as_secs_f64(),
                        time: history::now(),
                    });
                }
                spans.current = Some((*generation, span));
                if let Some(m) = &self.metrics {
                    m.generation.record(*generation, &[]);
                }
            }
            Effect::WorkerLost {
                worker_id,
                host,
                reason,
                ..
            } => {
                self.record(WorkerLost {
                    worker_id: worker_id.clone(),
                    rank: None,
                    host: host.clone(),
                    reason: reason.clone(),
                    time: history::now(),
                });
            }
            Effect::GenerationEnded {
                generation,
                reason,
                restart,
                ..
            } => {
                self.record(GenerationEnded {
                    generation: *generation,
                    reason: reason.clone(),
                    time: history::now(),
                });
                if let Some((_, span)) = spans.current.take() {
                    span.record("end_reason", reason.as_str());
                }
                if restart.is_some() {
                    let span = info_span!(
                        parent: &self.job,
                        "recovery",
                        failed_generation = generation,
                        reason = reason.as_str(),
                        next_generation = tracing::field::Empty,
                    );
                    spans.recovery = Some((span, Instant::now()));
                    if let Some(m) = &self.metrics {
                        m.restarts.add(1, &[]);
                    }
                }
            }
            Effect::Progress(p) => {
                spans.step = p.step;
                if let Some(m) = &self.metrics {
                    m.step.record(p.step, &[]);
                    m.total_steps.record(p.total_steps, &[]);
                    m.epoch.record(p.epoch, &[]);
                    m.loss.record(p.loss, &[]);
                    m.samples_per_second.record(p.samples_per_s, &[]);
                }
            }
            Effect::CheckpointCommitted { step, .. } => {
                if let Some(m) = &self.metrics {
                    m.checkpoints.add(1, &[]);
                    m.checkpoint_step.record(*step, &[]);
                }
            }
            Effect::JobEnded(phase) => {
                spans.current = None;
                spans.recovery = None;
                let (outcome, detail) = match phase {
                    JobPhase::Finished => (Outcome::Completed, None),
                    JobPhase::Failed { error } => (Outcome::Failed, Some(error.clone())),
                    JobPhase::Cancelled { reason } => (Outcome::Stopped, Some(reason.clone())),
                    other => (Outcome::Stopped, Some(format!("{other:?}"))),
                };
                self.record(RunFinished {
                    step: spans.step,
                    outcome,
                    detail,
                    time: history::now(),
                });
                if let Some(history) = &self.history {
                    history.flush();
                }
            }
            Effect::WorkerRefused { .. }
            | Effect::OfferIgnored { .. }
            | Effect::NcclIdPublished { .. }
            | Effect::Commit(_)
            | Effect::Persist => {}
        }
    }

    fn record(&self, event: impl Into<HistoryRecord>) {
        if let Some(history) = &self.history {
            history.record(event);
        }
    }

    /// The job's state after a change: workers, generation, progress.
    pub fn status(&self, status: &JobGauges, workers_expected: u32) {
        if let Some(m) = &self.metrics {
            m.workers_alive.record(u64::from(status.workers), &[]);
            m.workers_expected.record(u64::from(workers_expected), &[]);
            m.generation.record(status.generation, &[]);
            m.total_steps.record(status.total_steps, &[]);
            m.checkpoint_step.record(status.last_checkpoint_step, &[]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgaf_telemetry::opentelemetry::trace::TracerProvider;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    /// Formed, lost, ended, formed again: a generation span each (the first with its end
    /// reason), a recovery span between them, all in the job's trace; the traceparent
    /// handed to workers is the generation's.
    #[test]
    fn generations_and_recoveries_are_spans_of_the_job() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let meter = lgaf_telemetry::opentelemetry::metrics::MeterProvider::meter(
                &lgaf_telemetry::opentelemetry::metrics::NoopMeterProvider::new(),
                "test",
            );
            let observer = JobObserver::new("run", "job", &meter);
            let formed = |generation| Effect::GenerationFormed {
                generation,
                world_size: 2,
                data_world_size: 2,
                backend: crate::job::Backend::Cpu,
                steps_per_epoch: 3,
                total_steps: 9,
                resume_step: 0,
                live: None,
                not_live: None,
            };
            observer.effect(&formed(1));
            let first = observer.generation_trace(1);
            assert!(first.get("traceparent").is_some());
            observer.effect(&Effect::GenerationEnded {
                generation: 1,
                reason: "rank 1 silent".into(),
                restart: Some(1),
                max_restarts: 3,
            });
            observer.effect(&formed(2));
            let second = observer.generation_trace(2);
            assert_ne!(first.get("traceparent"), second.get("traceparent"));
            observer.effect(&Effect::JobEnded(JobPhase::Finished));
        });
        // Before the provider goes: its shutdown empties the in-memory exporter.
        let spans = exporter.get_finished_spans().unwrap();
        drop(provider);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(
            names.iter().filter(|n| **n == "generation").count(),
            2,
            "{names:?}"
        );
        assert!(names.contains(&"recovery"), "{names:?}");
        let trace = spans[0].span_context.trace_id();
        assert!(spans.iter().all(|s| s.span_context.trace_id() == trace));
        let first = spans.iter().find(|s| s.name == "generation").unwrap();
        assert!(
            first
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == "end_reason" && kv.value.as_str() == "rank 1 silent"),
            "{:?}",
            first.attributes
        );
    }
}
