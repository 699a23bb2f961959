//! Verification `.bin` files: a pickle of `(bins, issame_list)` where `bins`
//! holds 2P encoded images (pair i is images 2i and 2i+1) and `issame_list`
//! holds P bools.
//!
//! The published files (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`, ...) were
//! written by Python 2 under protocol 2, so their images are `str` objects;
//! files written by Python 3 hold `bytes`. Both read the same.
//!
//! Reading bounds what the images will cost to decode, from their headers and
//! before any is decoded: no image may declare more than [`MAX_IMAGE_SIDE`]
//! pixels a side, and all of them together may not decode to more than
//! [`decoded_budget`] bytes. Without that, a few hundred KB of tiny images
//! become gigabytes of 112x112 pixels.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use lgaf_data::decode::{self, DecodeError, MAX_IMAGE_SIDE};

use crate::pickle::{self, Kind, Value, Writer};
use crate::Error;

/// What one image costs at least once decoded: a 112x112 RGB8 face, the size
/// evaluation decodes (and resizes) every image to.
pub const DECODED_FACE_BYTES: u64 = 112 * 112 * 3;

/// Decoded bytes allowed per byte of the file: published sets decode to about
/// 8 times their size (JPEG faces of about 5 KB), so 64 leaves room for small
/// JPEGs while refusing images of a few dozen bytes by the thousand.
pub const DECODED_BYTES_PER_FILE_BYTE: u64 = 64;

/// Decoded bytes every file may use, however small: 64 MiB, about 1,780 faces,
/// so that small test sets of tiny images still read.
pub const MIN_DECODED_BUDGET: u64 = 64 << 20;

/// Decoded bytes no file may exceed: 4 GiB, about 114,000 faces, 8 times the
/// largest published set (cfp_fp, 14,000 images).
pub const MAX_DECODED_BUDGET: u64 = 4 << 30;

/// The decoded bytes a `.bin` of `file_len` bytes may use:
/// [`DECODED_BYTES_PER_FILE_BYTE`] per byte, within [`MIN_DECODED_BUDGET`] and
/// [`MAX_DECODED_BUDGET`].
pub fn decoded_budget(file_len: usize) -> u64 {
    (file_len as u64)
        .saturating_mul(DECODED_BYTES_PER_FILE_BYTE)
        .clamp(MIN_DECODED_BUDGET, MAX_DECODED_BUDGET)
}

/// The contents of a verification `.bin` file.
#[derive(Clone, Debug, PartialEq)]
pub struct VerificationBin {
    /// Encoded (JPEG or PNG) images; pair i is `images[2i]` and `images[2i + 1]`.
    pub images: Vec<Vec<u8>>,
    /// Whether pair i shows one identity.
    pub issame: Vec<bool>,
}

impl VerificationBin {
    /// Reads and checks a `.bin` file.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let data = std::fs::read(path).map_err(|source| Error::Io {
            action: "cannot read",
            path: path.to_path_buf(),
            source,
        })?;
        Self::decode(&data, path)
    }

    /// Decodes the bytes of a `.bin` file; `path` names them in errors.
    pub fn decode(data: &[u8], path: &Path) -> Result<Self, Error> {
        let root = pickle::parse(data).map_err(|source| Error::Pickle {
            path: path.to_path_buf(),
            source,
        })?;
        let layout = Layout { path };
        let [bins, issame] = layout.pair_tuple(&root)?;
        let bins = layout.list(bins, "bins (the first item)")?;
        let issame = layout.list(issame, "issame_list (the second item)")?;

        if bins.is_empty() && issame.is_empty() {
            return Err(Error::BinLayout {
                path: path.to_path_buf(),
                offset: root.offset,
                what: "(bins, issame_list)".into(),
                expected: "at least one pair".into(),
                found: "no images and no flags".into(),
            });
        }
        if !bins.len().is_multiple_of(2) {
            return Err(layout.error(
                &bins[0],
                "bins",
                "an even number of images (pairs are consecutive)".into(),
                format!("{} images", bins.len()),
            ));
        }
        if bins.len() != 2 * issame.len() {
            return Err(Error::BinLayout {
                path: path.to_path_buf(),
                offset: root.offset,
                what: "(bins, issame_list)".into(),
                expected: format!(
                    "2 images per issame flag, {} for {} flags",
                    2 * issame.len(),
                    issame.len()
                ),
                found: format!("{} images", bins.len()),
            });
        }

        // Memo references let a pickle name one large string many times;
        // copying each reference could need far more memory than the file.
        let image_bytes = bins.iter().map(|v| match &v.kind {
            Kind::Bytes(b) => b.len(),
            _ => 0,
        });
        let total: usize = image_bytes.sum();
        if total > data.len() {
            return Err(layout.error(
                &bins[0],
                "bins",
                format!("at most the file's {} bytes of image data", data.len()),
                format!("{total} bytes (images repeated through memo references)"),
            ));
        }

        layout.check_decoded_size(bins, data.len())?;

        let images = bins
            .iter()
            .enumerate()
            .map(|(i, value)| match &value.kind {
                Kind::Bytes(bytes) => Ok(bytes.to_vec()),
                other => Err(layout.error(
                    value,
                    &format!("image {i}"),
                    "bytes".into(),
                    other.type_name().into(),
                )),
            })
            .collect::<Result<_, _>>()?;
        let issame = issame
            .iter()
            .enumerate()
            .map(|(i, value)| match value.kind {
                Kind::Bool(same) => Ok(same),
                ref other => Err(layout.error(
                    value,
                    &format!("issame flag {i}"),
                    "bool".into(),
                    other.type_name().into(),
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(VerificationBin { images, issame })
    }

    /// The number of pairs.
    pub fn pairs(&self) -> usize {
        self.issame.len()
    }

    /// Writes the file as a protocol 4 pickle (see [`write_bin`]).
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        write_bin(path, &self.images, &self.issame)
    }
}

/// Writes a verification `.bin` file: `(list of bytes, list of bool)` pickled
/// under protocol 4, which Python 3.4 and later load with `pickle.load`.
pub fn write_bin<I: AsRef<[u8]>>(path: &Path, images: &[I], issame: &[bool]) -> Result<(), Error> {
    if images.len() != 2 * issame.len() {
        return Err(Error::PairCount {
            path: path.to_path_buf(),
            images: images.len(),
            pairs: issame.len(),
        });
    }
    let io_error = |source| Error::Io {
        action: "cannot write",
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(io_error)?;
    let mut writer = Writer::new(BufWriter::new(file)).map_err(io_error)?;
    writer
        .tuple(|w| {
            w.list(images, |w, image| w.bytes(image.as_ref()))?;
            w.list(issame, |w, &same| w.bool(same))
        })
        .map_err(io_error)?;
    writer.finish().map_err(io_error)?;
    Ok(())
}

/// Checks of the pickle's layout, with errors that name the file.
struct Layout<'a> {
    path: &'a Path,
}

impl Layout<'_> {
    fn error(&self, at: &Value, what: &str, expected: String, found: String) -> Error {
        Error::BinLayout {
            path: PathBuf::from(self.path),
            offset: at.offset,
            what: what.into(),
            expected,
            found,
        }
    }

    /// Refuses images whose headers declare more than [`MAX_IMAGE_SIDE`] a side,
    /// and sets whose images decode to more than [`decoded_budget`]; an image
    /// costs what its header declares, and at least a 112x112 face (an image
    /// without a readable header too: the decoder refuses or sizes it).
    fn check_decoded_size(&self, bins: &[Value], file_len: usize) -> Result<(), Error> {
        let mut total = 0u64;
        for (i, value) in bins.iter().enumerate() {
            let Kind::Bytes(bytes) = &value.kind else {
                continue;
            };
            // The decoder's own header reader and bound: what it would refuse is refused
            // here before anything is decoded. An unreadable header costs a face; the
            // decoder reports it when it gets there.
            let pixels = match decode::dimensions(bytes, || format!("image {i}")) {
                Ok((width, height)) => (width * height) as u64,
                Err(DecodeError::TooLarge {
                    format,
                    width,
                    height,
                    ..
                }) => {
                    return Err(self.error(
                        value,
                        &format!("image {i}"),
                        format!(
                            "at most {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels (MAX_IMAGE_SIDE)"
                        ),
                        format!("a {format} header declaring {width}x{height} pixels"),
                    ));
                }
                Err(_) => 0,
            };
            // Both factors are bounded above, so this cannot overflow.
            total = total.saturating_add((pixels * 3).max(DECODED_FACE_BYTES));
        }
        let budget = decoded_budget(file_len);
        if total > budget {
            return Err(self.error(
                &bins[0],
                "bins",
                format!(
                    "images that decode to at most {budget} bytes ({DECODED_BYTES_PER_FILE_BYTE} \
                     per byte of this {file_len}-byte file, at least {MIN_DECODED_BUDGET} and at \
                     most {MAX_DECODED_BUDGET}; each image counts as at least a 112x112 RGB \
                     face of {DECODED_FACE_BYTES} bytes)"
                ),
                format!("{} images that decode to {total} bytes", bins.len()),
            ));
        }
        Ok(())
    }

    fn pair_tuple<'v>(&self, root: &'v Value) -> Result<[&'v Value; 2], Error> {
        match &root.kind {
            Kind::Tuple(items) if items.len() == 2 => Ok([&items[0], &items[1]]),
            other => Err(self.error(
                root,
                "the top-level object",
                "a tuple (bins, issame_list)".into(),
                describe(other),
            )),
        }
    }

    fn list<'v>(&self, value: &'v Value, what: &str) -> Result<&'v [Value], Error> {
        match &value.kind {
            Kind::List(items) => Ok(items),
            other => Err(self.error(value, what, "a list".into(), describe(other))),
        }
    }
}

/// "a tuple of 3", "bytes", ...: enough to see what a file holds instead.
fn describe(kind: &Kind) -> String {
    match kind {
        Kind::List(items) => format!("a list of {}", items.len()),
        Kind::Tuple(items) => format!("a tuple of {}", items.len()),
        other => other.type_name().to_owned(),
    }
}
