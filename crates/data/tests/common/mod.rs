//! Helpers shared by the RecordIO test files (`recordio.rs`, `recordio_corrupt.rs`,
//! `recordio_index.rs`): temp dirs, the payloads and packs they write, and checks on
//! what a pack reads back. Each file uses a subset, hence `dead_code` is allowed.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use lgaf_data::recordio::{
    pack, IrLabel, PackWriter, RecordFile, RecordIoError, RecordPack, RecordWriter, MAGIC,
};

pub const M: [u8; 4] = MAGIC.to_le_bytes();

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("lgaf-recordio-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("cannot create temp dir");
        Self(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn names(&self) -> Vec<String> {
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
pub fn tricky_images() -> Vec<Vec<u8>> {
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
pub fn labelled_images() -> Vec<(u32, Vec<u8>)> {
    let labels = [0, 0, 1, 1, 1, 3, 3, 4];
    labels.into_iter().zip(tricky_images()).collect()
}

pub fn write_pack(path: &Path, images: &[(u32, Vec<u8>)]) {
    let mut writer = PackWriter::create(path).unwrap();
    for (label, image) in images {
        writer.add(*label, image).unwrap();
    }
    writer.finish().unwrap();
}

pub fn expect_err<T: std::fmt::Debug>(result: Result<T, RecordIoError>) -> RecordIoError {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(error) => error,
    }
}

pub fn assert_pack_holds(pack: &RecordPack, images: &[(u32, Vec<u8>)]) {
    assert_eq!(pack.image_count(), images.len());
    for (index, (label, bytes)) in images.iter().enumerate() {
        let image = pack.image(index).unwrap();
        assert_eq!(image.index, index);
        assert_eq!(image.label, *label, "image {index}");
        assert_eq!(&*image.bytes, &bytes[..], "image {index}");
        assert_eq!(pack.labels()[index], *label);
    }
}

/// Records written by MXNet-style tools without a header record: every
/// record is an image, labels as scalars or as the first of a label vector,
/// keys in any order, identities not grouped.
pub fn write_headerless(path: &Path) -> Vec<(u64, u32, Vec<u8>)> {
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

/// A header pack with the given images; returns its path.
pub fn good_pack(dir: &TempDir) -> PathBuf {
    let path = dir.join("train.rec");
    write_pack(&path, &labelled_images());
    path
}

pub fn offset_of(path: &Path, key: u64) -> u64 {
    RecordFile::open(path).unwrap().offset(key).unwrap()
}
