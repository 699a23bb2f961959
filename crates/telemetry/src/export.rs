//! Every OTLP export goes through [`OnTelemetryRuntime`]: the SDK's batch span processor and
//! periodic metric reader call their exporter from threads of their own, with no tokio
//! runtime, while the OTLP gRPC and HTTP clients need one. The wrapper runs each export on
//! the telemetry runtime and reports its outcome to [`ExportHealth`], which counts failures
//! and logs them (the first one, then at most one line a minute, then the recovery) instead
//! of passing anything to the code being observed.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::metrics::Counter;
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tokio::runtime::Handle;
use tracing::{info, warn};

/// How often a failing export repeats its warning.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The outcomes of the exports of one signal (`traces` or `metrics`).
#[derive(Debug)]
pub struct ExportHealth {
    signal: &'static str,
    endpoint: String,
    failures: AtomicU64,
    failing: AtomicBool,
    last_warned: Mutex<Option<Instant>>,
    counter: Mutex<Option<Counter<u64>>>,
}

impl ExportHealth {
    pub fn new(signal: &'static str, endpoint: &str) -> Arc<Self> {
        Arc::new(Self {
            signal,
            endpoint: endpoint.to_string(),
            failures: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            last_warned: Mutex::new(None),
            counter: Mutex::new(None),
        })
    }

    /// Counts failures also in `counter` (the process's meter exists after the exporters).
    pub fn count_in(&self, counter: Counter<u64>) {
        *self.counter.lock().unwrap() = Some(counter);
    }

    /// Failed exports so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn record(&self, result: &OTelSdkResult) {
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!(
                        "{} export to {} works again ({} failed exports so far)",
                        self.signal,
                        self.endpoint,
                        self.failures()
                    );
                }
            }
            Err(error) => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                self.failing.store(true, Ordering::Relaxed);
                if let Some(counter) = self.counter.lock().unwrap().as_ref() {
                    counter.add(1, &[KeyValue::new("signal", self.signal)]);
                }
                let mut last = self.last_warned.lock().unwrap();
                if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    *last = Some(Instant::now());
                    warn!(
                        "{} export to {} failed ({failures} so far; training goes on, the data \
                         of failed exports is dropped): {error}",
                        self.signal, self.endpoint
                    );
                }
            }
        }
    }
}

/// An OTLP exporter run on the telemetry runtime, its outcomes reported to `health`.
#[derive(Debug)]
pub struct OnTelemetryRuntime<E> {
    inner: E,
    runtime: Handle,
    health: Arc<ExportHealth>,
}

impl<E> OnTelemetryRuntime<E> {
    pub fn new(inner: E, runtime: Handle, health: Arc<ExportHealth>) -> Self {
        Self {
            inner,
            runtime,
            health,
        }
    }

    /// Runs `export` to the end on the telemetry runtime. The SDK calls from its own
    /// threads; a call from inside a runtime (a flush from async code) goes through a
    /// scoped thread, as `Handle::block_on` may not run there.
    fn run<F>(&self, export: F) -> OTelSdkResult
    where
        F: Future<Output = OTelSdkResult> + Send,
    {
        let result = if Handle::try_current().is_ok() {
            let runtime = self.runtime.clone();
            std::thread::scope(|scope| {
                scope
                    .spawn(move || runtime.block_on(export))
                    .join()
                    .unwrap_or_else(|_| {
                        Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                            "the export thread panicked".into(),
                        ))
                    })
            })
        } else {
            self.runtime.block_on(export)
        };
        self.health.record(&result);
        result
    }
}

impl<E: SpanExporter> SpanExporter for OnTelemetryRuntime<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        std::future::ready(self.run(self.inner.export(batch)))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let _context = self.runtime.enter();
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        let _context = self.runtime.enter();
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for OnTelemetryRuntime<E> {
    fn export(&self, metrics: &ResourceMetrics) -> impl Future<Output = OTelSdkResult> + Send {
        std::future::ready(self.run(self.inner.export(metrics)))
    }

    fn force_flush(&self) -> OTelSdkResult {
        let _context = self.runtime.enter();
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let _context = self.runtime.enter();
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::error::OTelSdkError;

    #[derive(Debug)]
    struct Flaky(AtomicU64);

    impl SpanExporter for Flaky {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            // Needs a tokio runtime, as the OTLP clients do.
            tokio::time::sleep(Duration::from_millis(1)).await;
            match self.0.fetch_add(1, Ordering::Relaxed) {
                0 | 1 => Err(OTelSdkError::InternalFailure("collector down".into())),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn exports_run_on_the_telemetry_runtime_and_failures_are_counted() {
        let runtime = crate::runtime::TelemetryRuntime::start().unwrap();
        let health = ExportHealth::new("traces", "http://127.0.0.1:1");
        let exporter =
            OnTelemetryRuntime::new(Flaky(AtomicU64::new(0)), runtime.handle(), health.clone());
        // From a plain thread, as the SDK's batch processor calls.
        let block = |e: &OnTelemetryRuntime<Flaky>| futures_lite(e.export(Vec::new()));
        assert!(block(&exporter).is_err());
        assert!(block(&exporter).is_err());
        assert!(block(&exporter).is_ok());
        assert_eq!(health.failures(), 2);
        assert!(!health.failing.load(Ordering::Relaxed));
        // From inside another runtime, as a flush from async code would.
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(other
            .block_on(async { exporter.export(Vec::new()).await })
            .is_ok());
    }

    /// Polls a ready future (the wrapper's futures are ready when returned).
    fn futures_lite<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        match future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(output) => output,
            std::task::Poll::Pending => panic!("the export future was not ready"),
        }
    }
}
