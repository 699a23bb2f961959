//! [`Config`]: everything the coordinator process runs with, typed and checked together.
//! [`Config::from_args`] is the one place the command line is checked beyond clap's range of
//! each flag: flags against each other, the run id, the listen address, and the files they
//! name (the training configuration, the job token, the TLS certificate and key).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lgaf_proto::auth::{JobToken, TokenError};
use lgaf_proto::tls::{self, ClientTlsFiles, IdentityFiles, TlsError};
use sha2::{Digest, Sha256};
use tonic::transport::ServerTlsConfig;

use super::address::parse_listen;
use super::args::Args;
use crate::local::default_worker_bin;

/// The coordinator's settings; see [`Args`] for what each means to a user.
#[derive(Clone, Debug)]
pub struct Config {
    /// `--workers`: the world size, the most ranks a generation has, and the data shards of
    /// every global batch.
    pub workers: u32,
    /// The fewest ranks a generation may continue with (at most `workers`).
    pub min_workers: u32,
    /// How long an elastic job waits for the full `workers` before continuing with fewer.
    pub elastic_grace: Duration,
    /// The training configuration handed to every worker; its TOML syntax is checked, its
    /// keys are the workers' business. Empty: the workers' defaults.
    pub config_toml: String,
    /// `--store` as given (the store resolves relative paths when it opens).
    pub store_url: String,
    /// The run's name in the store: `--run-id`, or [`default_run_id`].
    pub run_id: String,
    /// The job's name; workers that ask for another are refused.
    pub job_id: String,
    /// 0: the configuration's schedule.
    pub max_steps: u64,
    pub listen: SocketAddr,
    /// When workers are started on this machine.
    pub local_workers: LocalWorkers,
    pub worker_bin: PathBuf,
    pub heartbeat_interval: Duration,
    /// At least three heartbeat intervals.
    pub heartbeat_deadline: Duration,
    pub collective_timeout: Duration,
    /// The token workers must present; `None`: requests are not authenticated.
    pub token: Option<JobToken>,
    /// Serve over TLS.
    pub tls: Option<Tls>,
    /// How long the run's coordinator lease lasts without renewal.
    pub lease: Duration,
    pub max_restarts: u32,
    pub max_requests_per_sec: u32,
    /// How long local workers get between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// The longest a blocking Join or GetNcclId waits before the worker calls again.
    pub long_poll: Duration,
    /// How long after the job ended the health service answers NOT_SERVING, at least,
    /// before the server stops.
    pub health_linger: Duration,
    /// After the job ended, serve its status until a signal instead of exiting.
    pub keep_serving: bool,
}

/// When the coordinator starts workers on its own machine (`lgaf-worker` processes it
/// supervises), rather than waiting for them to register from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalWorkers {
    /// At once (`--spawn-local`).
    Now,
    /// When no worker has registered from outside within this long (`--grace-secs`).
    AfterGrace(Duration),
    /// Never: they all come from outside (`--external-workers`).
    Never,
}

/// The coordinator's TLS identity, and what its local workers verify it with and present
/// to it.
#[derive(Clone, Debug)]
pub struct Tls {
    /// With the client CA of mutual TLS when `--tls-client-ca` is given.
    pub server: ServerTlsConfig,
    /// For the spawned workers: `--tls-ca`, else the certificate itself (self-signed), and
    /// under mutual TLS `--tls-worker-cert` and `--tls-worker-key`.
    pub workers: ClientTlsFiles,
}

/// A command line that does not make a coordinator; the message names the flag or file
/// and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--min-workers {min_workers} is more than --workers {workers}")]
    MinWorkersAboveWorkers { min_workers: u32, workers: u32 },

    #[error(
        "--heartbeat-deadline-ms {deadline_ms} must be at least three heartbeat intervals \
         (--heartbeat-ms {interval_ms}), or one late heartbeat fails the job"
    )]
    HeartbeatDeadlineTooShort { deadline_ms: u32, interval_ms: u32 },

    #[error("reading the configuration {}: {source}", path.display())]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} is not valid TOML: {source}", path.display())]
    ConfigNotToml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },

    #[error(
        "--run-id {id:?}: use 1 to 128 letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    RunId { id: String },

    #[error("--listen: expected HOST:PORT (an IP address) or PORT, got {text:?}")]
    Listen { text: String },

    #[error(transparent)]
    Token(#[from] TokenError),

    #[error(transparent)]
    Tls(#[from] TlsError),

    #[error(
        "--tls-client-ca refuses workers without a certificate from that CA, so the workers \
         this coordinator spawns need one: give --tls-worker-cert and --tls-worker-key, or \
         --external-workers when every worker comes from outside"
    )]
    NoWorkerCertificate,
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, ConfigError> {
        Config::from_args(args)
    }
}

impl Config {
    /// Checks the command line and reads the files it names. Without `--token-file` the
    /// token comes from `LGAF_JOB_TOKEN`, else is made up when the coordinator spawns its
    /// workers (`--spawn-local`).
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let min_workers = args.min_workers.unwrap_or(args.workers);
        if min_workers > args.workers {
            return Err(ConfigError::MinWorkersAboveWorkers {
                min_workers,
                workers: args.workers,
            });
        }
        if args.heartbeat_deadline_ms < args.heartbeat_ms.saturating_mul(3) {
            return Err(ConfigError::HeartbeatDeadlineTooShort {
                deadline_ms: args.heartbeat_deadline_ms,
                interval_ms: args.heartbeat_ms,
            });
        }
        let config_toml = match &args.config {
            Some(path) => read_training_config(path)?,
            None => String::new(),
        };
        let run_id = match args.run_id {
            Some(id) => id,
            None => default_run_id(&config_toml, unix_secs()),
        };
        check_run_id(&run_id)?;
        let listen = parse_listen(&args.listen).ok_or(ConfigError::Listen { text: args.listen })?;
        let local_workers = if args.spawn_local {
            LocalWorkers::Now
        } else if args.external_workers {
            LocalWorkers::Never
        } else {
            LocalWorkers::AfterGrace(Duration::from_secs(args.grace_secs))
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let identity = match (&args.tls_worker_cert, &args.tls_worker_key) {
                    (Some(cert), Some(key)) => Some(IdentityFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                    }),
                    _ => None,
                };
                if args.tls_client_ca.is_some()
                    && identity.is_none()
                    && local_workers != LocalWorkers::Never
                {
                    return Err(ConfigError::NoWorkerCertificate);
                }
                Some(Tls {
                    server: tls::server_config(cert, key, args.tls_client_ca.as_deref())?,
                    workers: ClientTlsFiles {
                        ca: Some(args.tls_ca.clone().unwrap_or_else(|| cert.clone())),
                        identity,
                    },
                })
            }
            // Clap requires the two together.
            _ => None,
        };
        let token = job_token(args.token_file.as_deref(), args.spawn_local)?;
        Ok(Config {
            workers: args.workers,
            min_workers,
            elastic_grace: Duration::from_secs_f64(args.elastic_grace_secs),
            config_toml,
            store_url: args.store,
            job_id: args.job_id.unwrap_or_else(|| run_id.clone()),
            run_id,
            max_steps: args.max_steps,
            listen,
            local_workers,
            worker_bin: args.worker_bin.unwrap_or_else(default_worker_bin),
            heartbeat_interval: Duration::from_millis(args.heartbeat_ms.into()),
            heartbeat_deadline: Duration::from_millis(args.heartbeat_deadline_ms.into()),
            collective_timeout: Duration::from_millis(args.collective_timeout_ms.into()),
            token,
            tls,
            lease: Duration::from_secs(args.lease_secs),
            max_restarts: args.max_restarts,
            max_requests_per_sec: args.max_requests_per_sec,
            stop_timeout: Duration::from_secs(args.stop_timeout_secs),
            long_poll: Duration::from_secs(args.long_poll_secs),
            health_linger: Duration::from_millis(args.health_linger_ms.into()),
            keep_serving: args.keep_serving,
        })
    }
}

/// The training configuration's text, if it is TOML.
fn read_training_config(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|source| ConfigError::ConfigNotToml {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(text)
}

/// The token from `token_file`, else `LGAF_JOB_TOKEN`, else a fresh one for workers this
/// coordinator spawns itself, else none.
fn job_token(token_file: Option<&Path>, spawn_local: bool) -> Result<Option<JobToken>, TokenError> {
    if let Some(path) = token_file {
        return JobToken::from_file(path).map(Some);
    }
    match JobToken::from_env()? {
        Some(token) => Ok(Some(token)),
        None if spawn_local => JobToken::generate().map(Some),
        None => Ok(None),
    }
}

/// Run ids become folder names and object-key prefixes: 1 to 128 ASCII letters, digits,
/// `-`, `_` or `.`, not starting with `.`.
pub fn check_run_id(id: &str) -> Result<(), ConfigError> {
    if lgaf_store::is_valid_run_id(id) {
        Ok(())
    } else {
        Err(ConfigError::RunId { id: id.to_string() })
    }
}

/// `run-<first 8 hex digits of the config's SHA-256>-<UTC start time>`: each invocation a
/// new run, named after what it trains.
pub fn default_run_id(config_toml: &str, started_unix_secs: u64) -> String {
    let hash = Sha256::digest(config_toml.as_bytes());
    let hex: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let started = lgaf_store::time::Utc::from_unix(started_unix_secs).compact();
    format!("run-{hex}-{started}")
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["lgaf-coordinator", "--workers", "2"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn run_ids() {
        // SHA-256 of "" starts e3b0c442.
        assert_eq!(default_run_id("", 0), "run-e3b0c442-19700101-000000");
        let id = default_run_id("[train]\n", 1_732_350_245);
        assert!(
            id.starts_with("run-") && id.ends_with("-20241123-082405"),
            "{id}"
        );
        assert_eq!(id.len(), "run-12345678-20241123-082405".len());
        assert_ne!(id, default_run_id("[train]\nlr = 0.1\n", 1_732_350_245));
        check_run_id(&id).unwrap();
        check_run_id(&"a".repeat(128)).unwrap();
        check_run_id("v1.2_b-3").unwrap();
        for bad in ["", ".hidden", "a/b", "a b", "../x", "é", &"a".repeat(129)] {
            let e = check_run_id(bad).unwrap_err();
            assert!(
                matches!(&e, ConfigError::RunId { id } if id == bad),
                "{e:?}"
            );
            assert!(e
                .to_string()
                .starts_with(&format!("--run-id {bad:?}: use 1 to 128")));
        }
    }

    #[test]
    fn defaults_become_typed_settings() {
        let config = Config::from_args(args(&["--run-id", "r1", "--token-file", "/nonexistent"]));
        // The token file is read: a missing one names itself.
        let e = config.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("reading the job token file /nonexistent: "),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let token = token.to_str().unwrap();
        let config = Config::from_args(args(&["--run-id", "r1", "--token-file", token])).unwrap();
        assert_eq!((config.workers, config.min_workers), (2, 2));
        assert_eq!(
            (config.run_id.as_str(), config.job_id.as_str()),
            ("r1", "r1")
        );
        assert_eq!(config.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(config.store_url, "runs-store");
        assert_eq!(config.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(config.heartbeat_deadline, Duration::from_secs(20));
        assert_eq!(config.collective_timeout, Duration::from_secs(300));
        assert_eq!(config.elastic_grace, Duration::from_secs(60));
        assert_eq!(config.lease, Duration::from_secs(30));
        assert_eq!(
            config.local_workers,
            LocalWorkers::AfterGrace(Duration::from_secs(3))
        );
        assert!(!config.keep_serving);
        assert_eq!(config.stop_timeout, Duration::from_secs(10));
        assert_eq!(config.long_poll, Duration::from_secs(30));
        assert_eq!(config.health_linger, Duration::from_secs(1));
        assert_eq!(config.token.as_ref().map(JobToken::expose), Some("s3cret"));
        assert!(config.tls.is_none() && config.config_toml.is_empty());
        assert!(config.worker_bin.ends_with("lgaf-worker"));

        let config = Config::from_args(args(&[
            "--job-id",
            "j",
            "--listen",
            "7000",
            "--elastic-grace-secs",
            "0.25",
            "--min-workers",
            "1",
            "--health-linger-ms",
            "0",
            "--token-file",
            token,
        ]))
        .unwrap();
        assert!(
            config.run_id.starts_with("run-e3b0c442-"),
            "{}",
            config.run_id
        );
        assert_eq!(config.job_id, "j");
        assert_eq!(config.listen, "0.0.0.0:7000".parse().unwrap());
        assert_eq!(config.elastic_grace, Duration::from_millis(250));
        assert_eq!(config.min_workers, 1);
        assert_eq!(config.health_linger, Duration::ZERO);
    }

    #[test]
    fn local_workers_start_now_after_the_grace_or_never() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t0ken").unwrap();
        let local = |extra: &[&str]| {
            let mut all = vec!["--token-file", token.to_str().unwrap()];
            all.extend_from_slice(extra);
            Config::from_args(args(&all)).unwrap()
        };
        assert_eq!(local(&["--spawn-local"]).local_workers, LocalWorkers::Now);
        assert_eq!(
            local(&["--grace-secs", "0"]).local_workers,
            LocalWorkers::AfterGrace(Duration::ZERO)
        );
        let cluster = local(&["--external-workers", "--keep-serving"]);
        assert_eq!(cluster.local_workers, LocalWorkers::Never);
        assert!(cluster.keep_serving);
        let both = ["lgaf-coordinator", "--workers", "1"];
        let both = [&both[..], &["--spawn-local", "--external-workers"]].concat();
        let e = Args::try_parse_from(both).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn flags_are_checked_together() {
        let refused = |extra: &[&str]| Config::from_args(args(extra)).unwrap_err().to_string();
        assert_eq!(
            refused(&["--min-workers", "3"]),
            "--min-workers 3 is more than --workers 2"
        );
        assert_eq!(
            refused(&["--heartbeat-ms", "1000", "--heartbeat-deadline-ms", "2999"]),
            "--heartbeat-deadline-ms 2999 must be at least three heartbeat intervals \
             (--heartbeat-ms 1000), or one late heartbeat fails the job"
        );
        assert_eq!(
            refused(&["--listen", "localhost:1"]),
            "--listen: expected HOST:PORT (an IP address) or PORT, got \"localhost:1\""
        );
        assert!(refused(&["--run-id", "../x"]).starts_with("--run-id \"../x\""));
    }

    #[test]
    fn named_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        std::fs::write(path("train.toml"), "[train]\nlr = 0.1\n").unwrap();
        std::fs::write(path("bad.toml"), "[train\n").unwrap();
        std::fs::write(path("token"), "t0ken").unwrap();
        std::fs::write(path("cert.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
        std::fs::write(path("key.pem"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
        std::fs::write(path("key.der"), [0x30, 0x82]).unwrap();
        let with = |extra: &[&str]| {
            let token = path("token");
            let mut all = vec!["--token-file", token.as_str()];
            all.extend_from_slice(extra);
            Config::from_args(args(&all))
        };

        let config = with(&["--config", &path("train.toml")]).unwrap();
        assert_eq!(config.config_toml, "[train]\nlr = 0.1\n");
        let e = with(&["--config", &path("bad.toml")]).unwrap_err();
        assert!(matches!(e, ConfigError::ConfigNotToml { .. }), "{e:?}");
        assert!(e.to_string().contains("bad.toml is not valid TOML"), "{e}");
        let e = with(&["--config", &path("none.toml")]).unwrap_err();
        assert!(
            e.to_string().starts_with("reading the configuration "),
            "{e}"
        );

        let tls = [
            "--tls-cert",
            &path("cert.pem"),
            "--tls-key",
            &path("key.pem"),
        ];
        let config = with(&tls).unwrap();
        assert_eq!(
            config.tls.unwrap().workers,
            ClientTlsFiles {
                ca: Some(dir.path().join("cert.pem")),
                identity: None
            }
        );
        let config = with(&[&tls[..], &["--tls-ca", &path("token")]].concat()).unwrap();
        assert_eq!(
            config.tls.unwrap().workers.ca,
            Some(dir.path().join("token"))
        );

        // Mutual TLS: the workers it spawns get a certificate, or it has none to spawn.
        let client_ca = ["--tls-client-ca", &path("cert.pem")];
        let worker = [
            "--tls-worker-cert",
            &path("cert.pem"),
            "--tls-worker-key",
            &path("key.pem"),
        ];
        let config = with(&[&tls[..], &client_ca, &worker].concat()).unwrap();
        assert_eq!(
            config.tls.unwrap().workers.identity,
            Some(IdentityFiles {
                cert: dir.path().join("cert.pem"),
                key: dir.path().join("key.pem"),
            })
        );
        let e = with(&[&tls[..], &client_ca].concat()).unwrap_err();
        assert!(matches!(e, ConfigError::NoWorkerCertificate), "{e:?}");
        assert!(e.to_string().contains("--tls-worker-cert"), "{e}");
        let config = with(&[&tls[..], &client_ca, &["--external-workers"]].concat()).unwrap();
        assert_eq!(config.tls.unwrap().workers.identity, None);
        let bad_ca = ["--tls-client-ca", &path("key.der"), "--external-workers"];
        let e = with(&[&tls[..], &bad_ca].concat()).unwrap_err();
        assert!(e.to_string().contains("client CA certificate"), "{e}");
        let e = with(&[
            "--tls-cert",
            &path("cert.pem"),
            "--tls-key",
            &path("key.der"),
        ])
        .unwrap_err();
        assert!(
            matches!(e, ConfigError::Tls(TlsError::NotPem { what: "key", .. })),
            "{e:?}"
        );
        assert!(e.to_string().contains("key.der is not PEM"), "{e}");
    }
}
