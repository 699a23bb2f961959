//! The `.idx` file next to a `.rec`: one `key<TAB>offset\n` line per record,
//! the offset being that of the record's first frame (MXNet's
//! `MXIndexedRecordIO`). Also rebuilds a lost index by scanning the `.rec`.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::error::{IndexMismatch, RecordIoError, RecordRef};
use super::frame;
use super::irheader;

/// Report scan progress at most this often (bytes), so a progress bar
/// does not cost more than the scan.
const PROGRESS_STEP: usize = 1 << 20;

/// Where a record starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub key: u64,
    pub offset: u64,
}

/// Key to offset lookup over unique keys.
#[derive(Debug, Clone)]
pub struct RecordIndex {
    /// Sorted by key.
    by_key: Vec<IndexEntry>,
    /// Positions in `by_key`, sorted by offset (file order).
    file_order: Vec<u32>,
}

impl RecordIndex {
    /// `entries` must have unique keys.
    fn new(mut by_key: Vec<IndexEntry>) -> Self {
        by_key.sort_unstable_by_key(|entry| entry.key);
        debug_assert!(by_key.windows(2).all(|w| w[0].key < w[1].key));
        let count = u32::try_from(by_key.len()).expect("more than 2^32 records in one pack");
        let mut file_order: Vec<u32> = (0..count).collect();
        file_order.sort_unstable_by_key(|&at| by_key[at as usize].offset);
        Self { by_key, file_order }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The offset of `key`'s record. O(1) when keys are consecutive (the
    /// usual case), a binary search otherwise.
    pub fn offset(&self, key: u64) -> Option<u64> {
        let first = self.by_key.first()?.key;
        let guess = usize::try_from(key.wrapping_sub(first)).ok();
        if let Some(entry) = guess.and_then(|at| self.by_key.get(at)) {
            if entry.key == key {
                return Some(entry.offset);
            }
        }
        let at = self
            .by_key
            .binary_search_by_key(&key, |entry| entry.key)
            .ok()?;
        Some(self.by_key[at].offset)
    }

    /// All entries in increasing key order.
    pub fn by_key(&self) -> &[IndexEntry] {
        &self.by_key
    }

    /// All entries in increasing offset order.
    pub fn in_file_order(&self) -> FileOrder<'_> {
        FileOrder {
            by_key: &self.by_key,
            positions: self.file_order.iter(),
        }
    }
}

/// Iterator of [`RecordIndex::in_file_order`].
#[derive(Debug, Clone)]
pub struct FileOrder<'a> {
    by_key: &'a [IndexEntry],
    positions: std::slice::Iter<'a, u32>,
}

impl Iterator for FileOrder<'_> {
    type Item = IndexEntry;

    fn next(&mut self) -> Option<IndexEntry> {
        self.positions.next().map(|&at| self.by_key[at as usize])
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.positions.size_hint()
    }
}

impl ExactSizeIterator for FileOrder<'_> {}

/// `train.rec` -> `train.idx`, as insightface and MXNet name them.
pub fn idx_path_for(rec_path: &Path) -> PathBuf {
    rec_path.with_extension("idx")
}

/// Parse an `.idx` file's bytes. Every offset must lie inside the `.rec`
/// (`rec_len` bytes); keys must be unique non-negative integers.
pub fn parse(
    bytes: &[u8],
    idx_path: &Path,
    rec_path: &Path,
    rec_len: u64,
) -> Result<RecordIndex, RecordIoError> {
    // (entry, 1-based line) so that a duplicate can name both lines.
    let mut entries: Vec<(IndexEntry, usize)> = Vec::new();
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if !bytes.is_empty() {
        for (at, raw) in body.split(|&byte| byte == b'\n').enumerate() {
            let line = at + 1;
            let entry = parse_line(raw).map_err(|reason| RecordIoError::IndexLine {
                path: idx_path.to_path_buf(),
                line,
                text: String::from_utf8_lossy(raw).into_owned(),
                reason,
            })?;
            if entry.offset >= rec_len {
                return Err(RecordIoError::IndexOffsetPastEnd {
                    path: idx_path.to_path_buf(),
                    line,
                    key: entry.key,
                    offset: entry.offset,
                    rec_path: rec_path.to_path_buf(),
                    rec_len,
                });
            }
            entries.push((entry, line));
        }
    }

    entries.sort_by_key(|(entry, line)| (entry.key, *line));
    if let Some(pair) = entries
        .windows(2)
        .find(|pair| pair[0].0.key == pair[1].0.key)
    {
        let ((entry, first_line), (_, line)) = (pair[0], pair[1]);
        let raw = body
            .split(|&byte| byte == b'\n')
            .nth(line - 1)
            .unwrap_or_default();
        return Err(RecordIoError::IndexLine {
            path: idx_path.to_path_buf(),
            line,
            text: String::from_utf8_lossy(raw).into_owned(),
            reason: format!(
                "key {} is already on line {first_line}, expected unique keys",
                entry.key
            ),
        });
    }
    Ok(RecordIndex::new(
        entries.into_iter().map(|(entry, _)| entry).collect(),
    ))
}

/// Check an index read from `idx_path` (whose text is `idx_text`) against the
/// `.rec` it indexes (`rec`, the mapped file): the records must tile the file,
/// as MXNet's writer lays them out. In offset order, each entry must point at
/// the first frame of a record (the RecordIO magic, continuation flag 0 or 1)
/// exactly where the previous record ends (byte 0 for the first), and the
/// last record must end at the end of the file. So two keys at one offset, an
/// offset off a record, a line missing in the middle and an index cut short
/// (or empty) are all refused instead of silently changing the images.
///
/// Only frame headers are read (8 bytes per frame): cheap on a memory map even
/// for millions of records. Payloads are checked when they are read.
pub fn check_against_rec(
    index: &RecordIndex,
    idx_text: &[u8],
    idx_path: &Path,
    rec: &[u8],
    rec_path: &Path,
) -> Result<(), RecordIoError> {
    // Line numbers are looked up only for an error, so the good path keeps no
    // per-entry line table.
    let line_of = |key: u64| line_of_key(idx_text, key);
    let mismatch = |entry: IndexEntry, expected: String, found: String| {
        RecordIoError::IndexMismatch(Box::new(IndexMismatch {
            path: idx_path.to_path_buf(),
            line: line_of(entry.key),
            key: entry.key,
            offset: entry.offset,
            rec_path: rec_path.to_path_buf(),
            expected,
            found,
        }))
    };

    // Where the next record must start, and the entry of the record before it.
    let mut next_start = 0usize;
    let mut previous: Option<IndexEntry> = None;
    for entry in index.in_file_order() {
        // `parse` checked that offsets lie inside the file, so they fit usize.
        let at = entry.offset as usize;
        if let Some(before) = previous.filter(|before| before.offset == entry.offset) {
            return Err(mismatch(
                entry,
                "one key per record offset".into(),
                format!(
                    "line {} already gives offset {} to key {}",
                    line_of(before.key),
                    before.offset,
                    before.key
                ),
            ));
        }
        let end = match frame::record_end(rec, at) {
            Ok(end) => end,
            // The first frame is where the index points: an error there is the
            // index's; an error in a later frame is the record's own damage.
            Err(frame::FrameError::BadMagic {
                frame_offset,
                found,
            }) if frame_offset == at => {
                return Err(mismatch(
                    entry,
                    format!("the RecordIO magic 0xced7230a at byte {at}"),
                    format!("{found:#010x} (an offset off any record, or a damaged .rec)"),
                ))
            }
            Err(frame::FrameError::BadContinuation {
                frame_offset,
                found,
                expected,
            }) if frame_offset == at => {
                return Err(mismatch(
                    entry,
                    format!("the first frame of a record, continuation flag {expected}"),
                    format!("continuation flag {found}, a later part of a split record"),
                ))
            }
            Err(frame::FrameError::Truncated {
                part: "frame header",
                at: header_at,
                file_len,
                ..
            }) if header_at == at => {
                return Err(mismatch(
                    entry,
                    format!("a record's 8-byte frame header at byte {at}"),
                    format!("only {} bytes before the end of the file", file_len - at),
                ))
            }
            Err(error) => return Err(error.locate(rec_path, RecordRef::Key(entry.key), at)),
        };
        if at != next_start {
            let after = match previous {
                Some(before) => format!(
                    ", where the record of key {} (line {}) ends",
                    before.key,
                    line_of(before.key)
                ),
                None => ", where the file's first record starts".to_string(),
            };
            let found = if at > next_start {
                format!(
                    "offset {at}: bytes {next_start}..{at} of {} are in no indexed record",
                    rec_path.display()
                )
            } else {
                format!("offset {at}, inside that record")
            };
            return Err(mismatch(
                entry,
                format!("offset {next_start}{after}"),
                found,
            ));
        }
        next_start = end;
        previous = Some(entry);
    }
    if next_start != rec.len() {
        return Err(RecordIoError::IndexIncomplete {
            path: idx_path.to_path_buf(),
            lines: index.len(),
            indexed_end: next_start as u64,
            rec_path: rec_path.to_path_buf(),
            rec_len: rec.len() as u64,
        });
    }
    Ok(())
}

/// The 1-based line of `key` in an index's text (which `parse` accepted), for
/// messages.
fn line_of_key(idx_text: &[u8], key: u64) -> usize {
    idx_text
        .split(|&byte| byte == b'\n')
        .position(|raw| parse_line(raw).is_ok_and(|entry| entry.key == key))
        .map_or(0, |at| at + 1)
}

/// One `key<TAB>offset` line; surrounding whitespace (e.g. a `\r`) is
/// ignored, as MXNet's `line.strip()` does.
fn parse_line(raw: &[u8]) -> Result<IndexEntry, String> {
    let line = std::str::from_utf8(raw)
        .map_err(|_| "not valid UTF-8, expected `key<TAB>offset`".to_string())?
        .trim();
    let mut fields = line.split('\t');
    let (Some(key), Some(offset), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err("expected two tab-separated fields `key<TAB>offset`".into());
    };
    let number = |field: &str, what: &str| {
        field
            .parse::<u64>()
            .map_err(|_| format!("{what} {field:?} is not a non-negative integer"))
    };
    Ok(IndexEntry {
        key: number(key, "key")?,
        offset: number(offset, "offset")?,
    })
}

/// Write `key<TAB>offset\n`.
pub fn write_line(out: &mut impl Write, entry: IndexEntry) -> io::Result<()> {
    writeln!(out, "{}\t{}", entry.key, entry.offset)
}

/// Rebuild the index of a `.rec` held in `bytes` by decoding every record
/// from the start. A record's key is its IRHeader `id` (insightface's and
/// MXNet's `im2rec` tools store the key there) when every record has an
/// IRHeader and the ids are unique; otherwise it is the record's position in
/// the file, which is what a sequential MXNet reader sees.
pub fn scan(
    bytes: &[u8],
    rec_path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RecordIndex, RecordIoError> {
    let total = bytes.len() as u64;
    let mut offsets: Vec<u64> = Vec::new();
    let mut ids: Option<Vec<u64>> = Some(Vec::new());
    let mut at = 0;
    let mut reported = 0;
    progress(0, total);
    while at < bytes.len() {
        let record = RecordRef::Ordinal(offsets.len() as u64);
        let decoded =
            frame::decode_record(bytes, at).map_err(|error| error.locate(rec_path, record, at))?;
        offsets.push(at as u64);
        match (&mut ids, irheader::peek_id(&decoded.payload)) {
            (Some(ids), Some(id)) => ids.push(id),
            (ids, _) => *ids = None,
        }
        at = decoded.end;
        if at - reported >= PROGRESS_STEP {
            progress(at as u64, total);
            reported = at;
        }
    }
    progress(total, total);

    let keys = ids
        .filter(|ids| {
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            sorted.windows(2).all(|pair| pair[0] != pair[1])
        })
        .unwrap_or_else(|| (0..offsets.len() as u64).collect());
    let entries = keys
        .into_iter()
        .zip(offsets)
        .map(|(key, offset)| IndexEntry { key, offset })
        .collect();
    Ok(RecordIndex::new(entries))
}

/// Write `index` to `idx_path` in file order, through a temporary file and a
/// rename so that a reader never sees half an index.
pub fn write_atomic(index: &RecordIndex, idx_path: &Path) -> Result<(), RecordIoError> {
    let temp = temp_path_for(idx_path);
    let result = (|| {
        let file = fs::File::create(&temp)
            .map_err(|source| RecordIoError::io("cannot create", &temp, source))?;
        let mut out = BufWriter::new(file);
        for entry in index.in_file_order() {
            write_line(&mut out, entry)
                .map_err(|source| RecordIoError::io("cannot write", &temp, source))?;
        }
        let file = out
            .into_inner()
            .map_err(|error| RecordIoError::io("cannot write", &temp, error.into_error()))?;
        file.sync_all()
            .map_err(|source| RecordIoError::io("cannot sync", &temp, source))?;
        fs::rename(&temp, idx_path)
            .map_err(|source| RecordIoError::io("cannot rename into place", idx_path, source))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// A hidden sibling name unique to this process: `dir/.name.<pid>.partial`.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recordio::irheader::{pack, IrLabel};

    fn parse_text(text: &str, rec_len: u64) -> Result<RecordIndex, RecordIoError> {
        parse(
            text.as_bytes(),
            Path::new("t.idx"),
            Path::new("t.rec"),
            rec_len,
        )
    }

    fn entries(index: &RecordIndex) -> Vec<(u64, u64)> {
        index.by_key().iter().map(|e| (e.key, e.offset)).collect()
    }

    #[test]
    fn parses_lines_in_any_key_order() {
        let index = parse_text("2\t40\n0\t0\n1\t16\n", 100).unwrap();
        assert_eq!(entries(&index), vec![(0, 0), (1, 16), (2, 40)]);
        assert_eq!(index.offset(1), Some(16));
        assert_eq!(index.offset(3), None);
    }

    #[test]
    fn tolerates_crlf_and_a_missing_final_newline() {
        let index = parse_text("0\t0\r\n7\t12", 100).unwrap();
        assert_eq!(entries(&index), vec![(0, 0), (7, 12)]);
    }

    #[test]
    fn empty_file_is_an_empty_index() {
        assert_eq!(parse_text("", 0).unwrap().len(), 0);
    }

    #[test]
    fn offset_lookup_works_for_sparse_keys() {
        let index = parse_text("10\t0\n20\t8\n35\t16\n", 100).unwrap();
        assert_eq!(index.offset(20), Some(8));
        assert_eq!(index.offset(35), Some(16));
        assert_eq!(index.offset(11), None);
        assert_eq!(index.offset(0), None);
    }

    #[test]
    fn file_order_follows_offsets() {
        let index = parse_text("0\t32\n1\t0\n2\t16\n", 100).unwrap();
        let keys: Vec<u64> = index.in_file_order().map(|e| e.key).collect();
        assert_eq!(keys, vec![1, 2, 0]);
    }

    #[test]
    fn bad_lines_name_the_line_and_the_problem() {
        let cases = [
            ("0\t0\nx\t8\n", 2, "key \"x\" is not a non-negative integer"),
            ("0\t0\n1 8\n", 2, "expected two tab-separated fields"),
            ("0\t-8\n", 1, "offset \"-8\" is not a non-negative integer"),
            ("0\t0\n\n1\t8\n", 2, "expected two tab-separated fields"),
            ("0\t0\t5\n", 1, "expected two tab-separated fields"),
            ("0\t0\n1\t8\n0\t16\n", 3, "key 0 is already on line 1"),
        ];
        for (text, expected_line, expected_reason) in cases {
            match parse_text(text, 100) {
                Err(RecordIoError::IndexLine { line, reason, .. }) => {
                    assert_eq!(line, expected_line, "{text:?}");
                    assert!(reason.contains(expected_reason), "{text:?}: {reason}");
                }
                other => panic!("{text:?}: expected IndexLine, got {other:?}"),
            }
        }
    }

    #[test]
    fn offset_at_or_past_the_end_is_rejected() {
        match parse_text("0\t0\n1\t100\n", 100) {
            Err(RecordIoError::IndexOffsetPastEnd {
                line,
                key,
                offset,
                rec_len,
                ..
            }) => assert_eq!((line, key, offset, rec_len), (2, 1, 100, 100)),
            other => panic!("expected IndexOffsetPastEnd, got {other:?}"),
        }
    }

    fn encode_all(payloads: &[Vec<u8>]) -> (Vec<u8>, Vec<u64>) {
        let mut file = Vec::new();
        let mut offsets = Vec::new();
        for payload in payloads {
            offsets.push(file.len() as u64);
            frame::write_record(&mut file, payload).unwrap();
        }
        (file, offsets)
    }

    #[test]
    fn scan_keys_records_by_their_irheader_id() {
        let payloads: Vec<Vec<u8>> = [5u64, 3, 9]
            .iter()
            .map(|&id| pack(IrLabel::Scalar(0.0), id, 0, b"img"))
            .collect();
        let (file, offsets) = encode_all(&payloads);
        let mut calls = Vec::new();
        let index = scan(&file, Path::new("t.rec"), &mut |done, total| {
            calls.push((done, total))
        })
        .unwrap();
        assert_eq!(
            entries(&index),
            vec![(3, offsets[1]), (5, offsets[0]), (9, offsets[2])]
        );
        let total = file.len() as u64;
        assert_eq!(calls.first(), Some(&(0, total)));
        assert_eq!(calls.last(), Some(&(total, total)));
    }

    #[test]
    fn scan_falls_back_to_file_order_when_ids_repeat_or_are_absent() {
        let repeated: Vec<Vec<u8>> = (0..3)
            .map(|_| pack(IrLabel::Scalar(0.0), 7, 0, b""))
            .collect();
        let raw = vec![b"no header".to_vec(), b"x".to_vec()];
        for payloads in [repeated, raw] {
            let (file, offsets) = encode_all(&payloads);
            let index = scan(&file, Path::new("t.rec"), &mut |_, _| {}).unwrap();
            let expected: Vec<(u64, u64)> = (0..).zip(offsets).collect();
            assert_eq!(entries(&index), expected);
        }
    }

    #[test]
    fn scan_names_the_broken_record_by_position() {
        let payloads: Vec<Vec<u8>> = (0..3)
            .map(|id| pack(IrLabel::Scalar(0.0), id, 0, b"ab"))
            .collect();
        let (mut file, offsets) = encode_all(&payloads);
        file.truncate(file.len() - 2);
        match scan(&file, Path::new("t.rec"), &mut |_, _| {}) {
            Err(RecordIoError::Truncated { record, offset, .. }) => {
                assert_eq!(record, RecordRef::Ordinal(2));
                assert_eq!(offset, offsets[2]);
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
    }
}
