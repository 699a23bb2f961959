//! Round trips through the RecordIO writers and readers, and the errors that
//! corrupt packs produce (each built by writing a good pack and then
//! truncating it or changing bytes at known offsets).

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};

use lgaf_data::recordio::{
    pack, IndexMode, IndexSource, IrLabel, PackHeader, PackWriter, RecordFile, RecordIoError,
    RecordPack, RecordRef, RecordWriter, MAGIC,
};

const M: [u8; 4] = MAGIC.to_le_bytes();

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("lgaf-recordio-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("cannot create temp dir");
        Self(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.0)
            .expect("temp dir is readable")
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Image payloads that exercise the framing: the magic aligned at the
/// start, middle and end of the image (the IRHeader is 24 bytes, so
/// image-aligned is record-aligned), unaligned, repeated, and empty.
fn tricky_images() -> Vec<Vec<u8>> {
    vec![
        b"plain jpeg bytes".to_vec(),
        [&M[..], b"after"].concat(),
        [&b"abcd"[..], &M, b"efgh", &M, b"ij"].concat(),
        [&b"ab"[..], &M, b"unaligned"].concat(),
        [&b"1234"[..], &M].concat(),
        Vec::new(),
        [&M[..], &M, &M].concat(),
        (0..=255u8).cycle().take(3000).collect(),
    ]
}

/// (label, image) pairs grouped by identity, identity 2 left without images.
fn labelled_images() -> Vec<(u32, Vec<u8>)> {
    let labels = [0, 0, 1, 1, 1, 3, 3, 4];
    labels.into_iter().zip(tricky_images()).collect()
}

fn write_pack(path: &Path, images: &[(u32, Vec<u8>)]) {
    let mut writer = PackWriter::create(path).unwrap();
    for (label, image) in images {
        writer.add(*label, image).unwrap();
    }
    writer.finish().unwrap();
}

fn expect_err<T: std::fmt::Debug>(result: Result<T, RecordIoError>) -> RecordIoError {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(error) => error,
    }
}

fn assert_pack_holds(pack: &RecordPack, images: &[(u32, Vec<u8>)]) {
    assert_eq!(pack.image_count(), images.len());
    for (index, (label, bytes)) in images.iter().enumerate() {
        let image = pack.image(index).unwrap();
        assert_eq!(image.index, index);
        assert_eq!(image.label, *label, "image {index}");
        assert_eq!(&*image.bytes, &bytes[..], "image {index}");
        assert_eq!(pack.labels()[index], *label);
    }
}

#[test]
fn pack_round_trip_with_header_record() {
    let dir = TempDir::new("header");
    let path = dir.join("train.rec");
    let images = labelled_images();
    write_pack(&path, &images);
    assert_eq!(dir.names(), vec!["train.idx", "train.rec"]);

    let pack = RecordPack::open(&path).unwrap();
    assert_eq!(pack.index_source(), IndexSource::IdxFile);
    assert_eq!(
        pack.header(),
        Some(&PackHeader {
            image_keys: 1..9,
            identity_keys: 9..14
        })
    );
    assert_eq!(pack.identity_count(), 5);
    let ranges: Vec<_> = (0..5).map(|k| pack.identity_images(k)).collect();
    assert_eq!(ranges, vec![0..2, 2..5, 5..5, 5..7, 7..8]);
    assert_pack_holds(&pack, &images);

    // Image keys follow the header; split records are the owned ones.
    for (index, (_, bytes)) in images.iter().enumerate() {
        let image = pack.image(index).unwrap();
        assert_eq!(image.key, index as u64 + 1);
        let split = bytes.chunks_exact(4).any(|chunk| chunk == M);
        assert_eq!(matches!(image.bytes, Cow::Owned(_)), split, "image {index}");
    }
}

#[test]
fn pack_iterator_walks_images_in_file_order() {
    let dir = TempDir::new("iter");
    let path = dir.join("train.rec");
    let images = labelled_images();
    write_pack(&path, &images);
    let pack = RecordPack::open(&path).unwrap();

    let seen: Vec<_> = pack.iter().map(|image| image.unwrap()).collect();
    assert_eq!(seen.len(), images.len());
    let offsets: Vec<u64> = seen
        .iter()
        .map(|image| pack.records().offset(image.key).unwrap())
        .collect();
    assert!(offsets.windows(2).all(|pair| pair[0] < pair[1]));
    for image in &seen {
        assert_eq!(*image, pack.image(image.index).unwrap());
    }
    pack.verify().unwrap();
}

#[test]
fn empty_pack_round_trips() {
    let dir = TempDir::new("empty");
    let path = dir.join("train.rec");
    let summary = PackWriter::create(&path).unwrap().finish().unwrap();
    assert_eq!(summary.header.image_keys, 1..1);
    let pack = RecordPack::open(&path).unwrap();
    assert_eq!((pack.image_count(), pack.identity_count()), (0, 0));
    assert_eq!(pack.iter().count(), 0);
}

#[test]
fn empty_record_file_opens_with_and_without_idx() {
    let dir = TempDir::new("empty-rec");
    let path = dir.join("none.rec");
    let written = RecordWriter::create(&path).unwrap().finish().unwrap();
    assert_eq!((written.records, written.bytes), (0, 0));
    for remove_idx in [false, true] {
        if remove_idx {
            fs::remove_file(dir.join("none.idx")).unwrap();
        }
        let pack = RecordPack::open(&path).unwrap();
        assert_eq!((pack.image_count(), pack.identity_count()), (0, 0));
        assert!(pack.records().is_empty());
    }
}

#[test]
fn missing_rec_names_the_file() {
    let dir = TempDir::new("missing");
    let path = dir.join("absent.rec");
    let error = expect_err(RecordPack::open(&path));
    assert!(
        matches!(&error, RecordIoError::Io { path: p, .. } if *p == path),
        "{error}"
    );
}

#[test]
fn missing_idx_is_rebuilt_and_saved() {
    let dir = TempDir::new("rebuild");
    let path = dir.join("train.rec");
    let images = labelled_images();
    write_pack(&path, &images);
    let idx = dir.join("train.idx");
    let original_idx = fs::read_to_string(&idx).unwrap();
    fs::remove_file(&idx).unwrap();

    let mut calls = Vec::new();
    let pack = RecordPack::open_with(&path, IndexMode::Read, |done, total| {
        calls.push((done, total))
    })
    .unwrap();
    assert_eq!(pack.index_source(), IndexSource::Rebuilt { saved: true });
    let total = fs::metadata(&path).unwrap().len();
    assert_eq!(calls.last(), Some(&(total, total)));
    assert!(calls.windows(2).all(|pair| pair[0].0 <= pair[1].0));
    assert_pack_holds(&pack, &images);
    assert_eq!(pack.identity_count(), 5);

    // The writer's idx is in file order too, so the rebuilt one is identical.
    assert_eq!(fs::read_to_string(&idx).unwrap(), original_idx);
    assert_eq!(dir.names(), vec!["train.idx", "train.rec"]);
}

/// Records written by MXNet-style tools without a header record: every
/// record is an image, labels as scalars or as the first of a label vector,
/// keys in any order, identities not grouped.
fn write_headerless(path: &Path) -> Vec<(u64, u32, Vec<u8>)> {
    let records: Vec<(u64, u32, Vec<u8>)> = vec![
        (0, 2, b"zero".to_vec()),
        (5, 0, [&M[..], b"five"].concat()),
        (3, 1, b"three".to_vec()),
        (4, 0, b"four".to_vec()),
        (9, 2, [&b"nine"[..], &M].concat()),
    ];
    let mut writer = RecordWriter::create(path).unwrap();
    for (key, label, image) in &records {
        let label = *label as f32;
        let payload = if key % 2 == 0 {
            pack(IrLabel::Scalar(label), *key, 0, image)
        } else {
            pack(IrLabel::Vector(&[label, 0.5]), *key, 0, image)
        };
        writer.write(*key, &payload).unwrap();
    }
    writer.finish().unwrap();
    records
}

#[test]
fn pack_without_header_derives_identities_from_labels() {
    let dir = TempDir::new("headerless");
    let path = dir.join("plain.rec");
    write_headerless(&path);
    for remove_idx in [false, true] {
        if remove_idx {
            fs::remove_file(dir.join("plain.idx")).unwrap();
        }
        let pack = RecordPack::open(&path).unwrap();
        assert_eq!(pack.header(), None);
        assert_eq!((pack.image_count(), pack.identity_count()), (5, 3));
        // Ordered by (label, key).
        let keys: Vec<u64> = (0..5).map(|i| pack.image(i).unwrap().key).collect();
        assert_eq!(keys, vec![4, 5, 3, 0, 9], "idx removed: {remove_idx}");
        assert_eq!(pack.labels(), &[0, 0, 1, 2, 2]);
        assert_eq!(pack.identity_images(1), 2..3);
        assert_eq!(
            &*pack.image(1).unwrap().bytes,
            &[&M[..], b"five"].concat()[..]
        );
        let file_keys: Vec<u64> = pack.iter().map(|image| image.unwrap().key).collect();
        assert_eq!(file_keys, vec![0, 5, 3, 4, 9]);
    }
}

#[test]
fn raw_records_round_trip_by_key_and_in_file_order() {
    let dir = TempDir::new("raw");
    let path = dir.join("raw.rec");
    let payloads = tricky_images();
    let keys: Vec<u64> = vec![70, 3, 12, 0, 5, 99, 1, 40];
    let mut writer = RecordWriter::create(&path).unwrap();
    for (key, payload) in keys.iter().zip(&payloads) {
        writer.write(*key, payload).unwrap();
    }
    let written = writer.finish().unwrap();
    assert_eq!(written.records, payloads.len());
    assert_eq!(written.bytes, fs::metadata(&path).unwrap().len());

    let file = RecordFile::open(&path).unwrap();
    assert_eq!(file.len(), keys.len());
    for (key, payload) in keys.iter().zip(&payloads) {
        assert_eq!(&*file.record(*key).unwrap().unwrap(), &payload[..]);
    }
    assert!(file.record(2).unwrap().is_none());
    let in_order: Vec<u64> = file.iter().map(|record| record.unwrap().0).collect();
    assert_eq!(in_order, keys);
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(file.keys().collect::<Vec<_>>(), sorted);
}

#[test]
fn reads_agree_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RecordPack>();

    let dir = TempDir::new("threads");
    let path = dir.join("train.rec");
    let images = labelled_images();
    write_pack(&path, &images);
    let pack = RecordPack::open(&path).unwrap();
    std::thread::scope(|scope| {
        for shift in 0..4 {
            let (pack, images) = (&pack, &images);
            scope.spawn(move || {
                for round in 0..50 {
                    let index = (round * 3 + shift) % images.len();
                    assert_eq!(&*pack.image(index).unwrap().bytes, &images[index].1[..]);
                }
            });
        }
    });
}

#[test]
fn writer_publishes_only_on_finish() {
    let dir = TempDir::new("atomic");
    let path = dir.join("train.rec");
    write_pack(&path, &labelled_images()[..2]);
    let old = fs::read(&path).unwrap();

    let mut writer = PackWriter::create(&path).unwrap();
    writer.add(0, b"new image").unwrap();
    // The old pack is untouched; the new one lives under hidden names.
    assert_eq!(fs::read(&path).unwrap(), old);
    let names = dir.names();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names
        .iter()
        .filter(|name| name.ends_with(".partial"))
        .all(|n| n.starts_with('.')));
    drop(writer);
    assert_eq!(dir.names(), vec!["train.idx", "train.rec"]);
    assert_eq!(fs::read(&path).unwrap(), old);

    let mut writer = PackWriter::create(&path).unwrap();
    writer.add(0, b"new image").unwrap();
    writer.finish().unwrap();
    assert_eq!(dir.names(), vec!["train.idx", "train.rec"]);
    let pack = RecordPack::open(&path).unwrap();
    assert_eq!(&*pack.image(0).unwrap().bytes, b"new image");
}

#[test]
fn writers_reject_bad_input() {
    let dir = TempDir::new("writer-errors");
    let mut raw = RecordWriter::create(dir.join("raw.rec")).unwrap();
    raw.write(4, b"a").unwrap();
    let error = expect_err(raw.write(4, b"b"));
    assert!(
        matches!(error, RecordIoError::DuplicateKey { key: 4, .. }),
        "{error}"
    );

    let mut writer = PackWriter::create(dir.join("train.rec")).unwrap();
    writer.add(3, b"x").unwrap();
    let error = expect_err(writer.add(2, b"y"));
    assert!(
        matches!(
            error,
            RecordIoError::UnsortedLabel {
                previous: 3,
                found: 2,
                ..
            }
        ),
        "{error}"
    );
    let error = expect_err(writer.add(16_777_217, b"z"));
    assert!(
        matches!(
            error,
            RecordIoError::LabelTooLarge {
                value: 16_777_217,
                ..
            }
        ),
        "{error}"
    );
}

// ---- corrupt packs ----

/// A header pack with the given images; returns its path.
fn good_pack(dir: &TempDir) -> PathBuf {
    let path = dir.join("train.rec");
    write_pack(&path, &labelled_images());
    path
}

fn offset_of(path: &Path, key: u64) -> u64 {
    RecordFile::open(path).unwrap().offset(key).unwrap()
}

fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let mut data = fs::read(path).unwrap();
    data[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    fs::write(path, data).unwrap();
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

// ---- an .idx that does not match its .rec ----

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
