//! `lgaf-coordinator`: runs one training job's control plane, and on a single machine
//! starts the workers itself. The work is [`lgaf_coordinator::supervisor`]'s; this parses
//! the command line and turns how the job ended into the exit status: 0 finished, 1 an
//! error or a failed job, 130/143 cancelled by SIGINT/SIGTERM, 2 a malformed flag (clap).

use std::process::ExitCode;

use clap::Parser;
use lgaf_coordinator::supervisor::{self, Args, Config, Outcome};
use lgaf_proto::console::eprint_line;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let ended = match Config::try_from(args) {
        Ok(config) => supervisor::run(config).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match ended {
        Ok(Outcome::Finished) => ExitCode::SUCCESS,
        Ok(Outcome::Cancelled { exit_code, .. }) => ExitCode::from(exit_code),
        Err(message) => {
            eprint_line(format!("error: {message}"));
            ExitCode::FAILURE
        }
    }
}
