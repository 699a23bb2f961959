//! `lgaf-coordinator`: runs one training job's control plane, and on a single machine
//! starts the workers itself. The work is [`lgaf_coordinator::supervisor`]'s; this parses
//! the command line and turns how the job ended into the exit status of the exit-code
//! contract (`lgaf_proto::exit`): 0 finished, 75 worth a restart, 78 a wrong setting, 79
//! the job failed, 130/143 cancelled by SIGINT/SIGTERM, 2 a malformed flag (clap).

use std::process::ExitCode;

use clap::Parser;
use lgaf_coordinator::supervisor::{self, Args, Config, Outcome};
use lgaf_proto::console::eprint_line;
use lgaf_proto::exit::ExitClass;
use lgaf_telemetry::{Telemetry, TextStyle};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Its lines name the module they come from, as they always have (people grep them).
    let style = TextStyle {
        ansi: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        targets: true,
    };
    // Under mutual TLS, tonic's line for a refused handshake (which names the reason: no
    // certificate, an unknown issuer, an expired one) is the only place the reason shows;
    // it is a debug line, and without client certificates it would mostly count port probes.
    let filter = match args.tls_client_ca.is_some() {
        true => "info,tonic::transport::server::io_stream=debug",
        false => "info",
    };
    let telemetry = Telemetry::init_filtered(
        "lgaf-coordinator",
        &args.telemetry,
        std::io::stderr,
        style,
        filter,
    );
    let mut telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(e) => return fail(e, ExitClass::Permanent),
    };
    let config = match Config::try_from(args) {
        Ok(config) => config,
        Err(e) => return fail(e, ExitClass::Permanent),
    };
    match supervisor::run(config, &mut telemetry).await {
        Ok(Outcome::Finished) => ExitClass::Success.into(),
        Ok(Outcome::Cancelled { exit_code, .. }) => ExitCode::from(exit_code),
        Err(e) => {
            let class = e.exit_class();
            fail(e, class)
        }
    }
}

fn fail(error: impl std::fmt::Display, class: ExitClass) -> ExitCode {
    eprint_line(format!("error: {error}"));
    class.into()
}
