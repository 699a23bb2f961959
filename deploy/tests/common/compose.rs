//! The compose example's services (`deploy/compose.yaml` with `deploy/compose/gpu.yaml`) as
//! `docker compose config` resolves them with the example's defaults, and what a service
//! runs: its command line, its environment, its bind mounts and the binary of its image.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use lgaf_deploy::{repo_root, tool};
use serde_json::Value;

use super::dockerfile::entrypoint_binary;
use super::output_text;

/// The compose file.
pub const COMPOSE: &str = "deploy/compose.yaml";
/// Its override that gives each worker a GPU.
pub const COMPOSE_GPU: &str = "deploy/compose/gpu.yaml";

/// `docker compose config` of these files as JSON, from the repository root, with the
/// example's defaults (no .env file, none of its variables from this environment).
pub fn compose_config(files: &[&str]) -> Value {
    let mut command = Command::new(tool(
        "LGAF_DOCKER_COMPOSE",
        "Docker Compose v2, in .tools/compose",
    ));
    command
        .current_dir(repo_root())
        .args(["--env-file", "/dev/null"]);
    for file in files {
        command.args(["-f", file]);
    }
    command.args(["config", "--format", "json"]);
    for var in [
        "LGAF_JOB_TOKEN",
        "S3_ACCESS_KEY",
        "S3_SECRET_KEY",
        "COMPOSE_FILE",
        "COMPOSE_PROFILES",
        "COMPOSE_PROJECT_NAME",
        "COMPOSE_ENV_FILES",
    ] {
        command.env_remove(var);
    }
    let out = command.output().expect("running docker compose");
    assert!(
        out.status.success(),
        "docker compose config {files:?}:\n{}",
        output_text(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "docker compose config printed no JSON: {e}\n{}",
            output_text(&out)
        )
    })
}

/// The services of a resolved compose config, by name.
pub fn services(config: &Value) -> &serde_json::Map<String, Value> {
    config["services"].as_object().expect("no services")
}

/// A service's command line (the arguments its image's ENTRYPOINT is given).
pub fn command_of(service: &Value) -> Vec<String> {
    service["command"]
        .as_array()
        .unwrap_or_else(|| panic!("no command (as a list): {service}"))
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// A service's environment.
pub fn env_of(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .map(|env| {
            env.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Bind mounts: container path -> host path.
pub fn binds(service: &Value) -> BTreeMap<String, PathBuf> {
    service["volumes"]
        .as_array()
        .map(|volumes| {
            volumes
                .iter()
                .filter(|v| v["type"] == "bind")
                .map(|v| {
                    (
                        v["target"].as_str().unwrap().to_string(),
                        PathBuf::from(v["source"].as_str().unwrap()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `host:port` of a URL or an address.
pub fn host_port(text: &str) -> (String, u16) {
    let rest = text.split_once("://").map_or(text, |(_, r)| r);
    let authority = rest.split('/').next().unwrap();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("no port in {text}"));
    (host.to_string(), port.parse().unwrap())
}

/// The binary a service runs: its build's Dockerfile's ENTRYPOINT.
pub fn image_binary(name: &str, service: &Value) -> Option<String> {
    let build = service.get("build")?;
    let context = PathBuf::from(build["context"].as_str().unwrap());
    assert_eq!(
        context.canonicalize().unwrap(),
        repo_root().canonicalize().unwrap(),
        "{name}: the build context is not the repository root"
    );
    let dockerfile = build["dockerfile"].as_str().unwrap();
    assert!(
        context.join(dockerfile).is_file(),
        "{name}: no {dockerfile}"
    );
    Some(entrypoint_binary(dockerfile))
}
