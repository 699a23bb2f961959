//! The Helm chart, `helm/lgaf-train`, linted and rendered by the real helm: the `ci/` folder
//! holds exactly the test cases, `helm lint --strict` passes each, each render has what every
//! render must (the worker Job's failure handling by the exit-code contract, the objects'
//! names, the job token, the config mounted where `--config` points, the coordinator's
//! Service), and `kubernetes-validate --strict` passes each render against the oldest
//! Kubernetes the chart supports and newer ones.
//!
//! kubernetes-validate has no schemas for custom resources (it warns and passes them), so the
//! cert-manager Certificate and the Prometheus Operator's ServiceMonitor and PodMonitor are
//! left out of it by kind; `chart_cases.rs` and `chart_tls.rs` check their fields instead.
//! What each case renders is in `chart_cases.rs` and `chart_tls.rs`, what the values schema
//! refuses and covers in `chart_schema.rs`.

mod common;

use std::collections::BTreeSet;

use common::chart::{
    args, container, coordinator, flag, is_subset, labels, mount, pod_spec, pretty, render_case,
    scratch_dir, train_toml, values_file, volume, worker_job, CASES, COORDINATOR, FULLNAME,
    NAMESPACE,
};
use lgaf_deploy::{
    base64_decode, chart_dir, helm, kubernetes_validate, name, parse_documents, split_documents,
    transcript, Render,
};
use lgaf_proto::exit::ExitClass;
use serde_json::{json, Value};

/// Kubernetes versions every render is validated against: the oldest the chart supports
/// (Chart.yaml's kubeVersion; podFailurePolicy and backoffLimitPerIndex need it), the last
/// whose API requires `onPodConditions[].status`, and the newest kubernetes-validate ships.
const KUBERNETES_VERSIONS: &[&str] = &["1.29.0", "1.34.0", "1.37.0"];

/// Custom resources the chart renders, whose schemas kubernetes-validate lacks.
const CUSTOM_KINDS: &[(&str, &str)] = &[
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
];

/// Checks everything every render has: the worker Job's failure handling, the objects'
/// names, the token, the ConfigMap mounted where --config points, the probes.
fn check_every_render(r: &Render) {
    let job = worker_job(r);
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed", "{}", pretty(job));
    assert_eq!(spec["completions"], spec["parallelism"]);
    assert_eq!(pod_spec(job)["restartPolicy"], "Never");
    let rules = spec["podFailurePolicy"]["rules"]
        .as_array()
        .expect("podFailurePolicy rules");
    let fail_job: Vec<&Value> = rules.iter().filter(|r| r["action"] == "FailJob").collect();
    assert_eq!(fail_job.len(), 1, "{}", pretty(&spec["podFailurePolicy"]));
    let on_exit = &fail_job[0]["onExitCodes"];
    assert_eq!(on_exit["operator"], "In");
    assert_eq!(on_exit["containerName"], "worker");
    // The codes of the exit-code contract that no restart mends.
    let ends_job: Vec<u8> = (0..=255)
        .filter_map(ExitClass::from_code)
        .filter(|class| class.ends_job())
        .map(ExitClass::code)
        .collect();
    assert_eq!(on_exit["values"], json!(ends_job), "the exit-code contract");
    assert_eq!(ends_job, [2, 78, 79]);
    assert_eq!(container(job)["name"], "worker");
    // Evictions and preemptions (the DisruptionTarget condition) do not count against a
    // slot's retries. The condition's status is required by Kubernetes up to 1.34.
    let ignore: Vec<&Value> = rules.iter().filter(|r| r["action"] == "Ignore").collect();
    assert_eq!(
        ignore.first().map(|r| &r["onPodConditions"]),
        Some(&json!([{"type": "DisruptionTarget", "status": "True"}])),
        "{}",
        pretty(&spec["podFailurePolicy"])
    );

    let deployment = coordinator(r);
    assert_eq!(name(deployment), COORDINATOR);
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(container(deployment)["name"], "coordinator");
    for flag_name in ["--external-workers", "--keep-serving"] {
        assert!(
            args(deployment).contains(&flag_name),
            "{flag_name}: {:?}",
            args(deployment)
        );
    }

    // The token: the Secret both pods mount, and the file both are pointed at.
    let token = r.get("Secret", "-token");
    assert_eq!(name(token), format!("{FULLNAME}-token"));
    let token_value =
        base64_decode(token["data"]["token"].as_str().expect("token")).expect("base64 token");
    assert!(
        token_value.len() >= 32,
        "a short token: {} bytes",
        token_value.len()
    );
    for workload in [deployment, job] {
        assert_eq!(
            flag(workload, "--token-file"),
            Some("/var/run/lgaf/token/token")
        );
        assert_eq!(
            volume(workload, "token").expect("token volume")["secret"]["secretName"],
            name(token)
        );
        assert_eq!(
            mount(workload, "token").expect("token mount")["mountPath"],
            "/var/run/lgaf/token"
        );
        assert_eq!(
            pod_spec(workload)["serviceAccountName"],
            pod_spec(deployment)["serviceAccountName"]
        );
    }

    // The configuration: the ConfigMap mounted at the directory of --config.
    let config = r.get("ConfigMap", "-config");
    assert_eq!(flag(deployment, "--config"), Some("/etc/lgaf/train.toml"));
    assert_eq!(
        volume(deployment, "config").expect("config volume")["configMap"]["name"],
        name(config)
    );
    assert_eq!(
        mount(deployment, "config").expect("config mount")["mountPath"],
        "/etc/lgaf"
    );
    train_toml(r);

    // Workers reach the coordinator through its Service.
    let service = r.get("Service", "-coordinator");
    assert_eq!(name(service), COORDINATOR);
    let scheme = if flag(deployment, "--tls-cert").is_some() {
        "https"
    } else {
        "http"
    };
    let port = service["spec"]["ports"][0]["port"].as_u64().expect("port");
    assert_eq!(
        flag(job, "--coordinator"),
        Some(format!("{scheme}://{COORDINATOR}:{port}").as_str())
    );
    assert!(is_subset(
        &labels(&service["spec"]["selector"]),
        &labels(&deployment["spec"]["template"]["metadata"]["labels"])
    ));
}

#[test]
fn the_ci_folder_holds_exactly_the_cases() {
    let found: BTreeSet<String> = std::fs::read_dir(chart_dir().join("ci"))
        .expect("helm/lgaf-train/ci")
        .map(|e| {
            e.expect("ci entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let expected: BTreeSet<String> = CASES.iter().map(|c| format!("{c}-values.yaml")).collect();
    assert_eq!(found, expected);
}

#[test]
fn helm_lint_strict_passes_every_case() {
    let mut failures = Vec::new();
    for case in CASES {
        let mut command = helm();
        command
            .args(["lint", "--strict", "--namespace", NAMESPACE])
            .arg(chart_dir())
            .args(["-f", &values_file(case)]);
        let output = command.output().expect("running helm lint");
        if !output.status.success() {
            failures.push(format!("{case}: {}", transcript(&command, &output)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_case_renders_the_coordinator_and_its_workers() {
    for case in CASES {
        eprintln!("case {case}");
        check_every_render(&render_case(case));
    }
}

#[test]
fn every_case_renders_valid_kubernetes_objects() {
    let dir = scratch_dir();
    let mut failures = Vec::new();
    for case in CASES {
        let r = render_case(case);
        let mut builtin = String::new();
        let mut count = 0;
        for document in split_documents(&r.yaml) {
            let objects = parse_documents(&document).expect("a rendered document");
            assert_eq!(objects.len(), 1, "{document}");
            let object = &objects[0];
            let kind = (
                object["apiVersion"].as_str().unwrap_or(""),
                object["kind"].as_str().unwrap_or(""),
            );
            if CUSTOM_KINDS.contains(&kind) {
                continue;
            }
            builtin.push_str("---\n");
            builtin.push_str(&document);
            count += 1;
        }
        let file = dir.join(format!("{case}.yaml"));
        std::fs::write(&file, &builtin).expect("writing the render");
        let mut command = kubernetes_validate();
        command.arg("--strict");
        for version in KUBERNETES_VERSIONS {
            command.args(["-k", version]);
        }
        command.arg(&file);
        let output = command.output().expect("running kubernetes-validate");
        let stdout = String::from_utf8_lossy(&output.stdout);
        // Every object passed against every version: a kind without a schema only warns,
        // and an unsupported version is FATAL, so count the passes.
        let unexpected: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("INFO ")).collect();
        let short = |v: &str| v.rsplit_once('.').map_or(v, |(mm, _)| mm).to_string();
        let passes: Vec<usize> = KUBERNETES_VERSIONS
            .iter()
            .map(|v| {
                let version = format!("against version {}", short(v));
                stdout
                    .lines()
                    .filter(|l| l.contains(" passed for resource ") && l.ends_with(&version))
                    .count()
            })
            .collect();
        if !output.status.success() || !unexpected.is_empty() || passes.iter().any(|&p| p != count)
        {
            failures.push(format!(
                "{case}: {count} objects, passed per version {passes:?}\n{}",
                transcript(&command, &output)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
