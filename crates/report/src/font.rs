//! The font the plots' text is measured and drawn with: DejaVu Sans, read at run time from
//! [`FONT_PATH`] (Debian's fonts-dejavu-core) and registered with plotters once per process.
//!
//! plotters' `ab_glyph` text wants the font's bytes for the life of the process, so they are
//! leaked once. The SVG backend measures text with the same font to place labels, so the page
//! needs it as much as the PNGs do.

use std::path::Path;
use std::sync::Mutex;

use plotters::style::{register_font, FontStyle};

use crate::error::ReportError;

/// DejaVu Sans, from the Debian package fonts-dejavu-core.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Its bold face, from the same package; titles fall back to the regular face without it.
const BOLD_FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf";
/// The family every text style of the plots names.
pub(crate) const FAMILY: &str = "sans-serif";

/// Whether the fonts are registered (set once, under the lock, so they are leaked once).
static LOADED: Mutex<bool> = Mutex::new(false);

/// Registers [`FONT_PATH`] (and the bold face if present) for the plots, once.
pub fn ensure_font() -> Result<(), ReportError> {
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if *loaded {
        return Ok(());
    }
    register(Path::new(FONT_PATH), FontStyle::Normal)?;
    if Path::new(BOLD_FONT_PATH).is_file() {
        register(Path::new(BOLD_FONT_PATH), FontStyle::Bold)?;
    }
    *loaded = true;
    Ok(())
}

fn register(path: &Path, style: FontStyle) -> Result<(), ReportError> {
    let bytes = read_font(path)?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FAMILY, style, bytes).map_err(|_| ReportError::BadFont {
        path: path.to_path_buf(),
    })
}

fn read_font(path: &Path) -> Result<Vec<u8>, ReportError> {
    std::fs::read(path).map_err(|source| ReportError::FontMissing {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_font_names_its_path_and_package() {
        let missing = Path::new("/nonexistent/DejaVuSans.ttf");
        let e = read_font(missing).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/DejaVuSans.ttf"), "{e}");
        assert!(e.contains("fonts-dejavu-core"), "{e}");
    }

    #[test]
    fn a_file_that_is_no_font_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake.ttf");
        std::fs::write(&fake, b"not a font").unwrap();
        let e = register(&fake, FontStyle::Italic).unwrap_err().to_string();
        assert!(
            e.contains("fake.ttf") && e.contains("fonts-dejavu-core"),
            "{e}"
        );
    }
}
