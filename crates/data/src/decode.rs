//! Decoding encoded face images (JPEG, PNG) to the RGB8 HWC layout the models consume.
//!
//! JPEG goes through `zune-jpeg` used directly. Measured on 200 synthetic 112x112 faces
//! encoded at quality 90 (about 4.3 kB each; release build, one thread of a shared 2-core
//! machine, best of several runs), per image:
//!
//! | decoder                                                     | time        |
//! |-------------------------------------------------------------|-------------|
//! | `zune-jpeg` 0.5 direct, into the caller's buffer            | 68-71 us    |
//! | `image` 0.25 (`zune-jpeg` inside, then `DynamicImage` -> RGB8) | 76-80 us |
//! | `jpeg-decoder` 0.3                                          | 120-157 us  |
//! | `turbojpeg` 1 (libjpeg-turbo) | not built: its source build needs CMake and the NASM assembler; with CMake from PyPI it stops at NASM, a system package this machine lacks |
//!
//! `zune-jpeg` is the fastest of those that build, it is already in the tree (through
//! `image`), and used directly it reads the header first, so a wrong-sized image is
//! rejected before any pixel work, and it decodes straight into the caller's batch
//! buffer instead of a fresh image. It runs in its tolerant default mode, as libjpeg and
//! OpenCV do for insightface's packs: a slightly truncated file still decodes, while data
//! that is not a JPEG at all is an error. PNG is rare in face datasets and goes through
//! `image`'s decoder, which handles every PNG colour type.
//!
//! Every entry point reads the size an image declares from its header first and refuses
//! one wider or taller than [`MAX_IMAGE_SIDE`] before any pixel buffer exists: a few
//! hundred bytes of PNG can declare 10000x10000 pixels, which would otherwise be allocated
//! (and, 16-bit RGBA, take 800 MB) before the data turns out to be missing.

use std::fmt;
use std::io::Cursor;

use image::codecs::png::PngDecoder;
use image::imageops::FilterType;
use image::{DynamicImage, Limits, RgbImage};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::synth::IMAGE_SIZE;

/// Bytes of one 112x112 RGB8 image.
pub const RGB112_BYTES: usize = IMAGE_SIZE * IMAGE_SIZE * 3;

/// The widest and tallest image decoded, in pixels. Faces are 112x112; this leaves room
/// for unaligned crops and photos while bounding one decode's buffers (at the bound a
/// 16-bit RGBA PNG takes 128 MiB, its RGB8 copy 48 MiB). A larger image is an error
/// ([`DecodeError::TooLarge`]), never resized.
pub const MAX_IMAGE_SIDE: usize = 4096;

/// The most pixels of one decoded image, [`MAX_IMAGE_SIDE`] squared (16 Mpx).
pub const MAX_IMAGE_PIXELS: usize = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE;

/// What `image`'s PNG decoder may allocate at once, for chunks that are not pixels
/// (compressed ICC profiles, text): the largest image at the bound (16-bit RGBA) and as
/// much again. Pixel buffers themselves are bounded by the size check before decoding.
const PNG_MAX_ALLOC: u64 = 2 * (MAX_IMAGE_PIXELS as u64) * 8;

const JPEG_MAGIC: &[u8] = &[0xFF, 0xD8, 0xFF];
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The encodings this module decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
}

impl Format {
    /// The format announced by the first bytes, whatever a file name says.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(JPEG_MAGIC) {
            Some(Self::Jpeg)
        } else if bytes.starts_with(PNG_MAGIC) {
            Some(Self::Png)
        } else {
            None
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
        })
    }
}

/// Why an encoded image could not be turned into pixels. `what` names the image: a file
/// path, or a caller's description such as "train.rec record 1234 at byte 56789".
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "{what}: not a JPEG or PNG image: expected FF D8 FF or 89 50 4E 47 at byte 0, found {found}"
    )]
    UnknownFormat { what: String, found: String },

    #[error("{what}: corrupt {format} data: {message}")]
    Corrupt {
        what: String,
        format: Format,
        message: String,
    },

    #[error(
        "{what}: the {format} header declares {width}x{height} pixels, more than the \
         {max}x{max} (MAX_IMAGE_SIDE) this decoder accepts; refused before decoding",
        max = MAX_IMAGE_SIDE
    )]
    TooLarge {
        what: String,
        format: Format,
        width: usize,
        height: usize,
    },

    #[error("{what}: image is {width}x{height}, expected {expected}x{expected}")]
    WrongSize {
        what: String,
        width: usize,
        height: usize,
        expected: usize,
    },
}

/// Decodes a 112x112 JPEG or PNG into `out` (HWC RGB8, [`RGB112_BYTES`] long). Any other
/// size is [`DecodeError::WrongSize`]; `what` describes the image for errors and is only
/// called on failure.
///
/// # Panics
/// If `out` is not [`RGB112_BYTES`] long (a caller bug, not bad input).
pub fn decode_rgb112_into(
    bytes: &[u8],
    out: &mut [u8],
    what: impl Fn() -> String,
) -> Result<(), DecodeError> {
    assert_eq!(
        out.len(),
        RGB112_BYTES,
        "decode_rgb112_into: the output must hold one 112x112 RGB image"
    );
    let wrong_size = |(width, height)| DecodeError::WrongSize {
        what: what(),
        width,
        height,
        expected: IMAGE_SIZE,
    };
    match sniff(bytes, &what)? {
        Format::Jpeg => {
            let (mut decoder, size) = jpeg_decoder(bytes, &what)?;
            if size != (IMAGE_SIZE, IMAGE_SIZE) {
                return Err(wrong_size(size));
            }
            decoder
                .decode_into(out)
                .map_err(|e| corrupt(Format::Jpeg, e, &what))
        }
        Format::Png => {
            let size = png_dimensions(bytes, &what)?;
            if size != (IMAGE_SIZE, IMAGE_SIZE) {
                return Err(wrong_size(size));
            }
            out.copy_from_slice(&decode_png(png_decoder(bytes, &what)?, &what)?);
            Ok(())
        }
    }
}

/// (width, height) of a JPEG or PNG, from its headers only; a size over
/// [`MAX_IMAGE_SIDE`] is [`DecodeError::TooLarge`], as decoding it would be.
pub fn dimensions(bytes: &[u8], what: impl Fn() -> String) -> Result<(usize, usize), DecodeError> {
    match sniff(bytes, &what)? {
        Format::Jpeg => jpeg_decoder(bytes, &what).map(|(_, size)| size),
        Format::Png => png_dimensions(bytes, &what),
    }
}

/// Decodes a JPEG or PNG of any size up to [`MAX_IMAGE_SIDE`] to RGB8.
pub fn decode_rgb(bytes: &[u8], what: impl Fn() -> String) -> Result<RgbImage, DecodeError> {
    match sniff(bytes, &what)? {
        Format::Jpeg => {
            let (mut decoder, _) = jpeg_decoder(bytes, &what)?;
            let pixels = decoder
                .decode()
                .map_err(|e| corrupt(Format::Jpeg, e, &what))?;
            let (width, height) = decoder.dimensions().unwrap_or((0, 0));
            // zune-jpeg returns exactly width * height * 3 bytes for RGB output.
            RgbImage::from_raw(width as u32, height as u32, pixels).ok_or_else(|| {
                DecodeError::Corrupt {
                    what: what(),
                    format: Format::Jpeg,
                    message: format!("decoded pixels do not fill the {width}x{height} frame"),
                }
            })
        }
        Format::Png => {
            png_dimensions(bytes, &what)?;
            decode_png(png_decoder(bytes, &what)?, &what)
        }
    }
}

/// Decodes a JPEG or PNG of any size up to [`MAX_IMAGE_SIDE`] to 112x112 RGB8 HWC bytes,
/// resizing other sizes bilinearly (`image`'s triangle filter), as `lgaf embed` needs for
/// arbitrary crops.
pub fn decode_rgb112_resized(
    bytes: &[u8],
    what: impl Fn() -> String,
) -> Result<Vec<u8>, DecodeError> {
    let mut rgb = decode_rgb(bytes, what)?;
    let side = IMAGE_SIZE as u32;
    if rgb.dimensions() != (side, side) {
        rgb = image::imageops::resize(&rgb, side, side, FilterType::Triangle);
    }
    Ok(rgb.into_raw())
}

fn sniff(bytes: &[u8], what: &impl Fn() -> String) -> Result<Format, DecodeError> {
    Format::sniff(bytes).ok_or_else(|| DecodeError::UnknownFormat {
        what: what(),
        found: if bytes.is_empty() {
            "no bytes at all".to_string()
        } else {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02X}")).collect();
            head.join(" ")
        },
    })
}

fn corrupt(format: Format, error: impl fmt::Display, what: &impl Fn() -> String) -> DecodeError {
    DecodeError::Corrupt {
        what: what(),
        format,
        message: error.to_string(),
    }
}

/// Refuses a declared size over [`MAX_IMAGE_SIDE`].
fn check_size(
    format: Format,
    (width, height): (usize, usize),
    what: &impl Fn() -> String,
) -> Result<(usize, usize), DecodeError> {
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(DecodeError::TooLarge {
            what: what(),
            format,
            width,
            height,
        });
    }
    Ok((width, height))
}

type Jpeg<'a> = JpegDecoder<ZCursor<&'a [u8]>>;

/// A JPEG decoder with its headers read and its declared (width, height) checked against
/// [`MAX_IMAGE_SIDE`], ready to decode.
fn jpeg_decoder<'a>(
    bytes: &'a [u8],
    what: &impl Fn() -> String,
) -> Result<(Jpeg<'a>, (usize, usize)), DecodeError> {
    // zune-jpeg's own limits stay at the format's maximum so that the check below, which
    // names the file and the bound, is the one that refuses; headers allocate nothing
    // that depends on the size.
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX));
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder
        .decode_headers()
        .map_err(|e| corrupt(Format::Jpeg, e, what))?;
    let size = decoder.dimensions().unwrap_or((0, 0));
    Ok((decoder, check_size(Format::Jpeg, size, what)?))
}

/// A PNG's declared (width, height), read from its IHDR before any decoder exists (the
/// decoder sizes buffers by it), and checked against [`MAX_IMAGE_SIDE`].
fn png_dimensions(bytes: &[u8], what: &impl Fn() -> String) -> Result<(usize, usize), DecodeError> {
    // Signature (8), IHDR length (4) and type (4), width and height (4 each, big-endian).
    let ihdr = bytes.get(8..24).filter(|ihdr| &ihdr[4..8] == b"IHDR");
    let Some(ihdr) = ihdr else {
        return Err(DecodeError::Corrupt {
            what: what(),
            format: Format::Png,
            message: "expected the IHDR chunk right after the signature".into(),
        });
    };
    let word = |at: usize| u32::from_be_bytes([ihdr[at], ihdr[at + 1], ihdr[at + 2], ihdr[at + 3]]);
    // u32 fits usize on every target this crate builds for (64-bit).
    check_size(Format::Png, (word(8) as usize, word(12) as usize), what)
}

/// A PNG decoder whose allocations outside the pixel buffer are bounded; call
/// [`png_dimensions`] first, which bounds the pixel buffer.
fn png_decoder<'a>(
    bytes: &'a [u8],
    what: &impl Fn() -> String,
) -> Result<PngDecoder<Cursor<&'a [u8]>>, DecodeError> {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE as u32);
    limits.max_image_height = Some(MAX_IMAGE_SIDE as u32);
    limits.max_alloc = Some(PNG_MAX_ALLOC);
    PngDecoder::with_limits(Cursor::new(bytes), limits).map_err(|e| corrupt(Format::Png, e, what))
}

fn decode_png(
    decoder: PngDecoder<Cursor<&[u8]>>,
    what: &impl Fn() -> String,
) -> Result<RgbImage, DecodeError> {
    // Grey, palette, alpha and 16-bit PNGs all end up as RGB8.
    DynamicImage::from_decoder(decoder)
        .map(DynamicImage::into_rgb8)
        .map_err(|e| corrupt(Format::Png, e, what))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::{ExtendedColorType, ImageEncoder};

    /// Smooth colour gradients: JPEG keeps them within a few levels.
    fn gradient(width: usize, height: usize) -> Vec<u8> {
        (0..height)
            .flat_map(|y| {
                (0..width).flat_map(move |x| {
                    [
                        (x * 255 / width) as u8,
                        (y * 255 / height) as u8,
                        ((x + y) * 127 / (width + height)) as u8,
                    ]
                })
            })
            .collect()
    }

    fn jpeg(rgb: &[u8], width: usize, height: usize, color: ExtendedColorType) -> Vec<u8> {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 95)
            .encode(rgb, width as u32, height as u32, color)
            .unwrap();
        out
    }

    fn png(rgb: &[u8], width: usize, height: usize) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(rgb, width as u32, height as u32, ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    fn max_abs_diff(a: &[u8], b: &[u8]) -> u8 {
        a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
    }

    fn name() -> String {
        "faces/0042/img_7.jpg".to_string()
    }

    #[test]
    fn jpeg_and_png_decode_into_the_buffer() {
        let rgb = gradient(112, 112);
        let mut out = vec![0u8; RGB112_BYTES];
        decode_rgb112_into(
            &jpeg(&rgb, 112, 112, ExtendedColorType::Rgb8),
            &mut out,
            name,
        )
        .unwrap();
        assert!(max_abs_diff(&out, &rgb) <= 12, "JPEG drifted too far");
        decode_rgb112_into(&png(&rgb, 112, 112), &mut out, name).unwrap();
        assert_eq!(out, rgb, "PNG is lossless");
    }

    #[test]
    fn greyscale_jpeg_becomes_rgb() {
        let grey: Vec<u8> = (0..112 * 112).map(|i| (i % 112 * 2) as u8).collect();
        let mut out = vec![0u8; RGB112_BYTES];
        decode_rgb112_into(
            &jpeg(&grey, 112, 112, ExtendedColorType::L8),
            &mut out,
            name,
        )
        .unwrap();
        for pixel in out.chunks_exact(3) {
            assert!(pixel[0] == pixel[1] && pixel[1] == pixel[2], "{pixel:?}");
        }
        assert!(
            max_abs_diff(&out[..3 * 112], &{
                let row: Vec<u8> = grey[..112].iter().flat_map(|&g| [g; 3]).collect();
                row
            }) <= 8
        );
    }

    #[test]
    fn wrong_size_is_refused_with_both_sizes_and_the_name() {
        let mut out = vec![0u8; RGB112_BYTES];
        for bytes in [
            jpeg(&gradient(96, 112), 96, 112, ExtendedColorType::Rgb8),
            png(&gradient(96, 112), 96, 112),
        ] {
            let err = decode_rgb112_into(&bytes, &mut out, name).unwrap_err();
            assert!(
                matches!(
                    err,
                    DecodeError::WrongSize {
                        width: 96,
                        height: 112,
                        ..
                    }
                ),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains("img_7.jpg") && text.contains("96x112"),
                "{text}"
            );
            assert!(text.contains("expected 112x112"), "{text}");
        }
    }

    #[test]
    fn corrupt_and_unknown_data_name_the_source() {
        let mut out = vec![0u8; RGB112_BYTES];
        let what = || "train.rec record 1234 at byte 5678".to_string();
        let mut broken = jpeg(&gradient(112, 112), 112, 112, ExtendedColorType::Rgb8);
        broken.truncate(40); // the magic survives; the tables do not
        let err = decode_rgb112_into(&broken, &mut out, what).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Corrupt {
                    format: Format::Jpeg,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("record 1234 at byte 5678"),
            "{err}"
        );

        let mut broken_png = png(&gradient(112, 112), 112, 112);
        broken_png.truncate(100);
        let err = decode_rgb112_into(&broken_png, &mut out, what).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Corrupt {
                    format: Format::Png,
                    ..
                }
            ),
            "{err:?}"
        );

        let err = decode_rgb112_into(b"GIF89a....", &mut out, what).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("found 47 49 46 38 39 61 2E 2E"), "{text}");
        let err = decode_rgb112_into(b"", &mut out, what).unwrap_err();
        assert!(err.to_string().contains("no bytes at all"), "{err}");
    }

    /// CRC-32 (IEEE) as PNG chunks carry it.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A PNG with a valid IHDR declaring `width`x`height` (`depth` bits, colour `color`) and
    /// a valid but tiny IDAT: a few hundred bytes that announce a huge image.
    pub(crate) fn png_declaring(width: u32, height: u32, depth: u8, color: u8) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend((data.len() as u32).to_be_bytes());
            let start = out.len();
            out.extend(kind);
            out.extend(data);
            let crc = crc32(&out[start..]);
            out.extend(crc.to_be_bytes());
        }
        let mut out = PNG_MAGIC.to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend(width.to_be_bytes());
        ihdr.extend(height.to_be_bytes());
        ihdr.extend([depth, color, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        // zlib: one stored block of 200 zero bytes (filter 0 and black pixels of row 0).
        let raw = [0u8; 200];
        let mut zlib = vec![0x78, 0x01, 0x01];
        zlib.extend((raw.len() as u16).to_le_bytes());
        zlib.extend((!(raw.len() as u16)).to_le_bytes());
        zlib.extend(raw);
        let (a, b) = raw.iter().fold((1u32, 0u32), |(a, b), &x| {
            let a = (a + u32::from(x)) % 65521;
            (a, (b + a) % 65521)
        });
        zlib.extend(((b << 16) | a).to_be_bytes());
        chunk(&mut out, b"IDAT", &zlib);
        chunk(&mut out, b"IEND", &[]);
        out
    }

    /// A real 16x16 JPEG whose SOF0 is patched to declare `width`x`height`.
    fn jpeg_declaring(width: u16, height: u16) -> Vec<u8> {
        let mut bytes = jpeg(&gradient(16, 16), 16, 16, ExtendedColorType::Rgb8);
        let sof = bytes
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("a baseline JPEG has an SOF0 marker");
        bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        bytes
    }

    #[test]
    fn declared_sizes_over_the_bound_are_refused_before_decoding() {
        let what = || "bombs/face_0001.png".to_string();
        let cases = [
            ("PNG RGB8 10000x10000", png_declaring(10_000, 10_000, 8, 2)),
            (
                "PNG RGBA16 10000x10000",
                png_declaring(10_000, 10_000, 16, 6),
            ),
            ("PNG 5000x1", png_declaring(5_000, 1, 8, 0)),
            ("PNG 2^31-1 x 1", png_declaring(0x7FFF_FFFF, 1, 8, 0)),
            ("JPEG 5000x5000", jpeg_declaring(5_000, 5_000)),
            ("JPEG 112x4097", jpeg_declaring(112, 4_097)),
        ];
        for (case, bytes) in &cases {
            assert!(bytes.len() < 1000, "{case}: {} bytes", bytes.len());
            let mut out = vec![0u8; RGB112_BYTES];
            let errors = [
                dimensions(bytes, what).map(drop).unwrap_err(),
                decode_rgb(bytes, what).map(drop).unwrap_err(),
                decode_rgb112_resized(bytes, what).map(drop).unwrap_err(),
                decode_rgb112_into(bytes, &mut out, what).unwrap_err(),
            ];
            for (at, error) in errors.iter().enumerate() {
                let text = error.to_string();
                if at == 3 {
                    // The 112x112 path refuses every other size anyway.
                    assert!(text.contains("face_0001.png"), "{case}: {text}");
                    continue;
                }
                assert!(
                    matches!(error, DecodeError::TooLarge { .. })
                        && text.contains("face_0001.png")
                        && text.contains("4096x4096"),
                    "{case}, call {at}: {text}"
                );
            }
        }
        // At the bound is fine as far as the bound goes (this tiny IDAT is then corrupt).
        let at_bound = png_declaring(4096, 16, 8, 0);
        assert_eq!(dimensions(&at_bound, what).unwrap(), (4096, 16));
        let error = decode_rgb(&at_bound, what).unwrap_err();
        assert!(matches!(error, DecodeError::Corrupt { .. }), "{error}");

        // A real 16-bit RGBA PNG decodes under the PNG decoder's limits.
        let rgba16: Vec<u8> = (0..30 * 20 * 8).map(|i| (i * 7 % 251) as u8).collect();
        let mut bytes = Vec::new();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(&rgba16, 30, 20, ExtendedColorType::Rgba16)
            .unwrap();
        assert_eq!(decode_rgb(&bytes, what).unwrap().dimensions(), (30, 20));
    }

    #[test]
    fn a_jpeg_missing_its_tail_still_decodes_like_libjpeg_would() {
        let rgb = gradient(112, 112);
        let mut bytes = jpeg(&rgb, 112, 112, ExtendedColorType::Rgb8);
        bytes.truncate(bytes.len() * 9 / 10);
        let mut out = vec![0u8; RGB112_BYTES];
        decode_rgb112_into(&bytes, &mut out, name).unwrap();
        // The top rows, decoded before the cut, are intact.
        assert!(max_abs_diff(&out[..20 * 112 * 3], &rgb[..20 * 112 * 3]) <= 12);
    }

    #[test]
    fn other_sizes_resize_to_112_keeping_the_layout() {
        let small = gradient(50, 60);
        for bytes in [
            jpeg(&small, 50, 60, ExtendedColorType::Rgb8),
            png(&small, 50, 60),
        ] {
            let out = decode_rgb112_resized(&bytes, name).unwrap();
            assert_eq!(out.len(), RGB112_BYTES);
            let at = |x: usize, y: usize, c: usize| out[(y * 112 + x) * 3 + c];
            // Red runs left to right, green top to bottom, as in the source.
            assert!(at(5, 56, 0) < 30 && at(106, 56, 0) > 220);
            assert!(at(56, 5, 1) < 30 && at(56, 106, 1) > 220);
        }
        let exact = gradient(112, 112);
        assert_eq!(
            decode_rgb112_resized(&png(&exact, 112, 112), name).unwrap(),
            exact
        );
    }
}
