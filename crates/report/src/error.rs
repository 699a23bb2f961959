//! [`ReportError`]: what can stop a report, each naming the file, font or plot it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(
        "cannot read the font {path}: {source}; the plots' text needs DejaVu Sans: install the \
         Debian package fonts-dejavu-core (`apt-get install fonts-dejavu-core`; make test does)"
    )]
    FontMissing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{path} is not a TrueType font that can be drawn with (expected DejaVu Sans); reinstall \
         the Debian package fonts-dejavu-core"
    )]
    BadFont { path: PathBuf },

    #[error("drawing the `{plot}` plot failed: {reason}")]
    Plot { plot: &'static str, reason: String },

    #[error("encoding the `{plot}` plot as PNG failed: {source}")]
    Png {
        plot: &'static str,
        #[source]
        source: image::ImageError,
    },

    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{path} is not a sweep's results file ({source}); it is written by `lgaf sweep` only: \
         move it aside, and the sweep evaluates its trained runs again without retraining them"
    )]
    Results {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "{path} has results format {found}, and this lgaf reads format {}; use the lgaf that \
         wrote it, or move it aside to start the sweep's results afresh",
        crate::sweep::FORMAT
    )]
    ResultsFormat { path: PathBuf, found: u32 },
}
