//! `lgaf-worker`: one rank of a run coordinated by `lgaf-coordinator`, or, with
//! `--local-ranks N`, a node's N ranks (one per GPU) that it starts and supervises. The
//! coordinator starts these itself with `--spawn-local`; on a cluster each pod runs one.
//! The exit status follows the contract of `lgaf_proto::exit`.

use std::process::ExitCode;

use clap::Parser;
use lgaf_proto::console::eprint_line;
use lgaf_proto::exit::ExitClass;
use lgaf_telemetry::TelemetryArgs;
use lgaf_worker::coordinated::{self, WorkerArgs};
use lgaf_worker::coordinator_client::CoordinatorArgs;
use lgaf_worker::node::{self, NodeOutcome, RankLaunch, Supervision};
use lgaf_worker::progress::init_telemetry;

#[derive(Parser)]
#[command(
    version,
    about = "One rank of a coordinated LGAF training run, or a node's ranks"
)]
struct Cli {
    #[command(flatten)]
    connection: CoordinatorArgs,
    /// This worker's slot, 0..N (its rank order); with --local-ranks, the node's index (its
    /// ranks take slots N x index .. N x index + N - 1). Else $JOB_COMPLETION_INDEX (a
    /// Kubernetes Indexed Job), else a StatefulSet pod's ordinal, else the coordinator's
    /// choice. A restarted worker in the same slot takes its place.
    #[arg(long, env = "LGAF_SLOT")]
    slot: Option<u32>,
    /// `cpu`, `cuda` (with --local-ranks N, local rank r trains on cuda:r) or `cuda:N`.
    #[arg(long, env = "LGAF_DEVICE", default_value = "cpu")]
    device: String,
    /// Ranks to start on this node, one per GPU, each a process of its own supervised by
    /// this one (a rank that fails in a way worth retrying is started again in its slot).
    #[arg(long, visible_alias = "gpus-per-node", env = "LGAF_LOCAL_RANKS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    local_ranks: u32,
    /// Restarts of one local rank (with --local-ranks above 1) before the node gives up.
    #[arg(long, env = "LGAF_MAX_LOCAL_RESTARTS", default_value_t = 3)]
    max_local_restarts: u32,
    /// Where this worker's CPU-collective listener binds (port 0: any free port; with
    /// --local-ranks, local rank r binds the port + r).
    #[arg(long, env = "LGAF_COLLECTIVE_BIND", default_value = "127.0.0.1:0")]
    collective_bind: String,
    /// The host name or IP the other workers reach the listener at (default: the bind
    /// address's IP; on Kubernetes, the pod IP).
    #[arg(long, env = "LGAF_COLLECTIVE_HOST")]
    collective_host: Option<String>,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

/// How long a node's ranks get between SIGTERM and SIGKILL: within Kubernetes' default
/// grace period (30 s) and the chart's (60 s).
const RANK_STOP_TIMEOUT_SECS: u64 = 20;

fn main() -> ExitCode {
    lgaf_worker::host_memory::keep_freed_tensor_memory();
    let cli = Cli::parse();
    let slot = match node::resolve_slot(cli.slot, |name| std::env::var(name).ok()) {
        Ok(slot) => slot,
        Err(e) => return fail(e, ExitClass::Permanent),
    };
    let metrics = cli.telemetry.metrics_listen;
    let ranks = match node::local_ranks(
        cli.local_ranks,
        slot,
        &cli.device,
        &cli.collective_bind,
        metrics,
    ) {
        Ok(ranks) => ranks,
        Err(e) => return fail(e, ExitClass::Permanent),
    };
    match ranks.as_slice() {
        [one] => run_rank(&cli, one),
        many => run_node(&cli, many),
    }
}

/// This process is the rank.
fn run_rank(cli: &Cli, rank: &node::LocalRank) -> ExitCode {
    let mut telemetry = match init_telemetry("lgaf-worker", &cli.telemetry) {
        Ok(telemetry) => telemetry,
        Err(e) => return fail(e, ExitClass::Permanent),
    };
    let token = match cli.connection.token() {
        Ok(t) => t,
        Err(e) => return fail(e, ExitClass::Permanent),
    };
    let args = WorkerArgs {
        coordinator: cli.connection.coordinator.clone(),
        slot: rank.slot,
        device: rank.device.clone(),
        collective_bind: rank.collective_bind.clone(),
        collective_host: cli.collective_host.clone(),
        token,
        tls: cli.connection.tls(),
    };
    match coordinated::run(args, &mut telemetry) {
        Ok(()) => ExitClass::Success.into(),
        Err(e) => {
            let class = e.exit_class();
            fail(e, class)
        }
    }
}

/// This process supervises the node's ranks.
fn run_node(cli: &Cli, ranks: &[node::LocalRank]) -> ExitCode {
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(e) => {
            return fail(
                format!("finding this executable: {e}"),
                ExitClass::Retryable,
            )
        }
    };
    let launch = RankLaunch {
        program,
        coordinator: cli.connection.coordinator.clone(),
        collective_host: cli.collective_host.clone(),
        token_file: cli.connection.token_file.clone(),
        tls: cli.connection.tls(),
        telemetry: cli.telemetry.clone(),
    };
    let supervision = Supervision {
        max_restarts: cli.max_local_restarts,
        stop_timeout: std::time::Duration::from_secs(RANK_STOP_TIMEOUT_SECS),
    };
    // Its own lines only, in the node's log format: the ranks export traces and metrics.
    let logs_only = TelemetryArgs {
        log_format: cli.telemetry.log_format,
        ..TelemetryArgs::default()
    };
    let _telemetry = match init_telemetry("lgaf-worker-node", &logs_only) {
        Ok(telemetry) => telemetry,
        Err(e) => return fail(e, ExitClass::Permanent),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(format!("starting the runtime: {e}"), ExitClass::Retryable),
    };
    match runtime.block_on(node::supervise(ranks, |r| launch.command(r), supervision)) {
        Ok(NodeOutcome::Ranks(class)) => class.into(),
        Ok(NodeOutcome::Signalled(signal)) => ExitCode::from(128 + signal as u8),
        Err(e) => fail(
            format!("starting the local ranks: {e}"),
            ExitClass::Retryable,
        ),
    }
}

fn fail(error: impl std::fmt::Display, class: ExitClass) -> ExitCode {
    eprint_line(format!("lgaf-worker: {error}"));
    class.into()
}
