//! TLS on the control plane, end to end with real processes: a coordinator serving a
//! certificate signed by a test CA trains a run with its spawned workers over https://; a
//! worker that trusts another CA, or speaks plain HTTP/2, is refused and the job is
//! unaffected. Request rates: a flood without the job token from the workers' own address
//! never disturbs them, and workers the coordinator turns away for rate slow down and
//! finish. (Job tokens: `coordinator/tests/binary.rs`.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::processes::{
    bin, coordinator_command, coordinator_url, tiny_config, wait_exit, work_dir, Log,
};
use lgaf_proto::v1::{self, coordinator_client::CoordinatorClient};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A test CA: its certificate in `<name>-ca.pem`, and the issuer that signs with it.
fn ca(dir: &Path, name: &str) -> (PathBuf, Issuer<'static, KeyPair>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let path = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&path, ca_cert.pem()).unwrap();
    (path, Issuer::new(ca_params, ca_key))
}

/// A certificate for 127.0.0.1 signed by `issuer`, valid until rcgen's far future, or
/// only through 2020 when `expired`: (`<name>-cert.pem`, `<name>-key.pem`).
fn signed(
    dir: &Path,
    name: &str,
    issuer: &Issuer<'static, KeyPair>,
    expired: bool,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, issuer).unwrap();
    let paths = (
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&paths.0, cert.pem()).unwrap();
    std::fs::write(&paths.1, key.serialize_pem()).unwrap();
    paths
}

/// A CA, and a certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem).
fn pki(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, issuer) = ca(dir, name);
    let (cert, key) = signed(dir, name, &issuer, false);
    (ca, cert, key)
}

#[test]
fn a_run_trains_over_tls_and_workers_with_the_wrong_ca_or_no_tls_are_refused() {
    let dir = work_dir("security", "tls", &tiny_config(8, 1, 2));
    let (ca, cert, key) = pki(&dir, "good");
    let (other_ca, _, _) = pki(&dir, "other");
    let mut coordinator = coordinator_command(&dir)
        .args(["--workers", "2", "--run-id", "tls", "--grace-secs", "3"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--tls-ca")
        .arg(&ca)
        .spawn()
        .unwrap();
    let url = coordinator_url(&mut coordinator);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // Before the local workers start (grace period): outsiders that cannot verify the
    // coordinator, or do not speak TLS, never get through.
    let outsider = |extra: &[&str], ca: Option<&Path>| {
        let mut cmd = Command::new(bin("lgaf-worker"));
        cmd.args(extra)
            .env_remove("LGAF_TLS_CA")
            .env("NO_COLOR", "1");
        if let Some(ca) = ca {
            cmd.env("LGAF_TLS_CA", ca);
        }
        cmd.output().unwrap()
    };
    let plain = url.replacen("https://", "http://", 1);
    for (args, ca, expected) in [
        (
            vec!["--coordinator", url.as_str()],
            Some(other_ca.as_path()),
            "certificate",
        ),
        (
            vec!["--coordinator", url.as_str()],
            None,
            "needs the CA certificate",
        ),
        (
            vec!["--coordinator", plain.as_str()],
            Some(ca.as_path()),
            "not https://",
        ),
    ] {
        let out = outsider(&args, ca);
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} got through:\n{text}");
        assert!(text.contains(expected), "{args:?}: {text}");
    }

    finished_with_two_local_workers(&mut coordinator);
}

/// Mutual TLS: the coordinator asks every client for a certificate signed by the job's
/// client CA. Its spawned workers present one and train the run; a worker presenting none,
/// one from another CA, or an expired one from the right CA is refused at the handshake,
/// and one with a good certificate still needs the job token.
#[test]
fn under_mutual_tls_only_workers_with_a_current_certificate_from_the_job_ca_get_through() {
    let dir = work_dir("security", "mtls", &tiny_config(8, 1, 2));
    let (server_ca, cert, key) = pki(&dir, "server");
    let (client_ca, issuer) = ca(&dir, "clients");
    let (_, other_issuer) = ca(&dir, "other");
    let (worker_cert, worker_key) = signed(&dir, "worker", &issuer, false);
    let (stray_cert, stray_key) = signed(&dir, "stray", &other_issuer, false);
    let (expired_cert, expired_key) = signed(&dir, "expired", &issuer, true);
    let token = dir.join("token");
    std::fs::write(&token, "mutual-tls-test-token").unwrap();
    let mut coordinator = coordinator_command(&dir)
        .args(["--workers", "2", "--run-id", "mtls", "--grace-secs", "4"])
        .arg("--token-file")
        .arg(&token)
        .args(
            [
                ("--tls-cert", &cert),
                ("--tls-key", &key),
                ("--tls-ca", &server_ca),
                ("--tls-client-ca", &client_ca),
                ("--tls-worker-cert", &worker_cert),
                ("--tls-worker-key", &worker_key),
            ]
            .iter()
            .flat_map(|(flag, path)| [flag.as_ref(), path.as_os_str()]),
        )
        .spawn()
        .unwrap();
    let url = coordinator_url(&mut coordinator);

    // Before the local workers start (grace period): `lgaf status` as an outsider, which
    // makes one call and says why it failed.
    let mut reasons = Vec::new();
    let outsider = |identity: Option<(&Path, &Path)>, token: Option<&Path>| {
        let mut cmd = Command::new(bin("lgaf"));
        cmd.args(["status", "--coordinator", url.as_str(), "--tls-ca"])
            .arg(&server_ca)
            .env_remove("LGAF_TLS_CLIENT_CERT")
            .env_remove("LGAF_TLS_CLIENT_KEY")
            .env_remove("LGAF_JOB_TOKEN")
            .env("NO_COLOR", "1");
        if let Some((cert, key)) = identity {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        if let Some(token) = token {
            cmd.arg("--token-file").arg(token);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.success(), text)
    };
    // The refusal comes after the client's side of a TLS 1.3 handshake, so the client sees
    // a closed connection and says what the coordinator checks; the coordinator's log names
    // the reason.
    for (what, identity, reason) in [
        ("no certificate", None, "no certificates"),
        (
            "a certificate from another CA",
            Some((stray_cert.as_path(), stray_key.as_path())),
            "BadSignature",
        ),
        (
            "an expired certificate",
            Some((expired_cert.as_path(), expired_key.as_path())),
            "certificate expired",
        ),
    ] {
        let (ok, text) = outsider(identity, Some(&token));
        assert!(!ok, "{what} got through:\n{text}");
        assert!(
            text.contains("--tls-client-ca") && text.contains("--tls-cert"),
            "{what}: {text}"
        );
        reasons.push((what, reason));
    }
    // The right certificate gets through TLS, and then the token decides.
    let good = Some((worker_cert.as_path(), worker_key.as_path()));
    let (ok, text) = outsider(good, None);
    assert!(!ok && text.contains("token"), "no token: {text}");
    let (ok, text) = outsider(good, Some(&token));
    assert!(ok, "a worker's certificate and the token: {text}");

    let log = finished_with_two_local_workers(&mut coordinator);
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tls accept error"))
        .collect();
    for (what, reason) in reasons {
        assert!(
            refusals.iter().any(|l| l.contains(reason)),
            "{what}: no refusal naming {reason} in {refusals:#?}"
        );
    }
}

/// Waits for `coordinator` to finish its job on the two local workers it started; returns
/// its log (its workers' lines included).
fn finished_with_two_local_workers(coordinator: &mut Child) -> String {
    let status = wait_exit(coordinator, Duration::from_secs(300));
    let mut log = String::new();
    std::io::Read::read_to_string(&mut coordinator.stderr.take().unwrap(), &mut log).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("job Finished"), "{log}");
    assert!(log.contains("starting 2 local worker(s)"), "{log}");
    log
}

/// A coordinator spawning `workers` local workers for the config in `dir`, with `extra`
/// flags; its stderr (and the workers', which inherit it) collected in the returned log.
fn spawning_coordinator(dir: &Path, workers: u32, extra: &[&str]) -> (Child, String, Log) {
    let mut coordinator = coordinator_command(dir)
        .args(["--workers", &workers.to_string(), "--spawn-local"])
        .args(extra)
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    let url = coordinator_url(&mut coordinator);
    let log = Log::default();
    log.collect(coordinator.stderr.take().unwrap());
    (coordinator, url, log)
}

/// What the flood's requests got back.
#[derive(Debug, Default)]
struct FloodTally {
    sent: u64,
    unauthenticated: u64,
    over_rate: u64,
    /// Answered: it got through.
    answered: u64,
    /// Transport errors (the coordinator exiting at the end).
    other: u64,
}

/// Sends heartbeats without the job token to `url` from two connections, each about as
/// fast as one a millisecond, until `stop` (or 200 000 requests, or two minutes).
fn flood(url: String, stop: Arc<AtomicBool>) -> FloodTally {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let started = Instant::now();
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let (url, stop) = (url.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut tally = FloodTally::default();
                    let mut client = CoordinatorClient::connect(url).await.unwrap();
                    while !stop.load(Ordering::SeqCst)
                        && tally.sent < 100_000
                        && started.elapsed() < Duration::from_secs(120)
                    {
                        let beat = v1::HeartbeatRequest {
                            api_version: 1,
                            worker_id: "w1-flood".into(),
                            generation: 1,
                            step: 1,
                        };
                        tally.sent += 1;
                        match client.heartbeat(beat).await {
                            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                                tally.unauthenticated += 1
                            }
                            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                                tally.over_rate += 1
                            }
                            Ok(_) => tally.answered += 1,
                            Err(_) => tally.other += 1,
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    tally
                })
            })
            .collect();
        let mut total = FloodTally::default();
        for task in tasks {
            let t = task.await.unwrap();
            total.sent += t.sent;
            total.unauthenticated += t.unauthenticated;
            total.over_rate += t.over_rate;
            total.answered += t.answered;
            total.other += t.other;
        }
        total
    })
}

/// Anyone who can reach the coordinator (any local process, anything behind the same NAT)
/// floods it without the token from the workers' own address during a run. The workers
/// are members: none of their calls is refused for rate, the run finishes without losing
/// a worker, and the flood is refused throughout. Before the token was checked first, the
/// flood emptied the one bucket of 127.0.0.1 and the job failed within seconds.
#[test]
fn a_flood_without_the_token_from_the_workers_address_does_not_disturb_the_run() {
    let dir = work_dir("security", "flood", &tiny_config(8, 4, 2));
    // A low rate, so that the flood is far past it from the first second.
    let (mut coordinator, url, log) =
        spawning_coordinator(&dir, 2, &["--max-requests-per-sec", "50"]);
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = {
        let stop = stop.clone();
        std::thread::spawn(move || flood(url, stop))
    };
    let status = wait_exit(&mut coordinator, Duration::from_secs(300));
    stop.store(true, Ordering::SeqCst);
    let tally = flooding.join().unwrap();
    if status.success() {
        // The last lines may still be on their way through the pipe.
        log.wait_for("job Finished", Duration::from_secs(30));
    }
    let log = log.text();
    assert!(
        status.success(),
        "the job failed under the flood ({tally:?}):\n{log}"
    );
    assert!(log.contains("job Finished"), "{log}");
    assert!(!log.contains("restart 1 of"), "a worker was lost:\n{log}");
    assert!(
        !log.contains("turned the call away for rate"),
        "a worker was refused for rate:\n{log}"
    );
    assert_eq!(
        tally.answered, 0,
        "a request without the token got through: {tally:?}"
    );
    assert!(
        tally.over_rate > 0 && tally.unauthenticated > 0,
        "the flood never went past its rate: {tally:?}"
    );
}

/// A coordinator whose rate the job's own workers exceed (a progress report every step, on
/// top of heartbeats and plans, from one address) turns calls away: the workers wait and
/// send them again, and the run finishes instead of failing.
#[test]
fn workers_turned_away_for_rate_send_again_and_finish() {
    let dir = work_dir("security", "rate", &tiny_config(8, 2, 4));
    let (mut coordinator, _url, log) =
        spawning_coordinator(&dir, 2, &["--max-requests-per-sec", "3"]);
    let status = wait_exit(&mut coordinator, Duration::from_secs(300));
    if status.success() {
        log.wait_for("job Finished", Duration::from_secs(30));
    }
    let log = log.text();
    assert!(status.success(), "{log}");
    assert!(log.contains("job Finished"), "{log}");
    assert!(
        log.contains("the coordinator turned the call away for rate; sending it again"),
        "no call was turned away: the test did not exercise the retry\n{log}"
    );
    assert!(!log.contains("restart 1 of"), "a worker was lost:\n{log}");
}
