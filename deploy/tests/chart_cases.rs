//! What each test case of the Helm chart (`helm/lgaf-train/ci/`) must render, beyond what
//! every render has (`chart_render.rs`): the default two pods of one GPU, 8 nodes of 8 GPUs
//! with NCCL's settings, an elastic job, S3 by IRSA or by keys, metrics (the Prometheus
//! Operator's monitors, whose fields kubernetes-validate cannot check, OTLP export and
//! NetworkPolicies) and a data volume with its training config. The TLS cases are in
//! `chart_tls.rs`.

mod common;

use std::collections::BTreeSet;

use common::chart::{
    container, coordinator, env, env_from_secrets, env_value, flag, is_subset, labels, mount,
    pod_spec, port_names, pretty, render_case, toml_number, train_toml, volume, worker_job,
    FULLNAME, RELEASE,
};
use lgaf_deploy::{base64_decode, name, Render};
use serde_json::{json, Value};

#[test]
fn default_case_trains_on_two_pods_of_one_gpu() {
    let r = render_case("default");
    let (deployment, job) = (coordinator(&r), worker_job(&r));
    assert_eq!(flag(deployment, "--workers"), Some("2"));
    assert_eq!(flag(deployment, "--min-workers"), None);
    assert_eq!(
        flag(deployment, "--store"),
        Some("s3://lgaf-checkpoints/runs")
    );
    assert_eq!(flag(deployment, "--run-id"), Some(RELEASE));
    assert_eq!(flag(deployment, "--listen"), Some("0.0.0.0:50051"));
    assert_eq!(flag(deployment, "--tls-cert"), None);
    assert_eq!(job["spec"]["completions"], 2);
    assert_eq!(job["spec"]["backoffLimitPerIndex"], 6);
    assert_eq!(flag(job, "--local-ranks"), Some("1"));
    assert_eq!(flag(job, "--device"), Some("cuda"));
    assert_eq!(flag(job, "--tls-ca"), None);
    let limits = &container(job)["resources"]["limits"];
    assert_eq!(limits["nvidia.com/gpu"], 1, "{}", pretty(limits));
    assert_eq!(limits["memory"], "128Gi", "the values' limits are kept");
    // Not elastic: no drain may take a worker (an integer minAvailable: a Job has no
    // scale subresource for Kubernetes to count its pods by).
    let pdb = &r.get("PodDisruptionBudget", "-worker")["spec"];
    assert_eq!(pdb["minAvailable"], 2);
    assert!(pdb["maxUnavailable"].is_null());
    // No S3 keys: no Secret but the token, no envFrom.
    assert_eq!(r.all("Secret").len(), 1);
    assert!(env_from_secrets(deployment).is_empty() && env_from_secrets(job).is_empty());
    assert!(r.all("Certificate").is_empty() && r.all("NetworkPolicy").is_empty());
    assert!(r.all("ServiceMonitor").is_empty() && r.all("PodMonitor").is_empty());
    // gRPC readiness without TLS; the pods run as non-root with a read-only root.
    assert_eq!(
        container(deployment)["readinessProbe"]["grpc"]["port"],
        50051
    );
    for workload in [deployment, job] {
        assert_eq!(pod_spec(workload)["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            container(workload)["securityContext"]["readOnlyRootFilesystem"],
            true
        );
        assert_eq!(
            env_value(workload, "LGAF_LOG_FORMAT").as_deref(),
            Some("json")
        );
        assert_eq!(env_value(workload, "OTEL_EXPORTER_OTLP_ENDPOINT"), None);
        assert_eq!(
            env_value(workload, "AWS_REGION").as_deref(),
            Some("us-east-1")
        );
    }
    assert!(train_toml(&r).is_empty(), "config: {{}} renders no keys");
}

#[test]
fn gpu_8x8_case_runs_64_ranks_with_nccl_settings() {
    let r = render_case("gpu-8x8");
    let (deployment, job) = (coordinator(&r), worker_job(&r));
    assert_eq!(flag(deployment, "--workers"), Some("64"));
    assert_eq!(flag(deployment, "--run-id"), Some("webface4m-r100-lgf"));
    assert_eq!(job["spec"]["completions"], 8);
    assert_eq!(job["spec"]["parallelism"], 8);
    assert_eq!(flag(job, "--local-ranks"), Some("8"));
    assert_eq!(flag(job, "--device"), Some("cuda"));
    let resources = &container(job)["resources"];
    assert_eq!(
        resources["limits"]["nvidia.com/gpu"],
        8,
        "{}",
        pretty(resources)
    );
    assert_eq!(resources["limits"]["memory"], "900Gi");
    assert_eq!(resources["requests"]["cpu"], "64");
    let nccl = [
        ("NCCL_SOCKET_IFNAME", "eth0"),
        (
            "NCCL_IB_HCA",
            "mlx5_0,mlx5_1,mlx5_2,mlx5_3,mlx5_4,mlx5_5,mlx5_6,mlx5_7",
        ),
        ("NCCL_DEBUG", "INFO"),
        ("NCCL_IB_TIMEOUT", "22"),
        ("NCCL_IB_GID_INDEX", "3"),
        ("NCCL_NET_GDR_LEVEL", "PHB"),
    ];
    for (var, value) in nccl {
        assert_eq!(env_value(job, var).as_deref(), Some(value), "{var}");
        assert_eq!(env_value(deployment, var), None, "{var} on the coordinator");
    }
    assert_eq!(
        env(job)["LGAF_COLLECTIVE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    // One collective and one metrics port per local rank.
    let ports = port_names(job);
    let expected: Vec<(String, u64)> = (0..8u64)
        .flat_map(|r| {
            [
                (format!("collective-{r}"), 29500 + r),
                (format!("metrics-{r}"), 9464 + r),
            ]
        })
        .collect();
    assert_eq!(ports, expected);
    assert_eq!(
        volume(job, "shm").expect("shm")["emptyDir"]["sizeLimit"],
        "64Gi"
    );
    let spec = pod_spec(job);
    assert_eq!(
        spec["nodeSelector"]["nvidia.com/gpu.product"],
        "NVIDIA-H100-80GB-HBM3"
    );
    assert_eq!(spec["tolerations"].as_array().map(Vec::len), Some(2));
    assert_eq!(spec["priorityClassName"], "training-high");
    // One pod per node by default: anti-affinity on the workers' own labels.
    let term = &spec["affinity"]["podAntiAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
    assert!(is_subset(
        &labels(&term["labelSelector"]["matchLabels"]),
        &labels(&job["spec"]["template"]["metadata"]["labels"])
    ));
    let config = train_toml(&r);
    assert_eq!(config["train"]["precision"].as_str(), Some("bf16"));
    assert_eq!(config["model"]["arch"].as_str(), Some("r100"));
    assert_eq!(toml_number(&config["data"]["batch_size"]), 128.0);
}

#[test]
fn elastic_case_continues_with_min_workers_pods() {
    let r = render_case("elastic");
    let deployment = coordinator(&r);
    // 6 pods x 4 GPUs, at least 4 pods: 24 ranks, at least 16.
    assert_eq!(flag(deployment, "--workers"), Some("24"));
    assert_eq!(flag(deployment, "--min-workers"), Some("16"));
    assert_eq!(flag(deployment, "--elastic-grace-secs"), Some("120"));
    assert_eq!(flag(deployment, "--max-restarts"), Some("10"));
    assert_eq!(worker_job(&r)["spec"]["completions"], 6);
    let pdb = r.get("PodDisruptionBudget", "-worker");
    assert_eq!(pdb["spec"]["minAvailable"], 4, "minWorkers");
    assert!(is_subset(
        &labels(&pdb["spec"]["selector"]["matchLabels"]),
        &labels(&worker_job(&r)["spec"]["template"]["metadata"]["labels"])
    ));
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "worker"
    );
}

#[test]
fn s3_irsa_case_uses_the_service_account_and_no_keys() {
    let r = render_case("s3-irsa");
    let account = r.get("ServiceAccount", "lgaf-train");
    assert_eq!(name(account), "lgaf-train");
    assert_eq!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/lgaf-train"
    );
    assert!(
        r.objects
            .iter()
            .all(|o| !o["data"]["AWS_ACCESS_KEY_ID"].is_string()),
        "no Secret of S3 keys"
    );
    assert_eq!(r.all("Secret").len(), 1, "only the token");
    for workload in [coordinator(&r), worker_job(&r)] {
        assert_eq!(pod_spec(workload)["serviceAccountName"], "lgaf-train");
        assert!(env_from_secrets(workload).is_empty());
        assert_eq!(
            env_value(workload, "AWS_REGION").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(env_value(workload, "AWS_ENDPOINT_URL"), None);
        assert_eq!(env_value(workload, "AWS_ALLOW_HTTP"), None);
        assert_eq!(
            env_value(workload, "LGAF_STORE_RETRY_TIMEOUT_SECS").as_deref(),
            Some("180")
        );
    }
}

#[test]
fn s3_keys_case_gives_both_containers_the_keys_secret() {
    let r = render_case("s3-keys");
    let secret = r.get("Secret", "-s3");
    assert_eq!(name(secret), format!("{FULLNAME}-s3"));
    let decoded = |key: &str| {
        String::from_utf8(
            base64_decode(
                secret["data"][key]
                    .as_str()
                    .unwrap_or_else(|| panic!("{key}")),
            )
            .expect("base64"),
        )
        .expect("utf-8")
    };
    assert_eq!(decoded("AWS_ACCESS_KEY_ID"), "lgaf-train");
    assert_eq!(decoded("AWS_SECRET_ACCESS_KEY"), "3Tq9vXr7LmP2sKd8WnYb4HcJ");
    for workload in [coordinator(&r), worker_job(&r)] {
        assert_eq!(env_from_secrets(workload), vec![name(secret).to_string()]);
        assert_eq!(
            env_value(workload, "AWS_ENDPOINT_URL").as_deref(),
            Some("http://minio.minio.svc.cluster.local:9000")
        );
        assert_eq!(
            env_value(workload, "AWS_ALLOW_HTTP").as_deref(),
            Some("true")
        );
        // The keys are in no pod spec.
        assert!(!pretty(workload).contains("3Tq9vXr7LmP2sKd8WnYb4HcJ"));
        // The transfer settings given (0 is a setting, not "unset"), the defaults for the
        // rest.
        for (variable, value) in [
            ("LGAF_STORE_RETRY_TIMEOUT_SECS", "600"),
            ("LGAF_STORE_REQUEST_TIMEOUT_SECS", "120"),
            ("LGAF_STORE_MAX_RETRIES", "0"),
            ("LGAF_STORE_PART_SIZE_BYTES", "16777216"),
        ] {
            assert_eq!(
                env_value(workload, variable).as_deref(),
                Some(value),
                "{variable}"
            );
        }
    }
}

#[test]
fn metrics_case_renders_monitors_otlp_and_network_policies() {
    let r = render_case("metrics");
    let (deployment, job) = (coordinator(&r), worker_job(&r));
    for workload in [deployment, job] {
        assert_eq!(
            env_value(workload, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
            Some("http://otel-collector.monitoring.svc:4317")
        );
        assert_eq!(
            env_value(workload, "OTEL_EXPORTER_OTLP_PROTOCOL").as_deref(),
            Some("grpc")
        );
        assert_eq!(
            env_value(workload, "LGAF_TRACE_STEP_EVERY").as_deref(),
            Some("50")
        );
        let annotations = &workload["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true");
    }
    assert_eq!(flag(deployment, "--metrics-listen"), Some("0.0.0.0:9464"));
    assert_eq!(flag(job, "--metrics-listen"), Some("0.0.0.0:9464"));

    // The ServiceMonitor scrapes the Service's named metrics port.
    let service = r.get("Service", "-coordinator");
    let monitor = r.get("ServiceMonitor", "-coordinator");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert!(
        is_subset(
            &labels(&monitor["spec"]["selector"]["matchLabels"]),
            &labels(&service["metadata"]["labels"])
        ),
        "the ServiceMonitor's selector does not pick the Service:\n{}\n{}",
        pretty(monitor),
        pretty(service)
    );
    let service_ports: Vec<&Value> = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .collect();
    assert!(service_ports
        .iter()
        .any(|p| p["name"] == "metrics" && p["port"] == 9464));
    assert_eq!(
        monitor["spec"]["endpoints"],
        json!([{"port": "metrics", "path": "/metrics", "interval": "15s"}])
    );
    // The PodMonitor scrapes every local rank's named port of the worker pods.
    let pods = r.get("PodMonitor", "-worker");
    assert_eq!(
        pods["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert!(is_subset(
        &labels(&pods["spec"]["selector"]["matchLabels"]),
        &labels(&job["spec"]["template"]["metadata"]["labels"])
    ));
    let container_ports: BTreeSet<String> = port_names(job).into_iter().map(|(n, _)| n).collect();
    let endpoints = pods["spec"]["podMetricsEndpoints"]
        .as_array()
        .expect("endpoints");
    let scraped: Vec<&str> = endpoints
        .iter()
        .map(|e| e["port"].as_str().expect("port"))
        .collect();
    assert_eq!(scraped, ["metrics-0", "metrics-1"]);
    assert!(
        scraped.iter().all(|p| container_ports.contains(*p)),
        "{container_ports:?}"
    );
    // Fields of the Prometheus Operator's monitoring.coreos.com/v1 monitors (the spec's and
    // an endpoint's), as kubernetes-validate cannot check them.
    let spec_fields: BTreeSet<&str> = [
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
        "endpoints",
        "podMetricsEndpoints",
        "selector",
        "selectorMechanism",
        "namespaceSelector",
        "sampleLimit",
        "targetLimit",
        "scrapeProtocols",
        "fallbackScrapeProtocol",
        "labelLimit",
        "labelNameLengthLimit",
        "labelValueLengthLimit",
        "scrapeClassicHistograms",
        "nativeHistogramBucketLimit",
        "nativeHistogramMinBucketFactor",
        "convertClassicHistogramsToNHCB",
        "keepDroppedTargets",
        "attachMetadata",
        "scrapeClass",
        "bodySizeLimit",
    ]
    .into();
    let endpoint_fields: BTreeSet<&str> = [
        "port",
        "portNumber",
        "targetPort",
        "path",
        "scheme",
        "params",
        "interval",
        "scrapeTimeout",
        "tlsConfig",
        "honorLabels",
        "honorTimestamps",
        "trackTimestampsStaleness",
        "metricRelabelings",
        "relabelings",
        "proxyUrl",
        "followRedirects",
        "enableHttp2",
        "filterRunning",
        "authorization",
        "basicAuth",
        "oauth2",
        "bearerTokenSecret",
    ]
    .into();
    for (monitor, endpoints) in [(monitor, "endpoints"), (pods, "podMetricsEndpoints")] {
        let spec = monitor["spec"].as_object().expect("spec");
        for key in spec.keys() {
            assert!(
                spec_fields.contains(key.as_str()),
                "{} spec.{key}",
                monitor["kind"]
            );
        }
        assert!(spec["selector"]["matchLabels"].is_object());
        for endpoint in spec[endpoints].as_array().expect("endpoints") {
            for key in endpoint.as_object().expect("an endpoint").keys() {
                assert!(
                    endpoint_fields.contains(key.as_str()),
                    "{} {endpoints}[].{key}",
                    monitor["kind"]
                );
            }
        }
    }

    // NetworkPolicies: the coordinator's gRPC from the workers, metrics from monitoring.
    let from_monitoring = json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]);
    let policy = r.get("NetworkPolicy", "-coordinator");
    assert!(is_subset(
        &labels(&policy["spec"]["podSelector"]["matchLabels"]),
        &labels(&deployment["spec"]["template"]["metadata"]["labels"])
    ));
    let ingress = policy["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(ingress.len(), 2, "{}", pretty(policy));
    assert!(is_subset(
        &labels(&ingress[0]["from"][0]["podSelector"]["matchLabels"]),
        &labels(&job["spec"]["template"]["metadata"]["labels"])
    ));
    assert_eq!(ingress[0]["ports"], json!([{"port": 50051}]));
    assert_eq!(ingress[1]["from"], from_monitoring);
    assert_eq!(ingress[1]["ports"], json!([{"port": 9464}]));
    let policy = r.get("NetworkPolicy", "-worker");
    let ingress = policy["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(ingress.len(), 2, "{}", pretty(policy));
    assert_eq!(ingress[1]["from"], from_monitoring);
    assert_eq!(
        ingress[1]["ports"],
        json!([{"port": 9464, "endPort": 9465}])
    );
}

#[test]
fn data_case_mounts_the_volume_and_renders_the_config() {
    let r = render_case("data");
    let job = worker_job(&r);
    assert_eq!(
        volume(job, "data").expect("data volume")["persistentVolumeClaim"],
        json!({"claimName": "webface4m", "readOnly": true})
    );
    let m = mount(job, "data").expect("data mount");
    assert_eq!(
        (&m["mountPath"], &m["readOnly"]),
        (&json!("/data"), &json!(true))
    );
    assert!(
        volume(coordinator(&r), "data").is_none(),
        "the coordinator reads no data"
    );
    let config = train_toml(&r);
    let data = &config["data"];
    assert_eq!(data["source"].as_str(), Some("recordio"));
    assert_eq!(data["path"].as_str(), Some("/data/webface4m/train.rec"));
    assert_eq!(toml_number(&data["batch_size"]), 128.0);
    assert_eq!(toml_number(&data["max_bad_fraction"]), 0.01);
    assert_eq!(data["strict"].as_bool(), Some(false));
    let steps: Vec<f64> = config["optim"]["lr_steps"]
        .as_array()
        .expect("lr_steps")
        .iter()
        .map(toml_number)
        .collect();
    assert_eq!(steps, [12.0, 20.0, 24.0]);
    assert_eq!(
        config["eval"]["bins"].as_array().map(Vec::len),
        Some(3),
        "{config}"
    );
    // A changed configuration restarts the coordinator (the pod template's checksum).
    let checksum = |r: &Render| {
        coordinator(r)["spec"]["template"]["metadata"]["annotations"]["checksum/config"].clone()
    };
    assert_ne!(checksum(&r), checksum(&render_case("default")));
}
