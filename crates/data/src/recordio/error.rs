//! The error type of the RecordIO reader and writer.

use std::fmt;
use std::path::{Path, PathBuf};

/// How an error names a record: by its `.idx` key when the index is known,
/// by its position in the file while the file is scanned without an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordRef {
    Key(u64),
    /// The n-th record of the file (0-based), counted in file order.
    Ordinal(u64),
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(key) => write!(f, "record key {key}"),
            Self::Ordinal(n) => write!(f, "record #{n} in file order"),
        }
    }
}

/// Errors from reading and writing RecordIO packs. Errors about bad input
/// name the file, the record and the byte offset where the record starts,
/// and say what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum RecordIoError {
    /// A file could not be opened, mapped, read, written or renamed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being attempted, e.g. "cannot memory-map".
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    /// A frame does not start with the RecordIO magic number.
    #[error(
        "{path}: {record} (starting at byte {offset}): frame at byte {frame_offset} \
         should start with magic 0xced7230a, found {found:#010x}"
    )]
    BadMagic {
        path: PathBuf,
        record: RecordRef,
        offset: u64,
        frame_offset: u64,
        found: u32,
    },

    /// A frame header or payload extends past the end of the file.
    #[error(
        "{path}: {record} (starting at byte {offset}) is truncated: its {part} needs \
         {needed} bytes from byte {at}, but the file ends at byte {file_len}"
    )]
    Truncated {
        path: PathBuf,
        record: RecordRef,
        offset: u64,
        /// "frame header" or "frame payload".
        part: &'static str,
        needed: u64,
        at: u64,
        file_len: u64,
    },

    /// A frame's continuation flag does not fit its place in the record,
    /// e.g. a record that starts with a "middle part" frame.
    #[error(
        "{path}: {record} (starting at byte {offset}): frame at byte {frame_offset} has \
         continuation flag {found}, expected {expected}"
    )]
    BadContinuation {
        path: PathBuf,
        record: RecordRef,
        offset: u64,
        frame_offset: u64,
        found: u32,
        expected: &'static str,
    },

    /// A payload is shorter than its IRHeader (and the labels it announces).
    #[error(
        "{path}: {record} (starting at byte {offset}): payload has {found} bytes, \
         expected at least {needed} for {what}"
    )]
    RecordTooShort {
        path: PathBuf,
        record: RecordRef,
        offset: u64,
        /// e.g. "an IRHeader" or "an IRHeader and 2 extra labels".
        what: String,
        needed: usize,
        found: usize,
    },

    /// An image's label cannot be an identity index.
    #[error(
        "{path}: {record} (starting at byte {offset}): label {found} is not an identity \
         index, expected an integer in 0..=16777216"
    )]
    InvalidLabel {
        path: PathBuf,
        record: RecordRef,
        offset: u64,
        found: f32,
    },

    /// An image's label differs from the identity the header record puts it in.
    #[error(
        "{path}: {record} (starting at byte {offset}): the identity records put this image \
         in identity {expected}, but its label is {found}"
    )]
    LabelMismatch {
        path: PathBuf,
        record: RecordRef,
        offset: u64,
        expected: u32,
        found: u32,
    },

    /// The header record or an identity record disagrees with the file.
    #[error("{path}: {record} (starting at byte {offset}) disagrees with the pack: {reason}")]
    HeaderMismatch {
        path: PathBuf,
        record: RecordRef,
        offset: u64,
        /// What was expected and what was found.
        reason: String,
    },

    /// A line of the `.idx` file is not `key<TAB>offset`, or repeats a key.
    #[error("{path} line {line}: {reason}; the line reads {text:?}")]
    IndexLine {
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        text: String,
        reason: String,
    },

    /// An `.idx` entry points past the end of the `.rec` file.
    #[error(
        "{path} line {line}: key {key} has offset {offset}, but {rec_path} ends at byte {rec_len}"
    )]
    IndexOffsetPastEnd {
        path: PathBuf,
        line: usize,
        key: u64,
        offset: u64,
        rec_path: PathBuf,
        rec_len: u64,
    },

    /// An `.idx` entry does not point at the start of a record of the `.rec`
    /// (boxed: it is the largest error, and every `Result` of the data path would
    /// carry its size).
    #[error(transparent)]
    IndexMismatch(Box<IndexMismatch>),

    /// The `.rec` holds records after the last one the `.idx` lists: an index
    /// cut short, or an empty one.
    #[error(
        "{path} {listed}, but {rec_path} is {rec_len} bytes long: the records from byte \
         {indexed_end} on are not in the index; expected the indexed records to reach the \
         end of the file ({hint})",
        listed = listed(*.lines, *.indexed_end),
        hint = rebuild_hint(.rec_path)
    )]
    IndexIncomplete {
        path: PathBuf,
        /// Entries in the index.
        lines: usize,
        /// Where the last indexed record ends (0 for an empty index).
        indexed_end: u64,
        rec_path: PathBuf,
        rec_len: u64,
    },

    /// A payload is too long for a RecordIO record (dmlc's limit).
    #[error(
        "cannot write {path}: {record} has a payload of {len} bytes, \
         expected less than 2^29 (536870912)"
    )]
    PayloadTooLarge {
        path: PathBuf,
        record: RecordRef,
        len: usize,
    },

    /// The same key was written twice.
    #[error("cannot write {path}: key {key} was already written")]
    DuplicateKey { path: PathBuf, key: u64 },

    /// Images were not added grouped by identity.
    #[error(
        "cannot write {path}: image label {found} comes after label {previous}; expected \
         images grouped by identity in increasing label order"
    )]
    UnsortedLabel {
        path: PathBuf,
        previous: u32,
        found: u32,
    },

    /// A label or key is beyond the integers that an f32 label holds exactly.
    #[error("cannot write {path}: {what} {value} exceeds 16777216, the largest integer an f32 label holds exactly")]
    LabelTooLarge {
        path: PathBuf,
        /// e.g. "identity label" or "record key".
        what: &'static str,
        value: u64,
    },
}

/// An `.idx` entry that does not point where the entries before it say the
/// next record of the `.rec` starts: two keys at one offset, an offset off the
/// RecordIO magic or inside a record, or records between two entries that the
/// index leaves out.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path} line {line}: key {key} at offset {offset}: expected {expected}, found {found}; \
     the index does not match {rec_path} ({hint})",
    hint = rebuild_hint(.rec_path)
)]
pub struct IndexMismatch {
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    pub key: u64,
    pub offset: u64,
    pub rec_path: PathBuf,
    pub expected: String,
    pub found: String,
}

/// What an incomplete index holds.
fn listed(lines: usize, indexed_end: u64) -> String {
    match lines {
        0 => "lists no records".to_string(),
        _ => format!("lists {lines} records, which end at byte {indexed_end}"),
    }
}

/// How to replace an index that does not match its `.rec`.
fn rebuild_hint(rec_path: &Path) -> String {
    format!(
        "rebuild it from the records with `lgaf inspect --rebuild-index {}`",
        rec_path.display()
    )
}

impl RecordIoError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
