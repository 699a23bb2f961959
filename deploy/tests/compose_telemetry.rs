//! The compose example's telemetry stack (`deploy/compose/`), checked without a container
//! engine: promtool accepts Prometheus' config; each of the collector, Tempo and Prometheus
//! reads its config file where the service mounts it; every pipeline of the OpenTelemetry
//! collector uses components it defines, and its traces go to Tempo's OTLP/gRPC receiver;
//! Grafana's provisioning gives the dashboard a data source of each type it asks for, at the
//! services' ports, and mounts the dashboard where its provider reads.
//!
//! That Prometheus scrapes each LGAF service's metrics endpoint is checked with the services'
//! command lines in `compose.rs`. The tools come from `make test` (`make deploy-tools`):
//! `$LGAF_DOCKER_COMPOSE` (Docker Compose v2, run as `docker-compose`) and `$LGAF_PROMTOOL`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::compose::{binds, command_of, compose_config, env_of, host_port, services, COMPOSE};
use common::{output_text, read, yaml};
use lgaf_deploy::{repo_root, tool};
use serde_json::Value;

#[test]
fn prometheus_config_passes_promtool() {
    let out = Command::new(tool("LGAF_PROMTOOL", "Debian's prometheus package"))
        .current_dir(repo_root())
        .args(["check", "config", "deploy/compose/prometheus.yml"])
        .output()
        .expect("running promtool");
    assert!(
        out.status.success(),
        "promtool check config:\n{}",
        output_text(&out)
    );
}

#[test]
fn traces_go_from_the_collector_to_tempo_and_grafana_reads_both_backends() {
    let config = compose_config(&[COMPOSE]);
    let services = services(&config);

    // Each config file is where its program reads it.
    let mounted_at = |service: &str, rel: &str| -> String {
        let want = repo_root().join(rel).canonicalize().unwrap();
        binds(&services[service])
            .into_iter()
            .find(|(_, source)| source.canonicalize().unwrap() == want)
            .unwrap_or_else(|| panic!("{service} does not mount {rel}"))
            .0
    };
    let collector_cmd = command_of(&services["otel-collector"]);
    let collector_path = mounted_at("otel-collector", "deploy/compose/otel-collector.yaml");
    assert!(
        collector_cmd.contains(&format!("--config={collector_path}")),
        "{collector_cmd:?}"
    );
    let tempo_cmd = command_of(&services["tempo"]);
    let tempo_path = mounted_at("tempo", "deploy/compose/tempo.yaml");
    assert!(
        tempo_cmd.contains(&format!("-config.file={tempo_path}")),
        "{tempo_cmd:?}"
    );
    let prometheus_cmd = command_of(&services["prometheus"]);
    let prometheus_path = mounted_at("prometheus", "deploy/compose/prometheus.yml");
    assert!(
        prometheus_cmd.contains(&format!("--config.file={prometheus_path}")),
        "{prometheus_cmd:?}"
    );

    // The collector: every pipeline's receivers and exporters are defined; traces reach
    // Tempo's OTLP/gRPC receiver.
    let collector = yaml("deploy/compose/otel-collector.yaml");
    let pipelines = collector["service"]["pipelines"].as_object().unwrap();
    assert!(pipelines.contains_key("traces") && pipelines.contains_key("metrics"));
    for (name, pipeline) in pipelines {
        for kind in ["receivers", "processors", "exporters"] {
            for component in pipeline[kind].as_array().into_iter().flatten() {
                let component = component.as_str().unwrap();
                assert!(
                    collector[kind].get(component).is_some(),
                    "collector pipeline {name}: {kind} {component} is not defined"
                );
            }
        }
    }
    let tempo = yaml("deploy/compose/tempo.yaml");
    let tempo_otlp = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        .as_str()
        .unwrap();
    let to_tempo: Vec<&str> = pipelines["traces"]["exporters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .filter(|e| {
            collector["exporters"][*e]["endpoint"]
                .as_str()
                .is_some_and(|ep| host_port(ep) == ("tempo".to_string(), host_port(tempo_otlp).1))
        })
        .collect();
    assert_eq!(to_tempo.len(), 1, "no trace exporter to tempo:{tempo_otlp}");

    // Grafana: a data source of each type the dashboard's data-source variables ask for, at
    // the services' ports; the dashboard mounted where the provider reads.
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/lgaf-train.json")).unwrap();
    let wanted: BTreeSet<String> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "datasource")
        .map(|v| v["query"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        wanted,
        ["prometheus", "tempo"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    let datasources = yaml("deploy/compose/grafana/datasources.yaml");
    let tempo_http = tempo["server"]["http_listen_port"].as_u64().unwrap() as u16;
    let mut provided = BTreeSet::new();
    for ds in datasources["datasources"].as_array().unwrap() {
        let kind = ds["type"].as_str().unwrap().to_string();
        let (host, port) = host_port(ds["url"].as_str().unwrap());
        assert!(
            services.contains_key(&host),
            "data source {kind}: no service {host}"
        );
        let expected_port = match kind.as_str() {
            "prometheus" => 9090,
            "tempo" => tempo_http,
            other => panic!("data source of type {other}"),
        };
        assert_eq!(port, expected_port, "data source {kind}");
        provided.insert(kind);
    }
    assert_eq!(provided, wanted);
    mounted_at("grafana", "deploy/compose/grafana/datasources.yaml");
    mounted_at("grafana", "deploy/compose/grafana/dashboards.yaml");
    let dashboard_at = mounted_at("grafana", "deploy/grafana/lgaf-train.json");
    let providers = yaml("deploy/compose/grafana/dashboards.yaml");
    let folders: Vec<&str> = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["options"]["path"].as_str().unwrap())
        .collect();
    let dashboard_dir = Path::new(&dashboard_at).parent().unwrap().to_str().unwrap();
    assert!(
        folders.contains(&dashboard_dir),
        "the providers read {folders:?}, not {dashboard_dir}"
    );
    assert_eq!(
        env_of(&services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"],
        dashboard_at
    );
}
