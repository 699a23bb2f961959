//! The gRPC server of the job, in a task of its own: listening, the job token and TLS it
//! serves with, the health service beside the job, and draining it at the end.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;
use tracing::warn;

use super::{coordinator_url, Config, Service, SupervisorError};
use crate::{serve, Security};

/// The gRPC server, serving the job in a task of its own.
pub(super) struct Server {
    /// The URL local workers dial.
    pub url: String,
    pub task: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Whether `task` has not ended yet.
    pub running: bool,
    shutdown: oneshot::Sender<()>,
}

impl Server {
    /// Listens on `config.listen` and serves `service` with the job token and TLS of
    /// `config`, and `health` to anyone.
    pub async fn start(
        config: &Config,
        service: &Service,
        health: HealthServer<HealthService>,
    ) -> Result<Self, SupervisorError> {
        let listen_error = |source| SupervisorError::Listen {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(listen_error)?;
        let addr = listener.local_addr().map_err(listen_error)?;
        let url = coordinator_url(addr, config.tls.is_some());
        if config.token.is_none() {
            warn!(
                "no job token (--token-file or LGAF_JOB_TOKEN): anyone who can reach {url} can \
                 act as a worker of this job"
            );
        }
        let security = Security {
            token: config.token.clone(),
            tls: config.tls.as_ref().map(|tls| tls.server.clone()),
            requests_per_sec: Some(config.max_requests_per_sec),
            health: Some(health),
        };
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, service.clone(), security, async {
            let _ = shutdown_rx.await;
        }));
        Ok(Server {
            url,
            task,
            running: true,
            shutdown,
        })
    }

    /// Stops accepting calls and gives those in flight 3 s to finish.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        if !self.running {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(3), self.task).await {
            Ok(Ok(Err(e))) => warn!("the gRPC server ended with an error: {e}"),
            Ok(Err(e)) => warn!("the gRPC server task failed: {e}"),
            Err(_) => warn!("the gRPC server did not drain within 3 s"),
            Ok(Ok(Ok(()))) => {}
        }
    }
}
