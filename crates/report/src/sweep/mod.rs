//! A sweep's results (`lgaf sweep`): the schema of its `results.json` (`results`), what they
//! say over seeds (`summary`: means, spreads, rankings, as Markdown), and its HTML page
//! (`page`, with one bar plot per group from `plot`).

mod page;
mod plot;
mod results;
mod summary;

use std::path::Path;

pub use results::{Attention, Group, Point, RunResult, SetKind, SetResult, SweepResults, FORMAT};
pub use summary::{
    markdown, mean_spread, ranking_line, summarize, GroupSummary, PointSummary, Ranking,
    SetSummary, Stat,
};

use crate::error::ReportError;

/// The page of `results`, titled `title`.
pub fn html(results: &SweepResults, title: &str) -> Result<String, ReportError> {
    crate::ensure_font()?;
    let written = lgaf_store::history::now()
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    page::page(title, &summarize(results), &written)
}

/// Writes [`html`] to `path`.
pub fn write_html(results: &SweepResults, title: &str, path: &Path) -> Result<(), ReportError> {
    let page = html(results, title)?;
    std::fs::write(path, page).map_err(|source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;
