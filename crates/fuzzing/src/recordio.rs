//! RecordIO packs: `.rec` frames, `.idx` files, IRHeaders and the pack layout derived from
//! them.

use lgaf_data::recordio::{IndexMode, RecordFile, RecordPack};
use std::fs;

/// A `.rec` and `.idx` pair: the first four bytes (little-endian) say how many of the rest
/// are the `.rec`; the remainder is the `.idx`. An input of fewer than four bytes has no
/// `.idx` at all, so the reader scans the `.rec`.
pub fn pack_files(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary folder for the pack");
    let rec = dir.path().join("train.rec");
    let (rec_bytes, idx_bytes) = match data.split_first_chunk::<4>() {
        Some((len, rest)) => {
            let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
            let (rec_bytes, idx_bytes) = rest.split_at(len);
            (rec_bytes, Some(idx_bytes))
        }
        None => (data, None),
    };
    fs::write(&rec, rec_bytes).expect("writing the .rec");
    if let Some(idx_bytes) = idx_bytes {
        fs::write(rec.with_extension("idx"), idx_bytes).expect("writing the .idx");
    }
    // With the .idx as given, then with the .rec scanned (every frame decoded from the
    // start) and the .idx rewritten.
    for mode in [IndexMode::Read, IndexMode::Rebuild] {
        read_records(&rec, mode);
        if let Ok(pack) = RecordPack::open_with(&rec, mode, |_, _| {}) {
            let _ = pack.verify();
            for identity in 0..pack.identity_count().min(64) {
                let _ = pack.identity_images(identity);
            }
        }
    }
}

/// Every record by key, then in file order.
fn read_records(rec: &std::path::Path, mode: IndexMode) {
    let Ok(file) = RecordFile::open_with(rec, mode, |_, _| {}) else {
        return;
    };
    for key in file.keys().collect::<Vec<_>>() {
        let _ = file.record(key);
    }
    file.iter().for_each(drop);
}
