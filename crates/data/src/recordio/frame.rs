//! RecordIO framing, bit-compatible with dmlc-core's `RecordIOWriter` and
//! `RecordIOReader`.
//!
//! A frame is `magic (u32 LE) | lrecord (u32 LE) | payload | zero padding to 4
//! bytes`, where `lrecord` holds a continuation flag in its top 3 bits and
//! the payload length in the low 29. A record whose payload contains the
//! magic at a 4-byte-aligned position is split there into several frames
//! (flags 1 = first, 2 = middle, 3 = last; 0 = a whole record); the magic
//! itself is dropped at each split and re-inserted by the reader. That keeps
//! the magic from ever appearing aligned inside a frame, so a reader can
//! resynchronise on it.

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::Path;

use super::error::{RecordIoError, RecordRef};

pub const MAGIC: u32 = 0xced7_230a;
const MAGIC_BYTES: [u8; 4] = MAGIC.to_le_bytes();
/// Magic and `lrecord`.
pub const FRAME_HEADER_LEN: usize = 8;
/// dmlc refuses records of 2^29 bytes or more: the length field has 29 bits.
pub const MAX_PAYLOAD_LEN: usize = (1 << 29) - 1;
const LENGTH_BITS: u32 = 29;
const LENGTH_MASK: u32 = (1 << LENGTH_BITS) - 1;

const WHOLE: u32 = 0;
const FIRST: u32 = 1;
const MIDDLE: u32 = 2;
const LAST: u32 = 3;

fn encode_lrecord(cflag: u32, len: usize) -> u32 {
    debug_assert!(len <= MAX_PAYLOAD_LEN, "frame length {len} exceeds 29 bits");
    (cflag << LENGTH_BITS) | len as u32
}

/// (continuation flag, payload length) of an `lrecord` word.
fn decode_lrecord(lrecord: u32) -> (u32, usize) {
    (lrecord >> LENGTH_BITS, (lrecord & LENGTH_MASK) as usize)
}

fn padded_len(len: usize) -> usize {
    len.next_multiple_of(4)
}

/// Write one record the way dmlc's `RecordIOWriter::WriteRecord` does and
/// return the number of bytes written. The caller ensures
/// `payload.len() <= MAX_PAYLOAD_LEN`.
pub fn write_record(out: &mut impl Write, payload: &[u8]) -> io::Result<u64> {
    debug_assert!(payload.len() <= MAX_PAYLOAD_LEN);
    let mut written = 0u64;
    let mut write_frame = |cflag: u32, part: &[u8]| -> io::Result<()> {
        out.write_all(&MAGIC_BYTES)?;
        out.write_all(&encode_lrecord(cflag, part.len()).to_le_bytes())?;
        out.write_all(part)?;
        written += (FRAME_HEADER_LEN + part.len()) as u64;
        Ok(())
    };

    // Split at every aligned magic; `part_start` is where the current part begins.
    let mut part_start = 0;
    for (chunk_index, chunk) in payload.chunks_exact(4).enumerate() {
        if chunk == MAGIC_BYTES {
            let at = chunk_index * 4;
            let cflag = if part_start == 0 { FIRST } else { MIDDLE };
            write_frame(cflag, &payload[part_start..at])?;
            part_start = at + 4;
        }
    }
    let cflag = if part_start == 0 { WHOLE } else { LAST };
    write_frame(cflag, &payload[part_start..])?;

    // Split parts end on aligned positions, so only the last frame needs padding.
    let padding = padded_len(payload.len()) - payload.len();
    out.write_all(&[0u8; 3][..padding])?;
    Ok(written + padding as u64)
}

/// A record read from a file: its payload (borrowed when the record is a
/// single frame) and the offset just past its last frame.
#[derive(Debug)]
pub struct Decoded<'a> {
    pub payload: Cow<'a, [u8]>,
    pub end: usize,
}

/// Why a record could not be decoded; [`FrameError::locate`] adds the file
/// and record that the caller knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    BadMagic {
        frame_offset: usize,
        found: u32,
    },
    Truncated {
        part: &'static str,
        needed: usize,
        at: usize,
        file_len: usize,
    },
    BadContinuation {
        frame_offset: usize,
        found: u32,
        expected: &'static str,
    },
}

impl FrameError {
    pub fn locate(self, path: &Path, record: RecordRef, offset: usize) -> RecordIoError {
        let path = path.to_path_buf();
        let offset = offset as u64;
        match self {
            Self::BadMagic {
                frame_offset,
                found,
            } => RecordIoError::BadMagic {
                path,
                record,
                offset,
                frame_offset: frame_offset as u64,
                found,
            },
            Self::Truncated {
                part,
                needed,
                at,
                file_len,
            } => RecordIoError::Truncated {
                path,
                record,
                offset,
                part,
                needed: needed as u64,
                at: at as u64,
                file_len: file_len as u64,
            },
            Self::BadContinuation {
                frame_offset,
                found,
                expected,
            } => RecordIoError::BadContinuation {
                path,
                record,
                offset,
                frame_offset: frame_offset as u64,
                found,
                expected,
            },
        }
    }
}

/// One frame's header, read and checked: its continuation flag, where its payload
/// lies and where the next frame starts.
struct Frame {
    cflag: u32,
    payload: std::ops::Range<usize>,
    end: usize,
}

/// Read the frame at `frame_offset`; `opens_record` says whether it must be a
/// record's first frame (flag 0 or 1) or a later part (flag 2 or 3).
fn read_frame(bytes: &[u8], frame_offset: usize, opens_record: bool) -> Result<Frame, FrameError> {
    let header = bytes
        .get(frame_offset..)
        .and_then(|rest| rest.get(..FRAME_HEADER_LEN))
        .ok_or(FrameError::Truncated {
            part: "frame header",
            needed: FRAME_HEADER_LEN,
            at: frame_offset,
            file_len: bytes.len(),
        })?;
    let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if magic != MAGIC {
        return Err(FrameError::BadMagic {
            frame_offset,
            found: magic,
        });
    }
    let lrecord = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let (cflag, len) = decode_lrecord(lrecord);

    let allowed = if opens_record {
        [WHOLE, FIRST]
    } else {
        [MIDDLE, LAST]
    };
    if !allowed.contains(&cflag) {
        return Err(FrameError::BadContinuation {
            frame_offset,
            found: cflag,
            expected: if opens_record {
                "0 (whole record) or 1 (first part)"
            } else {
                "2 (middle part) or 3 (last part)"
            },
        });
    }

    // The header was inside the file, so `start` is at most its length; the
    // padded length has 29 bits, so neither sum can overflow.
    let start = frame_offset + FRAME_HEADER_LEN;
    let padded = padded_len(len);
    if bytes.len() - start < padded {
        return Err(FrameError::Truncated {
            part: "frame payload",
            needed: padded,
            at: start,
            file_len: bytes.len(),
        });
    }
    Ok(Frame {
        cflag,
        payload: start..start + len,
        end: start + padded,
    })
}

/// Decode the record whose first frame starts at `offset`, as dmlc's
/// `RecordIOReader::NextRecord` does, but checking that the continuation
/// flags form a whole record (dmlc trusts them).
pub fn decode_record(bytes: &[u8], offset: usize) -> Result<Decoded<'_>, FrameError> {
    let mut frame_offset = offset;
    // Filled only for multi-frame records; every part lies in `bytes`, so it
    // never holds more than the file.
    let mut joined: Vec<u8> = Vec::new();
    loop {
        let frame = read_frame(bytes, frame_offset, frame_offset == offset)?;
        let part = &bytes[frame.payload];
        match frame.cflag {
            WHOLE => {
                return Ok(Decoded {
                    payload: Cow::Borrowed(part),
                    end: frame.end,
                })
            }
            LAST => {
                joined.extend_from_slice(part);
                return Ok(Decoded {
                    payload: Cow::Owned(joined),
                    end: frame.end,
                });
            }
            _ => {
                joined.extend_from_slice(part);
                joined.extend_from_slice(&MAGIC_BYTES);
            }
        }
        frame_offset = frame.end;
    }
}

/// The offset just past the record whose first frame starts at `offset`,
/// with the same checks as [`decode_record`] but reading only the frame
/// headers: what checking an index against its file needs.
pub fn record_end(bytes: &[u8], offset: usize) -> Result<usize, FrameError> {
    let mut frame_offset = offset;
    loop {
        let frame = read_frame(bytes, frame_offset, frame_offset == offset)?;
        if matches!(frame.cflag, WHOLE | LAST) {
            return Ok(frame.end);
        }
        frame_offset = frame.end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: [u8; 4] = MAGIC_BYTES;

    fn encode(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let written = write_record(&mut out, payload).expect("writing to a Vec cannot fail");
        assert_eq!(written, out.len() as u64);
        out
    }

    /// The (cflag, length) of every frame of an encoded buffer.
    fn frames(encoded: &[u8]) -> Vec<(u32, usize)> {
        let mut result = Vec::new();
        let mut at = 0;
        while at < encoded.len() {
            assert_eq!(encoded[at..at + 4], M, "no magic at byte {at}");
            let lrecord = u32::from_le_bytes(encoded[at + 4..at + 8].try_into().unwrap());
            let (cflag, len) = decode_lrecord(lrecord);
            result.push((cflag, len));
            at += FRAME_HEADER_LEN + padded_len(len);
        }
        assert_eq!(at, encoded.len());
        result
    }

    fn round_trip(payload: &[u8]) -> Vec<u8> {
        let encoded = encode(payload);
        let decoded = decode_record(&encoded, 0).expect("decodes");
        assert_eq!(decoded.end, encoded.len());
        assert_eq!(&*decoded.payload, payload);
        encoded
    }

    #[test]
    fn lrecord_packs_flag_in_top_three_bits() {
        assert_eq!(encode_lrecord(3, 5), 0x6000_0005);
        assert_eq!(decode_lrecord(0x6000_0005), (3, 5));
        assert_eq!(
            decode_lrecord(encode_lrecord(2, MAX_PAYLOAD_LEN)),
            (2, MAX_PAYLOAD_LEN)
        );
    }

    #[test]
    fn plain_payload_is_one_frame_padded_with_zeros() {
        let encoded = round_trip(b"abcde");
        assert_eq!(encoded.len(), 8 + 8);
        assert_eq!(&encoded[..4], &M);
        assert_eq!(&encoded[4..8], &5u32.to_le_bytes());
        assert_eq!(&encoded[8..], b"abcde\0\0\0");
    }

    #[test]
    fn empty_and_aligned_payloads_have_no_padding() {
        assert_eq!(round_trip(b"").len(), 8);
        assert_eq!(round_trip(b"abcd").len(), 12);
    }

    #[test]
    fn single_frame_decodes_without_copying() {
        let encoded = encode(b"hello");
        let decoded = decode_record(&encoded, 0).unwrap();
        assert!(matches!(decoded.payload, Cow::Borrowed(_)));
    }

    /// The exact bytes MXNet 1.9.1 writes for `M + b"xyzw" + M + b"12345"`
    /// (captured from `MXRecordIO.write`).
    #[test]
    fn split_matches_dmlc_bytes() {
        let payload = [&M[..], b"xyzw", &M, b"12345"].concat();
        let encoded = round_trip(&payload);
        let expected = [
            &M[..],
            &0x2000_0000u32.to_le_bytes(),
            &M,
            &0x4000_0004u32.to_le_bytes(),
            b"xyzw",
            &M,
            &0x6000_0005u32.to_le_bytes(),
            b"12345\0\0\0",
        ]
        .concat();
        assert_eq!(encoded, expected);
    }

    #[test]
    fn magic_at_the_end_leaves_an_empty_last_part() {
        let payload = [&b"abcd"[..], &M].concat();
        let encoded = round_trip(&payload);
        assert_eq!(frames(&encoded), vec![(FIRST, 4), (LAST, 0)]);
        let decoded = decode_record(&encoded, 0).unwrap();
        assert!(matches!(decoded.payload, Cow::Owned(_)));
    }

    #[test]
    fn consecutive_magics_give_empty_middle_parts() {
        let payload = [&M[..], &M, &M, b"z"].concat();
        let encoded = round_trip(&payload);
        assert_eq!(
            frames(&encoded),
            vec![(FIRST, 0), (MIDDLE, 0), (MIDDLE, 0), (LAST, 1)]
        );
    }

    #[test]
    fn unaligned_magic_is_not_split() {
        for shift in 1..4 {
            let mut payload = vec![7u8; shift];
            payload.extend_from_slice(&M);
            payload.extend_from_slice(b"tail");
            let encoded = round_trip(&payload);
            assert_eq!(
                frames(&encoded),
                vec![(WHOLE, payload.len())],
                "shift {shift}"
            );
        }
    }

    #[test]
    fn records_decode_back_to_back() {
        let first = [&b"ab"[..], &M].concat(); // unaligned magic: one frame
        let second = [&b"abcd"[..], &M, b"e"].concat(); // split
        let mut file = encode(&first);
        let second_offset = file.len();
        file.extend(encode(&second));
        let a = decode_record(&file, 0).unwrap();
        assert_eq!((&*a.payload, a.end), (&first[..], second_offset));
        let b = decode_record(&file, a.end).unwrap();
        assert_eq!((&*b.payload, b.end), (&second[..], file.len()));
    }

    #[test]
    fn record_end_agrees_with_decoding() {
        let first = [&b"abcd"[..], &M, b"e", &M].concat(); // split
        let mut file = encode(&first);
        let second_offset = file.len();
        file.extend(encode(b"plain"));
        assert_eq!(record_end(&file, 0), Ok(second_offset));
        assert_eq!(record_end(&file, second_offset), Ok(file.len()));
        assert_eq!(
            record_end(&file[..second_offset - 1], 0),
            decode_record(&file[..second_offset - 1], 0).map(|d| d.end)
        );
        assert!(matches!(
            record_end(&file, 12),
            Err(FrameError::BadContinuation {
                frame_offset: 12,
                ..
            })
        ));
    }

    #[test]
    fn bad_magic_reports_the_frame_and_value() {
        let mut encoded = encode(b"abcd");
        encoded[0] ^= 0xff;
        assert_eq!(
            decode_record(&encoded, 0).unwrap_err(),
            FrameError::BadMagic {
                frame_offset: 0,
                found: MAGIC ^ 0xff
            }
        );
    }

    #[test]
    fn truncation_is_reported_for_header_payload_and_padding() {
        let encoded = encode(b"abcde");
        assert_eq!(
            decode_record(&encoded[..5], 0).unwrap_err(),
            FrameError::Truncated {
                part: "frame header",
                needed: 8,
                at: 0,
                file_len: 5
            }
        );
        // Missing padding counts: dmlc reads the padded length.
        assert_eq!(
            decode_record(&encoded[..13], 0).unwrap_err(),
            FrameError::Truncated {
                part: "frame payload",
                needed: 8,
                at: 8,
                file_len: 13
            }
        );
        // Offsets past the end are truncation, not a panic.
        assert!(matches!(
            decode_record(&encoded, 100),
            Err(FrameError::Truncated { at: 100, .. })
        ));
    }

    #[test]
    fn split_record_cut_after_its_first_part_is_truncated() {
        let payload = [&b"abcd"[..], &M, b"efgh"].concat();
        let encoded = encode(&payload);
        assert_eq!(
            decode_record(&encoded[..12], 0).unwrap_err(),
            FrameError::Truncated {
                part: "frame header",
                needed: 8,
                at: 12,
                file_len: 12
            }
        );
    }

    #[test]
    fn starting_inside_a_split_record_is_a_continuation_error() {
        let payload = [&b"abcd"[..], &M, b"efgh"].concat();
        let encoded = encode(&payload);
        // The second frame (flag 3) starts at byte 12.
        assert_eq!(
            decode_record(&encoded, 12).unwrap_err(),
            FrameError::BadContinuation {
                frame_offset: 12,
                found: LAST,
                expected: "0 (whole record) or 1 (first part)"
            }
        );
    }

    #[test]
    fn a_whole_frame_cannot_continue_a_record() {
        let mut file = Vec::new();
        file.extend_from_slice(&M);
        file.extend_from_slice(&encode_lrecord(FIRST, 4).to_le_bytes());
        file.extend_from_slice(b"abcd");
        file.extend(encode(b"next"));
        assert_eq!(
            decode_record(&file, 0).unwrap_err(),
            FrameError::BadContinuation {
                frame_offset: 12,
                found: WHOLE,
                expected: "2 (middle part) or 3 (last part)"
            }
        );
    }
}
