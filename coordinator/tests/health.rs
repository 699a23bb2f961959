//! The coordinator's `grpc.health.v1` service as Kubernetes gRPC probes see it: the real
//! `lgaf-coordinator` process, probed over loopback with tonic-health's client and no job
//! token. SERVING while the job waits for its workers and while they train; NOT_SERVING once
//! the job has finished, and once SIGTERM cancelled it (over TLS, with a job token the
//! probes do not carry), until the server stops. (Lease loss: the unit tests of
//! `supervisor::lease` and `supervisor::health`.)

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::Coordinator;
use common::{facts, TestWorker};
use lgaf_proto::v1::{self, coordinator_client::CoordinatorClient};
use nix::sys::signal::Signal;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The job's service, as probes name it.
const COORDINATOR: &str = "lgaf.v1.Coordinator";

/// The longest any step may take, however loaded the machine: generous, never a timing
/// assertion.
const PATIENCE: Duration = Duration::from_secs(60);

/// `fut`, or a panic naming `what` if it takes longer than [`PATIENCE`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {PATIENCE:?}"))
}

/// What a probe of `name` is told, without a token.
async fn check(channel: &Channel, name: &str) -> ServingStatus {
    let request = HealthCheckRequest {
        service: name.into(),
    };
    HealthClient::new(channel.clone())
        .check(request)
        .await
        .unwrap_or_else(|s| panic!("checking {name:?}: {s}"))
        .into_inner()
        .status()
}

/// What a probe is told: the same for the whole server and for the job's service.
async fn answer(channel: &Channel) -> ServingStatus {
    let whole = check(channel, "").await;
    assert_eq!(check(channel, COORDINATOR).await, whole);
    whole
}

/// Probes every 20 ms until they are told `wanted`.
async fn until_answer(channel: &Channel, wanted: ServingStatus) {
    within(&format!("waiting for {wanted:?}"), async {
        while answer(channel).await != wanted {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

async fn connect(endpoint: Endpoint) -> Channel {
    within("connecting", endpoint.connect()).await.unwrap()
}

/// A CA, and a certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem).
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// One worker from outside joins, so the job trains, then finishes at the final step; the
/// coordinator lingers a minute after that (--health-linger-ms), answering NOT_SERVING,
/// until SIGTERM cuts the linger short: the job still counts as finished.
#[test]
fn serving_while_the_job_waits_and_trains_and_not_serving_once_it_finished() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut coord = Coordinator::start(
        &[
            "--workers",
            "1",
            "--store",
            store.to_str().unwrap(),
            "--max-steps",
            "4",
            "--grace-secs",
            "600",
            "--heartbeat-ms",
            "100",
            "--health-linger-ms",
            "60000",
        ],
        &[],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = coord.url.clone();
    rt.block_on(async {
        let channel = connect(Endpoint::from_shared(url.clone()).unwrap()).await;
        // Waiting for its worker.
        assert_eq!(answer(&channel).await, ServingStatus::Serving);

        let mut worker = within("registering", TestWorker::register(&url, None, 5400)).await;
        let joined = within("joining", worker.join(facts())).await.unwrap();
        assert_eq!((worker.generation(), joined.total_steps), (1, 4));
        // Training.
        assert_eq!(answer(&channel).await, ServingStatus::Serving);

        let finish = v1::FinishRequest {
            api_version: 1,
            worker_id: worker.id.clone(),
            generation: worker.generation(),
            step: joined.total_steps,
            error: String::new(),
            retryable: false,
        };
        within("finishing", worker.client.finish(finish))
            .await
            .unwrap();
        until_answer(&channel, ServingStatus::NotServing).await;
        // For good, while it lingers.
        for _ in 0..5 {
            assert_eq!(answer(&channel).await, ServingStatus::NotServing);
        }
    });
    coord.signal(Signal::SIGTERM);
    let status = coord.wait(PATIENCE);
    let stderr = coord.stderr();
    assert!(status.success(), "{status}; stderr:\n{stderr}");
    let out = coord.remaining_stdout().join("\n");
    assert!(
        out.contains("(run ") && out.contains(" finished: "),
        "{out}"
    );
    assert!(
        stderr.contains("grpc.health.v1: NotServing (lease held, job over)"),
        "{stderr}"
    );
}

/// Over TLS, with a job token: a probe without the token is answered while the job itself
/// refuses it; a probe watching sees SERVING, then NOT_SERVING on SIGTERM, then its stream
/// ends as the server drains, so watching does not hold the shutdown up.
#[test]
fn over_tls_and_without_the_token_a_watching_probe_sees_a_cancelled_job_go_not_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-5e1f0a\n").unwrap();
    let store = dir.path().join("store");
    let mut coord = Coordinator::start(
        &[
            "--workers",
            "2",
            "--store",
            store.to_str().unwrap(),
            "--grace-secs",
            "600",
            "--token-file",
            token.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(coord.url.starts_with("https://127.0.0.1:"), "{}", coord.url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let endpoint = Endpoint::from_shared(coord.url.clone())
            .unwrap()
            .tls_config(lgaf_proto::tls::client_config(&ca, None).unwrap())
            .unwrap();
        let channel = connect(endpoint).await;
        assert_eq!(answer(&channel).await, ServingStatus::Serving);
        let refused = CoordinatorClient::new(channel.clone())
            .get_job_status(v1::JobStatusRequest { api_version: 1 })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");

        let mut prober = HealthClient::new(channel.clone());
        let watched = prober.watch(HealthCheckRequest {
            service: COORDINATOR.into(),
        });
        let mut watch = within("watching", watched).await.unwrap().into_inner();
        let first = within("the first status", watch.message()).await;
        assert_eq!(first.unwrap().unwrap().status(), ServingStatus::Serving);

        coord.signal(Signal::SIGTERM);
        let cancelled = within("NOT_SERVING", watch.message()).await;
        assert_eq!(
            cancelled.unwrap().unwrap().status(),
            ServingStatus::NotServing
        );
        let ended = within("the end of the watch", watch.message()).await;
        assert!(
            matches!(ended, Ok(None)),
            "the watch did not end cleanly: {ended:?}"
        );
    });
    let status = coord.wait(PATIENCE);
    let stderr = coord.stderr();
    assert_eq!(status.code(), Some(143), "stderr:\n{stderr}");
    assert!(!stderr.contains("did not drain"), "{stderr}");
    let out = coord.remaining_stdout().join("\n");
    // Cancelled, not failed: a coordinator started again resumes the run.
    assert!(
        out.contains(") cancelled: ") && out.contains("error: the coordinator received SIGTERM"),
        "{out}"
    );
}
