//! W3C trace context (`traceparent`, `tracestate`) in gRPC metadata, so that one trace
//! crosses the processes of a job. The coordinator hands the job's context to a worker on
//! Register's reply and the generation's on Join's, and the worker parents its spans under
//! them. Every worker request also carries the calling span's context, as gRPC clients do,
//! so a proxy or server in between can join the trace (the coordinator's own spans follow
//! the job's events instead of its handlers). With tracing off, nothing is written and
//! nothing read is used.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes `span`'s trace context into `metadata`.
pub fn inject(span: &tracing::Span, metadata: &mut MetadataMap) {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

/// Makes the trace context in `metadata`, if there is a valid one, the parent of `span`.
/// Returns whether it did.
pub fn set_parent(span: &tracing::Span, metadata: &MetadataMap) -> bool {
    let context = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    if !context.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(context).is_ok()
}

/// The trace id of `span` as 32 hex digits, if it has one (tracing on).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes only `traceparent` and `tracestate`, both valid ASCII keys
        // and values; anything else is left out rather than sent malformed.
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(|key| match key {
                KeyRef::Ascii(key) => key.as_str(),
                KeyRef::Binary(key) => key.as_str(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn a_context_written_into_metadata_parents_a_span_read_from_it() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let client = tracing::info_span!("client");
            let mut metadata = MetadataMap::new();
            inject(&client, &mut metadata);
            let traceparent = metadata.get("traceparent").unwrap().to_str().unwrap();
            let client_trace = trace_id(&client).unwrap();
            assert!(traceparent.contains(&client_trace), "{traceparent}");

            let server = tracing::info_span!("server");
            assert!(set_parent(&server, &metadata));
            assert_eq!(trace_id(&server).unwrap(), client_trace);

            let unrelated = tracing::info_span!("unrelated");
            assert!(!set_parent(&unrelated, &MetadataMap::new()));
            assert_ne!(trace_id(&unrelated).unwrap(), client_trace);
        });
    }

    #[test]
    fn without_tracing_nothing_is_written() {
        let span = tracing::info_span!("no subscriber");
        let mut metadata = MetadataMap::new();
        inject(&span, &mut metadata);
        assert!(metadata.is_empty());
        assert_eq!(trace_id(&span), None);
    }
}
