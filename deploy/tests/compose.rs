//! The compose example (`deploy/compose.yaml`, `deploy/compose/`), checked without a
//! container engine: `docker compose config` accepts the compose file (alone and with the
//! GPU override) and names every service, with pinned images and each worker on a GPU of its
//! own under the override; every command line and environment variable of the LGAF services
//! is accepted by the binaries themselves: the coordinator's `Args` and `Config`, the
//! telemetry flags, the job token and the store's S3 settings by their parsers, the worker's
//! command line (and the values its environment gives its flags) by the built `lgaf-worker`;
//! ports, host names, the bucket, credentials and Prometheus' scrape targets agree across
//! services; every mounted file exists in the repository.
//!
//! The telemetry stack's own configs are checked in `compose_telemetry.rs`, the images in
//! `images.rs`. `$LGAF_DOCKER_COMPOSE` (Docker Compose v2, run as `docker-compose`) comes from
//! `make test` (`make deploy-tools`); `lgaf-worker` from `cargo build --release --bins`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use clap::{Arg, ArgAction, Args as _, Command as ClapCommand, FromArgMatches as _, Parser as _};
use common::compose::{
    binds, command_of, compose_config, env_of, host_port, image_binary, services, COMPOSE,
    COMPOSE_GPU,
};
use common::{files_under, read, yaml};
use lgaf_coordinator::supervisor::config::LocalWorkers;
use lgaf_coordinator::supervisor::{Args as CoordinatorArgs, Config as CoordinatorConfig};
use lgaf_deploy::{built_binary, repo_root, transcript};
use lgaf_telemetry::TelemetryArgs;

/// Every service of the compose example.
const SERVICES: [&str; 9] = [
    "coordinator",
    "grafana",
    "otel-collector",
    "prometheus",
    "s3",
    "s3-bucket",
    "tempo",
    "worker-0",
    "worker-1",
];
/// The S3 settings `lgaf-coordinator --store` documents (object_store reads them).
const AWS_SETTINGS: [&str; 5] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP",
];

/// The value of `--flag=value` or `--flag value` in a command line.
fn flag(command: &[String], name: &str) -> Option<String> {
    command.iter().enumerate().find_map(|(i, arg)| {
        if let Some(value) = arg.strip_prefix(&format!("{name}=")) {
            Some(value.to_string())
        } else if arg == name {
            command.get(i + 1).cloned()
        } else {
            None
        }
    })
}

#[test]
fn compose_config_is_valid_and_names_every_service() {
    let base = compose_config(&[COMPOSE]);
    let names: BTreeSet<&str> = services(&base).keys().map(String::as_str).collect();
    assert_eq!(
        names,
        SERVICES.into_iter().collect(),
        "the services of {COMPOSE}"
    );
    for (name, service) in services(&base) {
        if let Some(image) = service["image"].as_str() {
            assert!(
                image.contains(':') && !image.ends_with(":latest"),
                "{name}: image {image} has no pinned tag"
            );
        }
    }
    let mut binaries = BTreeMap::new();
    for (name, service) in services(&base) {
        if let Some(binary) = image_binary(name, service) {
            binaries.insert(name.as_str(), binary);
        }
    }
    assert_eq!(binaries["coordinator"], "lgaf-coordinator");
    assert_eq!(binaries["worker-0"], "lgaf-worker");
    assert_eq!(binaries["worker-1"], "lgaf-worker");
    for worker in ["worker-0", "worker-1"] {
        let service = &services(&base)[worker];
        assert_eq!(
            flag(&command_of(service), "--device").as_deref(),
            Some("cpu")
        );
        assert!(
            service.get("deploy").is_none(),
            "{worker} reserves devices without the GPU file"
        );
    }

    // With the GPU file: the same services, each worker on a GPU of its own.
    let gpu = compose_config(&[COMPOSE, COMPOSE_GPU]);
    let gpu_names: BTreeSet<&str> = services(&gpu).keys().map(String::as_str).collect();
    assert_eq!(gpu_names, names);
    let mut gpus = BTreeSet::new();
    for worker in ["worker-0", "worker-1"] {
        let service = &services(&gpu)[worker];
        let command = command_of(service);
        assert_eq!(
            flag(&command, "--device").as_deref(),
            Some("cuda:0"),
            "{worker}"
        );
        let base_command = command_of(&services(&base)[worker]);
        let without_device = |c: &[String]| -> Vec<String> {
            c.iter()
                .filter(|a| !a.starts_with("--device"))
                .cloned()
                .collect()
        };
        assert_eq!(
            without_device(&command),
            without_device(&base_command),
            "{worker}: the GPU file changes more than --device"
        );
        let devices = service["deploy"]["resources"]["reservations"]["devices"]
            .as_array()
            .unwrap_or_else(|| panic!("{worker}: no device reservation"));
        assert_eq!(devices.len(), 1, "{worker}");
        assert_eq!(devices[0]["driver"], "nvidia", "{worker}");
        assert!(devices[0]["capabilities"]
            .as_array()
            .unwrap()
            .contains(&"gpu".into()));
        let ids = devices[0]["device_ids"].as_array().unwrap();
        assert_eq!(ids.len(), 1, "{worker}: one GPU each");
        assert!(
            gpus.insert(ids[0].as_str().unwrap().to_string()),
            "{worker}: a GPU shared"
        );
    }
}

// ---- The worker's command line, as the built lgaf-worker takes it -----------------------

/// The built `lgaf-worker`, without this environment's settings for it (its flags'
/// variables, the slot Kubernetes gives a pod): only its command line counts, and its help
/// shows no current values.
fn lgaf_worker() -> Command {
    let mut command = Command::new(built_binary("lgaf-worker"));
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("LGAF_") || name.starts_with("OTEL_") || name == "JOB_COMPLETION_INDEX"
        {
            command.env_remove(&key);
        }
    }
    command
}

/// Whether `lgaf-worker` takes the arguments `args`, as the binary itself judges them without
/// starting: run as `lgaf-worker ARGS --help`, clap parses every argument before the trailing
/// `--help` (an unknown flag, a value a flag's parser refuses, a flag given twice all exit
/// with status 2) and only then prints the help and exits 0, doing nothing else. It reads no
/// variables in this mode: `flags_from_env` gives their values as flags.
/// `the_built_worker_judges_its_arguments_before_its_help` shows that it does.
fn worker_takes(args: &[String]) -> Result<(), String> {
    let mut command = lgaf_worker();
    command.args(args).arg("--help");
    let out = command.output().expect("running lgaf-worker");
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Usage: lgaf-worker") {
        Ok(())
    } else {
        Err(transcript(&command, &out))
    }
}

/// A flag of `lgaf-worker --help`.
#[derive(Debug, Default)]
struct HelpFlag {
    /// Its name, without the dashes.
    long: String,
    /// Other names it takes (`[alias: --x]`, `[aliases: --x, --y]`), without the dashes.
    aliases: Vec<String>,
    /// Whether it takes a value (`--name <VALUE>`).
    takes_value: bool,
    /// The variable it is read from when not given (`[env: NAME=...]`).
    env: Option<String>,
}

/// The flags a clap help lists: each flag's line starts with `--name` or `-x, --name` (then
/// `<VALUE>` when it takes one), indented less than the descriptions; its description, on
/// that line or the next, names its variable as `[env: NAME=...]` and its other names as
/// `[alias: --x]` or `[aliases: --x, --y]`.
fn help_flags(help: &str) -> Vec<HelpFlag> {
    let mut flags: Vec<HelpFlag> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let spec = trimmed.strip_prefix("--").or_else(|| {
            let (short, rest) = trimmed.strip_prefix('-')?.split_at_checked(1)?;
            short
                .chars()
                .all(|c| c.is_ascii_alphanumeric())
                .then_some(())?;
            rest.strip_prefix(", --")
        });
        if let Some(spec) = spec.filter(|_| indent <= 6) {
            let mut words = spec.split_whitespace();
            flags.push(HelpFlag {
                long: words.next().expect("a flag's name").to_string(),
                takes_value: words.next().is_some_and(|w| w.starts_with('<')),
                ..HelpFlag::default()
            });
        }
        let Some(flag) = flags.last_mut() else {
            continue;
        };
        if let Some((_, rest)) = line.split_once("[env: ") {
            flag.env = rest.split_once('=').map(|(var, _)| var.to_string());
        }
        for marker in ["[alias: ", "[aliases: "] {
            if let Some((_, rest)) = line.split_once(marker) {
                let (list, _) = rest.split_once(']').expect("a closed alias list");
                let names = list
                    .split(", ")
                    .map(|a| a.trim_start_matches('-').to_string());
                flag.aliases.extend(names);
            }
        }
    }
    flags
}

/// The flags of the built `lgaf-worker --help`.
fn worker_help_flags() -> Vec<HelpFlag> {
    let mut command = lgaf_worker();
    command.arg("--help");
    let out = command.output().expect("running lgaf-worker --help");
    assert!(out.status.success(), "{}", transcript(&command, &out));
    let help = String::from_utf8(out.stdout).expect("a UTF-8 help");
    let flags = help_flags(&help);
    assert!(
        flags.len() >= 8 && flags.iter().any(|f| f.long == "help"),
        "read only {flags:?} from lgaf-worker --help:\n{help}"
    );
    flags
}

/// `--flag=value` for each flag that the environment `env` sets (the flag's variable) and
/// the command line does not give: what the worker would take from its environment.
fn flags_from_env(
    flags: &[HelpFlag],
    command: &[String],
    env: &BTreeMap<String, String>,
) -> Vec<String> {
    flags
        .iter()
        .filter(|f| f.takes_value)
        .filter_map(|f| {
            let value = env.get(f.env.as_ref()?)?;
            let mut names = std::iter::once(&f.long).chain(&f.aliases);
            let given = names.any(|n| flag(command, &format!("--{n}")).is_some());
            (!given).then(|| format!("--{}={value}", f.long))
        })
        .collect()
}

/// The worker's command line as its help lists it, to read the values of: its own flags
/// (taking a value or not as the help shows), the telemetry flags by `TelemetryArgs`' own
/// parser (the help must list them all: the worker flattens them in); any other flag is
/// refused.
fn worker_cli(flags: &[HelpFlag]) -> ClapCommand {
    let telemetry = TelemetryArgs::augment_args(ClapCommand::new("telemetry"));
    let telemetry: BTreeSet<&str> = telemetry
        .get_arguments()
        .filter_map(Arg::get_long)
        .collect();
    for long in &telemetry {
        assert!(
            flags.iter().any(|f| f.long == *long),
            "lgaf-worker --help lists no --{long}, a telemetry flag: {flags:?}"
        );
    }
    // clap (without its `string` feature) names flags with static strings.
    let name = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
    let mut command = ClapCommand::new("lgaf-worker");
    for flag in flags {
        if ["help", "version"].contains(&flag.long.as_str()) || telemetry.contains(&*flag.long) {
            continue;
        }
        let action = if flag.takes_value {
            ArgAction::Set
        } else {
            ArgAction::SetTrue
        };
        let mut arg = Arg::new(name(&flag.long))
            .long(name(&flag.long))
            .action(action);
        for alias in &flag.aliases {
            arg = arg.alias(name(alias));
        }
        command = command.arg(arg);
    }
    TelemetryArgs::augment_args(command)
}

#[test]
fn the_built_worker_judges_its_arguments_before_its_help() {
    // What `worker_takes` relies on: with a trailing --help, lgaf-worker still refuses what
    // it would refuse at start, and takes what it would take.
    let owned = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let good = [
        "--slot=0",
        "--metrics-listen=0.0.0.0:9464",
        "--otlp-protocol=grpc",
    ];
    worker_takes(&owned(&good)).unwrap_or_else(|e| panic!("{e}"));
    let bad: [(&[&str], &str); 6] = [
        (&["--no-such-flag=1"], "unexpected argument"),
        (&["stray"], "unexpected argument"),
        (&["--slot=zero"], "invalid value"),
        (&["--metrics-listen=9464"], "invalid value"),
        (&["--log-format=xml"], "invalid value"),
        (&["--slot=0", "--slot=1"], "cannot be used multiple times"),
    ];
    for (args, says) in bad {
        match worker_takes(&owned(args)) {
            Ok(()) => panic!("lgaf-worker took {args:?}"),
            Err(e) => assert!(e.contains(says), "{args:?}: not '{says}':\n{e}"),
        }
    }

    // Its help's flags: the ones the compose example gives, with their variables.
    let flags = worker_help_flags();
    for (long, var) in [
        ("slot", "LGAF_SLOT"),
        ("collective-bind", "LGAF_COLLECTIVE_BIND"),
        ("metrics-listen", "LGAF_METRICS_LISTEN"),
        ("otlp-protocol", "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ] {
        let flag = flags.iter().find(|f| f.long == long);
        let flag = flag.unwrap_or_else(|| panic!("no --{long} in {flags:?}"));
        assert!(
            flag.takes_value && flag.env.as_deref() == Some(var),
            "{flag:?}"
        );
    }
    let env = BTreeMap::from([("LGAF_SLOT".to_string(), "1".to_string())]);
    assert!(flags_from_env(&flags, &owned(&["--slot=0"]), &env).is_empty());
    assert_eq!(flags_from_env(&flags, &[], &env), ["--slot=1"]);

    // How help lines read, in the two layouts clap prints.
    let sample = "Usage: x [OPTIONS]\n\nOptions:\n      --local-ranks <N>\n          Ranks \
                  [env: LGAF_LOCAL_RANKS=] [default: 1] [alias: --gpus-per-node]\n  -q, --quiet  \
                  Less [aliases: --silent, --hush]\n  -h, --help\n          Print help\n";
    let parsed: Vec<_> = help_flags(sample)
        .into_iter()
        .map(|f| (f.long, f.aliases, f.takes_value, f.env))
        .collect();
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        parsed,
        [
            (
                "local-ranks".to_string(),
                strings(&["gpus-per-node"]),
                true,
                Some("LGAF_LOCAL_RANKS".to_string())
            ),
            (
                "quiet".to_string(),
                strings(&["silent", "hush"]),
                false,
                None
            ),
            ("help".to_string(), vec![], false, None),
        ]
    );
}

/// Every environment variable an LGAF service is given must be read by the binaries: an S3
/// setting the store documents, or a name the sources spell out.
fn check_env_names(name: &str, env: &BTreeMap<String, String>) {
    let mut sources = Vec::new();
    for dir in ["coordinator/src", "worker/src", "proto/src", "crates"] {
        files_under(&repo_root().join(dir), &mut sources);
    }
    let sources: String = sources
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter(|p| !p.components().any(|c| c.as_os_str() == "tests"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for key in env.keys() {
        if key.starts_with("AWS_") {
            assert!(
                AWS_SETTINGS.contains(&key.as_str()),
                "{name}: {key} is no S3 setting of the store"
            );
        } else {
            assert!(
                sources.contains(&format!("\"{key}\"")),
                "{name}: no binary reads {key}"
            );
        }
    }
}

#[test]
fn compose_runs_the_binaries_with_flags_and_settings_they_accept() {
    let config = compose_config(&[COMPOSE]);
    let services = services(&config);
    let prometheus = yaml("deploy/compose/prometheus.yml");
    let mut scraped: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for job in prometheus["scrape_configs"].as_array().unwrap() {
        let targets = scraped
            .entry(job["job_name"].as_str().unwrap().to_string())
            .or_default();
        for sc in job["static_configs"].as_array().unwrap() {
            for t in sc["targets"].as_array().unwrap() {
                targets.insert(t.as_str().unwrap().to_string());
            }
        }
    }

    // The S3 server, its credentials and the bucket made for the store.
    let s3_env = env_of(&services["s3"]);
    let bucket_cmd = command_of(&services["s3-bucket"]);
    assert_eq!(bucket_cmd[0], "mb");
    let bucket = bucket_cmd
        .last()
        .unwrap()
        .strip_prefix("s3/")
        .expect("mb s3/<bucket>")
        .to_string();
    let mc_host = env_of(&services["s3-bucket"])["MC_HOST_s3"].clone();
    assert_eq!(
        mc_host,
        format!(
            "http://{}:{}@s3:9000",
            s3_env["MINIO_ROOT_USER"], s3_env["MINIO_ROOT_PASSWORD"]
        )
    );

    // The collector's OTLP/gRPC receiver.
    let collector = yaml("deploy/compose/otel-collector.yaml");
    let otlp_grpc = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        .as_str()
        .unwrap();

    let worker_flags = worker_help_flags();
    let mut tokens = BTreeSet::new();
    let mut slots = BTreeSet::new();
    let mut workers = Vec::new();
    let mut coordinator = None;
    for (name, service) in services {
        let Some(binary) = image_binary(name, service) else {
            continue;
        };
        let command = command_of(service);
        let env = env_of(service);
        check_env_names(name, &env);

        // Both processes: the job token, the store's S3 settings, OTLP to the collector.
        let token = env
            .get("LGAF_JOB_TOKEN")
            .unwrap_or_else(|| panic!("{name}: no LGAF_JOB_TOKEN"));
        lgaf_proto::auth::JobToken::new(token)
            .unwrap_or_else(|e| panic!("{name}: LGAF_JOB_TOKEN is refused: {e}"));
        tokens.insert(token.clone());
        assert_eq!(
            env["AWS_ACCESS_KEY_ID"], s3_env["MINIO_ROOT_USER"],
            "{name}"
        );
        assert_eq!(
            env["AWS_SECRET_ACCESS_KEY"], s3_env["MINIO_ROOT_PASSWORD"],
            "{name}"
        );
        assert_eq!(
            host_port(&env["AWS_ENDPOINT_URL"]),
            ("s3".to_string(), 9000),
            "{name}"
        );
        let otlp = &env["OTEL_EXPORTER_OTLP_ENDPOINT"];
        assert_eq!(host_port(otlp).0, "otel-collector", "{name}: {otlp}");
        assert_eq!(host_port(otlp).1, host_port(otlp_grpc).1, "{name}: {otlp}");
        assert_eq!(env["OTEL_EXPORTER_OTLP_PROTOCOL"], "grpc", "{name}");
        // Prometheus scrapes each under the job named after its binary, at its host name.
        let metrics_job = binary.as_str();
        let metrics_host = name;
        assert!(
            scraped.contains_key(metrics_job),
            "no Prometheus job {metrics_job}: {scraped:?}"
        );

        match binary.as_str() {
            "lgaf-coordinator" => {
                // The coordinator's own parser and checks, the training config read from
                // where the container mounts it.
                let mounts = binds(service);
                let argv: Vec<String> = std::iter::once("lgaf-coordinator".to_string())
                    .chain(command.iter().map(|arg| match arg.split_once('=') {
                        Some((k, v)) if mounts.contains_key(v) => {
                            format!("{k}={}", mounts[v].display())
                        }
                        _ => arg.clone(),
                    }))
                    .collect();
                let args = CoordinatorArgs::try_parse_from(&argv)
                    .unwrap_or_else(|e| panic!("lgaf-coordinator refuses {argv:?}:\n{e}"));
                let metrics = args
                    .telemetry
                    .metrics_listen
                    .expect("coordinator: no --metrics-listen");
                let settings = CoordinatorConfig::from_args(args)
                    .unwrap_or_else(|e| panic!("lgaf-coordinator refuses {argv:?}: {e}"));
                assert!(
                    !settings.config_toml.is_empty(),
                    "coordinator: an empty --config"
                );
                assert!(
                    matches!(settings.local_workers, LocalWorkers::Never),
                    "coordinator: it would start workers itself, and its image has none"
                );
                assert_eq!(
                    settings.listen.ip().to_string(),
                    "0.0.0.0",
                    "coordinator: --listen"
                );
                let store = lgaf_store::Store::from_url_with_env(
                    &settings.store_url,
                    &env.clone().into_iter().collect(),
                );
                assert!(
                    store.is_ok(),
                    "coordinator: the store refuses {}: {:?}",
                    settings.store_url,
                    store.err()
                );
                assert!(
                    settings.store_url.starts_with(&format!("s3://{bucket}/")),
                    "coordinator: --store {} is not in the bucket s3-bucket makes ({bucket})",
                    settings.store_url
                );
                let published: Vec<u64> = service["ports"]
                    .as_array()
                    .map(|ports| ports.iter().filter_map(|p| p["target"].as_u64()).collect())
                    .unwrap_or_default();
                assert!(
                    published.contains(&u64::from(settings.listen.port())),
                    "coordinator: {published:?}"
                );
                assert!(
                    scraped[metrics_job].contains(&format!("{metrics_host}:{}", metrics.port())),
                    "Prometheus does not scrape the coordinator's {metrics}: {scraped:?}"
                );
                coordinator = Some((settings.workers, settings.listen.port()));
            }
            "lgaf-worker" => {
                // The built worker takes the command line, and the values its environment
                // gives its flags.
                let mut args = command.clone();
                args.extend(flags_from_env(&worker_flags, &command, &env));
                worker_takes(&args)
                    .unwrap_or_else(|e| panic!("{name}: lgaf-worker refuses {args:?}:\n{e}"));
                // The values of the command line, read as its help lists its flags.
                let argv: Vec<String> = std::iter::once("lgaf-worker".to_string())
                    .chain(command.iter().cloned())
                    .collect();
                let matches = worker_cli(&worker_flags)
                    .try_get_matches_from(&argv)
                    .unwrap_or_else(|e| panic!("lgaf-worker --help lists no {argv:?}:\n{e}"));
                let telemetry = TelemetryArgs::from_arg_matches(&matches)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let get = |flag: &str| matches.get_one::<String>(flag).cloned();
                let slot: u32 = get("slot").expect("no --slot").parse().expect("--slot");
                assert!(slots.insert(slot), "{name}: slot {slot} twice");
                let device = get("device").unwrap_or_else(|| "cpu".into());
                assert!(
                    device == "cpu" || device.starts_with("cuda:"),
                    "{name}: --device {device}"
                );
                assert_eq!(
                    get("collective-host").as_deref(),
                    Some(name.as_str()),
                    "{name}"
                );
                let bind = get("collective-bind").expect("no --collective-bind");
                assert!(
                    bind.parse::<std::net::SocketAddr>().is_ok(),
                    "{name}: {bind}"
                );
                let metrics = telemetry
                    .metrics_listen
                    .expect("worker: no --metrics-listen");
                assert!(
                    scraped[metrics_job].contains(&format!("{metrics_host}:{}", metrics.port())),
                    "Prometheus does not scrape {name}'s {metrics}: {scraped:?}"
                );
                workers.push((name.clone(), get("coordinator").expect("no --coordinator")));
            }
            other => panic!("{name} runs {other}, which this test does not know"),
        }
    }
    let (world, port) = coordinator.expect("no coordinator service");
    assert_eq!(
        world as usize,
        workers.len(),
        "--workers and the worker services"
    );
    assert_eq!(slots, (0..world).collect(), "the workers' slots");
    for (name, url) in &workers {
        assert_eq!(
            host_port(url),
            ("coordinator".to_string(), port),
            "{name}: --coordinator {url}"
        );
    }
    assert_eq!(tokens.len(), 1, "the services have different job tokens");
    for (job, targets) in &scraped {
        for target in targets {
            let host = target.split(':').next().unwrap();
            assert!(
                services.contains_key(host),
                "Prometheus job {job} scrapes {target}: no such service"
            );
        }
    }
}

#[test]
fn compose_mounts_only_files_of_the_repository() {
    let config = compose_config(&[COMPOSE, COMPOSE_GPU]);
    let root = repo_root().canonicalize().unwrap();
    let mut mounted = 0;
    for (name, service) in services(&config) {
        for (target, source) in binds(service) {
            assert!(
                source.is_file(),
                "{name}: {target} is bound to {}, which is no file",
                source.display()
            );
            let source = source.canonicalize().unwrap();
            assert!(
                source.starts_with(&root),
                "{name}: {} is outside the repository",
                source.display()
            );
            mounted += 1;
        }
    }
    assert!(mounted >= 7, "{mounted} files mounted");
    // The training config the coordinator hands out is TOML with the sections the workers
    // read.
    let train: toml::Table = read("deploy/compose/train.toml").parse().unwrap();
    for section in ["model", "data", "train", "optim", "checkpoint"] {
        assert!(
            train.contains_key(section),
            "deploy/compose/train.toml has no [{section}]"
        );
    }
}
