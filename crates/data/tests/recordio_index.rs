//! An `.idx` that does not match its `.rec`: cut short, empty, two keys at one offset,
//! offsets past the end or not at a record start, a damaged magic in the `.rec`, and
//! rebuilding a damaged `.idx` on request.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{
    assert_pack_holds, expect_err, good_pack, labelled_images, offset_of, write_headerless,
    TempDir, M,
};
use lgaf_data::recordio::{IndexMode, IndexSource, RecordIoError, RecordPack};

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let mut data = fs::read(path).unwrap();
    data[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    fs::write(path, data).unwrap();
}

/// The lines of a pack's `.idx`.
fn idx_lines(dir: &TempDir) -> Vec<String> {
    let text = fs::read_to_string(dir.join("train.idx")).unwrap();
    text.lines().map(str::to_owned).collect()
}

fn write_idx_lines(dir: &TempDir, lines: &[String]) {
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    fs::write(dir.join("train.idx"), text).unwrap();
}

/// `(key, offset)` of a `key<TAB>offset` line.
fn key_offset(line: &str) -> (u64, u64) {
    let (key, offset) = line.split_once('\t').unwrap();
    (key.parse().unwrap(), offset.parse().unwrap())
}

/// The message of an `.idx` mismatch, checked to name the `.idx`, the line and the
/// offset, and to say how to rebuild it.
fn index_mismatch(path: &Path, line: usize, offset: u64) -> String {
    let error = expect_err(RecordPack::open(path));
    let message = error.to_string();
    match &error {
        RecordIoError::IndexMismatch(mismatch) => {
            assert_eq!(
                (mismatch.line, mismatch.offset),
                (line, offset),
                "{message}"
            )
        }
        other => panic!("expected IndexMismatch, got {other:?}"),
    }
    assert!(
        message.contains(&format!("train.idx line {line}"))
            && message.contains(&format!("offset {offset}"))
            && message.contains("--rebuild-index"),
        "{message}"
    );
    message
}

/// A headerless pack: only the index says which records exist, so a cut index
/// would silently drop images.
fn headerless_pack(dir: &TempDir) -> PathBuf {
    let path = dir.join("train.rec");
    write_headerless(&path);
    path
}

#[test]
fn an_idx_cut_short_is_refused() {
    let dir = TempDir::new("idx-cut");
    for cut_at_end in [true, false] {
        let path = headerless_pack(&dir);
        let rec_len = fs::metadata(&path).unwrap().len();
        let mut lines = idx_lines(&dir);
        if cut_at_end {
            // The last record of the file is no longer listed.
            let (_, last_offset) = key_offset(&lines.pop().unwrap());
            write_idx_lines(&dir, &lines);
            let error = expect_err(RecordPack::open(&path));
            let message = error.to_string();
            match &error {
                RecordIoError::IndexIncomplete {
                    indexed_end,
                    rec_len: len,
                    ..
                } => assert_eq!((*indexed_end, *len), (last_offset, rec_len)),
                other => panic!("expected IndexIncomplete, got {other:?}"),
            }
            assert!(
                message.contains("train.idx")
                    && message.contains(&format!("from byte {last_offset}"))
                    && message.contains(&format!("{rec_len} bytes")),
                "{message}"
            );
        } else {
            // A line missing in the middle leaves a hole between two records.
            let (_, missing_offset) = key_offset(&lines.remove(2));
            let (_, next_offset) = key_offset(&lines[2]);
            write_idx_lines(&dir, &lines);
            let message = index_mismatch(&path, 3, next_offset);
            assert!(
                message.contains(&format!("expected offset {missing_offset}")),
                "{message}"
            );
        }
    }

    // With a header record the same cut is refused before the header is read.
    let path = good_pack(&dir);
    let mut lines = idx_lines(&dir);
    lines.truncate(lines.len() - 1);
    write_idx_lines(&dir, &lines);
    assert!(matches!(
        expect_err(RecordPack::open(&path)),
        RecordIoError::IndexIncomplete { .. }
    ));
}

#[test]
fn two_keys_at_one_offset_are_refused() {
    let dir = TempDir::new("idx-duplicate-offset");
    let path = good_pack(&dir);
    let mut lines = idx_lines(&dir);
    // Line 2 (key 2) now points at line 1's record (key 1): image 1 would be read twice.
    let (_, first) = key_offset(&lines[0]);
    let (key, _) = key_offset(&lines[1]);
    lines[1] = format!("{key}\t{first}");
    write_idx_lines(&dir, &lines);
    let message = index_mismatch(&path, 2, first);
    assert!(message.contains("line 1"), "{message}");
}

#[test]
fn an_empty_idx_is_refused() {
    let dir = TempDir::new("idx-empty");
    for path in [good_pack(&dir), headerless_pack(&dir)] {
        fs::write(dir.join("train.idx"), "").unwrap();
        let message = match expect_err(RecordPack::open(&path)) {
            error @ RecordIoError::IndexIncomplete { indexed_end: 0, .. } => error.to_string(),
            other => panic!("expected IndexIncomplete, got {other:?}"),
        };
        assert!(
            message.contains("train.idx") && message.contains("lists no records"),
            "{message}"
        );
    }
}

#[test]
fn an_idx_offset_past_the_end_is_refused() {
    let dir = TempDir::new("idx-past-end");
    let path = good_pack(&dir);
    let rec_len = fs::metadata(&path).unwrap().len();
    let mut lines = idx_lines(&dir);
    let (key, _) = key_offset(&lines[4]);
    lines[4] = format!("{key}\t{}", rec_len + 64);
    write_idx_lines(&dir, &lines);
    match expect_err(RecordPack::open(&path)) {
        RecordIoError::IndexOffsetPastEnd { line, offset, .. } => {
            assert_eq!((line, offset), (5, rec_len + 64))
        }
        other => panic!("expected IndexOffsetPastEnd, got {other:?}"),
    }
}

#[test]
fn an_idx_offset_that_is_not_at_a_record_is_refused() {
    let dir = TempDir::new("idx-not-magic");
    let path = good_pack(&dir);
    let lines = idx_lines(&dir);
    // Inside a record: no magic there.
    let mut shifted = lines.clone();
    let (key, offset) = key_offset(&shifted[3]);
    shifted[3] = format!("{key}\t{}", offset + 4);
    write_idx_lines(&dir, &shifted);
    let message = index_mismatch(&path, 4, offset + 4);
    assert!(message.contains("0xced7230a"), "{message}");

    // At the second frame of a split record (image 3 holds aligned magics): a magic, but
    // not where a record starts.
    let (key, offset) = key_offset(&lines[2]);
    let second_frame = offset + 8 + 24 + 4;
    assert_eq!(
        fs::read(&path).unwrap()[second_frame as usize..][..4],
        M,
        "the test expects a frame there"
    );
    let mut inside = lines.clone();
    inside[2] = format!("{key}\t{second_frame}");
    write_idx_lines(&dir, &inside);
    let message = index_mismatch(&path, 3, second_frame);
    assert!(message.contains("continuation flag"), "{message}");
}

#[test]
fn a_damaged_magic_in_the_rec_is_refused_at_open() {
    let dir = TempDir::new("magic");
    let path = good_pack(&dir);
    let offset = offset_of(&path, 3);
    patch(&path, offset, &[0xde, 0xad, 0xbe, 0xef]);
    let message = index_mismatch(&path, 3, offset);
    assert!(message.contains("0xefbeadde"), "{message}");
}

#[test]
fn a_damaged_idx_is_rebuilt_on_request() {
    let dir = TempDir::new("idx-rebuild");
    let path = good_pack(&dir);
    let original = fs::read_to_string(dir.join("train.idx")).unwrap();
    let mut lines = idx_lines(&dir);
    lines.truncate(5);
    write_idx_lines(&dir, &lines);
    assert!(RecordPack::open(&path).is_err());

    let mut calls = Vec::new();
    let pack = RecordPack::open_with(&path, IndexMode::Rebuild, |done, total| {
        calls.push((done, total))
    })
    .unwrap();
    assert_eq!(pack.index_source(), IndexSource::Rebuilt { saved: true });
    let total = fs::metadata(&path).unwrap().len();
    assert_eq!(calls.last(), Some(&(total, total)));
    assert_pack_holds(&pack, &labelled_images());
    // The rebuilt index replaced the damaged one, and reads as the writer's did.
    assert_eq!(fs::read_to_string(dir.join("train.idx")).unwrap(), original);
    assert_eq!(dir.names(), vec!["train.idx", "train.rec"]);
    let pack = RecordPack::open(&path).unwrap();
    assert_eq!(pack.index_source(), IndexSource::IdxFile);

    // A .rec that is itself damaged cannot be rebuilt; the .idx is left alone.
    let offset = offset_of(&path, 3);
    patch(&path, offset, &[0xde, 0xad, 0xbe, 0xef]);
    let error = expect_err(RecordPack::open_with(&path, IndexMode::Rebuild, |_, _| {}));
    assert!(matches!(error, RecordIoError::BadMagic { .. }), "{error:?}");
    assert_eq!(fs::read_to_string(dir.join("train.idx")).unwrap(), original);
}
