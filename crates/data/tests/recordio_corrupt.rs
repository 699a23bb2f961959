//! The errors that corrupt packs produce, each built by writing a good pack and then
//! truncating it or changing bytes at known offsets: a cut `.rec`, bad `.idx` lines,
//! header and identity ranges that disagree with the file, and bad IRHeaders and labels.

mod common;

use std::fs;
use std::path::Path;

use common::{expect_err, good_pack, offset_of, TempDir};
use lgaf_data::recordio::{pack, IrLabel, RecordIoError, RecordPack, RecordRef, RecordWriter};

fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn truncated_rec_names_the_cut_record() {
    let dir = TempDir::new("truncated");
    let path = good_pack(&dir);
    // The header record (key 0) is written last: cut into its payload.
    let header_offset = offset_of(&path, 0);
    let len = fs::metadata(&path).unwrap().len();
    truncate(&path, len - 4);
    let error = expect_err(RecordPack::open(&path));
    match &error {
        RecordIoError::Truncated {
            record,
            offset,
            part,
            file_len,
            ..
        } => {
            assert_eq!(*record, RecordRef::Key(0));
            assert_eq!(*offset, header_offset);
            assert_eq!(*part, "frame payload");
            assert_eq!(*file_len, len - 4);
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("train.rec") && message.contains("record key 0"),
        "{message}"
    );
    assert!(
        message.contains(&format!("byte {header_offset}")),
        "{message}"
    );

    // Without the index the scan finds the same cut, named by position.
    fs::remove_file(dir.join("train.idx")).unwrap();
    match expect_err(RecordPack::open(&path)) {
        RecordIoError::Truncated { record, offset, .. } => {
            assert_eq!(record, RecordRef::Ordinal(8 + 5));
            assert_eq!(offset, header_offset);
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn idx_offset_past_the_end_is_reported_with_its_line() {
    let dir = TempDir::new("past-end");
    let path = good_pack(&dir);
    let header_offset = offset_of(&path, 0);
    truncate(&path, header_offset);
    match expect_err(RecordPack::open(&path)) {
        RecordIoError::IndexOffsetPastEnd {
            path: idx,
            line,
            key,
            offset,
            rec_len,
            ..
        } => {
            assert_eq!(idx, dir.join("train.idx"));
            // Header line comes after 8 images and 5 identities.
            assert_eq!(
                (line, key, offset, rec_len),
                (14, 0, header_offset, header_offset)
            );
        }
        other => panic!("expected IndexOffsetPastEnd, got {other:?}"),
    }
}

#[test]
fn unparsable_idx_line_is_reported_with_its_number() {
    let dir = TempDir::new("bad-line");
    let path = good_pack(&dir);
    let idx = dir.join("train.idx");
    let text = fs::read_to_string(&idx).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "3 oops";
    fs::write(&idx, lines.join("\n")).unwrap();
    let error = expect_err(RecordPack::open(&path));
    match &error {
        RecordIoError::IndexLine { line, text, .. } => {
            assert_eq!((*line, text.as_str()), (3, "3 oops"))
        }
        other => panic!("expected IndexLine, got {other:?}"),
    }
    assert!(error.to_string().contains("train.idx line 3"), "{error}");
}

/// A pack with a hand-made header and identity records.
fn write_with_header(path: &Path, header: [f32; 2], identities: &[[f32; 2]], labels: &[f32]) {
    let mut writer = RecordWriter::create(path).unwrap();
    writer
        .write(0, &pack(IrLabel::Vector(&header), 0, 0, b""))
        .unwrap();
    let mut key = 1;
    for label in labels {
        writer
            .write(key, &pack(IrLabel::Scalar(*label), key, 0, b"img"))
            .unwrap();
        key += 1;
    }
    for range in identities {
        writer
            .write(key, &pack(IrLabel::Vector(range), key, 0, b""))
            .unwrap();
        key += 1;
    }
    writer.finish().unwrap();
}

fn header_mismatch(path: &Path) -> (RecordRef, String) {
    match expect_err(RecordPack::open(path)) {
        RecordIoError::HeaderMismatch { record, reason, .. } => (record, reason),
        other => panic!("expected HeaderMismatch, got {other:?}"),
    }
}

#[test]
fn header_ranges_that_disagree_with_the_file_are_rejected() {
    let dir = TempDir::new("header-mismatch");
    let path = dir.join("train.rec");

    write_with_header(
        &path,
        [4.0, 6.0],
        &[[1.0, 3.0], [3.0, 4.0]],
        &[0.0, 0.0, 1.0],
    );
    let pack = RecordPack::open(&path).unwrap();
    assert_eq!((pack.image_count(), pack.identity_count()), (3, 2));

    // Header claims 4 images: key 4 is an identity record, key 6 is missing.
    write_with_header(
        &path,
        [5.0, 7.0],
        &[[1.0, 3.0], [3.0, 4.0]],
        &[0.0, 0.0, 1.0],
    );
    let (record, reason) = header_mismatch(&path);
    assert_eq!(record, RecordRef::Key(0));
    assert!(reason.contains("the index has no key 6"), "{reason}");

    // More records than the header announces.
    write_with_header(
        &path,
        [4.0, 5.0],
        &[[1.0, 3.0], [3.0, 4.0]],
        &[0.0, 0.0, 1.0],
    );
    let (_, reason) = header_mismatch(&path);
    assert!(reason.contains("the index also has key 5"), "{reason}");

    // A gap between identity ranges names the identity record.
    write_with_header(
        &path,
        [4.0, 6.0],
        &[[1.0, 2.0], [3.0, 4.0]],
        &[0.0, 0.0, 1.0],
    );
    let (record, reason) = header_mismatch(&path);
    assert_eq!(record, RecordRef::Key(5));
    assert!(
        reason.contains("start = 2") && reason.contains("[3.0, 4.0]"),
        "{reason}"
    );

    // Ranges that stop short of the last image.
    write_with_header(
        &path,
        [4.0, 6.0],
        &[[1.0, 2.0], [2.0, 3.0]],
        &[0.0, 1.0, 1.0],
    );
    let (record, reason) = header_mismatch(&path);
    assert_eq!(record, RecordRef::Key(0));
    assert!(reason.contains("cover image keys 1..3"), "{reason}");

    // Not an integer key.
    write_with_header(&path, [3.5, 6.0], &[], &[]);
    let (_, reason) = header_mismatch(&path);
    assert!(reason.contains("found 3.5"), "{reason}");
}

#[test]
fn image_label_outside_its_identity_range_is_a_mismatch() {
    let dir = TempDir::new("label-mismatch");
    let path = dir.join("train.rec");
    write_with_header(
        &path,
        [4.0, 6.0],
        &[[1.0, 3.0], [3.0, 4.0]],
        &[0.0, 1.0, 1.0],
    );
    let pack = RecordPack::open(&path).unwrap();
    let offset = pack.records().offset(2).unwrap();
    match expect_err(pack.image(1)) {
        RecordIoError::LabelMismatch {
            record,
            offset: at,
            expected,
            found,
            ..
        } => assert_eq!(
            (record, at, expected, found),
            (RecordRef::Key(2), offset, 0, 1)
        ),
        other => panic!("expected LabelMismatch, got {other:?}"),
    }
}

#[test]
fn record_too_short_for_its_irheader() {
    let dir = TempDir::new("short");
    let path = dir.join("train.rec");
    let mut writer = RecordWriter::create(&path).unwrap();
    writer
        .write(0, &pack(IrLabel::Scalar(0.0), 0, 0, b"ok"))
        .unwrap();
    writer.write(1, b"too short").unwrap();
    writer.finish().unwrap();
    let offset = offset_of(&path, 1);
    match expect_err(RecordPack::open(&path)) {
        RecordIoError::RecordTooShort {
            record,
            offset: at,
            needed,
            found,
            ..
        } => assert_eq!(
            (record, at, needed, found),
            (RecordRef::Key(1), offset, 24, 9)
        ),
        other => panic!("expected RecordTooShort, got {other:?}"),
    }

    // A flag announcing more labels than the record holds.
    let mut payload = pack(IrLabel::Vector(&[1.0, 2.0]), 0, 0, b"");
    payload[0] = 3;
    let mut writer = RecordWriter::create(&path).unwrap();
    writer.write(0, &payload).unwrap();
    writer.finish().unwrap();
    match expect_err(RecordPack::open(&path)) {
        RecordIoError::RecordTooShort {
            what,
            needed,
            found,
            ..
        } => {
            assert_eq!(
                (what.as_str(), needed, found),
                ("an IRHeader and 3 extra labels", 36, 32)
            );
        }
        other => panic!("expected RecordTooShort, got {other:?}"),
    }
}

#[test]
fn labels_that_are_not_identity_indices_are_rejected() {
    let dir = TempDir::new("bad-label");
    let path = dir.join("train.rec");
    for bad in [-1.0f32, 2.5, f32::NAN] {
        let mut writer = RecordWriter::create(&path).unwrap();
        writer
            .write(0, &pack(IrLabel::Scalar(0.0), 0, 0, b"a"))
            .unwrap();
        writer
            .write(7, &pack(IrLabel::Scalar(bad), 7, 0, b"b"))
            .unwrap();
        writer.finish().unwrap();
        let offset = offset_of(&path, 7);
        let error = expect_err(RecordPack::open(&path));
        match &error {
            RecordIoError::InvalidLabel {
                record,
                offset: at,
                found,
                ..
            } => {
                assert_eq!((*record, *at), (RecordRef::Key(7), offset));
                assert_eq!(found.to_bits(), bad.to_bits());
            }
            other => panic!("expected InvalidLabel, got {other:?}"),
        }
        assert!(
            error.to_string().contains(&format!("label {bad}")),
            "{error}"
        );
    }
}
