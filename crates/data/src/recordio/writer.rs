//! [`RecordWriter`]: writes keyed records to a `.rec` and its `.idx`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::error::{RecordIoError, RecordRef};
use super::frame;
use super::index::{self, IndexEntry};

/// Writes records as MXNet's `MXIndexedRecordIO.write_idx` does: each
/// payload framed into the `.rec`, and a `key<TAB>offset` line into the
/// `.idx`, in write order.
///
/// Both files are written under temporary names in the same folder and
/// renamed into place by [`RecordWriter::finish`], so an interrupted run
/// never leaves a pack that looks complete. Dropping an unfinished writer
/// deletes the temporary files.
#[derive(Debug)]
pub struct RecordWriter {
    rec_path: PathBuf,
    idx_path: PathBuf,
    rec_temp: PathBuf,
    idx_temp: PathBuf,
    rec: BufWriter<File>,
    idx: BufWriter<File>,
    /// Bytes written to the `.rec` so far: the offset of the next record.
    position: u64,
    keys: HashSet<u64>,
    finished: bool,
}

/// What a finished writer produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub records: usize,
    /// Size of the `.rec`.
    pub bytes: u64,
}

impl RecordWriter {
    /// Start writing `rec_path` and the `.idx` next to it (`train.rec` ->
    /// `train.idx`). Existing files there are replaced on `finish`.
    pub fn create(rec_path: impl AsRef<Path>) -> Result<Self, RecordIoError> {
        let rec_path = rec_path.as_ref().to_path_buf();
        let idx_path = index::idx_path_for(&rec_path);
        let rec_temp = index::temp_path_for(&rec_path);
        let idx_temp = index::temp_path_for(&idx_path);
        let create = |path: &Path| {
            File::create(path)
                .map(BufWriter::new)
                .map_err(|source| RecordIoError::io("cannot create", path, source))
        };
        let rec = create(&rec_temp)?;
        let idx = create(&idx_temp).inspect_err(|_| {
            let _ = fs::remove_file(&rec_temp);
        })?;
        Ok(Self {
            rec_path,
            idx_path,
            rec_temp,
            idx_temp,
            rec,
            idx,
            position: 0,
            keys: HashSet::new(),
            finished: false,
        })
    }

    /// The path the `.rec` gets on `finish`.
    pub fn path(&self) -> &Path {
        &self.rec_path
    }

    /// Append one record under `key` and return its offset.
    pub fn write(&mut self, key: u64, payload: &[u8]) -> Result<u64, RecordIoError> {
        if payload.len() > frame::MAX_PAYLOAD_LEN {
            return Err(RecordIoError::PayloadTooLarge {
                path: self.rec_path.clone(),
                record: RecordRef::Key(key),
                len: payload.len(),
            });
        }
        if !self.keys.insert(key) {
            return Err(RecordIoError::DuplicateKey {
                path: self.rec_path.clone(),
                key,
            });
        }
        let offset = self.position;
        self.position += frame::write_record(&mut self.rec, payload)
            .map_err(|source| RecordIoError::io("cannot write", &self.rec_temp, source))?;
        index::write_line(&mut self.idx, IndexEntry { key, offset })
            .map_err(|source| RecordIoError::io("cannot write", &self.idx_temp, source))?;
        Ok(offset)
    }

    /// Flush and sync both files, then move them into place: the `.rec`
    /// first, so that a crash in between leaves either the old pack or a
    /// new `.rec` without an `.idx` (which readers rebuild), never a new
    /// `.rec` with a stale `.idx`.
    pub fn finish(mut self) -> Result<Written, RecordIoError> {
        let records = self.keys.len();
        sync(&mut self.rec, &self.rec_temp)?;
        sync(&mut self.idx, &self.idx_temp)?;
        match fs::remove_file(&self.idx_path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RecordIoError::io("cannot replace", &self.idx_path, source)),
        }
        fs::rename(&self.rec_temp, &self.rec_path).map_err(|source| {
            RecordIoError::io("cannot rename into place", &self.rec_path, source)
        })?;
        fs::rename(&self.idx_temp, &self.idx_path).map_err(|source| {
            RecordIoError::io("cannot rename into place", &self.idx_path, source)
        })?;
        self.finished = true;
        Ok(Written {
            records,
            bytes: self.position,
        })
    }
}

fn sync(out: &mut BufWriter<File>, path: &Path) -> Result<(), RecordIoError> {
    out.flush()
        .map_err(|source| RecordIoError::io("cannot write", path, source))?;
    out.get_ref()
        .sync_all()
        .map_err(|source| RecordIoError::io("cannot sync", path, source))
}

impl Drop for RecordWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort: the temporary names are hidden and never read.
            let _ = fs::remove_file(&self.rec_temp);
            let _ = fs::remove_file(&self.idx_temp);
        }
    }
}
