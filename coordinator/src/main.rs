//! `lgaf-coordinator`: runs one training job's control plane, and on a single machine
//! starts the workers itself. The work is [`lgaf_coordinator::supervisor`]'s; this parses
//! the command line and turns how the job ended into the exit status: 0 finished, 1 an
//! error or a failed job, 130/143 cancelled by SIGINT/SIGTERM, 2 a malformed flag (clap).

use std::process::ExitCode;

use clap::Parser;
use lgaf_coordinator::supervisor::{self, Args, Config, Outcome};
use lgaf_proto::console::eprint_line;
use lgaf_telemetry::{Telemetry, TextStyle};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Its lines name the module they come from, as they always have (people grep them).
    let style = TextStyle {
        ansi: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        targets: true,
    };
    let mut telemetry =
        match Telemetry::init("lgaf-coordinator", &args.telemetry, std::io::stderr, style) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprint_line(format!("error: {e}"));
                return ExitCode::FAILURE;
            }
        };
    let ended = match Config::try_from(args) {
        Ok(config) => supervisor::run(config, &mut telemetry)
            .await
            .map_err(|e| e.to_string()),
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
