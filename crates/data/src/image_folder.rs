//! Face images stored as files in a directory (one directory per identity in
//! the usual layout), plus the small image utilities the trainer needs.

use std::fs;
use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::decode;
use crate::DataError;

const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Sorted (by file name, byte order) list of image files (.jpg, .jpeg, .png,
/// case-insensitive) directly inside `dir` (not recursive). Error if dir
/// unreadable or contains none.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io_error = |source| DataError::Io {
        action: "cannot read directory",
        path: dir.to_path_buf(),
        source,
    };
    let mut images = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let path = entry.path();
        // Follows symlinks, so linked image files count as images.
        if has_image_extension(&path) && path.is_file() {
            images.push(path);
        }
    }
    if images.is_empty() {
        return Err(DataError::NoImages {
            path: dir.to_path_buf(),
        });
    }
    // All paths share `dir`, so comparing file names compares the paths.
    images.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(images)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| {
            IMAGE_EXTENSIONS
                .iter()
                .any(|known| ext.eq_ignore_ascii_case(known))
        })
}

/// Decode an image file to RGB8 112x112 HWC bytes; other sizes are resized
/// (bilinear, image's Triangle filter) to 112x112. JPEG and PNG are told apart
/// by their content, not the extension. An image declaring more than
/// [`decode::MAX_IMAGE_SIDE`] pixels a side is refused before decoding. Error
/// names the file and the reason.
pub fn load_rgb112(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = fs::read(path).map_err(|source| DataError::Io {
        action: "cannot read image",
        path: path.to_path_buf(),
        source,
    })?;
    // The same decoder (and size bound) as packs and the loader use.
    Ok(decode::decode_rgb112_resized(&bytes, || {
        path.display().to_string()
    })?)
}

/// Horizontal flip of an HWC RGB image, returned as a new buffer.
///
/// # Panics
/// If `rgb.len() != width * height * 3`.
pub fn hflip(rgb: &[u8], width: usize, height: usize) -> Vec<u8> {
    assert_eq!(
        rgb.len(),
        width * height * 3,
        "hflip: buffer does not hold a {width}x{height} RGB image"
    );
    let mut flipped = Vec::with_capacity(rgb.len());
    for row in rgb.chunks_exact(width * 3) {
        for pixel in row.chunks_exact(3).rev() {
            flipped.extend_from_slice(pixel);
        }
    }
    flipped
}

/// Write an RGB8 image (PNG) — used by tests and by the demo to save example
/// samples.
pub fn save_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<(), DataError> {
    let expected = width as usize * height as usize * 3;
    let actual = rgb.len();
    let image =
        RgbImage::from_raw(width, height, rgb.to_vec()).ok_or_else(|| DataError::SizeMismatch {
            path: path.to_path_buf(),
            what: format!("a {width}x{height} RGB image"),
            expected,
            actual,
        })?;
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|source| DataError::Encode {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TempDir;

    /// A deterministic test pattern with distinct left and right halves.
    fn pattern(width: usize, height: usize) -> Vec<u8> {
        (0..height)
            .flat_map(|y| {
                (0..width).flat_map(move |x| {
                    let r = if x < width / 2 { 200 } else { 30 };
                    [r, (y * 255 / height) as u8, 90]
                })
            })
            .collect()
    }

    #[test]
    fn lists_only_images_sorted_by_name() {
        let dir = TempDir::new("folder-list");
        let p = dir.path();
        save_png(&p.join("b.png"), &pattern(112, 112), 112, 112).unwrap();
        save_png(&p.join("a.PNG"), &pattern(50, 60), 50, 60).unwrap();
        save_png(&p.join("C.jpeg"), &pattern(8, 8), 8, 8).unwrap();
        fs::write(p.join("notes.txt"), b"not an image").unwrap();
        fs::create_dir(p.join("sub.png")).unwrap();

        let names: Vec<String> = list_images(p)
            .unwrap()
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        // Byte order: uppercase sorts before lowercase.
        assert_eq!(names, ["C.jpeg", "a.PNG", "b.png"]);
    }

    #[test]
    fn listing_fails_for_missing_or_empty_dirs() {
        let dir = TempDir::new("folder-empty");
        let err = list_images(dir.path()).unwrap_err();
        assert!(matches!(err, DataError::NoImages { .. }), "{err}");
        let missing = dir.path().join("absent");
        let err = list_images(&missing).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }), "{err}");
        assert!(err.to_string().contains("absent"), "{err}");
    }

    #[test]
    fn loads_and_resizes_to_112() {
        let dir = TempDir::new("folder-load");
        let exact = pattern(112, 112);
        save_png(&dir.path().join("exact.png"), &exact, 112, 112).unwrap();
        assert_eq!(load_rgb112(&dir.path().join("exact.png")).unwrap(), exact);

        save_png(&dir.path().join("small.png"), &pattern(50, 60), 50, 60).unwrap();
        let resized = load_rgb112(&dir.path().join("small.png")).unwrap();
        assert_eq!(resized.len(), 112 * 112 * 3);
        // The red channel's left/right halves survive the resize.
        let red = |x: usize, y: usize| resized[(y * 112 + x) * 3];
        assert!(red(10, 56) > 180 && red(100, 56) < 50);
        // The green ramp still runs top to bottom.
        assert!(resized[1] < resized[(111 * 112) * 3 + 1]);
    }

    #[test]
    fn corrupt_file_error_names_the_file() {
        let dir = TempDir::new("folder-corrupt");
        let path = dir.path().join("broken_face.jpg");
        fs::write(&path, b"\xFF\xD8\xFFgarbage that is not a jpeg").unwrap();
        let err = load_rgb112(&path).unwrap_err();
        assert!(err.to_string().contains("broken_face.jpg"), "{err}");
    }

    #[test]
    fn an_image_declaring_a_huge_size_is_refused_naming_the_file_and_bound() {
        let dir = TempDir::new("folder-bomb");
        let path = dir.path().join("bomb_face.png");
        fs::write(
            &path,
            crate::decode::tests::png_declaring(10_000, 10_000, 8, 2),
        )
        .unwrap();
        let err = load_rgb112(&path).unwrap_err().to_string();
        assert!(
            err.contains("bomb_face.png")
                && err.contains("10000x10000")
                && err.contains("4096x4096"),
            "{err}"
        );
    }

    #[test]
    fn hflip_mirrors_rows_and_is_an_involution() {
        let img = pattern(5, 3);
        let flipped = hflip(&img, 5, 3);
        for y in 0..3 {
            for x in 0..5 {
                let src = (y * 5 + x) * 3;
                let dst = (y * 5 + (4 - x)) * 3;
                assert_eq!(img[src..src + 3], flipped[dst..dst + 3]);
            }
        }
        assert_ne!(img, flipped);
        assert_eq!(hflip(&flipped, 5, 3), img);
    }

    #[test]
    fn save_png_rejects_wrong_buffer_size() {
        let dir = TempDir::new("folder-save");
        let err = save_png(&dir.path().join("x.png"), &[0; 10], 2, 2).unwrap_err();
        assert!(matches!(err, DataError::SizeMismatch { expected: 12, .. }));
    }
}
