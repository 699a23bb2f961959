//! OTLP span export: the tracer provider, its exporter for the configured protocol
//! (started once the process knows its resource), batched by the SDK's batch processor,
//! and the sampler: the standard `OTEL_TRACES_SAMPLER` one, except that a span carrying
//! [`SAMPLED_FIELD`]` = false` (a training step of a rank other than 0 outside the sampled
//! fraction) is dropped with its children.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{Link, SpanKind, TraceId};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Config, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample,
    SpanData, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use tokio::runtime::Handle;

use crate::export::{ExportHealth, OnTelemetryRuntime};
use crate::settings::OtlpProtocol;
use crate::TelemetryError;

/// The span field that, set to `false`, keeps a span (and its children) out of the trace.
pub const SAMPLED_FIELD: &str = "lgaf.sampled";

/// The process's tracer provider, whose spans go nowhere until [`DeferredExport::start`]:
/// the layer that records spans has to be in the subscriber from the start (it cannot be
/// added later and still be found by the trace-context calls), while the resource (run,
/// job, rank) is known only later.
pub fn tracer_provider() -> (SdkTracerProvider, DeferredExport) {
    let deferred = DeferredExport::default();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(deferred.clone())
        .with_sampler(UnsampledSteps {
            standard: Config::default().sampler,
        })
        .build();
    (provider, deferred)
}

/// The span processor of [`tracer_provider`]: drops spans until an exporter is started,
/// then hands them to the SDK's batch processor (its own thread, a bounded queue that drops
/// rather than blocks).
#[derive(Clone, Debug, Default)]
pub struct DeferredExport(Arc<OnceLock<BatchSpanProcessor>>);

impl DeferredExport {
    /// Starts exporting to `endpoint`, with `resource` on every batch.
    pub fn start(
        &self,
        endpoint: &str,
        protocol: OtlpProtocol,
        resource: &Resource,
        runtime: Handle,
        health: Arc<ExportHealth>,
    ) -> Result<(), TelemetryError> {
        let build_error = |source| TelemetryError::Exporter {
            signal: "traces",
            endpoint: endpoint.to_string(),
            source,
        };
        // The gRPC client is built in the runtime it will run on.
        let _context = runtime.enter();
        let exporter = match protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build(),
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(signal_url(endpoint, "traces"))
                .build(),
        }
        .map_err(build_error)?;
        let mut processor =
            BatchSpanProcessor::builder(OnTelemetryRuntime::new(exporter, runtime.clone(), health))
                .build();
        processor.set_resource(resource);
        // A second start (there is none) would keep the first exporter.
        let _ = self.0.set(processor);
        Ok(())
    }
}

impl SpanProcessor for DeferredExport {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        if let Some(processor) = self.0.get() {
            processor.on_start(span, cx);
        }
    }

    fn on_end(&self, span: SpanData) {
        if let Some(processor) = self.0.get() {
            processor.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.get().map_or(Ok(()), |p| p.force_flush())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0
            .get()
            .map_or(Ok(()), |p| p.shutdown_with_timeout(timeout))
    }
}

/// The OTLP/HTTP URL of `signal` under a base endpoint, as the OTLP specification builds it
/// from `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub fn signal_url(endpoint: &str, signal: &str) -> String {
    format!("{}/v1/{signal}", endpoint.trim_end_matches('/'))
}

/// The standard sampler (from `OTEL_TRACES_SAMPLER`, default parent-based always-on), but
/// spans marked `lgaf.sampled = false` are dropped: with a parent-based sampler their
/// children go with them.
#[derive(Clone, Debug)]
struct UnsampledSteps {
    standard: Box<dyn ShouldSample>,
}

impl ShouldSample for UnsampledSteps {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let unsampled = attributes
            .iter()
            .any(|kv| kv.key.as_str() == SAMPLED_FIELD && kv.value == Value::Bool(false));
        if unsampled {
            use opentelemetry::trace::TraceContextExt;
            return SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: parent_context
                    .map(|cx| cx.span().span_context().trace_state().clone())
                    .unwrap_or_default(),
            };
        }
        self.standard
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::trace::Sampler;

    fn decide(sampler: &UnsampledSteps, attributes: &[KeyValue]) -> SamplingDecision {
        sampler
            .should_sample(
                None,
                TraceId::from(7u128),
                "step",
                &SpanKind::Internal,
                attributes,
                &[],
            )
            .decision
    }

    #[test]
    fn marked_spans_are_dropped_and_the_rest_follow_the_standard_sampler() {
        let on = UnsampledSteps {
            standard: Box::new(Sampler::AlwaysOn),
        };
        assert_eq!(decide(&on, &[]), SamplingDecision::RecordAndSample);
        assert_eq!(
            decide(&on, &[KeyValue::new(SAMPLED_FIELD, true)]),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(
            decide(&on, &[KeyValue::new(SAMPLED_FIELD, false)]),
            SamplingDecision::Drop
        );
        let off = UnsampledSteps {
            standard: Box::new(Sampler::AlwaysOff),
        };
        assert_eq!(
            decide(&off, &[KeyValue::new(SAMPLED_FIELD, true)]),
            SamplingDecision::Drop
        );
    }

    #[test]
    fn http_signal_urls() {
        assert_eq!(
            signal_url("http://c:4318/", "traces"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            signal_url("http://c:4318", "metrics"),
            "http://c:4318/v1/metrics"
        );
    }
}
