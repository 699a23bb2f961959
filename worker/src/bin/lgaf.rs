//! `lgaf`: initialise, train, and embed with LGAF models. The commands live in
//! [`lgaf_worker::cli`]; this only parses the command line and reports the outcome.

use std::process::ExitCode;

use clap::Parser;
use lgaf_proto::console::eprint_line;
use lgaf_worker::cli::{self, Cli};
use lgaf_worker::progress::init_telemetry;

fn main() -> ExitCode {
    lgaf_worker::host_memory::keep_freed_tensor_memory();
    let cli = Cli::parse();
    let mut telemetry = match init_telemetry("lgaf", cli.telemetry()) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprint_line(format_args!("error: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match cli::run(cli, &mut telemetry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint_line(format_args!("error: {}", cli::one_line(&e)));
            ExitCode::FAILURE
        }
    }
}
