//! Lines for a person (or a pipe) on stdout, written the same way by every binary of both
//! sides: a reader that has gone away (`lgaf-coordinator ... | head -1`) is not an error.
//!
//! `println!` panics when stdout is a closed pipe (Rust ignores SIGPIPE, so the write
//! fails with EPIPE), which made a finished job exit 101. Here a closed pipe only drops
//! the line: the command's work, and so its exit status, stays its own. Any other write
//! failure (a full disk under a redirect) is returned, since output would be lost.

use std::fmt::Display;
use std::io::{self, Write};

/// Writes `line` and a newline to stdout and flushes; a closed pipe is not an error.
pub fn print_line(line: impl Display) -> io::Result<()> {
    let mut out = io::stdout().lock();
    ignore_closed_pipe(writeln!(out, "{line}").and_then(|()| out.flush()))
}

/// Writes `line` to stderr; a closed stderr has nowhere left to report to, so any error is
/// dropped.
pub fn eprint_line(line: impl Display) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

fn ignore_closed_pipe(written: io::Result<()>) -> io::Result<()> {
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_pipe_is_forgiven() {
        let pipe = io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(ignore_closed_pipe(Err(pipe)).is_ok());
        let full = io::Error::from(io::ErrorKind::StorageFull);
        assert_eq!(
            ignore_closed_pipe(Err(full)).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
    }
}
