//! Observability of the LGAF-Train processes, in one place so that the coordinator (which
//! does not link libtorch) and the worker set it up the same way:
//!
//! - [`settings`]: the command-line flags and `OTEL_*` environment variables that turn each
//!   part on ([`TelemetryArgs`]);
//! - [`Telemetry`] (`telemetry`): the process's `tracing` subscriber (text or JSON log lines
//!   with the trace id), its OpenTelemetry tracer and meter providers, and their shutdown;
//! - `traces`: OTLP span export (gRPC or HTTP/protobuf) with batching off the caller's
//!   thread, and the sampler that keeps every step of rank 0 and a fraction of the others;
//! - `metrics`: the OpenTelemetry meter provider, read by OTLP and by the Prometheus text
//!   endpoint (`prometheus_http`);
//! - `export`: what every OTLP export goes through: its own runtime, and failures logged and
//!   counted, never passed to the code being observed;
//! - [`propagation`]: W3C `traceparent` in gRPC metadata, so one trace crosses processes;
//! - [`testing`]: the real collector this workspace's tests export to.
//!
//! With no endpoint and no metrics address set, only the log subscriber is installed: no
//! span is recorded for export and no instrument is read.

mod export;
mod json_log;
mod metrics;
mod prometheus_http;
pub mod propagation;
mod runtime;
pub mod settings;
mod telemetry;
pub mod testing;
mod traces;

pub use settings::{LogFormat, OtlpProtocol, TelemetryArgs};
pub use telemetry::{Telemetry, TelemetryError, TextStyle};
pub use traces::SAMPLED_FIELD;

/// The OpenTelemetry API, re-exported so the instrumented crates use the same version.
pub use opentelemetry;
