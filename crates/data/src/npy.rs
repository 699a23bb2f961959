//! Minimal reader and writer for NumPy `.npy` files of little-endian `f32`.
//!
//! Embeddings and evaluation scores are exported in this format so that the
//! Python side of the project (and numpy users in general) can load them with
//! `numpy.load` directly.

use std::fs;
use std::path::Path;

use crate::DataError;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Magic, two version bytes and the 2-byte header length of format 1.0.
const PREAMBLE_V1: usize = MAGIC.len() + 2 + 2;
/// numpy aligns the start of the data to 64 bytes.
const ALIGNMENT: usize = 64;

/// Write a little-endian float32 `.npy` (format version 1.0, header padded to
/// 64-byte alignment incl. trailing '\n', 'fortran_order': False) of the given
/// shape. An empty shape writes a scalar (one value).
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), DataError> {
    let expected: usize = shape.iter().product();
    if expected != data.len() {
        return Err(DataError::SizeMismatch {
            path: path.to_path_buf(),
            what: format!("shape {shape:?}"),
            expected,
            actual: data.len(),
        });
    }
    let header = header_for(shape);
    let header_len = u16::try_from(header.len()).map_err(|_| DataError::Npy {
        path: path.to_path_buf(),
        field: "shape",
        reason: format!("header for shape {shape:?} exceeds the 65535 bytes of format 1.0"),
    })?;

    let mut bytes = Vec::with_capacity(PREAMBLE_V1 + header.len() + 4 * data.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&header_len.to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for value in data {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    fs::write(path, bytes).map_err(|source| DataError::Io {
        action: "cannot write",
        path: path.to_path_buf(),
        source,
    })
}

/// The header dictionary, space-padded so that the data starts on a 64-byte
/// boundary, ending in '\n'.
fn header_for(shape: &[usize]) -> String {
    let dims = match shape {
        [single] => format!("({single},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("({})", parts.join(", "))
        }
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    let unpadded = PREAMBLE_V1 + header.len() + 1;
    let padding = (ALIGNMENT - unpadded % ALIGNMENT) % ALIGNMENT;
    header.extend(std::iter::repeat_n(' ', padding));
    header.push('\n');
    header
}

/// Read back such a file (for tests and tools); validate magic, dtype '<f4',
/// fortran_order False, shape product == data length; errors name the file
/// and field. Versions 1.0 and 2.0 of the format are accepted.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), DataError> {
    let bytes = fs::read(path).map_err(|source| DataError::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source,
    })?;
    parse_f32(&bytes, path)
}

/// [`read_f32`] on bytes already read; `path` names them in errors.
pub fn parse_f32(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<f32>), DataError> {
    let invalid = |field: &'static str, reason: String| DataError::Npy {
        path: path.to_path_buf(),
        field,
        reason,
    };

    if bytes.len() < PREAMBLE_V1 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(invalid(
            "magic",
            "file does not start with \\x93NUMPY".into(),
        ));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, header_start) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 if bytes.len() >= 12 => {
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (len as usize, 12)
        }
        _ => {
            return Err(invalid(
                "version",
                format!("expected format 1.0 or 2.0, found {major}.{minor}"),
            ))
        }
    };
    let data_start = header_start + header_len;
    let header_bytes = bytes.get(header_start..data_start).ok_or_else(|| {
        invalid(
            "header",
            format!(
                "header length {header_len} exceeds file size {}",
                bytes.len()
            ),
        )
    })?;
    let header = std::str::from_utf8(header_bytes)
        .map_err(|_| invalid("header", "header is not valid text".into()))?
        .trim();
    if !header.starts_with('{') || !header.ends_with('}') {
        return Err(invalid(
            "header",
            format!("expected a {{...}} dictionary, found {header:?}"),
        ));
    }

    let descr = quoted_value(header, "descr")
        .ok_or_else(|| invalid("descr", "missing or not a quoted string".into()))?;
    if descr != "<f4" {
        return Err(invalid(
            "descr",
            format!("expected '<f4' (little-endian float32), found '{descr}'"),
        ));
    }
    match value_after_key(header, "fortran_order") {
        Some(v) if v.starts_with("False") => {}
        Some(v) if v.starts_with("True") => {
            return Err(invalid(
                "fortran_order",
                "expected False, found True".into(),
            ))
        }
        _ => return Err(invalid("fortran_order", "missing or not a boolean".into())),
    }
    let shape = shape_value(header)
        .ok_or_else(|| invalid("shape", "missing or not a tuple of integers".into()))?;

    let payload = &bytes[data_start..];
    // The shape comes from the file: a product that overflows would wrap to a
    // size that matches some data section.
    let needed = shape
        .iter()
        .try_fold(4usize, |bytes, &dim| bytes.checked_mul(dim))
        .ok_or_else(|| {
            invalid(
                "shape",
                format!("shape {shape:?} holds more than 2^64 bytes of float32 values"),
            )
        })?;
    if payload.len() != needed {
        return Err(invalid(
            "data",
            format!(
                "shape {shape:?} needs {needed} bytes of data, file has {}",
                payload.len()
            ),
        ));
    }
    let data = payload
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((shape, data))
}

/// The text following `'key':` in the header dictionary, left-trimmed.
fn value_after_key<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("'{key}':");
    let at = header.find(&needle)?;
    Some(header[at + needle.len()..].trim_start())
}

fn quoted_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let rest = value_after_key(header, key)?.strip_prefix('\'')?;
    Some(&rest[..rest.find('\'')?])
}

fn shape_value(header: &str) -> Option<Vec<usize>> {
    let rest = value_after_key(header, "shape")?.strip_prefix('(')?;
    let inner = &rest[..rest.find(')')?];
    inner
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| part.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TempDir;

    #[test]
    fn round_trip_preserves_shape_and_values() {
        let dir = TempDir::new("npy-round-trip");
        for shape in [
            vec![2usize, 3],
            vec![5],
            vec![],
            vec![2, 0, 4],
            vec![3, 2, 2],
        ] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 1.5).collect();
            let path = dir.path().join("x.npy");
            write_f32(&path, &shape, &data).unwrap();
            let (read_shape, read_data) = read_f32(&path).unwrap();
            assert_eq!(read_shape, shape);
            assert_eq!(read_data, data);
        }
    }

    #[test]
    fn data_starts_on_64_byte_boundary() {
        let dir = TempDir::new("npy-align");
        for shape in [vec![1usize], vec![10, 512], vec![123_456, 7, 1]] {
            let n: usize = shape.iter().product();
            let path = dir.path().join("a.npy");
            write_f32(&path, &shape, &vec![0.5; n]).unwrap();
            let bytes = fs::read(&path).unwrap();
            let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
            assert_eq!((PREAMBLE_V1 + header_len) % 64, 0, "shape {shape:?}");
            assert_eq!(bytes[PREAMBLE_V1 + header_len - 1], b'\n');
            assert_eq!(bytes.len(), PREAMBLE_V1 + header_len + 4 * n);
        }
    }

    #[test]
    fn header_matches_numpy_layout() {
        let header = header_for(&[4]);
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }"));
        assert!(header_for(&[2, 3]).contains("'shape': (2, 3)"));
        assert!(header_for(&[]).contains("'shape': ()"));
    }

    #[test]
    fn write_rejects_wrong_length() {
        let dir = TempDir::new("npy-mismatch");
        let err = write_f32(&dir.path().join("m.npy"), &[2, 2], &[1.0; 3]).unwrap_err();
        assert!(matches!(
            err,
            DataError::SizeMismatch {
                expected: 4,
                actual: 3,
                ..
            }
        ));
    }

    /// Writes a valid file, lets `corrupt` edit its bytes and returns the
    /// message of the resulting read error.
    fn read_error_after(corrupt: impl Fn(&mut Vec<u8>)) -> String {
        let dir = TempDir::new("npy-corrupt");
        let path = dir.path().join("bad.npy");
        write_f32(&path, &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        corrupt(&mut bytes);
        fs::write(&path, bytes).unwrap();
        let message = read_f32(&path).unwrap_err().to_string();
        assert!(
            message.contains("bad.npy"),
            "error lacks file name: {message}"
        );
        message
    }

    fn replace(bytes: &mut [u8], from: &str, to: &str) {
        assert_eq!(from.len(), to.len());
        let at = bytes
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .unwrap();
        bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
    }

    #[test]
    fn a_shape_whose_size_overflows_is_refused() {
        // 2^62 * 4 values wraps to 0 in usize, which would match an empty data section.
        let msg = read_error_after(|b| {
            let header_len = usize::from(u16::from_le_bytes([b[8], b[9]]));
            let header = String::from_utf8(b[10..10 + header_len].to_vec()).unwrap();
            let header = header.replace("(2, 2), }", "(4611686018427387904, 4), }");
            let header = format!("{:<width$}\n", header.trim_end(), width = header_len - 1);
            assert_eq!(header.len(), header_len);
            b.truncate(10);
            b.extend(header.as_bytes());
        });
        assert!(
            msg.contains("shape") && msg.contains("4611686018427387904"),
            "{msg}"
        );
    }

    #[test]
    fn corrupt_files_give_clear_errors() {
        let msg = read_error_after(|b| b[0] = b'X');
        assert!(msg.contains("magic"), "{msg}");
        let msg = read_error_after(|b| replace(b, "<f4", "<f8"));
        assert!(msg.contains("descr") && msg.contains("<f8"), "{msg}");
        let msg = read_error_after(|b| replace(b, "False", "True "));
        assert!(msg.contains("fortran_order"), "{msg}");
        let msg = read_error_after(|b| replace(b, "(2, 2)", "(2, x)"));
        assert!(msg.contains("shape"), "{msg}");
        let msg = read_error_after(|b| replace(b, "(2, 2)", "(2, 3)"));
        assert!(msg.contains("data"), "{msg}");
        let msg = read_error_after(|b| b[8] = 0xFF);
        assert!(msg.contains("header"), "{msg}");
        let msg = read_error_after(|b| b.truncate(5));
        assert!(msg.contains("magic"), "{msg}");
    }
}
