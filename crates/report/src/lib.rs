//! A run's history (`lgaf_store::History`, read by `lgaf_store::read_history`) as a report
//! a person looks at: one self-contained HTML page with the plots inline as SVG, and the
//! same plots as PNG files on request.
//!
//! The plots ([`Plot`]): a timeline of the run (steps against wall time, generations, lost
//! workers, recoveries, checkpoints), loss and learning rate, throughput and data wait, the
//! distribution of step times, the LGF attention weights, evaluation accuracy per set, and
//! the attention per nuisance factor. Each is drawn once with plotters, generic over the
//! backend; plots whose data the history lacks are left out and named on the page.
//!
//! Text in the plots is measured (SVG) and drawn (PNG) with DejaVu Sans, read at run time
//! from [`FONT_PATH`]; without it every call here fails with [`ReportError::FontMissing`],
//! which names the path and the package to install.
//!
//! Modules: `summary` (what is derived from the history), `plots` (one file per group of
//! plots), `page` (the HTML), `style` (colours and text), `font`, `error`.

mod error;
mod font;
mod page;
mod plots;
mod style;
mod summary;
pub mod sweep;

use std::path::{Path, PathBuf};

use lgaf_store::History;

pub use error::ReportError;
pub use font::{ensure_font, FONT_PATH};
pub use plots::Plot;

use summary::Summary;

/// The plots the history has data for, and those it has none for, in the page's order.
fn split(s: &Summary) -> (Vec<Plot>, Vec<Plot>) {
    Plot::ALL.into_iter().partition(|p| p.available(s))
}

/// The report's page: one HTML document, with nothing to fetch when it is viewed.
pub fn html(history: &History) -> Result<String, ReportError> {
    ensure_font()?;
    let s = Summary::new(history);
    let (shown, absent) = split(&s);
    let plots = shown
        .into_iter()
        .map(|plot| Ok((plot, plot.svg(&s)?)))
        .collect::<Result<Vec<_>, ReportError>>()?;
    Ok(page::page(&s, &plots, &absent, lgaf_store::history::now()))
}

/// The plots the history has data for, each as a PNG file's bytes.
pub fn pngs(history: &History) -> Result<Vec<(Plot, Vec<u8>)>, ReportError> {
    ensure_font()?;
    let s = Summary::new(history);
    split(&s)
        .0
        .into_iter()
        .map(|plot| Ok((plot, plot.png(&s)?)))
        .collect()
}

/// What [`write`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub html: PathBuf,
    /// `<png_dir>/<plot id>.png`, in the page's order.
    pub pngs: Vec<PathBuf>,
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let failed = |source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    std::fs::write(path, bytes).map_err(failed)
}

/// Writes the page to `html_path` and, with `png_dir`, each plot to `<png_dir>/<id>.png`
/// (folders are created as needed).
pub fn write(
    history: &History,
    html_path: &Path,
    png_dir: Option<&Path>,
) -> Result<Written, ReportError> {
    let page = html(history)?;
    write_file(html_path, page.as_bytes())?;
    let mut written = Written {
        html: html_path.to_path_buf(),
        pngs: Vec::new(),
    };
    if let Some(dir) = png_dir {
        for (plot, png) in pngs(history)? {
            let path = dir.join(format!("{}.png", plot.id()));
            write_file(&path, &png)?;
            written.pngs.push(path);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests;
