//! `lgaf`: initialise, train, and embed with LGAF models. The commands live in
//! [`lgaf_worker::cli`]; this only parses the command line and reports the outcome.

use std::process::ExitCode;

use clap::Parser;
use lgaf_proto::console::eprint_line;
use lgaf_worker::cli::{self, Cli};
use lgaf_worker::progress::init_logging;

fn main() -> ExitCode {
    init_logging();
    match cli::run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint_line(format_args!("error: {}", cli::one_line(&e)));
            ExitCode::FAILURE
        }
    }
}
