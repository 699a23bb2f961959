//! [`Telemetry`]: what a process holds for its observability. `init` installs the
//! subscriber at once (so start-up is logged, and spans are recorded when an endpoint is
//! set); `start_export` starts span and metric export once the process knows who it is (a
//! worker learns its run and job at registration), and dropping it flushes and stops the
//! export, bounded in time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry::trace::TracerProvider;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::info;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::export::ExportHealth;
use crate::json_log::JsonWithTrace;
use crate::runtime::TelemetryRuntime;
use crate::settings::{LogFormat, TelemetryArgs};
use crate::traces::DeferredExport;
use crate::{metrics, prometheus_http, traces};

/// How long the exit waits for the last spans and metrics to leave.
/// Each of spans and metrics gets this long; only a collector that is down or slow uses it.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("starting the telemetry runtime: {0}")]
    Runtime(#[source] std::io::Error),

    #[error(
        "the OTLP {signal} exporter for {endpoint:?}: {source} (check --otlp-endpoint or \
         OTEL_EXPORTER_OTLP_ENDPOINT, and --otlp-protocol or OTEL_EXPORTER_OTLP_PROTOCOL)"
    )]
    Exporter {
        signal: &'static str,
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },

    #[error("--metrics-listen {addr}: {source}")]
    MetricsListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("the Prometheus reader: {0}")]
    Prometheus(#[source] opentelemetry_sdk::error::OTelSdkError),
}

/// How text log lines look.
#[derive(Clone, Copy, Debug)]
pub struct TextStyle {
    /// Colours (for a terminal).
    pub ansi: bool,
    /// The module each line comes from (`lgaf_coordinator::service: ...`).
    pub targets: bool,
}

/// The observability of one process (see the module header).
pub struct Telemetry {
    service: &'static str,
    args: TelemetryArgs,
    runtime: TelemetryRuntime,
    /// With an endpoint: the provider whose spans the subscriber records, and where its
    /// export starts.
    tracer: Option<(SdkTracerProvider, DeferredExport)>,
    meters: Option<SdkMeterProvider>,
    metrics_addr: Option<SocketAddr>,
    export_health: Vec<Arc<ExportHealth>>,
}

impl Telemetry {
    /// Installs the process's log subscriber (filtered by `RUST_LOG`, default `info`),
    /// writing to `writer` as text (in `style`) or JSON lines. If a subscriber is already
    /// installed (tests in one process), that one stays.
    pub fn init<W>(
        service: &'static str,
        args: &TelemetryArgs,
        writer: W,
        style: TextStyle,
    ) -> Result<Self, TelemetryError>
    where
        W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    {
        Self::init_filtered(service, args, writer, style, "info")
    }

    /// [`Telemetry::init`] with another filter than `info` where `RUST_LOG` is unset (e.g.
    /// `info,some::module=debug`, for a library's debug lines a process always wants).
    pub fn init_filtered<W>(
        service: &'static str,
        args: &TelemetryArgs,
        writer: W,
        style: TextStyle,
        default_filter: &str,
    ) -> Result<Self, TelemetryError>
    where
        W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    {
        let tracer = args.traces_on().then(traces::tracer_provider);
        let spans = tracer.as_ref().map(|(provider, _)| {
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(service))
                .with_location(false)
                .with_threads(false)
                .with_tracked_inactivity(false)
        });
        let log_lines = match args.log_format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(style.ansi)
                .with_target(style.targets)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .event_format(JsonWithTrace)
                .with_writer(writer)
                .boxed(),
        };
        let filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
        let _ = tracing_subscriber::registry()
            .with(spans)
            .with(log_lines)
            .with(filter)
            .try_init();
        Ok(Self {
            service,
            args: args.clone(),
            runtime: TelemetryRuntime::start().map_err(TelemetryError::Runtime)?,
            tracer,
            meters: None,
            metrics_addr: None,
            export_health: Vec::new(),
        })
    }

    /// Starts exporting spans (an OTLP endpoint set) and metrics (an endpoint or
    /// `--metrics-listen` set), with `attributes` (run, job, slot, host, device...) and the
    /// service name in the resource. `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`
    /// override and add, as the specification says.
    pub fn start_export(&mut self, attributes: Vec<KeyValue>) -> Result<(), TelemetryError> {
        let resource = self.resource(attributes);
        let handle = self.runtime.handle();
        let endpoint = self.args.otlp_endpoint.clone().filter(|e| !e.is_empty());
        if let (Some(endpoint), Some((_, export))) = (&endpoint, &self.tracer) {
            let health = ExportHealth::new("traces", endpoint);
            export.start(
                endpoint,
                self.args.otlp_protocol,
                &resource,
                handle.clone(),
                health.clone(),
            )?;
            self.export_health.push(health);
            info!(
                "exporting traces to {endpoint} ({:?})",
                self.args.otlp_protocol
            );
        }
        if endpoint.is_none() && self.args.metrics_listen.is_none() {
            return Ok(());
        }
        let metrics_health = endpoint
            .as_deref()
            .map(|endpoint| ExportHealth::new("metrics", endpoint));
        let process = metrics::meter_provider(
            resource,
            self.args.metrics_listen.is_some(),
            endpoint
                .as_deref()
                .zip(metrics_health.clone())
                .map(|(e, h)| (e, self.args.otlp_protocol, h)),
            &handle,
        )?;
        if let (Some(addr), Some(registry)) = (self.args.metrics_listen, process.prometheus) {
            let bound = prometheus_http::serve(addr, registry, &handle)?;
            info!("serving Prometheus metrics on http://{bound}/metrics");
            self.metrics_addr = Some(bound);
        }
        self.export_health.extend(metrics_health);
        let failures = process
            .provider
            .meter("lgaf-telemetry")
            .u64_counter("lgaf.telemetry.export.failures")
            .with_description("OTLP exports that failed (their data is dropped)")
            .build();
        for health in &self.export_health {
            health.count_in(failures.clone());
        }
        self.meters = Some(process.provider);
        Ok(())
    }

    /// A meter for this process's instruments; with metrics off, instruments record nothing.
    pub fn meter(&self, name: &'static str) -> Meter {
        match &self.meters {
            Some(provider) => provider.meter(name),
            None => opentelemetry::metrics::NoopMeterProvider::new().meter(name),
        }
    }

    /// The address the Prometheus endpoint listens on, when it runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The flags this telemetry was set up with.
    pub fn args(&self) -> &TelemetryArgs {
        &self.args
    }

    /// Failed OTLP exports so far (traces and metrics).
    pub fn export_failures(&self) -> u64 {
        self.export_health.iter().map(|h| h.failures()).sum()
    }

    fn resource(&self, attributes: Vec<KeyValue>) -> Resource {
        // The environment's attributes (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME, which
        // `Resource::builder` reads) win over ours: ours only fill in what it leaves out.
        let from_env = Resource::builder_empty()
            .with_detector(Box::new(
                opentelemetry_sdk::resource::EnvResourceDetector::new(),
            ))
            .build();
        let env_keys: Vec<_> = from_env.iter().map(|(k, _)| k.clone()).collect();
        let mut builder = Resource::builder();
        let service_key = opentelemetry::Key::from_static_str("service.name");
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() && !env_keys.contains(&service_key) {
            builder = builder.with_service_name(self.service);
        }
        builder
            .with_attributes(
                attributes
                    .into_iter()
                    .filter(|kv| !env_keys.contains(&kv.key)),
            )
            .build()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let tracer = self.tracer.take().map(|(provider, _)| provider);
        let meters = self.meters.take();
        if tracer.is_none() && meters.is_none() {
            return;
        }
        // On a plain thread: the SDK's shutdown blocks, which tokio forbids in a runtime.
        let _ = std::thread::spawn(move || {
            if let Some(tracer) = tracer {
                let _ = tracer.shutdown_with_timeout(SHUTDOWN_WAIT);
            }
            if let Some(meters) = meters {
                let _ = meters.shutdown_with_timeout(SHUTDOWN_WAIT);
            }
        })
        .join();
    }
}
