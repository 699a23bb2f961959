//! The Prometheus text endpoint: `GET /metrics` renders what the OpenTelemetry Prometheus
//! reader collects, in the text exposition format (0.0.4) that Prometheus scrapes.

use std::net::SocketAddr;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::runtime::Handle;
use tracing::warn;

use crate::TelemetryError;

/// Listens on `addr` (synchronously, so a taken port is an error here) and serves
/// `registry` on the telemetry runtime; returns the bound address.
pub fn serve(
    addr: SocketAddr,
    registry: Registry,
    runtime: &Handle,
) -> Result<SocketAddr, TelemetryError> {
    let bind_error = |source| TelemetryError::MetricsListen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    let app = Router::new().route("/metrics", get(move || render(registry.clone())));
    runtime.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => return warn!("the metrics endpoint on {bound} could not start: {e}"),
        };
        if let Err(e) = axum::serve(listener, app).await {
            warn!("the metrics endpoint on {bound} stopped: {e}");
        }
    });
    Ok(bound)
}

async fn render(registry: Registry) -> impl IntoResponse {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut body) {
        warn!("encoding the metrics: {e}");
    }
    ([(CONTENT_TYPE, encoder.format_type().to_string())], body)
}
