//! [`PackWriter`]: writes an insightface training pack.

use std::path::Path;

use super::error::RecordIoError;
use super::irheader::{pack, IrLabel, MAX_EXACT_F32_INTEGER};
use super::layout::PackHeader;
use super::writer::RecordWriter;

/// Writes images in insightface's layout: images are keys `1..=N`, one
/// identity record per identity follows (keys `N+1..N+K`, labels
/// `[start, end)` of its image keys), and the header record, key 0 with
/// labels `(N+1, N+1+K)`, is written last (only then are N and K known; the
/// `.idx` makes the order irrelevant to readers).
///
/// Image records carry `IRHeader(0, label, key, 0)` as insightface's
/// `face2rec2.py` writes them. Images must be added grouped by identity in
/// increasing label order; a skipped label is an identity without images.
#[derive(Debug)]
pub struct PackWriter {
    records: RecordWriter,
    /// First image key of every identity so far.
    identity_starts: Vec<u32>,
    next_key: u32,
}

/// What a finished pack holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSummary {
    pub header: PackHeader,
    /// Size of the `.rec`.
    pub bytes: u64,
}

impl PackWriter {
    /// Start writing the pack `rec_path` (and its `.idx`).
    pub fn create(rec_path: impl AsRef<Path>) -> Result<Self, RecordIoError> {
        Ok(Self {
            records: RecordWriter::create(rec_path)?,
            identity_starts: Vec::new(),
            next_key: 1,
        })
    }

    /// Append an encoded image of identity `label`; returns its record key.
    pub fn add(&mut self, label: u32, image: &[u8]) -> Result<u64, RecordIoError> {
        let current = self.identity_starts.len().checked_sub(1);
        if let Some(previous) = current.filter(|&previous| label < previous as u32) {
            return Err(RecordIoError::UnsortedLabel {
                path: self.records.path().to_path_buf(),
                previous: previous as u32,
                found: label,
            });
        }
        // Labels and keys are stored as f32 in the records.
        self.check_exact("identity label", u64::from(label))?;
        self.check_exact("record key", u64::from(self.next_key))?;

        let key = self.next_key;
        let payload = pack(IrLabel::Scalar(label as f32), u64::from(key), 0, image);
        self.records.write(u64::from(key), &payload)?;
        // Identities up to `label` (including skipped ones) start here at the latest.
        self.identity_starts.resize(label as usize + 1, key);
        self.next_key += 1;
        Ok(u64::from(key))
    }

    /// Write the identity records and the header record, then move the
    /// pack into place.
    pub fn finish(mut self) -> Result<PackSummary, RecordIoError> {
        let identities_start = self.next_key;
        let identity_count = self.identity_starts.len() as u64;
        let end = u64::from(identities_start) + identity_count;
        self.check_exact("record key", end)?;

        // Identity k covers image keys from its start to the next identity's.
        let stops = self
            .identity_starts
            .iter()
            .skip(1)
            .copied()
            .chain([identities_start]);
        let keys = u64::from(identities_start)..;
        for ((key, &start), stop) in keys.zip(&self.identity_starts).zip(stops) {
            let labels = [start as f32, stop as f32];
            let payload = pack(IrLabel::Vector(&labels), key, 0, &[]);
            self.records.write(key, &payload)?;
        }
        let labels = [identities_start as f32, end as f32];
        self.records
            .write(0, &pack(IrLabel::Vector(&labels), 0, 0, &[]))?;

        let written = self.records.finish()?;
        Ok(PackSummary {
            header: PackHeader {
                image_keys: 1..u64::from(identities_start),
                identity_keys: u64::from(identities_start)..end,
            },
            bytes: written.bytes,
        })
    }

    fn check_exact(&self, what: &'static str, value: u64) -> Result<(), RecordIoError> {
        if value > u64::from(MAX_EXACT_F32_INTEGER) {
            return Err(RecordIoError::LabelTooLarge {
                path: self.records.path().to_path_buf(),
                what,
                value,
            });
        }
        Ok(())
    }
}
