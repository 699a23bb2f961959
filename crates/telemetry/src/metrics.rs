//! The process's meter provider: instruments recorded once, read by the Prometheus reader
//! (when `--metrics-listen` is set) and by a periodic OTLP reader (when an endpoint is
//! set). With neither, the provider has no reader and recording costs next to nothing.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::Resource;
use tokio::runtime::Handle;

use crate::export::{ExportHealth, OnTelemetryRuntime};
use crate::settings::OtlpProtocol;
use crate::traces::signal_url;
use crate::TelemetryError;

/// How often metrics are pushed over OTLP.
const OTLP_INTERVAL: Duration = Duration::from_secs(10);

/// The meter provider and, when Prometheus reads it, the registry the endpoint renders.
pub struct ProcessMetrics {
    pub provider: SdkMeterProvider,
    pub prometheus: Option<prometheus::Registry>,
}

pub fn meter_provider(
    resource: Resource,
    prometheus: bool,
    otlp: Option<(&str, OtlpProtocol, Arc<ExportHealth>)>,
    runtime: &Handle,
) -> Result<ProcessMetrics, TelemetryError> {
    let mut builder = SdkMeterProvider::builder().with_resource(resource);
    let registry = if prometheus {
        let registry = prometheus::Registry::new();
        let reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            // Every instrument is the process's own: the scope label would only repeat it.
            .scope_info_enabled(false)
            .build()
            .map_err(TelemetryError::Prometheus)?;
        builder = builder.with_reader(reader);
        Some(registry)
    } else {
        None
    };
    if let Some((endpoint, protocol, health)) = otlp {
        let _context = runtime.enter();
        let exporter = match protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build(),
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_endpoint(signal_url(endpoint, "metrics"))
                .build(),
        }
        .map_err(|source| TelemetryError::Exporter {
            signal: "metrics",
            endpoint: endpoint.to_string(),
            source,
        })?;
        let reader =
            PeriodicReader::builder(OnTelemetryRuntime::new(exporter, runtime.clone(), health))
                .with_interval(OTLP_INTERVAL)
                .build();
        builder = builder.with_reader(reader);
    }
    Ok(ProcessMetrics {
        provider: builder.build(),
        prometheus: registry,
    })
}
