//! What the Helm chart's `values.schema.json` and templates refuse and accept: wrong types,
//! unknown keys, bad enums and out-of-range numbers are refused by the schema naming the
//! key, what the chart documents is accepted, a missing store and values the schema cannot
//! compare are refused by the templates, and numbers from values files render as integers.
//! And the schema's coverage: it names every key of `values.yaml` (with its type and
//! default) and every key of `configs/train.toml`, whose values the chart renders into the
//! ConfigMap as they are.

mod common;

use common::chart::{
    accepted, container, coordinator, env_value, flag, pod_spec, refused, scratch_dir, train_toml,
    worker_job, RELEASE,
};
use lgaf_deploy::{chart_dir, parse_documents, render, repo_root};
use serde_json::{json, Value};

// --- What the schema and the templates refuse ---------------------------------------------

const SCHEMA_ERROR: &str = "values don't meet the specifications of the schema";

#[test]
fn the_schema_refuses_wrong_types_unknown_keys_and_bad_enums() {
    // (values, what the message must name)
    let cases: &[(&[&str], &[&str])] = &[
        (&["--set", "workers=two"], &["/workers", "integer"]),
        (&["--set-string", "workers=2"], &["/workers", "integer"]),
        (&["--set", "wrokers=3"], &["wrokers", "not allowed"]),
        (
            &["--set", "config.model.fusoin=lgf"],
            &["/config/model", "fusoin", "not allowed"],
        ),
        (
            &["--set", "coordinator.image.tg=v1"],
            &["/coordinator/image", "tg"],
        ),
        (
            &["--set", "telemetry.logFormat=xml"],
            &["/telemetry/logFormat", "text", "json"],
        ),
        (
            &["--set", "telemetry.otlpProtocol=http"],
            &["/telemetry/otlpProtocol"],
        ),
        (
            &["--set", "tls.certManager.issuerRef.kind=Issuers"],
            &["/tls/certManager/issuerRef/kind"],
        ),
        (
            &["--set", "coordinator.image.pullPolicy=Sometimes"],
            &["/coordinator/image/pullPolicy"],
        ),
        (&["--set", "gpusPerNode=17"], &["/gpusPerNode"]),
        (&["--set", "workers=0"], &["/workers"]),
        (&["--set", "minWorkers=0"], &["/minWorkers"]),
        (&["--set", "coordinator.port=70000"], &["/coordinator/port"]),
        (
            &["--set", "worker.collectivePort=0"],
            &["/worker/collectivePort"],
        ),
        (&["--set", "store=http://bucket/runs"], &["/store"]),
        (&["--set", "runId=.hidden"], &["/runId"]),
        (&["--set", "nccl.env.IB_GID_INDEX=3"], &["IB_GID_INDEX"]),
        (&["--set", "nccl.debug=LOUD"], &["/nccl/debug"]),
        (&["--set", "worker.shmSize=lots"], &["/worker/shmSize"]),
        (
            &["--set", "metrics.serviceMonitor.interval=half a minute"],
            &["/metrics/serviceMonitor/interval"],
        ),
        (
            &["--set", "config.data.source=tfrecord"],
            &["/config/data/source"],
        ),
        (&["--set", "config.optim.lr=0"], &["/config/optim/lr"]),
        (
            &["--set", "config.model.kernels={2}"],
            &["/config/model/kernels"],
        ),
        (
            &["--set", "config.loss.name=softmax"],
            &["/config/loss/name"],
        ),
        (
            &["--set", "config.train.precision=fp8"],
            &["/config/train/precision"],
        ),
        (
            &["--set", "config.model.lgf.norm_grad=maybe"],
            &["/config/model/lgf/norm_grad"],
        ),
        (&["--set", "config.extra.key=1"], &["/config", "extra"]),
        (
            &["--set", "s3.transfer.partSizeBytes=1048576"],
            &["/s3/transfer/partSizeBytes"],
        ),
        (
            &["--set", "s3.transfer.retryTimeout=60"],
            &["/s3/transfer", "retryTimeout"],
        ),
    ];
    let mut failures = Vec::new();
    for (args, names) in cases {
        let error = refused(args);
        if !error.contains(SCHEMA_ERROR) || !names.iter().all(|n| error.contains(n)) {
            failures.push(format!(
                "{args:?}: expected a schema error naming {names:?}:\n{error}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_schema_accepts_what_the_chart_documents() {
    accepted(&["--set", "store=file:///mnt/store"]);
    accepted(&["--set", "store=/mnt/store"]);
    accepted(&["--set", "minWorkers=1", "--set", "gpusPerNode=0"]);
    accepted(&[
        "--set",
        "telemetry.otlpProtocol=http/protobuf",
        "--set",
        "telemetry.otlpEndpoint=http://c:4318",
    ]);
    accepted(&["--set", "config.loss.name=combined:1.0\\,0.3\\,0.2"]);
    accepted(&[
        "--set",
        "config.train.device=cuda:0",
        "--set",
        "config.model.mid_channels=256",
    ]);
    accepted(&["--set-json", r#"nccl.env={"NCCL_IB_GID_INDEX":"3"}"#]);
    accepted(&[
        "--set-json",
        r#"worker.extraEnv=[{"name":"X","value":"1"}]"#,
    ]);
    // CPU training: one rank a pod, no GPU asked for.
    let r = accepted(&["--set", "gpusPerNode=0", "--set", "workers=3"]);
    assert_eq!(flag(coordinator(&r), "--workers"), Some("3"));
    assert_eq!(flag(worker_job(&r), "--device"), Some("cpu"));
    assert_eq!(flag(worker_job(&r), "--local-ranks"), Some("1"));
    assert!(container(worker_job(&r))["resources"]["limits"]["nvidia.com/gpu"].is_null());
}

#[test]
fn a_missing_store_is_refused_naming_it() {
    for args in [&[][..], &["--set", "store="][..]] {
        let error = render(RELEASE, args)
            .err()
            .unwrap_or_else(|| panic!("rendered {args:?}"));
        assert!(
            error.contains("store: where checkpoints go, e.g. --set store=s3://bucket/runs"),
            "{args:?}: {error}"
        );
    }
}

#[test]
fn values_the_schema_cannot_compare_are_refused_by_the_templates() {
    // minWorkers above workers: the coordinator would refuse --min-workers > --workers and
    // the PodDisruptionBudget would keep more pods than the Job has.
    let error = refused(&["--set", "workers=2", "--set", "minWorkers=3"]);
    assert!(error.contains("minWorkers"), "{error}");
    // A world size above the coordinator's 4096 ranks.
    let error = refused(&["--set", "workers=600", "--set", "gpusPerNode=8"]);
    assert!(error.contains("4096"), "{error}");
}

#[test]
fn numbers_from_values_files_render_as_integers() {
    // helm reads the numbers of a values file as float64, which Go prints as 1e+06 from a
    // million on: no flag, variable or field may get that form.
    let file = scratch_dir().join("large-numbers-values.yaml");
    std::fs::write(
        &file,
        "store: s3://bucket/runs\n\
         maxSteps: 2000000\n\
         maxRestarts: 1000000\n\
         coordinator: {collectiveTimeoutMs: 1800000, heartbeatDeadlineMs: 1000000}\n\
         telemetry: {traceStepEvery: 1000000}\n\
         worker: {terminationGracePeriodSeconds: 1000000, retriesPerSlot: 1000000}\n",
    )
    .expect("writing the values");
    let path = file.display().to_string();
    let r = render(RELEASE, &["-f", &path]).unwrap_or_else(|e| panic!("{e}"));
    let deployment = coordinator(&r);
    assert_eq!(flag(deployment, "--max-steps"), Some("2000000"));
    assert_eq!(flag(deployment, "--max-restarts"), Some("1000000"));
    assert_eq!(flag(deployment, "--collective-timeout-ms"), Some("1800000"));
    assert_eq!(flag(deployment, "--heartbeat-deadline-ms"), Some("1000000"));
    let job = worker_job(&r);
    for workload in [deployment, job] {
        assert_eq!(
            env_value(workload, "LGAF_TRACE_STEP_EVERY").as_deref(),
            Some("1000000")
        );
    }
    assert_eq!(pod_spec(job)["terminationGracePeriodSeconds"], 1_000_000);
    assert_eq!(job["spec"]["backoffLimitPerIndex"], 1_000_000);
}

// --- The schema documents every key -------------------------------------------------------

fn schema() -> Value {
    let path = chart_dir().join("values.schema.json");
    let text = std::fs::read_to_string(&path).expect("values.schema.json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A schema node with its `$ref` (to `#/definitions/...`) followed.
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local $ref");
            resolve(
                root,
                root.pointer(pointer)
                    .unwrap_or_else(|| panic!("{reference}")),
            )
        }
        None => node,
    }
}

/// Whether a JSON value has one of the schema node's types.
fn has_type(node: &Value, value: &Value) -> bool {
    let types: Vec<&str> = match &node["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return node["enum"].as_array().is_some_and(|e| e.contains(value)),
    };
    types.iter().any(|t| match *t {
        "integer" => value.as_f64().is_some_and(|n| n.fract() == 0.0),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        _ => false,
    })
}

/// Every key path of `value` down to its leaves (scalars, lists, empty maps), with the leaf.
fn leaves(value: &Value, path: Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
    match value.as_object() {
        Some(map) if !map.is_empty() => {
            for (key, child) in map {
                let mut path = path.clone();
                path.push(key.clone());
                leaves(child, path, out);
            }
        }
        _ => out.push((path, value.clone())),
    }
}

/// The schema node of `path`, and whether the path ends there: None when a key on the way
/// is not in the schema; the free-form node (false) where the schema leaves an object's keys
/// free (Kubernetes' objects: resources, affinity, a volume source...).
fn schema_node<'a>(root: &'a Value, path: &[String]) -> Option<(&'a Value, bool)> {
    let mut node = resolve(root, root);
    for (depth, key) in path.iter().enumerate() {
        match node["properties"].as_object() {
            Some(properties) => node = resolve(root, properties.get(key)?),
            None if node["additionalProperties"] == json!(false) => return None,
            None => return Some((node, depth == path.len())),
        }
    }
    Some((node, true))
}

/// Every property path the schema defines (through `$ref`s), below `path`.
fn schema_paths(root: &Value, node: &Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
    let node = resolve(root, node);
    if let Some(properties) = node["properties"].as_object() {
        for (key, child) in properties {
            let mut path = path.clone();
            path.push(key.clone());
            out.push(path.clone());
            schema_paths(root, child, path, out);
        }
    }
}

fn values_yaml() -> Value {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml");
    let documents = parse_documents(&text).expect("values.yaml is YAML");
    documents.into_iter().next().expect("values.yaml")
}

#[test]
fn the_schema_documents_every_key_of_values_yaml() {
    let root = schema();
    assert_eq!(root["$schema"], "http://json-schema.org/draft-07/schema#");
    let values = values_yaml();
    let mut found = Vec::new();
    leaves(&values, Vec::new(), &mut found);
    let mut problems = Vec::new();
    for (path, value) in &found {
        let key = path.join(".");
        match schema_node(&root, path) {
            None => problems.push(format!("{key}: not in values.schema.json")),
            Some((node, true)) if !has_type(node, value) => problems.push(format!(
                "{key}: {value} is not of the schema's type {}",
                node["type"]
            )),
            _ => {}
        }
    }
    // Every top-level key says what it is.
    let properties = root["properties"].as_object().expect("properties");
    for (key, node) in properties {
        if node.get("description").is_none() && resolve(&root, node).get("description").is_none() {
            problems.push(format!("{key}: no description"));
        }
    }
    // And every key the schema defines is in values.yaml, with its default (config's are
    // configs/train.toml's, below; global is helm's).
    let mut defined = Vec::new();
    schema_paths(&root, &root, Vec::new(), &mut defined);
    for path in defined {
        if path[0] == "global" || (path[0] == "config" && path.len() > 1) {
            continue;
        }
        let pointer: String = path.iter().map(|k| format!("/{k}")).collect();
        if values.pointer(&pointer).is_none() {
            problems.push(format!(
                "{}: in values.schema.json, not in values.yaml",
                path.join(".")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn train_toml_defaults() -> (toml::Table, String) {
    let text = std::fs::read_to_string(repo_root().join("configs").join("train.toml"))
        .expect("configs/train.toml");
    let table = text
        .parse::<toml::Table>()
        .expect("configs/train.toml is TOML");
    (table, text)
}

#[test]
fn the_schemas_config_is_configs_train_toml() {
    let root = schema();
    let (table, text) = train_toml_defaults();
    let defaults = serde_json::to_value(&table).expect("TOML as JSON");
    let mut found = Vec::new();
    leaves(&defaults, vec!["config".to_string()], &mut found);
    let mut problems = Vec::new();
    for (path, value) in &found {
        let key = path[1..].join(".");
        match schema_node(&root, path) {
            Some((node, true)) if node["properties"].is_null() => {
                if !has_type(node, value) {
                    problems.push(format!(
                        "{key} = {value}: not of the schema's type {}",
                        node["type"]
                    ));
                }
            }
            _ => problems.push(format!("{key}: not in values.schema.json's config")),
        }
    }
    let mut defined = Vec::new();
    let config = root.pointer("/properties/config").expect("config");
    schema_paths(&root, config, Vec::new(), &mut defined);
    for path in defined {
        let pointer: String = path.iter().map(|k| format!("/{k}")).collect();
        // A key with no default is listed in a comment (`# mid_channels = 128`).
        let commented = format!("# {} = ", path.last().expect("a key"));
        if defaults.pointer(&pointer).is_none() && !text.contains(&commented) {
            problems.push(format!(
                "config.{}: not in configs/train.toml",
                path.join(".")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // configs/train.toml's values are in the schema's ranges, and the chart renders them into
    // the ConfigMap as they are.
    let json = serde_json::to_string(&defaults).expect("JSON");
    let r = accepted(&["--set-json", &format!("config={json}")]);
    let rendered = serde_json::to_value(train_toml(&r)).expect("TOML as JSON");
    let mut rendered_leaves = Vec::new();
    leaves(&rendered, Vec::new(), &mut rendered_leaves);
    let mut original = Vec::new();
    leaves(&defaults, Vec::new(), &mut original);
    assert_eq!(rendered_leaves.len(), original.len(), "{rendered}");
    let same = |a: &Value, b: &Value| match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .zip(ys)
                    .all(|(x, y)| x == y || x.as_f64().is_some_and(|x| Some(x) == y.as_f64()))
        }
        _ => a == b,
    };
    for (path, value) in original {
        let pointer: String = path.iter().map(|k| format!("/{k}")).collect();
        let got = rendered.pointer(&pointer).unwrap_or(&Value::Null);
        assert!(
            same(&value, got),
            "{}: {value} rendered as {got}",
            path.join(".")
        );
    }
}
