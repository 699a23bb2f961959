//! The insightface layout of a pack: which records are images and which
//! identity each image belongs to. It comes from the header record (key 0)
//! and the identity records when the pack has them, and from the labels of
//! the image records otherwise.

use std::ops::Range;
use std::path::Path;

use super::error::{RecordIoError, RecordRef};
use super::index::IndexEntry;
use super::irheader::{exact_index, IrRecord};
use super::reader::RecordFile;

/// The header record's flag: it carries the two labels `(N+1, N+1+K)`.
pub const HEADER_FLAG: u32 = 2;

/// What the header record (key 0) of an insightface pack says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackHeader {
    /// Keys of the N image records: `1..N+1`.
    pub image_keys: Range<u64>,
    /// Keys of the K identity records: `N+1..N+1+K`.
    pub identity_keys: Range<u64>,
}

/// How image indices map to records.
#[derive(Debug)]
enum ImageKeys {
    /// Image `i` is key `i + 1` (packs with a header record).
    AfterHeader,
    /// Image `i` is `entries[i]` (packs without one, sorted by label).
    Listed(Vec<IndexEntry>),
}

/// The images and identities of a pack.
#[derive(Debug)]
pub struct Layout {
    pub header: Option<PackHeader>,
    images: ImageKeys,
    /// Identity index of every image.
    pub labels: Vec<u32>,
    /// Identity `k` holds images `bounds[k]..bounds[k + 1]`.
    pub bounds: Vec<u32>,
    /// Image indices in the order their records appear in the file.
    pub file_order: Vec<u32>,
}

impl Layout {
    /// Work out the layout of `records`, reading the header and identity
    /// records, or every image record when there is no header.
    pub fn derive(records: &RecordFile) -> Result<Self, RecordIoError> {
        if let Some(offset) = records.offset(0) {
            let payload = records.read_at(0, offset)?;
            let record = parse_payload(records.path(), RecordRef::Key(0), offset, &payload)?;
            if record.header.flag == HEADER_FLAG {
                let (first, second) = (record.labels[0], record.labels[1]);
                return from_header(records, offset, first, second);
            }
        }
        from_image_labels(records)
    }

    /// The key and offset of image `index`'s record.
    pub fn entry(&self, records: &RecordFile, index: usize) -> IndexEntry {
        match &self.images {
            ImageKeys::AfterHeader => {
                let key = index as u64 + 1;
                let offset = records
                    .offset(key)
                    .expect("Layout::derive checked that the index holds every image key");
                IndexEntry { key, offset }
            }
            ImageKeys::Listed(entries) => entries[index],
        }
    }
}

/// Parse a payload's IRHeader, naming the record if it is too short.
pub fn parse_payload<'p>(
    path: &Path,
    record: RecordRef,
    offset: u64,
    payload: &'p [u8],
) -> Result<IrRecord<'p>, RecordIoError> {
    IrRecord::parse(payload).map_err(|short| RecordIoError::RecordTooShort {
        path: path.to_path_buf(),
        record,
        offset,
        what: short.what,
        needed: short.needed,
        found: short.found,
    })
}

/// The identity index an image record is labelled with.
pub fn identity_label(
    path: &Path,
    record: RecordRef,
    offset: u64,
    ir: &IrRecord<'_>,
) -> Result<u32, RecordIoError> {
    let label = ir.class_label();
    exact_index(label).ok_or_else(|| RecordIoError::InvalidLabel {
        path: path.to_path_buf(),
        record,
        offset,
        found: label,
    })
}

fn from_header(
    records: &RecordFile,
    header_offset: u64,
    first: f32,
    second: f32,
) -> Result<Layout, RecordIoError> {
    let mismatch = |key: u64, offset: u64, reason: String| RecordIoError::HeaderMismatch {
        path: records.path().to_path_buf(),
        record: RecordRef::Key(key),
        offset,
        reason,
    };
    let header_mismatch = |reason: String| mismatch(0, header_offset, reason);

    let identities_start = exact_index(first).filter(|&key| key >= 1).ok_or_else(|| {
        header_mismatch(format!(
            "its first label should be N+1 (the key after the last image), an integer >= 1; found {first}"
        ))
    })?;
    let end = exact_index(second)
        .filter(|&key| key >= identities_start)
        .ok_or_else(|| {
            header_mismatch(format!(
                "its second label should be N+1+K (the key after the last identity record), \
                 an integer >= {identities_start}; found {second}"
            ))
        })?;
    let header = PackHeader {
        image_keys: 1..u64::from(identities_start),
        identity_keys: u64::from(identities_start)..u64::from(end),
    };

    // The index must hold exactly keys 0..end; the header key 0 is there.
    let by_key = records.index().by_key();
    let expected_keys = || {
        format!(
            "expected keys 0..{end} (images {:?}, identities {:?})",
            header.image_keys, header.identity_keys
        )
    };
    let missing = (0..u64::from(end))
        .zip(by_key)
        .find(|(key, entry)| entry.key != *key)
        .map(|(key, _)| key)
        .or_else(|| (by_key.len() < end as usize).then_some(by_key.len() as u64));
    // Name the .idx and its size: a header that counts more records than the
    // index holds is how a cut index shows when the .rec was cut with it.
    let idx_holds = || {
        format!(
            "{} holds {} keys",
            super::index::idx_path_for(records.path()).display(),
            by_key.len()
        )
    };
    if let Some(key) = missing {
        return Err(header_mismatch(format!(
            "the index has no key {key} ({}); {}",
            idx_holds(),
            expected_keys()
        )));
    }
    if let Some(extra) = by_key.get(end as usize) {
        return Err(header_mismatch(format!(
            "the index also has key {} ({}); {}",
            extra.key,
            idx_holds(),
            expected_keys()
        )));
    }

    // Identity records: contiguous [start, end) key ranges covering the images.
    let image_count = identities_start - 1;
    let mut labels = Vec::with_capacity(image_count as usize);
    let mut bounds = vec![0u32];
    let mut next_start = 1u32;
    for (identity, key) in (0u32..).zip(header.identity_keys.clone()) {
        let offset = records
            .offset(key)
            .expect("the key range was checked against the index above");
        let payload = records.read_at(key, offset)?;
        let record = parse_payload(records.path(), RecordRef::Key(key), offset, &payload)?;
        let range = match record.labels[..] {
            [start, end] if record.header.flag == HEADER_FLAG => {
                exact_index(start).zip(exact_index(end))
            }
            _ => None,
        };
        let Some((start, stop)) = range.filter(|&(start, stop)| {
            start == next_start && (start..=identities_start).contains(&stop)
        }) else {
            return Err(mismatch(
                key,
                offset,
                format!(
                    "identity record {identity} should have flag 2 and labels [start, end) with \
                     start = {next_start} and start <= end <= {identities_start}; found flag {} \
                     and labels {:?}",
                    record.header.flag, record.labels
                ),
            ));
        };
        labels.extend(std::iter::repeat_n(identity, (stop - start) as usize));
        bounds.push(stop - 1);
        next_start = stop;
    }
    if next_start != identities_start {
        return Err(header_mismatch(format!(
            "its {} identity records cover image keys 1..{next_start}, expected all {image_count} \
             images 1..{identities_start}",
            header.identity_keys.end - header.identity_keys.start
        )));
    }

    let file_order = records
        .index()
        .in_file_order()
        .filter(|entry| header.image_keys.contains(&entry.key))
        .map(|entry| (entry.key - 1) as u32)
        .collect();
    Ok(Layout {
        header: Some(header),
        images: ImageKeys::AfterHeader,
        labels,
        bounds,
        file_order,
    })
}

/// Without a header every record is an image. Images are ordered by (label,
/// key) so that each identity is a contiguous range, as with a header.
fn from_image_labels(records: &RecordFile) -> Result<Layout, RecordIoError> {
    let mut images: Vec<(u32, IndexEntry)> = Vec::with_capacity(records.len());
    // File order keeps the pass over the map sequential.
    for entry in records.index().in_file_order() {
        let record = RecordRef::Key(entry.key);
        let payload = records.read_at(entry.key, entry.offset)?;
        let ir = parse_payload(records.path(), record, entry.offset, &payload)?;
        let label = identity_label(records.path(), record, entry.offset, &ir)?;
        images.push((label, entry));
    }
    images.sort_unstable_by_key(|&(label, entry)| (label, entry.key));

    let identity_count = images.last().map_or(0, |&(label, _)| label as usize + 1);
    let mut bounds = vec![0u32; identity_count + 1];
    for &(label, _) in &images {
        bounds[label as usize + 1] += 1;
    }
    for identity in 0..identity_count {
        bounds[identity + 1] += bounds[identity];
    }

    let mut file_order: Vec<u32> = (0..images.len() as u32).collect();
    file_order.sort_unstable_by_key(|&image| images[image as usize].1.offset);
    let (labels, entries) = images.into_iter().unzip();
    Ok(Layout {
        header: None,
        images: ImageKeys::Listed(entries),
        labels,
        bounds,
        file_order,
    })
}
