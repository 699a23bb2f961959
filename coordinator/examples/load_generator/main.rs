//! Load generator for `lgaf-coordinator` at scale (bench/coordinator_scale.sh): plays N
//! simulated workers over gRPC against a real coordinator process on loopback, for each N
//! of `--workers`, and a mass failure (a quarter of `--failure-workers` silent at once);
//! prints the formation time, heartbeat round trips, checkpoint commit latency, the
//! coordinator's CPU and peak memory, and every refusal, each against the goal.
//!
//! Modules: `coordinator_process` (the child process and /proc), `sim_worker` (one
//! simulated worker's calls), `background` (its heartbeats and acks), `scenario` (the
//! runs and their figures), `stats` (round trips and refusals), `report` (the tables).

mod background;
mod coordinator_process;
mod report;
mod scenario;
mod sim_worker;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use coordinator_process::CoordinatorOptions;
use scenario::Settings;

/// Plays N simulated workers against a real lgaf-coordinator and measures it.
#[derive(Parser, Debug)]
#[command(name = "load_generator")]
struct Args {
    /// The lgaf-coordinator binary to measure.
    #[arg(long)]
    coordinator: PathBuf,
    /// Worker counts, one steady run each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "64,256,1024,4096")]
    workers: Vec<u32>,
    /// Workers in the mass failure (a quarter go silent); 0: no mass failure.
    #[arg(long, default_value_t = 1024)]
    failure_workers: u32,
    /// The coordinator's --heartbeat-ms (its default).
    #[arg(long, default_value_t = 2000)]
    heartbeat_ms: u32,
    /// The coordinator's --heartbeat-deadline-ms (its default).
    #[arg(long, default_value_t = 20_000)]
    heartbeat_deadline_ms: u32,
    /// The coordinator's --max-requests-per-sec (default: its own, 500).
    #[arg(long)]
    max_requests_per_sec: Option<u32>,
    /// Workers per simulated host (each host has its own loopback address, as the rate
    /// limit counts per address); 8 GPUs a node by default.
    #[arg(long, default_value_t = 8)]
    workers_per_host: u32,
    /// Simulated time of one training step, milliseconds.
    #[arg(long, default_value_t = 250)]
    step_ms: u64,
    /// Steps of the run (one epoch).
    #[arg(long, default_value_t = 40)]
    steps: u64,
    /// A checkpoint every this many steps (and at the last).
    #[arg(long, default_value_t = 20)]
    checkpoint_every: u64,
    /// Rank 0 reports progress every this many steps.
    #[arg(long, default_value_t = 5)]
    log_every: u64,
    /// A run not over by then is cut short, seconds.
    #[arg(long, default_value_t = 180)]
    time_limit_secs: u64,
    /// Profile each coordinator with `perf record -g` into this directory.
    #[arg(long)]
    perf_dir: Option<PathBuf>,
    /// Where the coordinators' logs go.
    #[arg(long, default_value = "bench-out/coordinator_scale")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("error: creating {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    let settings = Settings {
        coordinator: CoordinatorOptions {
            binary: args.coordinator.clone(),
            workers: 0,
            heartbeat_ms: args.heartbeat_ms,
            heartbeat_deadline_ms: args.heartbeat_deadline_ms,
            max_requests_per_sec: args.max_requests_per_sec,
            token: "coordinator-scale-bench-token".into(),
            log_dir: args.out.clone(),
            label: String::new(),
            perf_dir: args.perf_dir.clone(),
        },
        step_time: Duration::from_millis(args.step_ms),
        total_steps: args.steps,
        checkpoint_every: args.checkpoint_every,
        log_every: args.log_every.max(1),
        workers_per_host: args.workers_per_host,
        time_limit: Duration::from_secs(args.time_limit_secs),
    };
    // Two threads: the machine has two cores, shared with the coordinator under test.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // The simulated ranks' checkpoint writes go through the blocking pool: a few
        // threads, not hundreds that would starve the coordinator of the same two cores
        // (real ranks upload from their own machines).
        .max_blocking_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let mut rows = Vec::new();
        let mut failed = false;
        for &n in &args.workers {
            eprintln!("steady run: {n} workers ...");
            match scenario::steady(&settings, n).await {
                Ok(figures) => {
                    eprint!("{}", report::details(&figures));
                    rows.push(figures);
                }
                Err(e) => {
                    eprintln!("error: the run of {n} workers: {e}");
                    failed = true;
                }
            }
        }
        println!("{}", report::steady_table(&rows));
        for figures in &rows {
            print!("{}", report::details(figures));
        }
        if args.failure_workers > 0 {
            eprintln!("mass failure: {} workers ...", args.failure_workers);
            match scenario::mass_failure(&settings, args.failure_workers).await {
                Ok(figures) => print!("{}", report::failure_table(&figures)),
                Err(e) => {
                    eprintln!("error: the mass failure: {e}");
                    failed = true;
                }
            }
        }
        println!(
            "\nload average at the end: {} (other processes share the 2 cores: tails are noisy)",
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
        println!("coordinator logs: {}", args.out.display());
        if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    })
}
