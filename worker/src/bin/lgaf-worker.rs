//! `lgaf-worker`: one rank of a run coordinated by `lgaf-coordinator`. The coordinator
//! starts these itself with `--spawn-local`; on a cluster each pod runs one.

use std::process::ExitCode;

use clap::Parser;
use lgaf_proto::auth::JobToken;
use lgaf_proto::console::eprint_line;
use lgaf_telemetry::TelemetryArgs;
use lgaf_worker::coordinated::{self, WorkerArgs};
use lgaf_worker::progress::init_telemetry;

#[derive(Parser)]
#[command(version, about = "One rank of a coordinated LGAF training run")]
struct Cli {
    /// The coordinator's URL.
    #[arg(
        long,
        env = "LGAF_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// This worker's slot, 0..N (its rank order): a spawning coordinator assigns it; on
    /// Kubernetes, the pod ordinal. A restarted worker in the same slot takes its place.
    #[arg(long)]
    slot: Option<u32>,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Where this worker's CPU-collective listener binds (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    collective_bind: String,
    /// The host name or IP the other workers reach the listener at (default: the bind
    /// address's IP; on Kubernetes, the pod IP).
    #[arg(long, env = "LGAF_COLLECTIVE_HOST")]
    collective_host: Option<String>,
    /// A file holding the job's token (else $LGAF_JOB_TOKEN, which a spawning coordinator
    /// sets).
    #[arg(long, value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
    /// The CA certificate (PEM) that signed an https:// coordinator's certificate.
    #[arg(long, value_name = "PATH", env = "LGAF_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut telemetry = match init_telemetry("lgaf-worker", &cli.telemetry) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprint_line(format!("lgaf-worker: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let token = match &cli.token_file {
        Some(path) => JobToken::from_file(path).map(Some),
        None => JobToken::from_env(),
    };
    let token = match token {
        Ok(t) => t,
        Err(e) => {
            eprint_line(format!("lgaf-worker: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let args = WorkerArgs {
        coordinator: cli.coordinator,
        slot: cli.slot,
        device: cli.device,
        collective_bind: cli.collective_bind,
        collective_host: cli.collective_host,
        token,
        tls_ca: cli.tls_ca,
    };
    match coordinated::run(args, &mut telemetry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint_line(format!("lgaf-worker: {e}"));
            ExitCode::FAILURE
        }
    }
}
