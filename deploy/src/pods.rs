//! A rendered pod run as a local process: what a kubelet would do with one of the chart's
//! containers, on a machine with no cluster. The container's command, arguments and
//! environment are taken as rendered; the ConfigMaps and Secrets it mounts are written to a
//! folder each (the mount path in an argument becomes that folder); and what Kubernetes
//! injects is substituted: the pod's IP (for `status.podIP`, and for `0.0.0.0`, which in a
//! pod means its own interface), its name, an Indexed Job's completion index, and each
//! Service's name, which becomes the IP of the pod behind it.
//!
//! Anything the chart asks of Kubernetes that this does not know (another `fieldRef`, a
//! volume kind) fails the test by name, so the chart and this stand-in cannot drift apart
//! silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{base64_decode, name, Render};

/// Where one pod runs: what Kubernetes would give it.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Its name (`metadata.name`, `$HOSTNAME`).
    pub name: String,
    /// Its IP, e.g. 127.0.0.2: every pod on a loopback address of its own.
    pub ip: String,
    /// An Indexed Job's pod: its completion index (`$JOB_COMPLETION_INDEX`).
    pub completion_index: Option<u32>,
    /// Where its mounted ConfigMaps and Secrets are written.
    pub volumes_dir: PathBuf,
}

/// The command that runs `container` of `template` (a pod template of `render`) as `pod`
/// would, Services named in `services` (name, IP) reached at their IPs; the program is
/// looked up in `bin_dir`.
pub fn container_command(
    render: &Render,
    template: &Value,
    container: &str,
    pod: &Pod,
    services: &[(String, String)],
    bin_dir: &Path,
) -> Command {
    let spec = &template["spec"];
    let found = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == container)
        .unwrap_or_else(|| panic!("no container {container} in {spec}"));
    let mounts = mount_volumes(render, spec, found, pod);
    let substitute = |text: &str| -> String {
        let mut text = text.to_string();
        for (mount_path, dir) in &mounts {
            if let Some(rest) = text.strip_prefix(mount_path.as_str()) {
                text = format!("{}{rest}", dir.display());
            }
            text = text.replace(&format!("={mount_path}"), &format!("={}", dir.display()));
        }
        for (service, ip) in services {
            text = text.replace(&format!("//{service}:"), &format!("//{ip}:"));
        }
        text.replace("0.0.0.0", &pod.ip)
    };

    let program = found["command"][0]
        .as_str()
        .unwrap_or_else(|| panic!("container {container} has no command"));
    let program = bin_dir.join(program);
    assert!(
        program.is_file(),
        "{} is not built: run `cargo build --release --bins` (make test does)",
        program.display()
    );
    let mut command = Command::new(program);
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().expect("a string").to_string())
            .collect()
    };
    command.args(
        strings(&found["command"])
            .iter()
            .skip(1)
            .map(|a| substitute(a)),
    );
    command.args(strings(&found["args"]).iter().map(|a| substitute(a)));

    // A pod's environment holds what its spec says and what Kubernetes adds, nothing of
    // the test's own settings.
    for (key, _) in std::env::vars() {
        if ["LGAF_", "AWS_", "OTEL_", "NCCL_"]
            .iter()
            .any(|prefix| key.starts_with(prefix))
            || key == "JOB_COMPLETION_INDEX"
        {
            command.env_remove(key);
        }
    }
    command.env("HOSTNAME", &pod.name);
    command.env("KUBERNETES_SERVICE_HOST", "10.96.0.1");
    if let Some(index) = pod.completion_index {
        command.env("JOB_COMPLETION_INDEX", index.to_string());
    }
    for source in found["envFrom"].as_array().into_iter().flatten() {
        let (kind, reference) = if source["secretRef"].is_object() {
            ("Secret", &source["secretRef"])
        } else {
            ("ConfigMap", &source["configMapRef"])
        };
        let object = object_named(render, kind, reference["name"].as_str().unwrap_or(""));
        for (key, value) in data_of(object) {
            command.env(key, String::from_utf8(value).expect("UTF-8 env value"));
        }
    }
    for variable in found["env"].as_array().into_iter().flatten() {
        let key = variable["name"].as_str().expect("env name");
        let value = if let Some(value) = variable["value"].as_str() {
            substitute(value)
        } else {
            env_from(render, &variable["valueFrom"], pod)
        };
        command.env(key, value);
    }
    command
}

/// The value a `valueFrom` gives in `pod`.
fn env_from(render: &Render, from: &Value, pod: &Pod) -> String {
    if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
        return match path {
            "status.podIP" => pod.ip.clone(),
            "metadata.name" => pod.name.clone(),
            "metadata.namespace" => "default".to_string(),
            other => panic!("the chart asks for fieldRef {other}, which this stand-in lacks"),
        };
    }
    for (kind, reference) in [
        ("Secret", &from["secretKeyRef"]),
        ("ConfigMap", &from["configMapKeyRef"]),
    ] {
        if reference.is_object() {
            let object = object_named(render, kind, reference["name"].as_str().unwrap_or(""));
            let key = reference["key"].as_str().expect("key");
            let value = data_of(object)
                .remove(key)
                .unwrap_or_else(|| panic!("{kind} {} has no key {key}", name(object)));
            return String::from_utf8(value).expect("UTF-8 value");
        }
    }
    panic!("the chart uses valueFrom {from}, which this stand-in lacks")
}

/// Writes the ConfigMaps and Secrets `container` mounts into `pod.volumes_dir`; returns
/// each mount path with the folder that stands for it. Memory- and disk-backed scratch
/// volumes (`emptyDir`) need nothing: the process has the machine's.
fn mount_volumes(
    render: &Render,
    spec: &Value,
    container: &Value,
    pod: &Pod,
) -> Vec<(String, PathBuf)> {
    let volumes: BTreeMap<&str, &Value> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().expect("volume name"), v))
        .collect();
    let mut mounts = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume_name = mount["name"].as_str().expect("mount name");
        let volume = volumes
            .get(volume_name)
            .unwrap_or_else(|| panic!("volume {volume_name} is mounted but not declared"));
        let object = if volume["configMap"].is_object() {
            object_named(
                render,
                "ConfigMap",
                volume["configMap"]["name"].as_str().unwrap_or(""),
            )
        } else if volume["secret"].is_object() {
            object_named(
                render,
                "Secret",
                volume["secret"]["secretName"].as_str().unwrap_or(""),
            )
        } else if volume["emptyDir"].is_object() {
            continue;
        } else {
            panic!("volume {volume_name} is of a kind this stand-in lacks: {volume}");
        };
        let dir = pod.volumes_dir.join(&pod.name).join(volume_name);
        std::fs::create_dir_all(&dir).unwrap();
        for (key, value) in data_of(object) {
            std::fs::write(dir.join(key), value).unwrap();
        }
        let path = mount["mountPath"].as_str().expect("mountPath").to_string();
        mounts.push((path, dir));
    }
    // Longest first, so that /a/b is substituted before /a.
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    mounts
}

/// The rendered ConfigMap or Secret `name` (a test renders every one the pods use).
fn object_named<'a>(render: &'a Render, kind: &str, wanted: &str) -> &'a Value {
    render
        .all(kind)
        .into_iter()
        .find(|o| name(o) == wanted)
        .unwrap_or_else(|| panic!("the pods use {kind} {wanted}, which the chart did not render"))
}

/// A ConfigMap's or Secret's keys and contents (a Secret's `data` decoded).
fn data_of(object: &Value) -> BTreeMap<String, Vec<u8>> {
    let mut data = BTreeMap::new();
    let secret = object["kind"] == "Secret";
    for (key, value) in object["data"].as_object().into_iter().flatten() {
        let text = value.as_str().expect("a string");
        let bytes = if secret {
            base64_decode(text).unwrap_or_else(|e| panic!("{}/{key}: {e}", name(object)))
        } else {
            text.as_bytes().to_vec()
        };
        data.insert(key.clone(), bytes);
    }
    for (key, value) in object["stringData"].as_object().into_iter().flatten() {
        data.insert(
            key.clone(),
            value.as_str().expect("a string").as_bytes().to_vec(),
        );
    }
    data
}
