//! The chart's test cases (`helm/lgaf-train/ci/<case>-values.yaml`) rendered by the real
//! helm as the release `webface` in the namespace `training`, and readers of what a render
//! holds: the coordinator's Deployment and the workers' Job, their one container's args,
//! environment, volumes, mounts and ports, labels, and the training config of the ConfigMap.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lgaf_deploy::{ci_values, render, Render};
use serde_json::Value;

/// The release every case is rendered as.
pub const RELEASE: &str = "webface";
/// The namespace every case is rendered into.
pub const NAMESPACE: &str = "training";
/// The release's objects are named `{FULLNAME}-...`.
pub const FULLNAME: &str = "webface-lgaf-train";
/// The coordinator's Deployment and Service.
pub const COORDINATOR: &str = "webface-lgaf-train-coordinator";

/// The test cases: `helm/lgaf-train/ci/<case>-values.yaml`.
pub const CASES: &[&str] = &[
    "default",
    "gpu-8x8",
    "elastic",
    "tls-cert-manager",
    "tls-generated",
    "s3-irsa",
    "s3-keys",
    "metrics",
    "data",
];

/// The path of a test case's values file.
pub fn values_file(case: &str) -> String {
    ci_values(&format!("{case}-values.yaml"))
        .display()
        .to_string()
}

/// `helm template` of a test case; fails the test if helm refuses it.
pub fn render_case(case: &str) -> Render {
    let file = values_file(case);
    render(RELEASE, &["--namespace", NAMESPACE, "-f", &file])
        .unwrap_or_else(|e| panic!("helm template with {file} failed:\n{e}"))
}

/// helm's error for values `args` (over a valid store), failing if it renders them.
pub fn refused(args: &[&str]) -> String {
    let mut all = vec!["--namespace", NAMESPACE, "--set", "store=s3://bucket/runs"];
    all.extend_from_slice(args);
    match render(RELEASE, &all) {
        Ok(r) => panic!(
            "helm rendered {args:?} instead of refusing them:\n{}",
            r.yaml
        ),
        Err(e) => e,
    }
}

/// The render of values `args` (over a valid store), failing if helm refuses them.
pub fn accepted(args: &[&str]) -> Render {
    let mut all = vec!["--namespace", NAMESPACE, "--set", "store=s3://bucket/runs"];
    all.extend_from_slice(args);
    render(RELEASE, &all).unwrap_or_else(|e| panic!("helm refused {args:?}:\n{e}"))
}

/// A folder for the files a test writes (renders, certificates, values files).
pub fn scratch_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chart");
    std::fs::create_dir_all(&dir).expect("creating the scratch folder");
    dir
}

// --- Reading the rendered objects ---------------------------------------------------------

/// The coordinator's Deployment.
pub fn coordinator(r: &Render) -> &Value {
    r.get("Deployment", "-coordinator")
}

/// The workers' Indexed Job.
pub fn worker_job(r: &Render) -> &Value {
    r.get("Job", "-worker")
}

/// The pod spec of a workload's template.
pub fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

/// The one container of a workload's pods.
pub fn container(workload: &Value) -> &Value {
    let containers = pod_spec(workload)["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "{}", pretty(workload));
    &containers[0]
}

/// The args of a workload's container.
pub fn args(workload: &Value) -> Vec<&str> {
    container(workload)["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string args"))
        .collect()
}

/// The value of `--flag=value` among a workload's args (the only one).
pub fn flag<'a>(workload: &'a Value, flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    let found: Vec<&str> = args(workload)
        .into_iter()
        .filter_map(|a| a.strip_prefix(&prefix))
        .collect();
    assert!(found.len() <= 1, "{flag} given {} times", found.len());
    found.first().copied()
}

/// The container's `env` entries, by name.
pub fn env(workload: &Value) -> BTreeMap<String, Value> {
    container(workload)["env"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .map(|v| (v["name"].as_str().expect("env name").to_string(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The literal `value` of the container's variable `var` (None when it is not set).
pub fn env_value(workload: &Value, var: &str) -> Option<String> {
    env(workload).get(var).map(|v| {
        v["value"]
            .as_str()
            .unwrap_or_else(|| panic!("{var}: {v}"))
            .to_string()
    })
}

/// The pod's volume named `volume`.
pub fn volume<'a>(workload: &'a Value, volume: &str) -> Option<&'a Value> {
    pod_spec(workload)["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == volume)
}

/// The container's mount of the volume `volume`.
pub fn mount<'a>(workload: &'a Value, volume: &str) -> Option<&'a Value> {
    container(workload)["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == volume)
}

/// The container's ports: (name, containerPort).
pub fn port_names(workload: &Value) -> Vec<(String, u64)> {
    container(workload)["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("port name").to_string(),
                p["containerPort"].as_u64().expect("containerPort"),
            )
        })
        .collect()
}

/// The Secrets the container takes its environment from (`envFrom`).
pub fn env_from_secrets(workload: &Value) -> Vec<String> {
    container(workload)["envFrom"]
        .as_array()
        .map(|sources| {
            sources
                .iter()
                .map(|s| {
                    s["secretRef"]["name"]
                        .as_str()
                        .expect("secretRef")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A JSON value, indented: for a failure message.
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// The keys of a map (labels, a selector's matchLabels).
pub fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("string label").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every label of `small` is in `large` (a selector picks the labelled object).
pub fn is_subset(small: &BTreeMap<String, String>, large: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| large.get(k) == Some(v))
}

/// The training configuration the ConfigMap carries.
pub fn train_toml(r: &Render) -> toml::Table {
    let text = r.get("ConfigMap", "-config")["data"]["train.toml"]
        .as_str()
        .expect("train.toml")
        .to_string();
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("the rendered train.toml is not TOML: {e}\n{text}"))
}

/// A TOML number as f64 (helm renders the integers of values files as floats).
pub fn toml_number(value: &toml::Value) -> f64 {
    match value {
        toml::Value::Integer(i) => *i as f64,
        toml::Value::Float(f) => *f,
        other => panic!("{other} is not a number"),
    }
}
