//! Random and sequential access to the raw records of a memory-mapped `.rec`.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::{RecordIoError, RecordRef};
use super::frame;
use super::index::{self, FileOrder, RecordIndex};

/// Where the index of an open file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexSource {
    /// Read from the `.idx` next to the `.rec`.
    IdxFile,
    /// Rebuilt by scanning the `.rec`, because the `.idx` was missing or
    /// because [`IndexMode::Rebuild`] asked for it; `saved` says whether it
    /// could be written next to the pack.
    Rebuilt { saved: bool },
}

/// How [`RecordFile::open_with`] gets the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IndexMode {
    /// Read the `.idx` and check it against the `.rec` (an index that does
    /// not match is an error); scan the `.rec` only when there is no `.idx`.
    #[default]
    Read,
    /// Scan the `.rec` whatever the `.idx` holds, and replace the `.idx` with
    /// the result: the repair for an index that failed its check. Failing to
    /// write the new `.idx` is an error here, since writing it was asked for.
    Rebuild,
}

/// A `.rec` file and its index. Reads take `&self` and the type is
/// `Send + Sync`, so many loader threads can share one.
#[derive(Debug)]
pub struct RecordFile {
    path: PathBuf,
    map: Mmap,
    index: RecordIndex,
    index_source: IndexSource,
}

impl RecordFile {
    /// Map `rec_path` and read its `.idx` (`train.rec` -> `train.idx`), or
    /// rebuild the index if there is none (see [`RecordFile::open_with`]).
    pub fn open(rec_path: impl AsRef<Path>) -> Result<Self, RecordIoError> {
        Self::open_with(rec_path, IndexMode::Read, |_, _| {})
    }

    /// Map `rec_path` and get its index as `mode` says. An `.idx` that is read
    /// is checked against the `.rec` (see [`IndexMode::Read`]); when there is
    /// none (or `mode` asks for it) the `.rec` is scanned, calling
    /// `progress(bytes_done, bytes_total)` as the scan advances, and the index
    /// is written next to the pack if the folder is writable.
    pub fn open_with(
        rec_path: impl AsRef<Path>,
        mode: IndexMode,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Self, RecordIoError> {
        let path = rec_path.as_ref().to_path_buf();
        let file =
            File::open(&path).map_err(|source| RecordIoError::io("cannot open", &path, source))?;
        // SAFETY: the map is read-only. As for any mmap reader, the file must
        // not be truncated or rewritten while it is open; this crate's writers
        // never touch a finished pack (they write a new file and rename it).
        let map = unsafe { Mmap::map(&file) }
            .map_err(|source| RecordIoError::io("cannot memory-map", &path, source))?;

        let idx_path = index::idx_path_for(&path);
        let existing = match mode {
            IndexMode::Read => match std::fs::read(&idx_path) {
                Ok(bytes) => Some(bytes),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => return Err(RecordIoError::io("cannot read", &idx_path, source)),
            },
            IndexMode::Rebuild => None,
        };
        let (index, index_source) = match existing {
            Some(bytes) => {
                let index = index::parse(&bytes, &idx_path, &path, map.len() as u64)?;
                index::check_against_rec(&index, &bytes, &idx_path, &map, &path)?;
                (index, IndexSource::IdxFile)
            }
            None => {
                let index = index::scan(&map, &path, &mut progress)?;
                let saved = match (index::write_atomic(&index, &idx_path), mode) {
                    (Ok(()), _) => true,
                    (Err(error), IndexMode::Rebuild) => return Err(error),
                    // A read-only dataset folder is normal; the index then lives in memory only.
                    (Err(_), IndexMode::Read) => false,
                };
                (index, IndexSource::Rebuilt { saved })
            }
        };
        Ok(Self {
            path,
            map,
            index,
            index_source,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of records in the index.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    /// Size of the `.rec` in bytes.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn index_source(&self) -> IndexSource {
        self.index_source
    }

    /// All keys, in increasing order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.index.by_key().iter().map(|entry| entry.key)
    }

    /// The byte offset of `key`'s record, if the index has that key.
    pub fn offset(&self, key: u64) -> Option<u64> {
        self.index.offset(key)
    }

    /// The payload of `key`'s record (`None` if the index lacks the key);
    /// borrowed from the map when the record is a single frame.
    pub fn record(&self, key: u64) -> Result<Option<Cow<'_, [u8]>>, RecordIoError> {
        self.index
            .offset(key)
            .map(|offset| self.read_at(key, offset))
            .transpose()
    }

    /// Decode the record at `offset`; `key` names it in errors.
    pub(crate) fn read_at(&self, key: u64, offset: u64) -> Result<Cow<'_, [u8]>, RecordIoError> {
        // The index guarantees offset < file length, which fits in usize.
        let at = offset as usize;
        frame::decode_record(&self.map, at)
            .map(|decoded| decoded.payload)
            .map_err(|error| error.locate(&self.path, RecordRef::Key(key), at))
    }

    /// Every indexed record in file order, as `(key, payload)`: the access
    /// pattern a sequential pass over the pack should use.
    pub fn iter(&self) -> Records<'_> {
        Records {
            file: self,
            entries: self.index.in_file_order(),
        }
    }

    pub(crate) fn index(&self) -> &RecordIndex {
        &self.index
    }
}

/// Iterator of [`RecordFile::iter`].
pub struct Records<'a> {
    file: &'a RecordFile,
    entries: FileOrder<'a>,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(u64, Cow<'a, [u8]>), RecordIoError>;

    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.entries.next()?;
        Some(
            self.file
                .read_at(entry.key, entry.offset)
                .map(|payload| (entry.key, payload)),
        )
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl ExactSizeIterator for Records<'_> {}
