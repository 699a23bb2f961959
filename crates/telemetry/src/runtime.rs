//! The runtime that telemetry I/O runs on: OTLP exports and the Prometheus endpoint. It is
//! the telemetry's own (one worker thread), so a slow collector never holds a thread of the
//! process's gRPC runtime or of training, and the training thread never blocks on it.

use tokio::runtime::{Handle, Runtime};

pub struct TelemetryRuntime(Option<Runtime>);

impl TelemetryRuntime {
    pub fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lgaf-telemetry")
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    pub fn handle(&self) -> Handle {
        self.0
            .as_ref()
            .expect("running until dropped")
            .handle()
            .clone()
    }
}

impl Drop for TelemetryRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids inside another runtime (the
        // coordinator drops its telemetry there): let its thread go in the background.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
