//! Round trips through the RecordIO writers and readers: packs with and without a
//! header record, raw records, a missing `.idx` rebuilt on open, reads across threads,
//! and the writers' own checks (atomic publish, rejected input).

mod common;

use std::borrow::Cow;
use std::fs;

use common::{
    assert_pack_holds, expect_err, labelled_images, tricky_images, write_headerless, write_pack,
    TempDir, M,
};
use lgaf_data::recordio::{
    IndexMode, IndexSource, PackHeader, PackWriter, RecordFile, RecordIoError, RecordPack,
    RecordWriter,
};

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
