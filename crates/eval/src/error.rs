//! The crate's error type.

use std::path::PathBuf;

use crate::pickle::PickleError;

/// Errors from reading and writing evaluation files and from the metrics.
/// Errors about a file name it; errors about a record name its index and,
/// inside a pickle, the byte offset of the opcode that made it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read, created or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being attempted, e.g. "cannot read".
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    /// The file is not a pickle this crate reads.
    #[error("invalid pickle {path}: {source}")]
    Pickle { path: PathBuf, source: PickleError },

    /// The pickle is valid but does not hold `(bins, issame_list)`.
    #[error("{path}: byte {offset}: {what}: expected {expected}, found {found}")]
    BinLayout {
        path: PathBuf,
        /// Byte offset of the opcode that made the object at fault.
        offset: usize,
        /// The object at fault, e.g. "image 17" or "the top-level object".
        what: String,
        expected: String,
        found: String,
    },

    /// Images and issame flags given to the writer do not form pairs.
    #[error("cannot write {path}: {images} images for {pairs} pairs; expected {}", 2 * pairs)]
    PairCount {
        path: PathBuf,
        images: usize,
        pairs: usize,
    },

    /// Two inputs that go together have different lengths.
    #[error("{what}: expected {expected}, found {found}")]
    LengthMismatch {
        /// What was counted, e.g. "issame flags for 300 distances".
        what: String,
        expected: usize,
        found: usize,
    },

    /// K-fold cross-validation needs at least one pair per fold.
    #[error(
        "{pairs} pairs cannot be split into {folds} folds (each fold needs at least one pair)"
    )]
    TooFewPairs { pairs: usize, folds: usize },

    /// insightface's `calculate_val_far` divides by the number of same and
    /// of different pairs of the set at hand; it fails when one is zero.
    #[error("fold {fold}: its {split} set has no {kind} pairs, so TAR and FAR are undefined")]
    MissingPairKind {
        fold: usize,
        /// "training" or "test".
        split: &'static str,
        /// "same-identity" or "different-identity".
        kind: &'static str,
    },

    /// A FAR target outside the rates a FAR can take.
    #[error("FAR target {0} is not within [0, 1]")]
    FarTarget(f64),

    /// An embedding matrix whose size is not rows x dimension.
    #[error("{what}: {len} values do not form rows of dimension {dim}")]
    EmbeddingShape {
        what: &'static str,
        len: usize,
        dim: usize,
    },

    /// Verification embeddings come in pairs of rows.
    #[error("{rows} embedding rows do not form pairs (rows 2i and 2i + 1)")]
    UnpairedRows { rows: usize },

    /// An embedding holding NaN or infinity, which has no cosine similarity.
    #[error("{what} row {row}: the embedding holds a non-finite value")]
    NonFinite { what: &'static str, row: usize },

    /// A CMC needs at least one probe.
    #[error("there are no probes to identify")]
    NoProbes,
}
