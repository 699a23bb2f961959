//! Terminal output: a progress bar that log lines print above instead of through.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use lgaf_telemetry::{Telemetry, TelemetryArgs, TelemetryError, TextStyle};
use tracing_subscriber::fmt::MakeWriter;

static BAR: OnceLock<ProgressBar> = OnceLock::new();

/// Log writer that suspends the progress bar while a line is written.
#[derive(Clone, Copy)]
pub struct BarAwareStderr;

pub struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        let write = || {
            let _ = std::io::stderr().write_all(&line);
        };
        match BAR.get() {
            Some(bar) if !bar.is_finished() => bar.suspend(write),
            _ => write(),
        }
    }
}

impl<'a> MakeWriter<'a> for BarAwareStderr {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(Vec::new())
    }
}

/// The process's logs (to stderr, above the progress bar, filtered by `RUST_LOG`, default
/// `info`) and its traces and metrics as `args` say, for `service`.
pub fn init_telemetry(
    service: &'static str,
    args: &TelemetryArgs,
) -> Result<Telemetry, TelemetryError> {
    let style = TextStyle {
        ansi: std::io::stderr().is_terminal(),
        targets: false,
    };
    Telemetry::init(service, args, BarAwareStderr, style)
}

/// The training progress bar (hidden when stderr is not a terminal or `enabled` is false).
pub fn training_bar(total: u64, position: u64, enabled: bool) -> ProgressBar {
    let bar = if enabled {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} steps | {msg} | ETA {eta}",
        )
        .expect("valid template"),
    );
    bar.set_position(position);
    bar.reset_eta();
    bar.enable_steady_tick(Duration::from_millis(250));
    let _ = BAR.set(bar.clone());
    bar
}

/// A progress bar for a one-off job (`lgaf pack`, `lgaf inspect`, an index rebuild): `unit`
/// names what is counted. Hidden when stderr is not a terminal.
pub fn task_bar(label: &str, unit: &str) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{label} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} | {{per_sec}} | ETA {{eta}}"
        ))
        .expect("valid template"),
    );
    bar
}
