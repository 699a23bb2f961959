//! `lgaf pack` and `lgaf inspect`: converting an image folder into an insightface RecordIO
//! pack, and summarising any training source (pack or folder) with the first problems found.
//!
//! Both work on any [`FaceSource`] (the CLI packs folders and inspects folders and packs).
//! Work is split into chunks decoded in parallel and written (or tallied) in order, so the
//! output does not depend on the thread count.

use std::collections::BTreeMap;
use std::path::Path;

use lgaf_data::decode::{self, Format};
use lgaf_data::recordio::PackWriter;
use lgaf_data::source::{FaceSource, Payload};
use rayon::prelude::*;
use serde::Serialize;

use lgaf_data::DataError;

use crate::error::Result;

/// Samples handled per parallel chunk: large enough to keep the threads busy, small enough
/// for a smooth progress bar and bounded memory.
const CHUNK: usize = 2048;

/// JPEG quality of images that had to be resized to 112x112 while packing.
const RESIZE_JPEG_QUALITY: u8 = 95;

/// How many problems a report lists (all are counted).
const PROBLEMS_LISTED: usize = 10;

/// What `lgaf pack` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PackReport {
    pub images: usize,
    pub identities: usize,
    /// Images stored byte for byte as they were (112x112 JPEG or PNG).
    pub copied: usize,
    /// Images of another size, resized to 112x112 and re-encoded as JPEG.
    pub resized: usize,
    /// Unreadable images left out (only with `skip_bad`), described.
    pub skipped: Vec<String>,
    pub bytes: u64,
}

/// The bytes to store for one sample and whether it was resized: 112x112 encoded images as
/// they are, anything else decoded, resized and re-encoded. Errors name the sample.
fn pack_payload(source: &dyn FaceSource, index: usize) -> Result<(Vec<u8>, bool)> {
    let what = || source.describe(index);
    let rgb = match source.read(index)? {
        Payload::Encoded(bytes) => {
            let (width, height) = decode::dimensions(&bytes, what)?;
            if (width, height) == (112, 112) {
                // Decode once anyway: a pack must not carry an image that fails later.
                let mut scratch = vec![0u8; decode::RGB112_BYTES];
                decode::decode_rgb112_into(&bytes, &mut scratch, what)?;
                return Ok((bytes.into_owned(), false));
            }
            decode::decode_rgb112_resized(&bytes, what)?
        }
        Payload::Rgb112(rgb) => rgb,
    };
    Ok((encode_jpeg(&rgb, &what())?, true))
}

fn encode_jpeg(rgb: &[u8], what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, RESIZE_JPEG_QUALITY)
        .encode(rgb, 112, 112, image::ExtendedColorType::Rgb8)
        .map_err(|source| DataError::Encode {
            path: what.into(),
            source,
        })?;
    Ok(out)
}

/// Writes every sample of `source` into an insightface-layout pack at `out` (`.idx`
/// beside it). With `skip_bad`, unreadable images are left out and listed; otherwise the
/// first one stops the run with its error and no pack is written. `progress(done, total)`.
pub fn pack(
    source: &dyn FaceSource,
    out: &Path,
    skip_bad: bool,
    mut progress: impl FnMut(usize, usize),
) -> Result<PackReport> {
    let mut writer = PackWriter::create(out)?;
    let mut report = PackReport {
        identities: source.num_classes(),
        ..Default::default()
    };
    let total = source.len();
    for start in (0..total).step_by(CHUNK) {
        let end = (start + CHUNK).min(total);
        let payloads: Vec<Result<(Vec<u8>, bool)>> = (start..end)
            .into_par_iter()
            .map(|i| pack_payload(source, i))
            .collect();
        for (i, payload) in (start..end).zip(payloads) {
            match payload {
                Ok((bytes, resized)) => {
                    writer.add(source.label(i), &bytes)?;
                    report.images += 1;
                    if resized {
                        report.resized += 1;
                    } else {
                        report.copied += 1;
                    }
                }
                Err(e) if skip_bad => report.skipped.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        progress(end, total);
    }
    let summary = writer.finish()?;
    report.bytes = summary.bytes;
    // Skipped images can leave identities out of the pack: count what was written.
    report.identities =
        (summary.header.identity_keys.end - summary.header.identity_keys.start) as usize;
    Ok(report)
}

/// Summary statistics of a list of counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CountStats {
    pub min: usize,
    pub max: usize,
    pub mean: f64,
    pub median: f64,
}

impl CountStats {
    fn of(mut counts: Vec<usize>) -> Self {
        if counts.is_empty() {
            return Self::default();
        }
        counts.sort_unstable();
        let n = counts.len();
        let median = if n % 2 == 1 {
            counts[n / 2] as f64
        } else {
            (counts[n / 2 - 1] + counts[n / 2]) as f64 / 2.0
        };
        Self {
            min: counts[0],
            max: counts[n - 1],
            mean: counts.iter().sum::<usize>() as f64 / n as f64,
            median,
        }
    }
}

/// What `lgaf inspect` prints.
#[derive(Clone, Debug, Default, Serialize)]
pub struct InspectReport {
    pub source: String,
    pub images: usize,
    pub identities: usize,
    /// Identities with no image at all.
    pub empty_identities: usize,
    pub images_per_identity: CountStats,
    /// "JPEG 112x112" -> count, and so on; pixels of the synthetic source count as "RGB 112x112".
    pub image_sizes: BTreeMap<String, usize>,
    /// Samples whose record cannot be read or whose image header does not parse (all are
    /// counted; pixel data is not decoded, so a JPEG damaged after its header passes here
    /// and is caught by `lgaf pack` and the loader).
    pub bad: usize,
    /// The first problems, in sample order.
    pub problems: Vec<String>,
}

/// The size and format of one sample, reading only what it must (headers for JPEG/PNG).
fn probe(source: &dyn FaceSource, index: usize) -> Result<String> {
    match source.read(index)? {
        Payload::Encoded(bytes) => {
            let what = || source.describe(index);
            let format = match Format::sniff(&bytes) {
                Some(Format::Jpeg) => "JPEG",
                Some(Format::Png) => "PNG",
                None => "unknown",
            };
            let (w, h) = decode::dimensions(&bytes, what)?;
            Ok(format!("{format} {w}x{h}"))
        }
        Payload::Rgb112(_) => Ok("RGB 112x112".to_string()),
    }
}

/// Reads every sample's header and label. `progress(done, total)`.
pub fn inspect(source: &dyn FaceSource, mut progress: impl FnMut(usize, usize)) -> InspectReport {
    let total = source.len();
    let mut report = InspectReport {
        source: source.name(),
        images: total,
        identities: source.num_classes(),
        ..Default::default()
    };
    let mut per_identity = vec![0usize; source.num_classes()];
    for start in (0..total).step_by(CHUNK) {
        let end = (start + CHUNK).min(total);
        let probed: Vec<Result<String>> = (start..end)
            .into_par_iter()
            .map(|i| probe(source, i))
            .collect();
        for (i, p) in (start..end).zip(probed) {
            if let Some(n) = per_identity.get_mut(source.label(i) as usize) {
                *n += 1;
            }
            match p {
                Ok(size) => *report.image_sizes.entry(size).or_default() += 1,
                Err(e) => {
                    report.bad += 1;
                    if report.problems.len() < PROBLEMS_LISTED {
                        report.problems.push(e.to_string());
                    }
                }
            }
        }
        progress(end, total);
    }
    report.empty_identities = per_identity.iter().filter(|&&n| n == 0).count();
    report.images_per_identity = CountStats::of(per_identity);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_stats_of_odd_even_and_empty_lists() {
        let odd = CountStats::of(vec![5, 1, 3]);
        assert_eq!((odd.min, odd.max, odd.median), (1, 5, 3.0));
        assert!((odd.mean - 3.0).abs() < 1e-12);
        let even = CountStats::of(vec![4, 1, 2, 10]);
        assert_eq!(even.median, 3.0);
        assert_eq!(CountStats::of(vec![]), CountStats::default());
    }
}
