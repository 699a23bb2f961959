//! TLS on the control plane, end to end with real processes: a coordinator serving a
//! certificate signed by a test CA trains a run with its spawned workers over https://; a
//! worker that trusts another CA, or speaks plain HTTP/2, is refused and the job is
//! unaffected. (Job tokens: `coordinator/tests/binary.rs`.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::processes::{bin, coordinator_url, tiny_config, wait_exit, work_dir};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA, and a certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem).
fn pki(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
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
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[test]
fn a_run_trains_over_tls_and_workers_with_the_wrong_ca_or_no_tls_are_refused() {
    let dir = work_dir("security", "tls", &tiny_config(8, 1, 2));
    let (ca, cert, key) = pki(&dir, "good");
    let (other_ca, _, _) = pki(&dir, "other");
    let store = format!("file://{}", dir.join("store").display());
    let mut coordinator = Command::new(bin("lgaf-coordinator"))
        .args(["--workers", "2", "--run-id", "tls", "--grace-secs", "3"])
        .args(["--config", &dir.join("train.toml").display().to_string()])
        .args(["--store", &store])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--tls-ca")
        .arg(&ca)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
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

    let status = wait_exit(&mut coordinator, Duration::from_secs(300));
    let mut log = String::new();
    std::io::Read::read_to_string(&mut coordinator.stderr.take().unwrap(), &mut log).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("job Finished"), "{log}");
    assert!(log.contains("starting 2 local worker(s)"), "{log}");
}
