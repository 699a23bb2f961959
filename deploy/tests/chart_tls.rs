//! The Helm chart's TLS cases: both pods mount the certificates' Secret and point their
//! flags at its files, with a TCP readiness probe (Kubernetes' gRPC probe speaks no TLS);
//! `tls-cert-manager` renders a cert-manager Certificate for the coordinator's Service
//! (its fields checked here, as kubernetes-validate has no schema for it), and
//! `tls-generated` a CA and a certificate made by the chart, checked with openssl where it
//! is installed (names, signature, key, validity).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use common::chart::{
    container, coordinator, flag, mount, render_case, scratch_dir, volume, worker_job, COORDINATOR,
    NAMESPACE,
};
use lgaf_deploy::{base64_decode, name, transcript, Render};
use serde_json::json;

/// The TLS files both pods are given, and the Secret they come from.
fn tls_mounts(r: &Render) -> String {
    let (deployment, job) = (coordinator(r), worker_job(r));
    assert_eq!(
        flag(deployment, "--tls-cert"),
        Some("/var/run/lgaf/tls/tls.crt")
    );
    assert_eq!(
        flag(deployment, "--tls-key"),
        Some("/var/run/lgaf/tls/tls.key")
    );
    assert_eq!(
        flag(deployment, "--tls-ca"),
        Some("/var/run/lgaf/tls/ca.crt")
    );
    assert_eq!(flag(job, "--tls-ca"), Some("/var/run/lgaf/tls/ca.crt"));
    assert_eq!(flag(job, "--tls-cert"), None);
    assert!(flag(job, "--coordinator").is_some_and(|u| u.starts_with("https://")));
    // Kubernetes' gRPC probe speaks no TLS.
    assert!(container(deployment)["readinessProbe"]["grpc"].is_null());
    assert_eq!(
        container(deployment)["readinessProbe"]["tcpSocket"]["port"],
        "grpc"
    );
    let secret = volume(deployment, "tls").expect("tls volume")["secret"]["secretName"]
        .as_str()
        .expect("secretName")
        .to_string();
    for workload in [deployment, job] {
        assert_eq!(
            volume(workload, "tls").expect("tls volume")["secret"]["secretName"],
            secret
        );
        let m = mount(workload, "tls").expect("tls mount");
        assert_eq!(m["mountPath"], "/var/run/lgaf/tls");
        assert_eq!(m["readOnly"], true);
    }
    secret
}

fn service_dns_names() -> Vec<String> {
    vec![
        COORDINATOR.to_string(),
        format!("{COORDINATOR}.{NAMESPACE}"),
        format!("{COORDINATOR}.{NAMESPACE}.svc"),
        format!("{COORDINATOR}.{NAMESPACE}.svc.cluster.local"),
    ]
}

#[test]
fn tls_cert_manager_case_mounts_the_certificates_secret() {
    let r = render_case("tls-cert-manager");
    let secret = tls_mounts(&r);
    assert_eq!(r.all("Certificate").len(), 1);
    let certificate = r.get("Certificate", "-tls");
    assert_eq!(certificate["apiVersion"], "cert-manager.io/v1");
    let spec = &certificate["spec"];
    // Only fields of cert-manager's Certificate (cert-manager.io/v1), as kubernetes-validate
    // cannot check it.
    let known: BTreeSet<&str> = [
        "secretName",
        "duration",
        "renewBefore",
        "commonName",
        "dnsNames",
        "ipAddresses",
        "uris",
        "emailAddresses",
        "usages",
        "issuerRef",
        "privateKey",
        "isCA",
        "subject",
        "secretTemplate",
        "keystores",
        "literalSubject",
        "nameConstraints",
        "otherNames",
        "revisionHistoryLimit",
        "encodeUsagesInRequest",
        "additionalOutputFormats",
        "signatureAlgorithm",
    ]
    .into();
    for key in spec.as_object().expect("spec").keys() {
        assert!(known.contains(key.as_str()), "Certificate spec.{key}");
    }
    assert_eq!(
        spec["secretName"],
        secret.as_str(),
        "the Secret the pods mount"
    );
    assert_eq!(spec["duration"], "720h");
    assert_eq!(
        spec["issuerRef"],
        json!({"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    let dns: Vec<&str> = spec["dnsNames"]
        .as_array()
        .expect("dnsNames")
        .iter()
        .map(|d| d.as_str().expect("dns name"))
        .collect();
    for name in service_dns_names() {
        assert!(dns.contains(&name.as_str()), "{name} in {dns:?}");
    }
    let usages: BTreeSet<&str> = spec["usages"]
        .as_array()
        .expect("usages")
        .iter()
        .map(|u| u.as_str().expect("usage"))
        .collect();
    assert!(usages.contains("server auth"), "{usages:?}");
    // cert-manager's KeyUsage enum.
    let key_usages = [
        "signing",
        "digital signature",
        "content commitment",
        "key encipherment",
        "key agreement",
        "data encipherment",
        "cert sign",
        "crl sign",
        "encipher only",
        "decipher only",
        "any",
        "server auth",
        "client auth",
        "code signing",
        "email protection",
        "s/mime",
        "ipsec end system",
        "ipsec tunnel",
        "ipsec user",
        "timestamping",
        "ocsp signing",
        "microsoft sgc",
        "netscape sgc",
    ];
    assert!(usages.iter().all(|u| key_usages.contains(u)), "{usages:?}");
    // cert-manager writes the Secret: the chart makes none but the token.
    assert_eq!(r.all("Secret").len(), 1);
}

/// `openssl ARGS` with `input` on stdin: its stdout, or the transcript of its failure.
fn openssl(args: &[&str], input: &[u8]) -> Result<String, String> {
    let mut command = Command::new("openssl");
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("openssl: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("writing to openssl");
    let output = child.wait_with_output().expect("openssl");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(transcript(&command, &output))
    }
}

fn have_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn tls_generated_case_makes_a_ca_and_a_certificate_for_the_service() {
    let r = render_case("tls-generated");
    let secret_name = tls_mounts(&r);
    assert!(r.all("Certificate").is_empty());
    let secret = r.get("Secret", "-tls");
    assert_eq!(name(secret), secret_name, "the Secret the pods mount");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let data = secret["data"].as_object().expect("data");
    assert_eq!(
        data.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        ["ca.crt", "tls.crt", "tls.key"].into()
    );
    let file = |key: &str| {
        let bytes = base64_decode(data[key].as_str().expect("base64"))
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        String::from_utf8(bytes).unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    let (cert, key, ca) = (file("tls.crt"), file("tls.key"), file("ca.crt"));
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    assert!(key.contains("PRIVATE KEY-----"), "a PEM key");
    if !have_openssl() {
        eprintln!("no openssl: the certificates' names and signature are not checked");
        return;
    }
    let text =
        openssl(&["x509", "-noout", "-text"], cert.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    for name in service_dns_names().iter().chain([&"localhost".to_string()]) {
        assert!(
            text.contains(&format!("DNS:{name}")),
            "DNS:{name} in\n{text}"
        );
    }
    assert!(text.contains("IP Address:127.0.0.1"), "{text}");
    assert!(
        text.contains(&format!("CN={COORDINATOR}"))
            || text.contains(&format!("CN = {COORDINATOR}")),
        "{text}"
    );
    let ca_text =
        openssl(&["x509", "-noout", "-text"], ca.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert!(ca_text.contains("CA:TRUE"), "{ca_text}");
    // Signed by the CA, and the key is the certificate's.
    let dir = scratch_dir();
    let ca_file = dir.join("tls-generated-ca.crt");
    std::fs::write(&ca_file, &ca).expect("writing ca.crt");
    let ca_path = ca_file.display().to_string();
    openssl(&["verify", "-CAfile", &ca_path], cert.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let public =
        openssl(&["x509", "-noout", "-pubkey"], cert.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let from_key = openssl(&["pkey", "-pubout"], key.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(public, from_key, "tls.key is not tls.crt's key");
    // generatedValidityDays: 90.
    let day = 86_400;
    openssl(
        &["x509", "-noout", "-checkend", &(89 * day).to_string()],
        cert.as_bytes(),
    )
    .unwrap_or_else(|e| panic!("expires within 89 days: {e}"));
    assert!(
        openssl(
            &["x509", "-noout", "-checkend", &(91 * day).to_string()],
            cert.as_bytes()
        )
        .is_err(),
        "valid beyond 91 days"
    );
}
