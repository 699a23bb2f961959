//! The coordinator's `grpc.health.v1` service: what Kubernetes gRPC probes, load balancers
//! and monitors ask. It is served on the job's port, over TLS when the job is, but outside
//! the job-token gate: probes carry no token, and the answer tells nothing but up or down.
//!
//! SERVING, for the whole server (`""`) and for the job's service (`lgaf.v1.Coordinator`),
//! while this process holds the run's lease and the job is running (workers awaited,
//! generations training). NOT_SERVING while the lease has lapsed or is lost, and for good
//! once the job has ended (finished, failed or cancelled), through the shutdown that
//! follows. The supervisor tells it what it learns; the job's state machine knows nothing
//! of it.

use lgaf_proto::v1::coordinator_server::SERVICE_NAME;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;
use tracing::info;

/// The names a probe may ask about: the whole server, and the job's service.
const NAMES: [&str; 2] = ["", SERVICE_NAME];

/// What the health service answers, and why.
pub(super) struct Health {
    reporter: HealthReporter,
    lease_held: bool,
    job_running: bool,
}

impl Health {
    /// SERVING (the lease is held and the job runs when the server starts), and the
    /// service to serve it with.
    pub async fn start() -> (Self, HealthServer<HealthService>) {
        let health = Health {
            reporter: HealthReporter::new(),
            lease_held: true,
            job_running: true,
        };
        health.report().await;
        let service = HealthService::from_health_reporter(health.reporter.clone());
        (health, HealthServer::new(service))
    }

    /// Whether a probe is told SERVING.
    pub fn serving(&self) -> bool {
        self.lease_held && self.job_running
    }

    /// Whether this process still holds the run's lease, after a renewal.
    pub async fn lease_held(&mut self, held: bool) {
        if held != self.lease_held {
            self.lease_held = held;
            self.report().await;
        }
    }

    /// The job has ended: NOT_SERVING from now on, whatever the lease does.
    pub async fn job_ended(&mut self) {
        if self.job_running {
            self.job_running = false;
            self.report().await;
        }
    }

    /// Right before the server drains: ends every Watch stream (each has been sent
    /// NOT_SERVING), which would otherwise hold the drain to its limit. Checks from then on
    /// get NOT_FOUND, the server no longer taking new calls anyway.
    pub async fn close(&mut self) {
        for name in NAMES {
            self.reporter.clear_service_status(name).await;
        }
    }

    async fn report(&self) {
        let status = if self.serving() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in NAMES {
            self.reporter.set_service_status(name, status).await;
        }
        info!(
            "grpc.health.v1: {status} (lease {}, job {})",
            if self.lease_held { "held" } else { "not held" },
            if self.job_running { "running" } else { "over" }
        );
    }
}

#[cfg(test)]
mod tests {
    use tonic::{Code, Request};
    use tonic_health::pb::health_check_response::ServingStatus as Answer;
    use tonic_health::pb::health_server::Health as _;
    use tonic_health::pb::HealthCheckRequest;

    use super::*;

    /// What a probe asking about `name` is told: its status, or the gRPC code of the
    /// refusal.
    async fn ask(probe: &HealthService, name: &str) -> Result<Answer, Code> {
        probe
            .check(Request::new(HealthCheckRequest {
                service: name.into(),
            }))
            .await
            .map(|r| r.into_inner().status())
            .map_err(|s| s.code())
    }

    /// Both names, answered alike.
    async fn answer(probe: &HealthService) -> Result<Answer, Code> {
        let whole = ask(probe, "").await;
        assert_eq!(ask(probe, "lgaf.v1.Coordinator").await, whole);
        whole
    }

    #[tokio::test]
    async fn serving_while_the_lease_is_held_and_the_job_runs_and_never_after_it_ended() {
        let (mut health, _server) = Health::start().await;
        let probe = HealthService::from_health_reporter(health.reporter.clone());
        assert_eq!(answer(&probe).await, Ok(Answer::Serving));
        assert_eq!(ask(&probe, "lgaf.v1.Other").await, Err(Code::NotFound));

        // A lapsed or lost lease, then renewed again.
        health.lease_held(false).await;
        assert_eq!(answer(&probe).await, Ok(Answer::NotServing));
        health.lease_held(true).await;
        assert_eq!(answer(&probe).await, Ok(Answer::Serving));

        // The job ended: a renewal during the shutdown changes nothing.
        health.job_ended().await;
        assert_eq!(answer(&probe).await, Ok(Answer::NotServing));
        health.lease_held(true).await;
        health.job_ended().await;
        assert!(!health.serving());
        assert_eq!(answer(&probe).await, Ok(Answer::NotServing));

        health.close().await;
        assert_eq!(answer(&probe).await, Err(Code::NotFound));
    }
}
