//! [`RecordPack`]: an insightface training pack opened for reading.

use std::borrow::Cow;
use std::ops::Range;
use std::path::Path;

use super::error::{RecordIoError, RecordRef};
use super::layout::{self, Layout, PackHeader};
use super::reader::{IndexMode, IndexSource, RecordFile};

/// An insightface `train.rec` + `train.idx`: images with identity labels.
///
/// Images are numbered `0..image_count()`. With a header record, image `i`
/// is record key `i + 1`; without one, images are ordered by (label, key).
/// Either way identity `k` holds a contiguous range of images. Reads take
/// `&self` and the type is `Send + Sync`.
#[derive(Debug)]
pub struct RecordPack {
    records: RecordFile,
    layout: Layout,
}

/// One image of a pack.
#[derive(Debug, Clone, PartialEq)]
pub struct PackImage<'a> {
    /// Position in `0..image_count()`.
    pub index: usize,
    /// Record key in the `.idx`.
    pub key: u64,
    /// Identity index.
    pub label: u32,
    /// The encoded image (JPEG, PNG, ...): borrowed from the memory map
    /// unless the record was split into several frames.
    pub bytes: Cow<'a, [u8]>,
}

impl RecordPack {
    /// Open a pack; see [`RecordFile::open`] for the index.
    pub fn open(rec_path: impl AsRef<Path>) -> Result<Self, RecordIoError> {
        Self::open_with(rec_path, IndexMode::Read, |_, _| {})
    }

    /// Open a pack, getting its index as `mode` says (see [`RecordFile::open_with`]):
    /// [`IndexMode::Rebuild`] repairs an `.idx` that does not match the `.rec`; a scan
    /// calls `progress(bytes_done, bytes_total)` as it advances.
    pub fn open_with(
        rec_path: impl AsRef<Path>,
        mode: IndexMode,
        progress: impl FnMut(u64, u64),
    ) -> Result<Self, RecordIoError> {
        let records = RecordFile::open_with(rec_path, mode, progress)?;
        let layout = Layout::derive(&records)?;
        Ok(Self { records, layout })
    }

    pub fn path(&self) -> &Path {
        self.records.path()
    }

    pub fn image_count(&self) -> usize {
        self.layout.labels.len()
    }

    pub fn identity_count(&self) -> usize {
        self.layout.bounds.len() - 1
    }

    /// The identity index of every image, by image index.
    pub fn labels(&self) -> &[u32] {
        &self.layout.labels
    }

    /// The images of `identity`, a possibly empty range of image indices.
    ///
    /// # Panics
    /// If `identity >= identity_count()`.
    pub fn identity_images(&self, identity: usize) -> Range<usize> {
        let bounds = &self.layout.bounds;
        bounds[identity] as usize..bounds[identity + 1] as usize
    }

    /// The header record, if the pack has one.
    pub fn header(&self) -> Option<&PackHeader> {
        self.layout.header.as_ref()
    }

    /// Where the index came from (the `.idx` or a scan).
    pub fn index_source(&self) -> IndexSource {
        self.records.index_source()
    }

    /// The raw records under the layout.
    pub fn records(&self) -> &RecordFile {
        &self.records
    }

    /// The record key of image `index` and the byte offset where its record starts, for
    /// messages about it.
    ///
    /// # Panics
    /// If `index >= image_count()`.
    pub fn image_location(&self, index: usize) -> (u64, u64) {
        let entry = self.layout.entry(&self.records, index);
        (entry.key, entry.offset)
    }

    /// Read image `index`, checking that its record's label is the identity
    /// the layout gives it.
    ///
    /// # Panics
    /// If `index >= image_count()`.
    pub fn image(&self, index: usize) -> Result<PackImage<'_>, RecordIoError> {
        let expected = self.layout.labels[index];
        let entry = self.layout.entry(&self.records, index);
        let payload = self.records.read_at(entry.key, entry.offset)?;

        let record = RecordRef::Key(entry.key);
        let path = self.records.path();
        let ir = layout::parse_payload(path, record, entry.offset, &payload)?;
        let label = layout::identity_label(path, record, entry.offset, &ir)?;
        if label != expected {
            return Err(RecordIoError::LabelMismatch {
                path: path.to_path_buf(),
                record,
                offset: entry.offset,
                expected,
                found: label,
            });
        }
        let data_start = payload.len() - ir.data.len();
        let bytes = match payload {
            Cow::Borrowed(payload) => Cow::Borrowed(&payload[data_start..]),
            Cow::Owned(mut payload) => {
                payload.drain(..data_start);
                Cow::Owned(payload)
            }
        };
        Ok(PackImage {
            index,
            key: entry.key,
            label,
            bytes,
        })
    }

    /// Every image in file order, the fastest way through the whole pack.
    pub fn iter(&self) -> Images<'_> {
        Images {
            pack: self,
            order: self.layout.file_order.iter(),
        }
    }

    /// Read every image once, checking framing, IRHeaders and labels.
    pub fn verify(&self) -> Result<(), RecordIoError> {
        self.iter().try_for_each(|image| image.map(drop))
    }
}

/// Iterator of [`RecordPack::iter`].
#[derive(Debug, Clone)]
pub struct Images<'a> {
    pack: &'a RecordPack,
    order: std::slice::Iter<'a, u32>,
}

impl<'a> Iterator for Images<'a> {
    type Item = Result<PackImage<'a>, RecordIoError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.order
            .next()
            .map(|&index| self.pack.image(index as usize))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.order.size_hint()
    }
}

impl ExactSizeIterator for Images<'_> {}
