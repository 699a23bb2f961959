//! The command line of `lgaf-coordinator`. Clap checks each flag on its own (its range, so
//! that a bad value exits with status 2 and the usage); [`Config`](super::Config) checks
//! them together and reads what they name.

use std::path::PathBuf;

use clap::Parser;
use lgaf_telemetry::TelemetryArgs;

/// Coordinates a data-parallel LGAF training job: workers register over gRPC, get their
/// rank, shards and checkpoint steps, and report progress; checkpoints are committed once
/// every rank has uploaded its part.
///
/// On one machine, `lgaf-coordinator --workers 2 --config train.toml` starts the workers
/// itself when none registers from outside within --grace-secs.
#[derive(Parser, Debug, Clone)]
#[command(name = "lgaf-coordinator", version)]
pub struct Args {
    /// Number of workers (the world size): one per GPU, or CPU processes. Every global
    /// batch is cut into this many data shards, whatever the ranks of a generation. With
    /// --min-workers it is the most ranks a generation has, hence its alias.
    #[arg(long, env = "LGAF_WORKERS", visible_alias = "max-workers", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub workers: u32,

    /// Elastic: continue with as few as this many workers when lost ones are not replaced
    /// within --elastic-grace-secs (ranks then hold several data shards: the same global
    /// batch, steps and learning rate), and grow back at the next checkpoint when workers
    /// join. Default: --workers (a lost worker must be replaced).
    #[arg(long, env = "LGAF_MIN_WORKERS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub min_workers: Option<u32>,

    /// How long a job with --min-workers waits for the full --workers after losing one
    /// before it continues with fewer, in seconds (at most a day).
    #[arg(long, env = "LGAF_ELASTIC_GRACE_SECS", value_name = "SECS", default_value_t = 60.0, value_parser = wait_secs)]
    pub elastic_grace_secs: f64,

    /// Training configuration (TOML), handed to every worker as is; the workers apply
    /// their LGAF__SECTION__KEY environment overrides. Without it, the workers' defaults.
    #[arg(long, env = "LGAF_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where checkpoints and the job state go: file:///abs/dir, a directory path (relative
    /// to the current directory), or s3://bucket/prefix configured by the AWS_* environment
    /// variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL,
    /// AWS_ALLOW_HTTP, ...), which the workers need too.
    #[arg(
        long,
        env = "LGAF_STORE",
        value_name = "URL",
        default_value = "runs-store"
    )]
    pub store: String,

    /// The run's name in the store (runs/<RUN_ID>/...). The run id of an earlier run
    /// resumes it from its newest committed checkpoint. Default: derived from the
    /// configuration's hash and the start time, so each invocation is a new run.
    #[arg(long, env = "LGAF_RUN_ID", value_name = "ID")]
    pub run_id: Option<String>,

    /// The job's name; workers that ask for another job are refused. Default: the run id.
    #[arg(long, env = "LGAF_JOB_ID", value_name = "ID")]
    pub job_id: Option<String>,

    /// Stop after this many steps (0: the configuration's schedule).
    #[arg(long, env = "LGAF_MAX_STEPS", value_name = "S", default_value_t = 0)]
    pub max_steps: u64,

    /// Address for the gRPC service: HOST:PORT, or a bare PORT for all interfaces.
    /// Port 0 picks a free port; the address is printed on stdout.
    #[arg(
        long,
        env = "LGAF_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:0"
    )]
    pub listen: String,

    /// Start the workers on this machine right away (otherwise only when none has
    /// registered from outside within --grace-secs).
    #[arg(long, env = "LGAF_SPAWN_LOCAL")]
    pub spawn_local: bool,

    /// Never start workers on this machine: they all come from outside (a Kubernetes Job,
    /// other machines), however long that takes.
    #[arg(long, env = "LGAF_EXTERNAL_WORKERS", conflicts_with = "spawn_local")]
    pub external_workers: bool,

    /// Once the job has ended, keep answering status calls (`lgaf status`) and health
    /// probes (NOT_SERVING) until SIGTERM or SIGINT, instead of exiting: for a Kubernetes
    /// Deployment, which would restart a coordinator that exits. The exit status is then
    /// still the job's.
    #[arg(long, env = "LGAF_KEEP_SERVING")]
    pub keep_serving: bool,

    /// The worker executable for local workers. Default: lgaf-worker beside this one.
    #[arg(long, env = "LGAF_WORKER_BIN", value_name = "PATH")]
    pub worker_bin: Option<PathBuf>,

    /// Seconds to wait for workers from outside before starting local ones (at most a day).
    #[arg(long, env = "LGAF_GRACE_SECS", value_name = "SECS", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(0..=MAX_WAIT_SECS))]
    pub grace_secs: u64,

    /// How often workers send heartbeats, in milliseconds.
    #[arg(long, env = "LGAF_HEARTBEAT_MS", value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(10..))]
    pub heartbeat_ms: u32,

    /// A worker not heard from for this long (milliseconds) is lost: its generation ends
    /// and restarts without it (see --max-restarts). Workers stop when the coordinator has
    /// not answered them for as long.
    #[arg(long, env = "LGAF_HEARTBEAT_DEADLINE_MS", value_name = "MS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u32).range(100..))]
    pub heartbeat_deadline_ms: u32,

    /// Collective operation timeout handed to the workers, in milliseconds.
    #[arg(long, env = "LGAF_COLLECTIVE_TIMEOUT_MS", value_name = "MS", default_value_t = 300_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub collective_timeout_ms: u32,

    /// A file holding the job token every worker must present (e.g. a mounted Kubernetes
    /// secret); else $LGAF_JOB_TOKEN. With neither, a coordinator that spawns its workers
    /// (--spawn-local) makes a random one and hands it to them; otherwise requests are not
    /// authenticated (a warning says so).
    #[arg(long, env = "LGAF_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Serve over TLS with this certificate (PEM; with --tls-key). Workers then connect to
    /// https:// and verify it against their --tls-ca.
    #[arg(long, env = "LGAF_TLS_CERT", value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "LGAF_TLS_KEY", value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The CA certificate (PEM) spawned local workers verify --tls-cert against (default:
    /// --tls-cert itself, for a self-signed certificate).
    #[arg(long, env = "LGAF_TLS_CA", value_name = "PATH", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

    /// Mutual TLS: every worker (and any other client) must present a certificate signed by
    /// this CA (PEM), on top of the job token; others fail the handshake.
    #[arg(
        long,
        env = "LGAF_TLS_CLIENT_CA",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// The certificate (PEM, with --tls-worker-key) the workers this coordinator spawns
    /// present under --tls-client-ca.
    #[arg(
        long,
        env = "LGAF_TLS_WORKER_CERT",
        value_name = "PATH",
        requires_all = ["tls_worker_key", "tls_client_ca"]
    )]
    pub tls_worker_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-worker-cert.
    #[arg(
        long,
        env = "LGAF_TLS_WORKER_KEY",
        value_name = "PATH",
        requires = "tls_worker_cert"
    )]
    pub tls_worker_key: Option<PathBuf>,

    /// Seconds the run's coordinator lease lasts without renewal (it is renewed three
    /// times as often), at most a day. A coordinator started while another holds the run's
    /// lease waits for it to lapse, and refuses to start if it is being renewed.
    #[arg(long, env = "LGAF_LEASE_SECS", value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=MAX_WAIT_SECS))]
    pub lease_secs: u64,

    /// Times a generation may be restarted from the last checkpoint after losing a worker
    /// (a crash, a hang, an unreachable host) before the job fails.
    #[arg(long, env = "LGAF_MAX_RESTARTS", value_name = "N", default_value_t = 3)]
    pub max_restarts: u32,

    /// Requests a second one client address may make (in bursts of twice that); more are
    /// refused with RESOURCE_EXHAUSTED, and workers retry them after a pause. Callers with
    /// the job token and callers without it are counted apart, so unauthenticated traffic
    /// never slows the job's workers. Workers make a few a second each.
    #[arg(long, env = "LGAF_MAX_REQUESTS_PER_SEC", value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_requests_per_sec: u32,

    /// Seconds local workers get to exit after SIGTERM before they are killed (at most a
    /// day).
    #[arg(long, env = "LGAF_STOP_TIMEOUT_SECS", value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=MAX_WAIT_SECS))]
    pub stop_timeout_secs: u64,

    /// Longest wait of a blocking Join or GetNcclId before the worker is told to call
    /// again, in seconds (at most an hour).
    #[arg(long, env = "LGAF_LONG_POLL_SECS", value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub long_poll_secs: u64,

    /// Once the job has ended, the gRPC health service (grpc.health.v1, for Kubernetes
    /// probes) answers NOT_SERVING for at least this long, in milliseconds, before the
    /// server stops and the process exits (at most a minute; the shutdown's own waits count
    /// towards it, and a signal cuts it short). The default, Kubernetes' shortest probe
    /// period, lets a probe see the job end rather than only a refused connection.
    #[arg(long, env = "LGAF_HEALTH_LINGER_MS", value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(0..=60_000))]
    pub health_linger_ms: u32,

    /// Logs, traces and metrics: `--log-format`, `--otlp-endpoint`, `--metrics-listen`...
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// The longest wait any flag may ask for: a day. Longer ones are surely a typo, and the
/// bound keeps every `now + wait` (instants, lease expiry) far from overflowing.
pub const MAX_WAIT_SECS: u64 = 86_400;

/// Seconds, fractions allowed, from 0 to [`MAX_WAIT_SECS`] (clap's value parser, hence the
/// `String` error).
pub(crate) fn wait_secs(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.0..=MAX_WAIT_SECS as f64).contains(&secs) => Ok(secs),
        _ => Err(format!("expected seconds from 0 to {MAX_WAIT_SECS}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_workers_is_workers() {
        let args = Args::try_parse_from([
            "lgaf-coordinator",
            "--max-workers",
            "4",
            "--min-workers",
            "2",
        ])
        .unwrap();
        assert_eq!((args.workers, args.min_workers), (4, Some(2)));
        assert!(Args::try_parse_from(["lgaf-coordinator", "--workers", "0"]).is_err());
    }

    #[test]
    fn waits_are_bounded_seconds() {
        assert_eq!(wait_secs("0"), Ok(0.0));
        assert_eq!(wait_secs("2.5"), Ok(2.5));
        assert_eq!(wait_secs("86400"), Ok(86_400.0));
        for bad in ["86400.5", "-1", "1e300", "NaN", "inf", "", "3s"] {
            assert_eq!(
                wait_secs(bad),
                Err("expected seconds from 0 to 86400".to_string()),
                "{bad}"
            );
        }
    }

    #[test]
    fn waits_above_a_day_are_refused_by_the_parser() {
        for flag in ["--lease-secs", "--grace-secs", "--stop-timeout-secs"] {
            let refused =
                Args::try_parse_from(["lgaf-coordinator", "--workers", "1", flag, "86401"]);
            assert!(refused.is_err(), "{flag}");
        }
        let linger = |ms| {
            Args::try_parse_from([
                "lgaf-coordinator",
                "--workers",
                "1",
                "--health-linger-ms",
                ms,
            ])
        };
        assert_eq!(linger("60000").unwrap().health_linger_ms, 60_000);
        assert!(linger("60001").is_err());
    }
}
