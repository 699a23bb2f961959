//! `lgaf report`: a run's history, which its processes write into the store as they train
//! (`lgaf_store::history`), as one self-contained HTML page of plots, and with `--png` the
//! plots as PNG files. `lgaf demo` writes the report of its own run the same way.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use lgaf_proto::console::eprint_line;

#[derive(Args)]
pub struct ReportArgs {
    /// The run's store: a directory, file:///dir or s3://bucket/prefix (must exist).
    #[arg(long)]
    store: String,
    /// The run id.
    #[arg(long)]
    run: String,
    /// The HTML file to write (its folder is created if missing).
    #[arg(long, default_value = "report.html")]
    out: PathBuf,
    /// Also write each plot as DIR/<plot>.png (created if missing).
    #[arg(long, value_name = "DIR")]
    png: Option<PathBuf>,
}

pub(super) fn report(a: ReportArgs) -> Result<()> {
    let written = write_report(&a.store, &a.run, &a.out, a.png.as_deref())?;
    out!("{}", written.html.display());
    for png in &written.pngs {
        out!("{}", png.display());
    }
    Ok(())
}

/// Reads the history of `run` in `store` and writes its report to `out` (and the plots to
/// `png`). Lines of the history that did not parse are left out of the report and listed
/// in it; each is also a warning here, naming its object and line.
pub(super) fn write_report(
    store: &str,
    run: &str,
    out: &Path,
    png: Option<&Path>,
) -> Result<lgaf_report::Written> {
    // A reader: a mistyped store is an error naming it, never an empty store created.
    let runs = lgaf_store::BlockingRunStore::from_existing_url(store, run)?;
    let history = runs.block_on(lgaf_store::read_history(runs.run()))?;
    for problem in &history.problems {
        eprint_line(format_args!("warning: history of run {run}: {problem}"));
    }
    lgaf_report::write(&history, out, png)
        .with_context(|| format!("writing the report of run {run} in {}", history.url))
}
